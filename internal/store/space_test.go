package store

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/cockroachdb/pebble/v2/vfs/errorfs"
)

// smallFS is an in-memory filesystem of a fixed size: it reports its usage
// (the files' sizes or preallocations, whichever is larger, plus what
// "other files" hold) and fails a write that does not fit with ENOSPC, as
// a real full filesystem does.
type smallFS struct {
	vfs.FS
	limit int64
	mu    sync.Mutex
	// prealloc is the preallocated size of files, by path; other is the
	// space other files of the filesystem hold.
	prealloc map[string]int64
	other    int64
	enospc   atomic.Int64 // writes refused
}

func newSmallFS(limit int64) *smallFS {
	return &smallFS{FS: vfs.NewMem(), limit: limit, prealloc: map[string]int64{}}
}

// usedLocked sums what the files hold (fs.mu held).
func (fs *smallFS) usedLocked() int64 {
	used := fs.other
	var walk func(dir string)
	walk = func(dir string) {
		names, _ := fs.FS.List(dir)
		for _, n := range names {
			p := fs.FS.PathJoin(dir, n)
			st, err := fs.FS.Stat(p)
			if err != nil {
				continue
			}
			if st.IsDir() {
				walk(p)
				continue
			}
			used += max(st.Size(), fs.prealloc[p])
		}
	}
	walk("")
	return used
}

// grow admits growing file path from size to end bytes (fs.mu held).
func (fs *smallFS) grow(path string, size, end int64) error {
	if end <= max(size, fs.prealloc[path]) {
		return nil
	}
	if fs.usedLocked()+end-max(size, fs.prealloc[path]) > fs.limit {
		fs.enospc.Add(1)
		return &os.PathError{Op: "write", Path: path, Err: syscall.ENOSPC}
	}
	return nil
}

// setOther makes other files hold n bytes.
func (fs *smallFS) setOther(n int64) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	fs.other = n
}

// breakdown sums the files by kind.
func (fs *smallFS) breakdown() string {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	sums := map[string]int64{}
	names, _ := fs.FS.List("db")
	for _, n := range names {
		st, err := fs.FS.Stat("db/" + n)
		if err != nil {
			continue
		}
		kind := n[strings.LastIndex(n, ".")+1:]
		sums[kind] += max(st.Size(), fs.prealloc["db/"+n])
	}
	return fmt.Sprint(sums)
}

func (fs *smallFS) avail() int64 {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	return fs.limit - fs.usedLocked()
}

func (fs *smallFS) GetDiskUsage(string) (vfs.DiskUsage, error) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	used := fs.usedLocked()
	return vfs.DiskUsage{TotalBytes: uint64(fs.limit), AvailBytes: uint64(max(fs.limit-used, 0)), UsedBytes: uint64(used)}, nil
}

func (fs *smallFS) wrap(path string, f vfs.File, err error) (vfs.File, error) {
	if err != nil {
		return nil, err
	}
	return &smallFile{File: f, fs: fs, path: path}, nil
}

func (fs *smallFS) Create(name string, c vfs.DiskWriteCategory) (vfs.File, error) {
	f, err := fs.FS.Create(name, c)
	fs.mu.Lock()
	delete(fs.prealloc, name)
	fs.mu.Unlock()
	return fs.wrap(name, f, err)
}

func (fs *smallFS) OpenReadWrite(name string, c vfs.DiskWriteCategory, o ...vfs.OpenOption) (vfs.File, error) {
	f, err := fs.FS.OpenReadWrite(name, c, o...)
	return fs.wrap(name, f, err)
}

func (fs *smallFS) ReuseForWrite(oldname, newname string, c vfs.DiskWriteCategory) (vfs.File, error) {
	f, err := fs.FS.ReuseForWrite(oldname, newname, c)
	fs.mu.Lock()
	fs.prealloc[newname] = fs.prealloc[oldname]
	delete(fs.prealloc, oldname)
	fs.mu.Unlock()
	return fs.wrap(newname, f, err)
}

func (fs *smallFS) Remove(name string) error {
	fs.mu.Lock()
	delete(fs.prealloc, name)
	fs.mu.Unlock()
	return fs.FS.Remove(name)
}

