// Package iscsi is metro's iSCSI target transport (RFC 7143).
//
// A Server accepts TCP connections on one or more portals, runs the login
// phase (parameter negotiation, CHAP and mutual CHAP, discovery and normal
// sessions, session reinstatement) and then the full feature phase: SCSI
// commands are received with their immediate, unsolicited and solicited
// (R2T) data, put in CmdSN order within the session's command window and
// handed whole to an Executor (the SCSI layer, package scsi). SIMPLE tasks
// then run concurrently; ORDERED and HEAD OF QUEUE attributes follow the SAM
// task set rules. Results go back as Data-In PDUs and SCSI Responses with
// residual counts and sense data.
//
// The package supports ErrorRecoveryLevel 0 and one connection per session:
// any framing or sequencing error (bad digest, bad DataSN, malformed PDU)
// drops that connection, never the server.
//
// Each connection has one reader goroutine (the connection's own) and one
// writer goroutine fed by a queue; the writer assigns StatSN, stamps the
// current ExpCmdSN/MaxCmdSN into every response and flushes when its queue
// runs empty, so responses are batched under load.
package iscsi

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/metro-storage/metro/internal/scsi"
)

// Executor runs SCSI commands (implemented by *scsi.Target).
//
// Execute is called from many goroutines at once. cmd.DataOut belongs to the
// transport and is reused after Execute returns: an Executor that needs the
// bytes later copies them. Result.Data must stay unchanged after Execute
// returns (the transport sends it from there). The context is cancelled
// when the session ends.
//
// TaskManagement performs a task management function for the nexus; for
// ABORT TASK refTag is the Initiator Task Tag of the task to abort. Tasks it
// aborts return from Execute with Result.Aborted set.
//
// NexusLost is called once a session has ended (logout, connection loss,
// reinstatement), after all its commands have returned.
type Executor interface {
	Execute(ctx context.Context, cmd *scsi.Command) *scsi.Result
	TaskManagement(ctx context.Context, n scsi.Nexus, fn scsi.TMF, lun uint64, refTag uint32) scsi.TMFResponse
	NexusLost(n scsi.Nexus)
}

// DataOutSizer may be implemented by an Executor that knows how many bytes
// of data-out a CDB transfers for a logical unit. The transport uses it to
// report residual overflow/underflow of write commands against the
// initiator's Expected Data Transfer Length. Without it the transport
// decodes the standard write-type CDBs itself, assuming 512-byte logical
// blocks.
type DataOutSizer interface {
	DataOutLength(n scsi.Nexus, lun uint64, cdb []byte) (length uint32, ok bool)
}

// LogicalUnits may be implemented by an Executor whose LUN numbers are
// each initiator's names for logical units that several initiators share
// (*scsi.Target implements it through its LUN masking). The transport
// holds tasks of its own, queued in command order or waiting for their
// data, and drops them itself for CLEAR TASK SET, LOGICAL UNIT RESET and
// the target resets; it uses these names to drop exactly the tasks, in
// every session, that address the logical units the function acts on,
// whatever LUN number each session uses. An Executor without it shares
// no names: those functions then drop queued tasks of the caller's own
// session only.
type LogicalUnits interface {
	// LogicalUnitOf names the logical unit nexus n reaches at lun, the
	// same name for every nexus and LUN that reach it; false when n
	// reaches none there.
	LogicalUnitOf(n scsi.Nexus, lun uint64) (unit string, ok bool)
	// LogicalUnitsOf names every logical unit nexus n sees.
	LogicalUnitsOf(n scsi.Nexus) []string
	// TasksCleared reports that the transport dropped tasks of nexus n
	// for lun before they reached Execute, for a CLEAR TASK SET received
	// on another nexus (n gets COMMANDS CLEARED BY ANOTHER INITIATOR).
	TasksCleared(n scsi.Nexus, lun uint64)
}

// CHAP holds the credentials for CHAP. A zero User means the target does
// not require CHAP for that initiator.
type CHAP struct {
	// User and Secret are what the initiator must prove (one-way CHAP).
	User, Secret string
	// MutualUser and MutualSecret are what the target answers with when
	// the initiator asks (mutual CHAP); empty means mutual CHAP is not
	// configured and an initiator asking for it is refused.
	MutualUser, MutualSecret string
}

// TargetInfo describes one target for SendTargets discovery.
type TargetInfo struct {
	Name string
	// Addresses are "host:port,tpgt". When empty the portal the request
	// arrived on is reported.
	Addresses []string
}

