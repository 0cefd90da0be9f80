package pod

import (
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