func (fs *smallFS) Rename(oldname, newname string) error {
	fs.mu.Lock()
	fs.prealloc[newname] = fs.prealloc[oldname]
	delete(fs.prealloc, oldname)
	fs.mu.Unlock()
	return fs.FS.Rename(oldname, newname)
}

func (fs *smallFS) Unwrap() vfs.FS { return fs.FS }

type smallFile struct {
	vfs.File
	fs   *smallFS
	path string
}

func (f *smallFile) size() int64 {
	st, err := f.File.Stat()
	if err != nil {
		return 0
	}
	return st.Size()
}

func (f *smallFile) Write(p []byte) (int, error) {
	f.fs.mu.Lock()
	defer f.fs.mu.Unlock()
	size := f.size()
	if err := f.fs.grow(f.path, size, size+int64(len(p))); err != nil {
		return 0, err
	}
	return f.File.Write(p)
}

func (f *smallFile) WriteAt(p []byte, off int64) (int, error) {
	f.fs.mu.Lock()
	defer f.fs.mu.Unlock()
	if err := f.fs.grow(f.path, f.size(), off+int64(len(p))); err != nil {
		return 0, err
	}
	return f.File.WriteAt(p, off)
}

func (f *smallFile) Preallocate(off, n int64) error {
	f.fs.mu.Lock()
	defer f.fs.mu.Unlock()
	if err := f.fs.grow(f.path, f.size(), off+n); err != nil {
		return err
	}
	f.fs.prealloc[f.path] = max(f.fs.prealloc[f.path], off+n)
	return nil
}

// logLines counts log records whose message contains a substring.
type logLines struct {
	mu    sync.Mutex
	lines []string
}

func (l *logLines) Enabled(context.Context, slog.Level) bool { return true }
func (l *logLines) Handle(_ context.Context, r slog.Record) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, r.Message)
	return nil
}
func (l *logLines) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *logLines) WithGroup(string) slog.Handler      { return l }

func (l *logLines) count(sub string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, m := range l.lines {
		if strings.Contains(m, sub) {
			n++
		}
	}
	return n
}

// fillWrite is one acknowledged write of the fill test.
type fillWrite struct {
	off int64
	tag uint64
}

