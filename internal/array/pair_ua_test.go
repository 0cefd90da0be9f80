package array

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/metro-storage/metro/internal/catalog"
	"github.com/metro-storage/metro/internal/scsi"
)

// Unit attentions and SCSI-2 reservations across a split of the pair
// (issue 10, items 2 and 4): every nexus must hear, on rejoin and after
// a failover, what it would have heard on a single array, and the loss
// of an array is the loss of every I_T nexus through it.

const uaIQN2 = "iqn.2026-11.io.metro:ua-host2"

// newUAPair is a pair whose volume is connected to a second host, h2,
// with h1's path through the follower and h2's through both arrays, all
// past their first unit attentions.
func newUAPair(t *testing.T) (h *pairHarness, h1B, h2A, h2B *initiator) {
	t.Helper()
	h = newPair(t)
	a, b := h.arrays[0], h.arrays[1]
	h.apply(a, catalog.CreateHost{Host: catalog.Host{Name: "h2", IQNs: []string{uaIQN2}}},
		catalog.Connect{Volume: pairVolume, Host: "h2"})
	h.waitLUN(b, uaIQN2, 0)
	h1B = newInitiator(b, pairIQN, 0x900)
	h2A = newInitiator(a, uaIQN2, 0x901)
	h2B = newInitiator(b, uaIQN2, 0x902)
	h.ready(h1B, h2A, h2B)
	return h, h1B, h2A, h2B
}

// newUAMediatedPair is newUAPair with a mediator and the follower
// preferred (it wins a race): h1's path through the follower, h2's
// through the sequencer.
func newUAMediatedPair(t *testing.T) (h *pairHarness, h1B, h2A *initiator) {
	t.Helper()
	h = newMediatedPair(t, 1)
	a, b := h.arrays[0], h.arrays[1]
	h.apply(a, catalog.CreateHost{Host: catalog.Host{Name: "h2", IQNs: []string{uaIQN2}}},
		catalog.Connect{Volume: pairVolume, Host: "h2"})
	h.waitLUN(b, uaIQN2, 0)
	h1B, h2A = newInitiator(b, pairIQN, 0x910), newInitiator(a, uaIQN2, 0x911)
	h.ready(h1B, h2A)
	return h, h1B, h2A
}

// stopArrayRun ends array i's Run, as if its process died (the peer
// sees the link go).
func (h *pairHarness) stopArrayRun(i int) {
	h.t.Helper()
	h.stopArray[i]()
	err := <-h.done[i]
	h.done[i] <- err // for stop, which waits for it again
	if err != nil {
		h.t.Fatalf("%s: Run: %v", h.arrays[i].cfg.Name, err)
	}
}

// startArrayRun opens array i again from its data directory and runs it
// (an array restarted).
func (h *pairHarness) startArrayRun(i int) {
	h.t.Helper()
	<-h.done[i]
	cfg := h.cfgs[i]
	a, err := Open(Options{Config: cfg, Logger: h.arrayLog.With("array", cfg.Name), FS: h.fs[i]})
	if err != nil {
		h.done[i] <- nil
		h.t.Fatalf("open %s again: %v", cfg.Name, err)
	}
	h.arrays[i] = a
	ctx, cancel := context.WithCancel(h.ctx)
	h.stopArray[i] = cancel
	ready := make(chan struct{})
	go func() { h.done[i] <- a.Run(ctx, func() { close(ready) }) }()
	select {
	case <-ready:
	case err := <-h.done[i]:
		h.done[i] <- err
		h.t.Fatalf("%s stopped before it was ready: %v", cfg.Name, err)
	}
}

// waitServingAlone waits until array i serves the pod alone (the other
// may be stopped).
func (h *pairHarness) waitServingAlone(i int) {
	h.t.Helper()
	me, other := h.arrays[i].cfg.Name, h.arrays[1-i].cfg.Name
	h.waitFor(me+" to serve the pod alone", 30*time.Second, func() (bool, string) {
		return h.sees(i, me) == catalog.StatusOnline && h.sees(i, other) != catalog.StatusOnline, h.podStatus(i)
	})
}

