package scsi

import (
	"reflect"
	"slices"
	"testing"
)

var (
	nA  = PRNexus{InitiatorPort: "iqn.a,i,0x1", RelativePortID: 1}
	nA2 = PRNexus{InitiatorPort: "iqn.a,i,0x1", RelativePortID: 2} // same initiator port, other target port
	nB  = PRNexus{InitiatorPort: "iqn.b,i,0x2", RelativePortID: 1}
	nC  = PRNexus{InitiatorPort: "iqn.c,i,0x3", RelativePortID: 1}
)

// prStep is one PERSISTENT RESERVE OUT applied in a scripted scenario.
type prStep struct {
	from       PRNexus
	op         PROut
	wantStatus Status
	wantSense  Sense
	// wantNotices are the (nexus, sense) pairs expected, in order.
	wantNotices []PRNotice
	wantAbort   []PRNexus
}

func reg(k uint64) PROut   { return PROut{Action: PRRegister, ServiceKey: k} }
func regI(k uint64) PROut  { return PROut{Action: PRRegisterAndIgnoreExist, ServiceKey: k} }
func unreg(k uint64) PROut { return PROut{Action: PRRegister, Key: k} }
func rsv(k uint64, t PRType) PROut {
	return PROut{Action: PRReserve, Key: k, Type: t}
}
func rel(k uint64, t PRType) PROut {
	return PROut{Action: PRRelease, Key: k, Type: t}
}

func notice(r Registration, s Sense) PRNotice { return PRNotice{To: r, Sense: s} }

