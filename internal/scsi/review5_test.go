package scsi

import (
	"context"
	"reflect"
	"runtime"
	"strings"
	"testing"
	"time"
)

// asyncTagged runs cdb from n with task tag tag in the background; the
// result comes on the channel.
func (e *env) asyncTagged(n Nexus, tag uint32, cdb, data []byte) <-chan *Result {
	c := make([]byte, max(16, len(cdb)))
	copy(c, cdb)
	got := make(chan *Result, 1)
	go func() {
		got <- e.tgt.Execute(context.Background(), &Command{Nexus: n, Tag: tag, CDB: c, DataOut: data})
	}()
	return got
}

// goroutinesIn counts the goroutines whose stack holds every one of
// frames.
func goroutinesIn(frames ...string) int {
	buf := make([]byte, 1<<22)
	buf = buf[:runtime.Stack(buf, true)]
	k := 0
	for _, g := range strings.Split(string(buf), "\n\n") {
		all := true
		for _, f := range frames {
			all = all && strings.Contains(g, f)
		}
		if all {
			k++
		}
	}
	return k
}

// waitBlocked waits until k goroutines are blocked on a mutex inside fn.
func waitBlocked(t *testing.T, k int, fn string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for goroutinesIn("sync.(*Mutex).Lock", fn) < k {
		if time.Now().After(deadline) {
			t.Fatalf("no goroutine blocked on a lock in %s", fn)
		}
		time.Sleep(time.Millisecond)
	}
}

// TestReview5RetriedPreemptDeadlock: a host's PREEMPT AND ABORT run at
// the sequencer (an Own) and its identical retry on the same nexus (the
// host timed out on the first and sent it again) while the preempted
// node polls READ KEYS. The retry takes the reservation lock (prMu) as
// soon as the first's applyPR releases it and waits there, holding it,
// for the first's Own to end (outcomes.settledLocked). The first ends
// only after its abort of the preempted nexus's tasks, one of which is
// the READ KEYS queued on that same lock, which cancelling cannot free.
// Nothing ends: the PREEMPT, its retry and the READ KEYS hang until the
// host's own task management gives up on them.
func TestReview5RetriedPreemptDeadlock(t *testing.T) {
	h := newHoldingReplica()
	e := newReplicaEnv(t, h)
	a, b := nx(1), nx(2)
	e.ready(a)
	e.ready(b)
	e.mustPR(a, saRegIgnore, 0, 0, 0xaa, 0)
	e.mustPR(b, saRegIgnore, 0, 0, 0xbb, 0)
	e.mustPR(a, saReserve, PRWriteExclusiveRegistrantsOnly, 0xaa, 0, 0)
	e.ready(b)

	h.hold.Store(true)
	c, p := cdbPROut(saPreemptAbt, PRWriteExclusiveRegistrantsOnly)
	first := e.asyncTagged(a, 1, c, p(0xaa, 0xbb, 0))
	<-h.began // the first holds prMu while its change is shared
	retry := e.asyncTagged(a, 2, c, p(0xaa, 0xbb, 0))
	// The retry waits: for the first's fate (awaitPR, holding no lock),
	// or, before that wait existed, on prMu in applyPR.
	for deadline := time.Now().Add(20 * time.Second); goroutinesIn("sync.(*Mutex).Lock", "applyPR")+goroutinesIn("(*outcomes).awaitPR") < 1; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the retry does not wait for the first PREEMPT AND ABORT")
		}
	}
	keys := e.asyncTagged(b, 3, cdbPRIn(prInReadKeys, 512), nil)
	waitBlocked(t, 1, "runPRIn")
	h.hold.Store(false)
	h.answers <- nil // the peer confirms the PREEMPT

	for _, x := range []struct {
		what string
		got  <-chan *Result
	}{{"the PREEMPT AND ABORT", first}, {"its retry", retry}, {"b's READ KEYS", keys}} {
		select {
		case r := <-x.got:
			t.Logf("%s: status %#x %s aborted %t", x.what, r.Status, senseOf(r), r.Aborted)
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: no answer after 10 s; blocked: %d in applyPR's lock, %d in runPRIn's lock, %d in settledLocked, %d in abortTasks",
				x.what, goroutinesIn("sync.(*Mutex).Lock", "applyPR"), goroutinesIn("sync.(*Mutex).Lock", "runPRIn"),
				goroutinesIn("settledLocked"), goroutinesIn("(*Target).abort("))
		}
	}
}