// heal mends the link and waits until the pod is in sync again.
func (h *pairHarness) heal() {
	h.t.Helper()
	h.proxy.Partition(false)
	h.waitInSync(60 * time.Second)
}

// writeEventually writes through in until the write is GOOD, failing
// the test with the last answer after 15 s.
func (h *pairHarness) writeEventually(in *initiator, lba, v uint64, what string) {
	h.t.Helper()
	var r *scsi.Result
	h.waitFor(what, 15*time.Second, func() (bool, string) {
		r, _ = in.doPastUA(write16(lba, unitData(lba, v)), unitData(lba, v), 0)
		return r.Status == scsi.StatusGood, describe(r)
	})
}

// hasUA reports whether uas holds a unit attention like s.
func hasUA(uas []scsi.Sense, s scsi.Sense) bool {
	return slices.ContainsFunc(uas, func(u scsi.Sense) bool { return u.Is(s) })
}

// mustGood runs a command (past unit attentions) and fails the test
// unless it is GOOD.
func mustGood(t *testing.T, in *initiator, what string, cdb, out []byte) {
	t.Helper()
	if r, _ := in.doPastUA(cdb, out, 0); r.Status != scsi.StatusGood {
		t.Fatalf("%s through %s: %s", what, in.arr.cfg.Name, describe(r))
	}
}

// TestPairSCSI2ReleasedWhenFollowerFenced: h1 holds RESERVE(6) through
// the follower when the link fails. The sequencer, serving alone, has
// lost every I_T nexus through the follower, and SPC-2 releases a SCSI-2
// reservation on the loss of its nexus: h2 writes through the sequencer
// (before, RESERVATION CONFLICT for as long as the split lasted, and the
// holder could not release, the follower answering NOT READY). On rejoin
// the holder's path hears I_T NEXUS LOSS OCCURRED (29/07), and only it.
func TestPairSCSI2ReleasedWhenFollowerFenced(t *testing.T) {
	h, h1B, h2A, h2B := newUAPair(t)
	mustGood(t, h1B, "RESERVE(6) by h1", reserve6(), nil)
	if r, _ := h2A.doPastUA(testUnitReady(), nil, 0); r.Status != scsi.StatusReservationConflict {
		t.Fatalf("TEST UNIT READY by h2 while h1 holds the reservation: %s", describe(r))
	}
	h.split()
	h.writeEventually(h2A, 64, 1, "a write by h2 through the sequencer serving alone (h1's reservation, held through the fenced follower, released)")
	h.heal()
	uas, r := h1B.drainUAs()
	if r.Status != scsi.StatusGood {
		t.Fatalf("TEST UNIT READY by h1 through the follower after rejoin: %s", describe(r))
	}
	if !hasUA(uas, scsi.SenseNexusLoss()) {
		t.Errorf("h1's path through the follower, whose reservation the split released, heard %v on rejoin; want I_T NEXUS LOSS OCCURRED", uas)
	}
	if uas, _ := h2B.drainUAs(); hasUA(uas, scsi.SenseNexusLoss()) {
		t.Errorf("h2's path through the follower, which held nothing, heard %v on rejoin", uas)
	}
	h.writeEventually(h2B, 72, 2, "a write by h2 through the follower after rejoin")
}

// TestPairSCSI2ReleasedWhenFollowerKilled: as above with the follower's
// process gone: the survivor releases the reservation held through it,
// and the restarted follower's nexuses start afresh.
func TestPairSCSI2ReleasedWhenFollowerKilled(t *testing.T) {
	h, h1B, h2A, _ := newUAPair(t)
	mustGood(t, h1B, "RESERVE(6) by h1", reserve6(), nil)
	h.stopArrayRun(1)
	h.log.Info("follower stopped")
	h.waitServingAlone(0)
	h.writeEventually(h2A, 64, 1, "a write by h2 through the survivor (h1's reservation, held through the dead follower, released)")
	h.startArrayRun(1)
	h.waitInSync(60 * time.Second)
	h2B := newInitiator(h.arrays[1], uaIQN2, 0x902)
	h.writeEventually(h2B, 72, 2, "a write by h2 through the restarted follower")
}

