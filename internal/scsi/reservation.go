package scsi

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
)

// PRType is a persistent reservation type (SPC-4 6.16.3.4).
type PRType uint8

// Persistent reservation types.
const (
	PRWriteExclusive                 PRType = 1
	PRExclusiveAccess                PRType = 3
	PRWriteExclusiveRegistrantsOnly  PRType = 5
	PRExclusiveAccessRegistrantsOnly PRType = 6
	PRWriteExclusiveAllRegistrants   PRType = 7
	PRExclusiveAccessAllRegistrants  PRType = 8
)

// Valid reports whether t is one of the supported types.
func (t PRType) Valid() bool {
	switch t {
	case PRWriteExclusive, PRExclusiveAccess,
		PRWriteExclusiveRegistrantsOnly, PRExclusiveAccessRegistrantsOnly,
		PRWriteExclusiveAllRegistrants, PRExclusiveAccessAllRegistrants:
		return true
	}
	return false
}

// allRegistrants reports whether every registrant holds the reservation.
func (t PRType) allRegistrants() bool {
	return t == PRWriteExclusiveAllRegistrants || t == PRExclusiveAccessAllRegistrants
}

// registrantsOnly reports whether registrants have access (the RO and AR
// types): releasing such a reservation is announced to the registrants.
func (t PRType) registrantsOnly() bool {
	return t == PRWriteExclusiveRegistrantsOnly || t == PRExclusiveAccessRegistrantsOnly || t.allRegistrants()
}

// PRAction is a PERSISTENT RESERVE OUT service action.
type PRAction uint8

// PERSISTENT RESERVE OUT service actions. REGISTER AND MOVE is not
// supported.
const (
	PRRegister               PRAction = 0
	PRReserve                PRAction = 1
	PRRelease                PRAction = 2
	PRClear                  PRAction = 3
	PRPreempt                PRAction = 4
	PRPreemptAndAbort        PRAction = 5
	PRRegisterAndIgnoreExist PRAction = 6
)

// PRNexus is the I_T nexus identity reservations are keyed on: the SCSI
// initiator port name and the relative target port identifier, both stable
// across sessions and array restarts.
type PRNexus struct {
	InitiatorPort  string `json:"initiator_port"`
	RelativePortID uint16 `json:"rtpi"`
}

// NexusID returns the reservation identity of n.
func NexusID(n Nexus) PRNexus {
	return PRNexus{InitiatorPort: n.InitiatorPort, RelativePortID: n.RelativePortID}
}

// Registration is one registered reservation key.
type Registration struct {
	Key   uint64  `json:"key"`
	Nexus PRNexus `json:"nexus"`
	// AllTargetPorts: registered with ALL_TG_PT, so the registration
	// applies to the initiator port through every target port.
	AllTargetPorts bool `json:"all_tg_pt,omitempty"`
}

// matches reports whether the registration applies to the I_T nexus n.
func (r Registration) matches(n PRNexus) bool {
	return r.Nexus.InitiatorPort == n.InitiatorPort && (r.AllTargetPorts || r.Nexus.RelativePortID == n.RelativePortID)
}

// ReservationState is the complete reservation state of a logical unit:
// persistent reservation registrations and reservation, and the SCSI-2
// (RESERVE(6)) reservation. It is a plain value: every method is pure, so
// the state can be replicated by applying the same operations in the same
// order anywhere.
type ReservationState struct {
	Generation    uint32         `json:"generation"`
	APTPL         bool           `json:"aptpl,omitempty"`
	Registrations []Registration `json:"registrations,omitempty"`
	// Reserved is set when a persistent reservation exists, of type Type,
	// held by Holder (for the all-registrants types every registrant is a
	// holder and Holder is the registration that reserved).
	Reserved bool         `json:"reserved,omitempty"`
	Type     PRType       `json:"type,omitempty"`
	Holder   Registration `json:"holder,omitempty"`
	// SCSI2 is the holder of a SCSI-2 reservation (never persisted).
	SCSI2 *PRNexus `json:"-"`
}

// Clone returns a deep copy of s.
func (s ReservationState) Clone() ReservationState {
	c := s
	c.Registrations = slices.Clone(s.Registrations)
	if s.SCSI2 != nil {
		h := *s.SCSI2
		c.SCSI2 = &h
	}
	return c
}

// Empty reports whether no persistent reservation state exists.
func (s ReservationState) Empty() bool {
	return len(s.Registrations) == 0 && !s.Reserved
}

// registration returns the index of the registration that applies to n, or
// -1.
func (s ReservationState) registration(n PRNexus) int {
	return slices.IndexFunc(s.Registrations, func(r Registration) bool { return r.matches(n) })
}