// Backend is the array's view the transport needs.
type Backend interface {
	// Targets lists the targets initiator may discover (SendTargets=All).
	Targets(initiator string) []TargetInfo
	// Authorize decides whether initiator may log in to target ("" for a
	// discovery session) and which CHAP secrets apply. Errors:
	// ErrTargetNotFound (login status 0x0203), ErrNotAuthorized (0x0202);
	// any other error fails the login with a target error (0x0300).
	Authorize(target, initiator string) (CHAP, error)
}

// Errors a Backend returns from Authorize.
var (
	ErrTargetNotFound = errors.New("iscsi: target not found")
	ErrNotAuthorized  = errors.New("iscsi: initiator not authorized")
)

// ErrServerClosed is returned by Serve after Close.
var ErrServerClosed = errors.New("iscsi: server closed")

// Defaults for the zero values of Config.
const (
	DefaultMaxRecvDataSegmentLength = 262144
	DefaultMaxBurstLength           = 262144
	DefaultFirstBurstLength         = 65536
	DefaultCmdWindow                = 128
	DefaultNopInterval              = 5 * time.Second
	DefaultNopTimeout               = 30 * time.Second
	DefaultLoginTimeout             = 30 * time.Second
	// DefaultMaxTransferLength bounds the Expected Data Transfer Length of
	// one command (the memory one command may claim).
	DefaultMaxTransferLength = 64 << 20
)

// Config configures a Server.
type Config struct {
	Backend  Backend
	Executor Executor
	// TPGT is the target portal group tag of this array's portal(s).
	TPGT uint16
	// RelativePortID is the relative target port id of this array's port
	// (goes in scsi.Nexus).
	RelativePortID uint16
	Logger         *slog.Logger

	// MaxRecvDataSegmentLength is what the target declares (default
	// 262144). MaxBurstLength (262144) and FirstBurstLength (65536) are the
	// target's offers, negotiated down to the initiator's. CmdWindow is the
	// command queue depth per session (128).
	MaxRecvDataSegmentLength, MaxBurstLength, FirstBurstLength, CmdWindow uint32
	// NopInterval is how long a connection may be idle before the target
	// pings it with a NOP-In (0 = 5s; negative = never). A ping not
	// answered within NopTimeout (0 = 30s) drops the connection.
	NopInterval, NopTimeout time.Duration
	// LoginTimeout bounds the whole login phase (0 = 30s).
	LoginTimeout time.Duration
	// MaxTransferLength bounds one command's Expected Data Transfer Length
	// in bytes (0 = 64 MiB); a larger one is a protocol error.
	MaxTransferLength uint32
}

func (c Config) withDefaults() Config {
	if c.MaxRecvDataSegmentLength == 0 {
		c.MaxRecvDataSegmentLength = DefaultMaxRecvDataSegmentLength
	}
	c.MaxRecvDataSegmentLength = clampU32(c.MaxRecvDataSegmentLength, 512, maxDataSegment)
	if c.MaxBurstLength == 0 {
		c.MaxBurstLength = DefaultMaxBurstLength
	}
	c.MaxBurstLength = clampU32(c.MaxBurstLength, 512, maxDataSegment)
	if c.FirstBurstLength == 0 {
		c.FirstBurstLength = DefaultFirstBurstLength
	}
	c.FirstBurstLength = clampU32(c.FirstBurstLength, 512, c.MaxBurstLength)
	if c.CmdWindow == 0 {
		c.CmdWindow = DefaultCmdWindow
	}
	c.CmdWindow = clampU32(c.CmdWindow, 1, 1<<16)
	if c.NopInterval == 0 {
		c.NopInterval = DefaultNopInterval
	}
	if c.NopTimeout <= 0 {
		c.NopTimeout = DefaultNopTimeout
	}
	if c.LoginTimeout <= 0 {
		c.LoginTimeout = DefaultLoginTimeout
	}
	if c.MaxTransferLength == 0 {
		c.MaxTransferLength = DefaultMaxTransferLength
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

func clampU32(v, lo, hi uint32) uint32 {
	if v < lo {
		return lo
	}
	if v > hi {
		return hi
	}
	return v
}

// SessionInfo describes one logged-in session, for the management API.
type SessionInfo struct {
	InitiatorName string
	// ISID is the initiator session id as 12 hex digits.
	ISID string
	TSIH uint16
	// Target is the target name ("" for a discovery session).
	Target     string
	Discovery  bool
	RemoteAddr string
	// HeaderDigest and DataDigest are the negotiated digests ("None" or
	// "CRC32C").
	HeaderDigest, DataDigest string
}
