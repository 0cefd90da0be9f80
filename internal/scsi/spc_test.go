package scsi

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"strings"
	"testing"
)

func TestStandardInquiry(t *testing.T) {
	e := newEnv(t)
	n := nx(1)
	d := e.good(n, cdbInquiry(false, 0, 255), nil)
	if len(d) != 96 {
		t.Fatalf("length %d", len(d))
	}
	want := map[int]byte{0: 0x00, 2: 0x06, 3: 0x12, 4: 91, 5: 0x10, 6: 0x10, 7: 0x02}
	for i, v := range want {
		if d[i] != v {
			t.Errorf("byte %d = %#x, want %#x", i, d[i], v)
		}
	}
	if got := string(d[8:36]); got != "METRO   metro           0.1 " {
		t.Errorf("identification %q", got)
	}
	if binary.BigEndian.Uint16(d[64:66]) != 0x04c0 {
		t.Errorf("no SBC-3 version descriptor: % x", d[58:74])
	}
	// Allocation length truncates without error, 255 and 256 agree.
	for _, a := range []uint16{0, 1, 5, 36, 255, 256} {
		got := e.good(n, cdbInquiry(false, 0, a), nil)
		if len(got) != min(int(a), 96) || !bytes.Equal(got, d[:len(got)]) {
			t.Errorf("alloc %d: % x", a, got)
		}
	}
	e.check(n, cdbInquiry(false, 0x80, 255), nil, SenseInvalidFieldInCDB(2))
	e.check(n, []byte{opInquiry, 0x02, 0, 0, 255, 0}, nil, SenseInvalidFieldInCDB(1)) // CMDDT
	e.check(n, cdbInquiry(true, 0x81, 255), nil, SenseInvalidFieldInCDB(2))
}

func TestInquiryConfiguredIdentity(t *testing.T) {
	tgt := NewTarget(TargetConfig{Vendor: "ACME", Product: "a very long product name", Revision: "1\x002"})
	d := tgt.standardInquiry(false)
	if got := string(d[8:36]); got != "ACME    a very long prod1_2 " {
		t.Fatalf("identification %q", got)
	}
}

func TestVPDPages(t *testing.T) {
	e := newEnv(t)
	n := nx(1)
	d := e.good(n, cdbInquiry(true, 0, 255), nil)
	if !bytes.Equal(d, []byte{0, 0, 0, 6, 0x00, 0x80, 0x83, 0xb0, 0xb1, 0xb2}) {
		t.Fatalf("supported pages % x", d)
	}
	d = e.good(n, cdbInquiry(true, 0x80, 255), nil)
	if string(d[4:]) != hex.EncodeToString(testUUID[:]) || d[3] != 32 {
		t.Fatalf("serial % x", d)
	}
	d = e.good(n, cdbInquiry(true, 0xb0, 255), nil)
	if len(d) != 64 || d[3] != 0x3c {
		t.Fatalf("block limits length %d page length %#x", len(d), d[3])
	}
	be32 := func(o int) uint32 { return binary.BigEndian.Uint32(d[o:]) }
	if d[4]&1 != 1 || d[5] == 0 || be32(8) != maxTransferBlocks || be32(20) == 0 || be32(24) == 0 || binary.BigEndian.Uint16(d[6:]) != 8 {
		t.Fatalf("block limits % x", d)
	}
	if be32(20) > 1<<20 || be32(24) > 1<<20 {
		t.Fatal("unmap limits larger than libiscsi tolerates")
	}
	d = e.good(n, cdbInquiry(true, 0xb1, 255), nil)
	if binary.BigEndian.Uint16(d[4:]) != 1 {
		t.Fatalf("rotation rate % x", d[:8])
	}
	d = e.good(n, cdbInquiry(true, 0xb2, 255), nil)
	if d[5] != 0xe4 || d[6]&7 != 2 {
		t.Fatalf("provisioning % x", d)
	}
	// Truncated page.
	if d := e.good(n, cdbInquiry(true, 0x83, 4), nil); len(d) != 4 {
		t.Fatalf("truncated page % x", d)
	}
}