// IsHolder reports whether n holds the persistent reservation.
func (s ReservationState) IsHolder(n PRNexus) bool {
	if !s.Reserved {
		return false
	}
	if s.Type.allRegistrants() {
		return s.registration(n) >= 0
	}
	return s.Holder.matches(n)
}

// isHolderRegistration reports whether registration r is (one of) the
// reservation holder(s).
func (s ReservationState) isHolderRegistration(r Registration) bool {
	if !s.Reserved {
		return false
	}
	if s.Type.allRegistrants() {
		return true
	}
	return r.Nexus == s.Holder.Nexus && r.AllTargetPorts == s.Holder.AllTargetPorts
}

// AccessClass says how a command is affected by reservations.
type AccessClass uint8

// Access classes, from least to most restricted.
const (
	// AccessAlways commands never conflict (INQUIRY, REPORT LUNS,
	// REQUEST SENSE, REPORT TARGET PORT GROUPS, REPORT SUPPORTED
	// OPERATION CODES, RELEASE(6)).
	AccessAlways AccessClass = iota
	// AccessControl commands conflict only with another nexus's SCSI-2
	// reservation (TEST UNIT READY, READ CAPACITY, PERSISTENT RESERVE
	// IN/OUT, START STOP UNIT...).
	AccessControl
	// AccessRead commands read the medium or its state.
	AccessRead
	// AccessWrite commands change the medium or the logical unit.
	AccessWrite
)

// Allows reports whether a command of class c from nexus n may run, or must
// end in RESERVATION CONFLICT (SPC-4 5.13.1 table 66 and SBC-3 table 13).
func (s ReservationState) Allows(n PRNexus, c AccessClass) bool {
	if c == AccessAlways {
		return true
	}
	if s.SCSI2 != nil && *s.SCSI2 != n {
		return false
	}
	if c == AccessControl || !s.Reserved || s.IsHolder(n) {
		return true
	}
	registered := s.registration(n) >= 0
	switch s.Type {
	case PRWriteExclusive:
		return c == AccessRead
	case PRExclusiveAccess:
		return false
	case PRWriteExclusiveRegistrantsOnly, PRWriteExclusiveAllRegistrants:
		return c == AccessRead || registered
	case PRExclusiveAccessRegistrantsOnly, PRExclusiveAccessAllRegistrants:
		return registered
	}
	return false
}

// PROut is one decoded PERSISTENT RESERVE OUT command.
type PROut struct {
	Action PRAction
	Scope  uint8
	Type   PRType
	// Key is the RESERVATION KEY field, ServiceKey the SERVICE ACTION
	// RESERVATION KEY field.
	Key, ServiceKey uint64
	AllTargetPorts  bool
	APTPL           bool
}

// PRNotice is a unit attention the reservation change owes to the
// nexuses a registration applies to.
type PRNotice struct {
	To    Registration
	Sense Sense
}

// PROutcome is the result of applying a PERSISTENT RESERVE OUT.
type PROutcome struct {
	// Status is GOOD, RESERVATION CONFLICT or CHECK CONDITION (Sense).
	Status Status
	Sense  Sense
	// Notices are the unit attentions to establish.
	Notices []PRNotice
	// Abort lists the registrations whose tasks PREEMPT AND ABORT aborts.
	Abort []Registration
}

func prConflict() PROutcome { return PROutcome{Status: StatusReservationConflict} }

func prCheck(s Sense) PROutcome { return PROutcome{Status: StatusCheckCondition, Sense: s} }

// Apply applies a PERSISTENT RESERVE OUT received on nexus n to s and returns
// the new state and the outcome. s itself is not modified; when the outcome
// is not GOOD the returned state equals s.
func (s ReservationState) Apply(n PRNexus, op PROut) (ReservationState, PROutcome) {
	next := s.Clone()
	out := next.apply(n, op)
	if out.Status != StatusGood {
		return s, out
	}
	return next, out
}

func (s *ReservationState) apply(n PRNexus, op PROut) PROutcome {
	ri := s.registration(n)
	if op.Action == PRRegister || op.Action == PRRegisterAndIgnoreExist {
		return s.register(n, ri, op)
	}
	if ri < 0 || s.Registrations[ri].Key != op.Key {
		return prConflict()
	}
	switch op.Action {
	case PRReserve:
		if op.Scope != 0 || !op.Type.Valid() {
			return prCheck(SenseInvalidFieldInCDB(2))
		}
		if !s.Reserved {
			s.Reserved, s.Type, s.Holder = true, op.Type, s.Registrations[ri]
			return PROutcome{}
		}
		if s.IsHolder(n) && s.Type == op.Type {
			return PROutcome{}
		}
		return prConflict()
	case PRRelease:
		if !s.Reserved || !s.IsHolder(n) {
			return PROutcome{}
		}
		if op.Scope != 0 || op.Type != s.Type {
			return prCheck(SenseInvalidReleaseOfPR())
		}
		var out PROutcome
		if s.Type.registrantsOnly() {
			out.Notices = s.noticeOthers(n, SenseReservationsReleased())
		}
		s.release()
		return out
	case PRClear:
		out := PROutcome{Notices: s.noticeOthers(n, SenseReservationsPreempted())}
		s.release()
		s.Registrations = nil
		s.Generation++
		return out
	case PRPreempt, PRPreemptAndAbort:
		return s.preempt(n, ri, op)
	}
	return prCheck(SenseInvalidFieldInCDB(1))
}