// TestFullFilesystem fills a small filesystem with concurrent writers and
// then takes the rest of its space away with "other files". The store
// never lets Pebble meet the full filesystem: new writes get ErrNoSpace
// when the effective capacity (what the filesystem can hold after the
// reserve) is reached, and every write of data once free space falls
// below the floor, while reads, unmaps and metadata changes go on; once
// space is freed writes resume, and every acknowledged write reads back.
func TestFullFilesystem(t *testing.T) {
	const limit = 40 << 20
	fs := newSmallFS(limit)
	rec := &fatalRecorder{}
	logs := &logLines{}
	s, _ := openMem(t, Options{FS: fs, OnFatal: rec.onFatal, Logger: slog.New(logs)})
	if s.space == nil {
		t.Fatal("no space guard on a filesystem that reports its usage")
	}
	_, capacity := s.Usage()
	if capacity == 0 || capacity > limit*3/4 {
		t.Errorf("effective capacity %d on a %d-byte filesystem", capacity, limit)
	}
	t.Logf("effective capacity %d MiB of %d MiB (reserve %d MiB)", capacity>>20, limit>>20, s.space.reserve>>20)
	v := s.Volume(1)
	ctx := context.Background()

	// Writers fill the filesystem, each in its own region, until refused.
	const writers, region, piece = 4, 64 << 20, 64 << 10
	acked := make([][]fillWrite, writers)
	var wg sync.WaitGroup
	var refused atomic.Int64
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 1))
			for off, n := int64(w)*region, uint64(0); off < int64(w+1)*region; off += piece {
				n++
				tag := uint64(w)<<32 | n
				err := v.WriteAt(ctx, pattern(tag, off, piece), off)
				switch {
				case err == nil:
					acked[w] = append(acked[w], fillWrite{off, tag})
				case errors.Is(err, ErrNoSpace):
					refused.Add(1)
					return
				default:
					t.Errorf("writer %d at %d: %v", w, off, err)
					return
				}
				if rng.IntN(8) == 0 { // and overwrite an earlier piece now and then
					i := rng.IntN(len(acked[w]))
					a := &acked[w][i]
					if err := v.WriteAt(ctx, pattern(a.tag+1000, a.off, piece), a.off); err == nil {
						a.tag += 1000
					} else if !errors.Is(err, ErrNoSpace) {
						t.Errorf("writer %d overwrite at %d: %v", w, a.off, err)
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	total := 0
	for _, a := range acked {
		total += len(a)
	}
	used, _ := s.Usage()
	t.Logf("%d pieces acknowledged, %d refused; %d MiB used, %d MiB free on the filesystem", total, refused.Load(), used>>20, fs.avail()>>20)
	if refused.Load() != writers || total < 100 {
		t.Fatalf("%d writers refused after %d pieces in all; want all %d refused after at least 100", refused.Load(), total, writers)
	}
	verify := func(when string, unmapped int) {
		t.Helper()
		for w, as := range acked {
			for _, a := range as {
				want := pattern(a.tag, a.off, piece)
				if w == unmapped {
					want = make([]byte, piece)
				}
				got := make([]byte, piece)
				if err := v.ReadAt(ctx, got, a.off); err != nil {
					t.Fatalf("%s: read at %d: %v", when, a.off, err)
				}
				if !bytes.Equal(got, want) {
					t.Fatalf("%s: acknowledged write at %d (tag %x) reads back wrong", when, a.off, a.tag)
				}
			}
		}
	}
	verify("full", -1)
	t.Logf("files: %s", fs.breakdown())
	if n := fs.enospc.Load(); n != 0 {
		t.Errorf("Pebble met the full filesystem %d times while the store filled it", n)
	}
	// Overwrites of mapped chunks still fit while the filesystem has room.
	a := &acked[0][0]
	if err := v.WriteAt(ctx, pattern(a.tag+7, a.off, piece), a.off); err != nil {
		t.Fatalf("overwrite at the capacity: %v", err)
	}
	a.tag += 7

	// Other files take the filesystem down to a quarter of the floor:
	// Pebble's compactions may now meet a full filesystem, which must not
	// stop the store or flood its log.
	fs.setOther(fs.avail() - s.space.floor/4)
	s.space.look()
	if err := v.WriteAt(ctx, pattern(1, a.off, piece), a.off); !errors.Is(err, ErrNoSpace) {
		t.Fatalf("overwrite with the filesystem nearly full: %v, want ErrNoSpace", err)
	}
	verify("filesystem nearly full", -1)
	b := s.NewBatch()
	b.SetMeta("cfg/catalog", []byte("a configuration change"))
	if err := b.Commit(); err != nil {
		t.Fatalf("metadata change with the filesystem nearly full: %v", err)
	}
	if err := v.Unmap(ctx, 3*region, region); err != nil {
		t.Fatalf("unmap with the filesystem nearly full: %v", err)
	}
	verify("after the unmap", 3)

	// Space comes back: writes resume.
	fs.setOther(0)
	s.space.look()
	if err := v.WriteAt(ctx, pattern(a.tag+1, a.off, piece), a.off); err != nil {
		t.Fatalf("overwrite once space is back: %v", err)
	}
	a.tag++
	if err := v.WriteAt(ctx, pattern(9, writers*region, piece), writers*region); err != nil {
		t.Fatalf("new write into the space the unmap freed: %v", err)
	}
	verify("space back", 3)
	mustCheck(t, s)
	if calls := rec.calls(); len(calls) != 0 {
		t.Fatalf("the store failed: %v", calls)
	}
	if n := logs.count("pebble compaction failed") + logs.count("pebble flush failed") + logs.count("pebble background error"); n > 6 {
		t.Errorf("%d log lines of failed background work (%d full-filesystem errors), want at most two per kind", n, fs.enospc.Load())
	}
}

// TestBallastReleasedWhenFull takes every free byte of the filesystem:
// the next flush of Pebble's meets a full filesystem, the store deletes
// its ballast, the flush is retried and succeeds, and unmaps and reads go
// on; nothing fails.
func TestBallastReleasedWhenFull(t *testing.T) {
	fs := newSmallFS(40 << 20)
	rec := &fatalRecorder{}
	logs := &logLines{}
	s, _ := openMem(t, Options{FS: fs, OnFatal: rec.onFatal, Logger: slog.New(logs)})
	if _, err := fs.Stat("db/" + ballastName); err != nil {
		t.Fatalf("no ballast: %v", err)
	}
	v := s.Volume(1)
	ctx := context.Background()
	mustWrite(t, v, pattern(1, 0, 1<<20), 0)
	fs.setOther(fs.avail())
	if err := v.Unmap(ctx, 0, 512<<10); err != nil {
		t.Fatalf("unmap on a full filesystem: %v", err)
	}
	if err := s.db.Flush(); err != nil {
		t.Fatalf("flush on a full filesystem: %v", err)
	}
	if _, err := fs.Stat("db/" + ballastName); err == nil {
		t.Fatal("the ballast is still there on a full filesystem")
	}
	if logs.count("deleted the emergency ballast") != 1 {
		t.Errorf("the ballast's deletion was logged %d times, want once", logs.count("deleted the emergency ballast"))
	}
	want := append(make([]byte, 512<<10), pattern(1, 512<<10, 512<<10)...)
	equalOrFail(t, "after the flush", mustRead(t, v, 0, 1<<20), want)
	if calls := rec.calls(); len(calls) != 0 {
		t.Fatalf("the store failed: %v", calls)
	}
	// Space back: the ballast is made again.
	fs.setOther(0)
	s.space.look()
	if _, err := fs.Stat("db/" + ballastName); err != nil {
		t.Fatalf("the ballast was not made again once space was back: %v", err)
	}
}

// TestBackgroundErrorsRateLimited makes every flush fail: Pebble retries
// at once, thousands of times, but the log gets one line per kind of
// error per period (the clock does not move here), not one per failure.
func TestBackgroundErrorsRateLimited(t *testing.T) {
	var failures atomic.Int64
	fs, armed := injectFS(func(op errorfs.Op) bool {
		if op.Kind == errorfs.OpCreate && (strings.HasSuffix(op.Path, ".sst") || strings.HasSuffix(op.Path, ".blob")) {
			failures.Add(1)
			return true
		}
		return false
	})
	logs := &logLines{}
	clock := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	s, _ := openMem(t, Options{FS: fs, Logger: slog.New(logs), now: func() time.Time { return clock }})
	mustWrite(t, s.Volume(1), pattern(1, 0, 1<<20), 0)
	armed.Store(true)
	done, err := s.db.AsyncFlush()
	if err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(30 * time.Second); failures.Load() < 200; {
		if time.Now().After(deadline) {
			t.Fatalf("only %d flush failures injected in 30 s", failures.Load())
		}
		time.Sleep(10 * time.Millisecond)
	}
	armed.Store(false)
	<-done
	lines := 0
	for _, kind := range []string{"pebble flush failed", "pebble background error", "pebble error"} {
		lines += logs.count(kind)
	}
	t.Logf("%d flush failures, %d log lines", failures.Load(), lines)
	if lines > 3 {
		t.Fatalf("%d log lines for %d flush failures, want at most one per kind", lines, failures.Load())
	}
	equalOrFail(t, "data after the failed flushes", mustRead(t, s.Volume(1), 0, 1<<20), pattern(1, 0, 1<<20))
}

// TestWriteStallHonoursDeadline: while Pebble stalls writes (its flushes
// cannot proceed, here because the disk holds them up, so memtables pile
// up), a new write gives up when its context ends instead of blocking
// inside Pebble with its chunk stripes held; once the flushes proceed the
// stalled writes complete.
func TestWriteStallHonoursDeadline(t *testing.T) {
	release := make(chan struct{})
	var hold atomic.Bool
	hold.Store(true)
	fs := errorfs.Wrap(vfs.NewMem(), errorfs.InjectorFunc(func(op errorfs.Op) error {
		if op.Kind == errorfs.OpCreate && (strings.HasSuffix(op.Path, ".sst") || strings.HasSuffix(op.Path, ".blob")) && hold.Load() {
			<-release
		}
		return nil
	}))
	s, _ := openMem(t, Options{FS: fs, tune: func(po *pebble.Options) {
		po.MemTableSize = 1 << 20
		po.MemTableStopWritesThreshold = 2
	}})
	v := s.Volume(1)
	// Fill memtables until Pebble stalls; these writers may block in it.
	var wg sync.WaitGroup
	var filled atomic.Int64
	var stalled atomic.Bool // set once the stall is seen: the writers stop
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := int64(0); !stalled.Load() && s.ev.stall.ch.Load() == nil && i < 4096; i++ {
				off := int64(w)<<24 + i*piece64
				if err := v.WriteAt(context.Background(), pattern(uint64(w), off, piece64), off); err != nil {
					t.Errorf("fill write: %v", err)
					return
				}
				filled.Add(1)
			}
		}()
	}
	for deadline := time.Now().Add(30 * time.Second); s.ev.stall.ch.Load() == nil; {
		if time.Now().After(deadline) {
			t.Fatalf("no write stall after %d writes", filled.Load())
		}
		time.Sleep(10 * time.Millisecond)
	}
	stalled.Store(true)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	result := make(chan error, 1)
	go func() { result <- v.WriteAt(ctx, pattern(9, 1<<30, ChunkSize), 1<<30) }()
	select {
	case err := <-result:
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("write during a stall: %v, want the context's deadline", err)
		}
	case <-time.After(30 * time.Second):
		t.Error("a write during a stall ignored its context's deadline")
	}
	hold.Store(false)
	close(release)
	wg.Wait()
	mustWrite(t, v, pattern(9, 1<<30, ChunkSize), 1<<30)
	equalOrFail(t, "after the stall", mustRead(t, v, 1<<30, ChunkSize), pattern(9, 1<<30, ChunkSize))
}

