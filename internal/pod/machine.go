// Package pod holds the protocol core of a stretched pod on one array: a
// state machine without I/O that takes events (link up or lost, timer,
// durable write done, baseline done, peer's answers) and returns the
// actions the array must perform. One goroutine per pod drives it (the
// replication package), so every interleaving can be tested without
// sockets or sleeps.
//
// Until the mediator exists the machine implements the fixed bias of
// DESIGN.md: when the link is lost the pod stays online on its sequencer
// only, and the other array suspends. The sequencer waits until the
// follower's read lease has surely expired (the fence time) and has
// durably moved to a new epoch before it completes, alone, the writes that
// were waiting on the follower.
package pod

import (
	"fmt"
	"time"
)

// Role is an array's part in a stretched pod.
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

// State is a stretched pod's state on one array.
type State string

// States.
const (
	// Syncing: sequencer, serving; the follower is receiving its copy
	// (baseline or resync) and every write is mirrored to it.
	Syncing State = "syncing"
	// InSync: both arrays serve; every write is on both before GOOD.
	InSync State = "in-sync"
	// Paused: sequencer, the link was lost while the follower was in
	// sync; writes wait until the follower is fenced.
	Paused State = "paused"
	// Alone: sequencer, serving without the follower.
	Alone State = "alone"
	// Receiving: follower, receiving its copy; not serving.
	Receiving State = "receiving"
	// Suspended: follower, not serving.
	Suspended State = "suspended"
)

// ActionKind names what the driver must do.
type ActionKind uint8

// Actions.
const (
	// PersistEpoch: durably record Epoch as the pod's epoch, then feed
	// Persisted.
	PersistEpoch ActionKind = iota + 1
	// StartResync: ask the follower to receive a fresh copy at Epoch
	// (it clears its copy and installs the pod's configuration), then
	// feed ResyncStarted (or LinkDown).
	StartResync
	// CopyBaseline: copy every written block to the follower, then feed
	// BaselineDone.
	CopyBaseline
	// GrantInSync: tell the follower its copy is complete at Epoch, then
	// feed PeerInSync.
	GrantInSync
	// ClearCopy: follower, discard this array's copy of the pod's volumes
	// before receiving a new one, then answer the sequencer.
	ClearCopy
	// ReleaseWrites: wake writes waiting for the pod's state to change.
	ReleaseWrites
	// AccessChanged: the pod's ALUA states changed on this array.
	AccessChanged
)

func (k ActionKind) String() string {
	switch k {
	case PersistEpoch:
		return "persist-epoch"
	case StartResync:
		return "start-resync"
	case CopyBaseline:
		return "copy-baseline"
	case GrantInSync:
		return "grant-in-sync"
	case ClearCopy:
		return "clear-copy"
	case ReleaseWrites:
		return "release-writes"
	case AccessChanged:
		return "access-changed"
	}
	return fmt.Sprintf("action(%d)", uint8(k))
}

// Action is one thing to do.
type Action struct {
	Kind  ActionKind
	Epoch uint64
}

func (a Action) String() string {
	switch a.Kind {
	case ReleaseWrites, AccessChanged, ClearCopy:
		return a.Kind.String()
	}
	return fmt.Sprintf("%s %d", a.Kind, a.Epoch)
}

// Machine is the state of one stretched pod on one array.
type Machine struct {
	role    Role
	state   State
	epoch   uint64
	link    bool
	timeout time.Duration
	// fenceAt is when the follower's read lease has surely expired
	// (Paused only).
	fenceAt time.Time
	// pending is the epoch of a PersistEpoch in flight (0: none).
	pending uint64
	// resyncing is set from StartResync until the follower answers.
	resyncing bool
	// granted is set once GrantInSync went out (Syncing).
	granted bool
	// started is the epoch of the StartResync in flight (0: none).
	started uint64
}

// New returns the machine of a pod after the array (re)started: a
// sequencer is paused until the follower, which may still serve reads
// under its lease, is surely fenced; a follower is suspended until the
// sequencer gives it a fresh copy. timeout is the link's dead-peer
// timeout, which bounds the follower's lease.
func New(role Role, epoch uint64, now time.Time, timeout time.Duration) *Machine {
	m := &Machine{role: role, epoch: epoch, timeout: timeout}
	if role == Sequencer {
		m.state = Paused
		m.fenceAt = now.Add(timeout)
	} else {
		m.state = Suspended
	}
	return m
}

// NewStretched returns the sequencer's machine of a pod that was just
// stretched: its follower has never served, so there is nothing to
// fence and the sequencer starts alone (a resync starts once the link is
// up).
func NewStretched(epoch uint64, timeout time.Duration) *Machine {
	return &Machine{role: Sequencer, epoch: epoch, timeout: timeout, state: Alone}
}

// Role returns the array's role.
func (m *Machine) Role() Role { return m.role }

// State returns the pod's state on this array.
func (m *Machine) State() State { return m.state }

// Epoch returns the pod's durable epoch on this array.
func (m *Machine) Epoch() uint64 { return m.epoch }

// Link reports whether the link to the peer is up.
func (m *Machine) Link() bool { return m.link }

// Granted reports whether a syncing sequencer has sent the in-sync grant:
// the follower may serve from its acceptance on, so from then on every
// write must reach it.
func (m *Machine) Granted() bool { return m.granted }

// FenceAt returns when a paused sequencer may fence the follower.
func (m *Machine) FenceAt() time.Time { return m.fenceAt }

// Serving reports whether this array serves host I/O for the pod.
// A paused sequencer serves reads; its writes wait.
func (m *Machine) Serving() bool {
	switch m.state {
	case Syncing, InSync, Paused, Alone:
		return true
	}
	return false
}

