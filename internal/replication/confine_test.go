package replication

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/metro-storage/metro/internal/catalog"
	"github.com/metro-storage/metro/internal/pod"
	"github.com/metro-storage/metro/internal/scsi"
	"github.com/metro-storage/metro/internal/store"
)

// TestPeerReleaseFromAnyInitiator checks the one forwarded command that
// need not come from a connected host: a RELEASE(6), which the peer sends
// when a nexus ends (its host may have been disconnected meanwhile). It
// gives up only its own nexus's reservation, and still only on the
// peer's port.
func TestPeerReleaseFromAnyInitiator(t *testing.T) {
	h := newHostilePeer(t)
	reserve := []byte{0x16, 0, 0, 0, 0, 0}
	release := []byte{opRelease6, 0, 0, 0, 0, 0}
	res, err := decodeResult(h.accepted("RESERVE(6) from h2", msgForward, epoch2, forwardCDB("pod2", uuidVol2, iqnH2, reserve, nil).encode()))
	if err != nil || res.Status != scsi.StatusGood {
		t.Fatalf("RESERVE(6) from h2: %+v %v", res, err)
	}
	res, err = decodeResult(h.accepted("RELEASE(6) from an initiator of no host", msgForward, epoch2, forwardCDB("pod2", uuidVol2, iqnEvil, release, nil).encode()))
	if err != nil || res.Status != scsi.StatusGood {
		t.Fatalf("RELEASE(6) from another initiator: %+v %v", res, err)
	}
	if h.env.LU(uuidVol2).Reservations().SCSI2 == nil {
		t.Fatal("a RELEASE(6) from another initiator released h2's reservation")
	}
	m := forwardCDB("pod2", uuidVol2, iqnH2, release, nil)
	m.Cmd.Nexus.RelativePortID = portB
	h.refused("RELEASE(6) on this array's port", msgForward, epoch2, m.encode(), "is not the peer's")
	m = forwardCDB("pod2", uuidVol2, iqnEvil, release, nil)
	m.Cmd.Nexus.InitiatorPort = iqnH2 + ",i,0x000000000001"
	h.refused("RELEASE(6) on another initiator's port", msgForward, epoch2, m.encode(), "is not a port of initiator")
	if h.env.LU(uuidVol2).Reservations().SCSI2 == nil {
		t.Fatal("h2's reservation is gone")
	}
	h.accepted("RELEASE(6) from h2", msgForward, epoch2, forwardCDB("pod2", uuidVol2, iqnH2, release, nil).encode())
	if h.env.LU(uuidVol2).Reservations().SCSI2 != nil {
		t.Fatal("h2's own RELEASE(6) left its reservation")
	}
}

// TestPeerWriteWaitsForGrowth checks the one out-of-range write the
// follower does not refuse at once: one mirrored right after the
// sequencer grew the volume, which arrives before the configuration that
// grows it here. It waits for that configuration and is applied.
func TestPeerWriteWaitsForGrowth(t *testing.T) {
	h := newHostilePeer(t)
	h.followInSync("pod1", epoch1)
	block := bytes.Repeat([]byte{0x5a}, store.BlockSize)
	write := (&writeMsg{Pod: "pod1", Volume: uuidVol1, Off: volSize, Length: store.BlockSize, Data: block}).encode()
	answer := make(chan error, 1)
	go func() {
		_, err := h.send(msgWrite, epoch1, write)
		answer <- err
	}()
	// The write is in: it waits for the volume to grow.
	for h.logs.Count("waiting for the configuration that grows it") == 0 {
		select {
		case err := <-answer:
			t.Fatalf("the write beyond the volume's end was answered before the volume grew: %v", err)
		case <-time.After(time.Millisecond):
		}
	}
	pc := h.pod1Config(func(pc *catalog.PodConfig) { pc.Volumes[0].Size = 2 * volSize })
	h.accepted("the configuration that grows pod1::vol1", msgApplyConfig, epoch1, mustJSON(pc))
	if err := <-answer; err != nil {
		t.Fatalf("the write to the blocks the volume gained: %v", err)
	}
	got := make([]byte, store.BlockSize)
	vol := h.env.st.Volume(h.env.cat.View().Volumes["pod1::vol1"].DataID)
	if err := vol.ReadAt(context.Background(), got, volSize); err != nil || !bytes.Equal(got, block) {
		t.Fatalf("the block the volume gained reads %x, %v", got[:8], err)
	}
}

