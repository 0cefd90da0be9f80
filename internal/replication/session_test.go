package replication

import (
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/metro-storage/metro/internal/link"
	"github.com/metro-storage/metro/internal/pod"
)

// TestRequestsBoundToTheirSession: the machine decides a resync
// proposal and a grant on one link session; the link is lost and comes
// back before the driver's calls run. They must not go on the new
// session (a review found, with the pod simulation, that the peer takes
// an old resync as the one it accepted, clears the copy made since,
// takes the old grant and serves while this array, having ended the
// link meanwhile, wins the race and serves alone): the driver sends a
// request only on the session the machine decided it on, and fails it
// otherwise. The pod's goroutine is not running here; the test performs
// the actions as it would.
func TestRequestsBoundToTheirSession(t *testing.T) {
	h := newHostilePeer(t)
	r := h.env.r
	var mu sync.Mutex
	var got []string
	serve := func(req link.Message) (link.Message, error) {
		if req.Type == msgResync || req.Type == msgGrant {
			mu.Lock()
			got = append(got, msgName(req.Type))
			mu.Unlock()
		}
		return link.Message{Type: req.Type}, nil
	}
	h.serve.Store(&serve)
	p := newPodRT(r, h.env.cat.View().Pods["pod2"], pod.Stretched(idB, 9))
	now := r.now()
	// The first session: an object only compared, never used (the
	// calls must not reach it either way).
	old := new(link.Session)
	setSess := func(s *link.Session) {
		p.mu.Lock()
		p.mu.sess = s
		p.mu.Unlock()
	}
	setSess(old)
	p.apply(func(m *pod.Machine) []pod.Action { return m.LinkUp(now) })
	var stale []task
	for _, a := range p.apply(func(m *pod.Machine) []pod.Action {
		return m.PeerRecord(pod.Record{Epoch: 9, Sequencer: idB, Synced: epoch2}, true, now)
	}) {
		if a.Kind == pod.StartResync {
			stale = append(stale, a)
		}
	}
	if len(stale) != 1 || stale[0].sess != old {
		t.Fatalf("setting up: no resync proposal bound to the first session: %v", stale)
	}
	// The grant of a copy made on the first session, decided on it.
	stale = append(stale, task{Action: pod.Action{Kind: pod.GrantInSync, Epoch: 10}, sess: old})
	// The session ends and a new one (the live one) comes up.
	p.apply(func(m *pod.Machine) []pod.Action { return m.LinkDown(now, now, now) })
	setSess(h.env.r.session())
	p.apply(func(m *pod.Machine) []pod.Action { return m.LinkUp(now) })
	for _, a := range stale {
		p.do(a)
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		mu.Lock()
		sent := strings.Join(got, ", ")
		mu.Unlock()
		if sent != "" {
			t.Fatalf("requests decided on an ended link session were sent on the next one: %s", sent)
		}
		if h.logs.Count("resync proposal not sent") == 1 && h.logs.Count("grant in-sync: the peer did not take it") == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the stale requests were neither sent nor failed:\n%s", h.logs.String())
		}
	}
}
