package scsi

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"
)

const (
	flagAPTPL    = 0x01
	flagAllTgPt  = 0x04
	flagSpecIPT  = 0x08
	saRegister   = 0
	saReserve    = 1
	saRelease    = 2
	saClear      = 3
	saPreempt    = 4
	saPreemptAbt = 5
	saRegIgnore  = 6
)

func (e *env) mustPR(n Nexus, sa byte, typ PRType, key, sakey uint64, flags byte) {
	e.t.Helper()
	if r := e.prout(n, sa, typ, key, sakey, flags); r.Status != StatusGood {
		e.t.Fatalf("PR OUT sa %d: status %#x %s", sa, r.Status, senseOf(r))
	}
}

func (e *env) readKeys(n Nexus) (gen uint32, keys []uint64) {
	e.t.Helper()
	d := e.good(n, cdbPRIn(prInReadKeys, 1024), nil)
	gen = binary.BigEndian.Uint32(d)
	l := binary.BigEndian.Uint32(d[4:])
	for p := d[8 : 8+l]; len(p) > 0; p = p[8:] {
		keys = append(keys, binary.BigEndian.Uint64(p))
	}
	return gen, keys
}

func TestPersistentReserveCommands(t *testing.T) {
	e := newEnv(t)
	a, b := nx(1), nx(2)
	e.ready(a)
	e.ready(b)
	e.mustPR(a, saRegIgnore, 0, 0, 0xaa, 0)
	e.mustPR(b, saRegister, 0, 0, 0xbb, 0)
	gen, keys := e.readKeys(a)
	if gen != 2 || len(keys) != 2 || keys[0] != 0xaa || keys[1] != 0xbb {
		t.Fatalf("keys gen %d %x", gen, keys)
	}
	// Truncated READ KEYS keeps the full ADDITIONAL LENGTH.
	d := e.good(a, cdbPRIn(prInReadKeys, 8), nil)
	if len(d) != 8 || binary.BigEndian.Uint32(d[4:]) != 16 {
		t.Fatalf("truncated read keys % x", d)
	}
	// Re-register with a wrong reservation key conflicts.
	if r := e.prout(a, saRegister, 0, 0, 0xab, 0); r.Status != StatusReservationConflict {
		t.Fatalf("re-register: %#x", r.Status)
	}
	e.mustPR(a, saReserve, PRWriteExclusive, 0xaa, 0, 0)
	d = e.good(b, cdbPRIn(prInReadReservation, 100), nil)
	if binary.BigEndian.Uint32(d[4:]) != 16 || binary.BigEndian.Uint64(d[8:]) != 0xaa || d[21] != byte(PRWriteExclusive) {
		t.Fatalf("read reservation % x", d)
	}
	// Write exclusive: b may read, not write; a may do both.
	e.good(b, cdbRW10(opRead10, 0, 1), nil)
	if r := e.do(b, cdbRW10(opWrite10, 0, 1), pattern(1, 1)); r.Status != StatusReservationConflict {
		t.Fatalf("write by non-holder: %#x", r.Status)
	}
	if r := e.do(b, []byte{opModeSelect6, 0x10, 0, 0, 0, 0}, nil); r.Status != StatusReservationConflict {
		t.Fatalf("mode select by non-holder: %#x", r.Status)
	}
	e.good(b, []byte{opTestUnitReady}, nil)
	e.good(b, cdbSAI(saReadCapacity16, 0, 32), nil)
	e.good(a, cdbRW10(opWrite10, 0, 1), pattern(1, 1))

	// READ FULL STATUS.
	d = e.good(b, cdbPRIn(prInReadFullStatus, 4096), nil)
	if binary.BigEndian.Uint32(d) != 2 || int(binary.BigEndian.Uint32(d[4:])) != len(d)-8 {
		t.Fatalf("full status header % x", d[:8])
	}
	p := d[8:]
	first, tidLen := p[:24], int(binary.BigEndian.Uint32(p[20:]))
	tid := p[24 : 24+tidLen]
	if binary.BigEndian.Uint64(first) != 0xaa || first[12] != 0x01 || first[13] != byte(PRWriteExclusive) || binary.BigEndian.Uint16(first[18:]) != 1 {
		t.Fatalf("holder descriptor % x", first)
	}
	if tid[0] != 0x45 || int(binary.BigEndian.Uint16(tid[2:])) != len(tid)-4 || !bytes.HasPrefix(tid[4:], []byte(a.InitiatorPort+"\x00")) || len(tid)%4 != 0 {
		t.Fatalf("transport id % x", tid)
	}
	second := p[24+tidLen:]
	if binary.BigEndian.Uint64(second) != 0xbb || second[12] != 0 {
		t.Fatalf("second descriptor % x", second[:24])
	}

	// REPORT CAPABILITIES.
	d = e.good(a, cdbPRIn(prInReportCaps, 100), nil)
	if !bytes.Equal(d, []byte{0, 8, 0x15, 0x80, 0xea, 0x01, 0, 0}) { // CRH, ATP_C, PTPL_C
		t.Fatalf("report capabilities % x", d)
	}

	// PREEMPT AND ABORT by b: a loses registration and reservation and
	// gets REGISTRATIONS PREEMPTED.
	e.mustPR(b, saPreemptAbt, PRExclusiveAccess, 0xbb, 0xaa, 0)
	e.check(a, []byte{opTestUnitReady}, nil, SenseRegistrationsPreempted())
	if r := e.do(a, cdbRW10(opRead10, 0, 1), nil); r.Status != StatusReservationConflict {
		t.Fatalf("read by preempted nexus under EA: %#x", r.Status)
	}
	gen, keys = e.readKeys(b)
	if gen != 3 || len(keys) != 1 || keys[0] != 0xbb {
		t.Fatalf("after preempt gen %d keys %x", gen, keys)
	}
	// PR IN is allowed under exclusive access.
	e.good(a, cdbPRIn(prInReadKeys, 100), nil)
	// CLEAR.
	e.mustPR(b, saClear, 0, 0xbb, 0, 0)
	if gen, keys = e.readKeys(a); gen != 4 || len(keys) != 0 {
		t.Fatalf("after clear gen %d keys %x", gen, keys)
	}
	e.good(a, cdbRW10(opWrite10, 0, 1), pattern(1, 1))

	// Parameter list errors.
	c, params := cdbPROut(saRegister, 0)
	binary.BigEndian.PutUint32(c[5:], 20)
	e.check(a, c, params(0, 1, 0)[:20], SenseParameterListLengthError())
	c, params = cdbPROut(saRegister, 0)
	e.check(a, c, params(0, 1, 0)[:10], SenseParameterListLengthError())
	e.check(a, c, params(0, 1, flagSpecIPT), SenseInvalidFieldInParameterList(20))
	// REGISTER AND MOVE is not supported.
	c, params = cdbPROut(7, 0)
	e.check(a, c, params(0, 1, 0), SenseInvalidFieldInCDB(1))
	// Service actions 4..1f of PR IN are invalid.
	for sa := byte(4); sa < 0x20; sa++ {
		e.check(a, cdbPRIn(sa, 100), nil, SenseInvalidFieldInCDB(1))
	}
}