func TestDeviceIdentification(t *testing.T) {
	e := newEnv(t)
	e.res.SetGroups([]PortGroup{
		{ID: 7, State: ActiveOptimized, RelativePortIDs: []uint16{1, 3}},
		{ID: 9, State: ActiveNonOptimized, RelativePortIDs: []uint16{0x201}},
	})
	n := nx(1)
	n.RelativePortID = 0x201
	d := e.good(n, cdbInquiry(true, 0x83, 255), nil)
	type desc struct {
		b0, b1 byte
		id     []byte
	}
	var ds []desc
	for p := d[4:]; len(p) > 0; {
		l := int(p[3])
		ds = append(ds, desc{p[0], p[1], p[4 : 4+l]})
		p = p[4+l:]
	}
	if len(ds) != 4 {
		t.Fatalf("%d designators: % x", len(ds), d)
	}
	naa := e.lu.NAA()
	if ds[0].b0 != 0x01 || ds[0].b1 != 0x03 || !bytes.Equal(ds[0].id, naa[:]) {
		t.Errorf("NAA designator %+v", ds[0])
	}
	if naa[0]>>4 != 6 || naa[0]&0x0f != 0x0d || naa[1] != 0xa4 || naa[2] != 0xd5 || naa[3]>>4 != 4 {
		t.Errorf("NAA 6 with company id DA4D54 expected: % x", naa)
	}
	if ds[1].b0 != 0x51 || ds[1].b1 != 0x94 || !bytes.Equal(ds[1].id, []byte{0, 0, 2, 1}) {
		t.Errorf("relative target port %+v", ds[1])
	}
	if ds[2].b0 != 0x51 || ds[2].b1 != 0x95 || !bytes.Equal(ds[2].id, []byte{0, 0, 0, 9}) {
		t.Errorf("target port group %+v", ds[2])
	}
	if ds[3].b0 != 0x53 || ds[3].b1 != 0x98 || len(ds[3].id)%4 != 0 || !bytes.HasPrefix(ds[3].id, []byte(n.TargetPort+"\x00")) {
		t.Errorf("target port name %+v", ds[3])
	}
	// The same volume on another array (another LogicalUnit) has the same
	// identity.
	other := NewLogicalUnit(LUConfig{UUID: testUUID, Size: testSize, Backend: NewMemBackend()})
	if other.NAA() != naa || other.Serial() != e.lu.Serial() {
		t.Fatal("identity differs between logical units of the same volume")
	}
	if NewLogicalUnit(LUConfig{UUID: [16]byte{1}}).NAA() == naa {
		t.Fatal("different volumes share an NAA")
	}
}

func TestReadCapacity(t *testing.T) {
	e := newEnv(t)
	n := nx(1)
	e.ready(n)
	d := e.good(n, []byte{opReadCapacity10, 0, 0, 0, 0, 0, 0, 0, 0, 0}, nil)
	if binary.BigEndian.Uint32(d) != testBlocks-1 || binary.BigEndian.Uint32(d[4:]) != 512 {
		t.Fatalf("read capacity 10 % x", d)
	}
	e.check(n, []byte{opReadCapacity10, 0, 0, 0, 0, 1, 0, 0, 0, 0}, nil, SenseInvalidFieldInCDB(2))
	d = e.good(n, cdbSAI(saReadCapacity16, 0, 32), nil)
	if binary.BigEndian.Uint64(d) != testBlocks-1 || binary.BigEndian.Uint32(d[8:]) != 512 || d[13] != lbppbExponent || d[14] != 0xc0 || d[12] != 0 {
		t.Fatalf("read capacity 16 % x", d)
	}
	for a := range uint32(16) {
		if got := e.good(n, cdbSAI(saReadCapacity16, 0, a), nil); len(got) != int(a) {
			t.Fatalf("alloc %d: %d bytes", a, len(got))
		}
	}
	e.check(n, cdbSAI(0x1f, 0, 32), nil, SenseInvalidFieldInCDB(1))

	// Resize: capacity changes and every nexus is told.
	e.lu.Resize(2 * testSize)
	e.check(n, cdbSAI(saReadCapacity16, 0, 32), nil, SenseCapacityChanged())
	d = e.good(n, cdbSAI(saReadCapacity16, 0, 32), nil)
	if binary.BigEndian.Uint64(d) != 2*testBlocks-1 || e.lu.Size() != 2*testSize {
		t.Fatalf("after resize % x", d)
	}
}

