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
		e.lu.AccessChanged()
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
	e.lu.AccessChanged()
	e.ready(n)
	e.good(n, cdbRW10(opRead10, 0, 1), nil)
}