// TestStalledCommitHoldsNoStripes: a commit waiting for a write stall to
// end must not hold its chunk stripes meanwhile, or every other writer of
// those stripes (other chunks, other volumes too) blocks on them beyond
// its own deadline. Here a writer without a deadline waits out a stall,
// and another writer of the same chunk, with a deadline, gives up when
// its deadline passes.
func TestStalledCommitHoldsNoStripes(t *testing.T) {
	s, _ := openMem(t, Options{})
	v := s.Volume(1)
	s.ev.stall.begin()
	first := make(chan error, 1)
	go func() { first <- v.WriteAt(context.Background(), pattern(1, 0, 512), 0) }()
	for s.ev.stall.waiting.Load() == 0 {
		select {
		case err := <-first:
			t.Fatalf("a write during a stall returned: %v", err)
		case <-time.After(time.Millisecond):
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	second := make(chan error, 1)
	go func() { second <- v.WriteAt(ctx, pattern(2, 512, 512), 512) }()
	select {
	case err := <-second:
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("second write during the stall: %v, want its deadline", err)
		}
	case <-time.After(30 * time.Second):
		s.ev.stall.end()
		t.Fatal("a write of a chunk another stalled commit waits on ignored its deadline")
	}
	s.ev.stall.end()
	if err := <-first; err != nil {
		t.Fatalf("first write once the stall ended: %v", err)
	}
	equalOrFail(t, "after the stall", mustRead(t, v, 0, 1024), append(pattern(1, 0, 512), make([]byte, 512)...))
}

// piece64 is a 64 KiB write.
const piece64 = 64 << 10

// TestUnmapFreesSpaceWhenFull fills a small filesystem with two volumes,
// lets other files take it below the floor, and unmaps the second volume:
// the disk space comes back and writes are accepted again without anything
// else freeing space. Pebble applies an unmap to the disk only when its
// memtable fills or a compaction runs, and with writes refused neither
// would happen by itself: the store compacts the unmapped range.
func TestUnmapFreesSpaceWhenFull(t *testing.T) {
	fs := newSmallFS(40 << 20)
	rec := &fatalRecorder{}
	s, _ := openMem(t, Options{FS: fs, OnFatal: rec.onFatal})
	ctx := context.Background()
	fill := func(v *Volume) (end int64) {
		for off := int64(0); ; off += piece64 {
			if err := v.WriteAt(ctx, pattern(v.ID(), off, piece64), off); err != nil {
				if !errors.Is(err, ErrNoSpace) {
					t.Fatalf("fill: %v", err)
				}
				return off
			}
			if v.ID() == 1 && off >= 5<<20 {
				return off + piece64
			}
		}
	}
	end1, end2 := fill(s.Volume(1)), fill(s.Volume(2))
	if end2 < 4<<20 {
		t.Fatalf("only %d bytes of volume 2 fit", end2)
	}
	// Other files take the filesystem just below the floor (the store's
	// own writes stop there; what remains is room for compactions).
	fs.setOther(fs.avail() - s.space.floor + 1<<20)
	s.space.look()
	if err := s.Volume(1).WriteAt(ctx, pattern(3, 0, piece64), 0); !errors.Is(err, ErrNoSpace) {
		t.Fatalf("write with the filesystem nearly full: %v, want ErrNoSpace", err)
	}
	if err := s.Volume(2).Unmap(ctx, 0, end2); err != nil {
		t.Fatalf("unmap: %v", err)
	}
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		err := s.Volume(1).WriteAt(ctx, pattern(3, 0, piece64), 0)
		if err == nil {
			break
		}
		if !errors.Is(err, ErrNoSpace) || time.Now().After(deadline) {
			t.Fatalf("write after unmapping volume 2: %v (free %d, floor %d)", err, fs.avail(), s.space.floor)
		}
	}
	equalOrFail(t, "volume 1", mustRead(t, s.Volume(1), 0, int(end1)),
		append(pattern(3, 0, piece64), pattern(1, piece64, int(end1-piece64))...))
	equalOrFail(t, "volume 2", mustRead(t, s.Volume(2), 0, int(end2)), make([]byte, end2))
	mustCheck(t, s)
	if calls := rec.calls(); len(calls) != 0 {
		t.Fatalf("the store failed: %v", calls)
	}
}

