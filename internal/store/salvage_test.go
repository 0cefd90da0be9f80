package store

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/cockroachdb/pebble/v2"
)

// TestSalvageCopiesDamage copies a volume with damaged blocks the way
// replication's copy does (ReadSalvage on the source, WriteAt plus
// MarkDamaged in one batch on the target): every good block arrives, the
// damaged ones are damaged on the target too (a medium error, never zeros),
// Check lists the same blocks on both, and rewriting mends them.
func TestSalvageCopiesDamage(t *testing.T) {
	ctx := context.Background()
	src, _ := openMem(t, Options{})
	dst, _ := openMem(t, Options{})
	sv, dv := src.Volume(4), dst.Volume(9)
	const n = 6 * ChunkSize
	mustWrite(t, sv, pattern(1, 0, n), 0)
	// Damage: block 3 of chunk 0 (flipped on disk), all of chunk 1 (a
	// value of the wrong length), blocks 0-1 of chunk 2 (marked, as a
	// partial write over damage leaves them).
	raw := rawValue(t, src, 4, 0)
	raw[3*BlockSize+7] ^= 1
	if err := src.db.Set(chunkKey(4, 0), raw, pebble.Sync); err != nil {
		t.Fatal(err)
	}
	if err := src.db.Set(chunkKey(4, 1), []byte("short"), pebble.Sync); err != nil {
		t.Fatal(err)
	}
	b := src.NewBatch()
	if err := b.MarkDamaged(sv, 2*ChunkSize, 2*BlockSize); err != nil {
		t.Fatal(err)
	}
	if err := b.Commit(); err != nil {
		t.Fatal(err)
	}
	wantBad := []DamagedBlocks{{Volume: 4, Offset: 3 * BlockSize, Length: BlockSize}, {Volume: 4, Offset: ChunkSize, Length: ChunkSize + 2*BlockSize}}

	var ce *CorruptError
	if err := sv.ReadAt(ctx, make([]byte, n), 0); !errors.As(err, &ce) || ce.Offset != 3*BlockSize || !IsDamage(err) {
		t.Fatalf("plain read: %v, want a CorruptError for damage at byte %d", err, 3*BlockSize)
	}
	if IsDamage(&CorruptError{Err: errors.New("input/output error")}) {
		t.Fatal("a read the disk failed counts as proven damage")
	}
	// Salvage from an offset inside chunk 0, and the whole volume.
	part := make([]byte, n-BlockSize)
	bad, err := sv.ReadSalvage(ctx, part, BlockSize)
	if err != nil || fmt.Sprint(offsets(bad)) != fmt.Sprint(offsets(wantBad)) {
		t.Fatalf("salvage from block 1: %v %v, want damage %v", offsets(bad), err, offsets(wantBad))
	}
	buf := make([]byte, n)
	bad, err = sv.ReadSalvage(ctx, buf, 0)
	if err != nil || fmt.Sprint(offsets(bad)) != fmt.Sprint(offsets(wantBad)) {
		t.Fatalf("salvage: %v %v, want damage %v", offsets(bad), err, offsets(wantBad))
	}
	want := pattern(1, 0, n)
	for _, d := range wantBad {
		clear(want[d.Offset : d.Offset+d.Length])
	}
	equalOrFail(t, "salvaged data", buf, want)
	equalOrFail(t, "salvaged data from block 1", part, want[BlockSize:])

	// The copy: data and damage in one batch, not synced (as a copy
	// being received is).
	b = dst.NewBatch()
	if err := b.WriteAt(dv, buf, 0); err != nil {
		t.Fatal(err)
	}
	for _, d := range bad {
		if err := b.MarkDamaged(dv, d.Offset, d.Length); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.CommitNoSync(ctx); err != nil {
		t.Fatal(err)
	}
	for _, d := range wantBad {
		for off := d.Offset; off < d.Offset+d.Length; off += BlockSize {
			if err := dv.ReadAt(ctx, make([]byte, BlockSize), off); !errors.As(err, &ce) || ce.Offset != off {
				t.Fatalf("target: read of damaged block at %d: %v, want a CorruptError there", off, err)
			}
		}
	}
	got, err := dv.ReadSalvage(ctx, make([]byte, n), 0)
	if err != nil || fmt.Sprint(offsets(got)) != fmt.Sprint(offsets(wantBad)) {
		t.Fatalf("target's damage: %v %v, want %v", offsets(got), err, offsets(wantBad))
	}
	for _, s := range []*Store{src, dst} {
		var che *CheckError
		if err := s.Check(ctx); !errors.As(err, &che) || len(che.Problems) != 0 {
			t.Fatalf("check: %v, want damaged blocks only", err)
		}
	}
	if dv.Used() != n {
		t.Errorf("target uses %d bytes, want %d", dv.Used(), n)
	}

	// Marking blocks of an unmapped chunk maps it; a copy that rewrites
	// damaged blocks (a later, good copy) mends them.
	b = dst.NewBatch()
	if err := b.MarkDamaged(dv, n+BlockSize, BlockSize); err != nil {
		t.Fatal(err)
	}
	if err := b.Commit(); err != nil {
		t.Fatal(err)
	}
	if dv.Used() != n+ChunkSize {
		t.Errorf("target uses %d bytes after marking an unmapped chunk, want %d", dv.Used(), n+ChunkSize)
	}
	if err := dv.ReadAt(ctx, make([]byte, ChunkSize), n); !errors.As(err, &ce) || ce.Offset != n+BlockSize {
		t.Fatalf("read of a marked block of a fresh chunk: %v", err)
	}
	mustWrite(t, dv, pattern(2, 0, n+ChunkSize), 0)
	equalOrFail(t, "mended target", mustRead(t, dv, 0, n+ChunkSize), pattern(2, 0, n+ChunkSize))
	mustCheck(t, dst)

	// No space: marking a fresh chunk needs one.
	dst.SetCapacity(n + ChunkSize)
	b = dst.NewBatch()
	if err := b.MarkDamaged(dst.Volume(10), 0, BlockSize); err != nil {
		t.Fatal(err)
	}
	if err := b.Commit(); !errors.Is(err, ErrNoSpace) {
		t.Fatalf("marking a fresh chunk beyond the capacity: %v, want ErrNoSpace", err)
	}
}

func offsets(ds []DamagedBlocks) [][2]int64 {
	var out [][2]int64
	for _, d := range ds {
		out = append(out, [2]int64{d.Offset, d.Length})
	}
	return out
}

// TestSalvagePebbleDetected salvages a volume whose blob file Pebble
// finds damaged: the chunks it cannot vouch for are listed whole, exactly
// those Check lists, and every other chunk reads back.
func TestSalvagePebbleDetected(t *testing.T) {
	const chunks = 64
	ctx := context.Background()
	s, fs := openMem(t, Options{})
	mustWrite(t, s.Volume(3), pattern(1, 0, chunks*ChunkSize), 0)
	s = damageBlobs(t, s, fs)
	v := s.Volume(3)
	buf := make([]byte, chunks*ChunkSize)
	bad, err := v.ReadSalvage(ctx, buf, 0)
	if err != nil {
		t.Fatalf("salvage: %v", err)
	}
	var che *CheckError
	if err := s.Check(ctx); !errors.As(err, &che) || len(che.Problems) != 0 {
		t.Fatalf("check: %v, want damaged blocks only", err)
	}
	if len(bad) == 0 || fmt.Sprint(offsets(bad)) != fmt.Sprint(offsets(che.Damaged)) {
		t.Fatalf("salvage found damage %v, check %v", offsets(bad), offsets(che.Damaged))
	}
	want := pattern(1, 0, chunks*ChunkSize)
	for _, d := range bad {
		clear(want[d.Offset : d.Offset+d.Length])
	}
	equalOrFail(t, "salvaged data", buf, want)
}
