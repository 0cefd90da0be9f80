package scsi

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/metro-storage/metro/internal/store"
)

func TestReadWriteFamilies(t *testing.T) {
	e := newEnv(t)
	n := nx(1)
	e.ready(n)
	type fam struct {
		name        string
		read, write func(lba uint64, blocks uint32) []byte
		maxLBA      uint64
	}
	fams := []fam{
		{"6", func(l uint64, b uint32) []byte { return cdbRW6(opRead6, uint32(l), byte(b)) },
			func(l uint64, b uint32) []byte { return cdbRW6(opWrite6, uint32(l), byte(b)) }, 1<<21 - 1},
		{"10", func(l uint64, b uint32) []byte { return cdbRW10(opRead10, uint32(l), uint16(b)) },
			func(l uint64, b uint32) []byte { return cdbRW10(opWrite10, uint32(l), uint16(b)) }, 1<<32 - 1},
		{"12", func(l uint64, b uint32) []byte { return cdbRW12(opRead12, uint32(l), b) },
			func(l uint64, b uint32) []byte { return cdbRW12(opWrite12, uint32(l), b) }, 1<<32 - 1},
		{"16", func(l uint64, b uint32) []byte { return cdbRW16(opRead16, l, b) },
			func(l uint64, b uint32) []byte { return cdbRW16(opWrite16, l, b) }, 1<<64 - 1},
		{"writeverify10", func(l uint64, b uint32) []byte { return cdbRW10(opRead10, uint32(l), uint16(b)) },
			func(l uint64, b uint32) []byte {
				c := cdbRW10(opWriteVerify10, uint32(l), uint16(b))
				c[1] = 0x02
				return c
			}, 1<<32 - 1},
		{"writeverify12", func(l uint64, b uint32) []byte { return cdbRW12(opRead12, uint32(l), b) },
			func(l uint64, b uint32) []byte { return cdbRW12(opWriteVerify12, uint32(l), b) }, 1<<32 - 1},
		{"writeverify16", func(l uint64, b uint32) []byte { return cdbRW16(opRead16, l, b) },
			func(l uint64, b uint32) []byte { return cdbRW16(opWriteVerify16, l, b) }, 1<<64 - 1},
		{"writeatomic16", func(l uint64, b uint32) []byte { return cdbRW16(opRead16, l, b) },
			func(l uint64, b uint32) []byte {
				c := cdbRW16(opWriteAtomic16, l, 0)
				binary.BigEndian.PutUint16(c[12:], uint16(b))
				return c
			}, 1<<64 - 1},
	}
	for i, f := range fams {
		t.Run(f.name, func(t *testing.T) {
			e.t = t
			b := byte(i + 1)
			for _, at := range []uint64{0, 17, testBlocks - 4} {
				e.good(n, f.write(at, 4), pattern(b, 4))
				if d := e.good(n, f.read(at, 4), nil); !bytes.Equal(d, pattern(b, 4)) {
					t.Fatalf("read back at %d differs", at)
				}
			}
			// Beyond the end, including LBAs that overflow.
			e.check(n, f.read(testBlocks-1, 2), nil, SenseLBAOutOfRange())
			e.check(n, f.write(testBlocks, 1), pattern(b, 1), SenseLBAOutOfRange())
			e.check(n, f.read(min(f.maxLBA, 1<<31), 1), nil, SenseLBAOutOfRange())
			e.check(n, f.read(f.maxLBA, 2), nil, SenseLBAOutOfRange())
			if f.name != "6" {
				// Zero blocks is fine inside the unit, out of range past it.
				e.good(n, f.read(0, 0), nil)
				e.check(n, f.read(testBlocks+1, 0), nil, SenseLBAOutOfRange())
				// DPO and FUA are accepted.
				c := f.read(0, 1)
				c[1] |= 0x18
				e.good(n, c, nil)
			}
		})
	}
	e.t = t
	// Transfer length limit.
	e.check(n, cdbRW16(opRead16, 0, maxTransferBlocks+1), nil, SenseInvalidFieldInCDB(10))
	c := cdbRW16(opWriteAtomic16, 0, 0)
	binary.BigEndian.PutUint16(c[12:], maxAtomicBlocks+1)
	e.check(n, c, nil, SenseInvalidFieldInCDB(12))
	// READ(6) with transfer length 0 means 256 blocks.
	if d := e.good(n, cdbRW6(opRead6, 0, 0), nil); len(d) != 256*BlockSize {
		t.Fatalf("READ(6) length 0: %d bytes", len(d))
	}
	// WRITE AND VERIFY with BYTCHK 10b is reserved.
	c = cdbRW10(opWriteVerify10, 0, 1)
	c[1] = 0x04
	e.check(n, c, pattern(1, 1), SenseInvalidFieldInCDB(1))
}