func TestReservationScenarios(t *testing.T) {
	regA := func(k uint64) Registration { return Registration{Key: k, Nexus: nA} }
	regB := func(k uint64) Registration { return Registration{Key: k, Nexus: nB} }
	regC := func(k uint64) Registration { return Registration{Key: k, Nexus: nC} }
	tests := []struct {
		name  string
		steps []prStep
		check func(t *testing.T, s ReservationState)
	}{
		{"register and unregister", []prStep{
			{from: nA, op: reg(1)},
			{from: nA, op: reg(2), wantStatus: StatusReservationConflict}, // RESERVATION KEY 0 != 1
			{from: nA, op: PROut{Action: PRRegister, Key: 1, ServiceKey: 2}},
			{from: nA, op: unreg(2)},
		}, func(t *testing.T, s ReservationState) {
			if len(s.Registrations) != 0 || s.Generation != 3 {
				t.Fatalf("state %+v", s)
			}
		}},
		{"unregistered register with key conflicts", []prStep{
			{from: nA, op: PROut{Action: PRRegister, Key: 5, ServiceKey: 1}, wantStatus: StatusReservationConflict},
			{from: nA, op: reg(0)}, // no-op
		}, func(t *testing.T, s ReservationState) {
			if s.Generation != 0 || len(s.Registrations) != 0 {
				t.Fatalf("state %+v", s)
			}
		}},
		{"register and ignore replaces key", []prStep{
			{from: nA, op: regI(1)},
			{from: nA, op: regI(7)},
		}, func(t *testing.T, s ReservationState) {
			if len(s.Registrations) != 1 || s.Registrations[0].Key != 7 || s.Generation != 2 {
				t.Fatalf("state %+v", s)
			}
		}},
		{"reserve needs registration and key", []prStep{
			{from: nA, op: rsv(1, PRWriteExclusive), wantStatus: StatusReservationConflict},
			{from: nA, op: reg(1)},
			{from: nA, op: rsv(2, PRWriteExclusive), wantStatus: StatusReservationConflict},
			{from: nA, op: rsv(1, 2), wantStatus: StatusCheckCondition, wantSense: SenseInvalidFieldInCDB(2)},
			{from: nA, op: PROut{Action: PRReserve, Key: 1, Type: PRWriteExclusive, Scope: 1}, wantStatus: StatusCheckCondition, wantSense: SenseInvalidFieldInCDB(2)},
			{from: nA, op: rsv(1, PRWriteExclusive)},
			{from: nA, op: rsv(1, PRWriteExclusive)},                                         // same type: no-op
			{from: nA, op: rsv(1, PRExclusiveAccess), wantStatus: StatusReservationConflict}, // other type
			{from: nB, op: reg(9)},                                                           // registering is allowed under WE
			{from: nB, op: rsv(9, PRWriteExclusive), wantStatus: StatusReservationConflict},  // not holder
			{from: nB, op: rel(9, PRWriteExclusive)},                                         // non-holder release: no-op
			{from: nA, op: rel(1, PRExclusiveAccess), wantStatus: StatusCheckCondition, wantSense: SenseInvalidReleaseOfPR()},
			{from: nA, op: rel(1, PRWriteExclusive)},
		}, func(t *testing.T, s ReservationState) {
			if s.Reserved || s.Generation != 2 {
				t.Fatalf("state %+v", s)
			}
		}},
		{"release of registrants-only type notifies the others", []prStep{
			{from: nA, op: reg(1)},
			{from: nB, op: reg(2)},
			{from: nC, op: reg(3)},
			{from: nA, op: rsv(1, PRWriteExclusiveRegistrantsOnly)},
			{from: nA, op: rel(1, PRWriteExclusiveRegistrantsOnly), wantNotices: []PRNotice{
				notice(regB(2), SenseReservationsReleased()), notice(regC(3), SenseReservationsReleased())}},
		}, nil},
		{"release of exclusive access notifies nobody", []prStep{
			{from: nA, op: reg(1)},
			{from: nB, op: reg(2)},
			{from: nA, op: rsv(1, PRExclusiveAccess)},
			{from: nA, op: rel(1, PRExclusiveAccess)},
		}, nil},
		{"holder unregistering releases WE without notices", []prStep{
			{from: nA, op: reg(1)},
			{from: nB, op: reg(2)},
			{from: nA, op: rsv(1, PRWriteExclusive)},
			{from: nA, op: unreg(1)},
		}, func(t *testing.T, s ReservationState) {
			if s.Reserved {
				t.Fatal("still reserved")
			}
		}},
		{"holder unregistering releases RO and notifies registrants", []prStep{
			{from: nA, op: reg(1)},
			{from: nB, op: reg(2)},
			{from: nA, op: rsv(1, PRExclusiveAccessRegistrantsOnly)},
			{from: nA, op: unreg(1), wantNotices: []PRNotice{notice(regB(2), SenseReservationsReleased())}},
		}, func(t *testing.T, s ReservationState) {
			if s.Reserved {
				t.Fatal("still reserved")
			}
		}},
		{"all registrants reservation lives until the last registrant leaves", []prStep{
			{from: nA, op: reg(1)},
			{from: nB, op: reg(2)},
			{from: nA, op: rsv(1, PRWriteExclusiveAllRegistrants)},
			{from: nB, op: rsv(2, PRWriteExclusiveAllRegistrants)}, // B is a holder too
			{from: nA, op: unreg(1)},
		}, func(t *testing.T, s ReservationState) {
			if !s.Reserved || !s.IsHolder(nB) || s.IsHolder(nA) {
				t.Fatalf("state %+v", s)
			}
			next, out := s.Apply(nB, unreg(2))
			if out.Status != StatusGood || next.Reserved {
				t.Fatalf("after last unregister: %+v %+v", next, out)
			}
		}},
		{"clear", []prStep{
			{from: nA, op: reg(1)},
			{from: nB, op: reg(2)},
			{from: nA, op: rsv(1, PRExclusiveAccess)},
			{from: nB, op: PROut{Action: PRClear, Key: 3}, wantStatus: StatusReservationConflict},
			{from: nB, op: PROut{Action: PRClear, Key: 2}, wantNotices: []PRNotice{notice(regA(1), SenseReservationsPreempted())}},
		}, func(t *testing.T, s ReservationState) {
			if !s.Empty() || s.Generation != 3 {
				t.Fatalf("state %+v", s)
			}
		}},
		{"preempt without reservation removes registrations", []prStep{
			{from: nA, op: reg(1)},
			{from: nB, op: reg(2)},
			{from: nB, op: PROut{Action: PRPreempt, Key: 2, ServiceKey: 1, Type: PRExclusiveAccess},
				wantNotices: []PRNotice{notice(regA(1), SenseRegistrationsPreempted())}},
			{from: nB, op: PROut{Action: PRPreempt, Key: 2, ServiceKey: 1}, wantStatus: StatusReservationConflict},
			{from: nB, op: PROut{Action: PRPreempt, Key: 2, ServiceKey: 0}, wantStatus: StatusCheckCondition, wantSense: SenseInvalidFieldInParameterList(8)},
		}, func(t *testing.T, s ReservationState) {
			if len(s.Registrations) != 1 || s.Registrations[0].Nexus != nB || s.Reserved || s.Generation != 3 {
				t.Fatalf("state %+v", s)
			}
		}},
		{"preempt and abort takes over the reservation", []prStep{
			{from: nA, op: reg(1)},
			{from: nB, op: reg(2)},
			{from: nC, op: reg(3)},
			{from: nA, op: rsv(1, PRWriteExclusive)},
			{from: nB, op: PROut{Action: PRPreemptAndAbort, Key: 2, ServiceKey: 1, Type: PRExclusiveAccess},
				wantNotices: []PRNotice{
					notice(regC(3), SenseReservationsReleased()),
					notice(regA(1), SenseRegistrationsPreempted()),
				},
				wantAbort: []PRNexus{nA}},
		}, func(t *testing.T, s ReservationState) {
			if !s.Reserved || s.Type != PRExclusiveAccess || !s.IsHolder(nB) || len(s.Registrations) != 2 {
				t.Fatalf("state %+v", s)
			}
		}},
		{"preempt of a non-holder key keeps the reservation", []prStep{
			{from: nA, op: reg(1)},
			{from: nB, op: reg(2)},
			{from: nC, op: reg(3)},
			{from: nA, op: rsv(1, PRWriteExclusive)},
			{from: nB, op: PROut{Action: PRPreempt, Key: 2, ServiceKey: 3, Type: PRExclusiveAccess},
				wantNotices: []PRNotice{notice(regC(3), SenseRegistrationsPreempted())}},
		}, func(t *testing.T, s ReservationState) {
			if !s.Reserved || s.Type != PRWriteExclusive || !s.IsHolder(nA) {
				t.Fatalf("state %+v", s)
			}
		}},
		{"preempt all registrants with key zero", []prStep{
			{from: nA, op: reg(1)},
			{from: nB, op: reg(2)},
			{from: nA, op: rsv(1, PRExclusiveAccessAllRegistrants)},
			{from: nB, op: PROut{Action: PRPreempt, Key: 2, ServiceKey: 0, Type: PRWriteExclusive},
				wantNotices: []PRNotice{notice(regA(1), SenseRegistrationsPreempted())}},
		}, func(t *testing.T, s ReservationState) {
			if !s.Reserved || s.Type != PRWriteExclusive || !s.IsHolder(nB) || len(s.Registrations) != 1 {
				t.Fatalf("state %+v", s)
			}
		}},
		{"unknown action", []prStep{
			{from: nA, op: reg(1)},
			{from: nA, op: PROut{Action: 7, Key: 1}, wantStatus: StatusCheckCondition, wantSense: SenseInvalidFieldInCDB(1)},
		}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var s ReservationState
			for i, st := range tc.steps {
				before := s.Clone()
				next, out := s.Apply(st.from, st.op)
				if out.Status != st.wantStatus {
					t.Fatalf("step %d: status %#x, want %#x (%+v)", i, out.Status, st.wantStatus, out)
				}
				if st.wantStatus == StatusCheckCondition && !reflect.DeepEqual(out.Sense, st.wantSense) {
					t.Fatalf("step %d: sense %v, want %v", i, out.Sense, st.wantSense)
				}
				if !reflect.DeepEqual(out.Notices, st.wantNotices) {
					t.Fatalf("step %d: notices %+v, want %+v", i, out.Notices, st.wantNotices)
				}
				var aborted []PRNexus
				for _, r := range out.Abort {
					aborted = append(aborted, r.Nexus)
				}
				if !reflect.DeepEqual(aborted, st.wantAbort) {
					t.Fatalf("step %d: abort %+v, want %+v", i, aborted, st.wantAbort)
				}
				if !reflect.DeepEqual(s, before) {
					t.Fatalf("step %d: Apply modified its receiver", i)
				}
				if out.Status != StatusGood && !reflect.DeepEqual(next, s) {
					t.Fatalf("step %d: failed Apply changed state", i)
				}
				s = next
			}
			if tc.check != nil {
				tc.check(t, s)
			}
		})
	}
}

