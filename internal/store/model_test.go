package store

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"math/bits"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/cockroachdb/pebble/v2"
)

// model is the dumb reference: every volume a map of chunk contents, with
// all-zero chunks absent, and the blocks known damaged (their content is
// zeros in vols: a chunk with damaged blocks is mapped).
type model struct {
	vols map[uint64]map[uint64][]byte
	bad  map[uint64]map[uint64]blockMask
	// latent holds the blocks whose stored checksum is damaged while the
	// chunk's own checksum still verifies (so they read fine): they fail
	// once the chunk's checksum is damaged too, until the chunk is
	// rewritten.
	latent   map[chunkRef]blockMask
	meta     map[string]string
	capacity uint64
}

func newModel() *model {
	return &model{vols: make(map[uint64]map[uint64][]byte), bad: make(map[uint64]map[uint64]blockMask),
		latent: make(map[chunkRef]blockMask), meta: make(map[string]string)}
}

// firstBad returns the offset of the first damaged block in [off, off+n)
// of vol, or -1.
func (m *model) firstBad(vol uint64, off int64, n int64) int64 {
	for b := off; b < off+n; b += BlockSize {
		if m.bad[vol][uint64(b)/ChunkSize]&(1<<(b%ChunkSize/BlockSize)) != 0 {
			return b
		}
	}
	return -1
}

// setChunk records the content and damaged blocks of chunk c of vol,
// dropping the chunk when it is all zeros and undamaged.
func (m *model) setChunk(vol, c uint64, data []byte, bad blockMask) {
	if m.vols[vol] == nil {
		m.vols[vol] = make(map[uint64][]byte)
	}
	if m.bad[vol] == nil {
		m.bad[vol] = make(map[uint64]blockMask)
	}
	for i := range int64(blocksPerChunk) {
		if bad&(1<<i) != 0 {
			clear(data[i*BlockSize : (i+1)*BlockSize])
		}
	}
	if bad == 0 && bytes.Equal(data, make([]byte, ChunkSize)) {
		delete(m.vols[vol], c)
		delete(m.bad[vol], c)
		return
	}
	m.vols[vol][c] = data
	if bad == 0 {
		delete(m.bad[vol], c)
	} else {
		m.bad[vol][c] = bad
	}
}

func (m *model) used() uint64 {
	var n uint64
	for _, v := range m.vols {
		n += uint64(len(v)) * ChunkSize
	}
	return n
}

func (m *model) read(vol uint64, off int64, n int) []byte {
	p := make([]byte, n)
	for i := int64(0); i < int64(n); {
		c := uint64(off+i) / ChunkSize
		in := (off + i) % ChunkSize
		k := min(int64(n)-i, ChunkSize-in)
		if data := m.vols[vol][c]; data != nil {
			copy(p[i:i+k], data[in:in+k])
		}
		i += k
	}
	return p
}

// apply applies the data ops of a batch to a copy and returns it, so that a
// failed batch can be dropped.
func (m *model) apply(ops []modelOp) *model {
	n := &model{vols: make(map[uint64]map[uint64][]byte), bad: make(map[uint64]map[uint64]blockMask),
		latent: maps.Clone(m.latent), meta: make(map[string]string), capacity: m.capacity}
	for id, v := range m.vols {
		nv := make(map[uint64][]byte, len(v))
		for c, d := range v {
			nv[c] = d
		}
		n.vols[id] = nv
	}
	for id, v := range m.bad {
		nv := make(map[uint64]blockMask, len(v))
		for c, b := range v {
			nv[c] = b
		}
		n.bad[id] = nv
	}
	for k, v := range m.meta {
		n.meta[k] = v
	}
	for _, op := range ops {
		switch op.kind {
		case mWrite, mUnmap:
			for i := int64(0); i < op.length; {
				c := uint64(op.off+i) / ChunkSize
				in := (op.off + i) % ChunkSize
				k := min(op.length-i, ChunkSize-in)
				data := make([]byte, ChunkSize)
				copy(data, n.vols[op.vol][c])
				if op.kind == mWrite {
					copy(data[in:in+k], op.data[i:i+k])
				} else {
					clear(data[in : in+k])
				}
				// Rewriting or unmapping a damaged block mends it; the
				// chunk is stored anew, with new checksums.
				n.setChunk(op.vol, c, data, n.bad[op.vol][c]&^blocksIn(in, in+k))
				delete(n.latent, chunkRef{op.vol, c})
				i += k
			}
		case mSetMeta:
			n.meta[op.key] = string(op.data)
		case mDeleteMeta:
			delete(n.meta, op.key)
		}
	}
	return n
}

