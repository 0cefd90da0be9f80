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
// Hosts may be hostile or broken. A panic in any goroutine of a connection
// or in the Executor ends that connection's session, is logged with its
// stack and counted (Server.Panics), never the process (guard.go).
// Connections are limited in all and per source address, and so are
// logins in progress, with a short timeout for the first login request; a
// connection beyond a limit is closed as soon as it is accepted, except
// that a new connection beyond the limit on logins in progress in all
// pushes out the oldest login in progress of the busiest source address.
// Until its login completes a connection has small buffers. A write's buffer is made
// burst by burst as its data is sent or solicited, never for more than the
// data its CDB transfers, and the write data held is bounded per session
// and in all (budget.go): a host beyond its budget waits for its R2Ts, its
// data sent unasked beyond it is refused (TASK SET FULL) and its command
// window stops opening; budget granted to a host that sends nothing is
// taken back after DataOutTimeout. Read data is bounded the same way: a
// read starts only once its data fits the read budget, and holds it until
// its Data-In is written. The responses queued for a connection are
// bounded too: beyond MaxOutputBytes its reader stops reading, and a
// response the host does not take within NopTimeout drops it.
// Login refusals (unknown target, unknown or refused initiator) all look
// like a failed CHAP exchange, so no login reveals which names exist.
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
// bytes later copies them. It holds the data-out the initiator sent, in one
// piece; when that is more than the CDB transfers (as a DataOutSizer
// tells), only the first 512 bytes beyond the CDB's length are kept, so an
// Executor still sees that too much came. Result.Data must stay unchanged after Execute
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
	// ErrTargetNotFound and ErrNotAuthorized are answered alike, as a CHAP
	// login with a secret nobody knows, failing with authentication
	// failure (0x0201) where such a login fails (so a login does not tell
	// which targets and initiators exist); any other error fails the
	// login with a target error (0x0300).
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
	DefaultLoginTimeout             = 10 * time.Second
	DefaultLoginStartTimeout        = 5 * time.Second
	// DefaultMaxTransferLength bounds the Expected Data Transfer Length of
	// one command.
	DefaultMaxTransferLength = 64 << 20

	// Limits on connections: in all, from one source address, and still
	// logging in (in all and from one source address).
	DefaultMaxConnections          = 1024
	DefaultMaxConnectionsPerSource = 64
	DefaultMaxLogins               = 128
	DefaultMaxLoginsPerSource      = 8

	// DefaultMaxWriteBytes bounds the write data the server holds for
	// commands of all sessions, DefaultMaxSessionWriteBytes that of one
	// session.
	DefaultMaxWriteBytes        = 128 << 20
	DefaultMaxSessionWriteBytes = 32 << 20
	// DefaultMaxReadBytes bounds the read data the server holds for
	// commands of all sessions, DefaultMaxSessionReadBytes that of one
	// session.
	DefaultMaxReadBytes        = 128 << 20
	DefaultMaxSessionReadBytes = 32 << 20

	// DefaultDataOutTimeout bounds the wait for a write's data-out.
	DefaultDataOutTimeout = 30 * time.Second

	// DefaultMaxOutputBytes bounds the responses queued for one
	// connection, Data-In aside.
	DefaultMaxOutputBytes = 64 << 10
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
	// answered within NopTimeout (0 = 30s) drops the connection, and so
	// does a response PDU the initiator does not take from the socket
	// within NopTimeout (a write deadline between NopTimeout/2 and
	// NopTimeout ahead of every PDU written).
	NopInterval, NopTimeout time.Duration
	// LoginTimeout bounds the whole login phase (0 = 10s);
	// LoginStartTimeout the wait for the first Login Request, whole, from
	// the moment the connection is accepted (0 = 5s).
	LoginTimeout, LoginStartTimeout time.Duration
	// MaxTransferLength bounds one command's Expected Data Transfer Length
	// in bytes (0 = 64 MiB); a larger one is a protocol error.
	MaxTransferLength uint32

	// MaxConnections bounds the connections open at once (0 = 1024),
	// MaxConnectionsPerSource those from one source address (0 = 64),
	// MaxLogins the connections still logging in (0 = 128) and
	// MaxLoginsPerSource those from one source address (0 = 8). A
	// connection beyond a limit is closed as soon as it is accepted,
	// before anything is allocated for it; but at MaxLogins, a connection
	// from a source with fewer logins in progress than the busiest
	// source takes the place of that source's oldest login in progress,
	// which is closed, so that hosts at many addresses holding half-done
	// logins cannot keep a host at another address out.
	MaxConnections, MaxConnectionsPerSource, MaxLogins, MaxLoginsPerSource int

	// MaxWriteBytes bounds the write data held for the commands of all
	// sessions (0 = 128 MiB; at least MaxTransferLength), and
	// MaxSessionWriteBytes that of one session (0 = 32 MiB; at least
	// MaxBurstLength, at most MaxWriteBytes). Data the initiator sends
	// unasked (immediate and unsolicited data, at most FirstBurstLength
	// per command in the command window) is always taken and counted;
	// the rest of a write is solicited (R2T) only once the write's
	// whole remaining data fits: within the session's budget (or it is
	// the session's only write holding data, so one command larger than
	// the budget still runs) and within the server's (or within the
	// session's fair share of it, MaxWriteBytes divided by the sessions
	// holding write data, so one host cannot starve the others). Until
	// then the write waits, holding no more than its unsolicited data.
	MaxWriteBytes, MaxSessionWriteBytes int64

	// MaxReadBytes bounds the read data held for the commands of all
	// sessions (0 = 128 MiB; at least MaxTransferLength), and
	// MaxSessionReadBytes that of one session (0 = 32 MiB; at most
	// MaxReadBytes). A command with data-in (a read) starts only once
	// its Expected Data Transfer Length fits, by the same rules as the
	// solicited data of a write, and holds it until its last Data-In is
	// written to the socket: a host that queues many large reads, or
	// does not read what it asked for, waits for its own reads. A host
	// that reads nothing is dropped at the write deadline (NopTimeout).
	MaxReadBytes, MaxSessionReadBytes int64

	// DataOutTimeout bounds the wait for a write's data-out once it was
	// asked for: the unsolicited burst from the command's arrival, the
	// burst of each R2T from the R2T (0 = 30s). A write whose data has
	// not all come by then is terminated with CHECK CONDITION (ABORTED
	// COMMAND, INITIATOR RESPONSE TIMEOUT) and its write budget given to
	// the writes waiting for it, so a host that is granted budget and
	// sends nothing cannot hold it. It is checked four times per
	// DataOutTimeout, so a write may be terminated up to a quarter of it
	// late.
	DataOutTimeout time.Duration

	// MaxOutputBytes bounds the bytes of the responses queued for one
	// connection and not yet written to its socket, Data-In data aside
	// (which the read budget bounds) (0 = 64 KiB). Beyond it the
	// connection's reader stops reading PDUs until the initiator has
	// read enough: a host that sends pings, text requests or commands
	// without reading their answers slows only itself, and the queue
	// holds at most this plus the answer to one PDU.
	MaxOutputBytes int64
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
	if c.LoginStartTimeout <= 0 {
		c.LoginStartTimeout = DefaultLoginStartTimeout
	}
	c.LoginStartTimeout = min(c.LoginStartTimeout, c.LoginTimeout)
	if c.MaxTransferLength == 0 {
		c.MaxTransferLength = DefaultMaxTransferLength
	}
	c.MaxConnections = positiveOr(c.MaxConnections, DefaultMaxConnections)
	c.MaxConnectionsPerSource = positiveOr(c.MaxConnectionsPerSource, DefaultMaxConnectionsPerSource)
	c.MaxLogins = positiveOr(c.MaxLogins, DefaultMaxLogins)
	c.MaxLoginsPerSource = positiveOr(c.MaxLoginsPerSource, DefaultMaxLoginsPerSource)
	c.MaxWriteBytes = max(positiveOr(c.MaxWriteBytes, DefaultMaxWriteBytes), int64(c.MaxTransferLength))
	c.MaxSessionWriteBytes = min(max(positiveOr(c.MaxSessionWriteBytes, DefaultMaxSessionWriteBytes), int64(c.MaxBurstLength)), c.MaxWriteBytes)
	c.MaxReadBytes = max(positiveOr(c.MaxReadBytes, DefaultMaxReadBytes), int64(c.MaxTransferLength))
	c.MaxSessionReadBytes = min(positiveOr(c.MaxSessionReadBytes, DefaultMaxSessionReadBytes), c.MaxReadBytes)
	if c.DataOutTimeout <= 0 {
		c.DataOutTimeout = DefaultDataOutTimeout
	}
	c.MaxOutputBytes = positiveOr(c.MaxOutputBytes, DefaultMaxOutputBytes)
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

func positiveOr[T int | int64](v, def T) T {
	if v <= 0 {
		return def
	}
	return v
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