// TestReservationAccess is SPC-4 table 66 / SBC-3 table 13 for reads and
// writes: holder, registered non-holder and unregistered nexus per type.
func TestReservationAccess(t *testing.T) {
	type access struct{ read, write bool }
	tests := []struct {
		typ                PRType
		registered, unregd access
	}{
		{PRWriteExclusive, access{true, false}, access{true, false}},
		{PRExclusiveAccess, access{false, false}, access{false, false}},
		{PRWriteExclusiveRegistrantsOnly, access{true, true}, access{true, false}},
		{PRExclusiveAccessRegistrantsOnly, access{true, true}, access{false, false}},
		{PRWriteExclusiveAllRegistrants, access{true, true}, access{true, false}},
		{PRExclusiveAccessAllRegistrants, access{true, true}, access{false, false}},
	}
	for _, tc := range tests {
		var s ReservationState
		apply := func(n PRNexus, op PROut) {
			var out PROutcome
			s, out = s.Apply(n, op)
			if out.Status != StatusGood {
				t.Fatalf("type %d: %+v failed: %+v", tc.typ, op, out)
			}
		}
		apply(nA, reg(1))
		apply(nB, reg(2))
		apply(nA, rsv(1, tc.typ))
		check := func(n PRNexus, want access, who string) {
			if got := s.Allows(n, AccessRead); got != want.read {
				t.Errorf("type %d %s: read allowed %v, want %v", tc.typ, who, got, want.read)
			}
			if got := s.Allows(n, AccessWrite); got != want.write {
				t.Errorf("type %d %s: write allowed %v, want %v", tc.typ, who, got, want.write)
			}
			if !s.Allows(n, AccessControl) || !s.Allows(n, AccessAlways) {
				t.Errorf("type %d %s: control command refused", tc.typ, who)
			}
		}
		check(nA, access{true, true}, "holder")
		check(nB, tc.registered, "registrant")
		check(nC, tc.unregd, "unregistered")
	}
}

