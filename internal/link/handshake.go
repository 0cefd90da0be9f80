package link

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"
)

// Dial connects to the peer listening at addr and returns an established
// session. Both connections are opened at once; Config.HandshakeTimeout
// (and ctx) bound the whole.
func Dial(ctx context.Context, cfg Config, addr string) (*Session, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.HandshakeTimeout)
	defer cancel()
	var token [16]byte
	if _, err := rand.Read(token[:]); err != nil {
		return nil, fmt.Errorf("link: session token: %w", err)
	}
	type result struct {
		c    *conn
		peer hello
		err  error
	}
	metaDone := make(chan result, 1)
	go func() {
		c, peer, err := dialConn(ctx, &cfg, addr, connMeta, token)
		metaDone <- result{c, peer, err}
	}()
	data, peer, err := dialConn(ctx, &cfg, addr, connData, token)
	if err != nil {
		cancel()
	}
	meta := <-metaDone
	if err == nil {
		err = meta.err
	}
	if err != nil {
		for _, c := range []*conn{data, meta.c} {
			if c != nil {
				_ = c.raw.Close()
			}
		}
		return nil, err
	}
	s := newSession(cfg, peer, data, meta.c)
	s.start()
	return s, nil
}

// dialConn opens one connection of a session and runs the dialer's side of
// the handshake.
func dialConn(ctx context.Context, cfg *Config, addr string, kind connKind, token [16]byte) (c *conn, peer hello, err error) {
	var nc net.Conn
	defer func() {
		if v := recover(); v != nil {
			if nc != nil {
				_ = nc.Close()
			}
			c, err = nil, cfg.recovered(cfg.Logger, "link dial: "+kind.String()+" connection", v)
		}
	}()
	nc, err = cfg.dial(ctx, addr)
	if err != nil {
		return nil, hello{}, fmt.Errorf("link: connect to peer at %s: %w", addr, err)
	}
	stop := context.AfterFunc(ctx, func() { _ = nc.Close() })
	c, peer, err = clientHandshake(ctx, cfg, nc, kind, token)
	if !stop() && err == nil {
		err = ctx.Err() // the connection was closed under us
	}
	if err != nil {
		_ = nc.Close()
		if ctx.Err() != nil {
			err = ctx.Err()
		}
		return nil, hello{}, fmt.Errorf("link: connect to peer at %s (%s connection): %w", addr, kind, err)
	}
	return c, peer, nil
}

func clientHandshake(ctx context.Context, cfg *Config, nc net.Conn, kind connKind, token [16]byte) (*conn, hello, error) {
	tc := tls.Client(nc, cfg.tlsConfig(false))
	if err := tc.HandshakeContext(ctx); err != nil {
		return nil, hello{}, fmt.Errorf("TLS handshake: %w", err)
	}
	offer := hello{version: cfg.version, status: helloOffer, kind: kind, token: token, timeout: cfg.Timeout, id: cfg.LocalID}
	if err := writeHello(tc, &offer); err != nil {
		return nil, hello{}, fmt.Errorf("send hello: %w", err)
	}
	reply, err := readHello(tc, cfg.version)
	if err != nil {
		return nil, hello{}, fmt.Errorf("read hello: %w", explainRemoteTLS(err))
	}
	refuse := func(status helloStatus, reason string) {
		_ = writeHello(tc, &hello{version: cfg.version, status: status, kind: kind, token: token, id: cfg.LocalID, reason: reason})
	}
	if reply.version != cfg.version {
		refuse(helloRefuseVersion, "protocol version mismatch")
		return nil, hello{}, &VersionError{Local: cfg.version, Remote: reply.version}
	}
	switch reply.status {
	case helloAccept:
	case helloRefusePeer:
		return nil, hello{}, fmt.Errorf("%w: the peer refused this array: %s", ErrWrongPeer, reply.reason)
	case helloRefuse, helloRefuseVersion:
		return nil, hello{}, fmt.Errorf("the peer refused the connection: %s", reply.reason)
	default:
		return nil, hello{}, protoErr("hello with status %d in answer to an offer", reply.status)
	}
	if reply.id != cfg.PeerID {
		refuse(helloRefusePeer, fmt.Sprintf("array %s expects peer %q, not %q", cfg.LocalID, cfg.PeerID, reply.id))
		return nil, hello{}, fmt.Errorf("%w: the array at %s has id %q, this array expects %q; check the peer id configured on this array",
			ErrWrongPeer, nc.RemoteAddr(), reply.id, cfg.PeerID)
	}
	if reply.token != token || reply.kind != kind || reply.timeout <= 0 {
		refuse(helloRefuse, "malformed accept")
		return nil, hello{}, protoErr("accept hello does not match the offer (kind %s, timeout %v)", reply.kind, reply.timeout)
	}
	confirm := hello{version: cfg.version, status: helloConfirm, kind: kind, token: token, timeout: cfg.Timeout, id: cfg.LocalID}
	if err := writeHello(tc, &confirm); err != nil {
		return nil, hello{}, fmt.Errorf("send confirm: %w", err)
	}
	return newConn(kind, nc, tc), reply, nil
}

