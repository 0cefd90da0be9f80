package scsi

import (
	"context"
	"slices"
	"sync/atomic"
	"testing"
)

// testFate is an AnswerFate the test sets.
type testFate struct{ lost, delivered atomic.Bool }

func (f *testFate) Lost() bool      { return f.lost.Load() }
func (f *testFate) Delivered() bool { return f.delivered.Load() }

// Settled implements AnswerFate: the test sets the fate before a retry.
func (f *testFate) Settled() <-chan struct{} { return settledNow }

// settledNow is a closed channel.
var settledNow = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

// forwardedRun runs cdb with data-out data from n as a command the other
// array forwarded, under fate.
func (e *env) forwardedRun(n Nexus, cdb, data []byte, fate AnswerFate) *Result {
	e.t.Helper()
	cmd := &Command{Nexus: n, CDB: cdb, DataOut: data}
	return e.tgt.ExecuteForwarded(WithForwarded(context.Background(), cmd, fate), e.lu, cmd)
}

// otherPort is nexus n of the same host through another port (another
// path: another ISID and relative target port).
func otherPort(n Nexus) Nexus {
	n.InitiatorPort += "9"
	n.RelativePortID = 2
	return n
}

func isGood(r *Result) bool { return r.Status == StatusGood }

// newPREnv is newEnv with a ready nexus and PERSISTENT RESERVE OUT
// REGISTER's CDB and parameter list.
func newPREnv(t *testing.T) (*env, Nexus, []byte, func(key, sakey uint64, flags byte) []byte) {
	e := newEnv(t)
	n := nx(1)
	e.ready(n)
	reg, param := cdbPROut(byte(PRRegister), 0)
	return e, n, reg, param
}

// conflict asserts RESERVATION CONFLICT.
func (e *env) conflict(n Nexus, what string, cdb, data []byte) {
	e.t.Helper()
	if r := e.do(n, cdb, data); r.Status != StatusReservationConflict {
		e.t.Fatalf("%s: status %#x sense %v, want RESERVATION CONFLICT", what, r.Status, senseOf(r))
	}
}

// newCAWEnv is newEnv with a ready nexus, block 10 holding 'X' and the
// data-out of a COMPARE AND WRITE of it from 'X' to 'Y'.
func newCAWEnv(t *testing.T) (*env, Nexus, []byte) {
	e := newEnv(t)
	n := nx(1)
	e.ready(n)
	e.good(n, cdbRW16(opWrite16, 10, 1), pattern('X', 1))
	return e, n, append(pattern('X', 1), pattern('Y', 1)...)
}

// TestOutcomeCAWRetry: a forwarded COMPARE AND WRITE's outcome answers
// the host's retry (same host, any path) only while its answer may be
// lost, only once, and only for the same command from the same host.
func TestOutcomeCAWRetry(t *testing.T) {
	e, n, caw := newCAWEnv(t)
	fate := &testFate{}
	if r := e.forwardedRun(n, cdbCAW(10, 1), caw, fate); !isGood(r) {
		t.Fatalf("forwarded COMPARE AND WRITE: %v", senseOf(r))
	}
	// The answer was delivered (or not known lost): the same command
	// again is a new one, and miscompares as on one array.
	e.check(n, cdbCAW(10, 1), caw, SenseMiscompare(0))
	fate.lost.Store(true)
	other := nx(2)
	e.ready(other)
	e.check(other, cdbCAW(10, 1), caw, SenseMiscompare(0)) // another host
	e.check(n, cdbCAW(10, 1), append(pattern('X', 1), pattern('Z', 1)...), SenseMiscompare(0))
	p := otherPort(n)
	e.ready(p)
	if r := e.do(p, cdbCAW(10, 1), caw); !isGood(r) {
		t.Fatalf("the retry through another path of a COMPARE AND WRITE whose answer was lost: %v, want GOOD", senseOf(r))
	}
	e.check(n, cdbCAW(10, 1), caw, SenseMiscompare(0)) // answered once
	if got := e.be.Block(10); string(got) != string(pattern('Y', 1)) {
		t.Fatal("the block does not hold the COMPARE AND WRITE's data")
	}
}