// TestUnalignedUnmapWhenNearlyFull: an unmap whose ends fall inside
// chunks rewrites those two chunks (the unmapped part zeroed), yet it frees
// every chunk in between: with the filesystem below the floor it must
// still go through (hosts send UNMAP at block granularity), while writes of
// data stay refused.
func TestUnalignedUnmapWhenNearlyFull(t *testing.T) {
	fs := newSmallFS(40 << 20)
	rec := &fatalRecorder{}
	s, _ := openMem(t, Options{FS: fs, OnFatal: rec.onFatal})
	ctx := context.Background()
	v := s.Volume(1)
	const size = 4 << 20
	mustWrite(t, v, pattern(1, 0, size), 0)
	fs.setOther(fs.avail() - s.space.floor + 1<<20)
	s.space.look()
	if err := v.WriteAt(ctx, pattern(2, 0, piece64), 0); !errors.Is(err, ErrNoSpace) {
		t.Fatalf("write with the filesystem nearly full: %v, want ErrNoSpace", err)
	}
	if err := v.Unmap(ctx, 512, size-1024); err != nil {
		t.Fatalf("unmap of all but the first and last blocks with the filesystem nearly full: %v", err)
	}
	want := make([]byte, size)
	copy(want, pattern(1, 0, 512))
	copy(want[size-512:], pattern(1, size-512, 512))
	equalOrFail(t, "after the unmap", mustRead(t, v, 0, size), want)
	if used := v.Used(); used != 2*ChunkSize {
		t.Fatalf("%d bytes used after the unmap, want the two edge chunks", used)
	}
	mustCheck(t, s)
	if calls := rec.calls(); len(calls) != 0 {
		t.Fatalf("the store failed: %v", calls)
	}
}

