package store

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/cockroachdb/pebble/v2/vfs/errorfs"
)

func TestUnwrittenReadsZeros(t *testing.T) {
	s, _ := openMem(t, Options{})
	v := s.Volume(1)
	for _, tc := range []struct {
		off int64
		n   int
	}{{0, 512}, {512, 4096}, {4096, 4096}, {1 << 40, 65536}, {7 * 512, 3 * 4096}} {
		got := mustRead(t, v, tc.off, tc.n)
		equalOrFail(t, "unwritten", got, make([]byte, tc.n))
	}
	if v.Used() != 0 {
		t.Fatalf("used %d, want 0", v.Used())
	}
	mustCheck(t, s)
}

func TestWriteReadAlignments(t *testing.T) {
	s, _ := openMem(t, Options{})
	v := s.Volume(7)
	// A reference image of the first 64 KiB.
	const size = 64 << 10
	ref := make([]byte, size)
	cases := []struct {
		off int64
		n   int
	}{
		{0, 512},           // head of chunk 0
		{512 * 3, 512 * 2}, // middle of chunk 0
		{4096 - 512, 1024}, // straddles chunks 0 and 1
		{4096 * 2, 4096},   // exactly chunk 2
		{4096*3 + 512, 4096 * 3},
		{4096 * 8, 4096 * 4},
		{size - 512, 512},
		{1024, 4096*5 + 512},
	}
	for i, tc := range cases {
		p := pattern(uint64(i+1), tc.off, tc.n)
		mustWrite(t, v, p, tc.off)
		copy(ref[tc.off:], p)
		// Whole image, and a few odd windows.
		equalOrFail(t, "image", mustRead(t, v, 0, size), ref)
		for _, w := range [][2]int64{{512, 512}, {4096 - 512, 1024}, {3 * 512, 4096 * 3}, {tc.off, int64(tc.n)}} {
			equalOrFail(t, "window", mustRead(t, v, w[0], int(w[1])), ref[w[0]:w[0]+w[1]])
		}
	}
	// Used counts chunks touched by non-zero data.
	var want uint64
	for c := 0; c < size/ChunkSize; c++ {
		for _, b := range ref[c*ChunkSize : (c+1)*ChunkSize] {
			if b != 0 {
				want += ChunkSize
				break
			}
		}
	}
	if v.Used() != want {
		t.Fatalf("used %d, want %d", v.Used(), want)
	}
	if used, _ := s.Usage(); used != want {
		t.Fatalf("array used %d, want %d", used, want)
	}
	mustCheck(t, s)
}

func TestZeroWritesAreThin(t *testing.T) {
	s, _ := openMem(t, Options{})
	v := s.Volume(1)
	ctx := context.Background()
	mustWrite(t, v, make([]byte, 1<<20), 0)
	if v.Used() != 0 {
		t.Fatalf("zeros written: used %d, want 0", v.Used())
	}
	mustWrite(t, v, pattern(1, 0, 8192), 0)
	if v.Used() != 8192 {
		t.Fatalf("used %d, want 8192", v.Used())
	}
	// Zero the first chunk entirely, the second partly.
	mustWrite(t, v, make([]byte, 4096+512), 0)
	if v.Used() != 4096 {
		t.Fatalf("after zeroing chunk 0: used %d, want 4096", v.Used())
	}
	// Zero the rest of chunk 1 in two pieces: it must become unmapped.
	mustWrite(t, v, make([]byte, 1024), 4096+512)
	mustWrite(t, v, make([]byte, 4096-1536), 4096+1536)
	if v.Used() != 0 {
		t.Fatalf("after zeroing chunk 1: used %d, want 0", v.Used())
	}
	mapped, run, err := v.Mapped(ctx, 0, 1<<20)
	if err != nil || mapped || run != 1<<20 {
		t.Fatalf("Mapped = %v %d %v, want false %d", mapped, run, err, 1<<20)
	}
	mustCheck(t, s)
}

