package scsi

import (
	"bytes"
	"testing"
)

// TestReportTargetPortGroups checks the RTPG bytes against HOST-CONTRACT §2:
// full RETURN DATA LENGTH even when truncated, extended header 0x10 with the
// implicit transition time, descriptors with PREF|state, support bits 0x8B,
// group id, port count and relative port ids.
func TestReportTargetPortGroups(t *testing.T) {
	e := newEnv(t)
	e.res.SetGroups([]PortGroup{
		{ID: 1, State: ActiveOptimized, Preferred: true, RelativePortIDs: []uint16{1}},
		{ID: 2, State: Unavailable, RelativePortIDs: []uint16{0x101, 0x102}},
	})
	n := nx(1)
	e.ready(n)
	want := []byte{
		0, 0, 0, 32, // return data length: 4 (rest of header) + 12 + 16
		0x10, implicitTransitionSeconds, 0, 0,
		0x80, 0x8b, 0, 1, 0, 0, 0, 1, // group 1: PREF, AO
		0, 0, 0, 1,
		0x03, 0x8b, 0, 2, 0, 0, 0, 2, // group 2: unavailable
		0, 0, 0x01, 0x01, 0, 0, 0x01, 0x02,
	}
	d := e.good(n, cdbMaintIn(0x20|saReportTPG, 0, 128), nil)
	if !bytes.Equal(d, want) {
		t.Fatalf("extended RTPG\n got % x\nwant % x", d, want)
	}
	// Length-only header.
	d = e.good(n, cdbMaintIn(saReportTPG, 0, 128), nil)
	wantShort := append([]byte{0, 0, 0, 28}, want[8:]...)
	if !bytes.Equal(d, wantShort) {
		t.Fatalf("RTPG\n got % x\nwant % x", d, wantShort)
	}
	// Truncated: the length still counts everything.
	d = e.good(n, cdbMaintIn(0x20|saReportTPG, 0, 10), nil)
	if !bytes.Equal(d, want[:10]) {
		t.Fatalf("truncated % x", d)
	}
	e.check(n, cdbMaintIn(0x40|saReportTPG, 0, 128), nil, SenseInvalidFieldInCDB(1))
}

// TestALUAStates walks every access state and checks which commands run:
// HOST-CONTRACT §2 — INQUIRY, REPORT LUNS, RTPG and REQUEST SENSE always;
// MODE SENSE/SELECT and PR in standby; I/O and TUR get the NOT READY of the
// state.
func TestALUAStates(t *testing.T) {
	e := newEnv(t)
	n := nx(1)
	e.ready(n)
	tests := []struct {
		state AccessState
		sense Sense
		// standbyOK: MODE SENSE and PR IN run.
		standbyOK bool
	}{
		{ActiveOptimized, Sense{}, true},
		{ActiveNonOptimized, Sense{}, true},
		{Standby, SenseNotReadyStandby(), true},
		{Unavailable, SenseNotReadyUnavailable(), false},
		{Offline, SenseNotReadyOffline(), false},
		{Transitioning, SenseNotReadyTransitioning(), false},
	}
	for _, tc := range tests {
		e.res.SetGroups([]PortGroup{{ID: 1, State: tc.state, RelativePortIDs: []uint16{1}}, {ID: 2, State: ActiveOptimized, RelativePortIDs: []uint16{2}}})
		// The state change is announced on the next command that is not
		// exempt... unless that command is blocked by the state itself,
		// since unit attentions come first.
		e.check(n, []byte{opTestUnitReady}, nil, SenseAsymmetricAccessChanged())
		e.good(n, cdbInquiry(false, 0, 36), nil)
		e.good(n, []byte{opReportLUNs, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0}, nil)
		e.good(n, []byte{opRequestSense, 0, 0, 0, 18, 0}, nil)
		e.good(n, cdbMaintIn(saReportTPG, 0, 128), nil)
		e.good(n, cdbMaintIn(saReportOpcodes, 0, 1024), nil)
		io := [][]byte{{opTestUnitReady}, cdbRW10(opRead10, 0, 1), cdbSAI(saReadCapacity16, 0, 32)}
		for _, c := range io {
			if tc.sense.Key == 0 {
				e.good(n, c, nil)
			} else {
				e.check(n, c, nil, tc.sense)
			}
		}
		for _, c := range [][]byte{{opModeSense6, 0, 0x3f, 0, 255, 0}, cdbPRIn(0, 100)} {
			if tc.standbyOK {
				e.good(n, c, nil)
			} else {
				e.check(n, c, nil, tc.sense)
			}
		}
		// A port of another group is unaffected.
		other := nx(2)
		other.RelativePortID = 2
		e.ready(other)
		e.good(other, cdbRW10(opRead10, 0, 1), nil)
	}
	// A port in no group is not blocked.
	e.res.SetGroups(nil)
	e.ready(n)
	e.good(n, cdbRW10(opRead10, 0, 1), nil)
}

