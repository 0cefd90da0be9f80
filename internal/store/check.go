package store

import (
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/cockroachdb/pebble/v2"
)

// maxCheckProblems bounds the problems other than damaged blocks that
// Check keeps (it counts the rest); damaged blocks are all listed.
const maxCheckProblems = 20

// CheckError is what Check found wrong. It matches ErrCorrupt.
type CheckError struct {
	Dir string
	// Damaged lists every block found damaged or unreadable, as runs of
	// adjacent blocks in key order.
	Damaged []DamagedBlocks
	// Problems are the other inconsistencies found (allocation bitmaps,
	// used counters, keys), at most maxCheckProblems; Omitted counts the
	// rest.
	Problems []error
	Omitted  int
}

// DamagedBlocks is a run of damaged or unreadable blocks of a volume.
type DamagedBlocks struct {
	Volume         uint64
	Offset, Length int64 // bytes, multiples of BlockSize
	Err            error // why (the first block's reason)
}

// maxListed bounds the damaged runs Error spells out.
const maxListed = 20

func (e *CheckError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "store: check %s:", e.Dir)
	if len(e.Damaged) > 0 {
		var blocks int64
		for _, d := range e.Damaged {
			blocks += d.Length / BlockSize
		}
		fmt.Fprintf(&b, " %d damaged blocks in %d runs:", blocks, len(e.Damaged))
		for i, d := range e.Damaged[:min(len(e.Damaged), maxListed)] {
			if i > 0 {
				b.WriteString(";")
			}
			fmt.Fprintf(&b, " volume %d LBA %d-%d (%v)", d.Volume, d.Offset/BlockSize, (d.Offset+d.Length)/BlockSize-1, d.Err)
		}
		if len(e.Damaged) > maxListed {
			fmt.Fprintf(&b, "; %d more runs", len(e.Damaged)-maxListed)
		}
		b.WriteString(".")
	}
	for _, p := range e.Problems {
		fmt.Fprintf(&b, " %v.", p)
	}
	if e.Omitted > 0 {
		fmt.Fprintf(&b, " %d more problems.", e.Omitted)
	}
	return b.String()
}

// Is makes errors.Is(err, ErrCorrupt) true.
func (e *CheckError) Is(target error) bool { return target == ErrCorrupt }

func (e *CheckError) problem(err error) {
	if len(e.Problems) < maxCheckProblems {
		e.Problems = append(e.Problems, err)
	} else {
		e.Omitted++
	}
}

// damage records blocks bad of chunk c of vol, merging with the last run.
func (e *CheckError) damage(vol, c uint64, bad blockMask, why error) {
	for i := int64(0); i < blocksPerChunk; i++ {
		if bad&(1<<i) == 0 {
			continue
		}
		off := int64(c)<<chunkShift + i<<blockShift
		if n := len(e.Damaged); n > 0 {
			if last := &e.Damaged[n-1]; last.Volume == vol && last.Offset+last.Length == off {
				last.Length += BlockSize
				continue
			}
		}
		e.Damaged = append(e.Damaged, DamagedBlocks{Volume: vol, Offset: off, Length: BlockSize, Err: why})
	}
}

// Check verifies the whole store (like fsck): every block's checksum and
// every chunk's key; every volume's durable allocation bitmap against the
// chunks actually stored; the in-memory bitmaps and used counters against
// both. It pauses writers only while it takes a snapshot. It returns nil,
// a *CheckError listing every damaged block and the other problems, or
// another error if it could not run (closed store, ctx done).
func (s *Store) Check(ctx context.Context) error {
	return s.CheckProgress(ctx, nil)
}

// CheckProgress is Check calling progress (when not nil) now and then
// with the bytes of chunks checked so far and the bytes the store held
// when the check began (the count may pass the total when the check
// meets chunks written as it began).
func (s *Store) CheckProgress(ctx context.Context, progress func(checked, total int64)) error {
	if err := s.enter(); err != nil {
		return err
	}
	defer s.leave()

	// With every stripe held no batch is between its commit and its
	// in-memory update, so the snapshot and the memory state agree.
	var all stripeSet
	all.fill()
	s.lockStripes(&all)
	if err := s.healthy(); err != nil { // a commit failed while Check waited
		s.unlockStripes(&all)
		return err
	}
	snap := s.db.NewSnapshot()
	mem := s.memoryState()
	memTotal := s.used.Load()
	s.unlockStripes(&all)
	defer snap.Close()

	ce := &CheckError{Dir: s.dir}
	durable, err := readBitmaps(snap)
	if err != nil {
		ce.problem(err)
	}
	var tick func(int)
	if progress != nil {
		tick = func(chunks int) { progress(int64(chunks)*ChunkSize, memTotal) }
	}
	stored, err := s.checkChunks(ctx, snap, durable, ce, tick)
	if err != nil {
		return err
	}
	if durable != nil {
		compareBitmaps("stored chunks", stored, "durable bitmap", durable, ce.problem)
	}
	memBits := make(map[chunkRef]*[pageWords]uint64)
	var sum int64
	for id, vs := range mem {
		for p, words := range vs.pages {
			memBits[chunkRef{id, p}] = words
		}
		if vs.used != vs.counted {
			ce.problem(fmt.Errorf("volume %d: %d bytes used in memory, bitmap has %d: %w",
				id, vs.used, vs.counted, ErrCorrupt))
		}
		sum += vs.used
	}
	if durable != nil {
		compareBitmaps("durable bitmap", durable, "memory bitmap", memBits, ce.problem)
	}
	if sum != memTotal {
		ce.problem(fmt.Errorf("array: %d bytes used, volumes add up to %d: %w", memTotal, sum, ErrCorrupt))
	}
	if len(ce.Damaged) > 0 || len(ce.Problems) > 0 {
		return ce
	}
	return nil
}