// TestPairTargetResetAnnouncedOnPeer: h2 holds RESERVE(6) through the
// sequencer; h1 sends TARGET WARM RESET through the follower. A reset
// releases a SCSI-2 reservation whoever holds it (SPC-2), and every I_T
// nexus of the unit hears of the reset with a unit attention: h2's path
// through the sequencer too (before, its reservation was gone without a
// word there), and h1's path through the sequencer.
func TestPairTargetResetAnnouncedOnPeer(t *testing.T) {
	h, h1B, h2A, h2B := newUAPair(t)
	a := h.arrays[0]
	h1A := newInitiator(a, pairIQN, 0x903)
	h.ready(h1A)
	mustGood(t, h2A, "RESERVE(6) by h2", reserve6(), nil)
	if resp := h1B.arr.Target().TaskManagement(context.Background(), h1B.nexus, scsi.TargetWarmReset, 0, 0); resp != scsi.TMFComplete {
		t.Fatalf("TARGET WARM RESET by h1 through the follower: response %d", resp)
	}
	for _, in := range []*initiator{h2A, h1A, h1B, h2B} {
		uas, r := in.drainUAs()
		if !hasUA(uas, scsi.SensePowerOnReset()) {
			t.Errorf("%s through %s heard %v after a target reset of the unit; want POWER ON, RESET", in.nexus.InitiatorName, in.arr.cfg.Name, uas)
		}
		if r.Status != scsi.StatusGood {
			t.Errorf("TEST UNIT READY by %s through %s after the reset released the reservation: %s", in.nexus.InitiatorName, in.arr.cfg.Name, describe(r))
		}
	}
}

// TestPairPreemptDuringSplitNoticed: h1 registers through the follower;
// while the follower is suspended, h2 preempts h1's registration through
// the sequencer. On rejoin h1's path hears REGISTRATIONS PREEMPTED
// (2A/05), as on one array; before, only ASYMMETRIC ACCESS STATE CHANGED.
func TestPairPreemptDuringSplitNoticed(t *testing.T) {
	h, h1B, h2A, h2B := newUAPair(t)
	const k1, k2 = 0xb1, 0xa2
	cdb, p := prRegister(k1, false)
	mustGood(t, h1B, "REGISTER by h1", cdb, p)
	cdb, p = prRegister(k2, false)
	mustGood(t, h2A, "REGISTER by h2", cdb, p)
	h.split()
	cdb, p = prPreempt(k2, k1, 0x01)
	mustGood(t, h2A, "PREEMPT of h1's key by h2 during the split", cdb, p)
	h.heal()
	uas, _ := h1B.drainUAs()
	if !hasUA(uas, scsi.SenseRegistrationsPreempted()) {
		t.Errorf("h1's path through the follower heard %v on rejoin; want REGISTRATIONS PREEMPTED", uas)
	}
	if uas, _ := h2B.drainUAs(); hasUA(uas, scsi.SenseRegistrationsPreempted()) {
		t.Errorf("h2's path through the follower, which preempted, heard %v on rejoin", uas)
	}
}