// register handles REGISTER and REGISTER AND IGNORE EXISTING KEY.
func (s *ReservationState) register(n PRNexus, ri int, op PROut) PROutcome {
	ignore := op.Action == PRRegisterAndIgnoreExist
	if ri < 0 {
		if !ignore && op.Key != 0 {
			return prConflict()
		}
		if op.ServiceKey == 0 {
			return PROutcome{}
		}
		s.Registrations = append(s.Registrations, Registration{Key: op.ServiceKey, Nexus: n, AllTargetPorts: op.AllTargetPorts})
		s.APTPL = op.APTPL
		s.Generation++
		return PROutcome{}
	}
	if !ignore && op.Key != s.Registrations[ri].Key {
		return prConflict()
	}
	s.Generation++
	if op.ServiceKey == 0 {
		return PROutcome{Notices: s.unregister(ri)}
	}
	s.Registrations[ri].Key = op.ServiceKey
	if s.Reserved && !s.Type.allRegistrants() && s.Holder.Nexus == s.Registrations[ri].Nexus {
		s.Holder.Key = op.ServiceKey
	}
	s.APTPL = op.APTPL
	return PROutcome{}
}

// unregister removes registration ri, releasing the reservation when its
// holder goes, and returns the notices owed.
func (s *ReservationState) unregister(ri int) []PRNotice {
	r := s.Registrations[ri]
	s.Registrations = slices.Delete(s.Registrations, ri, ri+1)
	if !s.Reserved {
		return nil
	}
	if s.Type.allRegistrants() {
		if len(s.Registrations) == 0 {
			s.release()
		}
		return nil
	}
	if !s.isHolderRegistration(r) {
		return nil
	}
	typ := s.Type
	s.release()
	if !typ.registrantsOnly() {
		return nil
	}
	notices := make([]PRNotice, 0, len(s.Registrations))
	for _, o := range s.Registrations {
		notices = append(notices, PRNotice{To: o, Sense: SenseReservationsReleased()})
	}
	return notices
}

func (s *ReservationState) release() {
	s.Reserved, s.Type, s.Holder = false, 0, Registration{}
}

// noticeOthers returns a notice of sense for every registration except the
// ones that apply to n.
func (s *ReservationState) noticeOthers(n PRNexus, sense Sense) []PRNotice {
	var notices []PRNotice
	for _, r := range s.Registrations {
		if !r.matches(n) {
			notices = append(notices, PRNotice{To: r, Sense: sense})
		}
	}
	return notices
}

// removeKey removes every registration with key k except those that apply
// to n and returns them.
func (s *ReservationState) removeKey(n PRNexus, k uint64, all bool) []Registration {
	var removed []Registration
	s.Registrations = slices.DeleteFunc(s.Registrations, func(r Registration) bool {
		if r.matches(n) || (!all && r.Key != k) {
			return false
		}
		removed = append(removed, r)
		return true
	})
	return removed
}

// preempt handles PREEMPT and PREEMPT AND ABORT (SPC-4 5.13.11.4).
func (s *ReservationState) preempt(n PRNexus, ri int, op PROut) PROutcome {
	self := s.Registrations[ri]
	var removed []Registration
	switch {
	case !s.Reserved:
		if op.ServiceKey == 0 {
			return prCheck(SenseInvalidFieldInParameterList(8))
		}
		if removed = s.removeKey(n, op.ServiceKey, false); len(removed) == 0 {
			return prConflict()
		}
	case s.Type.allRegistrants() && op.ServiceKey == 0, !s.Type.allRegistrants() && op.ServiceKey == s.Holder.Key:
		if op.Scope != 0 || !op.Type.Valid() {
			return prCheck(SenseInvalidFieldInCDB(2))
		}
		oldType := s.Type
		removed = s.removeKey(n, op.ServiceKey, s.Type.allRegistrants())
		s.Reserved, s.Type, s.Holder = true, op.Type, self
		var out PROutcome
		if oldType != op.Type {
			out.Notices = s.noticeOthers(n, SenseReservationsReleased())
		}
		return s.preempted(op, removed, out)
	default:
		if op.ServiceKey == 0 {
			return prCheck(SenseInvalidFieldInParameterList(8))
		}
		if removed = s.removeKey(n, op.ServiceKey, false); len(removed) == 0 {
			return prConflict()
		}
		if s.Type.allRegistrants() && len(s.Registrations) == 0 {
			s.release()
		}
	}
	return s.preempted(op, removed, PROutcome{})
}