// TestShortAndLongDataOut checks the data-out rules libiscsi's residual
// tests rely on: a short data-out writes the whole blocks that came, a long
// one writes what the CDB says.
func TestShortAndLongDataOut(t *testing.T) {
	e := newEnv(t)
	n := nx(1)
	e.ready(n)
	e.good(n, cdbRW10(opWrite10, 0, 2), pattern('a', 2))
	e.good(n, cdbRW10(opWrite10, 0, 1), pattern('b', 2)) // EDTL 2 blocks, CDB 1
	if d := e.good(n, cdbRW10(opRead10, 0, 2), nil); !bytes.Equal(d, append(pattern('b', 1), pattern('a', 1)...)) {
		t.Fatal("long data-out wrote past the CDB")
	}
	e.good(n, cdbRW10(opWrite10, 0, 2), pattern('c', 1)) // EDTL 1 block, CDB 2
	if d := e.good(n, cdbRW10(opRead10, 0, 2), nil); !bytes.Equal(d, append(pattern('c', 1), pattern('a', 1)...)) {
		t.Fatal("short data-out not written as sent")
	}
	e.good(n, cdbRW10(opWrite10, 0, 1), nil) // EDTL 0
	e.check(n, cdbRW10(opWrite10, 0, 1), make([]byte, 200), SenseInvalidFieldInInformationUnit())
	if got, want := e.be.Block(0), pattern('c', 1); !bytes.Equal(got, want) {
		t.Fatal("partial block written")
	}
	for _, tc := range []struct {
		cdb  []byte
		want uint32
	}{
		{cdbRW10(opWrite10, 0, 3), 3 * 512},
		{cdbRW6(opWrite6, 0, 0), 256 * 512},
		{cdbRW16(opWrite16, 0, 1<<30), 0},
		{cdbCAW(0, 2), 2 * 2 * 512},
		{cdbRW16(opWriteSame16, 0, 9), 512},
		{append(cdbRW16(opWriteSame16, 0, 9)[:1], append([]byte{1}, cdbRW16(opWriteSame16, 0, 9)[2:]...)...), 0},
		{func() []byte { c := cdbRW10(opVerify10, 0, 4); c[1] = 0x02; return c }(), 4 * 512},
		{func() []byte { c := cdbRW10(opVerify10, 0, 4); c[1] = 0x06; return c }(), 512},
		{cdbRW10(opVerify10, 0, 4), 0},
		{cdbRW10(opRead10, 0, 4), 0},
		{[]byte{opUnmap, 0, 0, 0, 0, 0, 0, 0, 24, 0}, 24},
		{[]byte{opModeSelect6, 0x10, 0, 0, 16, 0}, 16},
		{[]byte{opPROut, 0, 0, 0, 0, 0, 0, 0, 24, 0}, 24},
	} {
		got, ok := e.tgt.DataOutLength(n, 0, tc.cdb)
		if tc.want == 0 && tc.cdb[0] == opWrite16 {
			if ok {
				t.Errorf("% x: huge length accepted", tc.cdb)
			}
			continue
		}
		if !ok || got != tc.want {
			t.Errorf("% x: DataOutLength %d %v, want %d", tc.cdb, got, ok, tc.want)
		}
	}
	if _, ok := dataOutLength([]byte{opWrite10, 0}); ok {
		t.Error("short CDB accepted")
	}
}

