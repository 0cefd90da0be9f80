package store

import (
	"bytes"
	"context"
	"math/rand/v2"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// TestWriteAtNoSyncThenSync: writes made without sync are visible at
// once and survive a crash after Sync, even when the crash keeps none of
// the unsynced data.
func TestWriteAtNoSyncThenSync(t *testing.T) {
	fs := vfs.NewCrashableMem()
	s, err := Open("db", Options{FS: fs, CacheSize: 4 << 20})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	v := s.Volume(1)
	data := bytes.Repeat([]byte{0x5a}, 64<<10)
	for i := 0; i < 16; i++ {
		if err := v.WriteAtNoSync(ctx, data, int64(i)*int64(len(data))); err != nil {
			t.Fatal(err)
		}
	}
	got := make([]byte, len(data))
	if err := v.ReadAt(ctx, got, 15*int64(len(data))); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read before sync: %v", err)
	}
	if err := s.Sync(); err != nil {
		t.Fatal(err)
	}
	image := fs.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: 0, RNG: rand.New(rand.NewPCG(1, 2))})
	_ = s.Close()
	s2, err := Open("db", Options{FS: image, CacheSize: 4 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	for i := 0; i < 16; i++ {
		if err := s2.Volume(1).ReadAt(ctx, got, int64(i)*int64(len(data))); err != nil || !bytes.Equal(got, data) {
			t.Fatalf("piece %d lost after Sync and a crash (err %v)", i, err)
		}
	}
}