// readyBacklog is how many established sessions may wait for Accept; a
// session beyond it is closed.
const readyBacklog = 16

// Listener accepts sessions from the peer. It owns the sessions it has
// established until Accept returns them.
type Listener struct {
	cfg Config
	// err is a configuration error, returned by Accept.
	err error
	ln  net.Listener
	log *slog.Logger
	// ready holds established sessions for Accept.
	ready chan *Session
	// ctx is cancelled by Close; handshakes run under it.
	ctx    context.Context
	cancel context.CancelFunc
	// acceptDone is closed when the accept loop has ended.
	acceptDone chan struct{}
	closeOnce  sync.Once
	// wg counts the accept loop and the handshake goroutines.
	wg sync.WaitGroup

	mu struct {
		sync.Mutex
		// pending are sessions with one connection so far, by token.
		pending map[[16]byte]*pairing
		// acceptErr is why the accept loop ended.
		acceptErr error
		// slots are the connections not authenticated yet.
		slots *slots
		// evicted counts the connections dropped to make room;
		// warned is when that was last logged as a warning.
		evicted uint64
		warned  time.Time
		// unauthRefused counts refusals before authentication since
		// refusalWarned, when one was last logged as a warning.
		unauthRefused uint64
		refusalWarned time.Time
	}
}

// pairing is a session whose first connection has arrived.
type pairing struct {
	first *conn
	// paired is closed when the second connection took it over.
	paired chan struct{}
}

// Listen accepts the peer's connections on ln until Close. The Listener
// owns ln: its accept loop runs until ln.Accept fails, which Close brings
// about by closing ln, as the net.Listener contract promises. A
// configuration error is returned by Accept.
func Listen(cfg Config, ln net.Listener) *Listener {
	cfg, err := cfg.withDefaults()
	l := &Listener{
		cfg:        cfg,
		err:        err,
		ln:         ln,
		log:        cfg.Logger,
		ready:      make(chan *Session, readyBacklog),
		acceptDone: make(chan struct{}),
	}
	l.ctx, l.cancel = context.WithCancel(context.Background())
	l.mu.pending = make(map[[16]byte]*pairing)
	l.mu.slots = newSlots(cfg.MaxHandshakes, cfg.MaxHandshakesPerAddress)
	if err != nil {
		close(l.acceptDone)
		return l
	}
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		l.acceptLoop()
	}()
	return l
}

// Accept returns the next established session. The caller owns it (and
// closes it).
func (l *Listener) Accept(ctx context.Context) (*Session, error) {
	if l.err != nil {
		return nil, l.err
	}
	select {
	case s := <-l.ready:
		return s, nil
	default:
	}
	select {
	case s := <-l.ready:
		return s, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-l.acceptDone:
		l.mu.Lock()
		defer l.mu.Unlock()
		return nil, l.mu.acceptErr
	}
}