func TestPersistentReserveAPTPL(t *testing.T) {
	e := newEnv(t)
	a := nx(1)
	e.ready(a)
	// Without APTPL nothing is saved.
	e.mustPR(a, saRegister, 0, 0, 0x11, 0)
	if _, saves := e.saved(); saves != 0 {
		t.Fatal("saved without APTPL")
	}
	// With APTPL every change is saved before GOOD.
	e.mustPR(a, saRegister, 0, 0x11, 0x12, flagAPTPL)
	e.mustPR(a, saReserve, PRExclusiveAccessRegistrantsOnly, 0x12, 0, 0)
	state, saves := e.saved()
	if saves != 2 || state == nil {
		t.Fatalf("%d saves", saves)
	}
	// A restarted array (new logical unit from the saved state) has the
	// registrations and the reservation, and a fresh nexus sees them.
	lu2 := NewLogicalUnit(LUConfig{UUID: testUUID, Size: testSize, Backend: e.be, PersistPR: e.persist, LoadedPR: state})
	e.res = NewStaticResolver(map[uint64]*LogicalUnit{0: lu2})
	e.tgt = NewTarget(TargetConfig{Resolver: e.res})
	e.ready(a)
	gen, keys := e.readKeys(a)
	if gen != 2 || len(keys) != 1 || keys[0] != 0x12 {
		t.Fatalf("restored gen %d keys %x", gen, keys)
	}
	b := nx(2)
	e.ready(b)
	if r := e.do(b, cdbRW10(opRead10, 0, 1), nil); r.Status != StatusReservationConflict {
		t.Fatalf("unregistered read under restored EA-RO: %#x", r.Status)
	}
	e.good(a, cdbRW10(opRead10, 0, 1), nil)
	// A failing save fails the command and changes nothing.
	e.mu.Lock()
	e.mu.saveErr = errors.New("disk full")
	e.mu.Unlock()
	e.check(a, func() []byte { c, _ := cdbPROut(saRegister, 0); return c }(), func() []byte { _, p := cdbPROut(0, 0); return p(0x12, 0x13, flagAPTPL) }(), SenseHardwareError())
	if _, keys := e.readKeys(a); keys[0] != 0x12 {
		t.Fatal("failed save changed the state")
	}
	e.mu.Lock()
	e.mu.saveErr = nil
	e.mu.Unlock()
	// Registering with APTPL=0 deletes the saved state.
	e.mustPR(a, saRegister, 0, 0x12, 0x14, 0)
	if state, _ := e.saved(); state != nil {
		t.Fatal("saved state not deleted when APTPL was cleared")
	}
	// Corrupt saved state is dropped, not fatal.
	lu3 := NewLogicalUnit(LUConfig{UUID: testUUID, Size: testSize, Backend: e.be, LoadedPR: []byte("garbage")})
	if !lu3.Reservations().Empty() {
		t.Fatal("garbage restored")
	}
}

