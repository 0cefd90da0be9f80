package replication

import (
	"testing"
	"time"

	"github.com/metro-storage/metro/internal/catalog"
	"github.com/metro-storage/metro/internal/pod"
)

// TestReview6GrantLandsAfterLinkDown: the interleaving behind the pod
// package's TestReview6GrantAcceptedAfterLinkLoss* on the real driver.
// array-b receives pod1 from the fake array-a at e; a grants it. b's
// handler takes the pod's barrier, its machine accepts, and the record
// (synced at e) is being written when the link goes: the replicator
// tells the pods first (sessionDown, before Close waits for the
// session's handlers), and the link-down event takes only the machine's
// lock, so b's machine, receiving, suspends while the record is in
// flight. Then the record lands: Persisted(pAcceptGrant) makes b in sync
// with no session. It never pauses or races (its link-down came
// before), its host I/O waits for good (paths active, nothing served),
// and once a link returns it serves reads at e under the new session's
// lease while a, which never heard the grant's answer, raced for e+1
// (the pod package's sim shows a serving alone then: split brain).
func TestReview6GrantLandsAfterLinkDown(t *testing.T) {
	h := newHostilePeer(t)
	r := h.env.r
	const e = epoch1 + 1
	h.accepted("resync", msgResync, e, mustJSON(resyncMsg{Config: *h.pod1Config(func(*catalog.PodConfig) {})}))
	entered, release := make(chan struct{}), make(chan struct{})
	r.persistHook = func(podName string, rec pod.Record) error {
		if podName == "pod1" && rec.Epoch == e && rec.Synced == e {
			close(entered)
			<-release
		}
		return nil
	}
	granted := h.sendAsync(msgGrant, e, mustJSON(grantMsg{Pod: "pod1"}))
	<-entered
	p := r.pod("pod1")
	r.sessionDown(r.session()) // the link goes while the record is written
	if md := p.mode(); md.state != pod.Suspended {
		close(release)
		t.Fatalf("setting up: pod1 is %s after the link-down, want suspended (receiving when the link went)", md.state)
	}
	close(release)
	select {
	case <-granted:
	case <-time.After(10 * time.Second):
		t.Fatal("the grant's handler did not return")
	}
	md := p.mode()
	t.Logf("pod1 once the grant's record landed: %s at epoch %d, session %v, serving %t, active %t", md.state, md.epoch, md.sess != nil, md.serving, md.active)
	if md.state == pod.InSync && md.sess == nil {
		t.Errorf("pod1 is in sync with the link down: its machine never races (its link-down came first) and host I/O waits for good (active %t, serving %t); when a link returns it serves reads at epoch %d under that session's lease, while the peer, which never heard the grant's answer, raced for %d",
			md.active, md.serving, e, e+1)
	}
}
