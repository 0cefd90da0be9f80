package link

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"runtime/debug"
	"strings"
	"sync/atomic"
	"time"
)

// ProtocolVersion is the version of the link protocol this package speaks.
// Both arrays of a pair must speak the same one. Version 3: a copied
// piece lists the blocks that are damaged on the sender, and damaged
// blocks are repaired from the other array's copy. Version 4: the pod
// protocol with symmetric roles (records, the race, pre-election, agreed
// resyncs, fenced handover and removal). Version 5: host clusters across
// the pair (a forwarded command's answer confirmed to the sequencer, a
// reservation change naming the request it answers, reservation updates
// that carry resets and the state's incarnation for the attentions a
// rejoining array owes its hosts).
const ProtocolVersion = 5

// MaxPayload is the largest payload of one message: 16 MiB of data plus
// room for an upper layer's header. A larger request is refused by Call; a
// larger frame on the wire ends the session.
const MaxPayload = 16<<20 + 64<<10

// Defaults for the zero values of Config.
const (
	DefaultHeartbeatInterval     = 100 * time.Millisecond
	DefaultTimeout               = 2 * time.Second
	DefaultMaxInFlightBytes      = 64 << 20
	DefaultMaxConcurrentHandlers = 512
	DefaultHandshakeTimeout      = 10 * time.Second
	// The listener's handshake slots (see Config.MaxHandshakes): a
	// loopback or metro-distance peer authenticates in a few round trips,
	// far inside DefaultAuthTimeout, and needs two slots per session.
	DefaultAuthTimeout             = 2 * time.Second
	DefaultMaxHandshakes           = 64
	DefaultMaxHandshakesPerAddress = 8
)

// maxIDLen bounds LocalID and PeerID (they travel with a one-byte length).
const maxIDLen = 255

// Message is one request or response.
type Message struct {
	Type    uint16 // defined by the upper layer
	Epoch   uint64 // defined by the upper layer (per-pod epoch); carried verbatim
	Payload []byte
	// Urgent requests are queued ahead of the others not yet written (it
	// is not sent): small latency-sensitive requests overtake bulk ones.
	Urgent bool
}

// Handler serves a request from the peer. It is called on its own
// goroutine, at most Config.MaxConcurrentHandlers at once, and may block;
// its context is cancelled when the session dies, and Session.Close waits
// for running handlers to return. req.Payload belongs to the handler.
// Returning an error sends a RemoteError with the error's text to the
// caller. The returned Message's Payload must stay unchanged after the
// handler returns: the transport sends it from there.
type Handler func(ctx context.Context, req Message) (Message, error)

// Config configures one side of a link.
type Config struct {
	// LocalID is this array's id (a random string), sent in the hello.
	LocalID string
	// Cert is this array's link certificate (self-signed is fine, see
	// NewCertificate).
	Cert tls.Certificate
	// PeerCert is the DER of the peer's certificate: the only certificate
	// accepted from the peer (pinning). Both sides verify.
	PeerCert []byte
	// PeerID is the expected peer id; a hello with another id is refused.
	PeerID string
	// Handler serves the peer's requests. Nil refuses every request with
	// a RemoteError.
	Handler Handler
	// HeartbeatInterval is how often a ping is sent (default 100ms).
	HeartbeatInterval time.Duration
	// Timeout ends the session when no frame has been received for this
	// long (default 2s). It must exceed HeartbeatInterval; the peer learns
	// it in the hello and bases its Lease on it.
	Timeout time.Duration
	// MaxInFlightBytes bounds the request payload bytes sent and not yet
	// answered (Call waits beyond it), and separately the response bytes
	// queued for sending (default 64 MiB).
	MaxInFlightBytes int
	// MaxConcurrentHandlers bounds the handlers running at once (default
	// 512).
	MaxConcurrentHandlers int
	// HandshakeTimeout bounds connecting: TCP, TLS and the hellos, and at
	// the listener the wait for a session's second connection (default
	// 10s).
	HandshakeTimeout time.Duration
	// AuthTimeout bounds, at the listener, the time from accepting a
	// connection to its authentication (TLS with the pinned certificate)
	// and hello (default 2s, at most HandshakeTimeout).
	AuthTimeout time.Duration
	// MaxHandshakes bounds the listener's connections that have not
	// authenticated yet (default 64), MaxHandshakesPerAddress those from
	// one source IP address (default 8, at most MaxHandshakes). A new
	// connection is never refused for want of a slot: the listener drops
	// an older unauthenticated one (from the new connection's address
	// when that is at its limit, else from an address holding more than
	// a session's two, else any; one that has sent nothing first, then
	// the oldest; the address the peer last authenticated from is
	// spared while another holds a slot), so sockets held open against
	// the port cannot keep the peer out.
	MaxHandshakes           int
	MaxHandshakesPerAddress int
	Logger                  *slog.Logger
	// Panics, when set, counts the panics recovered in the link's
	// goroutines, handlers included. Each is logged with its stack and
	// ends the session (or drops the connection) it happened in; the
	// process carries on.
	Panics *atomic.Int64
	// Now is the clock for heartbeat and lease bookkeeping (default
	// time.Now). Socket deadlines always use the real clock.
	Now func() time.Time

	// version overrides ProtocolVersion (tests).
	version int
	// dial replaces TCP dialing (tests).
	dial func(ctx context.Context, addr string) (net.Conn, error)
	// onRefuse is told why a listener refused a connection (tests).
	onRefuse func(error)
}