// Mirroring reports whether writes must reach the follower too.
func (m *Machine) Mirroring() bool {
	return m.role == Sequencer && (m.state == Syncing || m.state == InSync)
}

// set changes state. Every change may change the ALUA states some array
// reports (this array's group, or its view of the peer's), so each
// raises the asymmetric-access-state-changed unit attention.
func (m *Machine) set(s State, acts []Action) []Action {
	was := m.state
	m.state = s
	if was != s {
		acts = append(acts, Action{Kind: AccessChanged})
	}
	return append(acts, Action{Kind: ReleaseWrites})
}

// LinkUp: a session with the peer is established.
func (m *Machine) LinkUp(now time.Time) []Action {
	m.link = true
	return m.maybeResync(nil)
}

// LinkDown: the session with the peer is gone. lastHeard is when the
// peer was last heard from: its lease ends no later than lastHeard plus
// the timeout.
func (m *Machine) LinkDown(now, lastHeard time.Time) []Action {
	m.link = false
	m.resyncing = false
	if m.role == Follower {
		if m.state == Receiving || m.state == InSync {
			return m.set(Suspended, nil)
		}
		return nil
	}
	switch m.state {
	case InSync:
		m.fenceAt = lastHeard.Add(m.timeout)
		acts := m.set(Paused, nil)
		return append(acts, m.Tick(now)...)
	case Syncing:
		if m.granted {
			m.granted = false
			m.fenceAt = lastHeard.Add(m.timeout)
			acts := m.set(Paused, nil)
			return append(acts, m.Tick(now)...)
		}
		// The follower was not serving: nothing to fence.
		return m.set(Alone, nil)
	case Receiving:
		return m.set(Suspended, nil)
	}
	return nil
}

// Tick: the clock reads now.
func (m *Machine) Tick(now time.Time) []Action {
	if m.state == Paused && m.pending == 0 && !now.Before(m.fenceAt) {
		m.pending = m.epoch + 1
		return []Action{{Kind: PersistEpoch, Epoch: m.pending}}
	}
	return nil
}

// LeaseExpired: follower, the read lease granted by the sequencer's
// heartbeats ran out.
func (m *Machine) LeaseExpired() []Action {
	if m.role == Follower && m.state == InSync {
		return m.set(Suspended, nil)
	}
	return nil
}

// Persisted: the epoch of a PersistEpoch action is durable.
func (m *Machine) Persisted(epoch uint64) []Action {
	if m.pending == 0 || epoch != m.pending {
		return nil
	}
	m.pending = 0
	m.epoch = epoch
	var acts []Action
	if m.state == Paused {
		acts = m.set(Alone, acts)
	}
	if m.resyncing && m.link {
		m.started = epoch
		return append(acts, Action{Kind: StartResync, Epoch: epoch})
	}
	m.resyncing = false
	return m.maybeResync(acts)
}

// maybeResync starts a resync when a sequencer serving alone has the
// link: first a new epoch, then StartResync.
func (m *Machine) maybeResync(acts []Action) []Action {
	if m.role != Sequencer || m.state != Alone || !m.link || m.resyncing || m.pending != 0 {
		return acts
	}
	m.resyncing = true
	m.pending = m.epoch + 1
	return append(acts, Action{Kind: PersistEpoch, Epoch: m.pending})
}

// ResyncStarted: the follower has cleared its copy and receives at epoch.
func (m *Machine) ResyncStarted(epoch uint64) []Action {
	if m.state != Alone || !m.resyncing || epoch != m.epoch || !m.link || m.started != epoch || m.pending != 0 {
		return nil
	}
	m.resyncing = false
	acts := m.set(Syncing, nil)
	return append(acts, Action{Kind: CopyBaseline, Epoch: epoch})
}

// ResyncFailed: the follower refused or could not start the resync; it
// is tried again when the link next comes up.
func (m *Machine) ResyncFailed(epoch uint64) []Action {
	if epoch == m.epoch {
		m.resyncing = false
	}
	return nil
}

// BaselineDone: every block written before the copy started is on the
// follower (later ones were mirrored).
func (m *Machine) BaselineDone(epoch uint64) []Action {
	if m.state != Syncing || epoch != m.epoch {
		return nil
	}
	m.granted = true
	return []Action{{Kind: GrantInSync, Epoch: epoch}}
}

// PeerInSync: the follower has accepted its in-sync grant at epoch.
func (m *Machine) PeerInSync(epoch uint64) []Action {
	if m.state != Syncing || epoch != m.epoch || !m.granted {
		return nil
	}
	m.granted = false
	return m.set(InSync, nil)
}

// ResyncRequested: follower, the sequencer starts a fresh copy at epoch.
// The driver clears the copy (ClearCopy) and then answers.
func (m *Machine) ResyncRequested(epoch uint64) ([]Action, error) {
	if m.role != Follower {
		return nil, fmt.Errorf("resync requested of the sequencer")
	}
	if epoch <= m.epoch {
		return nil, fmt.Errorf("resync at epoch %d, already at %d", epoch, m.epoch)
	}
	m.epoch = epoch
	acts := []Action{{Kind: ClearCopy}}
	return m.set(Receiving, acts), nil
}

// GrantedInSync: follower, the sequencer says the copy is complete.
func (m *Machine) GrantedInSync(epoch uint64) ([]Action, error) {
	if m.role != Follower || m.state != Receiving || epoch != m.epoch {
		return nil, fmt.Errorf("in-sync grant at epoch %d refused in state %s at epoch %d", epoch, m.state, m.epoch)
	}
	return m.set(InSync, nil), nil
}

// AcceptsEpoch reports whether a replicated message of epoch belongs to
// the pod's current epoch (DESIGN.md: a message of another epoch is
// refused).
func (m *Machine) AcceptsEpoch(epoch uint64) bool { return epoch == m.epoch }
