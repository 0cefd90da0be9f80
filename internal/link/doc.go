// Package link is the replication connection between the two arrays of a
// metro pair ("peers"): an authenticated, versioned, pipelined
// request/response transport with heartbeats. Upper layers define message
// types and payload encodings; link carries them verbatim and knows nothing
// of their meaning.
//
// # Connections
//
// A Session is two TCP connections, each wrapped in TLS 1.3 with mutual
// authentication. Certificates are pinned: the only certificate accepted
// from the peer is Config.PeerCert, byte for byte, on both sides (there is
// no CA). The "data" connection carries requests, possibly large, in both
// directions. The "meta" connection carries responses, heartbeats and the
// goodbye, also in both directions, so an acknowledgement or a heartbeat
// never waits behind bulk data (the idea of DRBD's meta socket). Each
// connection has one reader goroutine and one writer goroutine; the writer
// batches queued frames into a buffer and flushes only when its queue runs
// empty, so a busy connection makes few system calls and an idle one adds
// no latency. On meta, pings and pongs are written ahead of queued
// responses.
//
// # Handshake
//
// After TLS, each connection exchanges hellos. A hello starts with the
// magic "METROLNK", the protocol version and the body length; that prefix
// never changes between versions, so two releases can always tell that
// they disagree. The body carries a status, the connection kind (data or
// meta), the session token (16 random bytes chosen by the dialer, which
// pair the two connections of one session at the listener), the sender's
// Timeout and its array id.
//
//	dialer                                  listener
//	  offer   {version, kind, token, id} ──▶  version equal? id == PeerID?
//	         ◀── accept {id, token, kind}     or refusal {its version, reason}
//	  id == PeerID?
//	  confirm                            ──▶  pair by token; both kinds there:
//	  (or refusal)                            the session starts
//
// A version mismatch is refused on both sides with a VersionError carrying
// both versions; a wrong array id is refused with ErrWrongPeer.
//
// Anyone who reaches the listener's port can open connections to it, so
// until a connection has authenticated (its TLS handshake proved the
// pinned certificate) it holds one of MaxHandshakes slots, at most
// MaxHandshakesPerAddress of them per source address, and must
// authenticate and send its offer within AuthTimeout. A new connection is
// never refused for want of a slot: an older unauthenticated one is
// dropped instead (from the new one's address when that is at its limit,
// else from an address holding more than a session's two, else any;
// one that has sent nothing first, then the oldest; never one from the
// address the peer last authenticated from while another address holds
// a slot). Idle sockets held against the port, or renewed from many
// addresses as fast as they are dropped, therefore cannot keep the peer
// out: its connections send at once and authenticate within a few round
// trips.
//
// # Frames
//
// After the handshake a connection carries frames: a 24-byte header (kind,
// reserved flags, type, payload length, request id, epoch; big-endian)
// followed by the payload. Payloads above MaxPayload are refused before
// anything is allocated and end the session. Request ids are chosen by the
// side that sends the request; a response carries the id of its request.
//
// # Liveness and leases
//
// Each side pings every HeartbeatInterval on meta and answers pings with
// pongs; the round trip is smoothed into RTT. A session dies when nothing
// at all has been received for Timeout, on any connection or protocol
// error, when either side closes it (the closing side sends a goodbye), or
// when the listener that owns it is closed before Accept returned it.
// Death is final: Done is closed, Err says why (it wraps ErrClosed), every
// pending Call fails with it, and handlers see their context cancelled.
// A panic in any goroutine of a session, a handler's included, is
// recovered, logged with its stack and counted (Config.Panics), and ends
// that session (ErrPanic): the process carries on, and the upper layer
// sees a lost session as after any other error.
//
// Because a peer declares this side dead only once nothing has arrived for
// its Timeout, the send time of the latest ping the peer answered plus the
// peer's Timeout (sent in its hello) is a lease: Session.Lease. The promise
// is about the timeout rule only; a session can also die early (connection
// error, Close), so after a session ends an upper layer must not act as if
// the peer were dead before Session.PeerLease, the latest lease the peer
// can hold from this side.
//
//	           handshake ok
//	(dialing) ─────────────▶ alive ──▶ dead
//	                          Close, goodbye, connection or protocol error,
//	                          Timeout without a frame
//
// # Flow control
//
// Request payload bytes in flight (sent, not yet answered) are limited per
// session to MaxInFlightBytes: Call waits, first come first served, until
// its request fits (a request larger than the limit travels alone).
// Response bytes queued for sending are limited the same way, and so are
// the payload bytes of the peer's requests held from reading them to the
// end of their handlers, whatever the peer does: the data reader reads a
// request's payload only once it fits. At most MaxConcurrentHandlers
// handlers run at once; beyond that, or beyond those bytes, the data
// reader stops reading and TCP pushes back on the sender.
//
// # Network tuning
//
// A single TCP connection carries all requests, so its throughput is
// bounded by the kernel's socket buffer limit divided by the round trip.
// For full speed on a metro network the maximum of net.ipv4.tcp_rmem and
// net.ipv4.tcp_wmem must cover the bandwidth-delay product (10 Gbit/s at
// 11 ms is about 14 MB). link does not set socket buffer sizes itself:
// doing so would turn off the kernel's autotuning.
package link