// volumeState is a copy of a volume's in-memory allocation state.
type volumeState struct {
	pages   map[uint64]*[pageWords]uint64
	used    int64 // the used counter
	counted int64 // mapped bytes in the bitmap
}

func (s *Store) memoryState() map[uint64]volumeState {
	s.mu.Lock()
	vols := slices.Collect(maps.Values(s.mu.vols))
	s.mu.Unlock()
	out := make(map[uint64]volumeState, len(vols))
	for _, v := range vols {
		vs := volumeState{pages: make(map[uint64]*[pageWords]uint64), used: v.used.Load()}
		v.alloc.mu.RLock()
		for p, pg := range v.alloc.mu.pages {
			var words [pageWords]uint64
			for i := range pg {
				words[i] = pg[i].Load()
			}
			vs.pages[p] = &words
		}
		v.alloc.mu.RUnlock()
		vs.counted = v.alloc.mappedChunks() * ChunkSize
		out[v.id] = vs
	}
	return out
}

// compareBitmaps reports differences between two sets of bitmap pages keyed
// by (volume, page); a missing page is all unmapped.
func compareBitmaps(aName string, a map[chunkRef]*[pageWords]uint64, bName string,
	b map[chunkRef]*[pageWords]uint64, problem func(error)) {
	var empty [pageWords]uint64
	keys := slices.Collect(maps.Keys(a))
	for k := range b {
		if a[k] == nil {
			keys = append(keys, k)
		}
	}
	for _, k := range keys {
		wa, wb := a[k], b[k]
		if wa == nil {
			wa = &empty
		}
		if wb == nil {
			wb = &empty
		}
		for i := range pageWords {
			if d := wa[i] ^ wb[i]; d != 0 {
				c := k.chunk<<pageShift + uint64(i*64)
				problem(fmt.Errorf("volume %d chunks %d-%d: %s %016x, %s %016x (bit i = chunk %d+i): %w",
					k.vol, c, c+63, aName, wa[i], bName, wb[i], c, ErrCorrupt))
			}
		}
	}
}

