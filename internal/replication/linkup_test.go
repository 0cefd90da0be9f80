package replication

import "testing"

// TestLinkUpOfEndedSession: a pod's runtime started with a session that
// has ended meanwhile (its linkDown came first, and found no session)
// does not take it as up. Before, it did, and the pod believed the link
// up until the next session (the third review of issue 9 saw it in
// syncPods, which reads the session before it starts the pod).
func TestLinkUpOfEndedSession(t *testing.T) {
	h := newHostilePeer(t)
	r := h.env.r
	s := r.session()
	if s == nil {
		t.Fatal("no link session")
	}
	p := r.pod("pod1")
	if p == nil {
		t.Fatal("pod1 has no runtime")
	}
	p.linkDown(s)
	s.Close()
	<-s.Done()
	p.linkUp(s)
	if md := p.mode(); md.sess != nil {
		t.Fatalf("pod1 takes an ended session as up (state %s)", md.state)
	}
}
