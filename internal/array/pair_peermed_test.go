package array

import (
	"testing"
	"time"

	"github.com/metro-storage/metro/internal/replication"
)

// TestPairPeerMediatorView: `metro array list` on one array shows the
// mediator as the peer sees it, told over the link: online while the
// peer reaches it, unreachable once the peer's route to it is cut
// although this array still reaches it, and online again after.
func TestPairPeerMediatorView(t *testing.T) {
	h := newMediatedPair(t, -1)
	a := h.arrays[0]
	peerView := func() string {
		ps := a.Peers()
		if len(ps) != 1 || ps[0].Mediator == nil {
			return "none"
		}
		return ps[0].Mediator.Status
	}
	waitPeer := func(want string) {
		t.Helper()
		h.waitFor("array-a shows the peer's mediator "+want, 30*time.Second, func() (bool, string) {
			got := peerView()
			return got == want, got
		})
	}
	waitPeer(replication.MediatorOnline)
	if ps := a.Peers(); ps[0].Mediator.Generation == 0 {
		t.Errorf("the peer's view carries no generation: %+v", ps[0].Mediator)
	}
	h.medProxy[1].Partition(true)
	waitPeer(replication.MediatorUnreachable)
	if st := a.med.Status().State; st != replication.MediatorOnline {
		t.Errorf("array-a's own view: %s, want online", st)
	}
	h.medProxy[1].Partition(false)
	waitPeer(replication.MediatorOnline)
}
