package scsi

import (
	"reflect"
	"testing"
)

// TestMissedAttentions: what a rejoining array's nexuses are owed, read
// from the state they last heard of and the state now.
func TestMissedAttentions(t *testing.T) {
	rA, rB, rC := Registration{Key: 1, Nexus: nA}, Registration{Key: 2, Nexus: nB}, Registration{Key: 3, Nexus: nC}
	regs := func(r ...Registration) []Registration { return r }
	held := ReservationState{Registrations: regs(rA, rB, rC), Reserved: true, Type: PRWriteExclusiveRegistrantsOnly, Holder: rA}
	holder := nB
	tests := []struct {
		name            string
		held, now       ReservationState
		heldSWP, nowSWP bool
		powerOn, reset  bool
		wantAll         []Sense
		wantNotices     []PRNotice
	}{
		{name: "nothing changed", held: held, now: held},
		{name: "power on: that alone", held: held, now: ReservationState{}, heldSWP: true, powerOn: true,
			wantAll: []Sense{SensePowerOnReset()}},
		{name: "a key changed by its own nexus", held: held,
			now: ReservationState{Registrations: regs(rA, Registration{Key: 9, Nexus: nB}, rC), Reserved: true, Type: held.Type, Holder: rA}},
		{name: "a registration preempted", held: held,
			now:         ReservationState{Registrations: regs(rA, rC), Reserved: true, Type: held.Type, Holder: rA},
			wantNotices: []PRNotice{notice(rB, SenseRegistrationsPreempted())}},
		{name: "a registrants only reservation released", held: held,
			now:         ReservationState{Registrations: regs(rA, rB, rC)},
			wantNotices: []PRNotice{notice(rA, SenseReservationsReleased()), notice(rB, SenseReservationsReleased()), notice(rC, SenseReservationsReleased())}},
		{name: "a write exclusive reservation released",
			held: ReservationState{Registrations: regs(rA, rB), Reserved: true, Type: PRWriteExclusive, Holder: rA},
			now:  ReservationState{Registrations: regs(rA, rB)}},
		{name: "preempted with another type", held: held,
			now:         ReservationState{Registrations: regs(rB, rC), Reserved: true, Type: PRExclusiveAccess, Holder: rC},
			wantNotices: []PRNotice{notice(rA, SenseRegistrationsPreempted()), notice(rB, SenseReservationsReleased())}},
		{name: "a SCSI-2 reservation released by the loss of its nexus",
			held: ReservationState{SCSI2: &holder}, now: ReservationState{},
			wantNotices: []PRNotice{notice(Registration{Nexus: nB}, SenseNexusLoss())}},
		{name: "a SCSI-2 reservation released by a reset, which also reset the mode parameters",
			held: ReservationState{SCSI2: &holder}, now: ReservationState{}, heldSWP: true, reset: true,
			wantAll: []Sense{SenseLUNReset()}},
		{name: "a reset keeps the registrations, and their preemption is owed", held: held,
			now: ReservationState{Registrations: regs(rA, rC), Reserved: true, Type: held.Type, Holder: rA}, reset: true,
			wantAll: []Sense{SenseLUNReset()}, wantNotices: []PRNotice{notice(rB, SenseRegistrationsPreempted())}},
		{name: "software write protect set", now: ReservationState{}, nowSWP: true,
			wantAll: []Sense{SenseModeParametersChanged()}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			all, notices := missedAttentions(tc.held, tc.now, tc.heldSWP, tc.nowSWP, tc.powerOn, tc.reset)
			if !reflect.DeepEqual(all, tc.wantAll) || !reflect.DeepEqual(notices, tc.wantNotices) {
				t.Fatalf("owed %v to every nexus and %v, want %v and %v", all, notices, tc.wantAll, tc.wantNotices)
			}
		})
	}
}

// peerReplica is the Replica of a unit whose pod another array decides.
type peerReplica struct{ localReplica }

func (peerReplica) Decides() bool { return false }

// TestCatchUpOnlyWhereMissed: a follower's nexuses hear of what they
// missed from an update marked Resync, once, and not from the updates
// that follow changes they heard of as they happened, nor when the unit
// is new here (its nexuses heard only their own POWER ON, RESET).
func TestCatchUpOnlyWhereMissed(t *testing.T) {
	seq := NewLogicalUnit(LUConfig{Size: 1 << 20, Backend: NewMemBackend()})
	fol := NewLogicalUnit(LUConfig{Size: 1 << 20, Backend: NewMemBackend(), Replica: peerReplica{}})
	n := nx(1)
	pending := func() []Sense {
		fol.mu.Lock()
		defer fol.mu.Unlock()
		ns := fol.stateLocked(n, n.Key())
		uas := ns.uas
		ns.uas = nil
		return uas
	}
	pending() // the nexus's own POWER ON, RESET
	update := func(resync bool) ReservationUpdate {
		seq.mu.Lock()
		defer seq.mu.Unlock()
		u := seq.updateLocked(nil, nil)
		u.Resync = resync
		return u
	}
	install := func(u ReservationUpdate) {
		t.Helper()
		if err := fol.InstallReservations(t.Context(), u); err != nil {
			t.Fatal(err)
		}
	}
	seq.reset(SenseLUNReset())
	install(update(true))
	if got := pending(); len(got) != 0 {
		t.Fatalf("a unit new here heard %v from its first state", got)
	}
	seq.reset(SenseLUNReset())
	install(update(false))
	if got := pending(); len(got) != 0 {
		t.Fatalf("an update not marked Resync gave %v", got)
	}
	// A reset here while the follower is cut off is its own: not
	// counted, not owed again.
	fol.reset(SenseLUNReset())
	pending()
	install(update(true))
	if got := pending(); len(got) != 0 {
		t.Fatalf("the follower's own reset was owed again: %v", got)
	}
	seq.reset(SenseLUNReset())
	install(update(true))
	if got := pending(); !reflect.DeepEqual(got, []Sense{SenseLUNReset()}) {
		t.Fatalf("a reset missed: owed %v, want BUS DEVICE RESET FUNCTION OCCURRED", got)
	}
	install(update(true))
	if got := pending(); len(got) != 0 {
		t.Fatalf("a reset owed twice: %v", got)
	}
	// The deciding array restarted: a new life of the state.
	seq = NewLogicalUnit(LUConfig{Size: 1 << 20, Backend: NewMemBackend()})
	install(update(true))
	if got := pending(); !reflect.DeepEqual(got, []Sense{SensePowerOnReset()}) {
		t.Fatalf("after the deciding array restarted: owed %v, want POWER ON, RESET", got)
	}
}