// TestNoPodStartsAfterRun checks that a configuration change after Run
// returned (an API request or a pod's own epoch change landing during
// shutdown) starts no pod runtime: nothing would stop its goroutine, and
// the array's shutdown, which waits for them, would hang.
func TestNoPodStartsAfterRun(t *testing.T) {
	h := newHostilePeer(t)
	r := New(Config{Name: nameB, ID: idB, Env: h.env, Logger: h.logs.Logger(), Timeout: time.Second})
	runUntilPod(t, r, "pod2")
	now := time.Now()
	mustApply(t, h.env.cat, catalog.CreatePod{Name: "pod5", ID: "pod-5", Created: now, Array: catalog.PodArray{Name: nameB, ID: idB}},
		catalog.SetPodMembership{Name: "pod5", Arrays: []catalog.PodArray{{Name: nameB, ID: idB}, {Name: nameA, ID: idA}}, Sequencer: nameB, Epoch: 2})
	if p := r.pod("pod5"); p != nil {
		p.stop()
		t.Fatal("a pod stretched after Run returned got a runtime, which nothing stops")
	}
}

// TestRemoveFollowerWhileWritesWait: the link has just dropped and a
// host write waits for its pod, paused until the follower's lease has
// surely ended; meanwhile the administrator removes the unreachable
// follower. The removal once waited for the write (membership changes
// see no write half done) while holding the lock the pod needed to
// persist its new epoch and stop waiting: the write and the removal
// never completed, and every later write of the pod queued behind them.
// Both complete once the pre-elected sequencer serves alone. (The bound
// only detects a deadlock.)
func TestRemoveFollowerWhileWritesWait(t *testing.T) {
	h := newHostilePeer(t)
	r := h.env.r
	p := r.pod("pod2")
	now := time.Now()
	p.mu.Lock()
	// Paused, as after a link drop, pre-elected (no mediator): it
	// serves alone once the follower's lease has surely ended.
	p.mu.m = pod.New(pod.Config{Self: idB, Peer: idA, Timeout: time.Second}, pod.Record{Epoch: epoch2, Sequencer: idB, Synced: epoch2, Pre: idB}, now)
	p.mu.sess = nil
	p.mu.Unlock()
	vol := r.Volume("pod2", uuidVol2, h.env.st.Volume(h.env.cat.View().Volumes["pod2::vol2"].DataID))
	wrote := make(chan error, 1)
	go func() { wrote <- vol.WriteAt(context.Background(), bytes.Repeat([]byte{1}, store.BlockSize), 0) }()
	for p.hostWrites.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	removed := make(chan error, 1)
	go func() { removed <- r.Unstretch(context.Background(), "pod2", nameA) }()
	for what, c := range map[string]chan error{"the write": wrote, "the removal of the follower": removed} {
		select {
		case err := <-c:
			if err != nil {
				t.Fatalf("%s: %v", what, err)
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("%s did not complete (the pod is %s): deadlock", what, p.mode().state)
		}
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		cp := h.env.cat.View().Pods["pod2"]
		if len(cp.Arrays) == 1 && cp.Epoch > epoch2+1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("pod2 after the removal: %+v, want it alone here at an epoch after the one the pause took", cp)
		}
	}
}

