package store

import (
	"bytes"
	"context"
	"fmt"
	"math"
	"slices"

	"github.com/cockroachdb/pebble/v2"
)

// Batch collects metadata changes and data writes that commit atomically
// and durably (synced) together. A Batch is not safe for concurrent use;
// after Commit it is done.
type Batch struct {
	s   *Store
	pb  *pebble.Batch // metadata operations, then the data operations at commit
	ops []dataOp
	// res is the space reserved for the batch (Volume.WriteAtReserved),
	// or nil.
	res *Reservation
	// done is set by Commit.
	done bool
}

type opKind uint8

const (
	opWrite opKind = iota
	opUnmap
	opCompareWrite
	opDamage // MarkDamaged (salvage.go)
)

// dataOp is one data operation of a batch, applied at commit under the chunk
// locks, in the order added.
type dataOp struct {
	v      *Volume
	kind   opKind
	off    int64
	length int64
	p      []byte // opWrite, opCompareWrite: the data (length bytes), owned by the caller
	cmp    []byte // opCompareWrite: the expected current data (length bytes)
}

// NewBatch returns an empty batch.
func (s *Store) NewBatch() *Batch {
	return &Batch{s: s, pb: s.db.NewBatch()}
}

// SetMeta sets metadata key to a copy of value when the batch commits.
func (b *Batch) SetMeta(key string, value []byte) {
	// Set copies key and value into the batch; its error is only for
	// indexed batches with a broken comparer.
	_ = b.pb.Set(metaKey(key), value, nil)
}

// DeleteMeta deletes metadata key when the batch commits.
func (b *Batch) DeleteMeta(key string) {
	_ = b.pb.Delete(metaKey(key), nil)
}

// WriteAt adds a write of p at byte offset off of volume v. p is read at
// Commit and must not change until Commit returns.
func (b *Batch) WriteAt(v *Volume, p []byte, off int64) error {
	if err := checkRange(v.id, off, int64(len(p))); err != nil {
		return err
	}
	if len(p) > 0 {
		b.ops = append(b.ops, dataOp{v: v, kind: opWrite, off: off, length: int64(len(p)), p: p})
	}
	return nil
}

// CompareAndWrite adds a write of p at off that happens only if the current
// data there equals cmp (same length as p). Under the chunk locks, so it is
// atomic against every other write; if the data differs, Commit applies
// nothing and returns a *MiscompareError (matching ErrMiscompare).
func (b *Batch) CompareAndWrite(v *Volume, cmp, p []byte, off int64) error {
	if len(cmp) != len(p) {
		return fmt.Errorf("store: volume %d: compare-and-write of %d bytes with %d to compare: %w",
			v.id, len(p), len(cmp), ErrInvalid)
	}
	if err := checkRange(v.id, off, int64(len(p))); err != nil {
		return err
	}
	if len(p) > 0 {
		b.ops = append(b.ops, dataOp{v: v, kind: opCompareWrite, off: off, length: int64(len(p)), p: p, cmp: cmp})
	}
	return nil
}

// Unmap adds an unmap of [off, off+length) of volume v: whole chunks are
// deleted, partial chunks zeroed in that part.
func (b *Batch) Unmap(v *Volume, off, length int64) error {
	if err := checkRange(v.id, off, length); err != nil {
		return err
	}
	if length > 0 {
		b.ops = append(b.ops, dataOp{v: v, kind: opUnmap, off: off, length: length})
	}
	return nil
}

func checkRange(vol uint64, off, length int64) error {
	if off < 0 || length < 0 || off%BlockSize != 0 || length%BlockSize != 0 || off > math.MaxInt64-length {
		return fmt.Errorf("store: volume %d: range offset %d length %d: %w (must be non-negative multiples of %d)",
			vol, off, length, ErrInvalid, BlockSize)
	}
	return nil
}

// Commit applies the batch atomically and returns once it is durable. If a
// data write needs more space than is left, nothing is applied and the error
// wraps ErrNoSpace. After Commit the batch is done.
func (b *Batch) Commit() error { return b.commit(context.Background()) }

func (b *Batch) commit(ctx context.Context) error { return b.commitOpts(ctx, pebble.Sync) }

