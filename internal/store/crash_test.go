package store

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
)

// The crash test runs concurrent writers against a store on Pebble's
// crashable in-memory filesystem, takes a "power loss" image at a random
// moment (only synced data is certain to survive, a random part of the rest
// may), reopens the image and checks:
//   - every writer's region and metadata key equal the state after some
//     prefix of its operations that includes every operation acknowledged
//     before the crash (so no acknowledged write is lost, nothing is torn,
//     and a batch's data and metadata survive together or not at all);
//   - allocation bitmaps and used bytes match a recount of the chunks.
//
// METRO_STORE_CRASH_ITERS sets the number of iterations (default 60, 20
// with -race, 10 with -short); e.g. METRO_STORE_CRASH_ITERS=2000 for a long
// run.

const (
	crashWriters     = 6
	crashRegionChunk = 24 // chunks per writer region
)

// crashOp is one writer operation.
type crashOp struct {
	unmap       bool
	off, length int64  // within the writer's region (bytes)
	data        []byte // write data
	meta        string // metadata value set in the same batch ("" = none)
	failed      bool   // returned ErrNoSpace: changed nothing
}

// crashWriter is one writer's history.
type crashWriter struct {
	id     int
	vol    uint64
	base   int64 // region start (bytes)
	mu     sync.Mutex
	ops    []crashOp // started operations, in order
	acked  int       // ops[:acked] have returned
	failed error     // unexpected error
}

func (w *crashWriter) counts() (started, acked int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.ops), w.acked
}

// state returns the region contents and metadata value after ops[:k].
func (w *crashWriter) state(k int) ([]byte, string) {
	img := make([]byte, crashRegionChunk*ChunkSize)
	meta := ""
	for _, op := range w.ops[:k] {
		if op.failed {
			continue
		}
		if op.unmap {
			clear(img[op.off : op.off+op.length])
		} else {
			copy(img[op.off:], op.data)
		}
		if op.meta != "" {
			meta = op.meta
		}
	}
	return img, meta
}

// crashClock counts acknowledged operations across writers and signals when
// the crash threshold is reached.
type crashClock struct {
	total     atomic.Int64
	threshold int64
	once      sync.Once
	reached   chan struct{}
}

func (c *crashClock) tick() {
	if c.total.Add(1) >= c.threshold {
		c.once.Do(func() { close(c.reached) })
	}
}

func (w *crashWriter) run(s *Store, rng *rand.Rand, stop *atomic.Bool, clock *crashClock) {
	ctx := context.Background()
	v := s.Volume(w.vol)
	for n := 0; !stop.Load(); n++ {
		op := crashOp{}
		c0 := rng.IntN(crashRegionChunk)
		op.off = int64(c0)*ChunkSize + int64(rng.IntN(8))*BlockSize
		maxLen := int64(crashRegionChunk*ChunkSize) - op.off
		op.length = min(maxLen, int64(1+rng.IntN(3*8))*BlockSize)
		if rng.IntN(10) == 0 {
			op.length = min(maxLen, int64(1+rng.IntN(12))*ChunkSize)
		}
		switch k := rng.IntN(10); {
		case k < 2:
			op.unmap = true
		case k < 3:
			op.data = make([]byte, op.length) // zeros
		default:
			op.data = pattern(uint64(w.id)<<32|uint64(n), op.off, int(op.length))
		}
		if rng.IntN(4) == 0 {
			op.meta = fmt.Sprintf("w%d-op%d", w.id, n)
		}
		w.mu.Lock()
		w.ops = append(w.ops, op)
		w.mu.Unlock()

		var err error
		switch {
		case op.meta == "" && op.unmap:
			err = v.Unmap(ctx, w.base+op.off, op.length)
		case op.meta == "":
			err = v.WriteAt(ctx, op.data, w.base+op.off)
		default: // data and metadata in one batch
			b := s.NewBatch()
			if op.unmap {
				err = b.Unmap(v, w.base+op.off, op.length)
			} else {
				err = b.WriteAt(v, op.data, w.base+op.off)
			}
			b.SetMeta(fmt.Sprintf("writer/%d", w.id), []byte(op.meta))
			if err == nil {
				err = b.Commit()
			}
		}
		w.mu.Lock()
		switch {
		case errors.Is(err, ErrNoSpace):
			w.ops[len(w.ops)-1].failed = true
		case errors.Is(err, ErrClosed):
			// The store closed under the last operation: it may or may not
			// have committed; it was not acknowledged.
			w.mu.Unlock()
			return
		case err != nil:
			w.failed = err
			w.mu.Unlock()
			return
		}
		w.acked++
		w.mu.Unlock()
		clock.tick()
	}
}

func crashIterations(t *testing.T) int {
	if s := os.Getenv("METRO_STORE_CRASH_ITERS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil {
			t.Fatalf("METRO_STORE_CRASH_ITERS: %v", err)
		}
		return n
	}
	switch {
	case testing.Short():
		return 10
	case raceEnabled:
		return 20
	}
	return 60
}

func TestCrashRecovery(t *testing.T) {
	for i := range crashIterations(t) {
		t.Run(strconv.Itoa(i), func(t *testing.T) { crashIteration(t, uint64(i)) })
	}
}

