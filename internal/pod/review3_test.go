package pod

import (
	"fmt"
	"strings"
	"testing"
)

// Schedules of a third review: safe (never two arrays serving, no lost
// write), but the pod offline on both arrays for as long as the link
// stays down, although the mediator is reachable by an array with a
// complete copy, or a pre-election is engaged. Each was found by the
// simulation's liveness phase (partition) and shrunk; each ends with
// that phase, which fails with "offline".

// runLive runs a shrunk schedule, its liveness phase and the heal, and
// fails the test with the trace on any violation.
func runLive(t *testing.T, mode simMode, inSync bool, live livePhase, one int, ops ...op) {
	t.Helper()
	v, trace := runSim(mode, "", schedule{inSync: inSync, ops: ops, live: live, liveArray: one}, true)
	if v != nil {
		t.Fatalf("%s: %s\ntrace:\n  %s", v.key, v.detail, strings.Join(trace, "\n  "))
	}
}

// TestReview3PreElectionLandsAfterLinkLoss (seed 54549, stale mode): a,
// the sequencer, resyncs b while neither reaches the mediator; the grant
// carries a's pre-election, which b holds; a's own record of it (the
// last step) is still being persisted when a asks b to give the pod up
// and the link is lost (a's lease ran out). a pauses on its durable
// record, which names nobody, races, cannot reach the mediator and
// suspends; the removal fails. Then a's record lands: both arrays hold a
// as pre-elected, a's copy is current, and nobody serves until the
// link returns (when a took the next epoch and resynced b, undoing the
// removal it had asked for). The pre-election's last step landing after
// the link loss must make a take the next epoch at the fence, as a
// loss after it would have.
func TestReview3PreElectionLandsAfterLinkLoss(t *testing.T) {
	runLive(t, modeStale, true, liveOne, 1,
		op{kind: opDeliver, a: 696291}, op{kind: opHeartbeat, a: 1009093}, op{kind: opDeliver, a: 37386},
		op{kind: opDeliver, a: 265711}, op{kind: opElectReq, a: 982884}, op{kind: opHeartbeat, a: 203838},
		op{kind: opDeliver, a: 773690}, op{kind: opElectReq, a: 477394}, op{kind: opMediator, a: 640855},
		op{kind: opElectAns, a: 494079}, op{kind: opMediator, a: 324548}, op{kind: opElectAns, a: 1001622},
		op{kind: opDeliver, a: 79691}, op{kind: opDeliver, a: 46170}, op{kind: opDeliver, a: 972971},
		op{kind: opPersist, a: 636128}, op{kind: opBaseline, a: 273528}, op{kind: opPersist, a: 491766},
		op{kind: opWrite, a: 28628}, op{kind: opRemove, a: 183964}, op{kind: opDeliver, a: 357114},
		op{kind: opDeliver, a: 351717}, op{kind: opAdvance, a: 565794},
	)
}

// TestReview3GrantCarriesPeerPreElection (seed 16529, stale mode): a
// stretches the pod to b with the failover preference on b while
// neither array reaches the mediator; the grant carried b's
// pre-election, so a durably held it before b's copy was complete. The
// link is lost before b takes the grant: a suspends (b is pre-elected,
// it must not race) and b's copy is behind (it never races): the pod is
// offline until the link returns, even once the mediator is back. The
// grant now carries only the granting array's own pre-election; the
// peer's is engaged after its copy is complete.
func TestReview3GrantCarriesPeerPreElection(t *testing.T) {
	runLive(t, modeStale, false, liveBoth, 0,
		op{kind: opDeliver, a: 696737}, op{kind: opDeliver, a: 360629}, op{kind: opDeliver, a: 294286},
		op{kind: opPreference, a: 1016128}, op{kind: opDeliver, a: 200757}, op{kind: opMediatorAll, a: 624551},
		op{kind: opPersist, a: 176830}, op{kind: opMediator, a: 30064}, op{kind: opMediator, a: 416524},
		op{kind: opMend, a: 83945}, op{kind: opDeliver, a: 868681}, op{kind: opBaseline, a: 2996},
	)
}