// commitOpts applies the batch with the given durability: pebble.Sync
// returns once it is durable, pebble.NoSync once it is visible (Sync
// makes it durable later).
func (b *Batch) commitOpts(ctx context.Context, wo *pebble.WriteOptions) error {
	if b.done {
		return errBatchDone
	}
	b.done = true
	defer b.pb.Close()
	s := b.s
	if err := s.enter(); err != nil {
		return err
	}
	defer s.leave()
	if err := s.healthy(); err != nil {
		return err
	}
	if len(b.ops) == 0 {
		if b.pb.Empty() {
			return nil
		}
		if err := b.pb.Commit(wo); err != nil {
			return s.fail(fmt.Errorf("store: commit metadata: %w", err))
		}
		s.consumed(b.pb)
		return nil
	}
	if err := ctxErr(ctx, "commit"); err != nil {
		return err
	}
	// Wait out a write stall before taking the stripes: a commit waiting
	// with them held would block every other writer of those stripes
	// (other chunks too) on a mutex, beyond any deadline of theirs.
	if err := s.ev.stall.wait(ctx); err != nil {
		return err
	}

	var locks stripeSet
	for i := range b.ops {
		op := &b.ops[i]
		c0, c1 := chunkSpan(op.off, op.length)
		locks.addRange(op.v.id, c0, c1)
	}
	s.lockStripes(&locks)
	defer s.unlockStripes(&locks)
	// The commit that held these stripes may have failed the store: what
	// it left in Pebble's memtable was never durable, so neither read it
	// (partial writes, compares) nor commit after it.
	if err := s.healthy(); err != nil {
		return err
	}

	// Work out every touched chunk's old and new state under the locks.
	p := plan{s: s}
	for i := range b.ops {
		if err := p.apply(&b.ops[i]); err != nil {
			return err
		}
	}
	deltas, total, err := p.emit(b.pb)
	if err != nil {
		return err
	}
	// A batch that stores chunk data needs free space on the filesystem
	// (even an overwrite: the WAL, then a new value until compaction);
	// deletions and metadata go on, as they free space, and so do unmaps,
	// which store at most the two chunks their ends fall in.
	if p.stores > 0 && s.space != nil && b.res == nil {
		unmaps := !slices.ContainsFunc(b.ops, func(op dataOp) bool { return op.kind != opUnmap })
		if err := s.space.admit(int64(b.pb.Len()), unmaps); err != nil {
			return err
		}
	}
	// A stall may have begun while this commit took the stripes and
	// read: wait for it here rather than inside Pebble, which ignores
	// ctx.
	if err := s.ev.stall.wait(ctx); err != nil {
		return err
	}

	// What the batch reserved beforehand is drawn on first.
	held := b.res.take()
	if extra := total - held; extra > 0 {
		if ok, used, capacity := s.reserve(extra); !ok {
			s.unreserve(held)
			return fmt.Errorf("store: write needs %d more bytes, %d of %d used: %w",
				total, used, capacity, ErrNoSpace)
		}
	} else {
		s.unreserve(min(held, -extra))
	}
	if err := ctxErr(ctx, "commit"); err != nil {
		s.unreserve(total)
		return err
	}
	if err := b.pb.Commit(wo); err != nil {
		s.unreserve(total)
		return s.fail(fmt.Errorf("store: commit: %w", err))
	}
	s.consumed(b.pb)
	for _, f := range p.flips {
		f.v.alloc.set(f.chunk, f.mapped)
		if !f.mapped && s.space != nil {
			s.space.freed(f.v.id)
		}
	}
	for _, d := range deltas {
		d.v.used.Add(d.delta)
	}
	if total < 0 {
		s.used.Add(total)
	}
	return nil
}

// consumed counts a committed batch against the free space.
func (s *Store) consumed(pb *pebble.Batch) {
	if s.space != nil {
		s.space.consumed(int64(pb.Len()))
	}
}

// unreserve gives back a reservation made for a batch that did not commit.
func (s *Store) unreserve(total int64) {
	if total > 0 {
		s.used.Add(-total)
	}
}

// chunkSpan returns the first and last chunk of a non-empty byte range.
func chunkSpan(off, length int64) (c0, c1 uint64) {
	return uint64(off) >> chunkShift, uint64(off+length-1) >> chunkShift
}

type chunkRef struct {
	vol   uint64
	chunk uint64
}

// chunkState is a touched chunk: its state before the batch and its pending
// content.
type chunkState struct {
	v       *Volume
	existed bool   // mapped before this batch
	data    []byte // pending content (ChunkSize bytes); nil: all zeros
	owned   bool   // data is the plan's own buffer, modifiable in place
	// bad flags the blocks found damaged and not rewritten since: they
	// are stored as known damaged (zeros in data, see encodeChunk).
	bad blockMask
}

