package pod

import (
	"errors"
	"fmt"
	"strings"
	"time"
)

// Role is an array's part in a stretched pod: the sequencer owns the
// pod's current epoch.
type Role uint8

// Roles.
const (
	// Sequencer orders the pod's writes and configuration changes.
	Sequencer Role = iota
	// Follower receives them from the sequencer.
	Follower
)

func (r Role) String() string {
	if r == Sequencer {
		return "sequencer"
	}
	return "follower"
}

// State is a stretched pod's state on one array (see the package doc).
type State string

// States.
const (
	Syncing   State = "syncing"
	InSync    State = "in-sync"
	Paused    State = "paused"
	Alone     State = "alone"
	Receiving State = "receiving"
	Suspended State = "suspended"
	Left      State = "left"
)

// Record is what an array keeps durably of a stretched pod's protocol
// (see the package doc).
type Record struct {
	Epoch     uint64 `json:"epoch"`
	Sequencer string `json:"sequencer"`
	Synced    uint64 `json:"synced"`
	Alone     bool   `json:"alone,omitempty"`
	Pre       string `json:"pre,omitempty"`
	Left      bool   `json:"left,omitempty"`
	// Single: the pod is this array's alone from Epoch (a removal or a
	// handover completed); a restart finishes making it a local pod.
	Single bool `json:"single,omitempty"`
	// Timeout is the link timeout this array ran with when it wrote the
	// record (the largest it ran with since its start): the peer's lease
	// on this array may last that long after it last heard from it, so
	// a restart fences with the larger of it and the new timeout. Not
	// part of String (the transcripts show its effect, fence-at).
	Timeout time.Duration `json:"timeout,omitempty"`
}

// Current reports whether the copy is complete and current at the
// record's epoch (and not given up).
func (r Record) Current() bool { return r.Synced == r.Epoch && !r.Left }

func (r Record) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "epoch=%d seq=%s synced=%d", r.Epoch, r.Sequencer, r.Synced)
	if r.Alone {
		b.WriteString(" alone")
	}
	if r.Pre != "" {
		b.WriteString(" pre=" + r.Pre)
	}
	if r.Left {
		b.WriteString(" left")
	}
	if r.Single {
		b.WriteString(" single")
	}
	return b.String()
}

// Config is what a machine needs besides its record.
type Config struct {
	// Self and Peer are the ids of this array and the other.
	Self, Peer string
	// Timeout is the link's dead-peer timeout, which bounds the peer's
	// lease after it was last heard from.
	Timeout time.Duration
	// HeadStart is how long an array that is not the pod's preferred one
	// waits before it asks the mediator.
	HeadStart time.Duration
	// RetryAfter is how long after a failed persist or a refused resync
	// the machine tries again (default Timeout).
	RetryAfter time.Duration
	// Preference is the pod's failover preference when the machine
	// starts (an array id, "" none); SetPreference changes it.
	Preference string

	// plant names a bug planted on purpose, for the simulation to show
	// that it catches it (pair_sim_test.go): "skip-fence" takes a won
	// epoch before the peer's lease has surely ended, "stale-race" asks
	// the mediator with the epoch before the current one, "early-clear"
	// clears the change tracking when the grant is sent rather than once
	// the peer accepted it, "stale-request" takes a resync proposal at
	// the epoch this array is at again (clearing the copy made since)
	// and, in the simulation's driver, sends a request on whichever link
	// session is up when the call runs rather than the one it was
	// decided on (the two defences against an old request, removed
	// together: either alone stops what the simulation finds). The
	// simulation's own planted bug, "no-barrier", is its driver's:
	// neither the peer's requests nor this array's own changes of epoch
	// wait for the peer's writes being applied.
	// Never set outside the package's tests.
	plant string
}

// ActionKind names what the driver must do.
type ActionKind uint8

// Actions.
const (
	// Persist: durably write Record (first making every block this array
	// received durable, when SyncData), then feed Persisted(ID), or
	// PersistFailed(ID) if it could not. Reason says why a record that
	// makes this array the owner of an epoch may do so.
	Persist ActionKind = iota + 1
	// Elect: ask the mediator elect(pod, Epoch, self), then feed Elected
	// or ElectFailed.
	Elect
	// StartResync: ask the peer to receive a copy at Epoch (the request
	// carries the pod's configuration and what the copy resumes from),
	// then feed ResyncStarted or ResyncFailed.
	StartResync
	// CopyBaseline: copy to the peer what it lacks, then feed
	// BaselineDone.
	CopyBaseline
	// GrantInSync: tell the peer its copy is complete at Epoch with the
	// pre-election Pre, then feed PeerInSync (or GrantFailed).
	GrantInSync
	// SendPreElect: tell the peer the pod's pre-elected array is Pre
	// (at Epoch), then feed PeerPreElected.
	SendPreElect
	// SendHandover: tell the peer it owns the pod alone from Epoch (this
	// array left it); no answer is needed.
	SendHandover
	// AskRemove: ask the peer to give the pod up (at Epoch), then feed
	// PeerLeft or RemoveFailed.
	AskRemove
	// Unstretched: the pod is this array's alone from Epoch: make it a
	// local pod (and tell the peer, which may still think otherwise).
	Unstretched
	// GaveUp: this array left the pod: keep its copy pending
	// eradication.
	GaveUp
	// ClearCopy: this array receives a new copy: discard the old one (or
	// keep it where the copy resumes).
	ClearCopy
	// ClearTracking: the peer durably holds everything this array
	// recorded it might lack.
	ClearTracking
	// EndLink: end the link session (the peer's lease on this pod can be
	// revoked no other way); the pod then goes through link loss.
	EndLink
	// ReleaseWrites: wake writes waiting for the pod's state to change.
	ReleaseWrites
	// AccessChanged: the pod's ALUA states changed on this array.
	AccessChanged
)

var actionNames = map[ActionKind]string{
	Persist: "persist", Elect: "elect", StartResync: "start-resync", CopyBaseline: "copy-baseline",
	GrantInSync: "grant-in-sync", SendPreElect: "send-pre-elect", SendHandover: "send-handover",
	AskRemove: "ask-remove", Unstretched: "unstretched", GaveUp: "gave-up", ClearCopy: "clear-copy",
	ClearTracking: "clear-tracking", EndLink: "end-link", ReleaseWrites: "release-writes",
	AccessChanged: "access-changed",
}

func (k ActionKind) String() string {
	if n, ok := actionNames[k]; ok {
		return n
	}
	return fmt.Sprintf("action(%d)", uint8(k))
}

// Action is one thing to do.
type Action struct {
	Kind   ActionKind
	Epoch  uint64
	Record Record // Persist
	ID     uint64 // Persist
	// SyncData: Persist after syncing the received data.
	SyncData bool
	// Reason: Persist of a record making this array an epoch's owner:
	// "mediator", "pre-elected", "agreed", "alone" or "handover".
	Reason string
	// Pre: GrantInSync, SendPreElect.
	Pre string
}

