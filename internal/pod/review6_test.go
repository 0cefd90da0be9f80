package pod

import (
	"strings"
	"testing"
)

// Schedules of a sixth review (of the liveness fixes: the pre-election
// landing after the link loss, the resync refused while an elect may
// hold a grant, ElectUnsent). The simulation's driver persists a peer's
// request inline, before anything else happens; the replication
// package's handler does not: it persists the record the machine
// decided with the pod's barrier held (applyMu), but the link-down
// event takes only the machine's lock, so the machine may see the link
// go (and race, and hear the mediator) while a record it decided for a
// peer's request is still being written. These schedules leave such a
// record in flight, as TestReviewRemovalPersistRacesLinkLoss does.

// untilQueued runs the pending steps of the simulation (in order, none
// failing) until a request of kind from array i waits on the link, and
// takes it off the link.
func (s *sim) untilQueued(t *testing.T, i int, kind string) simMsg {
	t.Helper()
	for range 200 {
		for k, m := range s.q[i] {
			if m.kind == kind {
				s.q[i] = append(s.q[i][:k:k], s.q[i][k+1:]...)
				return m
			}
		}
		s.heartbeat(0)
		s.heartbeat(1)
		s.pendingStep(true)
		s.settle()
		s.check()
		s.failed(t)
	}
	t.Fatalf("setting up: no %s from %s: a %s, b %s\ntrace:\n  %s", kind, s.arr[i].id, s.describe(0), s.describe(1), strings.Join(s.trace, "\n  "))
	return simMsg{}
}

// requestInFlight feeds array j the peer's request as the replication
// handler does, with the record it decides left in flight.
func (s *sim) requestInFlight(t *testing.T, j int, name string, f func(m *Machine) ([]Action, error)) {
	t.Helper()
	s.feed(j, name+" (persist in flight)", func(m *Machine) []Action {
		acts, err := f(m)
		if err != nil {
			t.Fatalf("%s: %v\ntrace:\n  %s", name, err, strings.Join(s.trace, "\n  "))
		}
		return acts
	})
	if len(s.arr[j].persists) == 0 {
		t.Fatalf("setting up: %s decided no record", name)
	}
}

// TestReview6GrantAcceptedAfterLinkLoss: a resyncs b (a fresh stretch)
// and grants it in sync. b's handler accepts the grant and its record
// (synced at E) is being written when the link is lost. b's machine,
// receiving, suspends; a, granted, pauses and races, but cannot reach
// the mediator. Then b's record lands: Persisted(pAcceptGrant) makes b
// in-sync, with the link down. It never pauses, never races (LinkDown
// came before), and its paths stay active with every command waiting
// (mode().waits: in-sync serves only under a lease, and there is no
// session). With the mediator reachable by b only, b holds a current
// copy and every acknowledged write, and nobody serves the pod for as
// long as the link stays down (the sim's offline invariant). A grant
// accepted after the link loss must leave b as if the link had been
// lost after it (paused, racing), or the record must be written before
// the link-down event is taken.
func TestReview6GrantAcceptedAfterLinkLoss(t *testing.T) {
	s := freshSim()
	s.steps(t, op{kind: opWrite, a: 0}) // an acknowledged write on a, alone
	g := s.untilQueued(t, 0, "grant")
	s.requestInFlight(t, 1, "grant-requested", func(m *Machine) ([]Action, error) { return m.GrantRequested(g.epoch, g.pre) })
	s.steps(t, cutBoth, advanceTO) // both detect the loss: b suspends, a races
	s.partition(liveOne, 1)        // b's record lands; the mediator is b's only
	s.failed(t)
	if st := s.arr[1].m.State(); st == InSync && !s.arr[1].m.Link() {
		t.Errorf("b is %s with the link down (it never races, and its host commands wait)", st)
	}
}

// TestReview6GrantAcceptedAfterLinkLossSplitBrain: as
// TestReview6GrantAcceptedAfterLinkLoss, but a's elect reaches the
// mediator (it was sent when a paused) and the link returns. b, in sync
// with the link down since its record landed, is in sync on the new
// session too: its heartbeats renew its lease and it serves reads at E.
// a's answer comes: a won E+1, serves alone from its fence (the old
// session's) and acknowledges writes that b never gets, while b goes on
// serving reads of its copy at E (b refuses a's resync: it is in sync):
// two arrays serving the pod apart, and a read through b returns data
// older than a write acknowledged through a (the sim's alone invariant;
// the first write through a makes it a stale read).
func TestReview6GrantAcceptedAfterLinkLossSplitBrain(t *testing.T) {
	s := freshSim()
	s.steps(t, op{kind: opWrite, a: 0})
	g := s.untilQueued(t, 0, "grant")
	s.requestInFlight(t, 1, "grant-requested", func(m *Machine) ([]Action, error) { return m.GrantRequested(g.epoch, g.pre) })
	s.steps(t, cutBoth, advanceTO, persistB) // b's record lands after its link-down
	if st := s.arr[1].m.State(); st != InSync || s.arr[1].m.Link() {
		t.Logf("b is %s (link up: %t) once its record landed", st, s.arr[1].m.Link())
	}
	s.runReview(t) // the link returns, a hears the mediator
}

// TestReview6RandomLinkLossInHandler runs TestRandomPair's schedules
// with the link lost, now and then, while a handler of the peer's
// request writes the record its machine decided (cutInHandler), which
// the replication package allows and the sim's own driver never did
// (it persists a request's records inline). It reports, as
// TestRandomPair does, the first schedule that breaks each invariant,
// shrunk.
func TestReview6RandomLinkLossInHandler(t *testing.T) {
	runs := *simRuns
	if testing.Short() {
		runs /= 5
	}
	seen := map[string]bool{}
	cuts := 0
	// The seeds that found the defects first (as -short runs fewer).
	seeds := []int64{1296, 29115}
	for i := range int64(2 * runs) {
		seeds = append(seeds, i)
	}
	for _, seed := range seeds {
		mode := simMode(seed % 2)
		sched := scheduleOf(seed)
		sched.handlerCut = true
		v, trace := runSim(mode, "", sched, true)
		for _, l := range trace {
			if strings.Contains(l, "while") && strings.Contains(l, "handler writes its record") {
				cuts++
			}
		}
		if v != nil && !seen[v.key] {
			seen[v.key] = true
			small := shrink(mode, "", sched, v.key)
			v, trace = runSim(mode, "", small, true)
			t.Errorf("seed %d (%s): %s: %s\nshrunk schedule (%d of %d steps, liveness phase %s, array %d):\n  %s",
				seed, mode, v.key, v.detail, len(small.ops), len(sched.ops), small.live, small.liveArray, strings.Join(trace, "\n  "))
		}
	}
	t.Logf("%d schedules, %d links lost in a handler", len(seeds), cuts)
	if cuts < runs/10 {
		t.Errorf("below the floor: %d links lost in a handler in %d schedules", cuts, 2*runs)
	}
}
