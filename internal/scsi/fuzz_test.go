package scsi

import (
	"context"
	"testing"
)

// FuzzExecute feeds arbitrary CDBs and data-out to a target (with a few
// nexuses, LUNs and reservation states) and checks that it never panics and
// always answers with a sane result.
func FuzzExecute(f *testing.F) {
	seeds := [][]byte{
		cdbInquiry(false, 0, 96),
		cdbInquiry(true, 0x83, 255),
		cdbRW10(opRead10, 0, 8),
		cdbRW10(opWrite10, 8, 2),
		cdbRW16(opWrite16, 1<<40, 1),
		cdbRW6(opRead6, 0, 0),
		cdbCAW(0, 1),
		cdbRW16(opWriteSame16, 0, 64),
		cdbRW10(opWriteSame10, 0, 1),
		cdbUnmap(24),
		cdbSAI(saGetLBAStatus, 0, 1024),
		cdbSAI(saReadCapacity16, 0, 32),
		cdbMaintIn(0x20|saReportTPG, 0, 128),
		cdbMaintIn(saReportOpcodes, 0x82, 4096),
		cdbPRIn(prInReadFullStatus, 1024),
		func() []byte { c, _ := cdbPROut(saRegister, 0); return c }(),
		func() []byte { c, _ := cdbPROut(saReserve, PRExclusiveAccess); return c }(),
		{opModeSense10, 0x10, 0x3f, 0xff, 0, 0, 0, 1, 0, 0},
		{opModeSelect6, 0x10, 0, 0, 16, 0},
		{opReportLUNs, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0},
		{opRequestSense, 0, 0, 0, 18, 0},
		{opReserve6, 0, 0, 0, 0, 0},
		{opTestUnitReady},
	}
	for i, s := range seeds {
		data := pattern(byte(i), 2)
		if s[0] == opPROut {
			_, p := cdbPROut(0, 0)
			data = p(0, 0x1234, byte(i))
		}
		if s[0] == opUnmap {
			data = unmapParams([2]uint64{0, 4})
		}
		f.Add(s, data, uint8(i), uint8(0))
	}
	f.Fuzz(func(t *testing.T, cdb, data []byte, who, lun uint8) {
		e := newEnv(t)
		e.res.SetGroups([]PortGroup{
			{ID: 1, State: AccessState(who>>4) & 0x0f, RelativePortIDs: []uint16{1}},
		})
		n := nx(int(who % 3))
		for _, c := range [][]byte{cdb, {opTestUnitReady}, cdb} {
			r := e.tgt.Execute(context.Background(), &Command{Nexus: n, LUN: uint64(lun % 3), CDB: c, DataOut: data, Tag: uint32(who)})
			if r == nil {
				t.Fatal("nil result")
			}
			if r.Aborted {
				t.Fatal("aborted without task management")
			}
			switch r.Status {
			case StatusGood:
				if len(r.Sense) != 0 {
					t.Fatal("sense with GOOD")
				}
			case StatusCheckCondition:
				if _, err := ParseSense(r.Sense); err != nil {
					t.Fatalf("bad sense: %v", err)
				}
				if len(r.Data) != 0 {
					t.Fatal("data with CHECK CONDITION")
				}
			case StatusReservationConflict:
			default:
				t.Fatalf("status %#x", r.Status)
			}
			if len(c) >= 5 && c[0] == opInquiry && r.Status == StatusGood && len(r.Data) > int(uint16(c[3])<<8|uint16(c[4])) {
				t.Fatalf("INQUIRY returned %d bytes, more than allocated", len(r.Data))
			}
		}
		e.tgt.TaskManagement(context.Background(), n, LogicalUnitReset, uint64(lun%3), 0)
		e.tgt.NexusLost(n)
	})
}