func (a Action) String() string {
	switch a.Kind {
	case Persist:
		s := fmt.Sprintf("persist#%d {%s}", a.ID, a.Record)
		if a.SyncData {
			s += " sync-data"
		}
		if a.Reason != "" {
			s += " (" + a.Reason + ")"
		}
		return s
	case GrantInSync, SendPreElect:
		return fmt.Sprintf("%s %d pre=%q", a.Kind, a.Epoch, a.Pre)
	case ReleaseWrites, AccessChanged, ClearCopy, GaveUp, EndLink:
		return a.Kind.String()
	}
	return fmt.Sprintf("%s %d", a.Kind, a.Epoch)
}

// ElectResult is the mediator's answer to elect.
type ElectResult struct {
	Won    bool
	Epoch  uint64
	Winner string
}

// purpose is what a persist is for: what happens once it is durable.
type purpose uint8

const (
	pTake         purpose = iota + 1 // paused: serve alone at the new epoch
	pLost                            // adopt the winner's epoch, behind
	pResync                          // owner: the peer receives at the epoch
	pGrant                           // owner: Alone cleared, then grant
	pPre                             // owner: a step of the pre-election
	pHandover                        // owner: left, the peer owns the next epoch
	pSingle                          // owner: the pod is this array's alone
	pAcceptResync                    // peer's resync accepted
	pAcceptGrant                     // peer's grant accepted
	pAcceptPre                       // peer's pre-election accepted
	pAcceptLeave                     // peer's removal accepted
	pTakeHandover                    // peer's handover accepted
	pNote                            // a record that changes nothing more
)

// request purposes answer the peer: a failure is the peer's to retry.
func (p purpose) request() bool { return p >= pAcceptResync && p <= pTakeHandover }

// retried reports whether a failed persist is tried again: not one that
// answers the peer (the peer tries again), nor a handover (the
// administrator is told it failed).
func (p purpose) retried() bool { return !p.request() && p != pHandover }

type persist struct {
	id     uint64
	rec    Record
	why    purpose
	sync   bool
	reason string
}

// Machine is the protocol state of one stretched pod on one array. It
// does no I/O and reads no clock: every method is an event, with the
// time where it matters, and returns the actions to perform, in order.
type Machine struct {
	cfg   Config
	rec   Record
	state State
	link  bool

	pref        string // failover preference (array id), "" none
	autoRecover bool
	medUp       bool // this array reaches the mediator
	// peerMed is the peer's view of the mediator: 0 unknown, 1 up, 2 down.
	peerMed uint8

	nextID  uint64
	pending *persist
	// failed is a persist to try again from retryAt.
	failed  *persist
	retryAt time.Time

	// Paused: the peer's lease has surely ended at fenceAt; raceAt is
	// when to ask the mediator (zero: not to); electing the epoch of the
	// elect in flight; win the epoch to take at the fence.
	fenceAt time.Time
	// pauseLease is this array's lease on the session that was lost: a
	// paused array serves reads until then, never under a later session.
	pauseLease time.Time
	pausedAt   time.Time
	raceAt     time.Time
	electing   uint64
	win        uint64
	winWhy     string
	// giving: paused while this array's own record giving the pod up
	// (a handover, or a removal the peer asked for) is being persisted:
	// it does not race; once the record is durable it has left, and if
	// the record failed it decides on the durable state (pauseGiving).
	giving bool
	// reelectAt: suspended after an elect that failed while the link is
	// down, this array asks the mediator again (at the same epoch) from
	// then on, while it reaches it (zero: not to).
	reelectAt time.Time
	// unanswered: this array asked the mediator at this epoch and never
	// heard the answer (ElectFailed): it may hold the mediator's grant
	// of the next epoch (zero: no such elect at the current epoch).
	unanswered uint64

	// Owner: the epoch of the StartResync in flight; when to propose one
	// again; the highest epoch the peer is known at; the peer's
	// pre-election as this array knows it (valid in sync); a step of the
	// pre-election in flight; a removal asked of the peer.
	resyncing uint64
	resyncAt  time.Time
	peerKnown bool
	// peerRec is the peer's record as its latest hello said (valid when
	// peerHas).
	peerRec       Record
	peerHas       bool
	peerEpoch     uint64
	peerPre       string
	grantPre      string
	preInFlight   bool
	removing      bool
	unstretchDone bool
	// unstretchDue: the Unstretched of a record made single before a
	// restart is still to be said.
	unstretchDue bool
	// oldTimeout is the longer link timeout this array ran with before
	// its restart, until oldUntil (when a lease the peer held under it
	// has surely ended); records written meanwhile keep it.
	oldTimeout time.Duration
	oldUntil   time.Time
}

// New returns the machine of a pod after the array (re)started with
// the durable record rec: an array that gave the pod up stays so; one
// whose copy is behind is suspended; an owner whose peer is behind serves
// alone; any other is as after a link loss at now (the peer may hold a
// lease until now plus Timeout), and decides (see the package doc).
func New(cfg Config, rec Record, now time.Time) *Machine {
	if cfg.RetryAfter <= 0 {
		cfg.RetryAfter = cfg.Timeout
	}
	m := &Machine{cfg: cfg, rec: rec, autoRecover: true, pref: cfg.Preference}
	if rec.Timeout > cfg.Timeout {
		// The peer may hold a lease on this array under the longer
		// timeout it ran with before the restart, until now plus that
		// timeout at most: fence with it, and record it, until then.
		m.oldTimeout, m.oldUntil = rec.Timeout, now.Add(rec.Timeout)
	}
	switch {
	case rec.Left:
		m.state = Left
	case rec.Single && rec.Sequencer == cfg.Self:
		// A removal or handover made durable before the pod was made
		// local: finish it (the first Tick says Unstretched).
		m.state = Alone
		m.unstretchDone, m.unstretchDue = true, true
	case !rec.Current():
		m.state = Suspended
	case rec.Sequencer == cfg.Self && rec.Alone:
		m.state = Alone
	default:
		m.state = Paused
		// Its previous run may have asked the mediator at this epoch,
		// and the answer died with it: it may hold the grant.
		m.unanswered = rec.Epoch
		m.fenceAt = now.Add(max(cfg.Timeout, rec.Timeout))
		if !m.decide(now) {
			m.state = Suspended
		}
	}
	return m
}

// single returns the record of the pod as this array's alone from
// epoch.
func (m *Machine) single(epoch uint64) Record {
	return Record{Epoch: epoch, Sequencer: m.cfg.Self, Synced: epoch, Alone: true, Single: true}
}

// Stretched returns the record of a pod that this array just stretched
// to the peer at epoch: it owns the epoch and the peer has no copy yet.
func Stretched(self string, epoch uint64) Record {
	return Record{Epoch: epoch, Sequencer: self, Synced: epoch, Alone: true}
}

