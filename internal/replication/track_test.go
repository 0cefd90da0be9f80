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

// TestClearTrackingWithPeerInSync: the change tracking is cleared when
// the machine learns that the peer's copy is complete and durable (the
// grant's answer, PeerInSync), in the same step, not when the pod's
// goroutine gets to the queued action later: a write noted in between
// as one the peer lacks (its mirror failed right after the grant, the
// link lost) must stay tracked, or the resync after the race never
// copies it and the copies differ. The pod's goroutine is not running
// here, so the queued actions run when the test says.
func TestClearTrackingWithPeerInSync(t *testing.T) {
	h := newHostilePeer(t)
	r := h.env.r
	p := newPodRT(r, h.env.cat.View().Pods["pod2"], pod.Stretched(idB, 9))
	now := r.now()
	// Drive the machine to a granted copy at epoch 10, its records made
	// durable at once.
	var drive func(acts []task)
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