func TestReportLUNs(t *testing.T) {
	e := newEnv(t)
	lu2 := NewLogicalUnit(LUConfig{UUID: [16]byte{2}, Size: testSize, Backend: NewMemBackend()})
	e.res = NewStaticResolver(map[uint64]*LogicalUnit{0: e.lu, 300: lu2})
	e.tgt = NewTarget(TargetConfig{Resolver: e.res})
	c := []byte{opReportLUNs, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0}
	d := e.good(nx(1), c, nil)
	want := []byte{0, 0, 0, 16, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x41, 0x2c, 0, 0, 0, 0, 0, 0}
	if !bytes.Equal(d, want) {
		t.Fatalf("report luns % x", d)
	}
	// Works on an unmapped LUN and does not consume the unit attention.
	if d := e.good(nx(1), append([]byte(nil), c...), nil); !bytes.Equal(d, want) {
		t.Fatal("second report")
	}
	r := e.doLUN(nx(1), 5, c, nil)
	if r.Status != StatusGood || !bytes.Equal(r.Data, want) {
		t.Fatalf("report luns via unmapped LUN: %#x", r.Status)
	}
	e.check(nx(1), []byte{opReportLUNs, 0, 0, 0, 0, 0, 0, 0, 0, 15, 0, 0}, nil, SenseInvalidFieldInCDB(6))
	e.check(nx(1), []byte{opReportLUNs, 0, 0x05, 0, 0, 0, 0, 0, 1, 0, 0, 0}, nil, SenseInvalidFieldInCDB(2))
	e.check(nx(1), []byte{opTestUnitReady}, nil, SensePowerOnReset())

	// LUN masking: an initiator that sees nothing.
	e.res.Restrict(nx(1).InitiatorName)
	if d := e.good(nx(2), c, nil); !bytes.Equal(d, make([]byte, 8)) {
		t.Fatalf("masked initiator sees % x", d)
	}
	for l, want := range map[uint64]uint64{0: 0, 255: 255, 256: 256, 16383: 16383} {
		b := EncodeLUN(l)
		if DecodeLUN(b) != want {
			t.Errorf("LUN %d round trip: % x", l, b)
		}
	}
}

func TestUnmappedLUN(t *testing.T) {
	e := newEnv(t)
	n := nx(1)
	r := e.doLUN(n, 3, cdbInquiry(false, 0, 96), nil)
	if r.Status != StatusGood || r.Data[0] != 0x7f {
		t.Fatalf("inquiry on unmapped LUN: %#x % x", r.Status, r.Data)
	}
	expectSense(t, e.doLUN(n, 3, cdbInquiry(true, 0x80, 96), nil), SenseLUNNotSupported())
	expectSense(t, e.doLUN(n, 3, []byte{opTestUnitReady}, nil), SenseLUNNotSupported())
	expectSense(t, e.doLUN(n, 3, cdbRW10(opRead10, 0, 1), nil), SenseLUNNotSupported())
	expectSense(t, e.doLUN(n, 3, []byte{0xff}, nil), SenseLUNNotSupported())
	r = e.doLUN(n, 3, []byte{opRequestSense, 0, 0, 0, 18, 0}, nil)
	if r.Status != StatusGood {
		t.Fatal(r.Status)
	}
	if s, _ := ParseSense(r.Data); !s.Is(SenseLUNNotSupported()) {
		t.Fatalf("request sense on unmapped LUN: %v", s)
	}
	if tm := e.tgt.TaskManagement(t.Context(), n, LogicalUnitReset, 3, 0); tm != TMFLUNNotFound {
		t.Fatalf("LUN reset of unmapped LUN: %d", tm)
	}
}

