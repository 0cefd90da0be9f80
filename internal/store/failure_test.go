package store

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/cockroachdb/pebble/v2/vfs/errorfs"
)

// fatalRecorder records the calls of Options.OnFatal.
type fatalRecorder struct {
	mu   sync.Mutex
	errs []error
}

func (r *fatalRecorder) onFatal(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.errs = append(r.errs, err)
}

func (r *fatalRecorder) calls() []error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]error{}, r.errs...)
}

// isWALWriteOrSync selects the operations that make a commit durable.
func isWALWriteOrSync(op errorfs.Op) bool {
	return strings.HasSuffix(op.Path, ".log") &&
		(op.Kind == errorfs.OpFileWrite || op.Kind == errorfs.OpFileSync || op.Kind == errorfs.OpFileSyncData)
}

// commitOnFailingDisk runs commit, which meets a WAL that cannot be written
// or synced. Pebble cannot continue after that, so the commit either
// panics (after the store called OnFatal) or returns an error; fatal must
// have been called before either.
func commitOnFailingDisk(t *testing.T, rec *fatalRecorder, commit func() error) {
	t.Helper()
	var err error
	func() {
		defer func() {
			if v := recover(); v != nil {
				perr, ok := v.(error)
				if !ok || !errors.Is(perr, ErrFailed) || !errors.Is(perr, errInjected) {
					t.Fatalf("commit on a failing disk panicked with %v, want an error wrapping ErrFailed and the disk error", v)
				}
				if len(rec.calls()) == 0 {
					t.Fatalf("commit on a failing disk panicked before OnFatal was called")
				}
				err = perr
			}
		}()
		err = commit()
	}()
	if !errors.Is(err, ErrFailed) {
		t.Fatalf("commit on a failing disk: %v, want ErrFailed", err)
	}
	calls := rec.calls()
	if len(calls) != 1 || !errors.Is(calls[0], errInjected) {
		t.Fatalf("OnFatal calls: %v, want one naming the disk error", calls)
	}
}

// TestFailedCommitStopsStore injects a WAL write or sync failure into a
// data write and into a metadata commit (what a configuration save from an
// API handler does). Either stops the store, and not by a panic that a
// recovery up the stack could swallow: the store calls OnFatal (which stops
// the array process) and from then on refuses every read and write, so the
// failed, never durable change is never served from Pebble's memtable.
func TestFailedCommitStopsStore(t *testing.T) {
	for _, tc := range []struct {
		name   string
		commit func(s *Store) error
	}{
		{"data write", func(s *Store) error {
			return s.Volume(1).WriteAt(context.Background(), pattern(2, 0, ChunkSize), ChunkSize)
		}},
		{"metadata", func(s *Store) error {
			b := s.NewBatch()
			b.SetMeta("cfg/catalog", []byte("never durable"))
			return b.Commit()
		}},
		{"sync", func(s *Store) error {
			if err := s.Volume(1).WriteAtNoSync(context.Background(), pattern(2, 0, ChunkSize), ChunkSize); err != nil {
				return err
			}
			return s.Sync()
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fs, armed := injectFS(isWALWriteOrSync)
			rec := &fatalRecorder{}
			// Not closed: Pebble's commit pipeline is unusable after the
			// failure.
			s, err := Open("db", Options{FS: fs, CacheSize: 1 << 20, OnFatal: rec.onFatal})
			if err != nil {
				t.Fatal(err)
			}
			v := s.Volume(1)
			ctx := context.Background()
			mustWrite(t, v, pattern(1, 0, ChunkSize), 0)
			armed.Store(true)
			commitOnFailingDisk(t, rec, func() error { return tc.commit(s) })
			armed.Store(false)

			for name, err := range map[string]error{
				"write":  v.WriteAt(ctx, pattern(3, 0, ChunkSize), 2*ChunkSize),
				"unmap":  v.Unmap(ctx, 0, ChunkSize),
				"meta":   func() error { b := s.NewBatch(); b.SetMeta("k", nil); return b.Commit() }(),
				"delete": s.DeleteVolume(1),
				"read":   v.ReadAt(ctx, make([]byte, 2*ChunkSize), 0),
				"get":    func() error { _, _, err := s.GetMeta("cfg/catalog"); return err }(),
				"scan":   s.ScanMeta("", func(string, []byte) error { return nil }),
				"mapped": func() error { _, _, err := v.Mapped(ctx, 0, ChunkSize); return err }(),
				"check":  s.Check(ctx),
				"sync":   s.Sync(),
			} {
				if !errors.Is(err, ErrFailed) {
					t.Errorf("%s after a failed commit: %v, want ErrFailed", name, err)
				}
			}
			if n := len(rec.calls()); n != 1 {
				t.Errorf("OnFatal called %d times, want once", n)
			}
		})
	}
}