// Role returns the array's role: sequencer when it owns the epoch.
func (m *Machine) Role() Role {
	if m.rec.Sequencer == m.cfg.Self {
		return Sequencer
	}
	return Follower
}

// State returns the pod's state on this array.
func (m *Machine) State() State { return m.state }

// Record returns the durable record.
func (m *Machine) Record() Record { return m.rec }

// Epoch returns the pod's durable epoch on this array.
func (m *Machine) Epoch() uint64 { return m.rec.Epoch }

// Link reports whether the link to the peer is up.
func (m *Machine) Link() bool { return m.link }

// FenceAt returns when a paused array may take the pod alone.
func (m *Machine) FenceAt() time.Time { return m.fenceAt }

// PreElected returns the pre-elected array ("" none), as recorded here.
func (m *Machine) PreElected() string { return m.rec.Pre }

// Peer returns the peer's record as its latest answer said (ok false:
// not known on this link, or the peer has no copy) and its view of the
// mediator (known false: not said on this link).
func (m *Machine) Peer() (rec Record, ok, mediatorUp, known bool) {
	return m.peerRec, m.link && m.peerKnown && m.peerHas, m.peerMed == 1, m.link && m.peerMed != 0
}

// Pending reports whether a persist is in flight.
func (m *Machine) Pending() bool { return m.pending != nil }

// busy reports whether a persist is in flight or waits to be tried
// again: no other may start meanwhile.
func (m *Machine) busy() bool { return m.pending != nil || m.failed != nil }

// leased reports whether the state serves only under this array's lease:
// the peer serves too, or may win.
func (m *Machine) leased() bool {
	return m.state == InSync || m.state == Paused || (m.state == Syncing && !m.rec.Alone)
}

// Serves reports whether this array serves reads of the pod at now,
// given its lease (the send time of its latest heartbeat the peer
// answered plus the peer's Timeout, less the margin for clock rates). A
// paused array serves reads while the lease lasts; its writes wait.
func (m *Machine) Serves(now, lease time.Time) bool {
	switch m.state {
	case Alone:
		return true
	case Paused:
		return now.Before(m.pauseLease)
	case Syncing, InSync:
		return !m.leased() || now.Before(lease)
	}
	return false
}

// Serving reports whether the state serves I/O at all (leases aside).
func (m *Machine) Serving() bool {
	switch m.state {
	case Alone, Syncing, InSync, Paused:
		return true
	}
	return false
}

// Granting reports whether a syncing owner has begun its grant (the
// copy is done and Alone is being cleared, or cleared): from then on the
// peer may serve, so every write must reach it.
func (m *Machine) Granting() bool {
	return m.state == Syncing && (!m.rec.Alone || (m.pending != nil && m.pending.why == pGrant))
}

// Holds reports whether writes wait for the state to change (paused).
func (m *Machine) Holds() bool { return m.state == Paused }

// Mirroring reports whether the sequencer's writes must reach the peer.
func (m *Machine) Mirroring() bool {
	return m.Role() == Sequencer && (m.state == Syncing || m.state == InSync)
}

// AcceptsEpoch reports whether a message of epoch is applied here: only
// at the current epoch (the per-pod barrier).
func (m *Machine) AcceptsEpoch(epoch uint64) bool { return epoch == m.rec.Epoch }

// set changes state: every change may change the ALUA states an array
// reports, so it raises the unit attention, and wakes waiting writes.
func (m *Machine) set(s State, acts []Action) []Action {
	was := m.state
	m.state = s
	if was != s {
		acts = append(acts, Action{Kind: AccessChanged})
	}
	return append(acts, Action{Kind: ReleaseWrites})
}

// persist starts a durable write of rec for why.
func (m *Machine) persist(rec Record, why purpose, reason string, sync bool, acts []Action) []Action {
	rec.Timeout = max(m.cfg.Timeout, m.oldTimeout)
	m.nextID++
	p := &persist{id: m.nextID, rec: rec, why: why, reason: reason, sync: sync}
	m.pending = p
	m.failed = nil
	return append(acts, Action{Kind: Persist, Record: rec, ID: p.id, SyncData: sync, Reason: reason})
}

// SetPreference sets the pod's failover preference (an array id, "" for
// none): it decides which array races at once and which pre-election
// the pair engages.
func (m *Machine) SetPreference(arrayID string) []Action {
	m.pref = arrayID
	if !m.raceAt.IsZero() {
		// Not asked yet: the head start counts from the pause.
		m.raceAt = m.pausedAt
		if m.pref == m.cfg.Peer {
			m.raceAt = m.pausedAt.Add(m.cfg.HeadStart)
		}
	}
	return m.maybePre(nil)
}

// SetAutoRecover sets whether the owner resyncs the peer by itself when
// the link returns (on by default).
func (m *Machine) SetAutoRecover(on bool, now time.Time) []Action {
	m.autoRecover = on
	return m.maybeResync(now, nil)
}

// MediatorUp: this array reaches the mediator (or no longer does). A
// suspended array whose copy is current and that may race races again
// when the mediator returns while the link is still down.
func (m *Machine) MediatorUp(up bool, now time.Time) []Action {
	m.medUp = up
	var acts []Action
	if up && !m.link && m.state == Suspended && m.rec.Current() && m.rec.Pre != m.cfg.Peer && !m.busy() && m.decide(now) {
		acts = m.set(Paused, nil)
		acts = append(acts, m.Tick(now)...)
	}
	return m.maybePre(acts)
}

// PeerMediatorUp: the peer reports over the link whether it reaches the
// mediator.
func (m *Machine) PeerMediatorUp(up bool) []Action {
	if !m.link {
		return nil
	}
	m.peerMed = 2
	if up {
		m.peerMed = 1
	}
	return m.maybePre(nil)
}

