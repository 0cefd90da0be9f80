// Package pod holds the protocol core of a stretched pod on one array: a
// state machine without I/O (Machine) that takes events (the link came up
// or went, the clock, a record became durable, the mediator answered, the
// peer asked or answered) and returns the actions the array must perform
// (persist a record, ask the mediator, send to the peer, copy, wake the
// writes that wait). Every rule of who serves a pod, at which epoch and
// under which lease lives here; package replication only performs the
// actions and feeds back what happened, on one goroutine per pod, so every
// interleaving can be tested without sockets or sleeps (transcripts in
// testdata/, and the randomized pair simulation with a mediator).
//
// # Roles are symmetric
//
// Both arrays run the same machine. The sequencer is whichever array owns
// the pod's current epoch; a failover or a handover moves the role, at a
// new epoch. Nothing in the machine depends on which array created the
// pod.
//
// # The durable record
//
// Each array keeps, per stretched pod, a Record, written durably before
// anything that depends on it happens (before it is acted upon, before it
// is acknowledged to the peer):
//
//	Epoch      the pod's term on this array
//	Sequencer  the array that owns Epoch (the one that orders writes)
//	Synced     the latest epoch at which this array's copy was complete
//	           and current; Synced < Epoch: the copy is behind
//	Alone      the owner knows the peer's copy is behind, so it serves
//	           alone with nothing to fence (set when it wins, cleared
//	           durably before it grants the peer in-sync)
//	Pre        the pre-elected array ("" none)
//	Left       this array gave the pod up (handover or removal)
//	Single     the pod is this array's alone (a removal or handover
//	           completed): a restart finishes making it a local pod
//
// # Epochs are terms with one grantor
//
// Every epoch has exactly one owner, and the owner of a new epoch E+1 is
// given by one grantor only:
//
//   - the mediator: elect(pod, E, me) is won by the first caller at E and
//     stores E+1 for it; an array races only at the epoch it is current
//     at, so two arrays racing race for the same E;
//   - a completed pre-election: the pre-elected array may take E+1 when the
//     link is lost, because the other array has durably promised not to
//     race (see below);
//   - an agreement with the peer: the peer durably accepts E+1 with that
//     owner before the owner uses it (a resync request, a planned
//     handover, a removal), and an array that has accepted an epoch never
//     races at an older one;
//   - the owner itself, only while the peer is known to be behind (Alone):
//     the peer then neither serves nor races.
//
// The machine acts only on answers to the race it is in, and an array
// that has accepted a later epoch never asks again at the old one. An
// elect that failed (no answer within the driver's deadline) suspends
// the array, which asks again at the same epoch every RetryAfter while
// the link is down and it reaches the mediator (a link session that
// comes and goes meanwhile without a resync agreed arms the retry
// again, with the fence moved past that session): the mediator answers a
// repeat by the winner of that epoch as a win, so a grant whose answer
// was lost is used after all, and otherwise the answer names the
// peer's epoch, which this array adopts.
//
// Such an array may hold the mediator's grant of E+1 without knowing
// it, so it must not give E+1 to the peer's resync meanwhile: if it did
// and the link went before the peer heard the acceptance, the peer,
// asking the mediator at E, would learn this array's win and adopt it,
// behind, while this array's record names the peer as the owner of E+1,
// behind too: nobody would serve until the link returned. So while its
// elect is under way, or was never answered and it reaches the
// mediator, it refuses a resync (busy; the peer tries again) and asks
// the mediator again, with the link up too, at once and then every
// RetryAfter: won, it takes E+1 at the fence and resyncs the peer; lost,
// it adopts the peer's epoch, which the peer takes. An elect that was
// never sent (no mediator configured, or known rolled back) holds no
// grant, so it holds no resync back (ElectUnsent). One case is left:
// an array whose elect may have reached the mediator and was never
// answered (or that restarted: its previous run may have asked), and
// that no longer reaches the mediator, accepts the resync (refusing
// would keep the pod offline with the link up for as long as it cannot
// reach the mediator); if its elect had won and the link goes before
// the peer hears the acceptance, and the peer then reaches the mediator,
// the pod is offline on both arrays until the link returns. Neither array can tell it from a state
// in which the other serves E+1 (the acceptor from the peer having heard
// the acceptance and taken E+1 as agreed; the peer from the acceptor
// never having got the proposal and taken the mediator's grant), so no
// rule that lets one of them serve without the link is free of split
// brain.
//
// # The per-pod barrier
//
// Every message of a pod carries the sender's epoch. A message is applied
// only at the receiver's current epoch, and the check and the apply are
// one step (the driver holds the pod's apply lock shared across both, and
// exclusively across every change of epoch or state a peer's request
// makes and across every record of its own that changes the epoch, a
// race won or lost included), so a message of an older epoch is never
// applied once a newer epoch is accepted, and nothing from a peer
// changes state here before its epoch is accepted: the machine decides
// on a request first, its record is persisted, and only then does the
// driver install configuration, clear a copy or answer.
//
// A request the machine decided (a resync, a grant, a pre-election step,
// a removal) is sent only on the link session the machine was on when
// it decided it: the driver binds the session when it takes the action,
// and a call that runs after that session ended fails, as if the session
// had ended under it. On a later session the peer may have moved on (it
// raced, won, received another copy since), and an old request would
// undo that. The receiver checks each request against its state all
// the same: a resync at the epoch it is at already is refused, even the
// one it accepted (only the driver's handler of that proposal takes it
// up again, ReceiveAccepted), so an old proposal never clears a copy
// made since; a removal is taken only in sync. An answer may come for a
// proposal the machine has moved on from: the machine checks it against
// its state when it arrives (the driver takes a resync answer's resume
// point only for the proposal the machine accepts), and a race's answer
// is used only while the record is still the one the race was run at.
// The simulation models both (the driver's outbox, bound to its
// session, and writes checked and applied in two steps) with a barrier
// invariant.
//
// # Leases on both sides
//
// While a pod is in sync both arrays serve it, each only under its lease:
// the send time of its latest heartbeat the peer answered plus the link's
// Timeout, less a fifth of Timeout for clock rates (link.Session.Lease).
// The peer declares this array dead only after Timeout without a frame,
// so once the link is lost the lease this array may still hold ends no
// later than the peer's last hearing of it plus Timeout: the fence. After
// a link loss, whichever array wins serves alone only from the fence on,
// so the loser has stopped serving reads before the winner's first write.
// A lease belongs to the link, not to one pod: to revoke one pod's lease
// without the link going down, the peer must acknowledge that it stopped
// serving that pod (a removal); if it does not, the link is ended and the
// pod goes through the race.
//
// # States
//
// Per pod and array (Serving says whether host I/O is served):
//
//	           ┌──────────── link lost, peer never granted ─────────────┐
//	           ▼                                                        │
//	alone ──▶ syncing ──(grant accepted)──▶ in-sync ──(link lost)──▶ paused
//	  ▲  (resync agreed)                      ▲                         │
//	  │                                       │ granted           won / pre-elected
//	  │        suspended ──(resync)──▶ receiving                        │
//	  │            ▲                                                    │
//	  └────────────┼────────────────────────────────────────────────────┤
//	               └──────────── lost / no mediator / peer pre-elected ─┘
//
//	alone      owns the epoch, serves alone, records every region it
//	           changes; starts a resync of the peer when the link is up
//	           (unless auto-recover is off)
//	syncing    owns the epoch, serves, mirrors every write to the peer,
//	           which receives its copy (baseline, or the changed regions)
//	in-sync    both serve, under their leases; the sequencer orders
//	paused     the link was lost in sync: writes wait, reads are served
//	           while this array's lease lasts; the race is under way
//	receiving  this array's copy is being made; serves nothing
//	suspended  serves nothing: lost the race, could not reach the
//	           mediator, the peer is pre-elected, or the copy is behind
//	left       this array gave the pod up (handover, removal); its copy
//	           is kept pending eradication
//
// # The race
//
// When the link is lost (heartbeat silence, or a mirrored write that did
// not complete within Timeout, which the driver treats as a link loss)
// while the pod was in sync, both arrays pause and decide:
//
//   - Pre = this array: it takes E+1 once the peer's lease has surely
//     expired (the fence), without the mediator.
//   - Pre = the peer: it suspends and does not race until it has resynced.
//   - No pre-election: it asks the mediator, elect(pod, E, me), at once if
//     the pod's failover preference is this array or none, after the head
//     start if it is the peer. Won (epoch E+1): it persists E+1 and serves
//     alone from the fence on. Lost: it persists the winner's epoch with
//     its copy behind, and suspends. The mediator unreachable (or rolled
//     back, or not configured): it suspends.
//
// An array that restarts with a current copy is as after a link loss with
// the peer last heard at the restart (it was dead meanwhile, and the peer
// may still hold a lease only until then plus Timeout); the Timeout is
// the larger of the one it runs with now and the one its record kept (a
// record keeps the timeout in effect when it was written, since the
// peer's lease was counted with the timeout this array advertised then),
// so lowering the timeout across a restart never shortens the fence. One
// that restarts behind is suspended; an owner that knows the peer is
// behind (Alone) serves alone again at once.
//
// # Pre-election
//
// When both arrays see the mediator unavailable (unreachable, rolled back
// or not configured) while the link is up and the pod is in sync, the
// sequencer makes one array pre-elected: the failover preference, else
// itself. No mediator configured therefore means the pod is permanently
// pre-elected, which replaces the fixed bias of earlier releases. When
// either array reaches the mediator again, pre-election disengages.
//
// An array may hold Pre = itself only while the peer durably holds Pre =
// this array, so every change is ordered: the array that loses the right
// to serve alone persists first, the one that gains it last. Engaging
// for the peer, the sequencer persists Pre = peer and then asks the peer;
// engaging for itself, it asks the peer (which persists Pre = sequencer)
// and persists only on the answer; disengaging reverses the order. A
// link lost half-way leaves at worst one array holding Pre = the other
// and the other none: the first suspends, the second races through the
// mediator, whose grant then names the same owner. Link and mediator lost
// at the same moment, before a pre-election completed: the pod suspends
// on both arrays and comes back when either returns. If the last step
// (the pre-elected array's own record) lands only after the link was
// lost, the pre-elected array takes E+1 at the fence then, as if the
// link had been lost after it; and one that was suspended meanwhile
// (its race failed) does so at the next link loss.
//
// The in-sync grant carries a pre-election of the granting array, so a
// pod it resynced while the mediator is away is pre-elected from the
// peer's first in-sync instant. A pre-election of the peer is engaged
// only once the peer accepted the grant, in the usual steps: carried by
// the grant, the granting array would hold it before the peer's copy is
// complete, and a grant lost with the link would leave the pod to
// nobody until the link returned (the granting array promised to the
// peer, the peer behind), even with the mediator back.
//
// The pre-election is recorded at the pod's current epoch, not at a new
// one, deliberately. It grants no epoch when it engages: it is the
// grantor of the next one, E+1, which the pre-elected array takes when
// the link is lost (after the fence, as a race's winner does), and the
// other array, holding Pre = the peer durably, never races for E+1; so
// E+1 still has one grantor and one owner, and the simulation checks it
// (grantor, unique-owner). A new epoch at engagement would add nothing
// to that, and it would cost what passive mediation promises not to: a
// new epoch is accepted by both arrays only with the pod's writes
// drained (the barrier refuses a write of the old epoch, which ends the
// link), so every loss and return of the mediator would pause host I/O
// on every stretched pod.
//
// # Copies and recovery
//
// An array whose copy is incomplete (baseline, resync) has Synced below
// its epoch, durably: it never races and never serves until the copy is
// complete. A resync is agreed: the owner asks the peer to receive at
// max(its epoch, the peer's)+1, the peer persists that epoch with its copy
// behind before it answers (and only if it is neither serving nor racing),
// then the owner persists the same epoch and mirrors from then on. The
// copy sends the regions the owner changed since the copies last agreed
// and the regions the peer wrote that were never acknowledged (or
// everything, when either side has lost track), then the owner persists
// Alone = false (and the pre-election the grant carries) and grants; the
// peer syncs its store, persists Synced = epoch, serves, and answers.
// Change tracking is cleared only for data the peer has durably confirmed:
// a write the peer applied while receiving is covered by the grant's sync,
// because the grant takes the apply lock exclusively and so follows every
// write applied before it, and every write applied after it is synced.
//
// # Membership changes are fenced
//
//   - Handover (removing the sequencer): with writes held, the sequencer
//     persists Left with the peer as owner of E+1, stops serving, then
//     tells the peer, which persists E+1 as sole owner and serves. If the
//     answer is lost, the old sequencer has already given the pod up and
//     says so again at every link start until the peer takes it; if the
//     peer never does, the pod is served by nobody until the link returns,
//     and the peer may win it through the mediator meanwhile (the old
//     sequencer no longer races): exactly one sequencer, or none.
//   - Removing the other array: if its copy is behind it serves nothing,
//     and the owner goes on alone at once. Otherwise the owner asks it to
//     give the pod up; it takes that only in sync at the owner's epoch
//     (or with a copy behind), never while it races or may race, for it
//     could win the next epoch; it persists Left, stops serving and
//     answers; then
//     the owner persists E+1 alone. If it does not answer, the owner ends
//     the link and the pod goes through the race, and the removal does
//     not complete: the winner serves alone, and once the link returns the
//     pod is stretched to the other array again (a peer that gave the pod
//     up and lost its answer is copied again like any loser), so the
//     administrator runs the removal again.
//     A peer that is the pod's pre-elected array is not removed (the
//     administrator moves the pre-election first, with the failover
//     preference, or waits for the mediator): had it left and its
//     answer been lost, the owner, which holds the peer's pre-election,
//     could not tell it from a peer that takes the pod alone without the
//     mediator, so it would neither serve nor race, and nobody would
//     serve the pod until the link returned; for the same reason no
//     pre-election step is taken while a removal is in flight.
//   - A pod the peer gave up or made its own alone while the link was
//     down is learnt from the peer's hello: an array whose pod is local
//     answers with its record marked Single, and a copy here gives up
//     only to a peer that holds the pod alone at the epoch it owns here
//     or a later one (or when this copy is incomplete). A peer with no
//     copy at all (it eradicated the copy it gave up after a handover
//     whose message was lost) removes nothing: the holder of a current
//     copy keeps it, suspended until the mediator or an operator
//     decides, and an incomplete copy is given up.
//   - An array whose record giving the pod up (its handover, or the
//     removal the peer asked for) is in flight when the link is lost
//     pauses without racing: it could win an epoch its record then
//     abandons to the peer, which would hold the winner as owner, and
//     nobody would serve the pod. Once the record is durable it has
//     left (the peer wins the race, or takes the handover, alone); if
//     the record fails, it decides on its durable record as after the
//     link loss, fenced from when the peer was last heard.
//
// # Timing
//
// With the link's Timeout T (default 1 s), a heartbeat every 100 ms and
// the failover preference's head start H (default 1 s): the link is cut at
// t0, the peer was last heard at t0 - 100 ms at worst, the loss is
// detected at t0 + T, the preferred array (or either, with no preference)
// asks the mediator at once (one round trip, a few ms to a third site),
// and the winner serves alone from its fence, last heard + T <= t0 + T:
// a host writing through it pauses for about T + one mediator round trip,
// about 1.1 s at the defaults, under the 2 s goal. If the preferred array
// is gone, the other asks after H: about T + H, 2.1 s, still far inside
// host I/O timeouts (30 s and more). A mirrored write waits at most T for
// the peer before the link is treated as lost. A pre-elected array does
// not ask the mediator: it serves at its fence, about T.
package pod
