package scsi

import (
	"context"
	"errors"
)

// Status is a SCSI status byte (SAM-5).
type Status byte

// SCSI status codes.
const (
	StatusGood                Status = 0x00
	StatusCheckCondition      Status = 0x02
	StatusConditionMet        Status = 0x04
	StatusBusy                Status = 0x08
	StatusReservationConflict Status = 0x18
	StatusTaskSetFull         Status = 0x28
	StatusTaskAborted         Status = 0x40
)

// TaskAttr is the SAM task attribute of a command.
type TaskAttr uint8

// Task attributes.
const (
	TaskSimple TaskAttr = iota
	TaskOrdered
	TaskHeadOfQueue
	TaskACA
)

// Nexus identifies the I_T nexus a command arrived on.
type Nexus struct {
	// InitiatorName is the initiator's iSCSI name (IQN or EUI), the
	// identity LUN masking and host lookup use.
	InitiatorName string
	// InitiatorPort is the SCSI initiator port name, for iSCSI
	// "iqn...,i,0x<ISID in hex>". PR registrations are keyed on it.
	InitiatorPort string
	// TargetPort is the SCSI target port name, for iSCSI
	// "iqn...,t,0x<TPGT in hex>".
	TargetPort string
	// RelativePortID is the relative target port identifier of the port
	// the command arrived on (unique across every array).
	RelativePortID uint16
}

// Key returns a string that identifies the nexus (initiator port plus
// relative target port), for maps of per-nexus state.
func (n Nexus) Key() string {
	return n.InitiatorPort + "|" + n.TargetPort
}

// Command is one SCSI command delivered by a transport.
type Command struct {
	Nexus Nexus
	LUN   uint64
	// Tag is the transport's task tag (iSCSI Initiator Task Tag); with the
	// nexus it names the task for ABORT TASK.
	Tag  uint32
	Attr TaskAttr
	CDB  []byte
	// DataOut is the complete data-out buffer (writes), as many bytes as
	// the initiator sent (which may differ from what the CDB implies).
	DataOut []byte
	// ExpectedDataIn is the initiator's expected data-in transfer length
	// (0 for commands with no data-in).
	ExpectedDataIn uint32

	// task is the command's task while Target.Execute runs it.
	task *task
}

// Forwarded tells the target running cmd that it has been sent to the
// pod's sequencer (Replica.Forward calls it just before it sends): from
// then on the command runs there, and an abort this array performs for
// the sequencer (InstallReservations, ResetFromPeer) no longer waits for
// it here. It does nothing for a command Execute is not running.
func (c *Command) Forwarded() {
	if tk := c.task; tk != nil && tk.forwarded.CompareAndSwap(false, true) {
		close(tk.remote)
	}
}

// Result is the outcome of a command.
type Result struct {
	Status Status
	// Sense is fixed-format sense data when Status is CHECK CONDITION.
	Sense []byte
	// Data is the data-in; the transport truncates it to ExpectedDataIn
	// and reports residuals.
	Data []byte
	// Aborted is set when the task was aborted by task management: the
	// transport sends no response for it.
	Aborted bool
}

// TMF is a task management function (SAM-5).
type TMF uint8

// Task management functions, numbered as in iSCSI (RFC 7143 11.5.1).
const (
	AbortTask        TMF = 1
	AbortTaskSet     TMF = 2
	ClearACA         TMF = 3
	ClearTaskSet     TMF = 4
	LogicalUnitReset TMF = 5
	TargetWarmReset  TMF = 6
	TargetColdReset  TMF = 7
)

// TMFResponse is the service response of a task management function,
// numbered as in iSCSI (RFC 7143 11.6.1).
type TMFResponse uint8

// Task management responses.
const (
	TMFComplete            TMFResponse = 0
	TMFTaskNotFound        TMFResponse = 1
	TMFLUNNotFound         TMFResponse = 2
	TMFTaskStillAllegiant  TMFResponse = 3
	TMFReassignUnsupported TMFResponse = 4
	TMFNotSupported        TMFResponse = 5
	TMFAuthFailed          TMFResponse = 6
	TMFRejected            TMFResponse = 255
)

// Backend holds a logical unit's blocks. Offsets and lengths are in bytes
// and multiples of the 512-byte logical block. A write returns only when
// it is durable and visible to reads. Errors the store classifies (no
// space, checksum mismatch) are matched with errors.Is against the store
// package's sentinels and become the matching sense; ErrTransitioning
// becomes NOT READY, ASYMMETRIC ACCESS STATE TRANSITION.
type Backend interface {
	ReadAt(ctx context.Context, p []byte, off int64) error
	WriteAt(ctx context.Context, p []byte, off int64) error
	// Unmap deallocates the range; it then reads as zeros.
	Unmap(ctx context.Context, off, length int64) error
	// Mapped reports whether the block at off is mapped and how many
	// bytes from off (at most length) share that state.
	Mapped(ctx context.Context, off, length int64) (mapped bool, run int64, err error)
}

// ErrTransitioning is wrapped by a Backend error that means the unit
// stopped being served through this port while the command ran (a
// replicated volume whose pod was suspended here): the command did
// nothing the host must know of and is worth retrying, on another path if
// this one stays unavailable.
var ErrTransitioning = errors.New("scsi: access state changed while the command ran")

// AccessState is an ALUA asymmetric access state (SPC-4 6.37).
type AccessState uint8

// ALUA states.
const (
	ActiveOptimized    AccessState = 0x0
	ActiveNonOptimized AccessState = 0x1
	Standby            AccessState = 0x2
	Unavailable        AccessState = 0x3
	Offline            AccessState = 0xE
	Transitioning      AccessState = 0xF
)

// PortGroup is one target port group as reported to an initiator.
type PortGroup struct {
	ID    uint16
	State AccessState
	// Preferred sets the PREF bit (only ever on an optimized group).
	Preferred bool
	// RelativePortIDs are the ports in the group.
	RelativePortIDs []uint16
}

// Resolver tells the Target what an initiator may see. It is implemented
// by the array from its configuration (hosts, connections, pods).
type Resolver interface {
	// LUN returns the logical unit mapped at lun for the initiator, or
	// nil when none is (LUN masking).
	LUN(initiator string, lun uint64) *LogicalUnit
	// LUNs lists the LUNs the initiator sees, ascending.
	LUNs(initiator string) []uint64
	// PortGroups returns every target port group of lu (this array's and,
	// for a stretched pod, the peer's) with its state for the initiator.
	// The group containing the port the command arrived on is among them.
	PortGroups(initiator string, lu *LogicalUnit) []PortGroup
}
