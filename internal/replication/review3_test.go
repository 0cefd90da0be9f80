package replication

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/metro-storage/metro/internal/catalog"
	"github.com/metro-storage/metro/internal/link"
	"github.com/metro-storage/metro/internal/pod"
)

// Adversarial schedules of a third review, on the driver (see
// peer_test.go for the harness: array-b is real, array-a is the test).

// TestReview3StretchAfterCrashBetweenRecordAndInstall: array-a stretches
// a new pod (pod9) to array-b at epoch e-1 and proposes a resync at e.
// b has no copy, so its handler decides on a temporary machine, saves the
// acceptance (record e, a the owner, behind) and only then installs the
// pod's configuration; b dies between the two (or the install fails).
// After b's restart its catalog has no pod9, while its record store holds
// the acceptance at e. a asks b's record: b answers that it has no copy
// (the answer comes from the catalog), so a's machine proposes e again,
// and again after every refusal (it learns no later epoch of b: the
// refusal is fed as ResyncFailed(e, 0), as the driver does). Since the
// review fixes, b refuses a resync at the epoch it is at already, even
// the one it accepted, and it is at e: the stretch never completes (a
// serves alone for good, with the link up; the administrator is told
// nothing but a resync refused every RetryAfter). Before, b took the
// proposal it had accepted up again. Rule broken: after the faults end
// the pod heals (gets back in sync). Suggested fix: the driver feeds a
// refusal with the epoch the peer is at (the refusal says it), or the
// record handlePodState answers comes from the record store when the
// catalog has no such pod, or the temporary machine's path accepts the
// proposal it finds durably accepted (the handler, not an old session,
// is asking).
func TestReview3StretchAfterCrashBetweenRecordAndInstall(t *testing.T) {
	h := newHostilePeer(t)
	r := h.env.r
	const e = 12
	pc := h.pod1Config(func(pc *catalog.PodConfig) {
		pc.Pod.Name, pc.Pod.ID, pc.Pod.Epoch = "pod9", "pod-9", e-1
		pc.Volumes = []catalog.Volume{{Name: "pod9::vol9", Pod: "pod9", UUID: strings.Repeat("99", 16), Size: volSize}}
		pc.Connections, pc.Hosts, pc.HostGroups = nil, nil, nil
	})
	// What b's handler saved before it died: the acceptance, with no
	// configuration installed.
	accepted := pod.Record{Epoch: e, Sequencer: idA}
	if err := r.saveRecord("pod9", "pod-9", accepted, false); err != nil {
		t.Fatal(err)
	}
	if r.env.Catalog().View().Pods["pod9"] != nil || r.pod("pod9") != nil {
		t.Fatal("setting up: pod9 is installed on b")
	}

	// a's machine of pod9: it owns e-1 alone (just stretched).
	now := time.Now()
	cfg := pod.Config{Self: idA, Peer: idB, Timeout: time.Second}
	m := pod.New(cfg, pod.Stretched(idA, e-1), now)
	m.MediatorUp(true, now)
	m.LinkUp(now)
	peerRecord := func() []pod.Action {
		out, err := h.send(msgPodState, 0, mustJSON(podStateMsg{Pod: "pod9", ID: "pod-9"}))
		if err != nil {
			t.Fatalf("b's record of pod9: %v", err)
		}
		var ans podStateMsg
		if err := json.Unmarshal(out, &ans); err != nil {
			t.Fatal(err)
		}
		return append(m.PeerMediatorUp(ans.Mediator), m.PeerRecord(ans.Record, ans.Has, now)...)
	}
	acts := peerRecord()
	var refusals []string
	for round := 0; round < 5; round++ {
		var epoch uint64
		for _, a := range acts {
			if a.Kind == pod.StartResync {
				epoch = a.Epoch
			}
		}
		if epoch == 0 {
			t.Fatalf("round %d: a proposes no resync: %v (a: %s %s)", round, acts, m.State(), m.Record())
		}
		_, err := h.send(msgResync, epoch, mustJSON(resyncMsg{Config: *pc}))
		if err == nil {
			if p := r.pod("pod9"); p == nil || p.mode().state != pod.Receiving || p.mode().epoch != epoch {
				t.Fatalf("b accepted the resync at %d but does not receive at it", epoch)
			}
			return
		}
		var re *link.RemoteError
		if !errors.As(err, &re) {
			t.Fatalf("the resync at %d: %v", epoch, err)
		}
		refusals = append(refusals, re.Msg)
		// The driver: b's record asked again, then the failure fed;
		// the machine proposes again after RetryAfter.
		peerRecord()
		m.ResyncFailed(epoch, 0, now)
		now = now.Add(cfg.Timeout)
		acts = m.Tick(now)
	}
	t.Fatalf("b refuses every resync a proposes, the pod never gets its second copy:\n  %s", strings.Join(refusals, "\n  "))
}
