package store

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/cockroachdb/pebble/v2/vfs/errorfs"
)

// errInjected is the disk error the fault tests inject.
var errInjected = errors.New("injected disk error")

// injectFS wraps a fresh in-memory filesystem with an injector that fails
// the operations fail selects while armed.
func injectFS(fail func(op errorfs.Op) bool) (*errorfs.FS, *atomic.Bool) {
	var armed atomic.Bool
	fs := errorfs.Wrap(vfs.NewMem(), errorfs.InjectorFunc(func(op errorfs.Op) error {
		if armed.Load() && fail(op) {
			return errInjected
		}
		return nil
	}))
	return fs, &armed
}

// flushAndReopen moves everything into sstables and blob files and reopens
// the store, so that later reads come from the files (not the memtable or
// the block cache).
func flushAndReopen(t *testing.T, s *Store, fs vfs.FS) *Store {
	t.Helper()
	if err := s.db.Flush(); err != nil {
		t.Fatal(err)
	}
	return reopen(t, s, fs, Options{})
}

// prState is a metadata value of the size of a volume's persistent
// reservation state with a few registrations: above Pebble's value
// separation threshold, so it is stored in a blob file.
func prState() []byte {
	return bytes.Repeat([]byte("registration key 0123456789abcdef;"), 70)
}

// TestBlobReadErrorSurfaces: Pebble's Get reports a failed read of a value
// kept in a blob file only through the closer it returns. Every read of
// the store must see that error: metadata (persistent reservations are
// never loaded as empty) and chunk data.
func TestBlobReadErrorSurfaces(t *testing.T) {
	fs, armed := injectFS(func(op errorfs.Op) bool {
		return strings.HasSuffix(op.Path, ".blob") && op.Kind == errorfs.OpFileReadAt
	})
	s, _ := openMem(t, Options{FS: fs})
	b := s.NewBatch()
	b.SetMeta("pr/vol1", prState())
	if err := b.Commit(); err != nil {
		t.Fatal(err)
	}
	v := s.Volume(1)
	mustWrite(t, v, pattern(1, 0, 2*ChunkSize), 0)
	s = flushAndReopen(t, s, fs)
	v = s.Volume(1)
	armed.Store(true)

	val, ok, err := s.GetMeta("pr/vol1")
	if err == nil {
		t.Fatalf("GetMeta with the blob file unreadable: ok=%v, %d bytes, no error", ok, len(val))
	}
	if !errors.Is(err, errInjected) {
		t.Errorf("GetMeta: %v, want the disk error", err)
	}
	err = s.ScanMeta("pr/", func(string, []byte) error { return nil })
	if !errors.Is(err, errInjected) {
		t.Errorf("ScanMeta: %v, want the disk error", err)
	}
	for _, r := range [][2]int64{{0, 512}, {0, 2 * ChunkSize}} {
		err := v.ReadAt(context.Background(), make([]byte, r[1]), r[0])
		if !errors.Is(err, ErrCorrupt) || !errors.Is(err, errInjected) {
			t.Errorf("read %d+%d: %v, want a medium error naming the disk error", r[0], r[1], err)
		}
	}
	// A partial write must not trust what it could not read.
	if err := v.WriteAt(context.Background(), pattern(2, 0, 512), 0); err == nil {
		t.Errorf("partial write over an unreadable chunk succeeded")
	}

	armed.Store(false)
	val, ok, err = s.GetMeta("pr/vol1")
	if err != nil || !ok || !bytes.Equal(val, prState()) {
		t.Fatalf("GetMeta after the fault: ok=%v err=%v, %d bytes", ok, err, len(val))
	}
	equalOrFail(t, "data after the fault", mustRead(t, v, 0, 2*ChunkSize), pattern(1, 0, 2*ChunkSize))
}

