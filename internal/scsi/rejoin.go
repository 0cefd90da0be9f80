package scsi

import "slices"

// Unit attentions are part of a stretched pod's replicated state. While
// the arrays are in sync, every change reaches the peer's nexuses as it
// happens (the notices of a ReservationUpdate, ResetFromPeer). While one
// array is cut off, its nexuses hear nothing; when it rejoins, the
// sequencer sends it the full state as the copy starts (and every change
// until it is in sync), marked Resync, which it compares with the state
// it holds: each of its nexuses gets the unit attentions it would have
// got on a single array (missedAttentions). No log of events is kept:
// what was missed is read from the difference of two states, and from the
// counters of resets and lives of the state that the update carries.

// missedAttentions returns the unit attentions owed to the nexuses of an
// array that last heard of the unit's state held (its reservations and
// its SWP bit) when the state is now now: all for every nexus, notices
// for the nexuses a registration applies to. powerOn: the state's life
// changed (the array that decides it restarted and lost what was not
// persisted): POWER ON, RESET alone; reset: the unit was reset meanwhile
// (BUS DEVICE RESET FUNCTION OCCURRED, for a logical unit or a target
// reset).
//
// Approximations, where a difference of states cannot tell two causes
// apart: a registration gone is REGISTRATIONS PREEMPTED (also when a
// CLEAR removed it, which on a single array is RESERVATIONS PREEMPTED);
// a SCSI-2 reservation gone without a reset was released by the loss of
// its nexus (I_T NEXUS LOSS OCCURRED, to the holder only).
func missedAttentions(held, now ReservationState, heldSWP, nowSWP, powerOn, reset bool) (all []Sense, notices []PRNotice) {
	if powerOn {
		// A host reads everything again after a power on.
		return []Sense{SensePowerOnReset()}, nil
	}
	if reset {
		all = append(all, SenseLUNReset())
	} else {
		if held.SCSI2 != nil && (now.SCSI2 == nil || *now.SCSI2 != *held.SCSI2) {
			notices = append(notices, PRNotice{To: Registration{Nexus: *held.SCSI2}, Sense: SenseNexusLoss()})
		}
		if heldSWP != nowSWP {
			all = append(all, SenseModeParametersChanged())
		}
	}
	same := func(a, b Registration) bool { return a.Nexus == b.Nexus && a.AllTargetPorts == b.AllTargetPorts }
	var kept []Registration
	for _, r := range held.Registrations {
		if i := slices.IndexFunc(now.Registrations, func(o Registration) bool { return same(o, r) }); i >= 0 {
			kept = append(kept, now.Registrations[i])
		} else {
			notices = append(notices, PRNotice{To: r, Sense: SenseRegistrationsPreempted()})
		}
	}
	if !held.Reserved {
		return all, notices
	}
	// The reservation was released (announced to registrants of the
	// registrants only types) or preempted with another type (announced
	// to every registrant but the new holder).
	released := !now.Reserved && held.Type.registrantsOnly()
	retyped := now.Reserved && now.Type != held.Type
	for _, r := range kept {
		if released || (retyped && !same(r, now.Holder)) {
			notices = append(notices, PRNotice{To: r, Sense: SenseReservationsReleased()})
		}
	}
	return all, notices
}

// catchUpLocked raises, before update u is installed, the unit
// attentions this array's nexuses missed if u is marked Resync, and
// takes u's counters. lu.mu must be held.
func (lu *LogicalUnit) catchUpLocked(u ReservationUpdate) {
	if u.Incarnation == 0 {
		return // from an array that does not count
	}
	// A unit that never shared or installed a state (new here, or
	// after a restart) has nexuses that heard of nothing but their own
	// POWER ON, RESET.
	if u.Resync && lu.mu.known {
		powerOn := u.Incarnation != lu.mu.incarnation
		reset := !powerOn && u.Resets != lu.mu.resets
		now := u.State.Clone()
		now.SCSI2 = u.SCSI2
		all, notices := missedAttentions(lu.mu.res, now, lu.mu.swp, u.SWP, powerOn, reset)
		for _, s := range all {
			for _, ns := range lu.mu.nexus {
				ns.raise(s)
			}
		}
		lu.noticeLocked(notices)
	}
	lu.mu.resets, lu.mu.incarnation, lu.mu.known = u.Resets, u.Incarnation, true
}
