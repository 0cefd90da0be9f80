package scsi

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
)

// BlockSize is the logical block size in bytes.
const BlockSize = 512

// naaCompanyID is the 24-bit IEEE company identifier of the NAA-6
// designator (see the package documentation).
const naaCompanyID = 0xDA4D54

// maxPendingUAs bounds the unit attention queue of one nexus.
const maxPendingUAs = 16

// LUConfig configures a logical unit.
type LUConfig struct {
	// UUID is the volume UUID: the NAA-6 designator and the unit serial
	// number derive from it (identical on every array holding the volume).
	UUID [16]byte
	// Size is the capacity in bytes, a multiple of 4096.
	Size    uint64
	Backend Backend
	// PersistPR durably saves the persistent-reservation state. It is
	// called, and must succeed, before status is returned whenever state
	// with APTPL set changes (nil state = delete the saved state).
	PersistPR func(state []byte) error
	// LoadedPR is the state PersistPR saved earlier (nil if none), restored
	// when the logical unit is created.
	LoadedPR []byte
	// Logger receives the logical unit's warnings (nil: discarded).
	Logger *slog.Logger
	// Replica links the unit to the other array of a stretched pod (nil:
	// the unit is local).
	Replica Replica
	// RememberedOutcomes bounds the COMPARE AND WRITE outcomes of
	// forwarded commands the unit remembers for the host's retry when
	// their answers may be lost (outcome.go): 0 is
	// DefaultRememberedOutcomes, a negative value remembers none.
	RememberedOutcomes int
}

// LogicalUnit is one volume as a SCSI logical unit. It is shared by every
// I_T nexus that sees the volume (through any LUN) and safe for concurrent
// use.
type LogicalUnit struct {
	uuid      [16]byte
	naa       [16]byte
	serial    string
	backend   Backend
	persistPR func([]byte) error
	log       *slog.Logger
	replica   Replica

	size  atomic.Uint64
	locks rangeLock
	// outcomes are the effects of forwarded commands whose answers may
	// have been lost (outcome.go).
	outcomes outcomes
	// target is the Target that has registered the unit among its known
	// units (for target resets), so that it registers it only once.
	target atomic.Pointer[Target]

	// prMu serialises the changes of the reservation state that may have
	// to be persisted: apply, persist, install.
	prMu sync.Mutex

	// mu guards the per-nexus state, the reservation state and the mode
	// parameters.
	mu struct {
		sync.Mutex
		// nexus is the state of every I_T nexus that has used the unit,
		// by Nexus.Key.
		nexus map[string]*nexusState
		res   ReservationState
		// swp is the SWP (software write protect) bit of the control
		// mode page.
		swp bool
		// resets and incarnation are as in ReservationUpdate: the
		// unit's resets and its state's life as this array's nexuses
		// heard of them. known is set once the state was shared with
		// the peer or installed from it (a unit that never was has no
		// life its nexuses heard of to compare).
		resets, incarnation uint64
		known               bool
		// change is set while a change of the reservations or of the
		// SWP bit made here waits to be shared with the peer (under
		// prMu): until it stands or is undone, a command whose answer
		// depends on it waits (decided).
		change *pendingChange
	}
}

// pendingChange is a change of the unit's shared state made here and not
// shared yet: the state it replaced, and done, closed once the change
// stands or is undone.
type pendingChange struct {
	res  ReservationState
	swp  bool
	done chan struct{}
	// waiting counts the commands that wait for it (for tests).
	waiting int
}

// nexusState is what the logical unit keeps for one I_T nexus.
type nexusState struct {
	nexus Nexus
	// uas are the pending unit attentions, oldest first.
	uas []Sense
	// groups are the unit's target port groups as the nexus last heard of
	// them: when it first reported a unit attention (the power on, reset
	// it starts with) or an ASYMMETRIC ACCESS STATE CHANGED since; nil
	// until then (groupsKnown).
	groups      []PortGroup
	groupsKnown bool
}

