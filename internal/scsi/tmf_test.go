package scsi

import (
	"bytes"
	"context"
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
