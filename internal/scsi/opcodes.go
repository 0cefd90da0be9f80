package scsi

import "math/bits"

// aluaClass says which ALUA states a command may run in (SPC-4 5.15.2.4).
type aluaClass uint8

const (
	// aluaAny commands run in every state (INQUIRY, REPORT LUNS, REQUEST
	// SENSE, REPORT TARGET PORT GROUPS, REPORT SUPPORTED OPERATION CODES).
	aluaAny aluaClass = iota
	// aluaStandby commands also run in the standby state (MODE SENSE and
	// SELECT, PERSISTENT RESERVE IN and OUT).
	aluaStandby
	// aluaActive commands need an active/optimized or active/non-optimized
	// port.
	aluaActive
)

// command describes one supported command: how it is checked and run, and
// what REPORT SUPPORTED OPERATION CODES says of it.
type command struct {
	op    byte
	sa    uint8
	hasSA bool
	// usage is the CDB USAGE DATA: usage[0] is the operation code, and a
	// bit clear in usage[i] (other than the control byte) must be zero in
	// the CDB.
	usage  []byte
	access AccessClass
	alua   aluaClass
	// keepsUA: the command neither reports nor clears unit attentions.
	keepsUA bool
	// ordered: the command changes the medium or the reservations, so in
	// a stretched pod it runs at the sequencer (Replica.Forward).
	ordered bool
	run     func(x *exec) *Result
}

// recommendedTimeout is the RECOMMENDED COMMAND TIMEOUT reported in
// command timeouts descriptors, in seconds.
const recommendedTimeout = 60

// Usage masks shared by block commands: byte 1 of reads (DPO, FUA, RARC,
// FUA_NV), writes (DPO, FUA, FUA_NV) and verifies (DPO, BYTCHK); the group
// number byte.
const (
	readFlags   = 0x1e
	writeFlags  = 0x1a
	verifyFlags = 0x16
	groupBits   = 0x3f
)

func cdb6(op, b1, b2, b3, b4 byte) []byte { return []byte{op, b1, b2, b3, b4, 0} }

func cdb10(op, b1 byte, rest ...byte) []byte {
	u := append([]byte{op, b1}, rest...)
	return append(u, 0)
}

// lba10 is the usage of a 10-byte block CDB after byte 1: LBA, group,
// length.
var lba10 = []byte{0xff, 0xff, 0xff, 0xff, groupBits, 0xff, 0xff}

// lba12 is the usage of a 12-byte block CDB after byte 1.
var lba12 = []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, groupBits}

// lba16 is the usage of a 16-byte block CDB after byte 1.
var lba16 = []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, groupBits}

