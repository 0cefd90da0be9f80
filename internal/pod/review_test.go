package pod

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// Adversarial schedules of the pair simulation, written out step by step
// (each names the array it acts on: a is index 0, b index 1).

// reviewSim returns a simulation whose pod is in sync, ordered by a,
// with both arrays reaching the mediator.
func reviewSim(t *testing.T) *sim {
	t.Helper()
	s := newSim(modeSessions, "", false)
	s.connect(0)
	s.heal()
	if s.err != nil {
		t.Fatalf("setting up: %s: %s\n  %s", s.err.key, s.err.detail, strings.Join(s.trace, "\n  "))
	}
	if a, b := s.arr[0].m, s.arr[1].m; a.State() != InSync || b.State() != InSync || a.Role() != Sequencer {
		t.Fatalf("setting up: a %s, b %s", s.describe(0), s.describe(1))
	}
	return s
}

// steps runs ops as runSim does (settle and check after each), failing
// the test with the trace on a violation.
func (s *sim) steps(t *testing.T, ops ...op) {
	t.Helper()
	for n, o := range ops {
		s.logf("step %d: %s %d", n, opNames[o.kind], o.a)
		s.step(o)
		s.settle()
		s.check()
		if s.err != nil {
			break
		}
	}
	s.failed(t)
}

// runReview runs ops, then heals everything and checks that the pod
// recovers.
func (s *sim) runReview(t *testing.T, ops ...op) {
	t.Helper()
	s.steps(t, ops...)
	s.heal()
	s.failed(t)
}

func (s *sim) failed(t *testing.T) {
	t.Helper()
	if s.err != nil {
		t.Fatalf("%s: %s\ntrace:\n  %s", s.err.key, s.err.detail, strings.Join(s.trace, "\n  "))
	}
}

// Ops on array a (index 0) or b (index 1). The parameter's other bits
// select as the sim's step does: opCut with a/2%3 == 0 cuts both
// directions; opAdvance with a/2%6 == 4 moves the clock by the link's
// Timeout; opPersist with a/2%9 != 0 succeeds; opElectReq/opElectAns
// with a = 0 take the oldest request or answer.
var (
	cutBoth      = op{kind: opCut, a: 0}
	advanceTO    = op{kind: opAdvance, a: 8}
	electOldest  = op{kind: opElectReq, a: 0}
	answerOldest = op{kind: opElectAns, a: 0}
	persistA     = op{kind: opPersist, a: 2}
	persistB     = op{kind: opPersist, a: 3}
	handoverA    = op{kind: opHandover, a: 0}
	removeFromA  = op{kind: opRemove, a: 0}
	flushA       = op{kind: opFlush, a: 0}
	deliverAtoB  = op{kind: opDeliver, a: 2}
	deliverBtoA  = op{kind: opDeliver, a: 3}
)

// TestReviewHandoverPersistRacesLinkLoss: a, the in-sync sequencer, is
// handing the pod over to b (its record "left, b owns E+1" is being
// persisted) when the link is lost. Its machine, still in sync, pauses
// and asks the mediator for the pod at E, and wins E+1 (it raced first);
// b loses and durably adopts E+1 as a's. Then a's handover record lands:
// a has left, naming b the owner of E+1; b holds a as that owner, behind.
// Neither serves, and neither recognises the other's record when the
// link returns: the pod stays offline on both arrays for good, with the
// link and the mediator up (an interrupted handover must end with one
// sequencer, or none only until the mediator or an operator decides).
// The array that is giving the pod up must not race for it.
func TestReviewHandoverPersistRacesLinkLoss(t *testing.T) {
	s := reviewSim(t)
	s.runReview(t,
		handoverA,   // a's persist {E+1 seq=b left} in flight
		cutBoth,     // the link is lost
		advanceTO,   // both detect it: both pause and race at E
		electOldest, // a's elect reaches the mediator first: a wins E+1
		electOldest, // b's loses
		answerOldest,
		answerOldest, // b adopts E+1 as a's, behind
		persistB,
		persistA, // a's handover record: left
	)
}