// checkChunks verifies every chunk in snap, recording damage in ce, and
// returns which chunks exist, as bitmap pages keyed by (volume, page). A
// value Pebble cannot read marks its chunk damaged and the scan goes on
// after it. If Pebble cannot even position on the next key (a damaged
// block of keys), every chunk that durable maps from there to the next key
// it can reach is recorded as damaged.
func (s *Store) checkChunks(ctx context.Context, snap *pebble.Snapshot, durable map[chunkRef]*[pageWords]uint64,
	ce *CheckError, tick func(chunks int)) (map[chunkRef]*[pageWords]uint64, error) {
	// After an error the scan resumes on a new iterator: a seek on the
	// failed one may find nothing.
	var it *pebble.Iterator
	defer func() {
		if it != nil {
			_ = it.Close() // its error is the iteration's, handled below
		}
	}()
	from := func(lower []byte) (bool, error) {
		if it != nil {
			_ = it.Close()
		}
		var err error
		it, err = snap.NewIterWithContext(ctx, &pebble.IterOptions{LowerBound: lower, UpperBound: []byte{prefixChunk + 1}})
		if err != nil {
			return false, fmt.Errorf("store: check: %w", err)
		}
		return it.First(), nil
	}
	valid, err := from([]byte{prefixChunk})
	if err != nil {
		return nil, err
	}
	stored := make(map[chunkRef]*[pageWords]uint64)
	mark := func(vol, c uint64) {
		ref := chunkRef{vol, c >> pageShift}
		if stored[ref] == nil {
			stored[ref] = new([pageWords]uint64)
		}
		i := c % pageChunks
		stored[ref][i/64] |= 1 << (i % 64)
	}
	mapped := sortedPages(durable)
	var at chunkRef // the last chunk handled
	started := false
	n := 0
	for {
		if n++; n%1024 == 0 {
			if err := ctxErr(ctx, "check"); err != nil {
				return nil, err
			}
			if tick != nil {
				tick(n)
			}
		}
		if !valid {
			err := it.Error()
			if err == nil {
				break
			}
			if cerr := ctxErr(ctx, "check"); cerr != nil {
				return nil, cerr
			}
			next, ok := mapped.next(at, started)
			if !ok {
				ce.problem(fmt.Errorf("data keys after volume %d chunk %d cannot be read: %w", at.vol, at.chunk, markCorruption(err)))
				break
			}
			mark(next.vol, next.chunk)
			ce.damage(next.vol, next.chunk, allBlocks, markCorruption(err))
			at, started = next, true
			if valid, err = from(append(chunkKey(next.vol, next.chunk), 0)); err != nil {
				return nil, err
			}
			continue
		}
		key := it.Key()
		vol, c, ok := decodeChunkKey(key)
		if !ok {
			ce.problem(fmt.Errorf("bad data key %x: %w", key, ErrCorrupt))
			valid = it.Next()
			continue
		}
		at, started = chunkRef{vol, c}, true
		mark(vol, c)
		val, err := it.ValueAndErr()
		if err != nil {
			// The failed fetch ends the iterator.
			ce.damage(vol, c, allBlocks, markCorruption(err))
			if valid, err = from(append(chunkKey(vol, c), 0)); err != nil {
				return nil, err
			}
			continue
		}
		if _, bad, why := verifyChunk(s.crc, vol, c, val); bad != 0 {
			ce.damage(vol, c, bad, why)
		}
		valid = it.Next()
	}
	return stored, nil
}

// pageList is the durable bitmaps' pages in key order, to find the next
// mapped chunk.
type pageList struct {
	refs  []chunkRef // (volume, page), ascending
	pages map[chunkRef]*[pageWords]uint64
}

func sortedPages(pages map[chunkRef]*[pageWords]uint64) pageList {
	refs := slices.Collect(maps.Keys(pages))
	slices.SortFunc(refs, func(a, b chunkRef) int {
		if a.vol != b.vol {
			return cmp.Compare(a.vol, b.vol)
		}
		return cmp.Compare(a.chunk, b.chunk)
	})
	return pageList{refs: refs, pages: pages}
}

// next returns the first mapped chunk after at (from the start if
// !started).
func (l pageList) next(at chunkRef, started bool) (chunkRef, bool) {
	from := at
	if started {
		if from.chunk++; from.chunk == 0 {
			from.vol++
		}
	}
	for _, ref := range l.refs {
		if ref.vol < from.vol || (ref.vol == from.vol && ref.chunk < from.chunk>>pageShift) {
			continue
		}
		words := l.pages[ref]
		base := ref.chunk << pageShift
		for i := uint64(0); i < pageChunks; i++ {
			c := base + i
			if ref.vol == from.vol && c < from.chunk {
				continue
			}
			if words[i/64]&(1<<(i%64)) != 0 {
				return chunkRef{ref.vol, c}, true
			}
		}
	}
	return chunkRef{}, false
}

// readBitmaps reads the durable allocation bitmaps in snap.
func readBitmaps(snap *pebble.Snapshot) (map[chunkRef]*[pageWords]uint64, error) {
	it, err := snap.NewIter(&pebble.IterOptions{
		LowerBound: []byte{prefixAlloc},
		UpperBound: []byte{prefixAlloc + 1},
	})
	if err != nil {
		return nil, fmt.Errorf("store: check: %w", err)
	}
	out := make(map[chunkRef]*[pageWords]uint64)
	for valid := it.First(); valid; valid = it.Next() {
		k := it.Key()
		if len(k) != allocKeyLen {
			return nil, errors.Join(fmt.Errorf("store: check: bitmap key %x: %w", k, ErrCorrupt), it.Close())
		}
		val, err := it.ValueAndErr()
		if err != nil {
			return nil, errors.Join(fmt.Errorf("store: check: %w", err), it.Close())
		}
		op, err := decodePageOp(val)
		if err != nil {
			return nil, errors.Join(fmt.Errorf("store: check: bitmap %x: %w", k, err), it.Close())
		}
		words := op.set
		out[chunkRef{binary.BigEndian.Uint64(k[1:9]), binary.BigEndian.Uint64(k[9:17])}] = &words
	}
	if err := it.Close(); err != nil {
		return nil, fmt.Errorf("store: check: %w", err)
	}
	return out, nil
}