type mKind int

const (
	mWrite mKind = iota
	mUnmap
	mSetMeta
	mDeleteMeta
)

type modelOp struct {
	kind        mKind
	vol         uint64
	off, length int64
	data        []byte
	key         string
}

// step is one action of a model run.
type step struct {
	batch    []modelOp // committed together
	read     bool      // read and compare a window
	vol      uint64
	off      int64
	n        int
	reopen   bool
	del      bool   // delete volume vol
	capacity uint64 // set capacity (when setCap)
	setCap   bool
	caw      *cawStep // compare-and-write
	damage   *damageStep
}

// damageStep damages the stored value of a mapped chunk of vol (the
// pick-th, in order) behind the store's back, as a failing disk would.
type damageStep struct {
	pick  int
	block int // the block damaged (kinds that damage one)
	at    int // the byte of it
	kind  damageKind
}

type damageKind int

const (
	damageBlock    damageKind = iota // flip a byte of the block's data
	damageLength                     // truncate the value
	damageFormat1                    // rewrite it, intact, in format 1
	damageChunkSum                   // flip a byte of the whole-chunk checksum
	damageBlockSum                   // flip a byte of the block's checksum
	damageKinds
)

type cawStep struct {
	flip bool // corrupt the expected data at byte flipAt (expect a miscompare)
	at   int
	data []byte
}

// modelStats counts what a model run exercised.
type modelStats struct {
	damaged      int // damage steps that made blocks unreadable
	damagedReads int // reads and compare-and-writes that met damage
	mended       int // damaged blocks rewritten or unmapped
}

// runModel executes steps against a store and the model, comparing after
// each.
func runModel(t *testing.T, steps []step) (stats modelStats) {
	s, fs := openMem(t, Options{})
	m := newModel()
	ctx := context.Background()
	for i, st := range steps {
		switch {
		case st.reopen:
			s = reopen(t, s, fs, Options{Capacity: m.capacity})
		case st.setCap:
			s.SetCapacity(st.capacity)
			m.capacity = st.capacity
		case st.del:
			if err := s.DeleteVolume(st.vol); err != nil {
				t.Fatalf("step %d: delete: %v", i, err)
			}
			delete(m.vols, st.vol)
			delete(m.bad, st.vol)
			maps.DeleteFunc(m.latent, func(r chunkRef, _ blockMask) bool { return r.vol == st.vol })
		case st.damage != nil:
			before := m.badBlocks()
			damageModel(t, s, m, st.vol, st.damage)
			if m.badBlocks() > before {
				stats.damaged++
			}
		case st.caw != nil:
			cmp := m.read(st.vol, st.off, st.n)
			if st.caw.flip {
				cmp[st.caw.at%st.n] ^= 0x40
			}
			err := s.Volume(st.vol).CompareAndWrite(ctx, cmp, st.caw.data, st.off)
			next := m.apply([]modelOp{{kind: mWrite, vol: st.vol, off: st.off, length: int64(st.n), data: st.caw.data}})
			var me *MiscompareError
			switch {
			case cawDamage(m, st) >= 0:
				var ce *CorruptError
				if !errors.As(err, &ce) || ce.Volume != st.vol || ce.Offset != cawDamage(m, st) {
					t.Fatalf("step %d: compare-and-write over damaged blocks: %v, want a CorruptError at %d", i, err, cawDamage(m, st))
				}
				stats.damagedReads++
			case st.caw.flip:
				if !errors.As(err, &me) || me.Offset != int64(st.caw.at%st.n) {
					t.Fatalf("step %d: compare-and-write with wrong data: %v", i, err)
				}
			case errors.Is(err, ErrNoSpace):
				if m.capacity == 0 || next.used() <= m.capacity || next.used() <= m.used() {
					t.Fatalf("step %d: compare-and-write: unexpected ErrNoSpace", i)
				}
			case err != nil:
				t.Fatalf("step %d: compare-and-write: %v", i, err)
			default:
				m = next
			}
		case st.read:
			got := make([]byte, st.n)
			err := s.Volume(st.vol).ReadAt(ctx, got, st.off)
			if bad := m.firstBad(st.vol, st.off, int64(st.n)); bad >= 0 {
				var ce *CorruptError
				if !errors.As(err, &ce) || ce.Volume != st.vol || ce.Offset != bad {
					t.Fatalf("step %d: read vol %d %d+%d: %v, want a CorruptError at %d", i, st.vol, st.off, st.n, err, bad)
				}
				stats.damagedReads++
				break
			}
			if err != nil {
				t.Fatalf("step %d: read: %v", i, err)
			}
			equalOrFail(t, fmt.Sprintf("step %d: read vol %d %d+%d", i, st.vol, st.off, st.n), got, m.read(st.vol, st.off, st.n))
			checkMapped(t, i, s.Volume(st.vol), m, st.off, int64(st.n))
		default:
			b := s.NewBatch()
			for _, op := range st.batch {
				var err error
				switch op.kind {
				case mWrite:
					err = b.WriteAt(s.Volume(op.vol), op.data, op.off)
				case mUnmap:
					err = b.Unmap(s.Volume(op.vol), op.off, op.length)
				case mSetMeta:
					b.SetMeta(op.key, op.data)
				case mDeleteMeta:
					b.DeleteMeta(op.key)
				}
				if err != nil {
					t.Fatalf("step %d: %v", i, err)
				}
			}
			next := m.apply(st.batch)
			err := b.Commit()
			switch {
			case errors.Is(err, ErrNoSpace):
				if m.capacity == 0 || next.used() <= m.capacity || next.used() <= m.used() {
					t.Fatalf("step %d: ErrNoSpace with %d of %d used after: %v", i, next.used(), m.capacity, err)
				}
			case err != nil:
				t.Fatalf("step %d: commit: %v", i, err)
			default:
				if m.capacity != 0 && next.used() > m.capacity && next.used() > m.used() {
					t.Fatalf("step %d: grew to %d beyond capacity %d", i, next.used(), m.capacity)
				}
				stats.mended += max(m.badBlocks()-next.badBlocks(), 0)
				m = next
			}
		}
		if used, _ := s.Usage(); used != m.used() {
			t.Fatalf("step %d: used %d, model %d", i, used, m.used())
		}
		for id, v := range m.vols {
			if got := s.Volume(id).Used(); got != uint64(len(v))*ChunkSize {
				t.Fatalf("step %d: volume %d used %d, model %d", i, id, got, len(v)*ChunkSize)
			}
		}
	}
	checkModelDamage(t, s, m)
	defer func() {
		// The damaged blocks left are still damaged after a restart.
		checkModelDamage(t, reopen(t, s, fs, Options{}), m)
	}()
	got := make(map[string]string)
	if err := s.ScanMeta("", func(k string, v []byte) error { got[k] = string(v); return nil }); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(got) != fmt.Sprint(m.meta) {
		t.Fatalf("metadata %v, model %v", got, m.meta)
	}
	return stats
}

