package store

import (
	"context"
	"fmt"
	"sync/atomic"
)

// Reservation is space set aside for one write before it is made
// (Volume.Reserve), so that a caller learns that the write would fail for
// lack of space before it does anything else: replication reserves at
// the sequencer before it mirrors a write to the peer, so that the peer
// never holds a write the sequencer then cannot store. The write draws on
// the reservation (Volume.WriteAtReserved); Release gives back what it
// did not use. A Reservation is for one writer.
type Reservation struct {
	s *Store
	// held is the capacity reserved and not yet drawn on, in bytes.
	held atomic.Int64
}

// Reserve sets aside the space a write of length bytes at off (multiples
// of BlockSize) needs: the chunks of the range that are not mapped now,
// against the capacity, and room on the filesystem for all the chunks it
// stores (the free-space floor, see space.go). It fails with ErrNoSpace
// when the write would. The estimate is exact while no other write or
// unmap changes the range's chunks meanwhile (callers hold the range
// lock; two writes to different blocks of one unmapped chunk each reserve
// it, and the one that does not map it gives its share back); a write
// that needs more than was reserved reserves the rest at commit, which
// may then fail with ErrNoSpace after all. Release the reservation when
// the write is done or abandoned.
func (v *Volume) Reserve(off, length int64) (*Reservation, error) {
	if err := checkRange(v.id, off, length); err != nil {
		return nil, err
	}
	s := v.s
	r := &Reservation{s: s}
	if length == 0 {
		return r, nil
	}
	if err := s.enter(); err != nil {
		return nil, err
	}
	defer s.leave()
	if err := s.healthy(); err != nil {
		return nil, err
	}
	c0, c1 := chunkSpan(off, length)
	var fresh int64
	for c := c0; c <= c1; {
		mapped, n := v.alloc.run(c, c1-c+1)
		if !mapped {
			fresh += int64(n)
		}
		c += n
	}
	if s.space != nil {
		if err := s.space.admit(int64(c1-c0+1)*(chunkKeyLen+chunkValueLen), false); err != nil {
			return nil, err
		}
	}
	if need := fresh * ChunkSize; need > 0 {
		if ok, used, capacity := s.reserve(need); !ok {
			return nil, fmt.Errorf("store: write needs %d more bytes, %d of %d used: %w", need, used, capacity, ErrNoSpace)
		}
		r.held.Store(need)
	}
	return r, nil
}

// Release gives back what the write did not draw on. It may be called
// more than once, and on nil.
func (r *Reservation) Release() {
	if r != nil {
		r.s.unreserve(r.held.Swap(0))
	}
}

// take hands the reserved bytes to a commit.
func (r *Reservation) take() int64 {
	if r == nil {
		return 0
	}
	return r.held.Swap(0)
}

// WriteAtReserved is WriteAt drawing on res, made by Reserve for this
// write: the filesystem's room was checked then, and the capacity the
// write needs was set aside.
func (v *Volume) WriteAtReserved(ctx context.Context, p []byte, off int64, res *Reservation) error {
	b := v.s.NewBatch()
	b.res = res
	if err := b.WriteAt(v, p, off); err != nil {
		b.discard()
		return err
	}
	return b.commit(ctx)
}
