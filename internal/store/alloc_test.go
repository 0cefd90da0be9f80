package store

import (
	"bytes"
	"context"
	"encoding/binary"
	"math/rand/v2"
	"testing"
)

// naiveRun is the reference for allocMap.run.
func naiveRun(set map[uint64]bool, c0, limit uint64) (bool, uint64) {
	mapped := set[c0]
	n := uint64(0)
	for n < limit && set[c0+n] == mapped {
		n++
	}
	return mapped, n
}

func TestAllocRunAgainstNaive(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for round := range 80 {
		var m allocMap
		set := make(map[uint64]bool)
		// Bits clustered in a few pages, some far apart, some pages emptied.
		pages := []uint64{0, 1, 3, 1000, uint64(rng.IntN(1 << 20))}
		for range rng.IntN(300) {
			p := pages[rng.IntN(len(pages))]
			c := p<<pageShift + uint64(rng.IntN(pageChunks))
			if rng.IntN(3) > 0 {
				// Runs of neighbours, so word boundaries are crossed.
				for k := range uint64(rng.IntN(130)) {
					m.set(c+k, true)
					set[c+k] = true
				}
			} else {
				m.set(c, false)
				delete(set, c)
			}
		}
		for range 50 {
			p := pages[rng.IntN(len(pages))]
			c0 := p<<pageShift + uint64(rng.IntN(pageChunks)) - uint64(rng.IntN(3))
			if c0 > 1<<60 {
				c0 = 0
			}
			limit := uint64(1 + rng.IntN(2*pageChunks))
			gm, gn := m.run(c0, limit)
			wm, wn := naiveRun(set, c0, limit)
			if gm != wm || gn != wn {
				t.Fatalf("round %d: run(%d, %d) = %v %d, want %v %d", round, c0, limit, gm, gn, wm, wn)
			}
			var got []uint64
			c1 := c0 + limit - 1
			m.forEachMapped(c0, c1, func(c uint64) { got = append(got, c) })
			var want []uint64
			for c := c0; c <= c1; c++ {
				if set[c] {
					want = append(want, c)
				}
			}
			if len(got) != len(want) {
				t.Fatalf("round %d: forEachMapped(%d, %d) found %d, want %d", round, c0, c1, len(got), len(want))
			}
			for i := range got {
				if got[i] != want[i] {
					t.Fatalf("round %d: forEachMapped mismatch at %d: %d vs %d", round, i, got[i], want[i])
				}
			}
		}
		if got := m.mappedChunks(); got != int64(len(set)) {
			t.Fatalf("round %d: mappedChunks %d, want %d", round, got, len(set))
		}
	}
}

func TestAllocHugeRanges(t *testing.T) {
	s, _ := openMem(t, Options{})
	v := s.Volume(1)
	ctx := context.Background()
	const far = int64(1) << 50
	mustWrite(t, v, pattern(1, 0, ChunkSize), 0)
	mustWrite(t, v, pattern(2, 0, ChunkSize), far)
	const maxLen = int64(1)<<62 - 1024*1024
	mapped, run, err := v.Mapped(ctx, ChunkSize, maxLen)
	if err != nil || mapped || run != far-ChunkSize {
		t.Fatalf("Mapped across a sparse volume: %v %d %v", mapped, run, err)
	}
	mapped, run, err = v.Mapped(ctx, far+ChunkSize, maxLen)
	if err != nil || mapped || run != maxLen {
		t.Fatalf("Mapped past the end: %v %d %v", mapped, run, err)
	}
	// The very end of the address space.
	mapped, run, err = v.Mapped(ctx, (1<<63-1)/512*512-512, 512)
	if err != nil || mapped || run != 512 {
		t.Fatalf("Mapped at the end: %v %d %v", mapped, run, err)
	}
	if err := v.Unmap(ctx, ChunkSize, 1<<62); err != nil {
		t.Fatal(err)
	}
	if v.Used() != ChunkSize {
		t.Fatalf("used %d after a huge unmap", v.Used())
	}
	mustCheck(t, s)
}

