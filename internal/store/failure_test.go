package store

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/cockroachdb/pebble/v2/vfs/errorfs"
)

// TestFailedCommitStopsChanges injects a WAL write failure. Pebble cannot
// continue after it (its commit pipeline is broken), so the store panics
// (fail-stop: the array process exits and recovers on restart); a caller
// that recovers the panic finds every later change refused with ErrFailed
// while reads keep working.
func TestFailedCommitStopsChanges(t *testing.T) {
	var armed atomic.Bool
	injected := errors.New("injected disk error")
	fs := errorfs.Wrap(vfs.NewMem(), errorfs.InjectorFunc(func(op errorfs.Op) error {
		if armed.Load() && strings.HasSuffix(op.Path, ".log") &&
			(op.Kind == errorfs.OpFileWrite || op.Kind == errorfs.OpFileSync || op.Kind == errorfs.OpFileSyncData) {
			return injected
		}
		return nil
	}))
	// Not closed: Pebble's commit pipeline is unusable after the failure.
	s, err := Open("db", Options{FS: fs, CacheSize: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	v := s.Volume(1)
	ctx := context.Background()
	mustWrite(t, v, pattern(1, 0, ChunkSize), 0)
	armed.Store(true)
	func() {
		defer func() {
			r := recover()
			if r == nil || !strings.Contains(r.(string), "injected disk error") {
				t.Fatalf("write on failing disk: recovered %v, want a panic naming the disk error", r)
			}
		}()
		err := v.WriteAt(ctx, pattern(2, 0, ChunkSize), ChunkSize)
		t.Fatalf("write on failing disk returned %v", err)
	}()
	armed.Store(false)
	for name, err := range map[string]error{
		"write":  v.WriteAt(ctx, pattern(3, 0, ChunkSize), 2*ChunkSize),
		"unmap":  v.Unmap(ctx, 0, ChunkSize),
		"meta":   func() error { b := s.NewBatch(); b.SetMeta("k", nil); return b.Commit() }(),
		"delete": s.DeleteVolume(1),
	} {
		if !errors.Is(err, ErrFailed) {
			t.Errorf("%s after a failed commit: %v, want ErrFailed", name, err)
		}
	}
	equalOrFail(t, "read after failure", mustRead(t, v, 0, ChunkSize), pattern(1, 0, ChunkSize))
}