// TestReview5NoOpPROutForgetsOutcome: the memory of a PERSISTENT RESERVE
// OUT whose answer was lost answers the host's retry while the
// reservation state is what it left. A PERSISTENT RESERVE OUT of another
// nexus that changes nothing (a REGISTER of key 0 by an unregistered
// nexus, a RELEASE by a registrant that holds nothing, the holder's
// RESERVE again, as a cluster's periodic defence sends) leaves the state
// as it was, yet replaces the remembered outcome: the retry then runs
// afresh and conflicts with its own registration.
func TestReview5NoOpPROutForgetsOutcome(t *testing.T) {
	for _, noop := range []struct {
		name       string
		sa         byte
		typ        PRType
		key, sakey uint64
		who        int
	}{
		{"nothing (the control)", 0, 0, 0, 0, 0},
		{"REGISTER 0 by an unregistered nexus", saRegister, 0, 0, 0, 4},
		{"RELEASE by a non-holder", saRelease, PRWriteExclusive, 0xdd, 0, 2},
		{"RESERVE by the holder again", saReserve, PRWriteExclusive, 0xee, 0, 3},
	} {
		t.Run(noop.name, func(t *testing.T) {
			e, n, reg, param := newPREnv(t)
			for i := 2; i <= 4; i++ {
				e.ready(nx(i))
			}
			e.mustPR(nx(2), saRegIgnore, 0, 0, 0xdd, 0)
			e.mustPR(nx(3), saRegIgnore, 0, 0, 0xee, 0)
			e.mustPR(nx(3), saReserve, PRWriteExclusive, 0xee, 0, 0)
			fate := &testFate{}
			if r := e.forwardedRun(n, reg, param(0, 0xc, 0), fate); !isGood(r) {
				t.Fatalf("forwarded REGISTER: %v", senseOf(r))
			}
			fate.lost.Store(true) // the link failed before its answer came back
			before := e.lu.Reservations()
			if noop.who != 0 {
				if r := e.prout(nx(noop.who), noop.sa, noop.typ, noop.key, noop.sakey, 0); !isGood(r) {
					t.Fatalf("%s: %v", noop.name, senseOf(r))
				}
			}
			if after := e.lu.Reservations(); !reflect.DeepEqual(before, after) {
				t.Fatalf("%s changed the state: %+v -> %+v", noop.name, before, after)
			}
			if r := e.do(n, reg, param(0, 0xc, 0)); !isGood(r) {
				t.Fatalf("the host's retry of its REGISTER whose answer was lost, after %s (the state unchanged): status %#x %s, want GOOD",
					noop.name, r.Status, senseOf(r))
			}
		})
	}
}

// TestReview5UnchangedShareForgetsOutcome: at the array that forwarded a
// PERSISTENT RESERVE OUT, the sequencer's state installed for it
// remembers the outcome for the host's retry once this array serves
// alone (TestOutcomePROutFromShare). Any later share that leaves the
// persistent reservations as they are (the share of a reset, of a MODE
// SELECT of the SWP bit, of another host's PERSISTENT RESERVE OUT that
// changed nothing) replaces it: the retry, once this array serves alone,
// conflicts with the host's own registration.
func TestReview5UnchangedShareForgetsOutcome(t *testing.T) {
	for _, tc := range []struct {
		name string
		u    func(st ReservationState) ReservationUpdate
	}{
		{"nothing (the control)", nil},
		{"a reset's share", func(st ReservationState) ReservationUpdate { return ReservationUpdate{State: st, Resets: 1} }},
		{"a MODE SELECT's share", func(st ReservationState) ReservationUpdate {
			return ReservationUpdate{State: st, SWP: true, ModeChangedBy: &PRNexus{InitiatorPort: "x", RelativePortID: 2}}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e, n, reg, param := newPREnv(t)
			cmd := &Command{Nexus: n, CDB: reg, DataOut: param(0, 0xd, 0)}
			st := ReservationState{Generation: 1, Registrations: []Registration{{Key: 0xd, Nexus: NexusID(n)}}}
			fate := &testFate{}
			if err := e.lu.InstallReservations(WithForwarded(context.Background(), cmd, fate), ReservationUpdate{State: st}); err != nil {
				t.Fatal(err)
			}
			if tc.u != nil {
				if err := e.lu.InstallReservations(context.Background(), tc.u(st)); err != nil {
					t.Fatal(err)
				}
			}
			fate.lost.Store(true) // the forward failed: this array serves alone
			if got := e.lu.Reservations(); !reflect.DeepEqual(got.Registrations, st.Registrations) {
				t.Fatalf("registrations %+v, want %+v", got.Registrations, st.Registrations)
			}
			r := e.do(n, reg, param(0, 0xd, 0))
			for i := 0; i < 5 && isUA(r); i++ {
				r = e.do(n, reg, param(0, 0xd, 0)) // past a unit attention
			}
			if !isGood(r) {
				t.Fatalf("the host's retry after %s (its registration unchanged): status %#x %s, want GOOD", tc.name, r.Status, senseOf(r))
			}
		})
	}
}

// isUA reports whether r is a unit attention.
func isUA(r *Result) bool {
	if r.Status != StatusCheckCondition {
		return false
	}
	s, err := ParseSense(r.Sense)
	return err == nil && s.Key == KeyUnitAttention
}
