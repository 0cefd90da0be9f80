package array

import (
	"testing"
	"time"

	"github.com/metro-storage/metro/internal/scsi"
)

// TestPairFollowerHoldsWritesOnLinkReset: the link's connections are
// reset (both ends see them close at once, as when the peer's process
// dies) while the follower's read lease still runs. The pod pauses on
// both arrays and the race is decided; a write through the follower
// meanwhile must wait for it, as the paths it reports active promise, and
// never be answered NOT READY (unavailable): hosts fail such a path, and a
// host whose other path led to the dead array saw an I/O error. The
// failure-scenario suite (full storage failure at a site, array reboot)
// found it when the sequencer was killed.
func TestPairFollowerHoldsWritesOnLinkReset(t *testing.T) {
	h := newMediatedPair(t, 1)
	_, inB := h.hostPorts()
	const lba = 96
	if r, ok := writeValue(inB, lba, 1); !ok {
		t.Fatalf("a write through the follower before the reset: %s", describe(r))
	}
	// Bytes lost for a moment (a heartbeat's worth), then the route
	// mended: the connections that lost bytes are reset, well inside the
	// lease.
	h.proxy.Partition(true)
	time.Sleep(150 * time.Millisecond)
	h.proxy.Partition(false)
	h.log.Info("link reset")
	// Through the pause and the race (the follower is preferred: it
	// wins, at about the link's timeout).
	deadline := time.Now().Add(3 * time.Second)
	for v := uint64(2); time.Now().Before(deadline); v++ {
		r, ok := writeValue(inB, lba, v)
		if ok {
			continue
		}
		if s, _ := senseOf(r); s.Key == scsi.KeyNotReady && s.ASC == 0x04 && s.ASCQ == 0x0a {
			continue // transitioning: hosts retry it on the same path
		}
		t.Fatalf("a write through the follower after the link reset: %s (%s); hosts fail the path", describe(r), h.describeViews())
	}
	h.waitInSync(60 * time.Second)
}
