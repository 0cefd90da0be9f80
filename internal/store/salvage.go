package store

import (
	"context"
	"errors"
	"fmt"

	"github.com/cockroachdb/pebble/v2"
)

// Copying damage. A copy of a volume (replication's baseline or resync)
// that meets damaged blocks must neither stop nor hide them: it reads
// what is good with ReadSalvage, which says which blocks are damaged, and
// the receiving store records those blocks as damaged (Batch.MarkDamaged,
// the representation a partial write gives the damaged blocks it does not
// cover), so they read there as a medium error too until a host rewrites
// them.

// IsDamage reports whether err is a *CorruptError for proven damage (a
// checksum failed, the store's or Pebble's) rather than a read the disk
// failed, which proves nothing.
func IsDamage(err error) bool {
	var ce *CorruptError
	return errors.As(err, &ce) && errors.Is(ce.Err, ErrCorrupt)
}

// ReadSalvage fills p from byte offset off (both multiples of BlockSize)
// like ReadAt, except that blocks proven damaged (they fail their
// checksum, or Pebble found the file holding them damaged) read as zeros
// and are listed in damaged, as runs of adjacent blocks in ascending
// order, instead of failing the read. A read the disk failed proves
// nothing (the data may come back) and fails the read with a
// *CorruptError, as ReadAt does. The read is one snapshot of the store.
func (v *Volume) ReadSalvage(ctx context.Context, p []byte, off int64) (damaged []DamagedBlocks, err error) {
	if err := checkRange(v.id, off, int64(len(p))); err != nil {
		return nil, err
	}
	if len(p) == 0 {
		return nil, nil
	}
	s := v.s
	if err := s.enter(); err != nil {
		return nil, err
	}
	defer s.leave()
	snap := s.db.NewSnapshot()
	defer snap.Close()
	end := off + int64(len(p))
	c0, c1 := chunkSpan(off, int64(len(p)))
	for c := c0; c <= c1; c++ {
		if (c-c0)%256 == 255 {
			if err := ctxErr(ctx, "salvage read"); err != nil {
				return nil, err
			}
		}
		start := int64(c) << chunkShift
		lo, hi := max(off, start), min(end, start+ChunkSize)
		dst := p[lo-off : hi-off]
		var bad blockMask
		var why error
		found, err := get(snap, chunkKey(v.id, c), func(val []byte) error {
			var data []byte
			data, bad, why = verifyChunk(s.crc, v.id, c, val)
			if data == nil {
				clear(dst)
			} else {
				copy(dst, data[lo-start:hi-start])
			}
			return nil
		})
		switch {
		case err != nil && pebble.IsCorruptionError(err):
			bad, why = allBlocks, markCorruption(err)
		case err != nil:
			return nil, &CorruptError{Volume: v.id, Offset: lo, Err: fmt.Errorf("chunk %d: salvage read: %w", c, err)}
		case !found:
			clear(dst)
		}
		bad &= blocksIn(lo-start, hi-start)
		for i := range int64(blocksPerChunk) {
			if bad&(1<<i) == 0 {
				continue
			}
			b := start + i<<blockShift
			clear(p[b-off : b-off+BlockSize])
			if n := len(damaged); n > 0 && damaged[n-1].Offset+damaged[n-1].Length == b {
				damaged[n-1].Length += BlockSize
				continue
			}
			damaged = append(damaged, DamagedBlocks{Volume: v.id, Offset: b, Length: BlockSize, Err: why})
		}
	}
	return damaged, nil
}

// MarkDamaged adds to the batch that the blocks [off, off+length) of v
// become known damaged: they read as a medium error (a *CorruptError)
// until they are rewritten or unmapped, while the other blocks of their
// chunks keep their data. Operations added after it may rewrite them.
// Marking blocks of an unmapped chunk maps it (it needs space).
func (b *Batch) MarkDamaged(v *Volume, off, length int64) error {
	if err := checkRange(v.id, off, length); err != nil {
		return err
	}
	if length > 0 {
		b.ops = append(b.ops, dataOp{v: v, kind: opDamage, off: off, length: length})
	}
	return nil
}

// CommitNoSync is Commit without waiting for durability: the changes are
// visible to reads on return and durable after the next Store.Sync (or a
// later synced commit). A crash may lose them, never tear them.
func (b *Batch) CommitNoSync(ctx context.Context) error { return b.commitOpts(ctx, pebble.NoSync) }

// applyDamage plans an opDamage: the covered blocks become zeros flagged
// damaged.
func (p *plan) applyDamage(op *dataOp, c0, c1 uint64) error {
	end := op.off + op.length
	for c := c0; c <= c1; c++ {
		start := int64(c) << chunkShift
		lo, hi := max(op.off, start)-start, min(end, start+ChunkSize)-start
		whole := hi-lo == ChunkSize
		st, err := p.state(op.v, c, !whole)
		if err != nil {
			return err
		}
		if whole {
			st.data, st.owned = nil, false
		}
		clear(st.own()[lo:hi])
		st.bad |= blocksIn(lo, hi)
	}
	return nil
}