// preempted finishes a successful preempt: generation, notices for the
// removed registrations and, for PREEMPT AND ABORT, their tasks.
func (s *ReservationState) preempted(op PROut, removed []Registration, out PROutcome) PROutcome {
	s.Generation++
	for _, r := range removed {
		out.Notices = append(out.Notices, PRNotice{To: r, Sense: SenseRegistrationsPreempted()})
	}
	if op.Action == PRPreemptAndAbort {
		out.Abort = removed
	}
	return out
}

// ReserveSCSI2 applies RESERVE(6) from n. ok is false on a reservation
// conflict: another nexus holds the SCSI-2 reservation, or persistent
// reservation registrations exist and n is not exempt (see scsi2UnderPR).
func (s ReservationState) ReserveSCSI2(n PRNexus) (next ReservationState, ok bool) {
	if decided, ok := s.scsi2UnderPR(n); decided {
		return s, ok
	}
	if s.SCSI2 != nil && *s.SCSI2 != n {
		return s, false
	}
	next = s.Clone()
	next.SCSI2 = &n
	return next, true
}

// ReleaseSCSI2 applies RELEASE(6) from n (or the loss of nexus n): the
// SCSI-2 reservation is released if n holds it. Otherwise, while
// persistent reservation registrations exist, ok is false on a
// reservation conflict (see scsi2UnderPR); without registrations a
// release by a nexus that holds nothing is GOOD and does nothing (SPC-2).
//
// A holder of the SCSI-2 reservation that registered a key since (SPC-2
// would have refused the registration; this target lets the holder make
// it) releases its reservation all the same: the loss of its nexus,
// which comes here as a RELEASE(6) at a stretched pod's sequencer, must.
func (s ReservationState) ReleaseSCSI2(n PRNexus) (next ReservationState, ok bool) {
	if s.SCSI2 != nil && *s.SCSI2 == n {
		next = s.Clone()
		next.SCSI2 = nil
		return next, true
	}
	if decided, ok := s.scsi2UnderPR(n); decided {
		return s, ok
	}
	return s, true
}

// scsi2UnderPR decides a RESERVE(6) or RELEASE(6) from n while persistent
// reservation registrations exist (decided is false when none does, and
// SPC-2 rules apply). SPC-4 5.13.3, exceptions to SPC-2 RESERVE and
// RELEASE behavior: the command completes GOOD and changes nothing (the
// persistent reservation is neither released nor changed, no SCSI-2
// reservation is made) when it comes from a persistent reservation holder,
// or from a registered nexus while a registrants only or all registrants
// reservation exists. In every other case SPC-2 applies, and SPC-2 5.5.1
// makes every RESERVE and RELEASE conflict while a registration exists.
// The target reports CRH (compatible reservation handling) in REPORT
// CAPABILITIES accordingly.
func (s ReservationState) scsi2UnderPR(n PRNexus) (decided, ok bool) {
	if len(s.Registrations) == 0 {
		return false, false
	}
	exempt := s.IsHolder(n) || (s.Reserved && s.Type.registrantsOnly() && s.registration(n) >= 0)
	return true, exempt
}

// persistedVersion is the version of the encoding Marshal produces.
const persistedVersion = 1

type persistedPR struct {
	Version int              `json:"version"`
	State   ReservationState `json:"state"`
}

// Marshal encodes the persistent part of s (everything but the SCSI-2
// reservation) for LUConfig.PersistPR.
func (s ReservationState) Marshal() []byte {
	b, err := json.Marshal(persistedPR{Version: persistedVersion, State: s})
	if err != nil {
		// Only plain fields: encoding cannot fail.
		panic(fmt.Sprintf("scsi: encode reservation state: %v", err))
	}
	return b
}

// ErrBadReservationState is returned by UnmarshalReservationState for data
// it cannot decode.
var ErrBadReservationState = errors.New("scsi: bad saved reservation state")

// UnmarshalReservationState decodes what Marshal produced.
func UnmarshalReservationState(b []byte) (ReservationState, error) {
	var p persistedPR
	if err := json.Unmarshal(b, &p); err != nil {
		return ReservationState{}, fmt.Errorf("%w: %v", ErrBadReservationState, err)
	}
	if p.Version != persistedVersion {
		return ReservationState{}, fmt.Errorf("%w: version %d", ErrBadReservationState, p.Version)
	}
	if p.State.Reserved && !p.State.Type.Valid() {
		return ReservationState{}, fmt.Errorf("%w: reservation type %d", ErrBadReservationState, p.State.Type)
	}
	p.State.SCSI2 = nil
	return p.State, nil
}
