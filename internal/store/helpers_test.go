package store

import (
	"bytes"
	"context"
	"runtime"
	"syscall"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
)

func runtimeProcs() int { return runtime.GOMAXPROCS(0) }

// cpuTime returns the process's user+system CPU time in microseconds.
func cpuTime() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e3
}

// openMem opens a store on a fresh in-memory filesystem.
func openMem(t testing.TB, opts Options) (*Store, vfs.FS) {
	t.Helper()
	if opts.FS == nil {
		opts.FS = vfs.NewMem()
	}
	if opts.CacheSize == 0 {
		opts.CacheSize = 8 << 20
	}
	s, err := Open("db", opts)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s, opts.FS
}

// reopen closes s and opens the same filesystem again.
func reopen(t testing.TB, s *Store, fs vfs.FS, opts Options) *Store {
	t.Helper()
	if err := s.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	opts.FS = fs
	if opts.CacheSize == 0 {
		opts.CacheSize = 8 << 20
	}
	s2, err := Open("db", opts)
	if err != nil {
		t.Fatalf("reopen: %v", err)
	}
	t.Cleanup(func() { _ = s2.Close() })
	return s2
}

func mustWrite(t testing.TB, v *Volume, p []byte, off int64) {
	t.Helper()
	if err := v.WriteAt(context.Background(), p, off); err != nil {
		t.Fatalf("write volume %d at %d len %d: %v", v.ID(), off, len(p), err)
	}
}

func mustRead(t testing.TB, v *Volume, off int64, n int) []byte {
	t.Helper()
	p := make([]byte, n)
	for i := range p {
		p[i] = 0xee // make sure zeros are really written
	}
	if err := v.ReadAt(context.Background(), p, off); err != nil {
		t.Fatalf("read volume %d at %d len %d: %v", v.ID(), off, n, err)
	}
	return p
}

func mustCheck(t testing.TB, s *Store) {
	t.Helper()
	if err := s.Check(context.Background()); err != nil {
		t.Fatalf("check: %v", err)
	}
}

// pattern returns n bytes unique to (tag, offset) at 8-byte granularity and
// never all zero within any 512-byte block.
func pattern(tag uint64, off int64, n int) []byte {
	p := make([]byte, n)
	for i := 0; i < n; i += 8 {
		x := tag*0x9e3779b97f4a7c15 ^ uint64(off+int64(i)) | 1<<63
		for j := range 8 {
			p[i+j] = byte(x >> (8 * j))
		}
	}
	return p
}

func equalOrFail(t testing.TB, what string, got, want []byte) {
	t.Helper()
	if !bytes.Equal(got, want) {
		i := 0
		for i < len(got) && i < len(want) && got[i] == want[i] {
			i++
		}
		t.Fatalf("%s: differs at byte %d of %d (got %d bytes, want %d)", what, i, len(want), len(got), len(want))
	}
}
