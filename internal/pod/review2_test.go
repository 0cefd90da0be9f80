package pod

import (
	"fmt"
	"strings"
	"testing"
)

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

// TestReview2ElectRetryLostAcrossLinkFlap: the link is lost and both
// arrays race at E; a's elect reaches the mediator first (a owns E+1
// there), but neither answer comes back within the driver's deadline
// (the mediator stays online): both suspend, and would ask again every
// RetryAfter. The link then comes back for a moment: LinkUp clears the
// retry, a (the sequencer at E, current) proposes a resync, and the link
// is lost again before b takes it. From then on nobody asks the
// mediator again (a suspended array re-races only at LinkUp's inverse,
// never: LinkDown leaves a suspended machine as it is, and MediatorUp
// fires only on a change), so the pod stays offline on both arrays for
// as long as the link is down, with the mediator online and a holding
// its grant: the defect the elect retry fixed, back after one flap.
// Suggested fix: LinkDown of a suspended, current array that may race
// arms reelectAt (or decides again) as after a failed elect.
func TestReview2ElectRetryLostAcrossLinkFlap(t *testing.T) {
	s := reviewSim(t)
	s.steps(t, cutBoth, advanceTO, electOldest, electOldest)
	// Both answers are lost on the way back; the mediator is online.
	for len(s.answers) > 0 {
		an := s.answers[0]
		s.answers = s.answers[1:]
		s.feed(an.to, fmt.Sprintf("elect-failed %d (answer lost, mediator online)", an.epoch), func(m *Machine) []Action { return m.ElectFailed(an.epoch, s.now) })
	}
	s.steps(t,
		op{kind: opMend, a: 0},   // the link returns for a moment
		deliverAtoB, deliverBtoA, // the hellos: a, owner at E, proposes a resync
		cutBoth, advanceTO, // lost again before b takes it
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

// freshSim returns a simulation of a fresh stretch (a holds the pod
// alone, b has no copy) with the first link session up, as runSim
// starts one.
func freshSim() *sim {
	s := newSim(modeSessions, "", false)
	s.connect(0)
	return s
}

// TestReview2StaleResyncAndGrantOnLaterSession: found by TestRandomPair
// with -pod.runs 100000 (seed 103642, sessions mode; shrunk). a's resync
// proposal at epoch 3 is held in its driver (session 1); the link is
// lost and comes back (session 2), a proposes again, b accepts, a
// copies everything and its grant at 3 is held in the driver too; a's
// lease runs out, a ends the link and pauses (the grant was sent from
// a granted syncing state, so it races), b (receiving) suspends. On
// session 3 a's driver sends both held requests: b takes the resync of
// session 1 as "the proposal this array accepted already" (same epoch,
// suspended, behind) and becomes receiving again, clearing its copy,
// then takes the grant of session 2 and serves, in sync at 3. a's
// machine, paused, ignores b's answer, wins E+1 at the mediator and
// serves alone at 4 while b serves reads under its session-3 lease:
// two arrays serving the pod apart (the sim's alone invariant), and b
// serves a copy it cleared (seed 48304 adds a write acknowledged before
// the copy: b then serves it missing, the acked invariant). A request
// decided on one session must not be applied on another: the driver
// should fail a call whose session is not the one the machine decided
// it on (or the request should carry that session and the receiver
// refuse a grant/resync not of the current session).
func TestReview2StaleResyncAndGrantOnLaterSession(t *testing.T) {
	s := freshSim()
	s.runReview(t,
		op{kind: opHold, a: 406962},     // a's driver is slow to send its next request
		op{kind: opDeliver, a: 46393},   // b's hello: a proposes a resync at 3 (held)
		op{kind: opAdvance, a: 332997},  // the session times out
		op{kind: opRestart, a: 1013589}, // (nobody is dead) session 2 comes up
		op{kind: opDeliver, a: 849557},  // hellos, status
		op{kind: opDeliver, a: 186536},  //
		op{kind: opDeliver, a: 967690},  //
		op{kind: opDeliver, a: 64224},   // a's new resync at 3: b receives
		op{kind: opDeliver, a: 220505},  //
		op{kind: opDeliver, a: 536425},  // b's answer: a takes 3
		op{kind: opPersist, a: 686864},  // a syncing at 3
		op{kind: opBaseline, a: 445870}, // the copy completes
		op{kind: opHold, a: 852940},     // a's grant will be held
		op{kind: opPersist, a: 918012},  // Alone cleared: the grant, held; a's lease ran out: it ends the link
	)
}

// TestReview2StaleResyncClearsCopyThenGrant: the same (seed 48304,
// shrunk) with a write acknowledged by a before the copy: b, made
// receiving again by the stale resync (its copy cleared), takes the
// stale grant and serves the pod without the acknowledged write (the
// acked invariant: a stale read).
func TestReview2StaleResyncClearsCopyThenGrant(t *testing.T) {
	s := freshSim()
	s.runReview(t,
		op{kind: opWrite, a: 379140},   // a acknowledges b2=1 alone
		op{kind: opHold, a: 479850},    // a's next request is held
		op{kind: opDeliver, a: 69047},  // b's hello: a's resync at 3, held
		op{kind: opAdvance, a: 366766}, // the session times out
		op{kind: opRestart, a: 657143}, // session 2
		op{kind: opDeliver, a: 480674},
		op{kind: opDeliver, a: 457388},
		op{kind: opDeliver, a: 448967},
		op{kind: opDeliver, a: 205023},
		op{kind: opDeliver, a: 258488}, // a's new resync at 3: b receives
		op{kind: opDeliver, a: 370105}, // a takes 3
		op{kind: opHold, a: 590056},    // a's grant will be held
		op{kind: opPersist, a: 661254},
		op{kind: opBaseline, a: 68773}, // the copy completes
		op{kind: opPersist, a: 301174}, // the grant, held; a ends the link; heal sends both on session 3
	)
}

// TestReview2HandoverWhileRemovalInFlight: found by TestRandomPair (seed
// 219342 at 200000 runs, with the outbox bound to its session; shrunk).
// a, the in-sync sequencer, asks b to give the pod up (RemovePeer: the
// removal is in flight); before b's answer, a's administrator hands the
// pod over to b (Handover checks busy and the pre-election in flight,
// not a removal in flight). a persists "left, b owns E+1"; b, asked
// first, gives the pod up at E and refuses the handover. Both arrays
// have left: the pod is served by nobody and both copies are pending
// eradication (after the window, gone). The replication driver allows
// it once the administrator's removal call returns before b's answer
// (its context ends: "removal under way"), which releases the pod's
// locks while the machine's removal is still in flight. Suggested fix:
// Handover refuses while m.removing (ErrBusy).
func TestReview2HandoverWhileRemovalInFlight(t *testing.T) {
	s := reviewSim(t)
	s.runReview(t, removeFromA, handoverA)
}
