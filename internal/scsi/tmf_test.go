package scsi

import (
	"bytes"
	"context"
	"maps"
	"slices"
	"testing"
)

// gatedEnv is an env whose backend blocks the write at LBA 0.
func gatedEnv(t *testing.T) (*env, *gatedBackend) {
	e := newEnv(t)
	gate := &gatedBackend{Backend: e.be, release: make(chan struct{}), entered: make(chan int64, 1)}
	lu := NewLogicalUnit(LUConfig{UUID: testUUID, Size: testSize, Backend: gate})
	e.lu = lu
	e.res = NewStaticResolver(map[uint64]*LogicalUnit{0: lu})
	e.tgt = NewTarget(TargetConfig{Resolver: e.res})
	return e, gate
}

// startBlockedWrite starts a write to LBA 0 that blocks in the backend.
func startBlockedWrite(e *env, gate *gatedBackend, n Nexus, tag uint32) <-chan *Result {
	gate.block(0)
	done := make(chan *Result, 1)
	go func() {
		done <- e.tgt.Execute(context.Background(), &Command{Nexus: n, Tag: tag, CDB: cdbRW16(opWrite16, 0, 1), DataOut: pattern(1, 1)})
	}()
	<-gate.entered
	return done
}

func TestAbortTask(t *testing.T) {
	e, gate := gatedEnv(t)
	n := nx(1)
	e.ready(n)
	done := startBlockedWrite(e, gate, n, 42)
	if r := e.tgt.TaskManagement(t.Context(), n, AbortTask, 0, 41); r != TMFTaskNotFound {
		t.Fatalf("abort of unknown tag: %d", r)
	}
	if r := e.tgt.TaskManagement(t.Context(), nx(2), AbortTask, 0, 42); r != TMFTaskNotFound {
		t.Fatalf("abort from another nexus: %d", r)
	}
	if r := e.tgt.TaskManagement(t.Context(), n, AbortTask, 0, 42); r != TMFComplete {
		t.Fatalf("abort: %d", r)
	}
	// TaskManagement returned only after the task ended: the task is no
	// longer registered (its result reaches the goroutine just after).
	e.tgt.mu.Lock()
	running := len(e.tgt.mu.tasks)
	e.tgt.mu.Unlock()
	if running != 0 {
		t.Fatal("ABORT TASK completed before the task ended")
	}
	if r := <-done; !r.Aborted {
		t.Fatalf("result %+v", r)
	}
	// A finished task is not found.
	e.good(n, cdbRW16(opWrite16, 1, 1), pattern(2, 1))
	if r := e.tgt.TaskManagement(t.Context(), n, AbortTask, 0, 0); r != TMFTaskNotFound {
		t.Fatalf("abort of a finished task: %d", r)
	}
}

func TestAbortTaskSetAndClearTaskSet(t *testing.T) {
	for _, fn := range []TMF{AbortTaskSet, ClearTaskSet} {
		e, gate := gatedEnv(t)
		a, b := nx(1), nx(2)
		e.ready(a)
		e.ready(b)
		done := startBlockedWrite(e, gate, a, 1)
		var who Nexus
		if fn == AbortTaskSet {
			// Another nexus's ABORT TASK SET leaves a's task alone.
			if r := e.tgt.TaskManagement(t.Context(), b, fn, 0, 0); r != TMFComplete {
				t.Fatalf("tmf %d: %d", fn, r)
			}
			select {
			case <-done:
				t.Fatal("ABORT TASK SET of another nexus aborted the task")
			default:
			}
			who = a
		} else {
			who = b
		}
		if r := e.tgt.TaskManagement(t.Context(), who, fn, 0, 0); r != TMFComplete {
			t.Fatalf("tmf %d: %d", fn, r)
		}
		if r := <-done; !r.Aborted {
			t.Fatalf("tmf %d: task not aborted: %+v", fn, r)
		}
		if fn == ClearTaskSet {
			e.check(a, []byte{opTestUnitReady}, nil, SenseCommandsCleared())
		}
		if r := e.tgt.TaskManagement(t.Context(), a, fn, 9, 0); r != TMFLUNNotFound {
			t.Fatalf("tmf %d on unmapped LUN: %d", fn, r)
		}
	}
}