func TestAllTargetPortsRegistration(t *testing.T) {
	var s ReservationState
	s, out := s.Apply(nA, PROut{Action: PRRegister, ServiceKey: 1, AllTargetPorts: true})
	if out.Status != StatusGood {
		t.Fatal(out)
	}
	s, out = s.Apply(nA2, rsv(1, PRExclusiveAccess))
	if out.Status != StatusGood {
		t.Fatalf("reserve through the other port: %+v", out)
	}
	if !s.Allows(nA, AccessWrite) || !s.Allows(nA2, AccessWrite) || s.Allows(nB, AccessRead) {
		t.Fatalf("access wrong: %+v", s)
	}
	var plain ReservationState
	plain, _ = plain.Apply(nA, reg(1))
	if plain.registration(nA2) >= 0 {
		t.Fatal("registration without ALL_TG_PT applies to another target port")
	}
}

func TestSCSI2Reservation(t *testing.T) {
	var s ReservationState
	s, ok := s.ReserveSCSI2(nA)
	if !ok {
		t.Fatal("reserve failed")
	}
	if _, ok := s.ReserveSCSI2(nA); !ok {
		t.Fatal("re-reserve by holder failed")
	}
	if _, ok := s.ReserveSCSI2(nB); ok {
		t.Fatal("reserve by other nexus succeeded")
	}
	if s.Allows(nB, AccessControl) || !s.Allows(nB, AccessAlways) || !s.Allows(nA, AccessWrite) {
		t.Fatal("SCSI-2 access wrong")
	}
	if s, _ = s.ReleaseSCSI2(nB); s.SCSI2 == nil {
		t.Fatal("release by non-holder released")
	}
	if s, _ = s.ReleaseSCSI2(nA); s.SCSI2 != nil {
		t.Fatal("release by holder did not release")
	}
	s, _ = s.Apply(nB, reg(5))
	if _, ok := s.ReserveSCSI2(nA); ok {
		t.Fatal("RESERVE(6) allowed while registrations exist")
	}
}

func TestReservationMarshal(t *testing.T) {
	var s ReservationState
	s, _ = s.Apply(nA, PROut{Action: PRRegister, ServiceKey: 0xdeadbeefcafe, APTPL: true, AllTargetPorts: true})
	s, _ = s.Apply(nB, reg(2))
	s, _ = s.Apply(nA, rsv(0xdeadbeefcafe, PRWriteExclusiveRegistrantsOnly))
	s.SCSI2 = &nC
	got, err := UnmarshalReservationState(s.Marshal())
	if err != nil {
		t.Fatal(err)
	}
	want := s.Clone()
	want.SCSI2 = nil
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("round trip:\n got %+v\nwant %+v", got, want)
	}
	for _, bad := range []string{"", "{", `{"version":2,"state":{}}`, `{"version":1,"state":{"reserved":true,"type":2}}`} {
		if _, err := UnmarshalReservationState([]byte(bad)); err == nil {
			t.Errorf("%q decoded", bad)
		}
	}
}