// TestPairLUNResetDuringSplitNoticed: a LOGICAL UNIT RESET through the
// sequencer while the follower is suspended reaches every nexus of the
// unit on one array; on rejoin the follower's paths hear of it (29/xx).
// A reset sent to the suspended follower is heard there at once and not
// again on rejoin.
func TestPairLUNResetDuringSplitNoticed(t *testing.T) {
	h, h1B, h2A, h2B := newUAPair(t)
	h.split()
	// h2's reset through the follower, which does not serve the pod: its
	// own paths hear of it now.
	if resp := h2B.arr.Target().TaskManagement(context.Background(), h2B.nexus, scsi.LogicalUnitReset, 0, 0); resp != scsi.TMFComplete {
		t.Fatalf("LOGICAL UNIT RESET through the suspended follower: response %d", resp)
	}
	h2B.drainUAs()
	h1B.drainUAs()
	h.heal()
	if uas, _ := h2B.drainUAs(); slices.ContainsFunc(uas, func(s scsi.Sense) bool { return s.ASC == 0x29 }) {
		t.Errorf("h2's path through the follower heard its own reset again on rejoin: %v", uas)
	}
	h.split()
	if resp := h2A.arr.Target().TaskManagement(context.Background(), h2A.nexus, scsi.LogicalUnitReset, 0, 0); resp != scsi.TMFComplete {
		t.Fatalf("LOGICAL UNIT RESET through the sequencer during the split: response %d", resp)
	}
	h.heal()
	for _, in := range []*initiator{h1B, h2B} {
		uas, _ := in.drainUAs()
		if !slices.ContainsFunc(uas, func(s scsi.Sense) bool { return s.ASC == 0x29 }) {
			t.Errorf("%s through the follower heard %v on rejoin after a LOGICAL UNIT RESET during the split; want a 29/xx", in.nexus.InitiatorName, uas)
		}
	}
}

// TestPairSequencerRestartNoticed: registrations made without APTPL are
// lost when the sequencer restarts (a power on); the follower, which
// kept them while it was suspended, installs the restarted sequencer's
// state on rejoin, and its paths must hear POWER ON, RESET as on one
// array (before, the keys vanished there without a word).
func TestPairSequencerRestartNoticed(t *testing.T) {
	h, h1B, _, _ := newUAPair(t)
	cdb, p := prRegister(0xb1, false)
	mustGood(t, h1B, "REGISTER by h1", cdb, p)
	h.stopArrayRun(0)
	h.log.Info("sequencer stopped")
	h.startArrayRun(0)
	h.waitInSync(60 * time.Second)
	uas, r := h1B.drainUAs()
	if r.Status != scsi.StatusGood {
		t.Fatalf("TEST UNIT READY by h1 through the follower after rejoin: %s", describe(r))
	}
	if !hasUA(uas, scsi.SensePowerOnReset()) {
		t.Errorf("h1's path through the follower heard %v after the sequencer restarted and lost its registration; want POWER ON, RESET", uas)
	}
	r, _ = h1B.doPastUA(prInReadKeys(), nil, 1024)
	keys, err := parseKeys(r.Data)
	if err != nil || len(keys) != 0 {
		t.Errorf("READ KEYS through the follower after the sequencer restarted: %v %v (%s), want none", keys, err, describe(r))
	}
}

// TestPairFailoverUnitAttentions: h2 registers through the sequencer,
// h1 through the follower; the link is cut and the follower, preferred,
// wins; h1 preempts h2's registration through the winner. When the old
// sequencer rejoins (as the follower now), h2's path through it hears
// REGISTRATIONS PREEMPTED as on one array.
func TestPairFailoverUnitAttentions(t *testing.T) {
	h, h1B, h2A := newUAMediatedPair(t)
	const k1, k2 = 0xb1, 0xa2
	cdb, p := prRegister(k1, false)
	mustGood(t, h1B, "REGISTER by h1", cdb, p)
	cdb, p = prRegister(k2, false)
	mustGood(t, h2A, "REGISTER by h2", cdb, p)
	h.proxy.Partition(true)
	h.waitWinner(1, "array-b to win and serve alone, array-a to suspend")
	cdb, p = prPreempt(k1, k2, 0x01)
	mustGood(t, h1B, "PREEMPT of h2's key by h1 through the winner", cdb, p)
	h.heal()
	if uas, _ := h2A.drainUAs(); !hasUA(uas, scsi.SenseRegistrationsPreempted()) {
		t.Errorf("h2's path through the old sequencer heard %v on rejoin; want REGISTRATIONS PREEMPTED", uas)
	}
}

