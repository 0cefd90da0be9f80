package scsi

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"reflect"
	"sync"
	"testing"
	"time"
)

// failingReplica is the Replica of a unit at a stretched pod's sequencer
// whose peer confirms reservation changes until fail is set.
type failingReplica struct {
	mu     sync.Mutex
	fail   error
	shared int
}

func (f *failingReplica) Forward(context.Context, *Command) (*Result, bool) { return nil, false }
func (f *failingReplica) Ordering() bool                                    { return true }
func (f *failingReplica) Readable(context.Context) error                    { return nil }
func (f *failingReplica) Reset(context.Context, bool)                       {}
func (f *failingReplica) Decides() bool                                     { return true }
func (f *failingReplica) ShareReservations(context.Context, ReservationUpdate) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.shared++
	return f.fail
}

func (f *failingReplica) set(err error) {
	f.mu.Lock()
	f.fail = err
	f.mu.Unlock()
}

// newReplicaEnv is newEnv with a unit whose changes are shared through f.
func newReplicaEnv(t *testing.T, f Replica) *env {
	e := newEnv(t)
	e.lu = NewLogicalUnit(LUConfig{UUID: testUUID, Size: testSize, Backend: e.be, PersistPR: e.persist, Replica: f})
	e.res.SetLUNs(map[uint64]*LogicalUnit{0: e.lu})
	return e
}

// TestFailedShareUndone (issue 10, item 8): the peer does not confirm a
// reservation change (it refused it, or the link ended before its
// answer, or this array lost the pod meanwhile). Before, the sequencer
// logged the failure and answered GOOD unless it had lost the pod, and
// kept the change either way (its state, its saved state and the unit
// attentions): an acknowledged PREEMPT could be missing on the array
// that serves the pod next. Now the command fails with a retryable NOT
// READY and the unit is as before: reservations, saved state, no unit
// attention of the change.
func TestFailedShareUndone(t *testing.T) {
	for _, fail := range []error{
		errors.New("injected: the peer refused the update"),
		fmt.Errorf("injected: lost the pod: %w", ErrTransitioning),
	} {
		t.Run(fail.Error(), func(t *testing.T) {
			f := &failingReplica{}
			e := newReplicaEnv(t, f)
			a, b := nx(1), nx(2)
			e.ready(a)
			e.ready(b)
			e.mustPR(a, saRegIgnore, 0, 0, 0xaa, flagAPTPL)
			e.mustPR(b, saRegIgnore, 0, 0, 0xbb, flagAPTPL)
			e.mustPR(a, saReserve, PRWriteExclusiveRegistrantsOnly, 0xaa, 0, 0)
			e.ready(b)
			before := e.lu.Reservations()
			saved, _ := e.saved()
			if len(saved) == 0 {
				t.Fatal("nothing saved with APTPL: the test tests nothing of the saved state")
			}

			f.set(fail)
			shares := f.shared
			for _, c := range []struct {
				what    string
				sa      byte
				typ     PRType
				key, sk uint64
				flags   byte
			}{
				{"PREEMPT AND ABORT", saPreemptAbt, PRExclusiveAccess, 0xaa, 0xbb, 0},
				{"REGISTER without APTPL", saRegister, 0, 0xaa, 0xa1, 0},
				{"CLEAR", saClear, 0, 0xaa, 0, 0},
			} {
				r := e.prout(a, c.sa, c.typ, c.key, c.sk, c.flags)
				expectSense(t, r, SenseNotReadyTransitioning())
				if got := e.lu.Reservations(); !reflect.DeepEqual(got, before) {
					t.Fatalf("%s whose share failed: reservations %+v, want as before %+v", c.what, got, before)
				}
				if now, _ := e.saved(); !bytes.Equal(now, saved) {
					t.Fatalf("%s whose share failed: saved state %s, want as before %s", c.what, now, saved)
				}
			}
			if f.shared == shares {
				t.Fatal("no change was shared: the test tests nothing")
			}
			// No unit attention of the undone changes; b still writes.
			if r := e.do(b, []byte{opTestUnitReady}, nil); r.Status != StatusGood {
				t.Fatalf("TEST UNIT READY from the nexus the undone PREEMPT named: %s", senseOf(r))
			}
			e.good(b, cdbRW10(opWrite10, 0, 1), pattern(3, 1))
			// RESERVE(6) too (by a nexus of no registration, after the
			// persistent reservations are gone).
			f.set(nil)
			e.mustPR(a, saClear, 0, 0xaa, 0, 0)
			e.ready(b)
			f.set(fail)
			expectSense(t, e.do(a, []byte{opReserve6, 0, 0, 0, 0, 0}, nil), SenseNotReadyTransitioning())
			if h := e.lu.Reservations().SCSI2; h != nil {
				t.Fatalf("RESERVE(6) whose share failed: held by %+v", *h)
			}
			e.good(b, cdbRW10(opWrite10, 0, 1), pattern(4, 1))
			// And MODE SELECT of the software write protect bit.
			f.set(nil)
			ctl := e.good(a, []byte{opModeSense6, 0x08, pageControl, 0, 255, 0}, nil)[4:]
			on := append([]byte{0, 0, 0, 0}, ctl...)
			on[4+4] |= 0x08
			f.set(fail)
			expectSense(t, e.do(a, []byte{opModeSelect6, 0x10, 0, 0, byte(len(on)), 0}, on), SenseNotReadyTransitioning())
			if r := e.do(b, cdbRW10(opWrite10, 0, 1), pattern(5, 1)); r.Status != StatusGood {
				t.Fatalf("a write after a MODE SELECT of SWP whose share failed: %s (a unit attention of it, or the bit kept)", senseOf(r))
			}
		})
	}
}