// PeerRecord: the peer's hello says its record of the pod (ok false: it
// has no copy of the pod at all).
func (m *Machine) PeerRecord(rec Record, ok bool, now time.Time) []Action {
	if !m.link {
		return nil
	}
	m.peerKnown = true
	m.peerRec, m.peerHas = rec, ok
	if ok {
		m.peerEpoch = max(m.peerEpoch, rec.Epoch)
	}
	if m.busy() || m.state == Left || m.unstretchDone {
		return nil
	}
	self := m.cfg.Self
	switch {
	case ok && rec.Single && rec.Sequencer == m.cfg.Peer &&
		(!m.rec.Current() || rec.Epoch > m.rec.Epoch || (rec.Epoch == m.rec.Epoch && m.rec.Sequencer == m.cfg.Peer)):
		// The peer holds the pod as its own alone (it removed this
		// array, or this array handed the pod over and the peer
		// completed it): give this copy up if it is incomplete, or
		// current at an older epoch than the peer's, or at the one the
		// peer owns.
		return m.leave()
	case !ok:
		if m.state != Alone && m.state != Syncing && !m.rec.Current() {
			// The peer has no copy at all and this one is incomplete
			// (a copy under way when the peer's pod went away): give
			// it up.
			return m.leave()
		}
		// The peer has no copy: a fresh stretch (the resync installs
		// one), or it eradicated the copy it gave up (a handover whose
		// message was lost, then its eradication window or its
		// administrator). "No copy" says nothing of who owns the pod:
		// a current copy is kept, and only a peer that holds the pod
		// alone (its record single, later) removes this array.
	case rec.Left && rec.Sequencer == self && rec.Epoch == m.rec.Epoch+1:
		// The peer handed the pod over and never heard back.
		acts, _ := m.HandoverRequested(rec.Epoch)
		return acts
	case rec.Left && rec.Epoch == m.rec.Epoch && m.rec.Sequencer == self && m.rec.Current():
		// The peer gave the pod up at this epoch (a removal whose answer
		// was lost): it serves nothing, so the pod is this array's
		// alone. (A copy it gave up at an older epoch is restretched by
		// the resync.)
		return m.persist(m.single(m.rec.Epoch+1), pSingle, "agreed", false, m.set(Alone, nil))
	case !rec.Left && rec.Sequencer == self && rec.Epoch > m.rec.Epoch && m.rec.Current() && m.resyncing == 0 &&
		(m.state == Suspended || m.state == Paused):
		// The peer durably holds this array as the owner of a later
		// epoch (it lost a race this array won without hearing the
		// answer): take it; the peer's copy is behind.
		m.raceAt, m.electing, m.win = time.Time{}, 0, 0
		next := Record{Epoch: rec.Epoch, Sequencer: self, Synced: rec.Epoch, Alone: true}
		return m.persist(next, pTake, "agreed", false, nil)
	}
	return m.maybeResync(now, nil)
}

// leave gives the pod up here.
func (m *Machine) leave() []Action {
	next := m.rec
	next.Left = true
	return m.persist(next, pAcceptLeave, "", false, nil)
}

// LinkUp: a session with the peer is established. Nothing is proposed
// to the peer before its hello tells its record (PeerRecord).
func (m *Machine) LinkUp(now time.Time) []Action {
	m.link = true
	m.reelectAt = time.Time{}
	m.peerMed = 0
	m.peerKnown = false
	return nil
}

// LinkDown: the session with the peer is gone. lastHeard is when the
// peer was last heard from: its lease ends no later than lastHeard plus
// Timeout. lease is this array's own lease on that session: a paused
// array serves reads until then.
func (m *Machine) LinkDown(now, lastHeard, lease time.Time) []Action {
	m.link = false
	m.peerMed = 0
	m.resyncing = 0
	m.preInFlight = false
	m.removing = false
	switch m.state {
	case InSync:
		m.pauseLease = lease
		if m.givingUp() {
			return m.pauseGiving(now, lastHeard)
		}
		return m.pause(now, lastHeard)
	case Syncing:
		if !m.rec.Alone {
			// Granted: the peer may serve, and may race.
			m.pauseLease = lease
			return m.pause(now, lastHeard)
		}
		return m.set(Alone, nil)
	case Receiving:
		return m.set(Suspended, nil)
	case Paused:
		m.fenceAfter(lastHeard)
	case Suspended:
		if m.rec.Current() && m.rec.Pre == m.cfg.Self {
			// Pre-elected (its last step landed after an earlier link
			// loss had suspended this array): the peer holds it
			// durably and never races, so this array takes the next
			// epoch at the fence.
			m.fenceAfter(lastHeard)
			m.decide(now)
			acts := m.set(Paused, nil)
			return append(acts, m.Tick(now)...)
		}
		if m.rec.Current() && m.rec.Pre != m.cfg.Peer {
			// Suspended with a current copy that may race (its elect
			// failed, or its answer was lost, before the link came
			// back for a while): LinkUp dropped the retry, so it is
			// armed again, or nobody would ask the mediator while the
			// link is down. A win then serves from the fence, which
			// covers a lease the peer got on this session.
			m.fenceAfter(lastHeard)
			m.reelectAt = now.Add(m.cfg.RetryAfter)
		}
	}
	return nil
}

// fenceAfter moves the fence to cover a lease the peer may hold after it
// was last heard from at lastHeard.
func (m *Machine) fenceAfter(lastHeard time.Time) {
	if f := lastHeard.Add(m.cfg.Timeout); f.After(m.fenceAt) {
		m.fenceAt = f
	}
}

// givingUp reports whether the persist in flight gives the pod up here
// (a handover, or the removal the peer asked for).
func (m *Machine) givingUp() bool {
	return m.pending != nil && (m.pending.why == pHandover || m.pending.why == pAcceptLeave)
}

// pauseGiving pauses an array whose record giving the pod up is in
// flight when the link is lost: it must not race for a pod it is giving
// up (it could win an epoch its record then abandons, and the pod would
// be served by nobody), so it holds I/O without racing until the record
// lands (it has left) or fails (it decides on its durable record, as
// after the link loss).
func (m *Machine) pauseGiving(now, lastHeard time.Time) []Action {
	m.fenceAt = lastHeard.Add(m.cfg.Timeout)
	m.raceAt, m.electing, m.win, m.winWhy = time.Time{}, 0, 0, ""
	m.pausedAt = now
	m.giving = true
	return m.set(Paused, nil)
}

func (m *Machine) pause(now, lastHeard time.Time) []Action {
	m.fenceAt = lastHeard.Add(m.cfg.Timeout)
	if !m.decide(now) {
		return m.set(Suspended, nil)
	}
	acts := m.set(Paused, nil)
	return append(acts, m.Tick(now)...)
}

// decide picks how a paused array goes on (see the package doc); false:
// it suspends (the peer is pre-elected).
func (m *Machine) decide(now time.Time) bool {
	m.raceAt, m.electing, m.win, m.winWhy = time.Time{}, 0, 0, ""
	m.reelectAt = time.Time{}
	m.pausedAt = now
	switch m.rec.Pre {
	case m.cfg.Self:
		m.win, m.winWhy = m.rec.Epoch+1, "pre-elected"
	case m.cfg.Peer:
		return false
	default:
		m.raceAt = now
		if m.pref == m.cfg.Peer {
			m.raceAt = now.Add(m.cfg.HeadStart)
		}
	}
	return true
}

