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

// Adversarial tests of the pod protocol's driver (a review of issue 9),
// on the hostile-peer harness: array-b is the array under test, the fake
// array-a its peer.

// restartPod stops this array's runtime of a pod and, once rec is its
// durable record, starts a fresh one as the array does when it starts:
// what the runtime kept in memory is gone.
func (h *hostilePeer) restartPod(name, id string, rec pod.Record) {
	h.t.Helper()
	r := h.env.r
	r.mu.Lock()
	old := r.mu.pods[name]
	delete(r.mu.pods, name)
	r.publishPods()
	r.mu.Unlock()
	old.stop()
	// The record moves the catalog's epoch and sequencer too, whose
	// change starts the new runtime (syncPods).
	if err := r.saveRecord(name, id, rec, false); err != nil {
		h.t.Fatal(err)
	}
	r.syncPods()
	p := r.pod(name)
	if p == nil || p == old {
		h.t.Fatalf("pod %s: no new runtime", name)
	}
	if got := p.mode(); got.epoch != rec.Epoch {
		h.t.Fatalf("pod %s restarted at epoch %d, want %d", name, got.epoch, rec.Epoch)
	}
}

// TestReviewRestartedLoserKeepsUnacknowledgedWrites: array-b ordered
// pod2, in sync with array-a at epoch 7; a write through b reached b's
// disk while its mirror to a was cut off (never acknowledged: b's
// runtime recorded the region as one a lacks). a won the race (epoch 8);
// b adopted 8 as a's, behind, and then restarted (an array reboot):
// that record of its own writes, kept in memory, is gone. When a
// resyncs b (epoch 9, resuming from 7, what its tracking holds from),
// b must not resume without those regions, or the copy never
// overwrites them: after the resync, b serves data a never had (the two
// copies differ, and a read through b returns a write that was never
// acknowledged and that a read through a does not see). On i9-pod b
// resumes from its complete copy at 7 listing no region of its own:
// the restarted runtime treats an array that does not order the pod
// now as one that never ordered writes (its tracking "holds from its
// last in-sync epoch").
func TestReviewRestartedLoserKeepsUnacknowledgedWrites(t *testing.T) {
	h := newHostilePeer(t)
	// b's copy at 7 has a block a lacks: b wrote it as the sequencer and
	// the mirror never arrived.
	vol := h.env.st.Volume(h.env.cat.View().Volumes["pod2::vol2"].DataID)
	if err := vol.WriteAt(context.Background(), bytes.Repeat([]byte{0x7b}, store.BlockSize), 0); err != nil {
		t.Fatal(err)
	}
	// b lost the race to a at epoch 8, and restarted.
	h.restartPod("pod2", "pod-2", pod.Record{Epoch: 8, Sequencer: idA, Synced: epoch2})
	// a, the winner, resyncs b from what its tracking holds since 7.
	pc := h.env.cat.View().PodConfig("pod2")
	if pc.Pod.Sequencer != nameA {
		t.Fatalf("pod2's sequencer here: %s, want %s (the record's)", pc.Pod.Sequencer, nameA)
	}
	var out []byte
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		var err error
		if out, err = h.send(msgResync, 9, mustJSON(resyncMsg{Config: *pc, ResumeFrom: epoch2})); err == nil {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("the resync at 9: %v", err)
		}
	}
	var ans resumeAnswer
	if err := json.Unmarshal(out, &ans); err != nil {
		t.Fatal(err)
	}
	if !ans.Resume {
		return // a complete copy overwrites everything
	}
	if _, ok := ans.dirtyRegions()[uuidVol2][0]; !ok {
		t.Fatalf("array-b, restarted after losing the race, resumes the copy from epoch %d (cursor %+v) listing its own regions %v: "+
			"the block it wrote as the sequencer, which array-a never had, is never copied over, and the copies differ after the resync",
			epoch2, ans.Cursor, ans.dirtyRegions())
	}
}