func TestLogicalUnitReset(t *testing.T) {
	e, gate := gatedEnv(t)
	a, b := nx(1), nx(2)
	e.ready(a)
	e.ready(b)
	e.mustPR(a, saRegister, 0, 0, 7, 0)
	done := startBlockedWrite(e, gate, b, 3)
	if r := e.tgt.TaskManagement(t.Context(), a, LogicalUnitReset, 0, 0); r != TMFComplete {
		t.Fatalf("reset %d", r)
	}
	if r := <-done; !r.Aborted {
		t.Fatalf("task not aborted: %+v", r)
	}
	// Every nexus, the resetting one included, gets the reset UA; the
	// persistent registration survives.
	e.check(a, []byte{opTestUnitReady}, nil, SenseLUNReset())
	e.check(b, []byte{opTestUnitReady}, nil, SenseLUNReset())
	if _, keys := e.readKeys(a); len(keys) != 1 || keys[0] != 7 {
		t.Fatalf("registration lost: %x", keys)
	}
	if r := e.tgt.TaskManagement(t.Context(), a, ClearACA, 0, 0); r != TMFNotSupported {
		t.Fatalf("clear ACA: %d", r)
	}
	if r := e.tgt.TaskManagement(t.Context(), a, 99, 0, 0); r != TMFNotSupported {
		t.Fatalf("unknown TMF: %d", r)
	}
}

func TestTargetResetReachesEveryLU(t *testing.T) {
	e := newEnv(t)
	lu2 := NewLogicalUnit(LUConfig{UUID: [16]byte{9}, Size: testSize, Backend: NewMemBackend()})
	e.res = NewStaticResolver(map[uint64]*LogicalUnit{0: e.lu, 1: lu2})
	e.tgt = NewTarget(TargetConfig{Resolver: e.res})
	a := nx(1)
	for _, lun := range []uint64{0, 1} {
		for range 2 {
			e.doLUN(a, lun, []byte{opTestUnitReady}, nil)
		}
	}
	e.tgt.TaskManagement(t.Context(), a, TargetWarmReset, 0, 0)
	for _, lun := range []uint64{0, 1} {
		expectSense(t, e.doLUN(a, lun, []byte{opTestUnitReady}, nil), SensePowerOnReset())
	}
}

func TestNexusLostAbortsAndForgets(t *testing.T) {
	e, gate := gatedEnv(t)
	a := nx(1)
	e.ready(a)
	done := startBlockedWrite(e, gate, a, 8)
	e.tgt.NexusLost(a)
	if r := <-done; !r.Aborted {
		t.Fatalf("task of lost nexus: %+v", r)
	}
	e.check(a, []byte{opTestUnitReady}, nil, SensePowerOnReset())
}

func TestSenseEncoding(t *testing.T) {
	s := SenseMiscompare(0x01020304)
	b := s.Bytes()
	want := []byte{0xf0, 0, 0x0e, 1, 2, 3, 4, 10, 0, 0, 0, 0, 0x1d, 0, 0, 0, 0, 0}
	if !bytes.Equal(b, want) {
		t.Fatalf("miscompare % x", b)
	}
	b = SenseInvalidBitInCDB(1, 5).Bytes()
	if b[0] != 0x70 || b[2] != 5 || b[12] != 0x24 || b[15] != 0xcd || b[16] != 0 || b[17] != 1 {
		t.Fatalf("invalid field % x", b)
	}
	if b := SenseInvalidFieldInParameterList(300).Bytes(); b[15] != 0x80 || b[16] != 1 || b[17] != 44 {
		t.Fatalf("parameter list pointer % x", b[15:])
	}
	for _, s := range []Sense{SenseNoSense(), SenseInvalidOpcode(), SenseLBAOutOfRange(), SenseSpaceAllocFailed(),
		SenseMediumError(), SenseHardwareError(), SenseNotReadyUnavailable(), SensePowerOnReset(),
		SenseReservationsPreempted(), SenseInvalidFieldInCDB(2), SenseMiscompare(7)} {
		got, err := ParseSense(s.Bytes())
		if err != nil || got != s {
			t.Errorf("%v: round trip %v %v", s, got, err)
		}
	}
	if _, err := ParseSense([]byte{0x72, 0, 0}); err == nil {
		t.Error("descriptor sense parsed")
	}
	if s := SenseSpaceAllocFailed().String(); s != "7/27/07" {
		t.Errorf("String %q", s)
	}
}