// Tick: the clock reads now.
func (m *Machine) Tick(now time.Time) []Action {
	var acts []Action
	if m.oldTimeout != 0 && !now.Before(m.oldUntil) {
		m.oldTimeout = 0
	}
	if m.unstretchDue {
		m.unstretchDue = false
		acts = append(acts, Action{Kind: Unstretched, Epoch: m.rec.Epoch})
	}
	if m.failed != nil && m.pending == nil && !now.Before(m.retryAt) {
		p := m.failed
		m.failed = nil
		m.pending = p
		acts = append(acts, Action{Kind: Persist, Record: p.rec, ID: p.id, SyncData: p.sync, Reason: p.reason})
	}
	if m.state == Paused {
		if !m.raceAt.IsZero() && !now.Before(m.raceAt) && m.electing == 0 && m.win == 0 && m.rec.Current() {
			m.raceAt = time.Time{}
			m.electing = m.rec.Epoch
			if m.cfg.plant == "stale-race" && m.electing > 1 {
				m.electing--
			}
			acts = append(acts, Action{Kind: Elect, Epoch: m.electing})
		}
		if m.win != 0 && m.pending == nil && m.failed == nil && (!now.Before(m.fenceAt) || m.cfg.plant == "skip-fence") {
			next := Record{Epoch: m.win, Sequencer: m.cfg.Self, Synced: m.win, Alone: true}
			acts = m.persist(next, pTake, m.winWhy, false, acts)
		}
	}
	if m.mayReelect(now) {
		m.reelectAt = time.Time{}
		m.electing = m.rec.Epoch
		acts = append(acts, Action{Kind: Elect, Epoch: m.electing})
	}
	return m.maybeResync(now, acts)
}

// mayReelect reports whether a suspended array asks the mediator again
// now: its elect failed (the mediator did not answer in time, or its
// answer was lost) while the link is down, RetryAfter has passed, it
// reaches the mediator, and it may still race (its copy is current at
// the epoch it raced at, the peer is not pre-elected). The mediator
// answers a repeat by the winner of that epoch as a win, so a grant
// whose answer was lost is used after all; if the peer won, the answer
// says so and this array adopts the peer's epoch.
//
// With the link up it asks again too while its grant may be unused
// (mayHoldGrant): the peer's resync waits for that answer (and is taken
// at once when this array may not ask: ResyncRequested refuses on the
// same conditions).
func (m *Machine) mayReelect(now time.Time) bool {
	due := !m.link && !m.reelectAt.IsZero()
	if m.link && m.mayHoldGrant() {
		due = true
	}
	return m.state == Suspended && due && !now.Before(m.reelectAt) && m.medUp &&
		m.electing == 0 && m.rec.Current() && m.rec.Pre != m.cfg.Peer && !m.busy()
}

// mayHoldGrant reports whether the mediator may have granted this array
// the next epoch without this array knowing: it asked at its current
// epoch, with its copy current, and the answer never came.
func (m *Machine) mayHoldGrant() bool {
	return m.unanswered != 0 && m.unanswered == m.rec.Epoch && m.rec.Current()
}

// LeaseExpired: this array's lease ran out while the link seems up: the
// link must end so that the pod goes through link loss.
func (m *Machine) LeaseExpired() []Action {
	if m.link && m.leased() && m.state != Paused {
		return []Action{{Kind: EndLink}}
	}
	return nil
}

// Elected: the mediator answered the elect at epoch.
func (m *Machine) Elected(epoch uint64, res ElectResult, now time.Time) []Action {
	if m.electing == 0 || epoch != m.electing {
		return nil
	}
	m.electing = 0
	m.unanswered = 0
	if m.state != Paused && m.state != Suspended {
		// The state moved on (a resync accepted, the pod given up):
		// the race is over here, and its answer changes nothing.
		return nil
	}
	if m.rec.Epoch != epoch || !m.rec.Current() {
		// The record moved while the elect was under way (a suspended
		// array accepted the peer's resync, which makes the peer the
		// owner of the next epoch): a grant of the old race is not
		// used.
		return nil
	}
	if res.Won && res.Winner == m.cfg.Self && res.Epoch == epoch+1 {
		m.win, m.winWhy = res.Epoch, "mediator"
		var acts []Action
		if m.state == Suspended {
			// A repeated elect won (the first answer was lost): hold
			// I/O again until the fence, then serve alone.
			acts = m.set(Paused, nil)
		}
		return append(acts, m.Tick(now)...)
	}
	acts := m.set(Suspended, nil)
	if res.Winner == m.cfg.Peer && res.Epoch > m.rec.Epoch && !m.busy() {
		// The peer owns the new epoch: adopt it, behind, so that this
		// array never races at the old one again.
		next := Record{Epoch: res.Epoch, Sequencer: m.cfg.Peer, Synced: m.rec.Synced}
		acts = m.persist(next, pLost, "", false, acts)
	}
	return acts
}

// ElectFailed: the mediator did not answer the elect at epoch (the
// request may have reached it: a timeout, a lost answer, an error after
// sending). The array suspends; while the link stays down it asks again
// after RetryAfter whenever it reaches the mediator (the grant may have
// been made, its answer lost), and until it has an answer it does not
// give the next epoch to the peer's resync while it can ask
// (mayHoldGrant).
func (m *Machine) ElectFailed(epoch uint64, now time.Time) []Action {
	return m.electFailed(epoch, now, true)
}

// ElectUnsent: the elect at epoch was never sent (no mediator is
// configured, it is known rolled back, or the request could not leave
// this array): as ElectFailed, except that this array surely holds no
// grant of that race.
func (m *Machine) ElectUnsent(epoch uint64, now time.Time) []Action {
	return m.electFailed(epoch, now, false)
}

func (m *Machine) electFailed(epoch uint64, now time.Time, maybeSent bool) []Action {
	if m.electing == 0 || epoch != m.electing {
		return nil
	}
	m.electing = 0
	if m.state != Paused && m.state != Suspended {
		return nil
	}
	if maybeSent {
		m.unanswered = epoch
	}
	m.reelectAt = now.Add(m.cfg.RetryAfter)
	return m.set(Suspended, nil)
}