// TestSCSI2UnderPersistentReservations pins SPC-4 5.13.3 (exceptions to
// SPC-2 RESERVE and RELEASE behavior) with SPC-2 5.5.1 for the rest:
// while persistent reservation registrations exist, a RESERVE(6) or
// RELEASE(6) completes GOOD without changing anything when it comes from
// a persistent reservation holder, or from a registered nexus while a
// registrants only or all registrants reservation exists; every other
// one is a RESERVATION CONFLICT. RELEASE(6) was GOOD from anyone.
func TestSCSI2UnderPersistentReservations(t *testing.T) {
	build := func(steps ...func(ReservationState) ReservationState) ReservationState {
		var s ReservationState
		for _, f := range steps {
			s = f(s)
		}
		return s
	}
	apply := func(n PRNexus, op PROut) func(ReservationState) ReservationState {
		return func(s ReservationState) ReservationState {
			next, out := s.Apply(n, op)
			if out.Status != StatusGood {
				t.Fatalf("setting up: %+v from %v: %+v", op, n, out)
			}
			return next
		}
	}
	tests := []struct {
		name string
		st   ReservationState
		// good are the nexuses whose RESERVE and RELEASE are GOOD; the
		// others (of nA, nA2, nB, nC) conflict.
		good []PRNexus
	}{
		{"registrations without a reservation", build(apply(nA, reg(1)), apply(nB, reg(2))), nil},
		{"write exclusive held by A", build(apply(nA, reg(1)), apply(nB, reg(2)), apply(nA, rsv(1, PRWriteExclusive))), []PRNexus{nA}},
		{"exclusive access held by A", build(apply(nA, reg(1)), apply(nB, reg(2)), apply(nA, rsv(1, PRExclusiveAccess))), []PRNexus{nA}},
		{"write exclusive registrants only", build(apply(nA, reg(1)), apply(nB, reg(2)), apply(nA, rsv(1, PRWriteExclusiveRegistrantsOnly))), []PRNexus{nA, nB}},
		{"exclusive access registrants only", build(apply(nA, reg(1)), apply(nB, reg(2)), apply(nA, rsv(1, PRExclusiveAccessRegistrantsOnly))), []PRNexus{nA, nB}},
		{"write exclusive all registrants", build(apply(nA, reg(1)), apply(nB, reg(2)), apply(nB, rsv(2, PRWriteExclusiveAllRegistrants))), []PRNexus{nA, nB}},
		{"exclusive access all registrants", build(apply(nA, reg(1)), apply(nB, reg(2)), apply(nA, rsv(1, PRExclusiveAccessAllRegistrants))), []PRNexus{nA, nB}},
		{"ALL_TG_PT registration holds through every port", build(apply(nA, PROut{Action: PRRegister, ServiceKey: 1, AllTargetPorts: true}), apply(nA, rsv(1, PRWriteExclusive))), []PRNexus{nA, nA2}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for _, n := range []PRNexus{nA, nA2, nB, nC} {
				want := slices.Contains(tc.good, n)
				next, ok := tc.st.ReserveSCSI2(n)
				if ok != want || !reflect.DeepEqual(next, tc.st) {
					t.Errorf("RESERVE(6) from %v: ok %v, state %+v; want ok %v and the state unchanged", n, ok, next, want)
				}
				next, ok = tc.st.ReleaseSCSI2(n)
				if ok != want || !reflect.DeepEqual(next, tc.st) {
					t.Errorf("RELEASE(6) from %v: ok %v, state %+v; want ok %v and the state unchanged", n, ok, next, want)
				}
			}
		})
	}

	// Without registrations SPC-2 applies: a release by another nexus is
	// GOOD and does nothing, the holder's releases.
	held, _ := ReservationState{}.ReserveSCSI2(nA)
	if next, ok := held.ReleaseSCSI2(nB); !ok || next.SCSI2 == nil || *next.SCSI2 != nA {
		t.Fatalf("RELEASE(6) from another nexus: ok %v, holder %v; want GOOD and A still holding", ok, next.SCSI2)
	}
	if next, ok := held.ReleaseSCSI2(nA); !ok || next.SCSI2 != nil {
		t.Fatalf("RELEASE(6) from the holder: ok %v, holder %v; want GOOD and released", ok, next.SCSI2)
	}
	// The holder of a SCSI-2 reservation that registered a key since (a
	// state SPC-2 never reaches, as it refuses PR OUT then) still gives
	// its own reservation up, as the loss of its nexus must.
	both, out := held.Apply(nA, reg(1))
	if out.Status != StatusGood {
		t.Fatalf("REGISTER by the SCSI-2 holder: %+v", out)
	}
	if next, ok := both.ReleaseSCSI2(nA); !ok || next.SCSI2 != nil || len(next.Registrations) != 1 {
		t.Fatalf("RELEASE(6) from the SCSI-2 holder with a registration: ok %v, state %+v; want GOOD, released, registration kept", ok, next)
	}
	if _, ok := both.ReleaseSCSI2(nB); ok {
		t.Fatal("RELEASE(6) from an unregistered nexus while a registration exists: GOOD, want RESERVATION CONFLICT")
	}
}