// NewLogicalUnit returns the logical unit for a volume. Saved persistent
// reservation state that cannot be decoded is logged and dropped.
func NewLogicalUnit(cfg LUConfig) *LogicalUnit {
	lu := &LogicalUnit{
		uuid:      cfg.UUID,
		naa:       naaDesignator(cfg.UUID),
		serial:    hex.EncodeToString(cfg.UUID[:]),
		backend:   cfg.Backend,
		persistPR: cfg.PersistPR,
		log:       cfg.Logger,
		replica:   cfg.Replica,
	}
	if lu.replica == nil {
		lu.replica = localReplica{}
	}
	if lu.log == nil {
		lu.log = slog.New(slog.DiscardHandler)
	}
	lu.outcomes.max = cfg.RememberedOutcomes
	if lu.outcomes.max == 0 {
		lu.outcomes.max = DefaultRememberedOutcomes
	}
	lu.size.Store(cfg.Size)
	lu.mu.nexus = make(map[string]*nexusState)
	lu.mu.incarnation = rand.Uint64() | 1
	if len(cfg.LoadedPR) > 0 {
		st, err := UnmarshalReservationState(cfg.LoadedPR)
		if err != nil {
			lu.log.Warn("dropping saved persistent reservations", "lu", lu.serial, "err", err)
		} else {
			lu.mu.res = st
		}
	}
	return lu
}

// naaDesignator derives the 16-byte NAA IEEE Registered Extended
// designator from the volume UUID.
func naaDesignator(uuid [16]byte) [16]byte {
	h := sha256.New()
	h.Write([]byte("metro-naa-v1"))
	h.Write(uuid[:])
	sum := h.Sum(nil)
	var d [16]byte
	// NAA (4 bits) | company id (24 bits) | vendor specific id (36 bits) |
	// extension (64 bits): the last 100 bits come from the hash.
	cid := uint32(naaCompanyID)
	d[0] = 0x60 | byte(cid>>20)
	d[1] = byte(cid >> 12)
	d[2] = byte(cid >> 4)
	d[3] = byte(cid<<4) | sum[0]>>4
	for i := 4; i < 16; i++ {
		d[i] = sum[i-4]<<4 | sum[i-3]>>4
	}
	return d
}

// Size returns the capacity in bytes.
func (lu *LogicalUnit) Size() uint64 { return lu.size.Load() }

// blocks returns the capacity in logical blocks.
func (lu *LogicalUnit) blocks() uint64 { return lu.size.Load() / BlockSize }

// Serial returns the unit serial number (VPD page 0x80).
func (lu *LogicalUnit) Serial() string { return lu.serial }

// NAA returns the NAA-6 designator (VPD page 0x83).
func (lu *LogicalUnit) NAA() [16]byte { return lu.naa }

// Resize sets the capacity (the volume grew online) and raises CAPACITY
// DATA HAS CHANGED on every nexus.
func (lu *LogicalUnit) Resize(size uint64) {
	lu.size.Store(size)
	lu.raiseAll(SenseCapacityChanged())
}

// Reservations returns a copy of the reservation state.
func (lu *LogicalUnit) Reservations() ReservationState {
	lu.mu.Lock()
	defer lu.mu.Unlock()
	return lu.mu.res.Clone()
}

// raiseAll queues a unit attention for every nexus.
func (lu *LogicalUnit) raiseAll(s Sense) {
	lu.mu.Lock()
	defer lu.mu.Unlock()
	for _, ns := range lu.mu.nexus {
		ns.raise(s)
	}
}

// raise queues unit attention s, once.
func (ns *nexusState) raise(s Sense) {
	for _, p := range ns.uas {
		if p.Is(s) {
			return
		}
	}
	if len(ns.uas) >= maxPendingUAs {
		ns.uas = ns.uas[1:]
	}
	ns.uas = append(ns.uas, s)
}

// accessNow compares the port groups the nexus would be reported now with
// those it last heard of, and establishes ASYMMETRIC ACCESS STATE CHANGED
// when they differ. The first time, the nexus has its power on, reset
// unit attention pending, after which a host reads the states afresh.
func (ns *nexusState) accessNow(groups []PortGroup) {
	if ns.groupsKnown && samePortGroups(ns.groups, groups) {
		return
	}
	if ns.groupsKnown {
		ns.raise(SenseAsymmetricAccessChanged())
	}
	ns.groups, ns.groupsKnown = clonePortGroups(groups), true
}

// stateLocked returns the state of nexus n (whose Key is key), creating it
// (with a pending power on/reset unit attention) on first contact. lu.mu
// must be held.
func (lu *LogicalUnit) stateLocked(n Nexus, key string) *nexusState {
	ns := lu.mu.nexus[key]
	if ns == nil {
		ns = &nexusState{nexus: n, uas: []Sense{SensePowerOnReset()}}
		lu.mu.nexus[key] = ns
	}
	return ns
}

// touch records contact from n without consuming a unit attention.
func (lu *LogicalUnit) touch(n Nexus, key string) {
	lu.mu.Lock()
	lu.stateLocked(n, key)
	lu.mu.Unlock()
}