// Persisted: the persist with id is durable.
func (m *Machine) Persisted(id uint64, now time.Time) []Action {
	p := m.pending
	if p == nil || p.id != id {
		return nil
	}
	m.pending = nil
	m.rec = p.rec
	m.giving = false
	var acts []Action
	switch {
	case m.state == Paused && !m.rec.Current():
		// Behind now (a lost race's epoch, adopted late): never race.
		m.raceAt, m.electing, m.win = time.Time{}, 0, 0
		acts = m.set(Suspended, acts)
	case m.state == Paused && m.winWhy == "pre-elected" && m.rec.Pre != m.cfg.Self && m.electing == 0:
		// The pre-election was dropped while the link went: decide
		// again on the record as it now is.
		if !m.decide(now) {
			acts = m.set(Suspended, acts)
		}
	case p.why == pPre && !m.link && (m.state == Paused || m.state == Suspended) && m.rec.Current() &&
		m.rec.Pre == m.cfg.Self && m.winWhy != "pre-elected" && m.win == 0:
		// The last step of a pre-election of this array landed after
		// the link was lost (it raced on the record before, or could
		// not, and suspended): the peer durably holds this array as
		// pre-elected and does not race, so this array takes the next
		// epoch at the fence, as if the link had been lost after.
		m.decide(now)
		acts = m.set(Paused, acts)
	}
	switch p.why {
	case pTake:
		if m.state == Paused || m.state == Suspended {
			m.win = 0
			acts = m.set(Alone, acts)
		}
	case pLost:
	case pResync:
		m.resyncing = 0
		switch {
		case m.state != Alone && m.state != Suspended:
		case m.link:
			acts = m.set(Syncing, acts)
			acts = append(acts, Action{Kind: CopyBaseline, Epoch: m.rec.Epoch})
		default:
			acts = m.set(Alone, acts)
		}
	case pGrant:
		if m.state == Syncing && m.link {
			if m.cfg.plant == "early-clear" {
				acts = append(acts, Action{Kind: ClearTracking, Epoch: m.rec.Epoch})
			}
			acts = append(acts, Action{Kind: GrantInSync, Epoch: m.rec.Epoch, Pre: m.grantPre})
			break
		}
		// The link went before the grant did: the peer is behind, as
		// the record says again.
		next := m.rec
		next.Alone, next.Pre = true, ""
		return m.persist(next, pNote, "", false, acts)
	case pNote:
	case pPre:
		m.preInFlight = false
	case pHandover:
		acts = m.set(Left, acts)
		acts = append(acts, Action{Kind: SendHandover, Epoch: m.rec.Epoch}, Action{Kind: GaveUp})
		return acts
	case pSingle:
		m.removing = false
		m.unstretchDone = true
		acts = m.set(Alone, acts)
		return append(acts, Action{Kind: Unstretched, Epoch: m.rec.Epoch})
	case pAcceptResync:
		acts = m.set(Receiving, []Action{{Kind: ClearCopy}})
		return acts
	case pAcceptGrant:
		if !m.link {
			// The link went while the grant's record was written: the
			// sequencer, which never heard this array accept, races
			// for the next epoch. In sync by its durable record, this
			// array goes on as after a link loss in sync: it pauses
			// and races (or suspends for a peer pre-elected), fenced a
			// link timeout from now, and never serves on a later
			// session at this epoch unless the race says so. It had no
			// lease to serve reads on.
			m.pauseLease = time.Time{}
			return m.pause(now, now)
		}
		return m.set(InSync, acts)
	case pAcceptPre:
		return nil
	case pAcceptLeave:
		acts = m.set(Left, acts)
		return append(acts, Action{Kind: GaveUp})
	case pTakeHandover:
		m.unstretchDone = true
		acts = m.set(Alone, acts)
		return append(acts, Action{Kind: Unstretched, Epoch: m.rec.Epoch})
	}
	acts = m.maybePre(acts)
	return m.maybeResync(now, append(acts, m.Tick(now)...))
}

// PersistFailed: the persist with id could not be made durable. Nothing
// that depended on it happened; the machine tries again after
// RetryAfter, unless it answered the peer, which then tries again.
func (m *Machine) PersistFailed(id uint64, now time.Time) []Action {
	p := m.pending
	if p == nil || p.id != id {
		return nil
	}
	m.pending = nil
	if m.giving {
		// The record giving the pod up failed while the link was lost:
		// this array still holds its durable record, in sync, and goes
		// on as after the link loss (the fence stands).
		m.giving = false
		if !m.decide(now) {
			return m.set(Suspended, nil)
		}
		return m.Tick(now)
	}
	switch {
	case !p.why.retried():
	case p.why == pResync:
		m.resyncing = 0
		m.resyncAt = now.Add(m.cfg.RetryAfter)
	case p.why == pPre:
		m.preInFlight = false
		m.failed, m.retryAt = p, now.Add(m.cfg.RetryAfter)
	default:
		m.failed, m.retryAt = p, now.Add(m.cfg.RetryAfter)
	}
	return nil
}

// maybeResync proposes a resync when the link is up, auto-recover is on
// and this array is the one to give the peer its copy: it owns the pod
// with a current copy and serves alone (or is suspended with the peer
// too, after a race nobody won); or both copies are behind, which means
// neither array served since the later of their Synced epochs, and this
// one's copy is the more current (the smaller id on a tie).
func (m *Machine) maybeResync(now time.Time, acts []Action) []Action {
	if !m.link || !m.peerKnown || !m.autoRecover || m.resyncing != 0 || m.pending != nil || m.failed != nil ||
		m.unstretchDone || m.removing || (m.state != Alone && m.state != Suspended) || now.Before(m.resyncAt) {
		return acts
	}
	owner := m.rec.Sequencer == m.cfg.Self && m.rec.Current()
	pr := m.peerRec
	bothBehind := m.state == Suspended && !m.rec.Current() && !m.rec.Left && m.peerHas && !pr.Current() && !pr.Left &&
		(m.rec.Synced > pr.Synced || (m.rec.Synced == pr.Synced && m.cfg.Self < m.cfg.Peer))
	if !owner && !bothBehind {
		return acts
	}
	m.resyncing = max(m.rec.Epoch, m.peerEpoch) + 1
	return append(acts, Action{Kind: StartResync, Epoch: m.resyncing})
}

// ResyncStarted: the peer durably accepted to receive at epoch.
func (m *Machine) ResyncStarted(epoch uint64, now time.Time) []Action {
	if m.unstretchDone || m.resyncing == 0 || epoch != m.resyncing {
		return nil
	}
	if m.busy() || (m.state != Alone && m.state != Suspended) {
		// Something else moved first: propose again later (the peer,
		// which accepted, is behind and serves nothing meanwhile).
		m.resyncing = 0
		m.resyncAt = now.Add(m.cfg.RetryAfter)
		return nil
	}
	m.peerEpoch = max(m.peerEpoch, epoch)
	next := Record{Epoch: epoch, Sequencer: m.cfg.Self, Synced: epoch, Alone: true}
	return m.persist(next, pResync, "agreed", false, nil)
}

// ResyncFailed: the peer refused the resync at epoch (it is at
// peerEpoch) or did not answer; it is proposed again after RetryAfter.
func (m *Machine) ResyncFailed(epoch, peerEpoch uint64, now time.Time) []Action {
	m.peerEpoch = max(m.peerEpoch, peerEpoch)
	if epoch != m.resyncing {
		return nil
	}
	m.resyncing = 0
	m.resyncAt = now.Add(m.cfg.RetryAfter)
	return nil
}

// preTarget is the pre-election the pair should hold now: none while
// either array reaches the mediator (or the peer's view is unknown), else
// the preference, else the sequencer.
func (m *Machine) preTarget() string {
	if m.medUp || m.peerMed != 2 {
		return ""
	}
	if m.pref == m.cfg.Self || m.pref == m.cfg.Peer {
		return m.pref
	}
	return m.cfg.Self
}

