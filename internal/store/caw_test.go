package store

import (
	"context"
	"encoding/binary"
	"errors"
	"sync"
	"testing"
)

func TestCompareAndWrite(t *testing.T) {
	s, _ := openMem(t, Options{})
	v := s.Volume(1)
	ctx := context.Background()
	// Unmapped data compares equal to zeros.
	a := pattern(1, 0, 512)
	if err := v.CompareAndWrite(ctx, make([]byte, 512), a, 1024); err != nil {
		t.Fatal(err)
	}
	equalOrFail(t, "after CAW", mustRead(t, v, 1024, 512), a)
	// A mismatch writes nothing and says where.
	cmp := append([]byte{}, a...)
	cmp[300] ^= 1
	err := v.CompareAndWrite(ctx, cmp, pattern(2, 0, 512), 1024)
	var me *MiscompareError
	if !errors.Is(err, ErrMiscompare) || !errors.As(err, &me) || me.Offset != 300 {
		t.Fatalf("miscompare: %v", err)
	}
	equalOrFail(t, "after miscompare", mustRead(t, v, 1024, 512), a)
	// Across chunks.
	big := pattern(3, 0, 3*ChunkSize)
	mustWrite(t, v, big, ChunkSize-512)
	cmp = append([]byte{}, big...)
	cmp[2*ChunkSize+7] ^= 0x80
	err = v.CompareAndWrite(ctx, cmp, make([]byte, len(big)), ChunkSize-512)
	if !errors.As(err, &me) || me.Offset != 2*ChunkSize+7 {
		t.Fatalf("miscompare across chunks: %v", err)
	}
	if err := v.CompareAndWrite(ctx, big, make([]byte, len(big)), ChunkSize-512); err != nil {
		t.Fatal(err)
	}
	// Zeros written through compare-and-write unmap: only chunk 0 (holding
	// a) stays mapped.
	if v.Used() != ChunkSize {
		t.Fatalf("used %d", v.Used())
	}
	if err := v.CompareAndWrite(ctx, make([]byte, 10), make([]byte, 512), 0); !errors.Is(err, ErrInvalid) {
		t.Fatalf("length mismatch: %v", err)
	}
	mustCheck(t, s)
}

// TestCompareAndWriteAtomic runs compare-and-write increments of one counter
// block from many goroutines, mixed with plain writes to the same chunk: no
// increment may be lost.
func TestCompareAndWriteAtomic(t *testing.T) {
	s, _ := openMem(t, Options{})
	v := s.Volume(1)
	ctx := context.Background()
	const goroutines, increments = 6, 30
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cur := make([]byte, 512)
			for done := 0; done < increments; {
				if err := v.ReadAt(ctx, cur, 0); err != nil {
					t.Error(err)
					return
				}
				next := make([]byte, 512)
				binary.LittleEndian.PutUint64(next, binary.LittleEndian.Uint64(cur)+1)
				err := v.CompareAndWrite(ctx, cur, next, 0)
				switch {
				case errors.Is(err, ErrMiscompare):
				case err != nil:
					t.Error(err)
					return
				default:
					done++
				}
				// Neighbouring blocks of the same chunk change too.
				if err := v.WriteAt(ctx, pattern(uint64(g), 0, 512), int64(1+g)*512); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	got := mustRead(t, v, 0, 512)
	if n := binary.LittleEndian.Uint64(got); n != goroutines*increments {
		t.Fatalf("counter %d, want %d", n, goroutines*increments)
	}
	mustCheck(t, s)
}