// TestOutcomeCAWRetryForwardedAgain: a retry that is itself forwarded
// takes the outcome over under its own fate, so that losing its answer
// too is answered again.
func TestOutcomeCAWRetryForwardedAgain(t *testing.T) {
	e, n, caw := newCAWEnv(t)
	first, second := &testFate{}, &testFate{}
	e.forwardedRun(n, cdbCAW(10, 1), caw, first)
	first.lost.Store(true)
	if r := e.forwardedRun(n, cdbCAW(10, 1), caw, second); !isGood(r) {
		t.Fatalf("forwarded retry: %v, want GOOD", senseOf(r))
	}
	second.lost.Store(true)
	if r := e.do(n, cdbCAW(10, 1), caw); !isGood(r) {
		t.Fatalf("the retry of the retry: %v, want GOOD", senseOf(r))
	}
}

// TestOutcomeCAWForgottenByWrites: a write of the blocks after the
// COMPARE AND WRITE, even of the same data, makes it no longer their
// last writer: the retry miscompares (it would answer for data another
// command wrote). So does a write from the other array (NoteWrite).
func TestOutcomeCAWForgottenByWrites(t *testing.T) {
	e := newEnv(t)
	n := nx(1)
	e.ready(n)
	caw := append(pattern('X', 1), pattern('Y', 1)...)
	for _, write := range []func(){
		func() { e.good(n, cdbRW16(opWrite16, 8, 4), pattern('Y', 4)) },
		func() { e.lu.NoteWrite(context.Background(), 10*BlockSize, BlockSize) },
		func() {
			e.good(n, []byte{opWriteSame16, 0, 0, 0, 0, 0, 0, 0, 0, 10, 0, 0, 0, 1, 0, 0}, pattern('Y', 1))
		},
	} {
		e.good(n, cdbRW16(opWrite16, 10, 1), pattern('X', 1))
		fate := &testFate{}
		e.forwardedRun(n, cdbCAW(10, 1), caw, fate)
		fate.lost.Store(true)
		write()
		e.check(n, cdbCAW(10, 1), caw, SenseMiscompare(0))
	}
}

// TestOutcomeCAWFromMirror: at the array that forwarded the command, the
// sequencer's write of it (NoteWrite under WithForwarded) remembers the
// outcome, for a retry once this array serves alone.
func TestOutcomeCAWFromMirror(t *testing.T) {
	e := newEnv(t)
	n := nx(1)
	e.ready(n)
	caw := append(pattern('X', 1), pattern('Y', 1)...)
	e.good(n, cdbRW16(opWrite16, 10, 1), pattern('Y', 1)) // the mirrored write's data
	fate := &testFate{}
	cmd := &Command{Nexus: n, CDB: cdbCAW(10, 1), DataOut: caw}
	e.lu.NoteWrite(WithForwarded(context.Background(), cmd, fate), 10*BlockSize, BlockSize)
	e.check(n, cdbCAW(10, 1), caw, SenseMiscompare(0)) // forward not failed
	fate.lost.Store(true)
	if r := e.do(n, cdbCAW(10, 1), caw); !isGood(r) {
		t.Fatalf("the retry: %v, want GOOD", senseOf(r))
	}
}

// TestOutcomeMemoryBounded: a host flooding the unit with forwarded
// COMPARE AND WRITEs whose answers are lost keeps at most an eighth of
// the memory, evicting its own oldest outcomes, and never another
// host's; outcomes whose answers were delivered go.
func TestOutcomeMemoryBounded(t *testing.T) {
	e := newEnv(t)
	victim, flood := nx(1), nx(2)
	e.ready(victim)
	e.ready(flood)
	caw := append(pattern(0, 1), pattern('Y', 1)...)
	lost := &testFate{}
	lost.lost.Store(true)
	if r := e.forwardedRun(victim, cdbCAW(0, 1), caw, lost); !isGood(r) {
		t.Fatalf("victim's COMPARE AND WRITE: %v", senseOf(r))
	}
	for lba := uint64(1); lba < 2000; lba++ {
		if r := e.forwardedRun(flood, cdbCAW(lba, 1), caw, lost); !isGood(r) {
			t.Fatalf("flood's COMPARE AND WRITE at %d: %v", lba, senseOf(r))
		}
	}
	per, total := e.rememberedCAW()
	if max := DefaultRememberedOutcomes / 8; per[flood.InitiatorName] > max || total > DefaultRememberedOutcomes {
		t.Fatalf("after a flood the unit remembers %d outcomes, %d of the flooding host's (at most %d, %d)", total, per[flood.InitiatorName], DefaultRememberedOutcomes, max)
	}
	if r := e.do(victim, cdbCAW(0, 1), caw); !isGood(r) {
		t.Fatalf("the victim's retry after another host's flood: %v, want GOOD", senseOf(r))
	}
	// Delivered answers are dropped at the next write.
	delivered := &testFate{}
	for lba := uint64(3000); lba < 3010; lba++ {
		e.forwardedRun(victim, cdbCAW(lba, 1), caw, delivered)
	}
	delivered.delivered.Store(true)
	e.good(victim, cdbRW16(opWrite16, 5000, 1), pattern(1, 1))
	e.lu.outcomes.mu.Lock()
	left := slices.ContainsFunc(e.lu.outcomes.mu.caw, func(x cawOutcome) bool { return x.fate == AnswerFate(delivered) })
	e.lu.outcomes.mu.Unlock()
	if left {
		t.Fatal("outcomes whose answers were delivered are still remembered after a write")
	}
}