// BaselineDone: every block the peer lacked is on it (later ones were
// mirrored): clear Alone (and any pre-election) durably, then grant.
//
// The grant carries a pre-election of this array only, which this array
// persists once the peer holds it. A pre-election of the peer is engaged
// after the grant is accepted, in the usual steps: carried by the grant,
// it had this array hold it durably before the peer's copy was complete,
// and a grant lost with the link then left the pod to nobody until the
// link returned (this array suspended, promised to the peer; the peer
// behind, never racing), even with the mediator back.
func (m *Machine) BaselineDone(epoch uint64) []Action {
	if m.state != Syncing || epoch != m.rec.Epoch || !m.rec.Alone || m.busy() {
		return nil
	}
	m.grantPre = ""
	if m.preTarget() == m.cfg.Self {
		m.grantPre = m.cfg.Self
	}
	next := m.rec
	next.Alone = false
	// This array drops the right to serve alone before the peer may
	// hold its pre-election.
	next.Pre = ""
	return m.persist(next, pGrant, "", false, nil)
}

// PeerInSync: the peer accepted the grant at epoch: its copy is
// complete and durable.
func (m *Machine) PeerInSync(epoch uint64, now time.Time) []Action {
	if m.state != Syncing || epoch != m.rec.Epoch || m.rec.Alone {
		return nil
	}
	m.peerPre = m.grantPre
	acts := m.set(InSync, []Action{{Kind: ClearTracking, Epoch: epoch}})
	return m.maybePre(acts)
}

// GrantFailed: the grant at epoch was not answered: the peer may or may
// not serve, so the link ends and the pod goes through link loss.
func (m *Machine) GrantFailed(epoch uint64) []Action {
	if m.state != Syncing || epoch != m.rec.Epoch || m.rec.Alone || !m.link {
		return nil
	}
	return []Action{{Kind: EndLink}}
}

// maybePre takes one step of the pre-election towards its target, in the
// order of the package doc: an array drops the right to serve alone
// before the other changes, holds the other's before the other does,
// and holds its own only once the other holds it.
//
// No step is taken while a removal of the peer is in flight: a
// pre-election of the peer engaged meanwhile would leave the pod to
// nobody if the peer left and its answer were lost (see RemovePeer).
func (m *Machine) maybePre(acts []Action) []Action {
	if m.state != InSync || !m.link || m.Role() != Sequencer || m.pending != nil || m.failed != nil || m.preInFlight || m.removing {
		return acts
	}
	want, s, f := m.preTarget(), m.rec.Pre, m.peerPre
	self, peer := m.cfg.Self, m.cfg.Peer
	step := func(rec string) []Action {
		next := m.rec
		next.Pre = rec
		m.preInFlight = true
		return m.persist(next, pPre, "", false, acts)
	}
	ask := func(pre string) []Action {
		m.preInFlight = true
		return append(acts, Action{Kind: SendPreElect, Epoch: m.rec.Epoch, Pre: pre})
	}
	switch {
	case s == self && want != self:
		return step(want)
	case f == peer && want != peer:
		return ask(want)
	case want == peer && s != peer:
		return step(peer)
	case want == peer && f != peer:
		return ask(peer)
	case want == self && f != self:
		return ask(self)
	case want == self && s != self:
		return step(self)
	case want == "" && f != "":
		return ask("")
	case want == "" && s != "":
		return step("")
	}
	return acts
}

// PeerPreElected: the peer durably holds pre (at epoch).
func (m *Machine) PeerPreElected(epoch uint64, pre string) []Action {
	if !m.preInFlight || epoch != m.rec.Epoch || m.state != InSync {
		return nil
	}
	m.preInFlight = false
	m.peerPre = pre
	return m.maybePre(nil)
}

// PreElectFailed: the peer did not take the pre-election step; its
// state is unknown, so the link ends (the next grant sets it again).
func (m *Machine) PreElectFailed(epoch uint64) []Action {
	if !m.preInFlight || epoch != m.rec.Epoch || m.state != InSync {
		return nil
	}
	m.preInFlight = false
	return []Action{{Kind: EndLink}}
}

// Errors of requests the machine refuses.
var (
	// ErrRefused: the request does not fit the pod's state here.
	ErrRefused = errors.New("refused")
	// ErrBusy: a change of the pod's record is under way; try again.
	ErrBusy = errors.New("busy")
	// ErrPeerPreElected: the peer is the pod's pre-elected array (the
	// mediator is unavailable), so it cannot be removed: moving the
	// pre-election to this array first (the failover preference), or
	// the mediator's return, lets the removal go on. It comes wrapped
	// with ErrRefused.
	ErrPeerPreElected = errors.New("the peer is the pod's pre-elected array while the mediator is unavailable")
)

func refuse(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrRefused, fmt.Sprintf(format, args...))
}

// ResyncRequested: the peer asks this array to receive a copy at epoch.
// It is accepted only from a state that neither serves nor races, at a
// later epoch than this array's; the record moves to epoch with the copy
// behind, durably, before the answer. A proposal at the epoch this
// array is at already is refused, even one it accepted: it is an old
// proposal sent again (on a later link session than the one it was
// decided on, say), and taking it would clear a copy made since, which
// may be complete and about to be granted (ReceiveAccepted is the
// driver's own way back into an accepted proposal).
func (m *Machine) ResyncRequested(epoch uint64) ([]Action, error) {
	switch {
	case m.busy():
		return nil, ErrBusy
	case m.cfg.plant == "stale-request" && epoch == m.rec.Epoch && (m.state == Suspended || m.state == Receiving):
		return m.ReceiveAccepted(epoch)
	case m.state != Suspended && m.state != Receiving && m.state != Left:
		return nil, refuse("resync at epoch %d while %s at epoch %d", epoch, m.state, m.rec.Epoch)
	case epoch <= m.rec.Epoch:
		return nil, refuse("resync at epoch %d, already at %d", epoch, m.rec.Epoch)
	case m.state == Suspended && m.rec.Current() && ((m.electing != 0 && m.electing == m.rec.Epoch) ||
		(m.mayHoldGrant() && m.medUp && m.rec.Pre != m.cfg.Peer)):
		// Racing, or it may hold the mediator's grant of the next
		// epoch (its elect was never answered) and reaches the
		// mediator: accepting would give that epoch to the peer, and
		// if the peer then learnt this array's grant from the mediator
		// both records would be behind, each naming the other, with
		// nobody to serve until the link returned. It asks the
		// mediator again first (mayReelect); the peer tries again.
		return nil, ErrBusy
	}
	next := Record{Epoch: epoch, Sequencer: m.cfg.Peer, Synced: m.rec.Synced}
	return m.persist(next, pAcceptResync, "", false, nil), nil
}