// TestPairSCSI2ReleasedOnRemoval: h1 holds RESERVE(6) through the
// follower, which the sequencer then removes from the pod: the nexuses
// through the removed array are gone for the pod, and the reservation
// with them.
func TestPairSCSI2ReleasedOnRemoval(t *testing.T) {
	h, h1B, h2A, _ := newUAPair(t)
	a, b := h.arrays[0], h.arrays[1]
	mustGood(t, h1B, "RESERVE(6) by h1", reserve6(), nil)
	if err := a.UnstretchPod(h.ctx, pairPod, b.cfg.Name); err != nil {
		t.Fatalf("remove %s from the pod: %v", b.cfg.Name, err)
	}
	h.writeEventually(h2A, 64, 1, "a write by h2 through the array that kept the pod")
}

// TestPairLUNsChangedDuringSplitNoticed: a volume disconnected from h1
// through the sequencer while the follower is suspended (adding one
// waits for the follower to check it) reaches the follower with the
// pod's configuration on rejoin, and h1's path through it hears REPORTED
// LUNS DATA HAS CHANGED: the follower compares its LUN table with the one
// before, as for any change of configuration.
func TestPairLUNsChangedDuringSplitNoticed(t *testing.T) {
	h, h1B, _, _ := newUAPair(t)
	a, b := h.arrays[0], h.arrays[1]
	const vol2 = pairPod + "::vol2"
	h.apply(a, catalog.CreateVolume{Name: vol2, UUID: newID(), Size: pairVolSize, Created: time.Now()},
		catalog.Connect{Volume: vol2, Host: pairHost, LUN: lun(1)})
	h.waitLUN(b, pairIQN, 1)
	h1B.drainUAs()
	h.split()
	h.apply(a, catalog.Disconnect{Volume: vol2, Host: pairHost})
	h.heal()
	h.waitFor("h1 disconnected from vol2 on the follower", 30*time.Second, func() (bool, string) {
		luns := b.view.LUNs(pairIQN)
		return !slices.Contains(luns, 1), fmt.Sprintf("LUNs %v", luns)
	})
	if uas, _ := h1B.drainUAs(); !hasUA(uas, scsi.SenseLUNsChanged()) {
		t.Errorf("h1's path through the follower heard %v on rejoin after a volume was disconnected from it during the split; want REPORTED LUNS DATA HAS CHANGED", uas)
	}
}

// TestPairSCSI2ReleasedWhenSequencerFenced: the mirror image of
// TestPairSCSI2ReleasedWhenFollowerFenced after a failover: h2 holds
// RESERVE(6) through the sequencer, which is then isolated; the follower
// wins the race and releases the reservation held through the loser's
// port (it holds the state the sequencer shared), so h1 writes through
// it. On rejoin h2's path through the old sequencer hears I_T NEXUS LOSS
// OCCURRED.
func TestPairSCSI2ReleasedWhenSequencerFenced(t *testing.T) {
	h, h1B, h2A := newUAMediatedPair(t)
	mustGood(t, h2A, "RESERVE(6) by h2", reserve6(), nil)
	if r, _ := h1B.doPastUA(testUnitReady(), nil, 0); r.Status != scsi.StatusReservationConflict {
		t.Fatalf("TEST UNIT READY by h1 while h2 holds the reservation: %s", describe(r))
	}
	h.medProxy[0].Partition(true)
	h.proxy.Partition(true)
	h.waitWinner(1, "array-b to win, array-a isolated")
	h.writeEventually(h1B, 64, 1, "a write by h1 through the winner (h2's reservation, held through the fenced sequencer, released)")
	h.medProxy[0].Partition(false)
	h.heal()
	if uas, _ := h2A.drainUAs(); !hasUA(uas, scsi.SenseNexusLoss()) {
		t.Errorf("h2's path through the old sequencer heard %v on rejoin; want I_T NEXUS LOSS OCCURRED", uas)
	}
}