// applyNaive applies formList changes in order to a page.
func applyNaive(page *[pageWords]uint64, ops [][]byte) {
	for _, op := range ops {
		for i := 1; i < len(op); i += 2 {
			e := binary.BigEndian.Uint16(op[i:])
			c := e & 0xfff
			if e&0x8000 != 0 {
				page[c/64] |= 1 << (c % 64)
			} else {
				page[c/64] &^= 1 << (c % 64)
			}
		}
	}
}

func randomList(rng *rand.Rand) []byte {
	var e pageEdits
	for range 1 + rng.IntN(6) {
		e.add(uint64(rng.IntN(200)), rng.IntN(3) > 0)
	}
	return e.list
}

// TestPageMergerComposes checks the merge operator against sequential
// application for every way Pebble may group operands: merged newest-first
// or oldest-first, in partial runs (includesBase false) merged again later.
func TestPageMergerComposes(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	m := newMerger()
	key := allocKey(1, 0)
	for round := range 500 {
		ops := make([][]byte, 1+rng.IntN(12))
		for i := range ops {
			ops[i] = randomList(rng)
		}
		var want [pageWords]uint64
		applyNaive(&want, ops)

		// Split into runs, merge each partially, then merge the results.
		var partials [][]byte
		for i := 0; i < len(ops); {
			j := i + 1 + rng.IntN(len(ops)-i)
			run := ops[i:j]
			var vm interface {
				MergeNewer([]byte) error
				MergeOlder([]byte) error
			}
			var fin func(bool) ([]byte, error)
			if rng.IntN(2) == 0 { // oldest first, MergeNewer
				pm, err := m.Merge(key, run[0])
				if err != nil {
					t.Fatal(err)
				}
				vm = pm
				for _, o := range run[1:] {
					if err := vm.MergeNewer(o); err != nil {
						t.Fatal(err)
					}
				}
				fin = func(b bool) ([]byte, error) { v, _, err := pm.Finish(b); return v, err }
			} else { // newest first, MergeOlder
				pm, err := m.Merge(key, run[len(run)-1])
				if err != nil {
					t.Fatal(err)
				}
				vm = pm
				for k := len(run) - 2; k >= 0; k-- {
					if err := vm.MergeOlder(run[k]); err != nil {
						t.Fatal(err)
					}
				}
				fin = func(b bool) ([]byte, error) { v, _, err := pm.Finish(b); return v, err }
			}
			val, err := fin(i == 0 && rng.IntN(2) == 0)
			if err != nil {
				t.Fatal(err)
			}
			partials = append(partials, val)
			i = j
		}
		pm, err := m.Merge(key, partials[0])
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range partials[1:] {
			if err := pm.MergeNewer(p); err != nil {
				t.Fatal(err)
			}
		}
		val, _, err := pm.Finish(true)
		if err != nil {
			t.Fatal(err)
		}
		got, err := decodePageOp(val)
		if err != nil {
			t.Fatal(err)
		}
		if got.set != want {
			t.Fatalf("round %d: merged page differs from sequential application", round)
		}
	}
}

func TestMergerRejectsForeignKeys(t *testing.T) {
	if _, err := newMerger().Merge(chunkKey(1, 1), []byte{formList}); err == nil {
		t.Fatal("merge on a data key accepted")
	}
}

// FuzzPageOp feeds arbitrary bytes to the bitmap record decoder (it parses
// what is on disk): it must not panic, and what it accepts must survive
// encode/decode unchanged.
func FuzzPageOp(f *testing.F) {
	var e pageEdits
	e.add(1, true)
	e.add(4095, false)
	f.Add(e.list)
	f.Add([]byte{formList})
	f.Add([]byte{formList, 0x80})
	f.Add([]byte{formList, 0x10, 0x00})
	f.Add(append([]byte{formFull}, make([]byte, pageBytes)...))
	f.Add(append([]byte{formMasks}, bytes.Repeat([]byte{0xa5}, 2*pageBytes)...))
	f.Add([]byte{0x07, 1, 2, 3})
	f.Fuzz(func(t *testing.T, b []byte) {
		op, err := decodePageOp(b)
		if err != nil {
			return
		}
		for _, full := range []bool{false, true} {
			back, err := decodePageOp(op.encode(full))
			if err != nil {
				t.Fatalf("re-decode: %v", err)
			}
			if back.set != op.set || (!full && back.clear != op.clear) {
				t.Fatal("encode/decode changed the op")
			}
		}
	})
}