// Addr is the address listened on.
func (l *Listener) Addr() net.Addr { return l.ln.Addr() }

// Close closes ln, aborts handshakes in progress and closes the sessions
// Accept has not returned; it returns once every goroutine the Listener
// started is gone, so it waits for a pending ln.Accept to fail (a wrapper
// whose Close does not unblock Accept makes it wait for the next incoming
// connection, which is then dropped). Sessions already returned by Accept
// are not affected.
func (l *Listener) Close() error {
	var err error
	l.closeOnce.Do(func() {
		l.cancel()
		err = l.ln.Close()
		l.wg.Wait()
		for {
			select {
			case s := <-l.ready:
				_ = s.Close()
			default:
				return
			}
		}
	})
	return err
}

func (l *Listener) acceptLoop() {
	defer close(l.acceptDone)
	var delay time.Duration
	for {
		nc, err := l.ln.Accept()
		if err != nil {
			if l.ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				l.setAcceptErr(fmt.Errorf("link: listener closed: %w", net.ErrClosed))
				return
			}
			// Out of file descriptors and the like: back off, as
			// net/http does.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			l.log.Warn("link accept failed; retrying", "err", err, "delay", delay)
			t := time.NewTimer(delay)
			select {
			case <-t.C:
			case <-l.ctx.Done():
				t.Stop()
			}
			continue
		}
		delay = 0
		if l.ctx.Err() != nil {
			_ = nc.Close()
			l.setAcceptErr(fmt.Errorf("link: listener closed: %w", net.ErrClosed))
			return
		}
		l.admit(nc)
	}
}

// admit gives a new connection a handshake slot, dropping an older
// unauthenticated connection when the slots are full (see slots), and
// starts its handshake.
func (l *Listener) admit(nc net.Conn) {
	defer func() {
		if v := recover(); v != nil {
			_ = nc.Close()
			l.cfg.recovered(l.log, "link listener: admitting a connection", v)
		}
	}()
	sl := &slot{addr: sourceAddr(nc), conn: nc}
	l.mu.Lock()
	evicted := l.mu.slots.admit(sl)
	warn := false
	if len(evicted) > 0 {
		l.mu.evicted += uint64(len(evicted))
		if now := time.Now(); now.Sub(l.mu.warned) >= evictionWarnEvery {
			l.mu.warned, warn = now, true
		}
	}
	total := l.mu.evicted
	l.mu.Unlock()
	for _, v := range evicted {
		_ = v.conn.Close()
		l.log.Debug("link: handshake slots full; dropped an unauthenticated connection", "remote", v.conn.RemoteAddr().String())
	}
	if warn {
		l.log.Warn("link: unauthenticated connections fill the handshake slots; dropping the oldest to make room (is something other than the peer connecting to the replication port?)",
			"remote", nc.RemoteAddr().String(), "dropped_total", total,
			"max_handshakes", l.cfg.MaxHandshakes, "max_handshakes_per_address", l.cfg.MaxHandshakesPerAddress)
	}
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		defer l.leave(sl)
		defer func() {
			if v := recover(); v != nil {
				_ = nc.Close()
				l.cfg.recovered(l.log, "link listener: handshake", v)
			}
		}()
		l.handshake(nc, sl)
	}()
}

// evictionWarnEvery bounds how often dropping connections for want of
// handshake slots is logged as a warning.
const evictionWarnEvery = 10 * time.Second

// leave frees sl's slot (once: eviction may have freed it already).
func (l *Listener) leave(sl *slot) {
	l.mu.Lock()
	l.mu.slots.leave(sl)
	l.mu.Unlock()
}

func (l *Listener) setAcceptErr(err error) {
	l.mu.Lock()
	l.mu.acceptErr = err
	l.mu.Unlock()
}