// hugeFS is an in-memory filesystem that reports more free space than an
// int64 holds, as some network and FUSE filesystems do.
type hugeFS struct{ vfs.FS }

func (hugeFS) GetDiskUsage(string) (vfs.DiskUsage, error) {
	return vfs.DiskUsage{TotalBytes: 128 << 20, AvailBytes: math.MaxUint64}, nil
}

// TestHugeFreeSpace: the effective capacity on a filesystem that reports
// more free space than an int64 holds stays huge once the store's files
// outgrow its reserve (it wrapped around to 1 byte, refusing every new
// write).
func TestHugeFreeSpace(t *testing.T) {
	s, _ := openMem(t, Options{FS: hugeFS{vfs.NewMem()}})
	v := s.Volume(1)
	const size = 20 << 20 // more than the reserve of a 128 MiB filesystem
	for off := int64(0); off < size; off += 1 << 20 {
		mustWrite(t, v, pattern(1, off, 1<<20), off)
	}
	if err := s.db.Flush(); err != nil {
		t.Fatal(err)
	}
	s.space.look()
	if _, capacity := s.Usage(); capacity < 1<<60 {
		t.Fatalf("effective capacity %d with %d bytes stored and unbounded free space", capacity, s.space.storeBytes())
	}
	mustWrite(t, v, pattern(2, size, ChunkSize), size)
}