// badBlocks counts the damaged blocks.
func (m *model) badBlocks() int {
	n := 0
	for _, v := range m.bad {
		for _, b := range v {
			n += bits.OnesCount8(uint8(b))
		}
	}
	return n
}

func checkMapped(t *testing.T, i int, v *Volume, m *model, off, n int64) {
	t.Helper()
	for pos := off; pos < off+n; {
		mapped, run, err := v.Mapped(context.Background(), pos, off+n-pos)
		if err != nil {
			t.Fatalf("step %d: mapped: %v", i, err)
		}
		if run <= 0 || run%BlockSize != 0 || pos+run > off+n {
			t.Fatalf("step %d: Mapped(%d, %d) run %d", i, pos, off+n-pos, run)
		}
		for b := pos; b < pos+run; b += BlockSize {
			if want := m.vols[v.ID()][uint64(b)/ChunkSize] != nil; want != mapped {
				t.Fatalf("step %d: Mapped(%d) says %v for block %d, model %v", i, pos, mapped, b, want)
			}
		}
		// The run is maximal: the next block (if in range) differs.
		if end := pos + run; end < off+n {
			if next := m.vols[v.ID()][uint64(end)/ChunkSize] != nil; next == mapped {
				t.Fatalf("step %d: Mapped(%d) run %d stops early", i, pos, run)
			}
		}
		pos += run
	}
}

// opSource turns bytes (random or fuzzer-made) into steps.
type opSource struct {
	b   []byte
	rng *rand.Rand
}

func (o *opSource) next(n int) int {
	if o.rng != nil {
		return o.rng.IntN(n)
	}
	if len(o.b) == 0 {
		return 0
	}
	x := int(o.b[0])
	o.b = o.b[1:]
	return x % n
}

func (o *opSource) done() bool { return o.rng == nil && len(o.b) == 0 }

// span picks a byte range in one of two areas: the start of a volume and
// around the boundary of bitmap pages 0 and 1.
func (o *opSource) span() (off, length int64) {
	base := int64(0)
	if o.next(3) == 0 {
		base = (pageChunks - 12) * ChunkSize
	}
	off = base + int64(o.next(24*8))*BlockSize
	length = int64(1+o.next(12*8)) * BlockSize
	if o.next(8) == 0 {
		length = int64(1+o.next(4)) * ChunkSize * 6
	}
	return off, length
}