// ReceiveAccepted: the driver's handler of the peer's resync at epoch
// made this array's acceptance durable before the pod's configuration
// was installed, which started the pod's runtime (this machine) on that
// record: it receives now. Only that handler calls it, within the
// request, so it is the proposal just accepted, never an old one.
func (m *Machine) ReceiveAccepted(epoch uint64) ([]Action, error) {
	switch {
	case m.busy():
		return nil, ErrBusy
	case epoch != m.rec.Epoch || m.rec.Sequencer != m.cfg.Peer || m.rec.Current() || m.rec.Left ||
		(m.state != Suspended && (m.state != Receiving || m.cfg.plant != "stale-request")):
		return nil, refuse("no resync accepted at epoch %d in state %s (%s)", epoch, m.state, m.rec)
	}
	return m.set(Receiving, []Action{{Kind: ClearCopy}}), nil
}

// GrantRequested: the peer says this array's copy is complete at epoch,
// with the pre-election pre. The received data is synced and Synced
// recorded before this array serves.
func (m *Machine) GrantRequested(epoch uint64, pre string) ([]Action, error) {
	switch {
	case m.busy():
		return nil, ErrBusy
	case m.state != Receiving || epoch != m.rec.Epoch || m.rec.Sequencer != m.cfg.Peer:
		return nil, refuse("in-sync grant at epoch %d in state %s at epoch %d", epoch, m.state, m.rec.Epoch)
	case pre != "" && pre != m.cfg.Self && pre != m.cfg.Peer:
		return nil, refuse("pre-election of array %s, not one of the pod's", pre)
	}
	next := m.rec
	next.Synced = epoch
	next.Pre = pre
	return m.persist(next, pAcceptGrant, "", true, nil), nil
}

// PreElectRequested: the sequencer asks this array to hold the
// pre-election pre (it has ordered the steps).
func (m *Machine) PreElectRequested(epoch uint64, pre string) ([]Action, error) {
	switch {
	case m.busy():
		return nil, ErrBusy
	case m.state != InSync || epoch != m.rec.Epoch || m.rec.Sequencer != m.cfg.Peer:
		return nil, refuse("pre-election at epoch %d in state %s at epoch %d", epoch, m.state, m.rec.Epoch)
	case pre != "" && pre != m.cfg.Self && pre != m.cfg.Peer:
		return nil, refuse("pre-election of array %s, not one of the pod's", pre)
	}
	next := m.rec
	next.Pre = pre
	return m.persist(next, pAcceptPre, "", false, nil), nil
}

// HandoverRequested: the sequencer left the pod at epoch, owned by this
// array from then on. Taken only by a copy current at the epoch before.
func (m *Machine) HandoverRequested(epoch uint64) ([]Action, error) {
	switch {
	case m.busy():
		return nil, ErrBusy
	case m.rec.Sequencer != m.cfg.Peer || !m.rec.Current() || epoch != m.rec.Epoch+1 ||
		(m.state != InSync && m.state != Paused && m.state != Suspended):
		return nil, refuse("handover at epoch %d in state %s (%s)", epoch, m.state, m.rec)
	}
	m.raceAt, m.electing, m.win = time.Time{}, 0, 0
	return m.persist(m.single(epoch), pTakeHandover, "handover", false, nil), nil
}

// RemoveRequested: the sequencer asks this array to give the pod up (at
// epoch). It stops serving once that is durable, and answers. Taken
// only in sync at that epoch, or with a copy that is behind (it serves
// nothing and never races): an array that is racing (paused), or that
// may race again (suspended with a current copy), may win the next
// epoch, and leaving at this one would then leave the pod served by
// nobody.
func (m *Machine) RemoveRequested(epoch uint64) ([]Action, error) {
	switch {
	case m.busy():
		return nil, ErrBusy
	case m.rec.Sequencer != m.cfg.Peer || epoch != m.rec.Epoch:
		return nil, refuse("removal at epoch %d (%s)", epoch, m.rec)
	case m.state != InSync && (m.rec.Current() || (m.state != Receiving && m.state != Suspended && m.state != Left)):
		return nil, refuse("removal at epoch %d while %s (%s)", epoch, m.state, m.rec)
	}
	return m.leave(), nil
}

// Handover: the administrator removes this array, the sequencer, from
// the pod: with its writes held by the driver, it durably gives the pod
// up to the peer at the next epoch, stops serving, then tells the peer.
func (m *Machine) Handover() ([]Action, error) {
	switch {
	case m.busy() || m.preInFlight || m.removing:
		// A removal of the peer in flight (its administrator's call
		// may have returned before the peer's answer): the peer may
		// be giving the pod up, and a handover to it would leave the
		// pod to nobody.
		return nil, ErrBusy
	case m.Role() != Sequencer || m.state != InSync || !m.link:
		return nil, refuse("the pod is %s here; only an in-sync sequencer hands it over", m.state)
	}
	next := Record{Epoch: m.rec.Epoch + 1, Sequencer: m.cfg.Peer, Synced: m.rec.Synced, Left: true}
	return m.persist(next, pHandover, "", false, nil), nil
}

// RemovePeer: the administrator removes the peer from the pod. A peer
// whose copy is behind serves nothing: the pod becomes this array's at
// once. One that may serve is asked to give the pod up first.
func (m *Machine) RemovePeer() ([]Action, error) {
	switch {
	case m.busy() || m.preInFlight || m.removing:
		return nil, ErrBusy
	case m.Role() != Sequencer:
		return nil, refuse("this array does not order the pod")
	}
	switch {
	case (m.state == Alone || m.state == Syncing) && m.rec.Alone:
		acts := m.set(Alone, nil)
		return m.persist(m.single(m.rec.Epoch+1), pSingle, "alone", false, acts), nil
	case (m.state == InSync || m.state == Syncing) && m.link && m.rec.Pre == m.cfg.Peer:
		// The peer is pre-elected: if its answer were lost with the
		// link, this array could not tell a peer that left from one
		// that takes the pod alone without the mediator, so it would
		// neither serve nor race, and nobody would serve the pod until
		// the link returned.
		return nil, fmt.Errorf("%w: %w", ErrRefused, ErrPeerPreElected)
	case (m.state == InSync || m.state == Syncing) && m.link:
		m.removing = true
		return []Action{{Kind: AskRemove, Epoch: m.rec.Epoch}}, nil
	}
	return nil, refuse("the pod is %s here; try again once it is online", m.state)
}

// PeerLeft: the peer durably gave the pod up at epoch.
func (m *Machine) PeerLeft(epoch uint64) []Action {
	if !m.removing || epoch != m.rec.Epoch || m.busy() {
		return nil
	}
	acts := m.set(Alone, nil)
	return m.persist(m.single(m.rec.Epoch+1), pSingle, "agreed", false, acts)
}

// RemoveFailed: the peer did not answer the removal: it may still serve
// under its lease, so the link ends and the pod goes through the race.
func (m *Machine) RemoveFailed(epoch uint64) []Action {
	if !m.removing || epoch != m.rec.Epoch {
		return nil
	}
	m.removing = false
	if m.link {
		return []Action{{Kind: EndLink}}
	}
	return nil
}