// TestFaultTrigger checks the test-only hook the end-to-end tests use to
// make a real array process meet a failing disk: nothing happens until the
// trigger file exists, then the next commit fails the store.
func TestFaultTrigger(t *testing.T) {
	dir := t.TempDir()
	trigger := filepath.Join(dir, "fail-wal")
	rec := &fatalRecorder{}
	s, err := Open(filepath.Join(dir, "store"), Options{FaultTrigger: trigger, OnFatal: rec.onFatal, CacheSize: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	v := s.Volume(1)
	mustWrite(t, v, pattern(1, 0, ChunkSize), 0)
	if err := os.WriteFile(trigger, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	func() {
		defer func() { _ = recover() }()
		_ = v.WriteAt(context.Background(), pattern(2, 0, ChunkSize), 0)
	}()
	if calls := rec.calls(); len(calls) != 1 || !errors.Is(calls[0], errInjectedWAL) {
		t.Fatalf("OnFatal calls after the trigger: %v, want one naming the injected fault", calls)
	}
	if err := v.ReadAt(context.Background(), make([]byte, ChunkSize), 0); !errors.Is(err, ErrFailed) {
		t.Fatalf("read after the injected fault: %v, want ErrFailed", err)
	}
}

// TestStalledDiskStopsStore: a disk that stops answering (a WAL sync that
// never returns, as on a hung controller or a lost network volume) holds
// every commit inside Pebble with its chunk stripes held, and no error
// ever comes back: the array would hang with its link up, so its peer
// would never take over. The store fails (OnFatal) once a disk operation
// has been stalled for Options.MaxDiskStall, and refuses reads from then
// on.
func TestStalledDiskStopsStore(t *testing.T) {
	var stall atomic.Bool
	release := make(chan struct{})
	fs := errorfs.Wrap(vfs.NewMem(), errorfs.InjectorFunc(func(op errorfs.Op) error {
		if stall.Load() && isWALWriteOrSync(op) {
			<-release
		}
		return nil
	}))
	defer close(release)
	fatal := make(chan error, 1)
	s, err := Open("db", Options{FS: fs, CacheSize: 1 << 20, MaxDiskStall: time.Second,
		OnFatal: func(err error) { fatal <- err }})
	if err != nil {
		t.Fatal(err)
	}
	v := s.Volume(1)
	mustWrite(t, v, pattern(1, 0, ChunkSize), 0)
	stall.Store(true)
	go func() {
		defer func() { _ = recover() }() // the commit may panic once released
		_ = v.WriteAt(context.Background(), pattern(2, 0, ChunkSize), ChunkSize)
	}()
	select {
	case err := <-fatal:
		if !errors.Is(err, ErrFailed) {
			t.Fatalf("OnFatal(%v), want an error wrapping ErrFailed", err)
		}
		t.Logf("OnFatal: %v", err)
	case <-time.After(60 * time.Second):
		t.Fatal("the store did not fail while its disk was stalled")
	}
	if err := v.ReadAt(context.Background(), make([]byte, ChunkSize), 0); !errors.Is(err, ErrFailed) {
		t.Fatalf("read after the stall: %v, want ErrFailed", err)
	}
}

// TestFailingFlushesStopStore: a disk that refuses every new sstable or
// blob file while the WAL still works (errors in one area of the disk)
// makes every flush fail; Pebble retries at once, forever, its memtables
// fill and every write then waits in the write stall while reads go on
// and the link stays up, so the peer never takes over. Once flushes have
// failed without a success for Options.MaxDiskStall the store fails.
// Flushes that fail for lack of space do not count: the space guard
// handles those (TestBallastReleasedWhenFull).
func TestFailingFlushesStopStore(t *testing.T) {
	fs, armed := injectFS(func(op errorfs.Op) bool {
		return op.Kind == errorfs.OpCreate && (strings.HasSuffix(op.Path, ".sst") || strings.HasSuffix(op.Path, ".blob"))
	})
	fatal := make(chan error, 1)
	s, err := Open("db", Options{FS: fs, CacheSize: 1 << 20, MaxDiskStall: time.Second,
		OnFatal: func(err error) { fatal <- err }})
	if err != nil {
		t.Fatal(err)
	}
	v := s.Volume(1)
	mustWrite(t, v, pattern(1, 0, 1<<20), 0)
	armed.Store(true)
	if _, err := s.db.AsyncFlush(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-fatal:
		if !errors.Is(err, ErrFailed) || !errors.Is(err, errInjected) {
			t.Fatalf("OnFatal(%v), want an error wrapping ErrFailed and the disk error", err)
		}
		t.Logf("OnFatal: %v", err)
	case <-time.After(60 * time.Second):
		t.Fatal("the store did not fail while every flush failed")
	}
	if err := v.ReadAt(context.Background(), make([]byte, ChunkSize), 0); !errors.Is(err, ErrFailed) {
		t.Fatalf("read after the failing flushes: %v, want ErrFailed", err)
	}
}

// TestWriterWaitingOnStripesSeesFailure: a writer that entered the store
// before it failed, and waited for the stripes of a chunk whose commit
// failed, must not go on: what it would read (the failed commit's data in
// Pebble's memtable) was never durable, and its own commit must not be
// acknowledged by a failed store. (An array's OnFatal exits at once; an
// embedder's may return.)
func TestWriterWaitingOnStripesSeesFailure(t *testing.T) {
	for name, op := range map[string]func(v *Volume) error{
		"write": func(v *Volume) error { return v.WriteAt(context.Background(), pattern(2, 0, 512), 0) },
		"compare and write": func(v *Volume) error {
			return v.CompareAndWrite(context.Background(), pattern(1, 0, 512), pattern(2, 0, 512), 0)
		},
		"unmap": func(v *Volume) error { return v.Unmap(context.Background(), 0, 512) },
	} {
		t.Run(name, func(t *testing.T) {
			s, _ := openMem(t, Options{OnFatal: func(error) {}})
			v := s.Volume(1)
			mustWrite(t, v, pattern(1, 0, ChunkSize), 0)
			var locks stripeSet
			locks.addRange(v.ID(), 0, 0)
			s.lockStripes(&locks) // as the commit that fails holds them
			res := make(chan error, 1)
			go func() { res <- op(v) }()
			// Wait until the writer is inside the store (sharing its life
			// lock): nothing but the stripes holds it there.
			for s.life.TryLock() {
				s.life.Unlock()
				runtime.Gosched()
			}
			_ = s.fail(errors.New("injected: a commit could not be made durable"))
			s.unlockStripes(&locks)
			if err := <-res; !errors.Is(err, ErrFailed) {
				t.Fatalf("%s that waited for the stripes of a failed commit: %v, want ErrFailed", name, err)
			}
		})
	}
}