// refused reports a connection the listener refused. Anyone who reaches
// the port can cause refusals before authentication, so those are logged
// as a warning at most every evictionWarnEvery (the others at debug
// level, counted in the next warning).
func (l *Listener) refused(nc net.Conn, authenticated bool, err error) {
	if l.ctx.Err() != nil {
		return // closing
	}
	if l.cfg.onRefuse != nil {
		l.cfg.onRefuse(err)
	}
	remote := nc.RemoteAddr().String()
	if authenticated {
		l.log.Warn("link connection refused", "remote", remote, "err", err)
		return
	}
	l.mu.Lock()
	l.mu.unauthRefused++
	n := l.mu.unauthRefused
	now := time.Now()
	warn := now.Sub(l.mu.refusalWarned) >= evictionWarnEvery
	if warn {
		l.mu.refusalWarned, l.mu.unauthRefused = now, 0
	}
	l.mu.Unlock()
	if warn {
		l.log.Warn("link connection refused before it authenticated", "remote", remote, "err", err, "refused_since_last_warning", n)
	} else {
		l.log.Debug("link connection refused before it authenticated", "remote", remote, "err", err)
	}
}

// explainDeadline says which limit a timed-out handshake step ran into.
func explainDeadline(err error, what string, limit time.Duration) error {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return fmt.Errorf("%w (a connection must %s within %v of connecting: AuthTimeout)", err, what, limit)
	}
	return err
}

// handshake runs the listener's side of one connection's handshake and
// pairs it with the other connection of its session. The connection has
// AuthTimeout to authenticate and send its offer, HandshakeTimeout in all.
func (l *Listener) handshake(nc net.Conn, sl *slot) {
	start := time.Now()
	deadline := start.Add(l.cfg.HandshakeTimeout)
	_ = nc.SetDeadline(start.Add(l.cfg.AuthTimeout))
	stop := context.AfterFunc(l.ctx, func() { _ = nc.Close() })
	c, offer, authenticated, err := l.serverHandshake(nc, sl, deadline)
	if !stop() && err == nil {
		err = net.ErrClosed
	}
	if err != nil {
		_ = nc.Close()
		l.refused(nc, authenticated, err)
		return
	}
	_ = nc.SetDeadline(time.Time{})
	l.pair(c, offer, deadline)
}

// serverHandshake authenticates nc (TLS with the pinned certificate), then
// frees its slot, records its address as the peer's (see slots) and
// exchanges the hellos, moving the deadline to
// deadline once the offer is in.
func (l *Listener) serverHandshake(nc net.Conn, sl *slot, deadline time.Time) (c *conn, offer hello, authenticated bool, err error) {
	cfg := &l.cfg
	tc := tls.Server(heardConn{Conn: nc, s: sl}, cfg.tlsConfig(true))
	if err := tc.HandshakeContext(l.ctx); err != nil {
		return nil, hello{}, false, fmt.Errorf("link: TLS handshake: %w", explainDeadline(err, "authenticate", cfg.AuthTimeout))
	}
	l.mu.Lock()
	l.mu.slots.leave(sl)
	l.mu.slots.peer = sl.addr
	l.mu.Unlock()
	c, offer, err = l.hellos(tc, nc, deadline)
	return c, offer, true, err
}