func TestVerify(t *testing.T) {
	e := newEnv(t)
	n := nx(1)
	e.ready(n)
	data := append(pattern(1, 2), pattern(2, 2)...)
	e.good(n, cdbRW10(opWrite10, 10, 4), data)
	for _, op := range []byte{opVerify10, opVerify12, opVerify16} {
		var c []byte
		switch op {
		case opVerify10:
			c = cdbRW10(op, 10, 4)
		case opVerify12:
			c = cdbRW12(op, 10, 4)
		default:
			c = cdbRW16(op, 10, 4)
		}
		e.good(n, c, nil) // BYTCHK 0: medium check only
		c[1] = 0x02       // BYTCHK 01b
		e.good(n, c, data)
		bad := bytes.Clone(data)
		bad[1000] ^= 'X'
		s := e.check(n, c, bad, SenseMiscompare(0))
		if !s.InfoValid || s.Info != 1000 {
			t.Fatalf("op %#x: miscompare at %d, want 1000", op, s.Info)
		}
		c[1] = 0x06 // BYTCHK 11b: one block against each
		s = e.check(n, c, pattern(1, 1), SenseMiscompare(0))
		if s.Info != 2*512 {
			t.Fatalf("op %#x: miscompare at %d", op, s.Info)
		}
		c[1] = 0x04
		e.check(n, c, nil, SenseInvalidFieldInCDB(1))
		c[1] = 0x10 // DPO
		e.good(n, c, nil)
	}
	e.check(n, cdbRW10(opVerify10, testBlocks-1, 2), nil, SenseLBAOutOfRange())
	e.good(n, cdbRW10(opVerify10, 0, 0), nil)
	// A long medium verify goes in pieces.
	e.good(n, cdbRW16(opVerify16, 0, testBlocks), nil)
}

func TestCompareAndWrite(t *testing.T) {
	e := newEnv(t)
	n := nx(1)
	e.ready(n)
	e.good(n, cdbRW16(opWrite16, 100, 2), pattern('A', 2))
	e.good(n, cdbCAW(100, 2), append(pattern('A', 2), pattern('B', 2)...))
	if d := e.good(n, cdbRW16(opRead16, 100, 2), nil); !bytes.Equal(d, pattern('B', 2)) {
		t.Fatal("not written")
	}
	verify := pattern('B', 2)
	verify[700] = 'C'
	s := e.check(n, cdbCAW(100, 2), append(verify, pattern('Z', 2)...), SenseMiscompare(0))
	if !s.InfoValid || s.Info != 700 || s.Key != KeyMiscompare || s.ASC != 0x1d {
		t.Fatalf("miscompare sense %+v", s)
	}
	if d := e.good(n, cdbRW16(opRead16, 100, 2), nil); !bytes.Equal(d, pattern('B', 2)) {
		t.Fatal("written despite miscompare")
	}
	// Data-out must be exactly twice NUMBER OF LOGICAL BLOCKS.
	e.check(n, cdbCAW(100, 1), pattern('B', 4), SenseInvalidFieldInCDB(13))
	e.check(n, cdbCAW(100, 3), pattern('B', 4), SenseInvalidFieldInCDB(13))
	e.check(n, cdbCAW(100, 0), pattern('B', 2), SenseInvalidFieldInCDB(13))
	e.good(n, cdbCAW(100, 0), nil)
	e.check(n, cdbCAW(testBlocks-1, 2), pattern(0, 4), SenseLBAOutOfRange())
	c := cdbCAW(0, 1)
	c[1] = 0x18 // DPO, FUA
	e.good(n, c, pattern(0, 2))
	c[1] = 0x20 // WRPROTECT
	e.check(n, c, pattern(0, 2), SenseInvalidFieldInCDB(1))
}