func TestUnitAttentionRules(t *testing.T) {
	e := newEnv(t)
	n := nx(1)
	// INQUIRY and REPORT LUNS neither report nor clear the power on UA.
	e.good(n, cdbInquiry(false, 0, 36), nil)
	e.good(n, []byte{opReportLUNs, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0}, nil)
	// REQUEST SENSE returns it and clears it.
	d := e.good(n, []byte{opRequestSense, 0, 0, 0, 252, 0}, nil)
	if s, _ := ParseSense(d); !s.Is(SensePowerOnReset()) || len(d) != 18 {
		t.Fatalf("request sense % x", d)
	}
	d = e.good(n, []byte{opRequestSense, 0, 0, 0, 252, 0}, nil)
	if s, _ := ParseSense(d); !s.Is(SenseNoSense()) {
		t.Fatalf("second request sense %v", s)
	}
	e.check(n, []byte{opRequestSense, 1, 0, 0, 252, 0}, nil, SenseInvalidFieldInCDB(1))
	e.good(n, []byte{opTestUnitReady}, nil)

	// Other commands report a pending UA (and it is consumed), one at a
	// time, oldest first, without duplicates.
	e.lu.raiseAll(SenseAsymmetricAccessChanged())
	e.lu.raiseAll(SenseAsymmetricAccessChanged())
	e.lu.Resize(testSize)
	e.check(n, cdbRW10(opRead10, 0, 1), nil, SenseAsymmetricAccessChanged())
	e.check(n, []byte{opModeSense6, 0, 0x3f, 0, 255, 0}, nil, SenseCapacityChanged())
	e.good(n, cdbRW10(opRead10, 0, 1), nil)

	// Queue is bounded.
	for range 3 * maxPendingUAs {
		e.lu.raiseAll(SensePowerOnReset())
		e.lu.raiseAll(SenseCapacityChanged())
		e.lu.raiseAll(SenseAsymmetricAccessChanged())
	}
	e.lu.mu.Lock()
	if l := len(e.lu.mu.nexus[n.Key()].uas); l > maxPendingUAs {
		t.Errorf("%d pending unit attentions", l)
	}
	e.lu.mu.Unlock()

	// A new nexus of the same initiator (new session) starts afresh.
	e.tgt.NexusLost(n)
	e.check(n, []byte{opTestUnitReady}, nil, SensePowerOnReset())
	e.good(n, []byte{opTestUnitReady}, nil)

	// LUNsChanged reaches only the initiator named.
	e.ready(nx(2))
	e.tgt.LUNsChanged(nx(2).InitiatorName)
	e.good(n, []byte{opTestUnitReady}, nil)
	e.check(nx(2), []byte{opTestUnitReady}, nil, SenseLUNsChanged())
}