// TestOutcomePROutRetry: a forwarded PERSISTENT RESERVE OUT's outcome
// answers the retry on the same I_T nexus while its answer may be lost
// and the reservation state is what it left; on another nexus (another
// path) the command is that nexus's own, and any change since makes the
// retry run afresh.
func TestOutcomePROutRetry(t *testing.T) {
	e, n, reg, param := newPREnv(t)
	fate := &testFate{}
	if r := e.forwardedRun(n, reg, param(0, 0xb, 0), fate); !isGood(r) {
		t.Fatalf("forwarded REGISTER: %v", senseOf(r))
	}
	e.conflict(n, "a repeat of a delivered REGISTER", reg, param(0, 0xb, 0))
	fate.lost.Store(true)
	p := otherPort(n)
	e.ready(p)
	if r := e.do(p, reg, param(0, 0xb, 0)); !isGood(r) { // another nexus registers
		t.Fatalf("REGISTER of another nexus: %v", senseOf(r))
	}
	e.conflict(n, "the retry after another change", reg, param(0, 0xb, 0))
	// Unregister both, then lose a REGISTER's answer again.
	e.good(n, reg, param(0xb, 0, 0))
	e.good(p, reg, param(0xb, 0, 0))
	fate = &testFate{}
	e.forwardedRun(n, reg, param(0, 0xc, 0), fate)
	fate.lost.Store(true)
	if r := e.do(n, reg, param(0, 0xc, 0)); !isGood(r) {
		t.Fatalf("the retry of a REGISTER whose answer was lost: %v, want GOOD", senseOf(r))
	}
	if got := e.lu.Reservations().Registrations; len(got) != 1 || got[0].Key != 0xc {
		t.Fatalf("registrations after the retry: %v", got)
	}
	e.conflict(n, "a second repeat (answered once)", reg, param(0, 0xc, 0))
	// A change that is no PERSISTENT RESERVE OUT (a SCSI-2 reservation
	// taken once no registration is left) makes the retry run afresh.
	fate = &testFate{}
	e.forwardedRun(n, reg, param(0xc, 0, 0), fate)
	fate.lost.Store(true)
	e.good(p, []byte{opReserve6, 0, 0, 0, 0, 0}, nil)
	if r := e.do(n, reg, param(0xc, 0, 0)); isGood(r) {
		t.Fatal("the retry of an unregistration after another nexus reserved the unit: GOOD, want it run afresh")
	}
}

// TestOutcomePROutFromShare: at the array that forwarded a PERSISTENT
// RESERVE OUT, the sequencer's state installed for it remembers the
// outcome, for the retry once this array serves alone.
func TestOutcomePROutFromShare(t *testing.T) {
	e, n, reg, param := newPREnv(t)
	cmd := &Command{Nexus: n, CDB: reg, DataOut: param(0, 0xd, 0)}
	st := ReservationState{Generation: 1, Registrations: []Registration{{Key: 0xd, Nexus: NexusID(n)}}}
	fate := &testFate{}
	if err := e.lu.InstallReservations(WithForwarded(context.Background(), cmd, fate), ReservationUpdate{State: st}); err != nil {
		t.Fatal(err)
	}
	fate.lost.Store(true)
	if r := e.do(n, reg, param(0, 0xd, 0)); !isGood(r) {
		t.Fatalf("the retry: %v, want GOOD", senseOf(r))
	}
	e.lu.ForgetOutcomes()
	fate2 := &testFate{}
	if err := e.lu.InstallReservations(WithForwarded(context.Background(), cmd, fate2), ReservationUpdate{State: st}); err != nil {
		t.Fatal(err)
	}
	fate2.lost.Store(true)
	e.lu.ForgetOutcomes() // a resync replaces this copy
	e.conflict(n, "the retry after the outcomes were forgotten", reg, param(0, 0xd, 0))
}
