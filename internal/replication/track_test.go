package replication

import (
	"testing"

	"github.com/metro-storage/metro/internal/pod"
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
	var drive func(acts []pod.Action)
	drive = func(acts []pod.Action) {
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
