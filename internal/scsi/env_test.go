package scsi

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"sync"
	"testing"
)

// testSize is the capacity of the test logical unit: 4 MiB, 8192 blocks.
const testSize = 4 << 20

const testBlocks = testSize / BlockSize

// env is a Target with one logical unit at LUN 0 on a MemBackend.
type env struct {
	t   *testing.T
	be  *MemBackend
	lu  *LogicalUnit
	res *StaticResolver
	tgt *Target

	// mu guards saved.
	mu struct {
		sync.Mutex
		saved   []byte
		saves   int
		saveErr error
	}
}

func newEnv(t *testing.T) *env {
	t.Helper()
	e := &env{t: t, be: NewMemBackend()}
	e.lu = NewLogicalUnit(LUConfig{UUID: testUUID, Size: testSize, Backend: e.be, PersistPR: e.persist})
	e.res = NewStaticResolver(map[uint64]*LogicalUnit{0: e.lu})
	e.tgt = NewTarget(TargetConfig{Resolver: e.res})
	return e
}

var testUUID = [16]byte{0x6b, 0x1f, 0x3c, 0x2a, 0x9e, 0x44, 0x4d, 0x1a, 0x8f, 0x55, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06}

func (e *env) persist(state []byte) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.mu.saveErr != nil {
		return e.mu.saveErr
	}
	e.mu.saved = bytes.Clone(state)
	e.mu.saves++
	return nil
}

func (e *env) saved() ([]byte, int) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.mu.saved, e.mu.saves
}

// nx returns the nexus of test initiator i on relative target port 1.
func nx(i int) Nexus {
	return Nexus{
		InitiatorName:  fmt.Sprintf("iqn.2024-01.test:init%d", i),
		InitiatorPort:  fmt.Sprintf("iqn.2024-01.test:init%d,i,0x23d00000000%d", i, i),
		TargetPort:     "iqn.2024-01.test:target,t,0x1",
		RelativePortID: 1,
	}
}

// do executes cdb (padded to 16 bytes as an iSCSI transport would) with
// data-out on LUN 0.
func (e *env) do(n Nexus, cdb []byte, data []byte) *Result {
	e.t.Helper()
	return e.doLUN(n, 0, cdb, data)
}

func (e *env) doLUN(n Nexus, lun uint64, cdb []byte, data []byte) *Result {
	e.t.Helper()
	c := make([]byte, max(16, len(cdb)))
	copy(c, cdb)
	r := e.tgt.Execute(context.Background(), &Command{Nexus: n, LUN: lun, CDB: c, DataOut: data})
	if r == nil {
		e.t.Fatalf("cdb % x: nil result", cdb)
	}
	return r
}

// ready clears the unit attentions of a fresh nexus.
func (e *env) ready(n Nexus) {
	e.t.Helper()
	for range 20 {
		if r := e.do(n, []byte{opTestUnitReady}, nil); r.Status == StatusGood {
			return
		}
	}
	e.t.Fatal("TEST UNIT READY never GOOD")
}

// good asserts GOOD and returns the data-in.
func (e *env) good(n Nexus, cdb []byte, data []byte) []byte {
	e.t.Helper()
	r := e.do(n, cdb, data)
	if r.Status != StatusGood {
		e.t.Fatalf("cdb % x: status %#x sense %v, want GOOD", cdb, r.Status, senseOf(r))
	}
	return r.Data
}

// check asserts CHECK CONDITION with the sense key/ASC/ASCQ of want.
func (e *env) check(n Nexus, cdb []byte, data []byte, want Sense) Sense {
	e.t.Helper()
	r := e.do(n, cdb, data)
	return expectSense(e.t, r, want)
}

func expectSense(t *testing.T, r *Result, want Sense) Sense {
	t.Helper()
	if r.Status != StatusCheckCondition {
		t.Fatalf("status %#x, want CHECK CONDITION %v", r.Status, want)
	}
	s, err := ParseSense(r.Sense)
	if err != nil {
		t.Fatal(err)
	}
	if !s.Is(want) {
		t.Fatalf("sense %v, want %v", s, want)
	}
	return s
}

func senseOf(r *Result) string {
	if s, err := ParseSense(r.Sense); err == nil {
		return s.String()
	}
	return "-"
}

// CDB builders.

func cdbRW10(op byte, lba uint32, n uint16) []byte {
	c := make([]byte, 10)
	c[0] = op
	binary.BigEndian.PutUint32(c[2:], lba)
	binary.BigEndian.PutUint16(c[7:], n)
	return c
}

func cdbRW12(op byte, lba, n uint32) []byte {
	c := make([]byte, 12)
	c[0] = op
	binary.BigEndian.PutUint32(c[2:], lba)
	binary.BigEndian.PutUint32(c[6:], n)
	return c
}

func cdbRW16(op byte, lba uint64, n uint32) []byte {
	c := make([]byte, 16)
	c[0] = op
	binary.BigEndian.PutUint64(c[2:], lba)
	binary.BigEndian.PutUint32(c[10:], n)
	return c
}

func cdbRW6(op byte, lba uint32, n byte) []byte {
	return []byte{op, byte(lba>>16) & 0x1f, byte(lba >> 8), byte(lba), n, 0}
}

func cdbCAW(lba uint64, n byte) []byte {
	c := make([]byte, 16)
	c[0] = opCompareAndWrite
	binary.BigEndian.PutUint64(c[2:], lba)
	c[13] = n
	return c
}

func cdbInquiry(evpd bool, page byte, alloc uint16) []byte {
	c := []byte{opInquiry, 0, page, byte(alloc >> 8), byte(alloc), 0}
	if evpd {
		c[1] = 1
	}
	return c
}

func cdbSAI(sa byte, lba uint64, alloc uint32) []byte {
	c := make([]byte, 16)
	c[0] = opServiceActionIn
	c[1] = sa
	binary.BigEndian.PutUint64(c[2:], lba)
	binary.BigEndian.PutUint32(c[10:], alloc)
	return c
}

func cdbMaintIn(sa, b2 byte, alloc uint32) []byte {
	c := make([]byte, 12)
	c[0] = opMaintenanceIn
	c[1] = sa
	c[2] = b2
	binary.BigEndian.PutUint32(c[6:], alloc)
	return c
}

func cdbPRIn(sa byte, alloc uint16) []byte {
	c := make([]byte, 10)
	c[0] = opPRIn
	c[1] = sa
	binary.BigEndian.PutUint16(c[7:], alloc)
	return c
}

func cdbPROut(sa byte, typ PRType) ([]byte, func(key, sakey uint64, flags byte) []byte) {
	c := make([]byte, 10)
	c[0] = opPROut
	c[1] = sa
	c[2] = byte(typ)
	binary.BigEndian.PutUint32(c[5:], prOutParamLen)
	return c, func(key, sakey uint64, flags byte) []byte {
		p := make([]byte, prOutParamLen)
		binary.BigEndian.PutUint64(p[0:], key)
		binary.BigEndian.PutUint64(p[8:], sakey)
		p[20] = flags
		return p
	}
}

// prout runs one PERSISTENT RESERVE OUT and returns the result.
func (e *env) prout(n Nexus, sa byte, typ PRType, key, sakey uint64, flags byte) *Result {
	e.t.Helper()
	c, p := cdbPROut(sa, typ)
	return e.do(n, c, p(key, sakey, flags))
}

// pattern returns n blocks filled with b.
func pattern(b byte, n int) []byte { return bytes.Repeat([]byte{b}, n*BlockSize) }