// takeUA removes and returns the oldest pending unit attention of n.
// groups are the unit's target port groups as n's initiator sees them
// now: if they differ from those n last heard of, ASYMMETRIC ACCESS STATE
// CHANGED is established first (on the nexuses whose access states
// changed, and on no other).
func (lu *LogicalUnit) takeUA(n Nexus, key string, groups []PortGroup) (Sense, bool) {
	lu.mu.Lock()
	defer lu.mu.Unlock()
	ns := lu.stateLocked(n, key)
	ns.accessNow(groups)
	if len(ns.uas) == 0 {
		return Sense{}, false
	}
	s := ns.uas[0]
	ns.uas = ns.uas[1:]
	return s, true
}

// allows reports whether the reservations let n run a command of class c
// (see decided; err is ctx's when it ended first).
func (lu *LogicalUnit) allows(ctx context.Context, n Nexus, c AccessClass) (bool, error) {
	if c == AccessAlways {
		return true, nil
	}
	id := NexusID(n)
	return lu.decided(ctx, func(res *ReservationState, _ bool) bool { return res.Allows(id, c) })
}

// writeProtected reports whether the SWP bit is set (see decided).
func (lu *LogicalUnit) writeProtected(ctx context.Context) (bool, error) {
	return lu.decided(ctx, func(_ *ReservationState, swp bool) bool { return swp })
}

// decided returns f of the unit's reservations and SWP bit, once the
// answer does not depend on a change made here that the peer has not
// confirmed yet (lu.mu.change): until it stands or is undone (the
// sequencer lost the pod before the peer got it, and the command that
// made it fails), no command may act on it, for an array that serves
// the pod may never hold it. A command whose answer is the same with
// and without the change does not wait; one whose answer differs
// (a write of the nexus a pending PREEMPT removes) waits, for at most
// the share's bound (the link's timeout, or the pod's failover), and is
// then answered by the state that stands. Checking it against the state
// before the change instead would let the preempted nexus write after a
// host saw the change through the peer, which installs it before it
// confirms. Waiting cannot deadlock: the share waits only for the peer's
// install, which does not wait for the commands the peer forwarded here
// (InstallReservations), and a command waits here before it takes any
// lock. It returns ctx's error if ctx ends first.
func (lu *LogicalUnit) decided(ctx context.Context, f func(res *ReservationState, swp bool) bool) (bool, error) {
	lu.mu.Lock()
	defer lu.mu.Unlock()
	for {
		v, c := f(&lu.mu.res, lu.mu.swp), lu.mu.change
		if c == nil || f(&c.res, c.swp) == v {
			return v, nil
		}
		c.waiting++
		lu.mu.Unlock()
		select {
		case <-c.done:
		case <-ctx.Done():
		}
		lu.mu.Lock()
		c.waiting--
		if err := ctx.Err(); err != nil {
			return false, err
		}
	}
}

// beginChangeLocked records, before this array changes the shared state
// that it then shares, the state the change replaces (lu.prMu and lu.mu
// held): commands whose answer depends on the change wait until
// endChange.
func (lu *LogicalUnit) beginChangeLocked() {
	lu.mu.change = &pendingChange{res: lu.mu.res.Clone(), swp: lu.mu.swp, done: make(chan struct{})}
}

// endChange ends the change beginChangeLocked recorded: it stands, or
// was undone (lu.prMu held).
func (lu *LogicalUnit) endChange() {
	lu.mu.Lock()
	c := lu.mu.change
	lu.mu.change = nil
	lu.mu.Unlock()
	if c != nil {
		close(c.done)
	}
}

// noticeLocked queues the unit attentions of reservation notices on every
// nexus their registration applies to. lu.mu must be held.
func (lu *LogicalUnit) noticeLocked(notices []PRNotice) {
	for _, nt := range notices {
		for _, ns := range lu.mu.nexus {
			if nt.To.matches(NexusID(ns.nexus)) {
				ns.raise(nt.Sense)
			}
		}
	}
}

// reset performs the logical-unit part of a reset: the SCSI-2 reservation
// is released, mode parameters return to their defaults and every nexus
// gets unit attention ua. Persistent reservations are kept. Where the
// unit's state is decided the reset is counted, for a peer that missed it.
func (lu *LogicalUnit) reset(ua Sense) {
	decides := lu.replica.Decides()
	lu.mu.Lock()
	defer lu.mu.Unlock()
	if decides {
		lu.mu.resets++
	}
	lu.mu.res.SCSI2 = nil
	lu.mu.swp = false
	for _, ns := range lu.mu.nexus {
		ns.raise(ua)
	}
}