// corruptBlobs flips one byte in the middle of every blob file of the store.
func corruptBlobs(t *testing.T, fs vfs.FS) {
	t.Helper()
	names, err := fs.List("db")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, name := range names {
		if !strings.HasSuffix(name, ".blob") {
			continue
		}
		f, err := fs.OpenReadWrite(fs.PathJoin("db", name), vfs.WriteCategoryUnspecified)
		if err != nil {
			t.Fatal(err)
		}
		st, err := f.Stat()
		if err != nil {
			t.Fatal(err)
		}
		b := make([]byte, 1)
		off := st.Size() / 4
		if _, err := f.ReadAt(b, off); err != nil {
			t.Fatal(err)
		}
		b[0] ^= 0x20
		if _, err := f.WriteAt(b, off); err != nil {
			t.Fatal(err)
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
		n++
	}
	if n == 0 {
		t.Fatal("no blob file to corrupt")
	}
}

// damageBlobs flushes s, closes it, flips a byte in each of its blob files
// and opens it again.
func damageBlobs(t *testing.T, s *Store, fs vfs.FS) *Store {
	t.Helper()
	if err := s.db.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	corruptBlobs(t, fs)
	s, err := Open("db", Options{FS: fs, CacheSize: 8 << 20})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// TestBlobCorruptionSurfaces flips a byte of a blob file holding a
// metadata value: GetMeta reports corruption instead of returning a wrong
// or empty value as present.
func TestBlobCorruptionSurfaces(t *testing.T) {
	s, fs := openMem(t, Options{})
	b := s.NewBatch()
	b.SetMeta("pr/vol1", prState())
	if err := b.Commit(); err != nil {
		t.Fatal(err)
	}
	s = damageBlobs(t, s, fs)
	val, ok, err := s.GetMeta("pr/vol1")
	if !errors.Is(err, ErrCorrupt) {
		t.Fatalf("GetMeta of a corrupt blob value: ok=%v, %d bytes, err=%v; want ErrCorrupt", ok, len(val), err)
	}
	t.Logf("corrupt metadata: %v", err)
}

// TestPebbleDetectedCorruption damages a blob file holding chunk values,
// so that Pebble's own block checksum, not the store's, catches it: every
// read path reports a *CorruptError at the first damaged block (multi-chunk
// reads included), Check lists every damaged block instead of stopping at
// the first, and a partial write repairs the blocks it covers while the
// rest of the chunk stays unreadable.
func TestPebbleDetectedCorruption(t *testing.T) {
	const chunks = 64
	s, fs := openMem(t, Options{})
	v := s.Volume(3)
	ctx := context.Background()
	mustWrite(t, v, pattern(1, 0, chunks*ChunkSize), 0)
	s = damageBlobs(t, s, fs)
	v = s.Volume(3)

	// Which chunks did the damage reach? Single-chunk reads say.
	var damaged []int64
	for c := int64(0); c < chunks; c++ {
		err := v.ReadAt(ctx, make([]byte, ChunkSize), c*ChunkSize)
		var ce *CorruptError
		switch {
		case err == nil:
		case errors.As(err, &ce) && ce.Volume == 3 && ce.Offset == c*ChunkSize:
			damaged = append(damaged, c)
		default:
			t.Fatalf("read chunk %d: %v, want nil or a CorruptError at its first block", c, err)
		}
	}
	if len(damaged) == 0 || len(damaged) == chunks {
		t.Fatalf("%d of %d chunks damaged; the test needs some, not all", len(damaged), chunks)
	}
	t.Logf("damaged chunks: %v", damaged)

	// A read of everything reports the first damaged block.
	err := v.ReadAt(ctx, make([]byte, chunks*ChunkSize), 0)
	var ce *CorruptError
	if !errors.As(err, &ce) || ce.Offset != damaged[0]*ChunkSize {
		t.Fatalf("read of all chunks: %v, want a CorruptError at byte %d", err, damaged[0]*ChunkSize)
	}
	// A read starting inside a damaged chunk names its first block.
	err = v.ReadAt(ctx, make([]byte, 3*ChunkSize), damaged[0]*ChunkSize+1536)
	if !errors.As(err, &ce) || ce.Offset != damaged[0]*ChunkSize+1536 {
		t.Fatalf("read from inside a damaged chunk: %v, want a CorruptError at byte %d", err, damaged[0]*ChunkSize+1536)
	}

	// Check lists every damaged block.
	err = s.Check(ctx)
	var che *CheckError
	if !errors.As(err, &che) || len(che.Problems) != 0 {
		t.Fatalf("check: %v, want a CheckError with damaged blocks only", err)
	}
	var listed []int64
	for _, d := range che.Damaged {
		if d.Volume != 3 || d.Offset%ChunkSize != 0 || d.Length%ChunkSize != 0 {
			t.Fatalf("check: damaged run %+v is not whole chunks of volume 3", d)
		}
		for off := d.Offset; off < d.Offset+d.Length; off += ChunkSize {
			listed = append(listed, off/ChunkSize)
		}
	}
	if fmt.Sprint(listed) != fmt.Sprint(damaged) {
		t.Fatalf("check lists chunks %v as damaged, reads found %v", listed, damaged)
	}

	// Rewriting one block of a damaged chunk mends that block; the other
	// blocks of the chunk stay unreadable (their data is lost), and
	// reading them names the first.
	c := damaged[0]
	mustWrite(t, v, pattern(2, c*ChunkSize+512, 512), c*ChunkSize+512)
	equalOrFail(t, "rewritten block", mustRead(t, v, c*ChunkSize+512, 512), pattern(2, c*ChunkSize+512, 512))
	err = v.ReadAt(ctx, make([]byte, ChunkSize), c*ChunkSize)
	if !errors.As(err, &ce) || ce.Offset != c*ChunkSize {
		t.Fatalf("read of the chunk's other blocks: %v, want a CorruptError at byte %d", err, c*ChunkSize)
	}
	err = v.ReadAt(ctx, make([]byte, 2*ChunkSize), c*ChunkSize+512)
	if !errors.As(err, &ce) || ce.Offset != c*ChunkSize+1024 {
		t.Fatalf("read from the rewritten block on: %v, want a CorruptError at byte %d", err, c*ChunkSize+1024)
	}
	// Rewriting the rest mends the chunk.
	mustWrite(t, v, pattern(2, c*ChunkSize, 512), c*ChunkSize)
	mustWrite(t, v, pattern(2, c*ChunkSize+1024, ChunkSize-1024), c*ChunkSize+1024)
	equalOrFail(t, "mended chunk", mustRead(t, v, c*ChunkSize, ChunkSize), pattern(2, c*ChunkSize, ChunkSize))
}