// TestLUNsChangedScope: REPORTED LUNS DATA HAS CHANGED reaches every I_T
// nexus of the initiator named, whatever the case of its name (iSCSI
// names compare case-insensitively; the array names initiators in lower
// case), through every logical unit the initiator sees, and no other
// initiator's nexus. A unit the initiator no longer sees does not keep it
// for later. Before, an initiator whose name had capitals was never told.
func TestLUNsChangedScope(t *testing.T) {
	e := newEnv(t)
	lu1 := NewLogicalUnit(LUConfig{UUID: [16]byte{1}, Size: testSize, Backend: NewMemBackend()})
	e.res.SetLUNs(map[uint64]*LogicalUnit{0: e.lu, 1: lu1})
	mixed := func(n Nexus) Nexus {
		n.InitiatorName = strings.Replace(n.InitiatorName, "init", "Init", 1)
		n.InitiatorPort = strings.Replace(n.InitiatorPort, "init", "Init", 1)
		return n
	}
	n := mixed(nx(1))
	n2 := n // a second session of the same initiator
	n2.InitiatorPort += "2"
	other := mixed(nx(2))
	all := []Nexus{n, n2, other}
	ready := func(lun uint64) {
		t.Helper()
		for _, x := range all {
			for i := 0; e.doLUN(x, lun, []byte{opTestUnitReady}, nil).Status != StatusGood; i++ {
				if i > 20 {
					t.Fatalf("LUN %d: TEST UNIT READY of %s never GOOD", lun, x.InitiatorPort)
				}
			}
		}
	}
	ready(0)
	ready(1)
	e.tgt.LUNsChanged(strings.ToLower(n.InitiatorName))
	for _, lun := range []uint64{0, 1} {
		for _, x := range []Nexus{n, n2} {
			expectSense(t, e.doLUN(x, lun, []byte{opTestUnitReady}, nil), SenseLUNsChanged())
			if r := e.doLUN(x, lun, []byte{opTestUnitReady}, nil); r.Status != StatusGood {
				t.Fatalf("LUN %d, %s: second TEST UNIT READY %#x %v", lun, x.InitiatorPort, r.Status, senseOf(r))
			}
		}
		if r := e.doLUN(other, lun, []byte{opTestUnitReady}, nil); r.Status != StatusGood {
			t.Fatalf("LUN %d: another initiator got %#x %v", lun, r.Status, senseOf(r))
		}
	}

	e.res.SetLUNs(map[uint64]*LogicalUnit{0: e.lu})
	e.tgt.LUNsChanged(n.InitiatorName)
	expectSense(t, e.doLUN(n, 0, []byte{opTestUnitReady}, nil), SenseLUNsChanged())
	e.res.SetLUNs(map[uint64]*LogicalUnit{0: e.lu, 1: lu1})
	if r := e.doLUN(n, 1, []byte{opTestUnitReady}, nil); r.Status != StatusGood {
		t.Fatalf("LUN 1, unmapped when the LUNs changed: %#x %v", r.Status, senseOf(r))
	}
}

func TestInvalidOpcodesAndReservedBits(t *testing.T) {
	e := newEnv(t)
	n := nx(1)
	e.ready(n)
	for _, op := range []byte{0x04, 0x07, 0x1d, 0x3b, 0x48, 0x56, 0x7f, 0x83, 0x84, 0xa4, 0xa5, 0xff} {
		e.check(n, []byte{op}, nil, SenseInvalidOpcode())
	}
	// SET TARGET PORT GROUPS (MAINTENANCE OUT) is not supported.
	e.check(n, []byte{0xa4, 0x0a, 0, 0, 0, 0, 0, 0, 0, 16, 0, 0}, nil, SenseInvalidOpcode())
	// Unknown service actions are an invalid field at byte 1.
	s := e.check(n, cdbMaintIn(0x05, 0, 64), nil, SenseInvalidFieldInCDB(1))
	if s.SKS[0]&0xc0 != 0xc0 || binary.BigEndian.Uint16(s.SKS[1:]) != 1 {
		t.Fatalf("field pointer % x", s.SKS)
	}
	e.check(n, cdbPRIn(4, 100), nil, SenseInvalidFieldInCDB(1))
	// RDPROTECT / WRPROTECT / VRPROTECT are not supported.
	for _, op := range []byte{opRead10, opWrite10, opVerify10, opWriteVerify10} {
		c := cdbRW10(op, 0, 1)
		c[1] = 0x20
		s := e.check(n, c, pattern(0, 1), SenseInvalidFieldInCDB(1))
		if s.SKS[0] != 0xc8|5 {
			t.Errorf("op %#x: bit pointer % x", op, s.SKS)
		}
	}
	// A reserved bit of TEST UNIT READY.
	e.check(n, []byte{opTestUnitReady, 0, 0, 0, 1, 0}, nil, SenseInvalidFieldInCDB(4))
	// A CDB shorter than its command.
	r := e.tgt.Execute(t.Context(), &Command{Nexus: n, CDB: []byte{opRead10, 0, 0}})
	expectSense(t, r, SenseInvalidFieldInCDB(3))
	r = e.tgt.Execute(t.Context(), &Command{Nexus: n, CDB: nil})
	expectSense(t, r, SenseInvalidOpcode())
}

