package array

import (
	"context"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/metro-storage/metro/internal/catalog"
	"github.com/metro-storage/metro/internal/scsi"
)

// TestEradicationWindow destroys a volume and moves the injected clock:
// the volume is recoverable inside the window and eradicated, blocks and
// all, once it has passed.
func TestEradicationWindow(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	a, err := Open(Options{Config: testConfig(), FS: vfs.NewMem(), Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	setup(t, a)
	n := nexus(a, 1)
	if r := exec(t, a, n, write16(0, pattern(0, 1)), pattern(0, 1), 0); r.Status != scsi.StatusGood {
		t.Fatalf("write: %x", r.Sense)
	}
	vol := a.cat.View().Volumes["pod1::vol1"]
	if a.VolumeUsed(vol) != 4096 {
		t.Fatalf("used %d after one 4 KiB write", a.VolumeUsed(vol))
	}
	if err := a.cat.Apply(catalog.DestroyVolume{Name: vol.Name, At: now, Force: true}); err != nil {
		t.Fatal(err)
	}
	if a.view.LUN(testIQN, 0) != nil {
		t.Fatal("a destroyed volume is still visible")
	}
	now = now.Add(23 * time.Hour)
	a.EradicateExpired(context.Background())
	if a.cat.View().Volumes[vol.Name] == nil {
		t.Fatal("eradicated inside the window")
	}
	now = now.Add(time.Hour)
	a.EradicateExpired(context.Background())
	if a.cat.View().Volumes[vol.Name] != nil {
		t.Fatal("not eradicated after the window")
	}
	if used, _ := a.store.Usage(); used != 0 {
		t.Fatalf("array still uses %d bytes after eradication", used)
	}
}

// TestLUNMasking checks an initiator sees only its host's volumes.
func TestLUNMasking(t *testing.T) {
	a := openOn(t, vfs.NewMem())
	defer a.Close()
	setup(t, a)
	if got := a.view.LUNs(testIQN); len(got) != 1 || got[0] != 0 {
		t.Fatalf("host LUNs: %v", got)
	}
	if got := a.view.LUNs("iqn.2026-11.io.metro:stranger"); len(got) != 0 {
		t.Fatalf("a stranger sees LUNs %v", got)
	}
	if _, err := a.Authorize(a.cfg.ISCSI.Target, "iqn.2026-11.io.metro:stranger"); err == nil {
		t.Fatal("a stranger may log in")
	}
	if _, err := a.Authorize("iqn.2026-11.io.metro:other-array", testIQN); err == nil {
		t.Fatal("login to another target name accepted")
	}
	if err := a.cat.Apply(catalog.ResizeVolume{Name: "pod1::vol1", Size: 128 << 20}); err != nil {
		t.Fatal(err)
	}
	if lu := a.view.LUN(testIQN, 0); lu == nil || lu.Size() != 128<<20 {
		t.Fatal("resize did not reach the logical unit")
	}
}