func (o *opSource) data(n int64, tag uint64) []byte {
	switch o.next(4) {
	case 0:
		return make([]byte, n) // zeros: must stay thin
	case 1: // zeros with one non-zero block
		p := make([]byte, n)
		b := int64(o.next(int(n / BlockSize)))
		copy(p[b*BlockSize:], pattern(tag, b, BlockSize))
		return p
	default:
		return pattern(tag, 0, int(n))
	}
}

func (o *opSource) steps(max int) []step {
	var out []step
	for tag := uint64(1); len(out) < max && !o.done(); tag++ {
		vol := uint64(1 + o.next(3))
		switch k := o.next(22); {
		case k < 7:
			off, n := o.span()
			out = append(out, step{batch: []modelOp{{kind: mWrite, vol: vol, off: off, length: n, data: o.data(n, tag)}}})
		case k < 10:
			off, n := o.span()
			out = append(out, step{batch: []modelOp{{kind: mUnmap, vol: vol, off: off, length: n}}})
		case k < 14:
			off, n := o.span()
			out = append(out, step{read: true, vol: vol, off: off, n: int(n)})
		case k < 16: // a batch of several operations and metadata
			var b []modelOp
			for j := range 1 + o.next(4) {
				off, n := o.span()
				vol := uint64(1 + o.next(3))
				switch o.next(4) {
				case 0:
					b = append(b, modelOp{kind: mUnmap, vol: vol, off: off, length: n})
				case 1:
					b = append(b, modelOp{kind: mSetMeta, key: fmt.Sprintf("k/%d", o.next(4)), data: []byte(fmt.Sprint(tag, j))})
				case 2:
					b = append(b, modelOp{kind: mDeleteMeta, key: fmt.Sprintf("k/%d", o.next(4))})
				default:
					b = append(b, modelOp{kind: mWrite, vol: vol, off: off, length: n, data: o.data(n, tag*8+uint64(j))})
				}
			}
			out = append(out, step{batch: b})
		case k < 17 && o.next(3) > 0:
			off, n := o.span()
			out = append(out, step{vol: vol, off: off, n: int(n),
				caw: &cawStep{flip: o.next(2) == 0, at: o.next(1 << 16), data: o.data(n, tag)}})
		case k < 17:
			out = append(out, step{reopen: true})
		case k < 18:
			out = append(out, step{del: true, vol: vol})
		case k >= 20:
			out = append(out, step{vol: vol, damage: &damageStep{pick: o.next(1 << 16), block: o.next(blocksPerChunk),
				at: o.next(BlockSize), kind: damageKind(o.next(int(damageKinds)))}})
		default:
			c := uint64(0)
			if o.next(2) == 0 {
				c = uint64(8+o.next(40)) * ChunkSize
			}
			out = append(out, step{setCap: true, capacity: c})
		}
	}
	return out
}

func TestAgainstModel(t *testing.T) {
	seeds := 40
	switch {
	case testing.Short():
		seeds = 10
	case raceEnabled:
		seeds = 15
	}
	var total modelStats
	for seed := range seeds {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			src := &opSource{rng: rand.New(rand.NewPCG(uint64(seed), 42))}
			st := runModel(t, src.steps(150))
			total.damaged += st.damaged
			total.damagedReads += st.damagedReads
			total.mended += st.mended
		})
	}
	t.Logf("%d seeds: %d chunks damaged, %d reads met damage, %d damaged blocks mended", seeds, total.damaged, total.damagedReads, total.mended)
	if total.damaged < seeds/2 || total.damagedReads < seeds/2 || total.mended < seeds/2 {
		t.Fatalf("too little damage exercised: %+v over %d seeds", total, seeds)
	}
}

// FuzzModel runs fuzzer-chosen operation sequences against the model.
func FuzzModel(f *testing.F) {
	f.Add([]byte{0, 1, 2, 3, 4, 5, 6, 7, 8, 9})
	f.Add([]byte{3, 0, 0, 5, 5, 3, 9, 0, 0, 5, 5, 9, 1, 0, 0, 5, 5, 11})
	f.Add(binary.BigEndian.AppendUint64(nil, 0x0123456789abcdef))
	rng := rand.New(rand.NewPCG(7, 7))
	for range 4 {
		b := make([]byte, 64)
		for i := range b {
			b[i] = byte(rng.IntN(256))
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) > 512 {
			b = b[:512]
		}
		runModel(t, (&opSource{b: b}).steps(200))
	})
}

