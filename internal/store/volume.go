package store

import (
	"context"
	"fmt"

	"github.com/cockroachdb/pebble/v2"
)

// WriteAt writes p at byte offset off (both multiples of BlockSize) and
// returns once the data is durable. All-zero chunks are stored unmapped. A
// write that needs new chunks beyond the capacity fails with ErrNoSpace and
// changes nothing.
func (v *Volume) WriteAt(ctx context.Context, p []byte, off int64) error {
	b := v.s.NewBatch()
	if err := b.WriteAt(v, p, off); err != nil {
		b.discard()
		return err
	}
	return b.commit(ctx)
}

// WriteAtNoSync is WriteAt without waiting for durability: the data is
// visible to reads on return and durable after the next Store.Sync (or a
// later synced write). A crash may lose it, never tear it.
func (v *Volume) WriteAtNoSync(ctx context.Context, p []byte, off int64) error {
	b := v.s.NewBatch()
	if err := b.WriteAt(v, p, off); err != nil {
		b.discard()
		return err
	}
	return b.commitOpts(ctx, pebble.NoSync)
}

// CompareAndWrite writes p at off if the current data there equals cmp,
// atomically against every other write of the volume; durable on return. On
// a mismatch nothing is written and the error is a *MiscompareError.
func (v *Volume) CompareAndWrite(ctx context.Context, cmp, p []byte, off int64) error {
	b := v.s.NewBatch()
	if err := b.CompareAndWrite(v, cmp, p, off); err != nil {
		b.discard()
		return err
	}
	return b.commit(ctx)
}

// MiscompareError reports a CompareAndWrite whose data differed. It matches
// ErrMiscompare with errors.Is.
type MiscompareError struct {
	Volume uint64
	// Offset is the position of the first differing byte, from the start of
	// the compared range.
	Offset int64
}

func (e *MiscompareError) Error() string {
	return fmt.Sprintf("store: volume %d: compare-and-write: data differs at byte %d", e.Volume, e.Offset)
}

// Is makes errors.Is(err, ErrMiscompare) true.
func (e *MiscompareError) Is(target error) bool { return target == ErrMiscompare }

// Unmap deallocates [off, off+length): whole chunks are deleted, the
// covered part of partial chunks is zeroed (and the chunk deleted if it is
// then all zeros). Durable on return.
func (v *Volume) Unmap(ctx context.Context, off, length int64) error {
	b := v.s.NewBatch()
	if err := b.Unmap(v, off, length); err != nil {
		b.discard()
		return err
	}
	return b.commit(ctx)
}

// discard releases a batch that will not be committed.
func (b *Batch) discard() {
	if !b.done {
		b.done = true
		_ = b.pb.Close()
	}
}

// ReadAt fills p from byte offset off (both multiples of BlockSize).
// Unmapped chunks read as zeros. A block that is damaged or that the disk
// cannot read fails the read with a *CorruptError naming the first such
// block (it matches ErrCorrupt).
func (v *Volume) ReadAt(ctx context.Context, p []byte, off int64) error {
	if err := checkRange(v.id, off, int64(len(p))); err != nil {
		return err
	}
	if len(p) == 0 {
		return nil
	}
	s := v.s
	if err := s.enter(); err != nil {
		return err
	}
	defer s.leave()
	c0, c1 := chunkSpan(off, int64(len(p)))
	if c0 == c1 {
		return v.readChunk(p, off, c0)
	}
	it, err := s.db.NewIterWithContext(ctx, &pebble.IterOptions{
		LowerBound: chunkKey(v.id, c0),
		UpperBound: chunkKey(v.id, c1+1),
	})
	if err != nil {
		return fmt.Errorf("store: volume %d: read: %w", v.id, err)
	}
	err = v.readIter(ctx, it, p, off)
	if cerr := it.Close(); err == nil && cerr != nil {
		err = &CorruptError{Volume: v.id, Offset: off, Err: fmt.Errorf("read: %w", markCorruption(cerr))}
	}
	return err
}

