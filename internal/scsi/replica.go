package scsi

import (
	"context"
	"errors"
	"fmt"
)

// Replica connects a logical unit whose volume belongs to a stretched pod
// to the other array of the pod. The pod's sequencer decides everything
// whose outcome depends on order: every command that changes the medium
// or the reservations runs there (Forward), and the sequencer shares the
// resulting reservation state and resets with the peer. The array gives
// every logical unit a Replica; for a local pod it forwards nothing.
type Replica interface {
	// Forward runs cmd at the pod's sequencer and returns its result with
	// true when this array is not the sequencer; false means the command
	// runs here. Forward is called only for ordered commands (writes,
	// COMPARE AND WRITE, WRITE SAME, UNMAP, PERSISTENT RESERVE OUT,
	// RESERVE, RELEASE and MODE SELECT), after this array has reported its unit
	// attentions and checked its ALUA state. It calls cmd.Forwarded just
	// before it sends the command, and gives up (a retryable NOT READY)
	// when the sequencer has not answered within a deadline tied to the
	// link's timeout.
	Forward(ctx context.Context, cmd *Command) (*Result, bool)
	// Ordering reports whether this array orders the unit's writes for a
	// peer that receives them. Reads then wait for overlapping writes in
	// flight, so that no read returns data the peer does not have yet.
	Ordering() bool
	// Readable returns nil once this array may answer a read of the
	// unit's shared state (its reservations) from its own copy, as it
	// may a read of data: the pod is served here under this array's
	// lease. While the pod is being decided it waits; it returns
	// ErrTransitioning when the pod is not served here (or ctx ends
	// first), for the peer may have changed the state since.
	Readable(ctx context.Context) error
	// ShareReservations is called at the sequencer after the reservation
	// state changed here and before the command's status is returned; it
	// returns nil once the peer has installed u (InstallReservations) or
	// no longer serves the pod (this array then serves it alone, and the
	// peer gets the whole state when it resyncs). It returns an error
	// (wrapping ErrTransitioning when the host may retry) when the
	// change may be missing on an array that serves the pod: this array
	// no longer orders the pod (it lost it, the change unconfirmed). The
	// caller then undoes the change and fails the command, unless the
	// error wraps ErrMayBeShared.
	ShareReservations(ctx context.Context, u ReservationUpdate) error
	// Reset is called after a reset here: the peer performs the same
	// reset of the unit (ResetFromPeer). It returns once the peer has, or
	// after a deadline tied to the link's timeout (the link then ends,
	// as when a forwarded command is not answered).
	Reset(ctx context.Context, lunReset bool)
	// Decides reports whether this array decides the unit's shared state
	// now: it is the pod's sequencer (with its peer or alone), or the
	// unit is local. Only such an array counts the unit's resets
	// (ReservationUpdate.Resets).
	Decides() bool
}

// ErrMayBeShared is wrapped by a ShareReservations error after which the
// peer may hold the update (it went out and was not confirmed before the
// command ended): the change is kept here, for a host may have seen it
// through the peer, and the command fails as of unknown outcome.
var ErrMayBeShared = errors.New("scsi: the peer may hold the reservation change")

// ReservationUpdate is the reservation state of a logical unit after a
// change at the sequencer, with what the change owes to the nexuses of the
// peer: unit attentions, and the tasks PREEMPT AND ABORT aborts.
type ReservationUpdate struct {
	State ReservationState `json:"state"`
	// SCSI2 is the SCSI-2 reservation holder (State does not serialise it).
	SCSI2   *PRNexus       `json:"scsi2,omitempty"`
	Notices []PRNotice     `json:"notices,omitempty"`
	Abort   []Registration `json:"abort,omitempty"`
	// SWP is the software write protect bit of the control mode page,
	// shared like the reservations; ModeChangedBy, when set, names the
	// nexus that changed it (every other nexus gets MODE PARAMETERS
	// CHANGED).
	SWP           bool     `json:"swp,omitempty"`
	ModeChangedBy *PRNexus `json:"mode_changed_by,omitempty"`
	// Resets counts the resets of the unit performed where its state is
	// decided, and Incarnation names the life of that state: a new one
	// when a logical unit starts without its peer's state (an array
	// restarted), which is a power on for the peer's nexuses.
	Resets      uint64 `json:"resets,omitempty"`
	Incarnation uint64 `json:"incarnation,omitempty"`
	// Resync marks an update sent while the peer receives a copy (the
	// full state ShareReservationsNow sends when the copy starts, and
	// every change until the peer is in sync): the peer may have missed
	// changes, and compares the update with the state it holds to give
	// its nexuses the unit attentions they missed (missedAttentions).
	Resync bool `json:"resync,omitempty"`
}