func TestStartStopPreventSyncDefects(t *testing.T) {
	e := newEnv(t)
	n := nx(1)
	e.ready(n)
	e.good(n, []byte{opStartStopUnit, 1, 0, 0, 0x01, 0}, nil)
	e.good(n, []byte{opStartStopUnit, 0, 0, 0, 0x02, 0}, nil)
	e.good(n, []byte{opPreventAllow, 0, 0, 0, 1, 0}, nil)
	e.good(n, cdbRW10(opSyncCache10, 0, 0), nil)
	e.good(n, cdbRW16(opSyncCache16, testBlocks-1, 1), nil)
	e.check(n, cdbRW16(opSyncCache16, testBlocks, 1), nil, SenseLBAOutOfRange())
	e.check(n, cdbRW10(opSyncCache10, testBlocks+1, 0), nil, SenseLBAOutOfRange())
	d := e.good(n, []byte{opReadDefectData10, 0, 0x1d, 0, 0, 0, 0, 0, 4, 0}, nil)
	if !bytes.Equal(d, []byte{0, 0x1d, 0, 0}) {
		t.Fatalf("read defect data 10 % x", d)
	}
	d = e.good(n, []byte{opReadDefectData12, 0x0d, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0}, nil)
	if !bytes.Equal(d, []byte{0, 0x0d, 0, 0, 0, 0, 0, 0}) {
		t.Fatalf("read defect data 12 % x", d)
	}
}

func TestReportSupportedOpcodes(t *testing.T) {
	e := newEnv(t)
	n := nx(1)
	e.ready(n)
	d := e.good(n, cdbMaintIn(saReportOpcodes, 0, 65535), nil)
	if int(binary.BigEndian.Uint32(d)) != len(d)-4 || (len(d)-4)%8 != 0 {
		t.Fatalf("length % x", d[:4])
	}
	type key struct {
		op byte
		sa uint16
	}
	seen := map[key]bool{}
	for p := d[4:]; len(p) > 0; p = p[8:] {
		k := key{p[0], binary.BigEndian.Uint16(p[2:])}
		servactv := p[5]&1 != 0
		if !servactv && k.sa != 0 {
			t.Errorf("%+v: SA without SERVACTV", k)
		}
		if p[5]&2 != 0 {
			t.Errorf("%+v: CTDP without RCTD", k)
		}
		seen[k] = true
		opts := byte(1)
		if servactv {
			opts = 2
		}
		c := cdbMaintIn(saReportOpcodes, opts, 65535)
		c[3] = k.op
		binary.BigEndian.PutUint16(c[4:], k.sa)
		one := e.good(n, c, nil)
		if one[1]&7 != 3 || int(binary.BigEndian.Uint16(one[2:])) != int(binary.BigEndian.Uint16(p[6:])) || one[4] != k.op {
			t.Errorf("%+v: one command % x", k, one)
		}
		// The wrong reporting option is an invalid field at byte 2 (not
		// byte 1: libiscsi would take that for an unsupported command).
		c[2] = 3 - opts
		s := e.check(n, c, nil, SenseInvalidFieldInCDB(2))
		if binary.BigEndian.Uint16(s.SKS[1:]) != 2 {
			t.Errorf("%+v: field pointer % x", k, s.SKS)
		}
	}
	for _, k := range []key{{opRead10, 0}, {opCompareAndWrite, 0}, {opServiceActionIn, saGetLBAStatus}, {opMaintenanceIn, saReportTPG}, {opPROut, 6}} {
		if !seen[k] {
			t.Errorf("%+v not reported", k)
		}
	}
	// Usage data says DPO and FUA are honoured by READ(10).
	c := cdbMaintIn(saReportOpcodes, 1, 65535)
	c[3] = opRead10
	if one := e.good(n, c, nil); one[5]&0x18 != 0x18 {
		t.Errorf("READ(10) usage % x", one)
	}
	// Unsupported command: SUPPORT 001b.
	c[3] = 0x04
	if one := e.good(n, c, nil); one[1]&7 != 1 {
		t.Errorf("unsupported opcode % x", one)
	}
	// With timeouts descriptors.
	d = e.good(n, cdbMaintIn(saReportOpcodes, 0x80, 65535), nil)
	for p := d[4:]; len(p) > 0; p = p[20:] {
		if p[5]&2 == 0 || binary.BigEndian.Uint16(p[8:]) != 0x0a {
			t.Fatalf("descriptor % x", p[:20])
		}
	}
	e.check(n, cdbMaintIn(saReportOpcodes, 4, 65535), nil, SenseInvalidFieldInCDB(2))
	if d := e.good(n, cdbMaintIn(saReportOpcodes, 0, 10), nil); len(d) != 10 {
		t.Fatal("allocation length ignored")
	}
}