// TestReviewRemovalPersistRacesLinkLoss: the same with a removal. a asks
// b to give the pod up; while b's record "left" is being persisted, the
// link is lost. b, still in sync, pauses and races, and wins E+1 at the
// mediator; a loses and adopts E+1 as b's. Then b's record lands: b has
// left at E. a is behind with b as its owner, b has given the pod up:
// the pod is served by nobody, for good.
func TestReviewRemovalPersistRacesLinkLoss(t *testing.T) {
	s := reviewSim(t)
	s.steps(t, removeFromA, flushA) // a asks b to give the pod up
	// b's driver handles the request: its machine decides, and its
	// record {E left} is being persisted (the sim's own driver does it
	// inline; here it stays in flight, as it does while the replication
	// package's handler writes it).
	s.feed(1, "remove-requested (persist in flight)", func(m *Machine) []Action {
		acts, err := m.RemoveRequested(m.Epoch())
		if err != nil {
			t.Fatalf("remove-requested: %v", err)
		}
		return acts
	})
	s.q[0] = nil // the request itself is not delivered again
	s.runReview(t,
		cutBoth, advanceTO, // both pause and race at E
		op{kind: opElectReq, a: 1}, // b's elect reaches the mediator first: b wins E+1
		electOldest,                // a's loses
		answerOldest, answerOldest, // a adopts E+1 as b's, behind
		persistA,
		persistB, // b's record: left at E
	)
}

// TestReviewLostElectAnswerStaysSuspended: the link is lost; a asks the
// mediator, which grants it E+1, but the answer does not reach a in
// time (the driver's race deadline, one Timeout, ends first: a slow
// mediator disk, a lost packet), so the driver feeds elect-failed,
// while the mediator stays reachable (its heartbeats go on). b asks
// too, loses to a and adopts E+1 as a's. Then nothing asks again: the
// machine races again only when the mediator's reachability changes
// (MediatorUp) or the link returns, so with the link down for longer
// the pod is served by nobody although a holds the mediator's grant
// and reaches the mediator. A retried elect (idempotent at the mediator)
// would win.
func TestReviewLostElectAnswerStaysSuspended(t *testing.T) {
	s := reviewSim(t)
	s.steps(t, cutBoth, advanceTO, electOldest)
	// a's answer is lost on the way back; the mediator is still online.
	a := s.answers[0]
	s.answers = s.answers[1:]
	s.feed(0, fmt.Sprintf("elect-failed %d (answer lost, mediator online)", a.epoch), func(m *Machine) []Action { return m.ElectFailed(a.epoch, s.now) })
	s.steps(t, electOldest, answerOldest, persistB)
	for range 50 {
		// 200 ms; the mediator answers whatever is asked of it.
		s.steps(t, op{kind: opAdvance, a: 2}, electOldest, answerOldest, persistA)
		if s.servesWrites(0) || s.servesWrites(1) {
			return
		}
	}
	t.Fatalf("the link down for %s with the mediator online, and nobody serves the pod: a %s, b %s (the mediator's winner is %s at epoch %d)\ntrace:\n  %s",
		s.now.Sub(start), s.describe(0), s.describe(1), s.medWinner, s.medEpoch, strings.Join(s.trace, "\n  "))
}

// TestReviewRemovalCrashBeforeUnstretch: a removes b from the pod; b
// gives it up (left) and answers; a persists its record "the pod is
// mine alone from E+1" and is killed before it makes the pod local (the
// Unstretched action: the catalog edit). At restart, that record reads
// exactly as a race won alone (alone, peer behind): a serves alone and
// resyncs b, which, having left, accepts: the removal the administrator
// asked for and b confirmed is silently undone, and b serves the pod
// again. (The same holds for the handover's receiving side, whose
// record is also an "alone" one.) A record that makes the pod single
// must say so, so that a restart finishes the unstretch.
func TestReviewRemovalCrashBeforeUnstretch(t *testing.T) {
	s := reviewSim(t)
	s.steps(t, removeFromA, flushA, deliverAtoB, deliverBtoA)
	a := s.arr[0]
	if len(a.persists) != 1 || !a.persists[0].Record.Alone {
		t.Fatalf("a's machine after b left: persists %v, a %s", a.persists, s.describe(0))
	}
	// Killed once the record is durable, before the driver performs
	// Unstretched (kill with an even parameter makes the persist in
	// flight durable without reporting it).
	s.steps(t, op{kind: opKill, a: 0}, op{kind: opRestart, a: 0})
	s.heal()
	s.failed(t)
	if b := s.arr[1]; b.m.State() != Left || !a.single {
		t.Fatalf("after a restart between the removal's record and its effect, the removed array serves the pod again: a %s, b %s\ntrace:\n  %s",
			s.describe(0), s.describe(1), strings.Join(s.trace, "\n  "))
	}
}