// TestShareBelowStoredData: a store filled beyond the filesystem share
// (made before the share applied, or with a larger one) refuses writes
// that need new chunks from its next start, with plenty of free space
// left: overwrites and unmaps go on, and the start says so in the log.
func TestShareBelowStoredData(t *testing.T) {
	fs := newSmallFS(100 << 20)
	s, _ := openMem(t, Options{FS: fs, FilesystemShare: 100})
	v := s.Volume(1)
	const size = 40 << 20
	for off := int64(0); off < size; off += 1 << 20 {
		mustWrite(t, v, pattern(1, off, 1<<20), off)
	}
	logs := &logLines{}
	s = reopen(t, s, fs, Options{Logger: slog.New(logs)})
	v = s.Volume(1)
	used, capacity := s.Usage()
	t.Logf("%d MiB used, effective capacity %d MiB, %d MiB free", used>>20, capacity>>20, fs.avail()>>20)
	if err := v.WriteAt(context.Background(), pattern(2, size, ChunkSize), size); !errors.Is(err, ErrNoSpace) {
		t.Fatalf("new chunk beyond the share: %v, want ErrNoSpace", err)
	}
	mustWrite(t, v, pattern(2, 0, ChunkSize), 0)
	if logs.count("already exceeds the effective capacity") != 1 {
		t.Fatalf("the start did not warn that the stored data exceeds the effective capacity")
	}
}

// TestStoreBytesBeyondInt64: Pebble's DiskSpaceUsage can report about
// 2^64 bytes (its count of compaction output in progress goes below zero
// as compactions finish, and is added as an unsigned number). Clamped to
// the largest int64, it overflowed the sum with the free space, and the
// effective capacity wrapped around to 1 byte: a restarted array refused
// every new chunk of a resync ("0 of 1 used") for minutes, with tens of
// GiB free. The failure-scenario suite found it.
func TestStoreBytesBeyondInt64(t *testing.T) {
	s, _ := openMem(t, Options{FS: newSmallFS(1 << 30)})
	real := s.space.storeBytes
	s.space.storeBytes = func() int64 { return math.MaxInt64 }
	s.space.look()
	if _, capacity := s.Usage(); capacity < 1<<20 {
		t.Fatalf("effective capacity %d bytes with the store's bytes reported as %d", capacity, int64(math.MaxInt64))
	}
	s.space.storeBytes = real
	mustWrite(t, s.Volume(1), pattern(1, 0, ChunkSize), 0)
}

// TestStoreFileBytes: the store's bytes leave out a count of compaction
// output in progress below zero rather than wrap around.
func TestStoreFileBytes(t *testing.T) {
	var m pebble.Metrics
	m.WAL.PhysicalSize = 10 << 20
	m.Table.Local.LiveSize = 30 << 20
	m.Compact.InProgressBytes = -3 << 20
	if got := storeFileBytes(&m); got != 40<<20 {
		t.Fatalf("store bytes %d with %d in progress, want %d", got, m.Compact.InProgressBytes, 40<<20)
	}
	m.Compact.InProgressBytes = 2 << 20
	if got := storeFileBytes(&m); got != 42<<20 {
		t.Fatalf("store bytes %d with %d in progress, want %d", got, m.Compact.InProgressBytes, 42<<20)
	}
}