func (c Config) withDefaults() (Config, error) {
	if c.HeartbeatInterval <= 0 {
		c.HeartbeatInterval = DefaultHeartbeatInterval
	}
	if c.Timeout <= 0 {
		c.Timeout = DefaultTimeout
	}
	if c.MaxInFlightBytes <= 0 {
		c.MaxInFlightBytes = DefaultMaxInFlightBytes
	}
	if c.MaxConcurrentHandlers <= 0 {
		c.MaxConcurrentHandlers = DefaultMaxConcurrentHandlers
	}
	if c.HandshakeTimeout <= 0 {
		c.HandshakeTimeout = DefaultHandshakeTimeout
	}
	if c.AuthTimeout <= 0 {
		c.AuthTimeout = DefaultAuthTimeout
	}
	c.AuthTimeout = min(c.AuthTimeout, c.HandshakeTimeout)
	if c.MaxHandshakes <= 0 {
		c.MaxHandshakes = DefaultMaxHandshakes
	}
	if c.MaxHandshakesPerAddress <= 0 {
		c.MaxHandshakesPerAddress = min(DefaultMaxHandshakesPerAddress, c.MaxHandshakes)
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.version == 0 {
		c.version = ProtocolVersion
	}
	if c.dial == nil {
		c.dial = func(ctx context.Context, addr string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "tcp", addr)
		}
	}
	switch {
	case c.LocalID == "" || len(c.LocalID) > maxIDLen:
		return c, fmt.Errorf("link: config: LocalID must be 1 to %d bytes, is %d", maxIDLen, len(c.LocalID))
	case c.PeerID == "" || len(c.PeerID) > maxIDLen:
		return c, fmt.Errorf("link: config: PeerID must be 1 to %d bytes, is %d", maxIDLen, len(c.PeerID))
	case len(c.Cert.Certificate) == 0 || c.Cert.PrivateKey == nil:
		return c, errors.New("link: config: no link certificate (Cert); create one with NewCertificate")
	case len(c.PeerCert) == 0:
		return c, errors.New("link: config: no peer certificate (PeerCert) to pin")
	case c.Timeout <= c.HeartbeatInterval:
		return c, fmt.Errorf("link: config: Timeout %v must exceed HeartbeatInterval %v", c.Timeout, c.HeartbeatInterval)
	case c.MaxHandshakesPerAddress > c.MaxHandshakes:
		return c, fmt.Errorf("link: config: MaxHandshakesPerAddress %d must not exceed MaxHandshakes %d (one address must not hold every slot)",
			c.MaxHandshakesPerAddress, c.MaxHandshakes)
	}
	return c, nil
}

// ErrPanic is wrapped by the error of a session that ended because one of
// its goroutines panicked (a bug, here or in a handler).
var ErrPanic = errors.New("link: internal error (panic)")

// recovered logs a panic recovered in one of the link's goroutines with
// its stack, counts it, and returns an error for the session or
// connection it ends.
func (c *Config) recovered(log *slog.Logger, where string, v any) error {
	if c.Panics != nil {
		c.Panics.Add(1)
	}
	log.Error("link: panic recovered; ending the session or connection it happened in", "where", where, "panic", v, "stack", string(debug.Stack()))
	return fmt.Errorf("%w in %s: %v", ErrPanic, where, v)
}

// ErrClosed is wrapped by every error of a dead session: Session.Err and
// the errors of Calls that the session's end interrupted. A session closed
// locally reports ErrClosed itself.
var ErrClosed = errors.New("link: session closed")

// ErrTimeout is wrapped by Session.Err when nothing was received from the
// peer for Config.Timeout.
var ErrTimeout = errors.New("link: peer timed out")

// ErrWrongPeer is wrapped by the error of a handshake refused because an
// array presented another id than the configured peer id.
var ErrWrongPeer = errors.New("link: wrong peer")

// ErrTooLarge is wrapped by the error of a Call whose payload exceeds
// MaxPayload.
var ErrTooLarge = errors.New("link: payload too large")

// errPeerClosed is the cause when the peer sent a goodbye.
var errPeerClosed = errors.New("peer closed the session")

// RemoteError is the error a peer's handler returned.
type RemoteError struct{ Msg string }

func (e *RemoteError) Error() string { return "link: peer: " + e.Msg }

// VersionError says the peer speaks another link protocol version.
type VersionError struct{ Local, Remote int }

func (e *VersionError) Error() string {
	return fmt.Sprintf("link: peer speaks link protocol version %d, this array speaks version %d: "+
		"both arrays must run compatible metro releases; upgrade the array with the older release",
		e.Remote, e.Local)
}

// closedError is why a session died: it matches ErrClosed and its cause.
type closedError struct{ cause error }

func (e *closedError) Error() string {
	return "link: session closed: " + strings.TrimPrefix(e.cause.Error(), "link: ")
}

func (e *closedError) Unwrap() []error { return []error{ErrClosed, e.cause} }

// errProtocol marks errors caused by what the peer sent; the session or
// connection is dropped.
var errProtocol = errors.New("link protocol error")

func protoErr(format string, args ...any) error {
	return fmt.Errorf("%w: %s", errProtocol, fmt.Sprintf(format, args...))
}