// TestReviewRestartWithShorterTimeout: the administrator lowers a's link
// timeout from 5 s to 1 s (replication.timeout, read at start) and
// restarts a, the pod's sequencer and preferred array. b, in sync, last
// renewed its read lease from a with a's old timeout (the session's
// lease is a ping's send time plus the peer's advertised timeout): when
// a's restart ends the session, b pauses and serves reads until then,
// 5 s less its margin. a restarts 300 ms later and, per its new
// timeout, takes the pod alone 1 s after its restart, having won the
// race (b, not preferred, asks only after its head start, 2 s here).
// From then on a acknowledges writes alone while b still serves reads:
// a stale read. A restarted array's fence must cover the timeout the
// peer last knew of it, not only its new one.
func TestReviewRestartWithShorterTimeout(t *testing.T) {
	const oldT, newT, headStart = 5 * time.Second, time.Second, 2 * time.Second
	t0 := start
	persist := func(m *Machine, acts []Action, now time.Time) []Action {
		var rest []Action
		for _, a := range acts {
			if a.Kind == Persist {
				rest = append(rest, m.Persisted(a.ID, now)...)
			} else {
				rest = append(rest, a)
			}
		}
		return rest
	}
	// b: an in-sync follower of a at epoch 3 (its own timeout is still
	// 5 s: the change is rolled out one array at a time).
	b := New(Config{Self: "b", Peer: "a", Timeout: oldT, HeadStart: headStart, Preference: "a"}, Record{Epoch: 2, Sequencer: "a"}, t0)
	b.LinkUp(t0)
	acts, err := b.ResyncRequested(3)
	if err != nil {
		t.Fatal(err)
	}
	persist(b, acts, t0)
	acts, err = b.GrantRequested(3, "")
	if err != nil {
		t.Fatal(err)
	}
	persist(b, acts, t0)
	b.MediatorUp(true, t0)
	// a's restart ends the session at t0; b's last ping a answered was
	// sent 50 ms before, with a's timeout then 5 s.
	lease := t0.Add(-50*time.Millisecond + oldT - oldT/5)
	b.LinkDown(t0, t0, lease)
	if b.State() != Paused {
		t.Fatalf("b after the link loss: %s", b.State())
	}
	// a restarts 300 ms later with the shorter timeout, races at once
	// (preferred) and wins.
	now := t0.Add(300 * time.Millisecond)
	// Its record, written while it ran with the old timeout, says so
	// (the fix: a record keeps the timeout in effect).
	a := New(Config{Self: "a", Peer: "b", Timeout: newT, HeadStart: headStart, Preference: "a"}, Record{Epoch: 3, Sequencer: "a", Synced: 3, Timeout: oldT}, now)
	a.MediatorUp(true, now)
	for _, act := range a.Tick(now) {
		if act.Kind == Elect {
			a.Elected(act.Epoch, ElectResult{Won: true, Epoch: act.Epoch + 1, Winner: "a"}, now)
		}
	}
	for step := 0; step < 200 && a.State() != Alone; step++ {
		now = now.Add(50 * time.Millisecond)
		persist(a, a.Tick(now), now)
		b.Tick(now)
	}
	if a.State() != Alone {
		t.Fatalf("a did not take the pod: %s {%s}", a.State(), a.Record())
	}
	if b.Serves(now, time.Time{}) {
		t.Fatalf("at t0+%s a serves the pod alone (epoch %d) while b, paused, still serves reads under the lease a's old timeout gave it (until t0+%s): "+
			"a's fence after its restart (its new timeout, %s) is shorter than the lease b holds",
			now.Sub(t0), a.Epoch(), lease.Sub(t0), newT)
	}
}

