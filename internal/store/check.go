package store

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"slices"

	"github.com/cockroachdb/pebble/v2"
)

// maxCheckProblems bounds the problems Check reports.
const maxCheckProblems = 20

// Check verifies the whole store (like fsck): every chunk's key and
// checksum; every volume's durable allocation bitmap against the chunks
// actually stored; the in-memory bitmaps and used counters against both.
// It pauses writers only while it takes a snapshot. Problems are joined into
// one error wrapping ErrCorrupt.
func (s *Store) Check(ctx context.Context) error {
	if err := s.enter(); err != nil {
		return err
	}
	defer s.leave()

	// With every stripe held no batch is between its commit and its
	// in-memory update, so the snapshot and the memory state agree.
	var all stripeSet
	all.fill()
	s.lockStripes(&all)
	snap := s.db.NewSnapshot()
	mem := s.memoryState()
	memTotal := s.used.Load()
	s.unlockStripes(&all)
	defer snap.Close()

	var problems []error
	problem := func(err error) {
		if len(problems) < maxCheckProblems {
			problems = append(problems, err)
		}
	}
	stored, err := s.checkChunks(ctx, snap, problem)
	if err != nil {
		return err
	}
	durable, err := readBitmaps(snap)
	if err != nil {
		return err
	}
	compareBitmaps("stored chunks", stored, "durable bitmap", durable, problem)
	memBits := make(map[chunkRef]*[pageWords]uint64)
	var sum int64
	for id, vs := range mem {
		for p, words := range vs.pages {
			memBits[chunkRef{id, p}] = words
		}
		if vs.used != vs.counted {
			problem(fmt.Errorf("volume %d: %d bytes used in memory, bitmap has %d: %w",
				id, vs.used, vs.counted, ErrCorrupt))
		}
		sum += vs.used
	}
	compareBitmaps("durable bitmap", durable, "memory bitmap", memBits, problem)
	if sum != memTotal {
		problem(fmt.Errorf("array: %d bytes used, volumes add up to %d: %w", memTotal, sum, ErrCorrupt))
	}
	if len(problems) > 0 {
		return fmt.Errorf("store: check %s: %w", s.dir, errors.Join(problems...))
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

// checkChunks verifies every chunk in snap and returns which chunks exist,
// as bitmap pages keyed by (volume, page).
func (s *Store) checkChunks(ctx context.Context, snap *pebble.Snapshot, problem func(error)) (map[chunkRef]*[pageWords]uint64, error) {
	it, err := snap.NewIterWithContext(ctx, &pebble.IterOptions{
		LowerBound: []byte{prefixChunk},
		UpperBound: []byte{prefixChunk + 1},
	})
	if err != nil {
		return nil, fmt.Errorf("store: check: %w", err)
	}
	stored := make(map[chunkRef]*[pageWords]uint64)
	n := 0
	for valid := it.First(); valid; valid = it.Next() {
		if n++; n%1024 == 0 {
			if err := ctxErr(ctx, "check"); err != nil {
				return nil, errors.Join(err, it.Close())
			}
		}
		vol, c, ok := decodeChunkKey(it.Key())
		if !ok {
			problem(fmt.Errorf("bad data key %x: %w", it.Key(), ErrCorrupt))
			continue
		}
		ref := chunkRef{vol, c >> pageShift}
		if stored[ref] == nil {
			stored[ref] = new([pageWords]uint64)
		}
		i := c % pageChunks
		stored[ref][i/64] |= 1 << (i % 64)
		val, err := it.ValueAndErr()
		if err != nil {
			return nil, errors.Join(fmt.Errorf("store: check: %w", err), it.Close())
		}
		if _, err := verifyChunk(s.crc, vol, c, val); err != nil {
			problem(err)
		}
	}
	if err := it.Close(); err != nil {
		return nil, fmt.Errorf("store: check: %w", err)
	}
	return stored, nil
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