func TestModeSense(t *testing.T) {
	e := newEnv(t)
	n := nx(1)
	e.ready(n)
	d := e.good(n, []byte{opModeSense6, 0, 0x3f, 0, 255, 0}, nil)
	if int(d[0]) != len(d)-1 || d[2] != 0x10 || d[3] != 8 {
		t.Fatalf("mode sense 6 header % x", d[:4])
	}
	if binary.BigEndian.Uint32(d[4:]) != testBlocks || binary.BigEndian.Uint32(d[8:])&0xffffff != 512 {
		t.Fatalf("block descriptor % x", d[4:12])
	}
	pages := d[12:]
	var codes []byte
	for p := pages; len(p) > 0; p = p[2+int(p[1]):] {
		codes = append(codes, p[0])
		switch p[0] {
		case pageCaching:
			if p[2]&0x04 != 0 {
				t.Error("WCE set")
			}
		case pageControl:
			if p[2]&0x04 != 0 || p[4]&0x08 != 0 || p[3]>>4 != 1 {
				t.Errorf("control page % x", p)
			}
		}
	}
	if !bytes.Equal(codes, modePages) {
		t.Fatalf("pages % x", codes)
	}
	// One page, DBD, and MODE SENSE(10) with a long LBA descriptor.
	d = e.good(n, []byte{opModeSense6, 0x08, pageControl, 0, 255, 0}, nil)
	if d[3] != 0 || len(d) != 4+12 || d[4] != pageControl {
		t.Fatalf("control only % x", d)
	}
	d = e.good(n, []byte{opModeSense10, 0x10, 0x3f, 0xff, 0, 0, 0, 1, 0, 0}, nil)
	if int(binary.BigEndian.Uint16(d)) != len(d)-2 || d[4] != 1 || binary.BigEndian.Uint16(d[6:]) != 16 || binary.BigEndian.Uint64(d[8:]) != testBlocks {
		t.Fatalf("mode sense 10 % x", d[:24])
	}
	// Changeable values: only SWP.
	d = e.good(n, []byte{opModeSense6, 0x08, 0x40 | pageControl, 0, 255, 0}, nil)
	if d[4+4] != 0x08 || d[4+3] != 0 {
		t.Fatalf("changeable control % x", d)
	}
	e.check(n, []byte{opModeSense6, 0, 0xc0 | 0x3f, 0, 255, 0}, nil, SenseSavingParametersNotSupported())
	e.check(n, []byte{opModeSense6, 0, 0x19, 0, 255, 0}, nil, SenseInvalidFieldInCDB(2))
	e.check(n, []byte{opModeSense6, 0, pageControl, 1, 255, 0}, nil, SenseInvalidFieldInCDB(3))
	// Allocation length.
	if d := e.good(n, []byte{opModeSense6, 0, 0x3f, 0, 4, 0}, nil); len(d) != 4 || d[0] <= 3 {
		t.Fatalf("truncated % x", d)
	}
}

