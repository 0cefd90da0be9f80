package scsi

import (
	"fmt"
	"testing"
)

// TestOutcomeMemoryManyInitiators (issue 10, leftovers): hosts under
// many initiator names (16, twice the eight that fill the memory at an
// eighth each) flood the unit with forwarded COMPARE AND WRITEs whose
// answers are lost. The memory stays bounded, no name holds more than an
// eighth of it, and the outcome of a host that holds one, still
// unanswered, is not evicted: its retry is GOOD, as the first run was.
// Before, once eight names held their eighth each, every new outcome
// evicted the oldest of all, the victim's first, and its retry was a
// MISCOMPARE against its own write.
func TestOutcomeMemoryManyInitiators(t *testing.T) {
	e := newEnv(t)
	victim := nx(1)
	e.ready(victim)
	caw := append(pattern(0, 1), pattern('Y', 1)...)
	lost := &testFate{}
	lost.lost.Store(true)
	if r := e.forwardedRun(victim, cdbCAW(0, 1), caw, lost); !isGood(r) {
		t.Fatalf("victim's COMPARE AND WRITE: %v", senseOf(r))
	}
	const names, each = 16, 100
	floods := 0
	for i := range names {
		n := nx(100 + i)
		n.InitiatorName = fmt.Sprintf("iqn.2024-01.test:flood%d", i)
		e.ready(n)
		for j := range each {
			lba := uint64(1 + i*each + j)
			if r := e.forwardedRun(n, cdbCAW(lba, 1), caw, lost); !isGood(r) {
				t.Fatalf("flood %d's COMPARE AND WRITE at %d: %v", i, lba, senseOf(r))
			}
			floods++
		}
	}
	if floods < names*each {
		t.Fatalf("only %d flooding commands ran", floods)
	}
	per, total := e.rememberedCAW()
	if total > DefaultRememberedOutcomes {
		t.Fatalf("the unit remembers %d outcomes, more than %d", total, DefaultRememberedOutcomes)
	}
	for name, k := range per {
		if k > DefaultRememberedOutcomes/8 {
			t.Fatalf("%s holds %d outcomes, more than an eighth (%d)", name, k, DefaultRememberedOutcomes/8)
		}
	}
	if total < DefaultRememberedOutcomes {
		t.Fatalf("the flood filled %d of %d outcomes: the test did not fill the memory", total, DefaultRememberedOutcomes)
	}
	if r := e.do(victim, cdbCAW(0, 1), caw); !isGood(r) {
		t.Fatalf("the victim's retry after a flood under %d names: %v, want GOOD (the first run wrote)", names, senseOf(r))
	}
}

// TestOutcomeOwnPROutMayBeShared (issue 10, leftovers): at the array
// that decides the reservations, a PERSISTENT RESERVE OUT a host sent to
// it (not forwarded) changes them, and the share is not confirmed before
// the command ends (ErrMayBeShared): the change is kept and the command
// fails. The host's identical retry on the same nexus gets a retryable
// NOT READY while the state cannot be shared, and GOOD once it is, never
// RESERVATION CONFLICT against its own change; a repeat after a GOOD was
// delivered conflicts as on one array. Before, the retry conflicted.
func TestOutcomeOwnPROutMayBeShared(t *testing.T) {
	f := &failingReplica{}
	e := newReplicaEnv(t, f)
	n := nx(1)
	e.ready(n)
	reg, param := cdbPROut(byte(PRRegister), 0)
	e.good(n, reg, param(0, 0xa, 0))
	e.conflict(n, "a repeat of a REGISTER whose GOOD was delivered", reg, param(0, 0xa, 0))
	f.set(fmt.Errorf("%w: injected: the share went out, unconfirmed", ErrMayBeShared))
	change := param(0xa, 0xb, 0)
	e.check(n, reg, change, SenseNotReadyTransitioning())
	if got := e.lu.Reservations().Registrations; len(got) != 1 || got[0].Key != 0xb {
		t.Fatalf("registrations after the change the peer may hold: %v, want it kept (0xb)", got)
	}
	shares := f.shared
	e.check(n, reg, change, SenseNotReadyTransitioning())
	if f.shared == shares {
		t.Fatal("the retry was answered without sharing the state again")
	}
	f.set(nil)
	if r := e.do(n, reg, change); !isGood(r) {
		t.Fatalf("the retry once the state is shared: status %#x sense %v, want GOOD (the first run's change stands)", r.Status, senseOf(r))
	}
	e.conflict(n, "a repeat of the retry whose GOOD was delivered", reg, change)
	if got := e.lu.Reservations().Registrations; len(got) != 1 || got[0].Key != 0xb {
		t.Fatalf("registrations at the end: %v, want 0xb", got)
	}
}

// rememberedCAW returns how many COMPARE AND WRITE outcomes the unit
// remembers, per initiator name and in all.
func (e *env) rememberedCAW() (per map[string]int, total int) {
	per = map[string]int{}
	e.lu.outcomes.mu.Lock()
	defer e.lu.outcomes.mu.Unlock()
	for _, x := range e.lu.outcomes.mu.caw {
		per[x.initiator]++
	}
	return per, len(e.lu.outcomes.mu.caw)
}
