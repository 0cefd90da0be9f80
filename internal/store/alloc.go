package store

import (
	"encoding/binary"
	"fmt"
	"io"
	"math/bits"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/cockroachdb/pebble/v2"
)

// Allocation bitmaps record which chunks of a volume are mapped. They are
// kept durably (one Pebble record per page of pageChunks chunks, updated
// only by merge operands in the same batch as the chunks they describe) and
// in memory (allocMap), where writers test them under the chunk's stripe
// instead of looking the chunk up in Pebble.
const (
	pageChunks = 4096 // chunks per bitmap page (16 MiB of volume)
	pageWords  = pageChunks / 64
	pageBytes  = pageChunks / 8
	pageShift  = 12 // log2(pageChunks)
)

// Forms of a bitmap record value (first byte).
const (
	// formList: a list of changes, uint16 big-endian each: bit 15 set means
	// "map", clear means "unmap"; bits 0-11 are the chunk within the page.
	formList byte = 0x01
	// formMasks: a composed change: set mask then clear mask (pageBytes
	// each); applied to x it gives (x &^ clear) | set.
	formMasks byte = 0x02
	// formFull: the whole page (pageBytes); replaces any older state.
	formFull byte = 0x03
)

// pageOp is a change to a bitmap page as two masks (see formMasks). A full
// value is a pageOp whose clear mask is all ones.
type pageOp struct {
	set, clear [pageWords]uint64
}

func decodePageOp(val []byte) (pageOp, error) {
	var op pageOp
	if len(val) == 0 {
		return op, fmt.Errorf("empty bitmap record: %w", ErrCorrupt)
	}
	body := val[1:]
	switch val[0] {
	case formList:
		if len(body)%2 != 0 {
			return op, fmt.Errorf("bitmap change list of %d bytes: %w", len(body), ErrCorrupt)
		}
		for i := 0; i < len(body); i += 2 {
			e := binary.BigEndian.Uint16(body[i:])
			if e&0x7000 != 0 {
				return op, fmt.Errorf("bitmap change %04x: %w", e, ErrCorrupt)
			}
			w, b := (e&0xfff)/64, uint64(1)<<((e&0xfff)%64)
			if e&0x8000 != 0 {
				op.set[w] |= b
				op.clear[w] &^= b
			} else {
				op.clear[w] |= b
				op.set[w] &^= b
			}
		}
	case formMasks:
		if len(body) != 2*pageBytes {
			return op, fmt.Errorf("bitmap masks of %d bytes: %w", len(body), ErrCorrupt)
		}
		for i := range pageWords {
			op.set[i] = binary.LittleEndian.Uint64(body[i*8:])
			op.clear[i] = binary.LittleEndian.Uint64(body[pageBytes+i*8:])
		}
	case formFull:
		if len(body) != pageBytes {
			return op, fmt.Errorf("bitmap page of %d bytes: %w", len(body), ErrCorrupt)
		}
		for i := range pageWords {
			op.set[i] = binary.LittleEndian.Uint64(body[i*8:])
			op.clear[i] = ^uint64(0)
		}
	default:
		return op, fmt.Errorf("bitmap record form %#x: %w", val[0], ErrCorrupt)
	}
	return op, nil
}

// then composes op with a newer change: applying the result equals applying
// op, then newer.
func (op *pageOp) then(newer *pageOp) {
	for i := range pageWords {
		op.set[i] = (op.set[i] &^ newer.clear[i]) | newer.set[i]
		op.clear[i] |= newer.clear[i]
	}
}

func (op *pageOp) isFull() bool {
	for _, w := range op.clear {
		if w != ^uint64(0) {
			return false
		}
	}
	return true
}

func (op *pageOp) encode(full bool) []byte {
	if full {
		b := make([]byte, 1+pageBytes)
		b[0] = formFull
		for i, w := range op.set {
			binary.LittleEndian.PutUint64(b[1+i*8:], w)
		}
		return b
	}
	b := make([]byte, 1+2*pageBytes)
	b[0] = formMasks
	for i := range pageWords {
		binary.LittleEndian.PutUint64(b[1+i*8:], op.set[i])
		binary.LittleEndian.PutUint64(b[1+pageBytes+i*8:], op.clear[i])
	}
	return b
}

// Only bitmap records are ever merged; the operator composes their changes.
const mergerName = "metro.alloc-bitmap.v1"

func newMerger() *pebble.Merger {
	return &pebble.Merger{
		Name: mergerName,
		Merge: func(key, value []byte) (pebble.ValueMerger, error) {
			if len(key) != allocKeyLen || key[0] != prefixAlloc {
				return nil, fmt.Errorf("store: merge on key %x: %w", key, ErrCorrupt)
			}
			op, err := decodePageOp(value)
			if err != nil {
				return nil, fmt.Errorf("store: bitmap %x: %w", key, err)
			}
			return &pageMerger{op: op}, nil
		},
	}
}

// pageMerger composes bitmap changes in order.
type pageMerger struct{ op pageOp }

func (m *pageMerger) MergeNewer(value []byte) error {
	newer, err := decodePageOp(value)
	if err != nil {
		return err
	}
	m.op.then(&newer)
	return nil
}

func (m *pageMerger) MergeOlder(value []byte) error {
	older, err := decodePageOp(value)
	if err != nil {
		return err
	}
	older.then(&m.op)
	m.op = older
	return nil
}

// Finish returns a full page when the oldest operand was included (the
// state before it is all unmapped), else the composed masks.
func (m *pageMerger) Finish(includesBase bool) ([]byte, io.Closer, error) {
	return m.op.encode(includesBase || m.op.isFull()), nil, nil
}

