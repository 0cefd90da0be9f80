package pod

import "testing"

// Adversarial schedules of a second review (see review_test.go for the
// helpers).

// TestReview2RemovalOnLaterSessionAfterPeerWon: a, the in-sync
// sequencer, asks b to give the pod up, but its driver's call is slow to
// run (the request waits in the outbox). The link is lost meanwhile:
// both pause and race at E, and b's elect reaches the mediator first (b
// owns E+1 there; its answer is still on the way). The link returns, and
// a's driver now sends the removal decided on the old session on the
// new one. b, paused and racing, accepts it (RemoveRequested checks only
// the epoch and who orders it) and leaves the pod at E. a then loses the
// race to b and durably adopts E+1 as b's, behind. Nobody serves the pod,
// and neither recognises the other's record once everything heals
// (b: left at E; a: behind at E+1 with b as owner): the pod stays
// offline for good. A peer racing (or one that won) must not take a
// removal; suggested fix: RemoveRequested refuses unless the state is
// in-sync (or receiving/suspended with the copy behind).
func TestReview2RemovalOnLaterSessionAfterPeerWon(t *testing.T) {
	s := reviewSim(t)
	s.runReview(t,
		op{kind: opHold, a: 0},                // a's driver is slow to send its next request
		removeFromA,                           // a asks b to give the pod up (held in a's outbox)
		cutBoth,                               // the link is lost
		advanceTO,                             // both detect it: both pause and race at E
		op{kind: opElectReq, a: 1},            // b's elect reaches the mediator first: b owns E+1
		op{kind: opMend, a: 0},                // the link returns: a new session
		flushA,                                // a's driver sends the removal, on the new session
		deliverAtoB, deliverAtoB, deliverAtoB, // a's hello, status, then the removal: b leaves at E
		answerOldest, // b's win comes back: b has left
		electOldest,  // a's elect: lost to b
		answerOldest, // a adopts E+1 as b's, behind
		persistA,
	)
}
