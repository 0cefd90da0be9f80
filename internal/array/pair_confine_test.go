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

// TestPairGrowWhileWriting: a host writes the blocks a volume is about to
// gain, through the sequencer, while the volume grows. The sequencer grows
// its copy and mirrors the write before the follower has installed the
// new size; the follower must take the write (it waits for the new
// configuration) rather than refuse it, which would end the link and
// take every stretched pod out of sync.
func TestPairGrowWhileWriting(t *testing.T) {
	h := newPair(t)
	a, b := h.arrays[0], h.arrays[1]
	inA, inB := newInitiator(a, pairIQN, 0x100), newInitiator(b, pairIQN, 0x200)
	h.ready(inA, inB)
	size := uint64(pairVolSize)
	var early int
	for round := range 10 {
		grown := size + 1<<20
		lba, v := size/512, uint64(round+1)
		done := make(chan *scsi.Result, 1)
		go func() {
			in := newInitiator(a, pairIQN, 0x1000+uint64(round))
			for {
				r := in.do(write16(lba, unitData(lba, v)), unitData(lba, v), 0)
				s, ok := senseOf(r)
				switch {
				case ok && s.Key == scsi.KeyUnitAttention:
				case ok && s.Key == scsi.KeyIllegalRequest:
					early++ // before the sequencer grew the volume
				default:
					done <- r
					return
				}
			}
		}()
		h.apply(a, catalog.ResizeVolume{Name: pairVolume, Size: grown})
		if r := <-done; r.Status != scsi.StatusGood {
			t.Fatalf("round %d: WRITE of the new blocks: %s", round, describe(r))
		}
		if ok, why := h.inSync(); !ok {
			t.Fatalf("round %d: the pod left in sync when its volume grew under a write: %s", round, why)
		}
		if r, _ := inB.doPastUA(read16(lba, 8), nil, 4096); r.Status != scsi.StatusGood || unitValue(lba, r.Data) != v {
			t.Fatalf("round %d: READ of the new blocks through %s: %s", round, b.cfg.Name, describe(r))
		}
		size = grown
	}
	t.Logf("%d writes of the new blocks were refused before the volume grew", early)
}

// TestPairHostOfPodsOrderedByEach: host h1 is connected to a volume of
// pod1, which array-a orders, and of pod2, which array-b orders. Either
// array's administrator may change h1 (the change concerns both pods,
// which the pair shares); it reaches both arrays.
func TestPairHostOfPodsOrderedByEach(t *testing.T) {
	h := newPair(t)
	a, b := h.arrays[0], h.arrays[1]
	h.apply(b, catalog.CreatePod{Name: "pod2", ID: newID(), Created: time.Now(), Array: catalog.PodArray{Name: b.cfg.Name, ID: b.id.ID}},
		catalog.CreateVolume{Name: "pod2::vol2", UUID: newID(), Size: pairVolSize, Created: time.Now()},
		catalog.Connect{Volume: "pod2::vol2", Host: pairHost}) // h1 came with pod1
	if err := b.StretchPod(h.ctx, "pod2", a.cfg.Name); err != nil {
		t.Fatalf("stretch pod2: %v", err)
	}
	h.waitLUN(a, pairIQN, 1)
	for i, arr := range []*Array{a, b, a} {
		prefs := []string{arr.cfg.Name}
		if err := arr.Apply(h.ctx, catalog.SetHostAttr{Name: pairHost, PreferredArrays: &prefs}); err != nil {
			t.Fatalf("change %d: host %s, of pods ordered by each array, changed through %s: %v", i, pairHost, arr.cfg.Name, err)
		}
		for _, x := range []*Array{a, b} {
			if got := x.cat.View().Hosts[pairHost].PreferredArrays; !slices.Equal(got, prefs) {
				t.Fatalf("change %d through %s: host %s on %s prefers %v, want %v", i, arr.cfg.Name, pairHost, x.cfg.Name, got, prefs)
			}
		}
	}
}

// TestPairHandoverAndBack: the sequencer hands the pod to the follower
// (metro pod remove --array SEQUENCER), which serves it alone; the new
// sequencer stretches it back; the data written through each stays. The
// peer's checks let every message of those moves through.
func TestPairHandoverAndBack(t *testing.T) {
	h := newPair(t)
	a, b := h.arrays[0], h.arrays[1]
	inA, inB := newInitiator(a, pairIQN, 0x100), newInitiator(b, pairIQN, 0x200)
	h.ready(inA, inB)
	write := func(in *initiator, lba, v uint64) {
		t.Helper()
		if r, _ := in.doPastUA(write16(lba, unitData(lba, v)), unitData(lba, v), 0); r.Status != scsi.StatusGood {
			t.Fatalf("WRITE through %s: %s", in.arr.cfg.Name, describe(r))
		}
	}
	read := func(in *initiator, lba uint64) uint64 {
		t.Helper()
		r, _ := in.doPastUA(read16(lba, 8), nil, 4096)
		if r.Status != scsi.StatusGood {
			t.Fatalf("READ through %s: %s", in.arr.cfg.Name, describe(r))
		}
		return unitValue(lba, r.Data)
	}
	write(inB, 0, 1)
	if err := a.UnstretchPod(h.ctx, pairPod, a.cfg.Name); err != nil {
		t.Fatalf("hand the pod over to %s: %v", b.cfg.Name, err)
	}
	if cp := b.cat.View().Pods[pairPod]; cp.Sequencer != b.cfg.Name || len(cp.Arrays) != 1 {
		t.Fatalf("the pod on %s after the handover: %+v", b.cfg.Name, cp)
	}
	write(inB, 8, 2)
	if got := read(inB, 0); got != 1 {
		t.Fatalf("after the handover %s reads %d, want 1", b.cfg.Name, got)
	}
	if err := b.StretchPod(h.ctx, pairPod, a.cfg.Name); err != nil {
		t.Fatalf("stretch the pod back to %s: %v", a.cfg.Name, err)
	}
	h.waitInSync(60 * time.Second)
	write(inA, 16, 3)
	for _, in := range []*initiator{inA, inB} {
		for lba, want := range map[uint64]uint64{0: 1, 8: 2, 16: 3} {
			if got := read(in, lba); got != want {
				t.Fatalf("after stretching back, %s reads %d at %d, want %d", in.arr.cfg.Name, got, lba, want)
			}
		}
	}
	// The new sequencer removes the other array: it keeps its copy aside.
	if err := a.UnstretchPod(h.ctx, pairPod, a.cfg.Name); err != nil {
		t.Fatalf("remove %s through it: %v", a.cfg.Name, err)
	}
	h.waitFor(a.cfg.Name+" to set its copy aside", 30*time.Second, func() (bool, string) {
		cp := a.cat.View().Pods[pairPod]
		return cp != nil && cp.Pending != nil, fmt.Sprintf("%+v", cp)
	})
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