// localReplica is the Replica of a unit created without one.
type localReplica struct{}

func (localReplica) Forward(context.Context, *Command) (*Result, bool)          { return nil, false }
func (localReplica) Ordering() bool                                             { return false }
func (localReplica) Readable(context.Context) error                             { return nil }
func (localReplica) ShareReservations(context.Context, ReservationUpdate) error { return nil }
func (localReplica) Reset(context.Context, bool)                                {}
func (localReplica) Decides() bool                                              { return true }

// update returns the ReservationUpdate announcing the current state with
// notices and aborts. lu.mu must be held.
func (lu *LogicalUnit) updateLocked(notices []PRNotice, abort []Registration) ReservationUpdate {
	st := lu.mu.res.Clone()
	return ReservationUpdate{State: st, SCSI2: st.SCSI2, Notices: notices, Abort: abort, SWP: lu.mu.swp,
		Resets: lu.mu.resets, Incarnation: lu.mu.incarnation}
}

// share sends the current reservation state to the peer. lu.prMu must be
// held, so that updates reach the peer in the order they were made.
//
// An error means the change may be missing on an array that serves the
// pod (this array lost the pod before the peer confirmed it): the
// command that made the change must not be reported GOOD, and undoes it
// here (undo) unless the error wraps ErrMayBeShared. A reservation
// change is acknowledged only once every serving array holds it.
func (lu *LogicalUnit) share(ctx context.Context, notices []PRNotice, abort []Registration) error {
	lu.mu.Lock()
	u := lu.updateLocked(notices, abort)
	lu.mu.Unlock()
	err := lu.replica.ShareReservations(ctx, u)
	switch {
	case errors.Is(err, ErrTransitioning):
		// The pod is not ordered here, or the link ends (logged there).
		lu.log.Debug("reservations not shared with the peer", "lu", lu.serial, "err", err)
	case err != nil:
		lu.log.Warn("sharing reservations with the peer failed (a command that changed them fails, the host retries)", "lu", lu.serial, "err", err)
	}
	return err
}

// settle finishes a change that share answered err for (lu.prMu held
// since the change): a change that stands (shared, or possibly shared:
// ErrMayBeShared) establishes its unit attentions, any other is undone.
// The change then no longer holds back the commands that depend on it
// (endChange).
func (lu *LogicalUnit) settle(err error, notices []PRNotice, undo func()) {
	defer lu.endChange()
	if err != nil && !errors.Is(err, ErrMayBeShared) {
		undo()
		return
	}
	lu.mu.Lock()
	lu.noticeLocked(notices)
	lu.mu.Unlock()
}

// undoPR restores the persistent reservation state prev after a change to
// next whose share failed (lu.prMu held since the change): in memory, and
// in the saved state when the change was saved. The SCSI-2 reservation is
// the live one (a reset may have released it meanwhile). The change's unit
// attentions were not established: they are once it is shared.
func (lu *LogicalUnit) undoPR(prev, next ReservationState) {
	if err := lu.persist(next, prev); err != nil {
		lu.log.Error("restoring the saved persistent reservations after a failed change: the saved state may hold the change (it is replaced at the next change)", "lu", lu.serial, "err", err)
	}
	lu.mu.Lock()
	prev.SCSI2 = lu.mu.res.SCSI2
	lu.mu.res = prev
	lu.mu.Unlock()
}

// ShareReservationsNow sends the unit's current reservation state to the
// peer (the sequencer does so when the peer starts receiving a copy: any
// later change is shared as it happens, both under the same lock).
func (lu *LogicalUnit) ShareReservationsNow(ctx context.Context) error {
	lu.prMu.Lock()
	defer lu.prMu.Unlock()
	lu.mu.Lock()
	u := lu.updateLocked(nil, nil)
	u.Resync = true
	lu.mu.known = true
	lu.mu.Unlock()
	return lu.replica.ShareReservations(ctx, u)
}