// hellos exchanges the hellos on an authenticated connection.
func (l *Listener) hellos(tc *tls.Conn, nc net.Conn, deadline time.Time) (*conn, hello, error) {
	cfg := &l.cfg
	offer, err := readHello(tc, cfg.version)
	if err != nil {
		return nil, hello{}, fmt.Errorf("link: read hello: %w", explainDeadline(err, "send its hello", cfg.AuthTimeout))
	}
	_ = nc.SetDeadline(deadline)
	refuse := func(status helloStatus, reason string) {
		_ = writeHello(tc, &hello{version: cfg.version, status: status, kind: offer.kind, token: offer.token, id: cfg.LocalID, reason: reason})
	}
	if offer.version != cfg.version {
		refuse(helloRefuseVersion, "protocol version mismatch")
		return nil, hello{}, &VersionError{Local: cfg.version, Remote: offer.version}
	}
	if offer.status != helloOffer {
		refuse(helloRefuse, "expected an offer")
		return nil, hello{}, protoErr("hello with status %d where an offer belongs", offer.status)
	}
	if offer.id != cfg.PeerID {
		refuse(helloRefusePeer, fmt.Sprintf("array %s expects peer %q, not %q; check the peer id configured on array %s",
			cfg.LocalID, cfg.PeerID, offer.id, cfg.LocalID))
		return nil, hello{}, fmt.Errorf("%w: array %q connected, this array expects %q", ErrWrongPeer, offer.id, cfg.PeerID)
	}
	if (offer.kind != connData && offer.kind != connMeta) || offer.timeout <= 0 {
		refuse(helloRefuse, "malformed offer")
		return nil, hello{}, protoErr("offer with connection kind %s and timeout %v", offer.kind, offer.timeout)
	}
	accept := hello{version: cfg.version, status: helloAccept, kind: offer.kind, token: offer.token, timeout: cfg.Timeout, id: cfg.LocalID}
	if err := writeHello(tc, &accept); err != nil {
		return nil, hello{}, fmt.Errorf("link: send hello: %w", err)
	}
	confirm, err := readHello(tc, cfg.version)
	if err != nil {
		return nil, hello{}, fmt.Errorf("link: read confirm: %w", err)
	}
	switch {
	case confirm.version != cfg.version:
		return nil, hello{}, &VersionError{Local: cfg.version, Remote: confirm.version}
	case confirm.status == helloRefusePeer:
		return nil, hello{}, fmt.Errorf("%w: the dialer refused this array: %s", ErrWrongPeer, confirm.reason)
	case confirm.status.refusal():
		return nil, hello{}, fmt.Errorf("link: the dialer refused the connection: %s", confirm.reason)
	case confirm.status != helloConfirm || confirm.token != offer.token || confirm.kind != offer.kind:
		return nil, hello{}, protoErr("confirm does not match the offer")
	}
	return newConn(offer.kind, nc, tc), offer, nil
}

// pair joins c with the other connection of its session: the first to
// arrive waits for the second (until deadline), the second starts the
// session.
func (l *Listener) pair(c *conn, offer hello, deadline time.Time) {
	l.mu.Lock()
	p := l.mu.pending[offer.token]
	if p == nil {
		p = &pairing{first: c, paired: make(chan struct{})}
		l.mu.pending[offer.token] = p
		l.mu.Unlock()
		l.awaitPartner(p, offer.token, deadline)
		return
	}
	if p.first.kind == c.kind {
		l.mu.Unlock()
		_ = c.raw.Close()
		l.refused(c.raw, true, protoErr("a second %s connection for one session", c.kind))
		return
	}
	delete(l.mu.pending, offer.token)
	l.mu.Unlock()
	close(p.paired)

	data, meta := p.first, c
	if data.kind != connData {
		data, meta = meta, data
	}
	s := newSession(l.cfg, offer, data, meta)
	s.start()
	select {
	case l.ready <- s:
	default:
		l.log.Warn("link session dropped: Accept is not keeping up", "peer", offer.id)
		_ = s.Close()
	}
}

// awaitPartner waits for the second connection of p's session; if it does
// not come, p's connection is closed.
func (l *Listener) awaitPartner(p *pairing, token [16]byte, deadline time.Time) {
	t := time.NewTimer(time.Until(deadline))
	defer t.Stop()
	select {
	case <-p.paired:
		return
	case <-t.C:
	case <-l.ctx.Done():
	}
	l.mu.Lock()
	if l.mu.pending[token] != p {
		l.mu.Unlock()
		return // the partner took it meanwhile
	}
	delete(l.mu.pending, token)
	l.mu.Unlock()
	_ = p.first.raw.Close()
	l.refused(p.first.raw, true, fmt.Errorf("link: the session's other connection did not arrive within %v", l.cfg.HandshakeTimeout))
}