func TestModeSelectSWP(t *testing.T) {
	e := newEnv(t)
	n, other := nx(1), nx(2)
	e.ready(n)
	e.ready(other)
	ctl := e.good(n, []byte{opModeSense6, 0x08, pageControl, 0, 255, 0}, nil)[4:]
	sel := func(page []byte) []byte {
		p := append([]byte{0, 0, 0, 0}, page...)
		return p
	}
	c := []byte{opModeSelect6, 0x10, 0, 0, 0, 0}
	on := bytes.Clone(ctl)
	on[4] |= 0x08
	c[4] = byte(len(sel(on)))
	e.good(n, c, sel(on))
	if d := e.good(n, []byte{opModeSense6, 0, 0x3f, 0, 255, 0}, nil); d[2]&0x80 == 0 {
		t.Fatal("WP not reported")
	}
	e.good(n, cdbRW10(opRead10, 0, 1), nil)
	e.check(n, cdbRW10(opWrite10, 0, 1), pattern(1, 1), SenseWriteProtected())
	e.check(n, cdbCAW(0, 1), pattern(0, 2), SenseWriteProtected())
	e.check(other, []byte{opTestUnitReady}, nil, SenseModeParametersChanged())
	e.check(other, cdbRW16(opWriteSame16, 0, 1), pattern(0, 1), SenseWriteProtected())

	// Non-changeable fields, PS, unknown pages, bad lengths.
	bad := bytes.Clone(ctl)
	bad[2] |= 0x04 // D_SENSE
	e.check(n, c, sel(bad), SenseInvalidFieldInParameterList(6))
	ps := bytes.Clone(ctl)
	ps[0] |= 0x80
	e.check(n, c, sel(ps), SenseInvalidFieldInParameterList(4))
	wce := make([]byte, 20)
	wce[0], wce[1], wce[2] = pageCaching, 18, 0x04
	c2 := bytes.Clone(c)
	c2[4] = 24
	e.check(n, c2, sel(wce), SenseInvalidFieldInParameterList(6))
	e.check(n, c, sel(ctl)[:8], SenseParameterListLengthError())
	e.check(n, []byte{opModeSelect6, 0x11, 0, 0, 16, 0}, sel(ctl), SenseInvalidFieldInCDB(1))
	e.good(n, []byte{opModeSelect6, 0x10, 0, 0, 0, 0}, nil)

	// MODE SELECT(10) clears SWP; a block descriptor with 512-byte blocks
	// is accepted.
	p10 := make([]byte, 8+8)
	p10[7] = 8
	binary.BigEndian.PutUint32(p10[12:], 512)
	p10 = append(p10, ctl...)
	c10 := []byte{opModeSelect10, 0x10, 0, 0, 0, 0, 0, 0, byte(len(p10)), 0}
	e.good(n, c10, p10)
	e.good(n, cdbRW10(opWrite10, 0, 1), pattern(1, 1))
	binary.BigEndian.PutUint32(p10[12:], 4096)
	e.check(n, c10, p10, SenseInvalidFieldInParameterList(13))

	// A LUN reset restores the default.
	on10 := bytes.Clone(p10)
	binary.BigEndian.PutUint32(on10[12:], 512)
	on10[16+4] |= 0x08
	e.good(n, c10, on10)
	e.tgt.TaskManagement(t.Context(), n, LogicalUnitReset, 0, 0)
	e.ready(n)
	e.good(n, cdbRW10(opWrite10, 0, 1), pattern(1, 1))
}