// nexusLost forgets nexus n: its unit attentions and SCSI-2 reservation go;
// a later nexus with the same name starts afresh.
func (lu *LogicalUnit) nexusLost(n Nexus) {
	lu.mu.Lock()
	delete(lu.mu.nexus, n.Key())
	held := lu.mu.res.SCSI2 != nil && *lu.mu.res.SCSI2 == NexusID(n)
	lu.mu.Unlock()
	if !held {
		return
	}
	// The sequencer holds the reservation state of a stretched pod: the
	// release goes there (and comes back shared).
	ctx := context.Background()
	if _, fwd := lu.replica.Forward(ctx, &Command{Nexus: n, CDB: []byte{opRelease6, 0, 0, 0, 0, 0}}); fwd {
		return
	}
	_, _ = lu.releaseSCSI2(ctx, n) // logged; the nexus is gone, and held it
}

// PortLost releases the SCSI-2 reservation held through the relative
// target port rtpi, all of whose I_T nexuses are lost: the pod's
// sequencer calls it when it serves the pod alone, the array of that
// port fenced or gone. SPC-2 releases a SCSI-2 reservation on the loss
// of its nexus; persistent reservations are kept. Nexuses of other ports
// hear nothing of it (as on a single array); the holder hears I_T NEXUS
// LOSS OCCURRED when its array rejoins. It returns share's error.
func (lu *LogicalUnit) PortLost(ctx context.Context, rtpi uint16) error {
	lu.prMu.Lock()
	defer lu.prMu.Unlock()
	lu.mu.Lock()
	h := lu.mu.res.SCSI2
	lost := h != nil && h.RelativePortID == rtpi
	if lost {
		lu.mu.res.SCSI2 = nil
	}
	lu.mu.Unlock()
	if !lost {
		return nil
	}
	lu.log.Info("SCSI-2 reservation released: its nexus went through the peer, which is fenced", "lu", lu.serial, "initiator_port", h.InitiatorPort)
	return lu.share(ctx, nil, nil)
}

// raiseFor queues unit attention s for every nexus of initiator, named
// case-insensitively (all nexuses when initiator is empty).
func (lu *LogicalUnit) raiseFor(initiator string, s Sense) {
	lu.mu.Lock()
	defer lu.mu.Unlock()
	for _, ns := range lu.mu.nexus {
		if initiator == "" || strings.EqualFold(ns.nexus.InitiatorName, initiator) {
			ns.raise(s)
		}
	}
}

// applyPR applies a PERSISTENT RESERVE OUT from n: compute, persist when
// APTPL state is involved, install, share with the peer, notify. The
// returned outcome has HARDWARE ERROR sense if persisting failed (nothing
// changed then), and NOT READY (transitioning) if sharing failed (see
// settle).
func (lu *LogicalUnit) applyPR(ctx context.Context, n Nexus, op PROut) PROutcome {
	lu.lockPR(ctx, NexusID(n), op)
	defer lu.prMu.Unlock()
	lu.mu.Lock()
	cur := lu.mu.res.Clone()
	lu.mu.Unlock()
	if !cur.Allows(NexusID(n), AccessControl) {
		return prConflict()
	}
	if lu.outcomes.retriedPR(ctx, NexusID(n), op, cur) {
		// The first run's outcome (outcome.go). A retry sent here, not
		// forwarded, may come while the first run's change is on no
		// other array that serves the pod (its share unconfirmed): it
		// is GOOD once the state is shared again.
		if forwardedOf(ctx) == nil && lu.share(ctx, nil, nil) != nil {
			return prCheck(SenseNotReadyTransitioning())
		}
		return PROutcome{}
	}
	next, out := cur.Apply(NexusID(n), op)
	if out.Status != StatusGood {
		return out
	}
	if err := lu.persist(cur, next); err != nil {
		lu.log.Error("saving persistent reservations failed", "lu", lu.serial, "err", err)
		return prCheck(SenseHardwareError())
	}
	lu.mu.Lock()
	// The SCSI-2 reservation may have changed meanwhile; keep the live one.
	next.SCSI2 = lu.mu.res.SCSI2
	lu.beginChangeLocked()
	lu.mu.res = next
	lu.mu.Unlock()
	lu.outcomes.rememberPR(answerOf(ctx), NexusID(n), op, next)
	err := lu.share(ctx, out.Notices, out.Abort)
	lu.settle(err, out.Notices, func() { lu.undoPR(cur, next) })
	if err != nil {
		return prCheck(SenseNotReadyTransitioning())
	}
	return out
}