// pageEdits collects one batch's bitmap changes of one page (formList).
type pageEdits struct {
	vol, page uint64
	list      []byte
}

func (e *pageEdits) add(chunk uint64, mapped bool) {
	v := uint16(chunk % pageChunks)
	if mapped {
		v |= 0x8000
	}
	if e.list == nil {
		e.list = append(make([]byte, 0, 8), formList)
	}
	e.list = binary.BigEndian.AppendUint16(e.list, v)
}

// allocMap is the in-memory allocation bitmap of a volume. Bits are atomic
// words because chunks sharing a word are guarded by different stripes; a
// bit changes only under its chunk's stripe, after the commit that made the
// change durable.
type allocMap struct {
	// mu guards the page table; the pages' bits are atomic.
	mu struct {
		sync.RWMutex
		pages map[uint64]*allocPage
		order []uint64 // the keys of pages, ascending
	}
}

type allocPage [pageWords]atomic.Uint64

func (m *allocMap) page(p uint64) *allocPage {
	m.mu.RLock()
	pg := m.mu.pages[p]
	m.mu.RUnlock()
	return pg
}

func (m *allocMap) test(c uint64) bool {
	pg := m.page(c >> pageShift)
	if pg == nil {
		return false
	}
	i := c % pageChunks
	return pg[i/64].Load()&(1<<(i%64)) != 0
}

func (m *allocMap) set(c uint64, mapped bool) {
	p := c >> pageShift
	pg := m.page(p)
	if pg == nil {
		if !mapped {
			return
		}
		m.mu.Lock()
		if pg = m.mu.pages[p]; pg == nil {
			pg = new(allocPage)
			m.addPage(p, pg)
		}
		m.mu.Unlock()
	}
	i := c % pageChunks
	if mapped {
		pg[i/64].Or(1 << (i % 64))
	} else {
		pg[i/64].And(^uint64(1 << (i % 64)))
	}
}

// load installs page p from its durable state.
func (m *allocMap) load(p uint64, op *pageOp) (mapped int64) {
	pg := new(allocPage)
	for i, w := range op.set {
		pg[i].Store(w)
		mapped += int64(bits.OnesCount64(w))
	}
	m.mu.Lock()
	m.addPage(p, pg)
	m.mu.Unlock()
	return mapped
}

// addPage installs page p; m.mu must be held.
func (m *allocMap) addPage(p uint64, pg *allocPage) {
	if m.mu.pages == nil {
		m.mu.pages = make(map[uint64]*allocPage)
	}
	if m.mu.pages[p] == nil {
		i, _ := slices.BinarySearch(m.mu.order, p)
		m.mu.order = slices.Insert(m.mu.order, i, p)
	}
	m.mu.pages[p] = pg
}

func (m *allocMap) reset() {
	m.mu.Lock()
	m.mu.pages, m.mu.order = nil, nil
	m.mu.Unlock()
}

// nextPage returns the smallest existing page index >= p.
func (m *allocMap) nextPage(p uint64) (uint64, bool) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	i, _ := slices.BinarySearch(m.mu.order, p)
	if i == len(m.mu.order) {
		return 0, false
	}
	return m.mu.order[i], true
}

// pagesIn returns the indexes of the existing pages overlapping chunks
// c0..c1, ascending.
func (m *allocMap) pagesIn(c0, c1 uint64) []uint64 {
	m.mu.RLock()
	defer m.mu.RUnlock()
	i, _ := slices.BinarySearch(m.mu.order, c0>>pageShift)
	j, found := slices.BinarySearch(m.mu.order, c1>>pageShift)
	if found {
		j++
	}
	return slices.Clone(m.mu.order[i:j])
}

// forEachMapped calls fn for every mapped chunk in c0..c1, ascending.
func (m *allocMap) forEachMapped(c0, c1 uint64, fn func(c uint64)) {
	for _, p := range m.pagesIn(c0, c1) {
		pg := m.page(p)
		base := p << pageShift
		for w := range pageWords {
			word := pg[w].Load()
			for word != 0 {
				c := base + uint64(w*64+bits.TrailingZeros64(word))
				word &= word - 1
				if c >= c0 && c <= c1 {
					fn(c)
				}
			}
		}
	}
}

// run returns whether chunk c0 is mapped and how many consecutive chunks
// from c0 (at most limit) share that state.
func (m *allocMap) run(c0, limit uint64) (mapped bool, n uint64) {
	mapped = m.test(c0)
	var pg *allocPage
	cur := ^uint64(0)
	for n < limit {
		c := c0 + n
		if p := c >> pageShift; p != cur {
			pg, cur = m.page(p), p
		}
		if pg == nil {
			if mapped {
				return mapped, n
			}
			// Missing pages are unmapped: go to the next existing one.
			next, ok := m.nextPage(cur + 1)
			if !ok || (next<<pageShift)-c0 >= limit {
				return mapped, limit
			}
			n = (next << pageShift) - c0
			continue
		}
		i := c % pageChunks
		word := pg[i/64].Load() >> (i % 64)
		if mapped {
			word = ^word
		}
		// word's low bits: 1 where the state differs from mapped.
		if word == 0 {
			n += 64 - i%64
			continue
		}
		if k := uint64(bits.TrailingZeros64(word)); k < 64-i%64 {
			return mapped, min(n+k, limit)
		}
		n += 64 - i%64
	}
	return mapped, min(n, limit)
}

// mappedChunks counts the mapped chunks.
func (m *allocMap) mappedChunks() int64 {
	m.mu.RLock()
	defer m.mu.RUnlock()
	var n int64
	for _, pg := range m.mu.pages {
		for i := range pg {
			n += int64(bits.OnesCount64(pg[i].Load()))
		}
	}
	return n
}