// plan computes the new state of every chunk a batch touches. A chunk absent
// from chunks is unchanged by the batch so far.
type plan struct {
	s      *Store
	chunks chunkSet
	// flips lists the chunks whose mapped state the batch changes; applied
	// to the in-memory bitmaps after the commit.
	flips []flip
	// stores counts the chunk values emit stored.
	stores int
}

type flip struct {
	v      *Volume
	chunk  uint64
	mapped bool
}

func (p *plan) apply(op *dataOp) error {
	c0, c1 := chunkSpan(op.off, op.length)
	end := op.off + op.length
	// partial reports whether chunk c is only partly covered by op, and
	// which part of it is.
	partial := func(c uint64) (bool, int64, int64) {
		start := int64(c) << chunkShift
		lo, hi := max(op.off, start), min(end, start+ChunkSize)
		return hi-lo < ChunkSize, lo - start, hi - start
	}
	if op.kind == opUnmap {
		// Whole chunks: drop the content of every mapped chunk, whether
		// mapped before the batch or by an earlier operation of it.
		for _, e := range p.chunks.list {
			ref, st := e.ref, e.st
			if ref.vol == op.v.id && ref.chunk >= c0 && ref.chunk <= c1 {
				if part, _, _ := partial(ref.chunk); !part {
					st.data, st.owned, st.bad = nil, false, 0
				}
			}
		}
		op.v.alloc.forEachMapped(c0, c1, func(c uint64) {
			ref := chunkRef{op.v.id, c}
			if part, _, _ := partial(c); !part && p.chunks.get(ref) == nil {
				p.chunks.put(ref, &chunkState{v: op.v, existed: true})
			}
		})
		// Partial chunks (at most the first and the last): zero that part.
		for _, c := range [2]uint64{c0, c1} {
			part, lo, hi := partial(c)
			if !part {
				continue
			}
			st, err := p.state(op.v, c, true)
			if err != nil {
				return err
			}
			if st.data != nil {
				clear(st.own()[lo:hi])
			}
			st.bad &^= blocksIn(lo, hi)
		}
		return nil
	}
	if op.kind == opDamage {
		return p.applyDamage(op, c0, c1)
	}
	if op.kind == opCompareWrite {
		if err := p.compare(op, c0, c1); err != nil {
			return err
		}
	}
	for c := c0; c <= c1; c++ {
		part, lo, hi := partial(c)
		st, err := p.state(op.v, c, part)
		if err != nil {
			return err
		}
		src := op.p[int64(c)<<chunkShift+lo-op.off:]
		if !part {
			st.data, st.owned, st.bad = src[:ChunkSize], false, 0
			continue
		}
		copy(st.own()[lo:hi], src)
		st.bad &^= blocksIn(lo, hi)
	}
	return nil
}

// compare checks the pending content of chunks c0..c1 against op.cmp.
func (p *plan) compare(op *dataOp, c0, c1 uint64) error {
	end := op.off + op.length
	for c := c0; c <= c1; c++ {
		st, err := p.state(op.v, c, true)
		if err != nil {
			return err
		}
		start := int64(c) << chunkShift
		lo, hi := max(op.off, start), min(end, start+ChunkSize)
		if bad := st.bad & blocksIn(lo-start, hi-start); bad != 0 {
			return &CorruptError{Volume: op.v.id, Offset: start + bad.first()<<blockShift,
				Err: fmt.Errorf("chunk %d: compare-and-write: the data to compare is damaged: %w", c, ErrCorrupt)}
		}
		want := op.cmp[lo-op.off : hi-op.off]
		var have []byte
		if st.data != nil {
			have = st.data[lo-start : hi-start]
		}
		for i := range want {
			var h byte
			if have != nil {
				h = have[i]
			}
			if h != want[i] {
				return &MiscompareError{Volume: op.v.id, Offset: lo - op.off + int64(i)}
			}
		}
	}
	return nil
}

// state returns the plan's state of chunk c of v, reading the chunk's
// existence (from the allocation bitmap, exact under the chunk's stripe)
// and, if needContent, its verified content.
func (p *plan) state(v *Volume, c uint64, needContent bool) (*chunkState, error) {
	ref := chunkRef{v.id, c}
	if st := p.chunks.get(ref); st != nil {
		return st, nil
	}
	st := &chunkState{v: v, existed: v.alloc.test(c)}
	p.chunks.put(ref, st)
	if !st.existed || !needContent {
		return st, nil
	}
	data, bad, err := p.s.readForWrite(v.id, c)
	if err != nil {
		return nil, err
	}
	st.data, st.owned, st.bad = data, true, bad
	return st, nil
}