// maskedResolver maps each initiator to its own LUNs (LUN masking), so
// that one LUN number names different units for different hosts.
type maskedResolver map[string]map[uint64]*LogicalUnit

func (r maskedResolver) LUN(initiator string, lun uint64) *LogicalUnit { return r[initiator][lun] }

func (r maskedResolver) LUNs(initiator string) []uint64 {
	return slices.Sorted(maps.Keys(r[initiator]))
}

func (r maskedResolver) PortGroups(string, *LogicalUnit) []PortGroup { return nil }

// sharedEnv is a target with two units behind LUN masking: nx(1) sees A
// at LUN 0, nx(2) and nx(3) see B at LUN 0, nx(4) sees A at LUN 2. Both
// units block the write at LBA 0 when their gate is armed.
type sharedEnv struct {
	*env
	a, b         *LogicalUnit
	gateA, gateB *gatedBackend
}

func newSharedEnv(t *testing.T) *sharedEnv {
	e := &sharedEnv{env: newEnv(t)}
	e.gateA = &gatedBackend{Backend: NewMemBackend(), release: make(chan struct{}), entered: make(chan int64, 1)}
	e.gateB = &gatedBackend{Backend: NewMemBackend(), release: make(chan struct{}), entered: make(chan int64, 1)}
	e.a = NewLogicalUnit(LUConfig{UUID: [16]byte{0xa}, Size: testSize, Backend: e.gateA})
	e.b = NewLogicalUnit(LUConfig{UUID: [16]byte{0xb}, Size: testSize, Backend: e.gateB})
	e.tgt = NewTarget(TargetConfig{Resolver: maskedResolver{
		nx(1).InitiatorName: {0: e.a},
		nx(2).InitiatorName: {0: e.b},
		nx(3).InitiatorName: {0: e.b},
		nx(4).InitiatorName: {2: e.a},
	}})
	for i := 1; i <= 4; i++ {
		lun := uint64(0)
		if i == 4 {
			lun = 2
		}
		for range 20 {
			if r := e.doLUN(nx(i), lun, []byte{opTestUnitReady}, nil); r.Status == StatusGood {
				break
			}
		}
	}
	return e
}

// blockedWrite starts a write to LBA 0 of the unit n sees at lun that
// blocks in gate until it is released or aborted.
func (e *sharedEnv) blockedWrite(gate *gatedBackend, n Nexus, lun uint64, tag uint32) <-chan *Result {
	gate.block(0)
	done := make(chan *Result, 1)
	go func() {
		done <- e.tgt.Execute(context.Background(), &Command{Nexus: n, LUN: lun, Tag: tag, CDB: cdbRW16(opWrite16, 0, 1), DataOut: pattern(1, 1)})
	}()
	<-gate.entered
	return done
}

