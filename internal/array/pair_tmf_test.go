package array

import (
	"context"
	"testing"
	"time"

	"github.com/metro-storage/metro/internal/catalog"
	"github.com/metro-storage/metro/internal/scsi"
)

// TestPairResetsConfinedToCallersVolume: in a stretched pod, host h1
// sees vol1 and host h2 sees vol2 (each at its LUN 0); h2 holds a SCSI-2
// reservation on vol2 through the sequencer. A TARGET WARM RESET and a
// LOGICAL UNIT RESET from h1 through the follower reset vol1 only: vol2's
// reservation stays on both arrays and h2 gets no unit attention.
func TestPairResetsConfinedToCallersVolume(t *testing.T) {
	h := newPair(t)
	a, b := h.arrays[0], h.arrays[1]
	const iqn2 = "iqn.2026-11.io.metro:pair-host2"
	h.apply(a, catalog.CreateVolume{Name: "pod1::vol2", UUID: newID(), Size: pairVolSize, Created: time.Now()},
		catalog.CreateHost{Host: catalog.Host{Name: "h2", IQNs: []string{iqn2}}},
		catalog.Connect{Volume: "pod1::vol2", Host: "h2"})
	h.waitLUN(b, iqn2, 0)
	h1B := newInitiator(b, pairIQN, 0x200)
	h2A := newInitiator(a, iqn2, 0x300)
	h2B := newInitiator(b, iqn2, 0x400)
	h.ready(h1B, h2A, h2B)
	if r := h2A.do(reserve6(), nil, 0); r.Status != scsi.StatusGood {
		t.Fatalf("RESERVE(6) of vol2 through %s: %s", a.cfg.Name, describe(r))
	}
	for _, fn := range []scsi.TMF{scsi.TargetWarmReset, scsi.LogicalUnitReset} {
		if resp := b.Target().TaskManagement(context.Background(), h1B.nexus, fn, 0, 0); resp != scsi.TMFComplete {
			t.Fatalf("TMF %d from h1 through %s: response %d", fn, b.cfg.Name, resp)
		}
		for _, in := range []*initiator{h2A, h2B} {
			if r := in.do(testUnitReady(), nil, 0); r.Status == scsi.StatusCheckCondition {
				t.Fatalf("TMF %d from h1, which cannot see vol2: h2 through %s got %s", fn, in.arr.cfg.Name, describe(r))
			}
		}
		if r := h2B.do(reserve6(), nil, 0); r.Status != scsi.StatusReservationConflict {
			t.Fatalf("TMF %d from h1 released h2's reservation of vol2: RESERVE(6) from another nexus through %s: %s", fn, b.cfg.Name, describe(r))
		}
		if uas, _ := h1B.drainUAs(); len(uas) == 0 {
			t.Fatalf("TMF %d: h1's own volume got no unit attention through %s", fn, b.cfg.Name)
		}
	}
}