func TestUnmap(t *testing.T) {
	s, _ := openMem(t, Options{})
	v := s.Volume(3)
	ctx := context.Background()
	data := pattern(9, 0, 16*ChunkSize)
	mustWrite(t, v, data, 0)
	ref := append([]byte{}, data...)
	steps := []struct {
		off, n int64
		used   uint64
	}{
		{4096, 8192, 14 * ChunkSize},         // whole chunks 1, 2
		{512, 512, 14 * ChunkSize},           // part of chunk 0
		{3*4096 + 512, 4096, 14 * ChunkSize}, // parts of chunks 3 and 4
		{0, 4096, 13 * ChunkSize},            // rest of chunk 0
		{3 * 4096, 512, 12 * ChunkSize},      // chunk 3 becomes all zero
		{15 * 4096, 1 << 30, 11 * ChunkSize}, // far beyond the data
		{0, 1 << 40, 0},                      // everything
	}
	for _, st := range steps {
		if err := v.Unmap(ctx, st.off, st.n); err != nil {
			t.Fatalf("unmap %d+%d: %v", st.off, st.n, err)
		}
		end := min(st.off+st.n, int64(len(ref)))
		if st.off < end {
			clear(ref[st.off:end])
		}
		equalOrFail(t, "after unmap", mustRead(t, v, 0, len(ref)), ref)
		if v.Used() != st.used {
			t.Fatalf("unmap %d+%d: used %d, want %d", st.off, st.n, v.Used(), st.used)
		}
		mustCheck(t, s)
	}
}

func TestMapped(t *testing.T) {
	s, _ := openMem(t, Options{})
	v := s.Volume(1)
	ctx := context.Background()
	// Map chunks 2-4 and 10; chunk 5000 (another bitmap page).
	mustWrite(t, v, pattern(1, 2*ChunkSize, 3*ChunkSize), 2*ChunkSize)
	mustWrite(t, v, pattern(1, 10*ChunkSize, 512), 10*ChunkSize+1024)
	mustWrite(t, v, pattern(1, 0, 512), 5000*ChunkSize)
	cases := []struct {
		off, length int64
		mapped      bool
		run         int64
	}{
		{0, 1 << 20, false, 2 * ChunkSize},
		{512, 1 << 20, false, 2*ChunkSize - 512},
		{512, 1024, false, 1024},
		{2 * ChunkSize, 1 << 20, true, 3 * ChunkSize},
		{2*ChunkSize + 1536, 1 << 20, true, 3*ChunkSize - 1536},
		{3 * ChunkSize, 512, true, 512},
		{5 * ChunkSize, 1 << 20, false, 5 * ChunkSize},
		{10 * ChunkSize, 1 << 20, true, ChunkSize},
		{10*ChunkSize + 3584, 1 << 20, true, 512},
		{11 * ChunkSize, 1 << 30, false, (5000 - 11) * ChunkSize},
		{11 * ChunkSize, 100 * ChunkSize, false, 100 * ChunkSize},
		{5000 * ChunkSize, 1 << 30, true, ChunkSize},
		{5001 * ChunkSize, 1 << 40, false, 1 << 40},
	}
	for _, tc := range cases {
		mapped, run, err := v.Mapped(ctx, tc.off, tc.length)
		if err != nil {
			t.Fatal(err)
		}
		if mapped != tc.mapped || run != tc.run {
			t.Errorf("Mapped(%d, %d) = %v %d, want %v %d", tc.off, tc.length, mapped, run, tc.mapped, tc.run)
		}
	}
	if _, _, err := v.Mapped(ctx, 0, 0); !errors.Is(err, ErrInvalid) {
		t.Errorf("Mapped of empty range: %v, want ErrInvalid", err)
	}
}

func TestInvalidArguments(t *testing.T) {
	s, _ := openMem(t, Options{})
	v := s.Volume(1)
	ctx := context.Background()
	for _, err := range []error{
		v.WriteAt(ctx, make([]byte, 100), 0),
		v.WriteAt(ctx, make([]byte, 512), 100),
		v.WriteAt(ctx, make([]byte, 512), -512),
		v.ReadAt(ctx, make([]byte, 513), 0),
		v.ReadAt(ctx, make([]byte, 512), 1),
		v.Unmap(ctx, 0, 100),
		v.Unmap(ctx, 512, -512),
		v.Unmap(ctx, 1<<62, 1<<62),
	} {
		if !errors.Is(err, ErrInvalid) {
			t.Errorf("got %v, want ErrInvalid", err)
		}
	}
	// Empty operations succeed and do nothing.
	if err := v.WriteAt(ctx, nil, 512); err != nil {
		t.Error(err)
	}
	if err := v.ReadAt(ctx, nil, 512); err != nil {
		t.Error(err)
	}
	if err := v.Unmap(ctx, 512, 0); err != nil {
		t.Error(err)
	}
}

