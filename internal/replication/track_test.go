package replication

import (
	"bytes"
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/metro-storage/metro/internal/pod"
	"github.com/metro-storage/metro/internal/store"
)

// resyncingPod returns a pod runtime whose machine owns epoch 10 and
// resyncs the peer (syncing), its records made durable at once by drive;
// the pod's goroutine is not running, so queued actions run when the
// test says.
func resyncingPod(t *testing.T) (p *podRT, drive func(acts []task), now time.Time) {
	h := newHostilePeer(t)
	r := h.env.r
	p = newPodRT(r, h.env.cat.View().Pods["pod2"], pod.Stretched(idB, 9))
	now = r.now()
	drive = func(acts []task) {
		for _, a := range acts {
			if a.Kind == pod.Persist {
				drive(p.apply(func(m *pod.Machine) []pod.Action { return m.Persisted(a.ID, now) }))
			}
		}
	}
	drive(p.apply(func(m *pod.Machine) []pod.Action { return m.LinkUp(now) }))
	drive(p.apply(func(m *pod.Machine) []pod.Action {
		return m.PeerRecord(pod.Record{Epoch: 9, Sequencer: idB, Synced: epoch2}, true, now)
	}))
	drive(p.apply(func(m *pod.Machine) []pod.Action { return m.ResyncStarted(10, now) }))
	return p, drive, now
}

// TestClearTrackingWithPeerInSync: the change tracking is cleared when
// the machine learns that the peer's copy is complete and durable (the
// grant's answer, PeerInSync), in the same step, not when the pod's
// goroutine gets to the queued action later: a write noted in between
// as one the peer lacks (its mirror failed right after the grant, the
// link lost) must stay tracked, or the resync after the race never
// copies it and the copies differ. The pod's goroutine is not running
// here, so the queued actions run when the test says.
func TestClearTrackingWithPeerInSync(t *testing.T) {
	p, drive, now := resyncingPod(t)
	drive(p.apply(func(m *pod.Machine) []pod.Action { return m.BaselineDone(10) }))
	if md := p.mode(); md.state != pod.Syncing || md.epoch != 10 {
		t.Fatalf("setting up: %s at %d", md.state, md.epoch)
	}
	p.take()
	p.event(func(m *pod.Machine) []pod.Action { return m.PeerInSync(10, now) })
	rg := region{uuid: uuidVol2, off: 0, n: 4096}
	p.noteWrite(rg, false, false)
	for _, a := range p.take() {
		p.do(a)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, ok := p.mu.track.dirty[uuidVol2][0]; !ok || p.mu.track.from != 10 {
		t.Fatalf("a write the peer lacks, noted after it accepted the grant, is no longer tracked (tracking from %d: %v)", p.mu.track.from, p.mu.track.dirty)
	}
}

// TestResyncWaitsForOwnWrites: a replicated write of this array that
// started while it served the pod (here: array-b ordered pod2) is still
// in flight when the peer's resync request arrives, b having lost the
// race meanwhile. The resync must be answered only once that write is
// done (its region tracked or the copy cleared after it): answered
// before, the copy is cleared (or its own regions listed) first and the
// write lands afterwards, a block the winner never had and the copy
// never overwrites.
func TestResyncWaitsForOwnWrites(t *testing.T) {
	h := newHostilePeer(t)
	h.restartPod("pod2", "pod-2", pod.Record{Epoch: 8, Sequencer: idA, Synced: epoch2})
	p := h.env.r.pod("pod2")
	pc := h.env.cat.View().PodConfig("pod2")
	vol := h.env.st.Volume(h.env.cat.View().Volumes["pod2::vol2"].DataID)
	// The write in flight holds the pod's I/O lock shared, as mirror
	// does from its start to its tracking.
	p.ioMu.RLock()
	type result struct {
		out []byte
		err error
	}
	answered := make(chan result, 1)
	go func() {
		out, err := h.send(msgResync, 9, mustJSON(resyncMsg{Config: *pc}))
		answered <- result{out, err}
	}()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		select {
		case res := <-answered:
			p.ioMu.RUnlock()
			t.Fatalf("the resync was answered (%s, %v) while a write of this array to the pod was still in flight", res.out, res.err)
		default:
		}
		if !p.ioMu.TryRLock() {
			break // the handler waits for the write
		}
		p.ioMu.RUnlock()
		if time.Now().After(deadline) {
			p.ioMu.RUnlock()
			t.Fatal("the resync neither answered nor waited")
		}
	}
	// The write lands, and is done.
	if err := vol.WriteAt(context.Background(), bytes.Repeat([]byte{0x7b}, store.BlockSize), 0); err != nil {
		t.Fatal(err)
	}
	p.ioMu.RUnlock()
	res := <-answered
	if res.err != nil {
		t.Fatal(res.err)
	}
	var ans resumeAnswer
	if err := json.Unmarshal(res.out, &ans); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, store.BlockSize)
	if err := vol.ReadAt(context.Background(), buf, 0); err != nil {
		t.Fatal(err)
	}
	if !ans.Resume && !bytes.Equal(buf, make([]byte, store.BlockSize)) {
		t.Fatalf("a fresh copy starts with a block written before it was cleared")
	}
}