// readChunk fills p (within chunk c) from one point lookup.
func (v *Volume) readChunk(p []byte, off int64, c uint64) error {
	start := int64(c) << chunkShift
	var bad blockMask
	var why error
	found, err := get(v.s.db, chunkKey(v.id, c), func(val []byte) error {
		var data []byte
		data, bad, why = verifyChunk(v.s.crc, v.id, c, val)
		copy(p, data[min(off-start, int64(len(data))):])
		return nil
	})
	if err != nil {
		return &CorruptError{Volume: v.id, Offset: off, Err: fmt.Errorf("chunk %d: read: %w", c, markCorruption(err))}
	}
	if !found {
		clear(p)
		return nil
	}
	return v.damaged(c, bad, off-start, off-start+int64(len(p)), why)
}

// damaged returns a *CorruptError if any block of bytes [lo, hi) of chunk c
// is in bad, naming the first of them.
func (v *Volume) damaged(c uint64, bad blockMask, lo, hi int64, why error) error {
	if bad &= blocksIn(lo, hi); bad == 0 {
		return nil
	}
	return &CorruptError{Volume: v.id, Offset: int64(c)<<chunkShift + bad.first()<<blockShift, Err: why}
}

// readIter fills p from an iterator over the chunks it covers.
func (v *Volume) readIter(ctx context.Context, it *pebble.Iterator, p []byte, off int64) error {
	end := off + int64(len(p))
	pos := off // p is filled below pos
	n := 0
	for valid := it.First(); valid; valid = it.Next() {
		if n++; n%256 == 0 {
			if err := ctxErr(ctx, "read"); err != nil {
				return err
			}
		}
		vol, c, ok := decodeChunkKey(it.Key())
		if !ok || vol != v.id {
			return &CorruptError{Volume: v.id, Offset: pos,
				Err: fmt.Errorf("bad data key %x: %w", it.Key(), ErrCorrupt)}
		}
		start := int64(c) << chunkShift
		lo, hi := max(off, start), min(end, start+ChunkSize)
		val, err := it.ValueAndErr()
		if err != nil {
			return &CorruptError{Volume: v.id, Offset: lo, Err: fmt.Errorf("chunk %d: read: %w", c, markCorruption(err))}
		}
		data, bad, why := verifyChunk(v.s.crc, v.id, c, val)
		if err := v.damaged(c, bad, lo-start, hi-start, why); err != nil {
			return err
		}
		clear(p[pos-off : lo-off]) // unmapped gap before this chunk
		copy(p[lo-off:hi-off], data[lo-start:hi-start])
		pos = hi
	}
	if err := it.Error(); err != nil {
		if cerr := ctxErr(ctx, "read"); cerr != nil {
			return cerr
		}
		// The iterator could not position itself on the next key: the
		// damage is at or after pos.
		return &CorruptError{Volume: v.id, Offset: pos, Err: fmt.Errorf("read: %w", markCorruption(err))}
	}
	clear(p[pos-off:])
	return nil
}

// Mapped reports whether the block at off is mapped and how many bytes from
// off (a multiple of BlockSize, at most length) share that state. Mapping
// has chunk granularity: a chunk is mapped when any of its blocks holds
// non-zero data. The answer comes from the in-memory allocation bitmap.
func (v *Volume) Mapped(ctx context.Context, off, length int64) (mapped bool, run int64, err error) {
	if err := checkRange(v.id, off, length); err != nil {
		return false, 0, err
	}
	if length == 0 {
		return false, 0, fmt.Errorf("store: volume %d: mapped: empty range: %w", v.id, ErrInvalid)
	}
	if err := ctxErr(ctx, "mapped"); err != nil {
		return false, 0, err
	}
	if err := v.s.enter(); err != nil {
		return false, 0, err
	}
	defer v.s.leave()
	c0, c1 := chunkSpan(off, length)
	mapped, n := v.alloc.run(c0, c1-c0+1)
	// (c0+n) chunks end at most at 2^63 bytes: fits in uint64.
	runEnd := min(uint64(off+length), (c0+n)<<chunkShift)
	return mapped, int64(runEnd - uint64(off)), nil
}