func TestCapacity(t *testing.T) {
	s, _ := openMem(t, Options{Capacity: 8 * ChunkSize})
	v := s.Volume(1)
	w := s.Volume(2)
	ctx := context.Background()
	mustWrite(t, v, pattern(1, 0, 6*ChunkSize), 0)
	// Needs 3 new chunks, only 2 left: fails and changes nothing, including
	// the chunk it would have overwritten.
	err := w.WriteAt(ctx, pattern(2, 0, 3*ChunkSize), 0)
	if !errors.Is(err, ErrNoSpace) {
		t.Fatalf("write beyond capacity: %v, want ErrNoSpace", err)
	}
	err = v.WriteAt(ctx, pattern(3, 5*ChunkSize, 4*ChunkSize), 5*ChunkSize)
	if !errors.Is(err, ErrNoSpace) {
		t.Fatalf("overlapping write beyond capacity: %v, want ErrNoSpace", err)
	}
	equalOrFail(t, "after failed write", mustRead(t, v, 0, 10*ChunkSize),
		append(pattern(1, 0, 6*ChunkSize), make([]byte, 4*ChunkSize)...))
	if used, capacity := s.Usage(); used != 6*ChunkSize || capacity != 8*ChunkSize {
		t.Fatalf("usage %d/%d", used, capacity)
	}
	// Fill exactly.
	mustWrite(t, w, pattern(4, 0, 2*ChunkSize), 0)
	if err := w.WriteAt(ctx, pattern(5, 0, 512), 2*ChunkSize); !errors.Is(err, ErrNoSpace) {
		t.Fatalf("write when full: %v, want ErrNoSpace", err)
	}
	// Overwrites of mapped chunks, partial or whole, still succeed; reads
	// work.
	mustWrite(t, v, pattern(6, 512, 512), 512)
	mustWrite(t, v, pattern(7, 0, 6*ChunkSize), 0)
	equalOrFail(t, "overwrite when full", mustRead(t, v, 0, 6*ChunkSize), pattern(7, 0, 6*ChunkSize))
	// A write that frees as much as it allocates fits.
	p := append(make([]byte, ChunkSize), pattern(8, 6*ChunkSize, ChunkSize)...)
	mustWrite(t, v, p, 5*ChunkSize)
	// Unmap frees space so a new write succeeds.
	if err := v.Unmap(ctx, 0, 2*ChunkSize); err != nil {
		t.Fatal(err)
	}
	mustWrite(t, w, pattern(9, 2*ChunkSize, 2*ChunkSize), 2*ChunkSize)
	if used, _ := s.Usage(); used != 8*ChunkSize {
		t.Fatalf("used %d, want %d", used, 8*ChunkSize)
	}
	// Raising the capacity allows more; 0 is unlimited.
	s.SetCapacity(0)
	mustWrite(t, w, pattern(10, 0, 64*ChunkSize), 1<<20)
	s.SetCapacity(1)
	if err := w.WriteAt(ctx, pattern(11, 0, 512), 1<<30); !errors.Is(err, ErrNoSpace) {
		t.Fatalf("write with capacity below used: %v, want ErrNoSpace", err)
	}
	mustCheck(t, s)
}

func TestConcurrentCapacityNeverExceeded(t *testing.T) {
	const limit = 64 * ChunkSize
	s, _ := openMem(t, Options{Capacity: limit})
	ctx := context.Background()
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			v := s.Volume(uint64(g))
			for i := range 20 {
				err := v.WriteAt(ctx, pattern(uint64(g), int64(i), ChunkSize), int64(i)*ChunkSize)
				if err != nil && !errors.Is(err, ErrNoSpace) {
					t.Error(err)
				}
			}
		}()
	}
	wg.Wait()
	if used, _ := s.Usage(); used != limit {
		t.Fatalf("used %d, want exactly %d (160 chunks offered for 64)", used, limit)
	}
	mustCheck(t, s)
}