// TestCompareAndWriteAtomic races COMPARE AND WRITEs, each moving a counter
// block from v to v+1, against plain writes of other blocks in the same
// range lock neighbourhood: exactly one CAW per value may succeed and the
// final value is the number of successes.
func TestCompareAndWriteAtomic(t *testing.T) {
	e := newEnv(t)
	n := nx(1)
	e.ready(n)
	block := func(v uint64) []byte {
		b := make([]byte, BlockSize)
		binary.BigEndian.PutUint64(b, v+1) // never all zeros
		return b
	}
	e.good(n, cdbRW16(opWrite16, 7, 1), block(0))
	const workers, rounds = 8, 60
	var (
		mu        sync.Mutex
		successes int
		wg        sync.WaitGroup
	)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			v := uint64(0)
			for range rounds {
				r := e.tgt.Execute(context.Background(), &Command{Nexus: n, CDB: cdbCAW(7, 1), DataOut: append(block(v), block(v+1)...)})
				switch r.Status {
				case StatusGood:
					mu.Lock()
					successes++
					mu.Unlock()
					v++
				case StatusCheckCondition:
					s, _ := ParseSense(r.Sense)
					if !s.Is(SenseMiscompare(0)) {
						t.Errorf("unexpected sense %v", s)
						return
					}
					// Learn the current value.
					d := e.tgt.Execute(context.Background(), &Command{Nexus: n, CDB: cdbRW16(opRead16, 7, 1)})
					v = binary.BigEndian.Uint64(d.Data) - 1
				default:
					t.Errorf("status %#x", r.Status)
					return
				}
				// A neighbouring plain write overlapping the counter's range
				// lock only when it is the same block.
				e.tgt.Execute(context.Background(), &Command{Nexus: n, CDB: cdbRW16(opWrite16, 8+uint64(w), 1), DataOut: block(v)})
			}
		}()
	}
	wg.Wait()
	d := e.good(n, cdbRW16(opRead16, 7, 1), nil)
	if got := binary.BigEndian.Uint64(d) - 1; got != uint64(successes) {
		t.Fatalf("counter %d after %d successful COMPARE AND WRITEs", got, successes)
	}
}

// TestWritesWaitForCompareAndWrite holds a COMPARE AND WRITE between its
// read and its write (with a backend that blocks writes) and checks that an
// overlapping write waits while a non-overlapping one does not.
func TestWritesWaitForCompareAndWrite(t *testing.T) {
	e := newEnv(t)
	gate := &gatedBackend{Backend: e.be, release: make(chan struct{}), entered: make(chan int64, 4)}
	lu := NewLogicalUnit(LUConfig{UUID: testUUID, Size: testSize, Backend: gate})
	e.res = NewStaticResolver(map[uint64]*LogicalUnit{0: lu})
	e.tgt = NewTarget(TargetConfig{Resolver: e.res})
	n := nx(1)
	e.ready(n)
	gate.block(0)
	done := make(chan *Result, 1)
	go func() { done <- e.do(n, cdbCAW(0, 2), append(pattern(0, 2), pattern('X', 2)...)) }()
	<-gate.entered // CAW is writing block 0 (holding the range lock)
	e.good(n, cdbRW16(opWrite16, 2, 1), pattern('Y', 1))
	overlapping := make(chan *Result, 1)
	go func() { overlapping <- e.do(n, cdbRW16(opWrite16, 1, 1), pattern('Z', 1)) }()
	select {
	case <-overlapping:
		t.Fatal("overlapping write ran while COMPARE AND WRITE held the range")
	case r := <-done:
		t.Fatalf("COMPARE AND WRITE finished early: %#x", r.Status)
	default:
	}
	gate.unblock()
	if r := <-done; r.Status != StatusGood {
		t.Fatalf("CAW %#x", r.Status)
	}
	if r := <-overlapping; r.Status != StatusGood {
		t.Fatalf("write %#x", r.Status)
	}
	if got := e.be.Block(1); !bytes.Equal(got, pattern('Z', 1)) {
		t.Fatal("overlapping write was overtaken by the COMPARE AND WRITE")
	}
}

// gatedBackend blocks WriteAt at one offset until released.
type gatedBackend struct {
	Backend
	mu      sync.Mutex
	at      int64
	armed   bool
	release chan struct{}
	entered chan int64
}

func (g *gatedBackend) block(lba int64) {
	g.mu.Lock()
	g.at, g.armed = lba*BlockSize, true
	g.mu.Unlock()
}

func (g *gatedBackend) unblock() { close(g.release) }