// TestEpochChangeWaitsForPeerWrites: array-b, an in-sync follower, is
// applying a write of the old sequencer when the link is lost, and wins
// the race. Its record taking the next epoch is written only once that
// write is applied (the pod's barrier, taken exclusively): written
// first, b would serve alone at the new epoch while a write of the old
// one lands in its copy afterwards, over a block it may have
// acknowledged since (the pod simulation's TestSimBarrierHoldsRaceWin).
// The pod's goroutine is not running here; the test performs the
// persist as it would.
func TestEpochChangeWaitsForPeerWrites(t *testing.T) {
	h := newHostilePeer(t)
	r := h.env.r
	p := newPodRT(r, h.env.cat.View().Pods["pod1"], pod.Record{Epoch: epoch1, Sequencer: idA, Synced: epoch1})
	now := r.now()
	p.apply(func(m *pod.Machine) []pod.Action { return m.MediatorUp(true, now) })
	p.apply(func(m *pod.Machine) []pod.Action { return m.Tick(now) }) // elect
	p.apply(func(m *pod.Machine) []pod.Action {
		return m.Elected(epoch1, pod.ElectResult{Won: true, Epoch: epoch1 + 1, Winner: idB}, now)
	})
	later := now.Add(2 * r.cfg.Timeout) // past the fence
	var take *task
	for _, a := range p.apply(func(m *pod.Machine) []pod.Action { return m.Tick(later) }) {
		if a.Kind == pod.Persist {
			take = &a
		}
	}
	if take == nil || take.Record.Epoch != epoch1+1 {
		t.Fatalf("setting up: no record taking epoch %d: %v", epoch1+1, take)
	}
	p.applyMu.RLock() // a write of the old sequencer being applied
	done := make(chan struct{})
	go func() {
		defer close(done)
		p.do(*take)
	}()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		select {
		case <-done:
			p.applyMu.RUnlock()
			t.Fatalf("the record taking epoch %d was written while a write of epoch %d was being applied", epoch1+1, epoch1)
		default:
		}
		if !p.applyMu.TryRLock() {
			break // it waits for the write
		}
		p.applyMu.RUnlock()
		if time.Now().After(deadline) {
			p.applyMu.RUnlock()
			t.Fatal("the record neither waited nor was written")
		}
	}
	p.applyMu.RUnlock()
	<-done
	if md := p.mode(); md.state != pod.Alone || md.epoch != epoch1+1 {
		t.Fatalf("after the write: %s at %d", md.state, md.epoch)
	}
}

// TestTrackingKeepsWritesFailedDuringGrant: a write mirrored while the
// grant is under way whose mirror failed (the follower did not answer in
// time: the link is ending) may be missing at the follower, which can
// still accept the grant before the session closes. The grant's answer
// must not clear it from the change tracking: if this array then wins
// the race it acknowledges the write (written here), and the resync after
// it must send the write's region, or the follower never gets an
// acknowledged write. What was tracked before the copy listed its regions
// (and so was copied) is cleared. Before the fix the grant's answer
// cleared everything.
func TestTrackingKeepsWritesFailedDuringGrant(t *testing.T) {
	p, drive, now := resyncingPod(t)
	copied := region{uuid: uuidVol2, off: 0, n: 4096}
	failed := region{uuid: uuidVol2, off: 5 * regionSize, n: 4096}
	// Written alone before the copy: the copy lists it and sends it.
	p.noteWrite(copied, false, false)
	p.mu.Lock()
	listed := p.copyListLocked()
	p.mu.Unlock()
	if _, ok := listed[uuidVol2][0]; !ok {
		t.Fatalf("setting up: the copy does not list the region written before it: %v", listed)
	}
	drive(p.apply(func(m *pod.Machine) []pod.Action { return m.BaselineDone(10) }))
	p.mu.Lock()
	granting := p.mu.m.Granting()
	p.mu.Unlock()
	if md := p.mode(); md.state != pod.Syncing || md.epoch != 10 || !granting {
		t.Fatalf("setting up: %s at %d, not granting", md.state, md.epoch)
	}
	// The grant is out; a mirrored write fails (its region is noted as
	// one the follower may lack), and then the grant's answer comes.
	p.noteWrite(failed, false, false)
	p.event(func(m *pod.Machine) []pod.Action { return m.PeerInSync(10, now) })
	if md := p.mode(); md.state != pod.InSync {
		t.Fatalf("setting up: %s after the grant's answer", md.state)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, ok := p.mu.track.dirty[uuidVol2][failed.off]; !ok || p.mu.track.from != 10 {
		t.Errorf("a write whose mirror failed while the grant was out is no longer tracked once the grant is answered (tracking from %d: %v): a resync after a race this array wins would never send it", p.mu.track.from, p.mu.track.dirty)
	}
	if _, ok := p.mu.track.dirty[uuidVol2][copied.off]; ok {
		t.Errorf("a region the copy sent before the grant is still tracked after it: %v", p.mu.track.dirty)
	}
}