// TestAccessChangedScope: ASYMMETRIC ACCESS STATE CHANGED reaches exactly
// the I_T nexuses whose REPORT TARGET PORT GROUPS answer changed since
// they last heard of one (or first used the unit): another initiator's
// nexuses, and the same initiator's nexuses to another unit whose
// states stayed, do not get it, whoever announced a change. A change is
// reported even when no one announced it. Before, AccessChanged raised
// it on every nexus of the unit, and the array called it on every unit
// whenever any host's preference changed.
func TestAccessChangedScope(t *testing.T) {
	e := newEnv(t)
	lu1 := NewLogicalUnit(LUConfig{UUID: [16]byte{1}, Size: testSize, Backend: NewMemBackend()})
	e.res.SetLUNs(map[uint64]*LogicalUnit{0: e.lu, 1: lu1})
	n, other := nx(1), nx(2)
	n2 := n // a second session of the same initiator
	n2.InitiatorPort += "2"
	all := []Nexus{n, n2, other}
	tur := func(x Nexus, lun uint64) *Result { return e.doLUN(x, lun, []byte{opTestUnitReady}, nil) }
	ready := func() {
		t.Helper()
		for _, lun := range []uint64{0, 1} {
			for _, x := range all {
				for i := 0; tur(x, lun).Status != StatusGood; i++ {
					if i > 20 {
						t.Fatalf("LUN %d: TEST UNIT READY of %s never GOOD", lun, x.InitiatorPort)
					}
				}
			}
		}
	}
	quiet := func(what string, x Nexus, lun uint64) {
		t.Helper()
		if r := tur(x, lun); r.Status != StatusGood {
			t.Fatalf("%s: LUN %d of %s: %#x %v, want GOOD (its states did not change)", what, lun, x.InitiatorPort, r.Status, senseOf(r))
		}
	}
	told := func(what string, x Nexus, lun uint64) {
		t.Helper()
		if r := tur(x, lun); r.Status != StatusCheckCondition {
			t.Fatalf("%s: LUN %d of %s: %#x, want ASYMMETRIC ACCESS STATE CHANGED", what, lun, x.InitiatorPort, r.Status)
		} else {
			expectSense(t, r, SenseAsymmetricAccessChanged())
		}
		if r := tur(x, lun); r.Status == StatusCheckCondition {
			if s, _ := ParseSense(r.Sense); s.Key == KeyUnitAttention {
				t.Fatalf("%s: LUN %d of %s: unit attention %v after ASYMMETRIC ACCESS STATE CHANGED", what, lun, x.InitiatorPort, s)
			}
		}
	}
	two := func(first, second AccessState, pref bool) []PortGroup {
		return []PortGroup{{ID: 1, State: first, Preferred: pref, RelativePortIDs: []uint16{1}}, {ID: 2, State: second, RelativePortIDs: []uint16{2}}}
	}
	same := two(ActiveOptimized, ActiveOptimized, false)
	for _, x := range []string{n.InitiatorName, other.InitiatorName} {
		for _, lu := range []*LogicalUnit{e.lu, lu1} {
			e.res.SetGroupsFor(x, lu, same)
		}
	}
	ready()

	// The initiator of n now prefers group 1 for LUN 0: n and n2 hear
	// of it there, nobody else.
	e.res.SetGroupsFor(n.InitiatorName, e.lu, two(ActiveOptimized, ActiveNonOptimized, true))
	told("preference", n, 0)
	told("preference", n2, 0)
	quiet("preference", n, 1)
	quiet("preference", n2, 1)
	quiet("preference", other, 0)
	quiet("preference", other, 1)

	// Announced, nothing changed: nobody hears.
	for _, x := range all {
		quiet("announced without a change", x, 0)
	}

	// Changed and back before n2's next command: n heard of both, n2
	// sees the states it last heard of and hears nothing.
	e.res.SetGroupsFor(n.InitiatorName, e.lu, two(Unavailable, ActiveOptimized, false))
	told("unavailable", n, 0)
	e.res.SetGroupsFor(n.InitiatorName, e.lu, two(ActiveOptimized, ActiveNonOptimized, true))
	quiet("back", n2, 0)
	told("back", n, 0)

	// Not announced: still reported, to the nexuses it concerns.
	e.res.SetGroupsFor(other.InitiatorName, lu1, two(ActiveNonOptimized, ActiveOptimized, false))
	told("unannounced", other, 1)
	quiet("unannounced", other, 0)
	quiet("unannounced", n, 1)

	// REQUEST SENSE returns it too.
	e.res.SetGroupsFor(other.InitiatorName, lu1, same)
	d := e.good(other, []byte{opRequestSense, 0, 0, 0, 252, 0}, nil) // LUN 0: unchanged
	if s, _ := ParseSense(d); !s.Is(SenseNoSense()) {
		t.Fatalf("REQUEST SENSE of LUN 0: %v, want NO SENSE", s)
	}
	r := e.doLUN(other, 1, []byte{opRequestSense, 0, 0, 0, 252, 0}, nil)
	if s, _ := ParseSense(r.Data); r.Status != StatusGood || !s.Is(SenseAsymmetricAccessChanged()) {
		t.Fatalf("REQUEST SENSE of LUN 1: %#x %v, want GOOD with ASYMMETRIC ACCESS STATE CHANGED", r.Status, s)
	}
}