// smallMemtables makes Pebble flush and compact often, so crashes also hit
// flushes, compactions and WAL rotation, not only WAL appends.
func smallMemtables(o *pebble.Options) {
	o.MemTableSize = 256 << 10
	o.L0CompactionThreshold = 2
	o.LBaseMaxBytes = 1 << 20
	for i := range o.Levels {
		o.Levels[i].BlockSize = 4096
	}
}

func crashIteration(t *testing.T, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, 0xc4a5))
	fs := vfs.NewCrashableMem()
	opts := Options{FS: fs, CacheSize: 4 << 20, tune: smallMemtables}
	if rng.IntN(3) == 0 {
		// Less than the writers' regions together: some writes get
		// ErrNoSpace.
		opts.Capacity = uint64(crashWriters*crashRegionChunk*ChunkSize) * 2 / 3
	}
	s, err := Open("db", opts)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = s.Close() }()

	writers := make([]*crashWriter, crashWriters)
	for i := range writers {
		w := &crashWriter{id: i, vol: uint64(i/2 + 1)}
		if i%2 == 1 {
			// Straddle bitmap pages 0 and 1.
			w.base = (pageChunks - crashRegionChunk/2) * ChunkSize
		}
		writers[i] = w
	}
	var stop atomic.Bool
	clock := &crashClock{threshold: int64(10 + rng.IntN(300)), reached: make(chan struct{})}
	var wg sync.WaitGroup
	for i, w := range writers {
		wrng := rand.New(rand.NewPCG(seed, uint64(i)))
		wg.Add(1)
		go func() {
			defer wg.Done()
			w.run(s, wrng, &stop, clock)
		}()
	}

	// Crash once enough writes were acknowledged: record what was
	// acknowledged before the image and what had started after it.
	writersDone := make(chan struct{})
	go func() {
		wg.Wait()
		close(writersDone)
	}()
	select {
	case <-clock.reached:
	case <-writersDone: // all failed; reported below
	}
	ackedBefore := make([]int, crashWriters)
	for i, w := range writers {
		_, ackedBefore[i] = w.counts()
	}
	unsynced := []int{0, 30, 70, 100}[rng.IntN(4)]
	image := fs.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: unsynced, RNG: rng})
	startedAfter := make([]int, crashWriters)
	for i, w := range writers {
		startedAfter[i], _ = w.counts()
	}
	stop.Store(true)
	<-writersDone
	for _, w := range writers {
		if w.failed != nil {
			t.Fatalf("writer %d: %v", w.id, w.failed)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	// Power back on.
	opts.FS = image
	s2, err := Open("db", opts)
	if err != nil {
		t.Fatalf("reopen after crash (unsynced %d%%): %v", unsynced, err)
	}
	defer func() { _ = s2.Close() }()
	verifyCrashImage(t, s2, writers, ackedBefore, startedAfter, 0)
	if err := s2.Check(context.Background()); err != nil {
		t.Fatalf("check after crash: %v", err)
	}
	// The recovered store keeps working and recovers again.
	s2.SetCapacity(0)
	mustWrite(t, s2.Volume(99), pattern(99, 0, ChunkSize), 0)
	mustCheck(t, s2)
	opts.Capacity = 0
	s3 := reopen(t, s2, image, opts)
	verifyCrashImage(t, s3, writers, ackedBefore, startedAfter, ChunkSize)
	mustCheck(t, s3)
}

// verifyCrashImage checks that each writer's region and metadata equal the
// state after ops[:k] for some k between what was acknowledged before the
// crash and what had started by its end, and that used bytes add up.
func verifyCrashImage(t *testing.T, s *Store, writers []*crashWriter, ackedBefore, startedAfter []int, extraUsed uint64) {
	t.Helper()
	ctx := context.Background()
	wantUsed := extraUsed
	for i, w := range writers {
		got := make([]byte, crashRegionChunk*ChunkSize)
		if err := s.Volume(w.vol).ReadAt(ctx, got, w.base); err != nil {
			t.Fatalf("writer %d: read after crash: %v", i, err)
		}
		meta, _, err := s.GetMeta(fmt.Sprintf("writer/%d", w.id))
		if err != nil {
			t.Fatal(err)
		}
		match := -1
		for k := ackedBefore[i]; k <= startedAfter[i]; k++ {
			img, m := w.state(k)
			if bytes.Equal(img, got) && m == string(meta) {
				match = k
				break
			}
		}
		if match < 0 {
			t.Fatalf("writer %d: state after crash matches no prefix of its operations in [%d, %d] (of %d)%s",
				i, ackedBefore[i], startedAfter[i], len(w.ops), describeMismatch(w, got, ackedBefore[i]))
		}
		img, _ := w.state(match)
		for c := 0; c < crashRegionChunk; c++ {
			if !bytes.Equal(img[c*ChunkSize:(c+1)*ChunkSize], make([]byte, ChunkSize)) {
				wantUsed += ChunkSize
			}
		}
	}
	if used, _ := s.Usage(); used != wantUsed {
		t.Fatalf("used %d after crash, regions hold %d", used, wantUsed)
	}
}

func describeMismatch(w *crashWriter, got []byte, acked int) string {
	img, _ := w.state(acked)
	for c := 0; c < crashRegionChunk; c++ {
		a, b := got[c*ChunkSize:(c+1)*ChunkSize], img[c*ChunkSize:(c+1)*ChunkSize]
		if !bytes.Equal(a, b) {
			return fmt.Sprintf("; first differing chunk vs acknowledged state: %d", c)
		}
	}
	return "; data equals the acknowledged state (metadata differs)"
}