// forwardingReplica is the Replica of a unit at a stretched pod's
// follower: every ordered command is forwarded and waits at the
// sequencer until release is closed.
type forwardingReplica struct {
	sent    chan struct{}
	release chan struct{}
}

func (f *forwardingReplica) Forward(_ context.Context, cmd *Command) (*Result, bool) {
	cmd.Forwarded()
	f.sent <- struct{}{}
	<-f.release
	return &Result{Status: StatusReservationConflict}, true
}
func (f *forwardingReplica) Ordering() bool                                             { return false }
func (f *forwardingReplica) Readable(context.Context) error                             { return nil }
func (f *forwardingReplica) Reset(context.Context, bool)                                {}
func (f *forwardingReplica) Decides() bool                                              { return false }
func (f *forwardingReplica) ShareReservations(context.Context, ReservationUpdate) error { return nil }

// TestInstallDoesNotWaitForForwarded (issue 10, item 1): the sequencer's
// PREEMPT AND ABORT of a nexus reaches the follower while that nexus's
// own command, forwarded, waits at the sequencer (for the reservation
// lock the sequencer holds while it shares). The install returns without
// waiting for it (it would wait for ever), and the command, aborted,
// reports no status when it ends.
func TestInstallDoesNotWaitForForwarded(t *testing.T) {
	f := &forwardingReplica{sent: make(chan struct{}, 1), release: make(chan struct{})}
	e := newEnv(t)
	e.lu = NewLogicalUnit(LUConfig{UUID: testUUID, Size: testSize, Backend: e.be, Replica: f})
	e.res.SetLUNs(map[uint64]*LogicalUnit{0: e.lu})
	b := nx(2)
	e.ready(b)
	got := make(chan *Result, 1)
	go func() {
		c, p := cdbPROut(saPreemptAbt, PRExclusiveAccess)
		got <- e.do(b, c, p(0xbb, 0xaa, 0))
	}()
	<-f.sent
	victim := Registration{Key: 0xbb, Nexus: NexusID(b)}
	installed := make(chan error, 1)
	go func() {
		installed <- e.lu.InstallReservations(context.Background(), ReservationUpdate{
			State:   ReservationState{Generation: 5},
			Notices: []PRNotice{{To: victim, Sense: SenseRegistrationsPreempted()}},
			Abort:   []Registration{victim},
		})
	}()
	select {
	case err := <-installed:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		close(f.release)
		t.Fatal("the install waits for a command this array forwarded to the sequencer")
	}
	close(f.release)
	if r := <-got; !r.Aborted {
		t.Fatalf("the forwarded command of the preempted nexus: status %#x, want aborted", r.Status)
	}
}

// TestShareMaybeKept: a reservation change that went out to the peer and
// was not confirmed before the command ended (ErrMayBeShared) is kept, for
// a host may have seen it through the peer; the command fails, of unknown
// outcome, and the change's unit attentions are established.
func TestShareMaybeKept(t *testing.T) {
	f := &failingReplica{}
	e := newReplicaEnv(t, f)
	a, b := nx(1), nx(2)
	e.ready(a)
	e.ready(b)
	e.mustPR(a, saRegIgnore, 0, 0, 0xaa, 0)
	e.mustPR(b, saRegIgnore, 0, 0, 0xbb, 0)
	e.ready(b)
	f.set(fmt.Errorf("injected: %w", ErrMayBeShared))
	expectSense(t, e.prout(a, saPreemptAbt, PRExclusiveAccess, 0xaa, 0xbb, 0), SenseNotReadyTransitioning())
	if regs := e.lu.Reservations().Registrations; len(regs) != 1 || regs[0].Key != 0xaa {
		t.Fatalf("registrations after a PREEMPT the peer may hold: %+v, want only 0xaa's", regs)
	}
	e.check(b, []byte{opTestUnitReady}, nil, SenseRegistrationsPreempted())
}