// TestReview3LostWinGivenToPeerResync: the link is lost and both arrays
// race at E; b's elect reaches the mediator first (b owns E+1 there)
// and a's loses, but both answers are lost on the way back while the
// mediator stays online: both suspend and ask again after RetryAfter
// (b's repeat will be answered as a win). The link returns meanwhile:
// a, the owner at E with a current copy, proposes a resync at E+1, and
// b, suspended, accepts it: its record names a as the owner of E+1,
// behind, which gives its win away. The link is lost before a hears
// the answer, and a's repeated elect learns that b won E+1: a adopts it,
// behind. Both records are behind at E+1, each naming the other; nobody
// serves until the link returns, with the mediator online. An array
// whose elect may have won (asked, never answered) must settle it with
// the mediator before it gives the next epoch to the peer's resync.
func TestReview3LostWinGivenToPeerResync(t *testing.T) {
	s := reviewSim(t)
	s.steps(t, cutBoth, advanceTO, op{kind: opElectReq, a: 1}, electOldest)
	for len(s.answers) > 0 {
		an := s.answers[0]
		s.answers = s.answers[1:]
		s.feed(an.to, fmt.Sprintf("elect-failed %d (answer lost, mediator online)", an.epoch), func(m *Machine) []Action { return m.ElectFailed(an.epoch, s.now) })
	}
	s.steps(t,
		op{kind: opMend, a: 0},   // the link returns
		deliverAtoB, deliverBtoA, // the hellos: a, owner at E, proposes a resync at E+1
		deliverBtoA, deliverAtoB, // the mediator statuses
		deliverAtoB,        // b takes a's resync at E+1 (if it does)
		cutBoth, advanceTO, // the link is lost before a hears b's answer
	)
	for range 50 {
		// 200 ms; the mediator answers whatever is asked of it.
		s.steps(t, op{kind: opAdvance, a: 2}, electOldest, answerOldest, persistA, persistB)
		if s.servesWrites(0) || s.servesWrites(1) {
			return
		}
	}
	t.Fatalf("the link down for %s with the mediator online, and nobody serves the pod: a %s, b %s (the mediator's winner is %s at epoch %d)\ntrace:\n  %s",
		s.now.Sub(start), s.describe(0), s.describe(1), s.medWinner, s.medEpoch, strings.Join(s.trace, "\n  "))
}

// TestReview3RemovalOfPreElectedPeer: the pod is in sync, ordered by a,
// with its failover preference on b; both arrays lose the mediator and
// engage b's pre-election (a holds it, then b). a's administrator
// removes b: b gives the pod up and answers, but the answer is lost
// with the link. a holds b's pre-election, so it suspends and never
// races (b, had it not got the removal, would take the next epoch
// alone); b has left. Nobody serves until the link returns, even once
// the mediator is back. A removal of the pre-elected peer is refused
// (its fix: move the pre-election first, with the failover preference).
func TestReview3RemovalOfPreElectedPeer(t *testing.T) {
	s := reviewSim(t)
	s.steps(t, op{kind: opPreference, a: 4}) // the preference on b
	s.steps(t, op{kind: opMediator, a: 0}, op{kind: opMediator, a: 1})
	for range 20 {
		s.steps(t, deliverAtoB, deliverBtoA, persistA, persistB)
	}
	if a, b := s.arr[0].m.Record(), s.arr[1].m.Record(); a.Pre != "b" || b.Pre != "b" {
		t.Fatalf("setting up: the pre-election of b is not engaged: a %s, b %s", s.describe(0), s.describe(1))
	}
	s.steps(t, removeFromA, deliverAtoB, op{kind: opLose, a: 1}, cutBoth, advanceTO)
	s.partition(liveOne, 0)
	s.failed(t)
}