// TestReviewHandoverTargetKeepsPodWhenGiverEradicated: a, the sequencer
// and pre-elected array (no mediator configured: the pod is pre-elected
// on its sequencer), hands the pod over to b at E+1; a's record "left,
// b owns E+1" is durable and a serves nothing, but the handover message
// is lost with the link. b, in sync at E with a pre-elected, suspends
// and does not race. a's copy is pending eradication from the handover
// on, and is eradicated when the eradication window (24 h by default)
// passes with the link still down, or by its administrator, whom the
// handover told that b takes the pod when it next reaches a. Then a
// answers b's question for its record with "no copy". b, the only array
// left with the pod, current at E, and the array a designated as owner,
// must keep it (suspended until someone decides); on i9-pod it reads
// "no copy" as "the owner removed me" and gives the pod up: the pod is
// pending eradication on both arrays and, a window later, gone.
func TestReviewHandoverTargetKeepsPodWhenGiverEradicated(t *testing.T) {
	now := start
	b := New(Config{Self: "b", Peer: "a", Timeout: time.Second, HeadStart: time.Second},
		Record{Epoch: 5, Sequencer: "a", Synced: 5, Pre: "a"}, now)
	if b.State() != Suspended {
		t.Fatalf("b at start: %s", b.State())
	}
	now = now.Add(25 * time.Hour) // the link returns a day later
	b.LinkUp(now)
	acts := b.PeerRecord(Record{}, false, now)
	for _, a := range acts {
		if a.Kind == Persist && a.Record.Left {
			t.Fatalf("b, holding the only copy of the pod (current at epoch 5), gives it up because a has none: [%s]", formatActions(acts))
		}
	}
}

// TestSimBarrierHoldsRaceWin: b, the in-sync follower, has checked a
// write of a at epoch E and is applying it when the link is lost; b
// wins the race (E+1). Its record taking E+1 waits for the write being
// applied (the driver takes the pod's barrier exclusively to write a
// record that changes the epoch): written first, b would serve alone at
// E+1 while a write of E lands in its copy afterwards, over a block it
// may have acknowledged since. With the barrier planted away, the same
// schedule breaks the barrier invariant: the simulation models it.
func TestSimBarrierHoldsRaceWin(t *testing.T) {
	schedule := []op{
		cutBoth, advanceTO,
		{kind: opElectReq, a: 1}, electOldest, answerOldest, answerOldest, // b wins E+1
		persistA, persistB, // b's record taking E+1 (held while the write is applied)
		{kind: opApply, a: 1}, persistB,
	}
	for _, plant := range []string{"", "no-barrier"} {
		s := reviewSim(t)
		s.plant = plant
		s.write(0, 1)
		s.steps(t, deliverAtoB) // checked at b, being applied
		if len(s.arr[1].applying) != 1 {
			t.Fatalf("setting up: b applies %d writes", len(s.arr[1].applying))
		}
		for n, o := range schedule {
			s.logf("step %d: %s %d", n, opNames[o.kind], o.a)
			s.step(o)
			s.settle()
			s.check()
		}
		switch {
		case plant == "" && s.err != nil:
			t.Fatalf("%s: %s\ntrace:\n  %s", s.err.key, s.err.detail, strings.Join(s.trace, "\n  "))
		case plant == "" && (s.arr[1].m.State() != Alone || s.arr[1].data[1] != 1):
			t.Fatalf("b after the race: %s, b1=%d", s.describe(1), s.arr[1].data[1])
		case plant != "" && (s.err == nil || s.err.key != "barrier"):
			t.Fatalf("without the barrier, the schedule breaks no barrier invariant (%v):\n  %s", s.err, strings.Join(s.trace, "\n  "))
		}
	}
}