func TestPersistentReservePreemptAbortsTasks(t *testing.T) {
	e := newEnv(t)
	gate := &gatedBackend{Backend: e.be, release: make(chan struct{}), entered: make(chan int64, 1)}
	lu := NewLogicalUnit(LUConfig{UUID: testUUID, Size: testSize, Backend: gate})
	e.res = NewStaticResolver(map[uint64]*LogicalUnit{0: lu})
	e.tgt = NewTarget(TargetConfig{Resolver: e.res})
	a, b := nx(1), nx(2)
	e.ready(a)
	e.ready(b)
	e.mustPR(a, saRegister, 0, 0, 0xa, 0)
	e.mustPR(b, saRegister, 0, 0, 0xb, 0)
	gate.block(0)
	done := make(chan *Result, 1)
	go func() {
		done <- e.tgt.Execute(t.Context(), &Command{Nexus: a, Tag: 5, CDB: cdbRW16(opWrite16, 0, 1), DataOut: pattern(1, 1)})
	}()
	<-gate.entered
	e.mustPR(b, saPreemptAbt, PRWriteExclusive, 0xb, 0xa, 0)
	if r := <-done; !r.Aborted {
		t.Fatalf("preempted nexus's write not aborted: %+v", r)
	}
}

func TestReserve6(t *testing.T) {
	e := newEnv(t)
	a, b := nx(1), nx(2)
	e.ready(a)
	e.ready(b)
	res6, rel6 := []byte{opReserve6, 0, 0, 0, 0, 0}, []byte{opRelease6, 0, 0, 0, 0, 0}
	e.good(a, res6, nil)
	e.good(a, res6, nil)
	conflict := func(n Nexus, c []byte) {
		t.Helper()
		if r := e.do(n, c, nil); r.Status != StatusReservationConflict {
			t.Fatalf("cdb % x: %#x, want RESERVATION CONFLICT", c, r.Status)
		}
	}
	conflict(b, res6)
	e.good(b, rel6, nil) // no-op
	conflict(b, []byte{opModeSense6, 0, 0x3f, 0, 255, 0})
	conflict(b, []byte{opTestUnitReady})
	conflict(b, cdbPRIn(0, 100))
	e.good(b, cdbInquiry(false, 0, 36), nil)
	e.good(b, []byte{opReportLUNs, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0}, nil)
	e.good(b, cdbMaintIn(saReportTPG, 0, 64), nil)
	e.good(a, []byte{opModeSense6, 0, 0x3f, 0, 255, 0}, nil)
	e.good(a, rel6, nil)
	e.good(b, res6, nil)
	e.good(b, rel6, nil)

	// Released by the loss of the nexus, by LUN reset and target reset.
	for _, release := range []func(){
		func() { e.tgt.NexusLost(a) },
		func() { e.tgt.TaskManagement(t.Context(), a, LogicalUnitReset, 0, 0) },
		func() { e.tgt.TaskManagement(t.Context(), a, TargetColdReset, 0, 0) },
		func() { e.tgt.TaskManagement(t.Context(), b, TargetWarmReset, 0, 0) },
	} {
		e.ready(a)
		e.good(a, res6, nil)
		conflict(b, res6)
		release()
		e.ready(b)
		e.good(b, res6, nil)
		e.good(b, rel6, nil)
	}

	// No RESERVE(6) nor RELEASE(6) while persistent reservation
	// registrations exist (TestRelease6UnderPersistentReservations).
	e.ready(a)
	e.mustPR(a, saRegister, 0, 0, 1, 0)
	conflict(b, res6)
	conflict(b, rel6)
	conflict(a, res6)
	conflict(a, rel6)
	// And no PR OUT from another nexus while a SCSI-2 reservation is held.
	e.mustPR(a, saRegister, 0, 1, 0, 0)
	e.good(a, res6, nil)
	conflict(b, func() []byte { c, _ := cdbPROut(saRegister, 0); return c }())
}