func TestSameChunkWritersSerialise(t *testing.T) {
	// 8 blocks of one chunk written concurrently, many times: every
	// read-modify-write must see the others' results.
	s, _ := openMem(t, Options{})
	v := s.Volume(1)
	ctx := context.Background()
	var wg sync.WaitGroup
	const rounds = 50
	for b := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for r := range rounds {
				if err := v.WriteAt(ctx, pattern(uint64(r), int64(b)*512, 512), int64(b)*512+ChunkSize); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	got := mustRead(t, v, ChunkSize, ChunkSize)
	for b := range 8 {
		equalOrFail(t, "block", got[b*512:(b+1)*512], pattern(rounds-1, int64(b)*512, 512))
	}
	mustCheck(t, s)
}

// TestCorruptionDetected damages stored chunks behind Pebble's back (a
// flipped bit, a chunk stored under another chunk's key): reads fail with
// a *CorruptError naming the first damaged block, undamaged blocks of the
// same chunk still read, Check lists every damaged block, and rewriting
// just the damaged blocks (a host's usual repair) mends the chunk.
func TestCorruptionDetected(t *testing.T) {
	s, _ := openMem(t, Options{})
	v := s.Volume(5)
	ctx := context.Background()
	mustWrite(t, v, pattern(1, 0, 4*ChunkSize), 0)

	rawGet := func(c uint64) []byte { return rawValue(t, s, 5, c) }
	// Flip a bit in block 0 of chunk 1.
	bad := rawGet(1)
	bad[100] ^= 0x10
	if err := s.db.Set(chunkKey(5, 1), bad, pebble.Sync); err != nil {
		t.Fatal(err)
	}
	// Misdirect: store chunk 2's (valid) value under chunk 3's key.
	if err := s.db.Set(chunkKey(5, 3), rawGet(2), pebble.Sync); err != nil {
		t.Fatal(err)
	}

	for _, r := range [][3]int64{ // offset, length, first damaged byte
		{ChunkSize, 512, ChunkSize},
		{0, 4 * ChunkSize, ChunkSize},
		{3 * ChunkSize, ChunkSize, 3 * ChunkSize},
		{3*ChunkSize + 1024, 1024, 3*ChunkSize + 1024},
		{2 * ChunkSize, 2 * ChunkSize, 3 * ChunkSize},
	} {
		err := v.ReadAt(ctx, make([]byte, r[1]), r[0])
		var ce *CorruptError
		if !errors.As(err, &ce) || !errors.Is(err, ErrCorrupt) || ce.Volume != 5 || ce.Offset != r[2] {
			t.Errorf("read %d+%d: %v, want a CorruptError at byte %d", r[0], r[1], err, r[2])
		}
	}
	// Chunks 0 and 2, and the undamaged blocks of chunk 1, are fine.
	equalOrFail(t, "good chunk", mustRead(t, v, 0, ChunkSize), pattern(1, 0, ChunkSize))
	equalOrFail(t, "good chunk", mustRead(t, v, 2*ChunkSize, ChunkSize), pattern(1, 2*ChunkSize, ChunkSize))
	equalOrFail(t, "good blocks", mustRead(t, v, ChunkSize+512, ChunkSize-512), pattern(1, ChunkSize+512, ChunkSize-512))

	err := s.Check(ctx)
	var ce *CheckError
	if !errors.As(err, &ce) || !errors.Is(err, ErrCorrupt) {
		t.Fatalf("check: %v, want a CheckError", err)
	}
	want := []DamagedBlocks{{Volume: 5, Offset: ChunkSize, Length: 512}, {Volume: 5, Offset: 3 * ChunkSize, Length: ChunkSize}}
	if len(ce.Damaged) != len(want) || len(ce.Problems) != 0 {
		t.Fatalf("check: %v; want damage %v only", err, want)
	}
	for i, d := range ce.Damaged {
		if d.Volume != want[i].Volume || d.Offset != want[i].Offset || d.Length != want[i].Length {
			t.Errorf("check: damaged run %d is %+v, want %+v", i, d, want[i])
		}
	}
	t.Logf("check: %v", err)

	// Rewriting the one damaged block of chunk 1 repairs it.
	mustWrite(t, v, pattern(2, ChunkSize, 512), ChunkSize)
	equalOrFail(t, "repaired chunk", mustRead(t, v, ChunkSize, ChunkSize),
		append(pattern(2, ChunkSize, 512), pattern(1, ChunkSize+512, ChunkSize-512)...))
	// Chunk 3 is damaged throughout: rewriting one block mends that block
	// only; the others keep failing until they are rewritten or unmapped.
	mustWrite(t, v, pattern(2, 3*ChunkSize+1024, 512), 3*ChunkSize+1024)
	equalOrFail(t, "rewritten block", mustRead(t, v, 3*ChunkSize+1024, 512), pattern(2, 3*ChunkSize+1024, 512))
	if err := v.ReadAt(ctx, make([]byte, ChunkSize), 3*ChunkSize); !errors.Is(err, ErrCorrupt) {
		t.Errorf("read of the blocks still damaged: %v, want ErrCorrupt", err)
	}
	if err := v.Unmap(ctx, 3*ChunkSize, 1024); err != nil {
		t.Fatal(err)
	}
	mustWrite(t, v, pattern(2, 3*ChunkSize+1536, ChunkSize-1536), 3*ChunkSize+1536)
	want3 := append(append(make([]byte, 1024), pattern(2, 3*ChunkSize+1024, 512)...), pattern(2, 3*ChunkSize+1536, ChunkSize-1536)...)
	equalOrFail(t, "chunk 3 mended block by block", mustRead(t, v, 3*ChunkSize, ChunkSize), want3)
	mustCheck(t, s)

	// A value of the wrong length is damaged throughout.
	if err := s.db.Set(chunkKey(5, 0), []byte("short"), pebble.Sync); err != nil {
		t.Fatal(err)
	}
	if err := v.ReadAt(ctx, make([]byte, 512), 1024); !errors.Is(err, ErrCorrupt) {
		t.Errorf("short value: %v, want ErrCorrupt", err)
	}
}

func TestReopenKeepsEverything(t *testing.T) {
	s, fs := openMem(t, Options{})
	ctx := context.Background()
	mustWrite(t, s.Volume(1), pattern(1, 0, 10*ChunkSize), 0)
	mustWrite(t, s.Volume(2), pattern(2, 0, 512), 1<<33)
	if err := s.Volume(1).Unmap(ctx, 2*ChunkSize, 3*ChunkSize); err != nil {
		t.Fatal(err)
	}
	b := s.NewBatch()
	b.SetMeta("cfg/array", []byte("A"))
	if err := b.Commit(); err != nil {
		t.Fatal(err)
	}
	s = reopen(t, s, fs, Options{})
	if got := s.Volume(1).Used(); got != 7*ChunkSize {
		t.Fatalf("volume 1 used %d after reopen", got)
	}
	if got := s.Volume(2).Used(); got != ChunkSize {
		t.Fatalf("volume 2 used %d after reopen", got)
	}
	if used, _ := s.Usage(); used != 8*ChunkSize {
		t.Fatalf("array used %d after reopen", used)
	}
	want := pattern(1, 0, 10*ChunkSize)
	clear(want[2*ChunkSize : 5*ChunkSize])
	equalOrFail(t, "volume 1", mustRead(t, s.Volume(1), 0, 10*ChunkSize), want)
	equalOrFail(t, "volume 2", mustRead(t, s.Volume(2), 1<<33, 512), pattern(2, 0, 512))
	if val, ok, err := s.GetMeta("cfg/array"); err != nil || !ok || string(val) != "A" {
		t.Fatalf("meta after reopen: %q %v %v", val, ok, err)
	}
	mapped, run, err := s.Volume(1).Mapped(ctx, 0, 1<<20)
	if err != nil || !mapped || run != 2*ChunkSize {
		t.Fatalf("Mapped after reopen: %v %d %v", mapped, run, err)
	}
	mustCheck(t, s)
}

// writesFS counts the operations that change a filesystem, to prove that
// Open refused a store without opening it for writing.
func writesFS(fs vfs.FS) (vfs.FS, *atomic.Int64) {
	var n atomic.Int64
	return errorfs.Wrap(fs, errorfs.InjectorFunc(func(op errorfs.Op) error {
		switch op.Kind {
		case errorfs.OpCreate, errorfs.OpLink, errorfs.OpRemove, errorfs.OpRemoveAll, errorfs.OpRename,
			errorfs.OpReuseForWrite, errorfs.OpMkdirAll, errorfs.OpFileWrite, errorfs.OpFileWriteAt,
			errorfs.OpFileSync, errorfs.OpFilePreallocate:
			n.Add(1)
		}
		return nil
	})), &n
}

// TestFormatVersion: a store of a newer format, or a Pebble DB that is not
// a metro store, is refused with ErrFormat before Pebble opens it for
// writing (which would replay its WAL, write a manifest and compact it).
func TestFormatVersion(t *testing.T) {
	s, fs := openMem(t, Options{})
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if v, ok, err := readFormatFile(fs, "db"); err != nil || !ok || v != FormatVersion {
		t.Fatalf("format file of a new store: %d %v %v", v, ok, err)
	}
	newer := FormatVersion + 1

	// The format file says newer.
	if err := fs.Remove("db/" + formatFile); err != nil {
		t.Fatal(err)
	}
	f, err := fs.Create("db/"+formatFile, vfs.WriteCategoryUnspecified)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(f, "metro store format %d\n", newer)
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	wfs, writes := writesFS(fs)
	_, err = Open("db", Options{FS: wfs})
	if !errors.Is(err, ErrFormat) || writes.Load() != 0 {
		t.Fatalf("open newer format (file): %v after %d writes; want ErrFormat and no write", err, writes.Load())
	}
	t.Logf("newer format: %v", err)

	// Only the record, as a format 1 metro wrote it, says newer.
	if err := fs.Remove("db/" + formatFile); err != nil {
		t.Fatal(err)
	}
	po := pebbleOptions(Options{FS: fs}, slog.New(slog.DiscardHandler), nil, nil)
	db, err := pebble.Open("db", po)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Set(sysKey(sysFormatKey), binary.BigEndian.AppendUint32(nil, newer), pebble.Sync); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	writes.Store(0)
	if _, err := Open("db", Options{FS: wfs}); !errors.Is(err, ErrFormat) || writes.Load() != 0 {
		t.Fatalf("open newer format (record): %v after %d writes; want ErrFormat and no write", err, writes.Load())
	}

	// A Pebble DB that is not a metro store is refused.
	db, err = pebble.Open("other", &pebble.Options{FS: fs, Merger: newMerger(), FormatMajorVersion: pebbleFormat,
		Logger: pebbleLogger{log: slog.New(slog.DiscardHandler)}})
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Set([]byte("x"), []byte("y"), pebble.Sync); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	writes.Store(0)
	if _, err := Open("other", Options{FS: wfs}); !errors.Is(err, ErrFormat) || writes.Load() != 0 {
		t.Fatalf("open foreign DB: %v after %d writes; want ErrFormat and no write", err, writes.Load())
	}
}

// TestFormat1Upgrade opens a store as a format 1 metro left it (the record
// only, chunks with one checksum each): its chunks read, partial writes
// rewrite them in format 2, and the store is marked format 2.
func TestFormat1Upgrade(t *testing.T) {
	fs := vfs.NewMem()
	data := writeFormat1Store(t, fs)
	s, err := Open("db", Options{FS: fs})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if v, ok, err := readFormatFile(fs, "db"); err != nil || !ok || v != FormatVersion {
		t.Fatalf("format file after the upgrade: %d %v %v", v, ok, err)
	}
	if v, _, err := formatRecord(s.db); err != nil || v != FormatVersion {
		t.Fatalf("format record after the upgrade: %d %v", v, err)
	}
	vol := s.Volume(1)
	equalOrFail(t, "format 1 chunk", mustRead(t, vol, 0, ChunkSize), data)
	mustWrite(t, vol, pattern(8, 512, 512), 512)
	copy(data[512:], pattern(8, 512, 512))
	equalOrFail(t, "rewritten chunk", mustRead(t, vol, 0, ChunkSize), data)
	if n := len(rawValue(t, s, 1, 0)); n != chunkValueLen {
		t.Fatalf("rewritten chunk is %d bytes, want format 2's %d", n, chunkValueLen)
	}
	mustCheck(t, s)
}

func rawValue(t *testing.T, s *Store, vol, c uint64) []byte {
	t.Helper()
	var val []byte
	if _, err := get(s.db, chunkKey(vol, c), func(v []byte) error { val = append(val, v...); return nil }); err != nil {
		t.Fatal(err)
	}
	return val
}

func TestClosed(t *testing.T) {
	s, _ := openMem(t, Options{})
	v := s.Volume(1)
	mustWrite(t, v, pattern(1, 0, 512), 0)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for name, err := range map[string]error{
		"write":  v.WriteAt(ctx, make([]byte, 512), 0),
		"read":   v.ReadAt(ctx, make([]byte, 512), 0),
		"unmap":  v.Unmap(ctx, 0, 512),
		"delete": s.DeleteVolume(1),
		"batch":  s.NewBatch().Commit(),
		"close":  s.Close(),
		"check":  s.Check(ctx),
	} {
		if !errors.Is(err, ErrClosed) {
			t.Errorf("%s after close: %v, want ErrClosed", name, err)
		}
	}
	if _, _, err := s.GetMeta("x"); !errors.Is(err, ErrClosed) {
		t.Errorf("GetMeta after close: %v", err)
	}
	if _, _, err := v.Mapped(ctx, 0, 512); !errors.Is(err, ErrClosed) {
		t.Errorf("Mapped after close: %v", err)
	}
}

func TestCloseWaitsForWriters(t *testing.T) {
	s, _ := openMem(t, Options{})
	ctx := context.Background()
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			v := s.Volume(uint64(g))
			for i := 0; ; i++ {
				err := v.WriteAt(ctx, pattern(1, 0, ChunkSize), int64(i%64)*ChunkSize)
				if errors.Is(err, ErrClosed) {
					return
				}
				if err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	mustWrite(t, s.Volume(99), pattern(1, 0, ChunkSize), 0) // let them start
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
}

func TestContextCancelled(t *testing.T) {
	s, _ := openMem(t, Options{})
	v := s.Volume(1)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := v.WriteAt(ctx, pattern(1, 0, 512), 0); !errors.Is(err, context.Canceled) {
		t.Fatalf("write with cancelled context: %v", err)
	}
	if v.Used() != 0 {
		t.Fatal("cancelled write changed the volume")
	}
	mustCheck(t, s)
}

func TestDeleteVolume(t *testing.T) {
	s, fs := openMem(t, Options{Capacity: 100 * ChunkSize})
	ctx := context.Background()
	a, b := s.Volume(10), s.Volume(11)
	mustWrite(t, a, pattern(1, 0, 40*ChunkSize), 0)
	mustWrite(t, a, pattern(1, 0, ChunkSize), 1<<40)
	mustWrite(t, b, pattern(2, 0, 20*ChunkSize), 0)
	mustWrite(t, s.Volume(^uint64(0)), pattern(3, 0, ChunkSize), 0)
	if err := s.DeleteVolume(10); err != nil {
		t.Fatal(err)
	}
	if a.Used() != 0 {
		t.Fatalf("deleted volume used %d", a.Used())
	}
	if used, _ := s.Usage(); used != 21*ChunkSize {
		t.Fatalf("array used %d, want %d", used, 21*ChunkSize)
	}
	equalOrFail(t, "deleted", mustRead(t, a, 0, 40*ChunkSize), make([]byte, 40*ChunkSize))
	equalOrFail(t, "neighbour", mustRead(t, b, 0, 20*ChunkSize), pattern(2, 0, 20*ChunkSize))
	mustCheck(t, s)
	// The largest id's range is handled too.
	if err := s.DeleteVolume(^uint64(0)); err != nil {
		t.Fatal(err)
	}
	mustCheck(t, s)
	s = reopen(t, s, fs, Options{})
	if used, _ := s.Usage(); used != 20*ChunkSize {
		t.Fatalf("after reopen: array used %d, want %d", used, 20*ChunkSize)
	}
	a = s.Volume(10)
	equalOrFail(t, "deleted after reopen", mustRead(t, a, 0, 40*ChunkSize), make([]byte, 40*ChunkSize))
	mapped, _, err := a.Mapped(ctx, 0, 1<<41)
	if err != nil || mapped {
		t.Fatalf("deleted volume mapped: %v %v", mapped, err)
	}
	// The volume can be written again (ids are not reused, but the store
	// does not care).
	mustWrite(t, a, pattern(4, 0, ChunkSize), 0)
	if a.Used() != ChunkSize {
		t.Fatalf("used %d", a.Used())
	}
	mustCheck(t, s)
}

func TestVolumeHandlesShared(t *testing.T) {
	s, _ := openMem(t, Options{})
	if a, b := s.Volume(3), s.Volume(3); a != b {
		t.Fatal("Volume returned different handles for one id")
	}
	if s.Volume(3).ID() != 3 {
		t.Fatal("wrong id")
	}
}

func TestRealDisk(t *testing.T) {
	dir := t.TempDir() + "/array/store"
	s, err := Open(dir, Options{CacheSize: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	mustWrite(t, s.Volume(1), pattern(1, 0, 3*ChunkSize), 512)
	// A second Open of the same directory is refused (Pebble's lock).
	if s2, err := Open(dir, Options{}); err == nil {
		_ = s2.Close()
		t.Fatal("second Open of a store in use succeeded")
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s, err = Open(dir, Options{CacheSize: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	equalOrFail(t, "after reopen", mustRead(t, s.Volume(1), 512, 3*ChunkSize), pattern(1, 0, 3*ChunkSize))
	mustCheck(t, s)
}

// TestBatchWriteUnmapWrite: one batch writes part of a chunk, unmaps the
// whole chunk, then writes part of it again. The unmap drops the pending
// content; the second write must start from zeros (it used to panic on the
// dropped buffer still marked as the plan's own).
func TestBatchWriteUnmapWrite(t *testing.T) {
	s, _ := openMem(t, Options{})
	v := s.Volume(1)
	mustWrite(t, v, pattern(1, 0, 2*ChunkSize), 0) // mapped before the batch
	for _, c := range []int64{0, 2} {              // chunk 2 is not mapped before
		b := s.NewBatch()
		base := c * ChunkSize
		for _, err := range []error{
			b.WriteAt(v, pattern(2, base, 512), base),
			b.Unmap(v, base, ChunkSize),
			b.WriteAt(v, pattern(3, base+1024, 512), base+1024),
		} {
			if err != nil {
				t.Fatal(err)
			}
		}
		if err := b.Commit(); err != nil {
			t.Fatalf("chunk %d: %v", c, err)
		}
		want := make([]byte, ChunkSize)
		copy(want[1024:], pattern(3, base+1024, 512))
		equalOrFail(t, fmt.Sprintf("chunk %d", c), mustRead(t, v, base, ChunkSize), want)
	}
	mustCheck(t, s)
}

// TestFileModes: on the real disk the store's directory is 0700 and every
// file in it 0600, whatever the umask, also for a store made before (0755
// and 0644).
func TestFileModes(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data", "store")
	check := func(when string) {
		t.Helper()
		st, err := os.Stat(dir)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != 0o700 {
			t.Errorf("%s: store directory mode %v, want 0700", when, st.Mode().Perm())
		}
		entries, err := os.ReadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, e := range entries {
			info, err := e.Info()
			if err != nil {
				t.Fatal(err)
			}
			if info.Mode().IsRegular() {
				n++
				if info.Mode().Perm() != 0o600 {
					t.Errorf("%s: %s mode %v, want 0600", when, e.Name(), info.Mode().Perm())
				}
			}
		}
		if n < 5 {
			t.Fatalf("%s: only %d files in the store directory", when, n)
		}
	}
	use := func() {
		t.Helper()
		s, err := Open(dir, Options{CacheSize: 1 << 20})
		if err != nil {
			t.Fatal(err)
		}
		mustWrite(t, s.Volume(1), pattern(1, 0, 8*ChunkSize), 0)
		if err := s.db.Flush(); err != nil { // sstables and blob files too
			t.Fatal(err)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
	}
	use()
	check("new store")
	// A store left readable by an earlier metro is made private.
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		_ = os.Chmod(filepath.Join(dir, e.Name()), 0o644)
	}
	use()
	check("reopened store")
}