// lockPR takes lu.prMu for a PERSISTENT RESERVE OUT op of nexus n. A
// retry of the remembered change whose answer's fate is not known yet
// waits for it first, holding none of the unit's locks: the first run may
// be ending through a PREEMPT AND ABORT whose abort of queued tasks (a
// READ KEYS waiting for lu.prMu) is what settles it. Once lu.prMu is held
// no other change can be remembered, so retriedPR's wait is then over at
// once (or ctx has ended).
func (lu *LogicalUnit) lockPR(ctx context.Context, n PRNexus, op PROut) {
	for {
		lu.outcomes.awaitPR(ctx, n, op)
		lu.prMu.Lock()
		if ctx.Err() != nil || lu.outcomes.pendingPR(n, op) == nil {
			return
		}
		lu.prMu.Unlock()
	}
}

// persist saves next through PersistPR when APTPL is set in it, or deletes
// the saved state when APTPL was set in prev and no longer is (or nothing
// is left).
func (lu *LogicalUnit) persist(prev, next ReservationState) error {
	if lu.persistPR == nil {
		return nil
	}
	switch {
	case next.APTPL && !next.Empty():
		if err := lu.persistPR(next.Marshal()); err != nil {
			return fmt.Errorf("persist reservations: %w", err)
		}
	case prev.APTPL && !prev.Empty():
		if err := lu.persistPR(nil); err != nil {
			return fmt.Errorf("delete saved reservations: %w", err)
		}
	}
	return nil
}

// reserveSCSI2 applies RESERVE(6) from n; false means conflict. err is
// share's: an array serving the pod may lack the change, which is undone
// here.
func (lu *LogicalUnit) reserveSCSI2(ctx context.Context, n Nexus) (ok bool, err error) {
	lu.prMu.Lock()
	defer lu.prMu.Unlock()
	lu.mu.Lock()
	prev := lu.mu.res.SCSI2
	next, ok := lu.mu.res.ReserveSCSI2(NexusID(n))
	if ok {
		lu.beginChangeLocked()
		lu.mu.res = next
	}
	lu.mu.Unlock()
	if ok {
		err = lu.share(ctx, nil, nil)
		lu.settle(err, nil, func() {
			lu.mu.Lock()
			lu.mu.res.SCSI2 = prev
			lu.mu.Unlock()
		})
	}
	return ok, err
}

// releaseSCSI2 applies RELEASE(6) from n (or the loss of nexus n); false
// means conflict, err is share's. A release whose share failed is kept
// (the loss of a nexus must release; a host's RELEASE then fails and is
// retried, and its retry finds nothing held): it lifts a restriction, and
// the sequencer's state is shared in full again when the peer resyncs.
func (lu *LogicalUnit) releaseSCSI2(ctx context.Context, n Nexus) (ok bool, err error) {
	lu.prMu.Lock()
	defer lu.prMu.Unlock()
	lu.mu.Lock()
	prev := lu.mu.res.SCSI2
	lu.mu.res, ok = lu.mu.res.ReleaseSCSI2(NexusID(n))
	changed := prev != lu.mu.res.SCSI2
	lu.mu.Unlock()
	if changed {
		return ok, lu.share(ctx, nil, nil)
	}
	return ok, nil
}

// resetShared performs the reset's part that the peer must know of, after
// reset ran here. Whichever array this is, the peer is asked to perform
// the same reset of the unit (Replica.Reset, ResetFromPeer; not when it
// does not serve the pod): a logical unit reset aborts the peer's tasks
// for the unit and gives its nexuses LOGICAL UNIT RESET; a target reset
// aborts none of them (they are another target's) but releases the
// SCSI-2 reservation there whoever holds it, returns the mode parameters
// to their defaults and gives its nexuses POWER ON, RESET. A peer that is
// the sequencer shares the state it reset back. Then the state reset
// here is shared: at the sequencer (the cleared SCSI-2 reservation and
// mode parameters, the counted reset) with the follower; elsewhere the
// share fails, as at any array that does not order the pod, and that is
// only logged: the sequencer's own share brings its state. A failed
// share is never undone, for a reset lifts restrictions (as releaseSCSI2
// keeps a release), and the whole state is shared again when the peer
// resyncs.
func (lu *LogicalUnit) resetShared(ctx context.Context, lunReset bool) {
	lu.replica.Reset(ctx, lunReset)
	lu.prMu.Lock()
	lu.share(ctx, nil, nil)
	lu.prMu.Unlock()
}