func TestTargetResetConfinedToCallersUnits(t *testing.T) {
	res6 := []byte{opReserve6, 0, 0, 0, 0, 0}
	tur := []byte{opTestUnitReady}
	for _, fn := range []TMF{TargetWarmReset, TargetColdReset} {
		e := newSharedEnv(t)
		// nx(2) holds a SCSI-2 reservation on B and has a write running on
		// it; nx(1), which cannot see B, resets the target.
		e.good(nx(2), res6, nil)
		other := e.blockedWrite(e.gateB, nx(2), 0, 5)
		if r := e.tgt.TaskManagement(t.Context(), nx(1), fn, 0, 0); r != TMFComplete {
			t.Fatalf("tmf %d: %d", fn, r)
		}
		e.gateB.unblock()
		if r := <-other; r.Aborted || r.Status != StatusGood {
			t.Fatalf("tmf %d from a host that cannot see B ended B's write: %+v", fn, r)
		}
		if r := e.do(nx(2), tur, nil); r.Status != StatusGood {
			t.Fatalf("tmf %d: the holder of B got %s after another host's target reset, want GOOD", fn, senseOf(r))
		}
		if r := e.do(nx(3), res6, nil); r.Status != StatusReservationConflict {
			t.Fatalf("tmf %d released B's reservation: RESERVE from another host got %#x", fn, r.Status)
		}
		// A is reset for every nexus that reaches it, through any LUN.
		e.check(nx(1), tur, nil, SensePowerOnReset())
		expectSense(t, e.doLUN(nx(4), 2, tur, nil), SensePowerOnReset())
	}
}

func TestLogicalUnitResetFollowsTheUnitNotTheLUN(t *testing.T) {
	for _, fn := range []TMF{LogicalUnitReset, ClearTaskSet} {
		e := newSharedEnv(t)
		onB := e.blockedWrite(e.gateB, nx(2), 0, 1) // B at LUN 0
		onA := e.blockedWrite(e.gateA, nx(4), 2, 2) // A at LUN 2
		if r := e.tgt.TaskManagement(t.Context(), nx(1), fn, 0, 0); r != TMFComplete {
			t.Fatalf("tmf %d: %d", fn, r)
		}
		if r := <-onA; !r.Aborted {
			t.Fatalf("tmf %d on A through LUN 0 left A's task through LUN 2 running: %+v", fn, r)
		}
		e.gateB.unblock()
		if r := <-onB; r.Aborted || r.Status != StatusGood {
			t.Fatalf("tmf %d on A aborted B's task (both LUN 0): %+v", fn, r)
		}
		if r := e.do(nx(2), []byte{opTestUnitReady}, nil); r.Status != StatusGood {
			t.Fatalf("tmf %d on A gave B's nexus %s", fn, senseOf(r))
		}
		want := SenseLUNReset()
		if fn == ClearTaskSet {
			want = SenseCommandsCleared()
		}
		expectSense(t, e.doLUN(nx(4), 2, []byte{opTestUnitReady}, nil), want)
	}
}

func TestLogicalUnitNames(t *testing.T) {
	e := newSharedEnv(t)
	a1, ok1 := e.tgt.LogicalUnitOf(nx(1), 0)
	a4, ok4 := e.tgt.LogicalUnitOf(nx(4), 2)
	b2, ok2 := e.tgt.LogicalUnitOf(nx(2), 0)
	if !ok1 || !ok4 || !ok2 || a1 != a4 || a1 == b2 {
		t.Fatalf("names: A as %q/%q, B as %q", a1, a4, b2)
	}
	if _, ok := e.tgt.LogicalUnitOf(nx(4), 0); ok {
		t.Fatal("a unit named at a LUN the initiator does not have")
	}
	if got := e.tgt.LogicalUnitsOf(nx(3)); !slices.Equal(got, []string{b2}) {
		t.Fatalf("units of nx(3): %q", got)
	}
	// Tasks the transport dropped for a CLEAR TASK SET of another nexus
	// raise COMMANDS CLEARED BY ANOTHER INITIATOR.
	e.tgt.TasksCleared(nx(4), 2)
	expectSense(t, e.doLUN(nx(4), 2, []byte{opTestUnitReady}, nil), SenseCommandsCleared())
}