// InstallReservations makes the reservation state decided at the pod's
// sequencer this unit's state: it is persisted when APTPL is set, the
// notices become unit attentions on this array's nexuses, and the tasks of
// aborted registrations running here are aborted.
//
// The sequencer waits for this while it holds the unit's reservation
// lock, so the install waits only for the aborted tasks that run on this
// array (reads and the other commands served locally): those this array
// forwarded to the sequencer are marked aborted (their hosts get no
// status) but not waited for. They run at the sequencer, whose PREEMPT
// AND ABORT aborts them there and waits for them before it reports GOOD,
// and one arriving there after the change finds the new reservations:
// no write of a preempted nexus completes after the PREEMPT's GOOD.
// Waiting for them here would deadlock when one of them waits at the
// sequencer for that same lock (two nodes fencing each other through the
// two arrays).
func (lu *LogicalUnit) InstallReservations(ctx context.Context, u ReservationUpdate) error {
	lu.prMu.Lock()
	defer lu.prMu.Unlock()
	next := u.State.Clone()
	next.SCSI2 = nil
	if u.SCSI2 != nil {
		h := *u.SCSI2
		next.SCSI2 = &h
	}
	lu.mu.Lock()
	cur := lu.mu.res.Clone()
	lu.mu.Unlock()
	if err := lu.persist(cur, next); err != nil {
		return fmt.Errorf("install reservations: %w", err)
	}
	lu.mu.Lock()
	lu.catchUpLocked(u)
	lu.mu.res = next
	lu.mu.swp = u.SWP
	if u.ModeChangedBy != nil {
		lu.modeChangedLocked(*u.ModeChangedBy)
	}
	lu.noticeLocked(u.Notices)
	lu.mu.Unlock()
	lu.rememberInstalled(ctx, next)
	if t := lu.target.Load(); t != nil && len(u.Abort) > 0 {
		t.abortHere(ctx, func(tk *task) bool {
			if tk.lu != lu {
				return false
			}
			id := NexusID(tk.nexus)
			for _, r := range u.Abort {
				if r.matches(id) {
					return true
				}
			}
			return false
		})
	}
	return nil
}

// ResetFromPeer performs the part of a reset on the other array of the pod
// that concerns this array: for a logical unit reset this array's tasks
// for the unit are aborted and its nexuses get the LOGICAL UNIT RESET unit
// attention. A target reset there reset the unit, which this array
// serves too: its SCSI-2 reservation is released whoever holds it and its
// mode parameters return to their defaults (SPC-2: a reset releases the
// reservation), and this array's nexuses get POWER ON, RESET as the
// peer's do, so that a holder here learns its reservation is gone. The
// tasks of this array's nexuses run on: a target reset aborts the tasks
// of its own target. At the sequencer the resulting reservation state is
// shared. Tasks this array forwarded to the sequencer are aborted without
// being waited for, as in InstallReservations (the sequencer aborts them
// there).
func (lu *LogicalUnit) ResetFromPeer(ctx context.Context, lunReset bool) {
	if lunReset {
		if t := lu.target.Load(); t != nil {
			t.abortHere(ctx, func(o *task) bool { return o.lu == lu })
		}
		lu.reset(SenseLUNReset())
	} else {
		lu.reset(SensePowerOnReset())
	}
	lu.prMu.Lock()
	lu.share(ctx, nil, nil)
	lu.prMu.Unlock()
}

// LockRange takes the unit's range lock on length bytes from off (both
// multiples of the block size), the lock every write holds; replication
// uses it to copy a region without racing host writes. The caller must
// call the returned function.
func (lu *LogicalUnit) LockRange(ctx context.Context, off, length int64) (func(), error) {
	return lu.locks.lock(ctx, uint64(off)/BlockSize, uint64(length)/BlockSize)
}

// ExecuteForwarded runs, at the pod's sequencer, an ordered command that
// the other array received from a host on one of its nexuses and
// forwarded (Replica.Forward). The other array has already dealt with
// unit attentions and ALUA; here the command is checked against the
// reservations and run, as a task that task management can abort.
func (t *Target) ExecuteForwarded(ctx context.Context, lu *LogicalUnit, cmd *Command) *Result {
	if len(cmd.CDB) == 0 {
		return checkCondition(SenseInvalidOpcode())
	}
	t.register(lu)
	key := cmd.Nexus.Key()
	ctx, tk := t.startTask(ctx, cmd, key, lu)
	defer t.endTask(cmd, key, tk)
	x := &exec{ctx: ctx, t: t, lu: lu, cmd: cmd, cdb: cmd.CDB, key: key}
	c, bad := t.table.lookup(x.cdb)
	var res *Result
	switch {
	case bad != nil:
		res = checkCondition(*bad)
	case len(x.cdb) < len(c.usage):
		res = checkCondition(SenseInvalidFieldInCDB(len(x.cdb)))
	default:
		x.cdb = x.cdb[:len(c.usage)]
		if s := c.checkReserved(x.cdb); s != nil {
			res = checkCondition(*s)
		} else if res = x.reservationsAllow(c.access); res == nil {
			res = c.run(x)
		}
	}
	if tk.aborted.Load() {
		return &Result{Aborted: true}
	}
	return res
}