// commands returns the command table, in ascending operation code and
// service action order.
func commands() []*command {
	return []*command{
		{op: opTestUnitReady, usage: cdb6(opTestUnitReady, 0, 0, 0, 0), access: AccessControl, alua: aluaActive, run: runTestUnitReady},
		{op: opRequestSense, usage: cdb6(opRequestSense, 0x01, 0, 0, 0xff), access: AccessAlways, alua: aluaAny, keepsUA: true, run: runRequestSense},
		{op: opRead6, usage: cdb6(opRead6, 0x1f, 0xff, 0xff, 0xff), access: AccessRead, alua: aluaActive, run: runRead},
		{op: opWrite6, usage: cdb6(opWrite6, 0x1f, 0xff, 0xff, 0xff), access: AccessWrite, alua: aluaActive, run: runWrite},
		{op: opInquiry, usage: cdb6(opInquiry, 0x01, 0xff, 0xff, 0xff), access: AccessAlways, alua: aluaAny, keepsUA: true, run: runInquiry},
		{op: opModeSelect6, usage: cdb6(opModeSelect6, 0x11, 0, 0, 0xff), access: AccessWrite, alua: aluaStandby, run: runModeSelect},
		{op: opReserve6, usage: cdb6(opReserve6, 0, 0, 0, 0), access: AccessAlways, alua: aluaActive, run: runReserve6},
		{op: opRelease6, usage: cdb6(opRelease6, 0, 0, 0, 0), access: AccessAlways, alua: aluaActive, run: runRelease6},
		{op: opModeSense6, usage: cdb6(opModeSense6, 0x08, 0xff, 0xff, 0xff), access: AccessRead, alua: aluaStandby, run: runModeSense},
		{op: opStartStopUnit, usage: cdb6(opStartStopUnit, 0x01, 0, 0x0f, 0xf7), access: AccessControl, alua: aluaActive, run: runStartStopUnit},
		{op: opPreventAllow, usage: cdb6(opPreventAllow, 0, 0, 0, 0x03), access: AccessControl, alua: aluaActive, run: runPreventAllow},
		{op: opReadCapacity10, usage: cdb10(opReadCapacity10, 0, 0xff, 0xff, 0xff, 0xff, 0, 0, 0x01), access: AccessControl, alua: aluaActive, run: runReadCapacity10},
		{op: opRead10, usage: cdb10(opRead10, readFlags, lba10...), access: AccessRead, alua: aluaActive, run: runRead},
		{op: opWrite10, usage: cdb10(opWrite10, writeFlags, lba10...), access: AccessWrite, alua: aluaActive, run: runWrite},
		{op: opWriteVerify10, usage: cdb10(opWriteVerify10, verifyFlags, lba10...), access: AccessWrite, alua: aluaActive, run: runWrite},
		{op: opVerify10, usage: cdb10(opVerify10, verifyFlags, lba10...), access: AccessRead, alua: aluaActive, run: runVerify},
		{op: opPrefetch10, usage: cdb10(opPrefetch10, 0x02, lba10...), access: AccessRead, alua: aluaActive, run: runPrefetch},
		{op: opSyncCache10, usage: cdb10(opSyncCache10, 0x06, lba10...), access: AccessWrite, alua: aluaActive, run: runSyncCache},
		{op: opReadDefectData10, usage: cdb10(opReadDefectData10, 0, 0x1f, 0, 0, 0, 0, 0xff, 0xff), access: AccessRead, alua: aluaActive, run: runReadDefectData},
		{op: opWriteSame10, usage: cdb10(opWriteSame10, 0x18, lba10...), access: AccessWrite, alua: aluaActive, run: runWriteSame},
		{op: opUnmap, usage: cdb10(opUnmap, 0x01, 0, 0, 0, 0, groupBits, 0xff, 0xff), access: AccessWrite, alua: aluaActive, run: runUnmap},
		{op: opModeSelect10, usage: cdb10(opModeSelect10, 0x11, 0, 0, 0, 0, 0, 0xff, 0xff), access: AccessWrite, alua: aluaStandby, run: runModeSelect},
		{op: opModeSense10, usage: cdb10(opModeSense10, 0x18, 0xff, 0xff, 0, 0, 0, 0xff, 0xff), access: AccessRead, alua: aluaStandby, run: runModeSense},
		prIn(0), prIn(1), prIn(2), prIn(3),
		prOut(0), prOut(1), prOut(2), prOut(3), prOut(4), prOut(5), prOut(6),
		{op: opRead16, usage: cdb10(opRead16, readFlags, lba16...), access: AccessRead, alua: aluaActive, run: runRead},
		{op: opCompareAndWrite, usage: cdb10(opCompareAndWrite, writeFlags, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0xff, groupBits), access: AccessWrite, alua: aluaActive, run: runCompareAndWrite},
		{op: opWrite16, usage: cdb10(opWrite16, writeFlags, lba16...), access: AccessWrite, alua: aluaActive, run: runWrite},
		{op: opOrWrite16, usage: cdb10(opOrWrite16, writeFlags, lba16...), access: AccessWrite, alua: aluaActive, run: runOrWrite},
		{op: opWriteVerify16, usage: cdb10(opWriteVerify16, verifyFlags, lba16...), access: AccessWrite, alua: aluaActive, run: runWrite},
		{op: opVerify16, usage: cdb10(opVerify16, verifyFlags, lba16...), access: AccessRead, alua: aluaActive, run: runVerify},
		{op: opPrefetch16, usage: cdb10(opPrefetch16, 0x02, lba16...), access: AccessRead, alua: aluaActive, run: runPrefetch},
		{op: opSyncCache16, usage: cdb10(opSyncCache16, 0x06, lba16...), access: AccessWrite, alua: aluaActive, run: runSyncCache},
		{op: opWriteSame16, usage: cdb10(opWriteSame16, 0x19, lba16...), access: AccessWrite, alua: aluaActive, run: runWriteSame},
		{op: opWriteAtomic16, usage: cdb10(opWriteAtomic16, 0x18, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, 0xff, 0xff, groupBits), access: AccessWrite, alua: aluaActive, run: runWrite},
		{op: opServiceActionIn, sa: saReadCapacity16, hasSA: true, usage: cdb10(opServiceActionIn, serviceActionMask, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0), access: AccessControl, alua: aluaActive, run: runReadCapacity16},
		{op: opServiceActionIn, sa: saGetLBAStatus, hasSA: true, usage: cdb10(opServiceActionIn, serviceActionMask, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0), access: AccessRead, alua: aluaActive, run: runGetLBAStatus},
		{op: opReportLUNs, usage: cdb10(opReportLUNs, 0, 0xff, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0), access: AccessAlways, alua: aluaAny, keepsUA: true, run: runReportLUNs},
		{op: opMaintenanceIn, sa: saReportTPG, hasSA: true, usage: cdb10(opMaintenanceIn, 0xe0|serviceActionMask, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0), access: AccessAlways, alua: aluaAny, run: runReportTPG},
		{op: opMaintenanceIn, sa: saReportOpcodes, hasSA: true, usage: cdb10(opMaintenanceIn, serviceActionMask, 0x87, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0), access: AccessAlways, alua: aluaAny, run: runReportOpcodes},
		{op: opRead12, usage: cdb10(opRead12, readFlags, lba12...), access: AccessRead, alua: aluaActive, run: runRead},
		{op: opWrite12, usage: cdb10(opWrite12, writeFlags, lba12...), access: AccessWrite, alua: aluaActive, run: runWrite},
		{op: opWriteVerify12, usage: cdb10(opWriteVerify12, verifyFlags, lba12...), access: AccessWrite, alua: aluaActive, run: runWrite},
		{op: opVerify12, usage: cdb10(opVerify12, verifyFlags, lba12...), access: AccessRead, alua: aluaActive, run: runVerify},
		{op: opReadDefectData12, usage: cdb10(opReadDefectData12, 0x1f, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0), access: AccessRead, alua: aluaActive, run: runReadDefectData},
	}
}