func (g *gatedBackend) WriteAt(ctx context.Context, p []byte, off int64) error {
	g.mu.Lock()
	hit := g.armed && off == g.at
	if hit {
		g.armed = false
	}
	g.mu.Unlock()
	if hit {
		g.entered <- off
		select {
		case <-g.release:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return g.Backend.WriteAt(ctx, p, off)
}

func TestOrWrite(t *testing.T) {
	e := newEnv(t)
	n := nx(1)
	e.ready(n)
	e.good(n, cdbRW16(opOrWrite16, 5, 2), pattern(0xa5, 2))
	e.good(n, cdbRW16(opOrWrite16, 5, 2), pattern(0x5a, 2))
	if d := e.good(n, cdbRW16(opRead16, 5, 2), nil); !bytes.Equal(d, pattern(0xff, 2)) {
		t.Fatal("or not applied")
	}
	e.good(n, cdbRW16(opOrWrite16, 5, 0), nil)
	e.check(n, cdbRW16(opOrWrite16, testBlocks-1, 2), pattern(0, 2), SenseLBAOutOfRange())
	c := cdbRW16(opOrWrite16, 0, 1)
	c[1] = 0x20
	e.check(n, c, pattern(0, 1), SenseInvalidFieldInCDB(1))
}

func TestPrefetch(t *testing.T) {
	e := newEnv(t)
	n := nx(1)
	e.ready(n)
	e.good(n, cdbRW10(opPrefetch10, 0, 1), nil)
	c := cdbRW10(opPrefetch10, 0, 1)
	c[1], c[6] = 0x02, 3 // IMMED, group 3
	e.good(n, c, nil)
	e.good(n, cdbRW16(opPrefetch16, testBlocks, 0), nil)
	e.check(n, cdbRW10(opPrefetch10, testBlocks+1, 0), nil, SenseLBAOutOfRange())
	e.check(n, cdbRW16(opPrefetch16, 1<<63, 1), nil, SenseLBAOutOfRange())
}

func TestWriteSame(t *testing.T) {
	e := newEnv(t)
	n := nx(1)
	e.ready(n)
	for _, ws16 := range []bool{false, true} {
		cdb := func(lba uint64, k uint32, flags byte) []byte {
			var c []byte
			if ws16 {
				c = cdbRW16(opWriteSame16, lba, k)
			} else {
				c = cdbRW10(opWriteSame10, uint32(lba), uint16(k))
			}
			c[1] = flags
			return c
		}
		pat := pattern(0x3c, 1)
		e.good(n, cdb(10, 3000, 0), pat) // more than one chunk
		for _, lba := range []int64{10, 2047, 3009} {
			if !bytes.Equal(e.be.Block(lba), pat) {
				t.Fatalf("ws16=%v: block %d not written", ws16, lba)
			}
		}
		if e.be.Block(3010)[0] != 0 {
			t.Fatal("wrote past the range")
		}
		// UNMAP deallocates whatever the data-out holds.
		e.good(n, cdb(10, 3000, 0x08), pat)
		if len(e.be.MappedBlocks()) != 0 {
			t.Fatalf("ws16=%v: %d blocks still mapped", ws16, len(e.be.MappedBlocks()))
		}
		e.check(n, cdb(0, 1, 0x10), pat, SenseInvalidFieldInCDB(1))    // ANCHOR without UNMAP
		e.check(n, cdb(0, 1, 0x18), pat, SenseInvalidFieldInCDB(1))    // ANCHOR (ANC_SUP=0)
		e.check(n, cdb(0, 0, 0), pat, SenseInvalidFieldInCDB(7))       // WSNZ
		e.check(n, cdb(testBlocks+1, 0, 0), pat, SenseLBAOutOfRange()) // range first
		e.check(n, cdb(testBlocks-1, 2, 0), pat, SenseLBAOutOfRange())
		e.check(n, cdb(0, 1, 0x08), pat[:256], SenseInvalidFieldInCDB(7))
		e.check(n, cdb(0, 1, 0x08), pattern(0, 2), SenseInvalidFieldInCDB(7))
		e.check(n, cdb(0, 1, 0x20), pat, SenseInvalidFieldInCDB(1)) // WRPROTECT
	}
	// NDOB writes zeros without data-out; too long is refused.
	e.good(n, cdbRW16(opWriteSame16, 0, 4), pattern(9, 1))
	c := cdbRW16(opWriteSame16, 0, 4)
	c[1] = 0x01
	e.good(n, c, nil)
	if len(e.be.MappedBlocks()) != 0 {
		t.Fatal("NDOB did not zero")
	}
	if testBlocks > maxWriteSameBlocks {
		e.check(n, cdbRW16(opWriteSame16, 0, maxWriteSameBlocks+1), pattern(0, 1), SenseInvalidFieldInCDB(10))
	}
}

func unmapParams(descs ...[2]uint64) []byte {
	p := make([]byte, 8+16*len(descs))
	binary.BigEndian.PutUint16(p[0:], uint16(len(p)-2))
	binary.BigEndian.PutUint16(p[2:], uint16(16*len(descs)))
	for i, d := range descs {
		binary.BigEndian.PutUint64(p[8+16*i:], d[0])
		binary.BigEndian.PutUint32(p[16+16*i:], uint32(d[1]))
	}
	return p
}

func cdbUnmap(plen int) []byte {
	return []byte{opUnmap, 0, 0, 0, 0, 0, 0, byte(plen >> 8), byte(plen), 0}
}

func TestUnmap(t *testing.T) {
	e := newEnv(t)
	n := nx(1)
	e.ready(n)
	e.good(n, cdbRW16(opWrite16, 0, 64), pattern('a', 64))
	p := unmapParams([2]uint64{0, 8}, [2]uint64{20, 4}, [2]uint64{testBlocks, 0})
	e.good(n, cdbUnmap(len(p)), p)
	for lba := range int64(64) {
		unmapped := lba < 8 || (lba >= 20 && lba < 24)
		if got := e.be.Block(lba)[0]; unmapped != (got == 0) {
			t.Fatalf("block %d = %#x", lba, got)
		}
	}
	e.good(n, cdbUnmap(0), nil)
	e.good(n, cdbUnmap(8), unmapParams())
	e.check(n, cdbUnmap(6), make([]byte, 6), SenseParameterListLengthError())
	// One bad descriptor fails the whole command before anything changes.
	p = unmapParams([2]uint64{30, 2}, [2]uint64{testBlocks - 1, 2})
	e.check(n, cdbUnmap(len(p)), p, SenseLBAOutOfRange())
	if e.be.Block(30)[0] == 0 {
		t.Fatal("partial unmap")
	}
	many := make([][2]uint64, maxUnmapDescriptors+1)
	p = unmapParams(many...)
	e.check(n, cdbUnmap(len(p)), p, SenseInvalidFieldInParameterList(2))
	e.check(n, []byte{opUnmap, 1, 0, 0, 0, 0, 0, 0, 24, 0}, unmapParams([2]uint64{0, 1}), SenseInvalidFieldInCDB(1))
	// Truncated parameter data: only complete descriptors count.
	p = unmapParams([2]uint64{40, 1}, [2]uint64{41, 1})
	e.good(n, cdbUnmap(len(p)-4), p[:len(p)-4])
	if e.be.Block(40)[0] != 0 || e.be.Block(41)[0] == 0 {
		t.Fatal("truncated descriptor list handled wrongly")
	}
}

func TestUnmapTooMuch(t *testing.T) {
	e := newEnv(t)
	e.lu.Resize(4 << 30) // large enough for maxUnmapBlocks+1
	n := nx(1)
	e.ready(n)
	p := unmapParams([2]uint64{0, maxUnmapBlocks}, [2]uint64{maxUnmapBlocks, 1})
	e.check(n, cdbUnmap(len(p)), p, SenseInvalidFieldInParameterList(8))
}

func TestGetLBAStatus(t *testing.T) {
	e := newEnv(t)
	n := nx(1)
	e.ready(n)
	e.good(n, cdbRW16(opWrite16, 16, 8), pattern('a', 8))
	e.good(n, cdbRW16(opWrite16, 40, 1), pattern('a', 1))
	type desc struct {
		lba, n uint64
		state  byte
	}
	parse := func(d []byte) []desc {
		if int(binary.BigEndian.Uint32(d))+4 < len(d) {
			t.Fatalf("length % x", d[:8])
		}
		var out []desc
		for p := d[8:]; len(p) >= 16; p = p[16:] {
			out = append(out, desc{binary.BigEndian.Uint64(p), uint64(binary.BigEndian.Uint32(p[8:])), p[12]})
		}
		return out
	}
	got := parse(e.good(n, cdbSAI(saGetLBAStatus, 0, 1024), nil))
	want := []desc{{0, 16, 1}, {16, 8, 0}, {24, 16, 1}, {40, 1, 0}, {41, testBlocks - 41, 1}}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("descriptors %v, want %v", got, want)
	}
	got = parse(e.good(n, cdbSAI(saGetLBAStatus, 17, 24), nil))
	if len(got) != 1 || got[0] != (desc{17, 7, 0}) {
		t.Fatalf("from 17: %v", got)
	}
	// Small allocation lengths truncate; the length field still counts.
	d := e.good(n, cdbSAI(saGetLBAStatus, 0, 8), nil)
	if len(d) != 8 || binary.BigEndian.Uint32(d) != 20 {
		t.Fatalf("alloc 8: % x", d)
	}
	e.good(n, cdbSAI(saGetLBAStatus, testBlocks-1, 24), nil)
	e.check(n, cdbSAI(saGetLBAStatus, testBlocks, 24), nil, SenseLBAOutOfRange())
	e.check(n, cdbSAI(saGetLBAStatus, 1<<63, 24), nil, SenseLBAOutOfRange())
	e.check(n, cdbSAI(saGetLBAStatus, 1<<64-1, 24), nil, SenseLBAOutOfRange())
}

func TestBackendErrors(t *testing.T) {
	e := newEnv(t)
	n := nx(1)
	e.ready(n)
	tests := []struct {
		err  error
		want Sense
	}{
		{fmt.Errorf("volume 3: %w", store.ErrNoSpace), SenseSpaceAllocFailed()},
		{fmt.Errorf("chunk 9: %w", store.ErrCorrupt), SenseMediumError()},
		{fmt.Errorf("pod p: %w", ErrTransitioning), SenseNotReadyTransitioning()},
		{errors.New("disk on fire"), SenseHardwareError()},
	}
	for _, tc := range tests {
		e.be.SetErrors(tc.err, tc.err)
		e.check(n, cdbRW10(opWrite10, 0, 1), pattern(1, 1), tc.want)
		e.check(n, cdbRW10(opRead10, 0, 1), nil, tc.want)
		e.check(n, cdbRW16(opWriteSame16, 0, 8), pattern(0, 1), tc.want)
		p := unmapParams([2]uint64{0, 1})
		e.check(n, cdbUnmap(len(p)), p, tc.want)
		e.check(n, cdbCAW(0, 1), pattern(0, 2), tc.want)
	}
	e.be.SetErrors(nil, nil)
	e.good(n, cdbRW10(opWrite10, 0, 1), pattern(1, 1))
}

// TestConcurrentIO runs reads and writes of disjoint and overlapping ranges
// from several nexuses at once (for the race detector) and checks every
// block ends up holding one of the values written to it.
func TestConcurrentIO(t *testing.T) {
	e := newEnv(t)
	var wg sync.WaitGroup
	for w := range 6 {
		n := nx(w)
		e.ready(n)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 50 {
				lba := uint64((w*7 + i*13) % 64)
				r := e.tgt.Execute(context.Background(), &Command{Nexus: n, Tag: uint32(i), CDB: cdbRW16(opWrite16, lba, 4), DataOut: pattern(byte(w+1), 4)})
				if r.Status != StatusGood {
					t.Errorf("write %#x", r.Status)
					return
				}
				r = e.tgt.Execute(context.Background(), &Command{Nexus: n, Tag: uint32(i), CDB: cdbRW16(opRead16, lba, 4)})
				if r.Status != StatusGood || len(r.Data) != 4*BlockSize {
					t.Errorf("read %#x", r.Status)
					return
				}
			}
		}()
	}
	wg.Wait()
	for _, lba := range e.be.MappedBlocks() {
		b := e.be.Block(lba)
		if !bytes.Equal(b, pattern(b[0], 1)) || b[0] == 0 || b[0] > 6 {
			t.Fatalf("block %d torn: %x...", lba, b[:8])
		}
	}
}
