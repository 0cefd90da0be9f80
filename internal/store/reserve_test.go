package store

import (
	"context"
	"errors"
	"testing"
)

// TestReserveBeforeWrite checks the reservation a replicated write takes
// before it is mirrored: it fails exactly when the write would, holds the
// space against other writers until the write draws on it, and leaves the
// used bytes exact whatever the write turns out to need.
func TestReserveBeforeWrite(t *testing.T) {
	ctx := context.Background()
	s, _ := openMem(t, Options{Capacity: 4 * ChunkSize})
	v := s.Volume(1)
	mustWrite(t, v, pattern(1, 0, 2*ChunkSize), 0)
	used := func() int64 { u, _ := s.Usage(); return int64(u) }

	// Two fresh chunks fit, three do not; an overwrite needs none.
	if _, err := v.Reserve(2*ChunkSize, 3*ChunkSize); !errors.Is(err, ErrNoSpace) {
		t.Fatalf("reserve 3 fresh chunks with 2 free: %v, want ErrNoSpace", err)
	}
	if used() != 2*ChunkSize {
		t.Fatalf("a refused reservation left %d bytes used", used())
	}
	over, err := v.Reserve(512, ChunkSize)
	if err != nil || used() != 2*ChunkSize {
		t.Fatalf("reserve an overwrite: %v, %d used", err, used())
	}
	// A reservation holds its space against other writers.
	r, err := v.Reserve(2*ChunkSize+512, ChunkSize) // chunks 2 and 3, both fresh
	if err != nil || used() != 4*ChunkSize {
		t.Fatalf("reserve 2 fresh chunks: %v, %d used", err, used())
	}
	if err := v.WriteAt(ctx, pattern(2, 6*ChunkSize, 512), 6*ChunkSize); !errors.Is(err, ErrNoSpace) {
		t.Fatalf("another write while the space is reserved: %v, want ErrNoSpace", err)
	}
	if err := v.WriteAtReserved(ctx, pattern(3, 2*ChunkSize+512, ChunkSize), 2*ChunkSize+512, r); err != nil {
		t.Fatalf("write drawing on its reservation: %v", err)
	}
	r.Release()
	if err := v.WriteAtReserved(ctx, pattern(3, 512, ChunkSize), 512, over); err != nil {
		t.Fatalf("overwrite drawing on its reservation: %v", err)
	}
	over.Release()
	if used() != 4*ChunkSize || v.Used() != 4*ChunkSize {
		t.Fatalf("after the reserved writes: %d used (volume %d), want %d", used(), v.Used(), 4*ChunkSize)
	}

	// A reserved write that stores less than reserved (zeros) gives the
	// rest back; so does an abandoned reservation.
	if err := v.Unmap(ctx, 2*ChunkSize, 2*ChunkSize); err != nil {
		t.Fatal(err)
	}
	r, err = v.Reserve(2*ChunkSize, 2*ChunkSize)
	if err != nil {
		t.Fatal(err)
	}
	if err := v.WriteAtReserved(ctx, make([]byte, 2*ChunkSize), 2*ChunkSize, r); err != nil {
		t.Fatal(err)
	}
	r.Release()
	if used() != 2*ChunkSize {
		t.Fatalf("after a reserved write of zeros: %d used, want %d", used(), 2*ChunkSize)
	}
	r, err = v.Reserve(2*ChunkSize, 2*ChunkSize)
	if err != nil || used() != 4*ChunkSize {
		t.Fatalf("reserve again: %v, %d used", err, used())
	}
	r.Release()
	r.Release()
	if used() != 2*ChunkSize {
		t.Fatalf("after releasing an unused reservation (twice): %d used, want %d", used(), 2*ChunkSize)
	}
	// A reserved write that needs more than reserved (the range was
	// unmapped meanwhile) reserves the rest at commit.
	r, err = v.Reserve(0, ChunkSize)
	if err != nil || used() != 2*ChunkSize {
		t.Fatalf("reserve an overwrite: %v, %d used", err, used())
	}
	if err := v.Unmap(ctx, 0, ChunkSize); err != nil {
		t.Fatal(err)
	}
	if err := v.WriteAtReserved(ctx, pattern(4, 0, ChunkSize), 0, r); err != nil {
		t.Fatal(err)
	}
	r.Release()
	if used() != 2*ChunkSize {
		t.Fatalf("after a write that needed more than reserved: %d used, want %d", used(), 2*ChunkSize)
	}
	mustCheck(t, s)
}