func prIn(sa uint8) *command {
	return &command{op: opPRIn, sa: sa, hasSA: true, usage: cdb10(opPRIn, serviceActionMask, 0, 0, 0, 0, 0, 0xff, 0xff),
		access: AccessControl, alua: aluaStandby, run: runPRIn}
}

func prOut(sa uint8) *command {
	return &command{op: opPROut, sa: sa, hasSA: true, usage: cdb10(opPROut, serviceActionMask, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff),
		access: AccessControl, alua: aluaStandby, run: runPROut}
}

// commandTable finds commands by operation code and service action.
type commandTable struct {
	all []*command
	// byOp holds, per operation code, the command without service action
	// or the commands by service action.
	byOp [256]struct {
		cmd  *command
		bySA map[uint8]*command
	}
}

func newCommandTable() *commandTable {
	t := &commandTable{all: commands()}
	for _, c := range t.all {
		c.ordered = orderedOp(c.op)
		e := &t.byOp[c.op]
		if !c.hasSA {
			e.cmd = c
			continue
		}
		if e.bySA == nil {
			e.bySA = make(map[uint8]*command)
		}
		e.bySA[c.sa] = c
	}
	return t
}

// orderedOp reports whether commands with operation code op change the
// medium or the reservations.
func orderedOp(op byte) bool {
	switch op {
	case opWrite6, opWrite10, opWrite12, opWrite16,
		opWriteVerify10, opWriteVerify12, opWriteVerify16,
		opWriteSame10, opWriteSame16, opUnmap, opCompareAndWrite,
		opOrWrite16, opWriteAtomic16, opPROut, opReserve6, opRelease6,
		opModeSelect6, opModeSelect10:
		return true
	}
	return false
}

// hasServiceActions reports whether op is dispatched by service action.
func (t *commandTable) hasServiceActions(op byte) bool { return t.byOp[op].bySA != nil }

// lookup returns the command of a CDB, or the sense of the CHECK CONDITION
// that rejects it: INVALID COMMAND OPERATION CODE, or INVALID FIELD IN CDB
// for an unknown service action.
func (t *commandTable) lookup(cdb []byte) (*command, *Sense) {
	e := &t.byOp[cdb[0]]
	if e.cmd != nil {
		return e.cmd, nil
	}
	if e.bySA == nil {
		s := SenseInvalidOpcode()
		return nil, &s
	}
	if len(cdb) < 2 {
		s := SenseInvalidFieldInCDB(1)
		return nil, &s
	}
	c := e.bySA[cdb[1]&serviceActionMask]
	if c == nil {
		s := SenseInvalidBitInCDB(1, 4)
		return nil, &s
	}
	return c, nil
}

// checkReserved returns INVALID FIELD IN CDB for the first bit set in the
// CDB that the usage data marks unused (the control byte is not checked).
func (c *command) checkReserved(cdb []byte) *Sense {
	for i := 1; i < len(c.usage)-1 && i < len(cdb); i++ {
		if bad := cdb[i] &^ c.usage[i]; bad != 0 {
			s := SenseInvalidBitInCDB(i, bits.Len8(bad)-1)
			return &s
		}
	}
	return nil
}