// TestRelease6UnderPersistentReservations: RELEASE(6) and RESERVE(6)
// while persistent reservations exist follow SPC-4 5.13.3: GOOD without
// effect from the reservation holder and, under a registrants only
// reservation, from a registered nexus; RESERVATION CONFLICT from every
// other nexus. The persistent reservation is never released by them.
// RELEASE(6) was GOOD from any nexus.
func TestRelease6UnderPersistentReservations(t *testing.T) {
	e := newEnv(t)
	a, b, c := nx(1), nx(2), nx(3)
	for _, n := range []Nexus{a, b, c} {
		e.ready(n)
	}
	res6, rel6 := []byte{opReserve6, 0, 0, 0, 0, 0}, []byte{opRelease6, 0, 0, 0, 0, 0}
	expect := func(n Nexus, cdb []byte, want Status) {
		t.Helper()
		if r := e.do(n, cdb, nil); r.Status != want {
			t.Fatalf("cdb % x from %s: status %#x, want %#x", cdb, n.InitiatorName, r.Status, want)
		}
	}
	reservation := func() []byte {
		t.Helper()
		return e.good(a, cdbPRIn(prInReadReservation, 100), nil)
	}
	e.mustPR(a, saRegister, 0, 0, 0xa, 0)
	e.mustPR(b, saRegister, 0, 0, 0xb, 0)
	for _, n := range []Nexus{a, b, c} {
		expect(n, rel6, StatusReservationConflict)
		expect(n, res6, StatusReservationConflict)
	}

	e.mustPR(a, saReserve, PRWriteExclusiveRegistrantsOnly, 0xa, 0, 0)
	held := reservation()
	for _, n := range []Nexus{a, b} {
		expect(n, rel6, StatusGood)
		expect(n, res6, StatusGood)
	}
	expect(c, rel6, StatusReservationConflict)
	expect(c, res6, StatusReservationConflict)
	if got := reservation(); !bytes.Equal(got, held) {
		t.Fatalf("after RELEASE(6) and RESERVE(6): READ RESERVATION % x, want % x (unchanged)", got, held)
	}
	// Nothing SCSI-2 was reserved: c's reads are not refused by one.
	e.good(c, cdbRW10(opRead10, 0, 1), nil)

	e.mustPR(a, saRelease, PRWriteExclusiveRegistrantsOnly, 0xa, 0, 0)
	e.mustPR(a, saReserve, PRWriteExclusive, 0xa, 0, 0)
	e.ready(b) // RESERVATIONS RELEASED
	held = reservation()
	expect(a, rel6, StatusGood)
	expect(b, rel6, StatusReservationConflict)
	expect(c, rel6, StatusReservationConflict)
	if got := reservation(); !bytes.Equal(got, held) {
		t.Fatalf("after RELEASE(6): READ RESERVATION % x, want % x (unchanged)", got, held)
	}

	// Once the registrations are gone SPC-2 applies again.
	e.mustPR(a, saClear, 0, 0xa, 0, 0)
	e.good(c, res6, nil)
	e.good(a, rel6, nil)
	expect(a, res6, StatusReservationConflict)
	e.good(c, rel6, nil)
}