// cawDamage returns where a compare-and-write step meets damage (the
// store compares chunk by chunk, a chunk's damage before its data), or -1
// if it does not (a miscompare in an earlier chunk comes first).
func cawDamage(m *model, st step) int64 {
	cmp := m.read(st.vol, st.off, st.n)
	if st.caw.flip {
		cmp[st.caw.at%st.n] ^= 0x40
	}
	have := m.read(st.vol, st.off, st.n)
	end := st.off + int64(st.n)
	for start := st.off &^ (ChunkSize - 1); start < end; start += ChunkSize {
		lo, hi := max(st.off, start), min(end, start+ChunkSize)
		if bad := m.firstBad(st.vol, lo, hi-lo); bad >= 0 {
			return bad
		}
		if !bytes.Equal(cmp[lo-st.off:hi-st.off], have[lo-st.off:hi-st.off]) {
			return -1
		}
	}
	return -1
}

// damageModel applies a damage step to the store's raw value and to the
// model. Damage adds one to a byte (never undone by later damage).
func damageModel(t *testing.T, s *Store, m *model, vol uint64, d *damageStep) {
	t.Helper()
	chunks := slices.Sorted(maps.Keys(m.vols[vol]))
	if len(chunks) == 0 {
		return
	}
	c := chunks[d.pick%len(chunks)]
	ref := chunkRef{vol, c}
	val := rawValue(t, s, vol, c)
	bad := m.bad[vol][c]
	format1 := len(val) == chunkValueLenV1
	if !format1 && len(val) != chunkValueLen {
		return // damaged throughout already
	}
	var hit blockMask // the block whose data or checksum is damaged
	switch d.kind {
	case damageBlock:
		val[d.block*BlockSize+d.at]++
		hit = 1 << d.block
	case damageLength:
		val = val[:d.at]
		bad = allBlocks
	case damageFormat1:
		if bad != 0 || format1 {
			return
		}
		val = append(val[:ChunkSize], binary.LittleEndian.AppendUint32(nil, chunkSum(s.crc, vol, c, val[:ChunkSize]))...)
		delete(m.latent, ref)
	case damageChunkSum:
		val[ChunkSize+d.at%crcLen]++
	case damageBlockSum:
		if format1 {
			return
		}
		val[ChunkSize+crcLen+d.block*crcLen+d.at%crcLen]++
		hit = 1 << d.block
	}
	switch {
	case len(val) != chunkValueLen && len(val) != chunkValueLenV1:
	case binary.LittleEndian.Uint32(val[ChunkSize:]) == chunkSum(s.crc, vol, c, val[:ChunkSize]):
		// The chunk verifies as a whole: a damaged block checksum goes
		// unnoticed for now.
		if bad != 0 {
			t.Fatalf("model: chunk %d of volume %d verifies but has damaged blocks %08b", c, vol, bad)
		}
		if d.kind == damageBlockSum {
			m.latent[ref] |= hit
		}
	case format1:
		bad = allBlocks
	default:
		bad |= hit | m.latent[ref]
		delete(m.latent, ref)
	}
	if err := s.db.Set(chunkKey(vol, c), val, pebble.Sync); err != nil {
		t.Fatal(err)
	}
	data := append([]byte{}, m.vols[vol][c]...)
	m.setChunk(vol, c, data, bad)
}

// checkModelDamage runs Check, which must list exactly the model's damaged
// blocks and find nothing else wrong.
func checkModelDamage(t *testing.T, s *Store, m *model) {
	t.Helper()
	var want []string
	for _, vol := range slices.Sorted(maps.Keys(m.bad)) {
		for _, c := range slices.Sorted(maps.Keys(m.bad[vol])) {
			for i := range int64(blocksPerChunk) {
				if m.bad[vol][c]&(1<<i) != 0 {
					want = append(want, fmt.Sprintf("%d:%d", vol, int64(c)*ChunkSize+i*BlockSize))
				}
			}
		}
	}
	err := s.Check(context.Background())
	if len(want) == 0 {
		if err != nil {
			t.Fatalf("check: %v", err)
		}
		return
	}
	var ce *CheckError
	if !errors.As(err, &ce) || len(ce.Problems) != 0 || ce.Omitted != 0 {
		t.Fatalf("check: %v, want damaged blocks only", err)
	}
	var got []string
	for _, d := range ce.Damaged {
		for off := d.Offset; off < d.Offset+d.Length; off += BlockSize {
			got = append(got, fmt.Sprintf("%d:%d", d.Volume, off))
		}
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("check lists damaged blocks %v, the model %v", got, want)
	}
}