// own makes st.data a private buffer (copying or zero-filling) and returns it.
func (st *chunkState) own() []byte {
	if !st.owned {
		buf := make([]byte, ChunkSize)
		copy(buf, st.data) // nil data: stays zero
		st.data, st.owned = buf, true
	}
	return st.data
}

// volDelta is the change of one volume's used bytes.
type volDelta struct {
	v     *Volume
	delta int64
}

// emit adds the plan's chunk and bitmap changes to pb and returns the
// per-volume and total changes of used bytes.
func (p *plan) emit(pb *pebble.Batch) (deltas []volDelta, total int64, err error) {
	s := p.s
	var zero [ChunkSize]byte
	var edits []pageEdits
	editIndex := make(map[chunkRef]int) // (volume, page) -> index in edits
	change := func(v *Volume, c uint64, mapped bool) {
		p.flips = append(p.flips, flip{v, c, mapped})
		d := int64(-ChunkSize)
		if mapped {
			d = ChunkSize
		}
		total += d
		i := slices.IndexFunc(deltas, func(d volDelta) bool { return d.v == v })
		if i < 0 {
			i = len(deltas)
			deltas = append(deltas, volDelta{v: v})
		}
		deltas[i].delta += d
		page := chunkRef{v.id, c >> pageShift}
		j, ok := editIndex[page]
		if !ok {
			j = len(edits)
			edits = append(edits, pageEdits{vol: v.id, page: page.chunk})
			editIndex[page] = j
		}
		edits[j].add(c, mapped)
	}
	for _, e := range p.chunks.list {
		ref, st := e.ref, e.st
		isZero := st.bad == 0 && (st.data == nil || bytes.Equal(st.data, zero[:]))
		switch {
		case isZero && st.existed:
			if err := pb.Delete(chunkKey(ref.vol, ref.chunk), nil); err != nil {
				return nil, 0, fmt.Errorf("store: batch: %w", err)
			}
			change(st.v, ref.chunk, false)
		case isZero:
			// Not mapped and still all zeros: nothing to store.
		default:
			op := pb.SetDeferred(chunkKeyLen, chunkValueLen)
			putChunkKey(op.Key, ref.vol, ref.chunk)
			encodeChunk(s.crc, op.Value, ref.vol, ref.chunk, st.data, st.bad)
			if err := op.Finish(); err != nil {
				return nil, 0, fmt.Errorf("store: batch: %w", err)
			}
			p.stores++
			if !st.existed {
				change(st.v, ref.chunk, true)
			}
		}
	}
	for _, e := range edits {
		if err := pb.Merge(allocKey(e.vol, e.page), e.list, nil); err != nil {
			return nil, 0, fmt.Errorf("store: batch: %w", err)
		}
	}
	return deltas, total, nil
}

// chunkSet holds a plan's touched chunks in the order first touched. Most
// batches touch a handful of chunks, so lookups scan the list; a map index
// is built only for large batches. (A map per write was ~8% of the CPU of
// a 4 KiB write workload.)
type chunkSet struct {
	list  []chunkEntry
	index map[chunkRef]int
}

type chunkEntry struct {
	ref chunkRef
	st  *chunkState
}

// chunkSetScan is the size up to which lookups scan the list.
const chunkSetScan = 32

func (cs *chunkSet) get(ref chunkRef) *chunkState {
	if cs.index != nil {
		if i, ok := cs.index[ref]; ok {
			return cs.list[i].st
		}
		return nil
	}
	for i := range cs.list {
		if cs.list[i].ref == ref {
			return cs.list[i].st
		}
	}
	return nil
}

// put adds a chunk that get does not find.
func (cs *chunkSet) put(ref chunkRef, st *chunkState) {
	cs.list = append(cs.list, chunkEntry{ref, st})
	switch {
	case cs.index != nil:
		cs.index[ref] = len(cs.list) - 1
	case len(cs.list) > chunkSetScan:
		cs.index = make(map[chunkRef]int, 2*len(cs.list))
		for i, e := range cs.list {
			cs.index[e.ref] = i
		}
	}
}