// TestPeerCannotTakeALocalHost checks the changes the peer asks this
// array to order (it orders pod2, which they share) that name a host or
// host group: one that a pod not shared with the peer uses here is
// changed on this array only. Before, knowing h1's name was enough for
// the peer to reach the local pod's volume: connect pod2's volume to h1
// (now a host of a shared pod), then add its own initiator and CHAP
// secret to h1.
func TestPeerCannotTakeALocalHost(t *testing.T) {
	h := newHostilePeer(t)
	evilSecret := "evil-chap-secret"
	config := func(op catalog.Op) answer {
		t.Helper()
		data, err := catalog.MarshalOp(op)
		if err != nil {
			t.Fatal(err)
		}
		var ans answer
		if err := json.Unmarshal(h.accepted("config "+op.Kind(), msgConfig, 0, mustJSON(configMsg{Op: data})), &ans); err != nil {
			t.Fatal(err)
		}
		return ans
	}
	refused := func(op catalog.Op, want string) {
		t.Helper()
		before := h.env.cat.View()
		if ans := config(op); ans.Kind != "conflict" || !strings.Contains(ans.Error, want) {
			t.Errorf("config %s %+v: answer %+v, want a conflict saying %q", op.Kind(), op, ans, want)
		}
		if after := h.env.cat.View(); after != before {
			t.Errorf("config %s: the refused change changed the configuration", op.Kind())
		}
	}
	lun5, lun6 := uint64(5), uint64(6)
	refused(catalog.Connect{Volume: "pod2::vol2", Host: "h1", LUN: &lun5}, "host h1 is also connected to pod local")
	// h1 used by pod2 too (as the administrators may have set up), and
	// group g by the local pod: the peer still cannot change either.
	mustApply(t, h.env.cat, catalog.Connect{Volume: "pod2::vol2", Host: "h1", LUN: &lun5},
		catalog.CreateVolume{Name: "local::other", UUID: strings.Repeat("66", 16), Size: volSize},
		catalog.Connect{Volume: "local::other", HostGroup: "g", LUN: &lun6})
	refused(catalog.Connect{Volume: "pod2::vol2", HostGroup: "g", LUN: &lun6}, "host group g is also connected to pod local")
	lun7 := uint64(7)
	mustApply(t, h.env.cat, catalog.CreateVolume{Name: "pod2::vol3", UUID: strings.Repeat("77", 16), Size: volSize},
		catalog.Connect{Volume: "pod2::vol3", HostGroup: "g", LUN: &lun7})
	refused(catalog.SetHostAttr{Name: "h1", AddIQNs: []string{iqnEvil}, CHAPSecret: &evilSecret}, "host h1 is also connected to pod local")
	refused(catalog.SetHostGroupAttr{Name: "g", AddHosts: []string{"h2"}}, "host group g is also connected to pod local")
	if st := h.env.cat.View(); st.Access().Connected("local::secret", iqnEvil) || st.Hosts["h1"].CHAPSecret != secret1 {
		t.Fatalf("the peer reached the local pod: h1 %+v", *st.Hosts["h1"])
	}
	// h7 is used by pod2 only: the peer changes it.
	mustApply(t, h.env.cat, catalog.CreateHost{Host: catalog.Host{Name: "h7", IQNs: []string{"iqn.2026-01.test:h7"}}},
		catalog.Connect{Volume: "pod2::vol2", Host: "h7"})
	if ans := config(catalog.SetHostAttr{Name: "h7", CHAPUser: &evilSecret, CHAPSecret: &evilSecret}); ans.Error != "" {
		t.Fatalf("a change of h7, used by a shared pod only: %+v", ans)
	}
}

// TestPeerHostsOnlyWithTheirChange: a change the peer asks this array to
// order may bring the definitions of the hosts it connects (a host of
// the peer's own, which this array creates with the change), and no
// other host: one the change does not name is refused, and nothing
// changes here.
func TestPeerHostsOnlyWithTheirChange(t *testing.T) {
	h := newHostilePeer(t)
	evil := catalog.Host{Name: "h8", IQNs: []string{iqnEvil}}
	send := func(op catalog.Op, hosts ...catalog.Host) answer {
		t.Helper()
		data, err := catalog.MarshalOp(op)
		if err != nil {
			t.Fatal(err)
		}
		var ans answer
		if err := json.Unmarshal(h.accepted("config "+op.Kind(), msgConfig, 0, mustJSON(configMsg{Op: data, Hosts: hosts})), &ans); err != nil {
			t.Fatal(err)
		}
		return ans
	}
	mustApply(t, h.env.cat, catalog.CreateHost{Host: catalog.Host{Name: "h7", IQNs: []string{"iqn.2026-01.test:h7"}}},
		catalog.Connect{Volume: "pod2::vol2", Host: "h7"})
	before := h.env.cat.View()
	prefs := []string{nameA}
	for _, op := range []catalog.Op{
		catalog.SetHostAttr{Name: "h7", PreferredArrays: &prefs},
		catalog.Connect{Volume: "pod2::vol2", Host: "h9"},
	} {
		if ans := send(op, evil); ans.Kind != "conflict" || !strings.Contains(ans.Error, "host h8 comes with a "+op.Kind()+" change that does not name it") {
			t.Errorf("%s with host h8: %+v, want refused", op.Kind(), ans)
		}
	}
	if after := h.env.cat.View(); after != before || after.Hosts["h8"] != nil {
		t.Fatal("a refused change with a host the change does not name changed the configuration")
	}
}
