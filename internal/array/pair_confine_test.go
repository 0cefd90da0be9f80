package array

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/metro-storage/metro/internal/catalog"
	"github.com/metro-storage/metro/internal/scsi"
)

// TestPairReservationReleasedAfterDisconnect: a host holds a SCSI-2
// reservation of a stretched volume through the follower, is then
// disconnected from the volume and its session ends. The follower sends
// the release to the sequencer on that nexus's behalf; the sequencer must
// take it although the host is no longer connected, or the reservation
// stays held for good and every other host of the volume gets
// RESERVATION CONFLICT through both arrays.
func TestPairReservationReleasedAfterDisconnect(t *testing.T) {
	h := newPair(t)
	a, b := h.arrays[0], h.arrays[1]
	const iqn2 = "iqn.2026-11.io.metro:pair-host2"
	h.apply(a, catalog.CreateHost{Host: catalog.Host{Name: "h2", IQNs: []string{iqn2}}},
		catalog.Connect{Volume: pairVolume, Host: "h2"})
	h.waitLUN(b, iqn2, 0)
	h1B := newInitiator(b, pairIQN, 0x200)
	h2A := newInitiator(a, iqn2, 0x300)
	h2B := newInitiator(b, iqn2, 0x400)
	h.ready(h1B, h2A, h2B)
	if r, _ := h1B.doPastUA(reserve6(), nil, 0); r.Status != scsi.StatusGood {
		t.Fatalf("RESERVE(6) by h1 through %s: %s", b.cfg.Name, describe(r))
	}
	if r, _ := h2A.doPastUA(testUnitReady(), nil, 0); r.Status != scsi.StatusReservationConflict {
		t.Fatalf("TEST UNIT READY by h2 through %s while h1 holds the reservation: %s, want RESERVATION CONFLICT", a.cfg.Name, describe(r))
	}
	// h1 is disconnected (through the follower: the sequencer orders
	// it), then its session on the follower ends.
	if err := b.Apply(h.ctx, catalog.Disconnect{Volume: pairVolume, Host: pairHost}); err != nil {
		t.Fatalf("disconnect h1: %v", err)
	}
	h.waitFor("h1 disconnected on the follower", 30*time.Second, func() (bool, string) {
		return len(b.view.LUNs(pairIQN)) == 0, "LUNs of h1 on the follower"
	})
	b.target.NexusLost(h1B.nexus)
	lba := uint64(64)
	for _, in := range []*initiator{h2A, h2B} {
		if r, _ := in.doPastUA(write16(lba, unitData(lba, 5)), unitData(lba, 5), 0); r.Status != scsi.StatusGood {
			t.Fatalf("WRITE by h2 through %s after h1, disconnected, ended its session: %s (h1's reservation was not released)", in.arr.cfg.Name, describe(r))
		}
	}
}

// apply applies ops through arr, failing the test on an error.
func (h *pairHarness) apply(arr *Array, ops ...catalog.Op) {
	h.t.Helper()
	for _, op := range ops {
		if err := arr.Apply(h.ctx, op); err != nil {
			h.t.Fatalf("%s through %s: %v", op.Kind(), arr.cfg.Name, err)
		}
	}
}

// waitLUN waits until the initiator sees lun through arr.
func (h *pairHarness) waitLUN(arr *Array, iqn string, lun uint64) {
	h.t.Helper()
	h.waitFor(fmt.Sprintf("%s to see LUN %d through %s", iqn, lun, arr.cfg.Name), 30*time.Second, func() (bool, string) {
		luns := arr.view.LUNs(iqn)
		return slices.Contains(luns, lun), fmt.Sprintf("LUNs %v", luns)
	})
}

// ready clears the initiators' unit attentions, failing the test unless
// each then gets GOOD.
func (h *pairHarness) ready(ins ...*initiator) {
	h.t.Helper()
	for _, in := range ins {
		if _, r := in.drainUAs(); r.Status != scsi.StatusGood {
			h.t.Fatalf("TEST UNIT READY through %s: %s", in.arr.cfg.Name, describe(r))
		}
	}
}
