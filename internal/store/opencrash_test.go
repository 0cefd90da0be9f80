package store

import (
	"encoding/binary"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/cockroachdb/pebble/v2/vfs/errorfs"
)

// crashAtOp wraps a crashable filesystem so that the n-th filesystem
// operation (from 1) takes a power-loss image of it before it runs, with
// unsynced% of what was not synced surviving; image returns it (nil if
// fewer than n operations ran). ops counts the operations.
type crashAtOp struct {
	fs       *vfs.MemFS
	n        int64
	unsynced int
	rng      *rand.Rand
	ops      atomic.Int64
	mu       sync.Mutex
	img      *vfs.MemFS
}

func (c *crashAtOp) wrap() vfs.FS {
	return errorfs.Wrap(c.fs, errorfs.InjectorFunc(func(errorfs.Op) error {
		if c.ops.Add(1) == c.n {
			c.mu.Lock()
			c.img = c.fs.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: c.unsynced, RNG: c.rng})
			c.mu.Unlock()
		}
		return nil
	}))
}

func (c *crashAtOp) image() *vfs.MemFS {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.img
}

// writeFormat1Store makes the store a format 1 metro left on fs: the
// format record and one chunk with a single checksum.
func writeFormat1Store(t *testing.T, fs vfs.FS) []byte {
	t.Helper()
	po := pebbleOptions(Options{FS: fs}, slog.New(slog.DiscardHandler), nil, nil)
	db, err := pebble.Open("db", po)
	if err != nil {
		t.Fatal(err)
	}
	data := pattern(7, 0, ChunkSize)
	v1 := append(append([]byte{}, data...), binary.LittleEndian.AppendUint32(nil, chunkSum(castagnoli(), 1, 0, data))...)
	b := db.NewBatch()
	_ = b.Set(sysKey(sysFormatKey), binary.BigEndian.AppendUint32(nil, 1), nil)
	_ = b.Set(chunkKey(1, 0), v1, nil)
	_ = b.Merge(allocKey(1, 0), []byte{formList, 0x80, 0x00}, nil)
	if err := b.Commit(pebble.Sync); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	return data
}

// TestCrashDuringOpen loses power at every filesystem operation of an
// Open that creates a store, and of one that upgrades a format 1 store:
// the store left behind always opens again, with its data (a store whose
// creation was cut short before its format record was durable is empty,
// not "not a metro store").
func TestCrashDuringOpen(t *testing.T) {
	for _, tc := range []struct {
		name    string
		prepare func(t *testing.T, fs vfs.FS) []byte // the data of volume 1 chunk 0, nil: none
	}{
		{"create", func(*testing.T, vfs.FS) []byte { return nil }},
		{"upgrade", writeFormat1Store},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// Count the operations of a whole Open.
			base := vfs.NewCrashableMem()
			tc.prepare(t, base)
			probe := &crashAtOp{fs: base}
			s, err := Open("db", Options{FS: probe.wrap(), CacheSize: 1 << 20})
			if err != nil {
				t.Fatal(err)
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			total := probe.ops.Load()
			crashes := 0
			for n := int64(1); n <= total; n++ {
				for _, unsynced := range []int{0, 100} {
					fs := vfs.NewCrashableMem()
					want := tc.prepare(t, fs)
					c := &crashAtOp{fs: fs, n: n, unsynced: unsynced, rng: rand.New(rand.NewPCG(uint64(n), 1))}
					s, err := Open("db", Options{FS: c.wrap(), CacheSize: 1 << 20})
					if err != nil {
						t.Fatalf("open: %v", err)
					}
					if err := s.Close(); err != nil {
						t.Fatal(err)
					}
					img := c.image()
					if img == nil {
						continue
					}
					crashes++
					s, err = Open("db", Options{FS: img, CacheSize: 1 << 20})
					if err != nil {
						t.Fatalf("power lost before operation %d of %d of Open (unsynced data kept: %d%%): reopen: %v",
							n, total, unsynced, err)
					}
					if want != nil {
						equalOrFail(t, "chunk after the interrupted upgrade", mustRead(t, s.Volume(1), 0, ChunkSize), want)
					}
					mustWrite(t, s.Volume(2), pattern(2, 0, 512), 0)
					mustCheck(t, s)
					if v, _, err := formatRecord(s.db); err != nil || v != FormatVersion {
						t.Fatalf("format record after recovery: %d %v", v, err)
					}
					if err := s.Close(); err != nil {
						t.Fatal(err)
					}
					if v, ok, err := readFormatFile(img, "db"); err != nil || !ok || v != FormatVersion {
						t.Fatalf("format file after recovery: %d %v %v", v, ok, err)
					}
				}
			}
			if crashes < int(total) {
				t.Fatalf("only %d crashes of %d operations were taken", crashes, total)
			}
			t.Logf("%d operations, %d crash images reopened", total, crashes)
		})
	}
}
