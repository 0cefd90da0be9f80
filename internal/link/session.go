package link

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// pingRing is how many recent pings are remembered for their pongs; a pong
// for an older ping is ignored.
const pingRing = 64

// closeGrace bounds how long Close waits for the peer to answer the
// goodbye by closing its side.
const closeGrace = 500 * time.Millisecond

// maxErrorText bounds the text of an error response.
const maxErrorText = 64 << 10

// noLease marks a session whose pings were never answered.
const noLease = math.MinInt64

// Session is an established link to the peer. Its methods may be called
// from many goroutines.
type Session struct {
	cfg    Config
	log    *slog.Logger
	peerID string
	// peerTimeout is the peer's Timeout (from its hello).
	peerTimeout time.Duration
	data, meta  *conn

	// epoch is the clock reading times are stored relative to (as
	// nanoseconds in atomics, keeping the monotonic clock).
	epoch time.Time
	// lastHeard is when the last frame arrived; leaseSent is when the
	// latest answered ping was sent (noLease: none yet); rtt is the
	// smoothed round trip in nanoseconds.
	lastHeard, leaseSent, rtt atomic.Int64

	// nextID numbers this side's requests.
	nextID atomic.Uint64
	// budget bounds request payload bytes in flight; respBudget response
	// payload bytes queued on meta; reqBudget the payload bytes of the
	// peer's requests held here, from reading them to the end of their
	// handlers (a peer that keeps to its own budget never waits on it;
	// one that does not is read no faster than its requests are
	// handled).
	budget, respBudget, reqBudget *budget

	// work hands a request to an idle handler worker; workers counts the
	// workers started (data reader only).
	work    chan request
	workers int

	// ctx is cancelled when the session dies; handlers run under it.
	ctx    context.Context
	cancel context.CancelFunc
	// done is closed when the session dies.
	done chan struct{}
	// closing is set once Close has begun: the session's error will be
	// ErrClosed whatever stops it.
	closing   atomic.Bool
	closeOnce sync.Once
	// wg counts every goroutine of the session: readers, writers, the
	// heartbeat and the handler workers.
	wg sync.WaitGroup

	mu struct {
		sync.Mutex
		// err is why the session died (nil while alive).
		err error
		// calls are the Calls waiting for a response, by request id
		// (nil once dead).
		calls map[uint64]*call
		// pingSeq is the last ping's sequence number; pings the send
		// times of recent ones.
		pingSeq uint64
		pings   [pingRing]pingRecord
	}
}

type pingRecord struct {
	seq  uint64
	sent int64 // relative to epoch
}

// request is a request from the peer for a handler.
type request struct {
	h       header
	payload []byte
}

func newSession(cfg Config, peer hello, data, meta *conn) *Session {
	s := &Session{
		cfg:         cfg,
		log:         cfg.Logger.With("peer", peer.id),
		peerID:      peer.id,
		peerTimeout: peer.timeout,
		data:        data,
		meta:        meta,
		budget:      newBudget(cfg.MaxInFlightBytes),
		respBudget:  newBudget(cfg.MaxInFlightBytes),
		reqBudget:   newBudget(cfg.MaxInFlightBytes),
		work:        make(chan request),
		done:        make(chan struct{}),
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.epoch = cfg.Now()
	s.leaseSent.Store(noLease)
	s.mu.calls = make(map[uint64]*call)
	return s
}

// start runs the session's goroutines.
func (s *Session) start() {
	s.log.Info("link session established", "local", s.data.raw.LocalAddr().String(),
		"remote", s.data.raw.RemoteAddr().String(), "peer_timeout", s.peerTimeout)
	if s.peerTimeout < 2*s.cfg.HeartbeatInterval {
		s.log.Warn("link peer's timeout is shorter than two heartbeat intervals: it may drop the session while this side is healthy",
			"peer_timeout", s.peerTimeout, "heartbeat_interval", s.cfg.HeartbeatInterval)
	}
	s.wg.Add(5)
	for _, c := range []*conn{s.data, s.meta} {
		go func() {
			defer s.wg.Done()
			defer s.contain(c.kind.String() + " connection reader")
			s.die(connError(c, "read", s.readLoop(c)))
		}()
		go func() {
			defer s.wg.Done()
			s.runWriter(c)
		}()
	}
	go func() {
		defer s.wg.Done()
		defer s.contain("heartbeat")
		s.heartbeatLoop()
	}()
}

// contain ends the session when the goroutine it is deferred in panics:
// the panic is logged with its stack and counted (Config.Panics), and the
// process carries on; the session's owner sees it die as after any other
// error.
func (s *Session) contain(where string) {
	if v := recover(); v != nil {
		s.die(s.cfg.recovered(s.log, where, v))
	}
}

func connError(c *conn, op string, err error) error {
	return fmt.Errorf("%s connection: %s: %w", c.kind, op, err)
}

// Call sends a request and waits for its response, for ctx to end or for
// the session to die (the error then wraps ErrClosed). A handler's error
// comes back as a *RemoteError. Call returns only once the transport no
// longer references req.Payload; the response's Payload belongs to the
// caller.
func (s *Session) Call(ctx context.Context, req Message) (Message, error) {
	return s.Go(ctx, req).Wait()
}

// Pending is a request sent by Go; Wait returns its response.
type Pending struct {
	s   *Session
	ctx context.Context
	id  uint64
	c   *call
	err error // set when the request was never sent
}

// Go sends a request like Call but returns without waiting for the
// response: the caller can do other work while the request travels, then
// calls Wait exactly once. req.Payload must stay untouched until Wait
// returns.
func (s *Session) Go(ctx context.Context, req Message) *Pending {
	if len(req.Payload) > MaxPayload {
		return &Pending{err: fmt.Errorf("%w: request of %d bytes, the maximum is %d", ErrTooLarge, len(req.Payload), MaxPayload)}
	}
	if err := ctx.Err(); err != nil {
		return &Pending{err: err}
	}
	n := len(req.Payload)
	if err := s.budget.acquire(ctx, s.done, n); err != nil {
		if errors.Is(err, ErrClosed) {
			err = s.Err()
		}
		return &Pending{err: err}
	}
	c := &call{size: n, written: make(chan struct{}), done: make(chan struct{})}
	id := s.nextID.Add(1)
	s.mu.Lock()
	if err := s.mu.err; err != nil {
		s.mu.Unlock()
		s.budget.release(n)
		return &Pending{err: err}
	}
	s.mu.calls[id] = c
	s.mu.Unlock()

	// When the send fails the writer has stopped, so the session is dead
	// and c has been (or is being) failed.
	s.send(s.data, outFrame{h: header{kind: kindRequest, typ: req.Type, epoch: req.Epoch, id: id}, payload: req.Payload, call: c}, req.Urgent)
	return &Pending{s: s, ctx: ctx, id: id, c: c}
}

// Done is closed when the response has arrived or the session died (or
// at once when the request was never sent): Wait then returns without
// blocking, unless Go's ctx ended first.
func (p *Pending) Done() <-chan struct{} {
	if p.err != nil {
		return closedChan
	}
	return p.c.done
}

var closedChan = func() chan struct{} {
	ch := make(chan struct{})
	close(ch)
	return ch
}()

// Wait waits for the response of the request Go sent, for Go's ctx to end
// or for the session to die, as Call does.
func (p *Pending) Wait() (Message, error) {
	if p.err != nil {
		return Message{}, p.err
	}
	c := p.c
	select {
	case <-c.done:
	case <-p.ctx.Done():
		if c.withdraw() {
			// Never sent: no response will come.
			p.s.forget(p.id, c)
			return Message{}, p.ctx.Err()
		}
		// Sent or being sent: the budget is released when the response
		// arrives (the peer holds the payload until then).
		<-c.written
		return Message{}, p.ctx.Err()
	}
	if !c.withdraw() {
		<-c.written
	}
	return c.resp, c.err
}

// forget drops a call that was never sent.
func (s *Session) forget(id uint64, c *call) {
	s.mu.Lock()
	_, ok := s.mu.calls[id]
	delete(s.mu.calls, id)
	s.mu.Unlock()
	if ok {
		s.budget.release(c.size)
	}
}

// RTT is the smoothed round trip of heartbeats (0 before the first pong).
func (s *Session) RTT() time.Duration { return time.Duration(s.rtt.Load()) }

// PeerID is the peer's array id.
func (s *Session) PeerID() string { return s.peerID }

// RemoteAddr is the peer's address (of the data connection).
func (s *Session) RemoteAddr() net.Addr { return s.data.raw.RemoteAddr() }

// Done is closed when the session is dead.
func (s *Session) Done() <-chan struct{} { return s.done }

// Err says why the session died (nil while alive). It wraps ErrClosed,
// and ErrTimeout when the peer went silent.
func (s *Session) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.mu.err
}

// LastHeard is the local time (Config.Now) the last frame of any kind was
// received from the peer; before the first, when the session started.
func (s *Session) LastHeard() time.Time {
	return s.epoch.Add(time.Duration(s.lastHeard.Load()))
}

// Lease is the send time of the latest heartbeat ping the peer has
// answered, plus the peer's Timeout; zero before the first answer. By the
// Timeout rule the peer does not consider this side dead before then;
// upper layers use it as a read lease, valid strictly before the instant
// returned. The promise covers only the timeout: a session can also end
// earlier (connection error, Close), which is why a peer must wait for
// its PeerLease after a session ends.
func (s *Session) Lease() time.Time {
	sent := s.leaseSent.Load()
	if sent == noLease {
		return time.Time{}
	}
	return s.epoch.Add(time.Duration(sent) + s.peerTimeout)
}

// PeerLease is the latest Lease the peer can hold from this side:
// LastHeard plus this side's Timeout (every ping the peer has had
// answered was sent before this side last heard from it). After the
// session ends, the peer must be treated as possibly alive and serving
// reads until then.
func (s *Session) PeerLease() time.Time {
	return s.LastHeard().Add(s.cfg.Timeout)
}

// Close ends the session: it sends the peer a goodbye and waits for the
// peer to close its side (at most half a second, or Timeout if shorter),
// then fails pending Calls with ErrClosed, closes both connections and
// returns once every goroutine of the session is gone, running handlers
// included. It always returns nil.
func (s *Session) Close() error {
	s.closeOnce.Do(func() {
		s.closing.Store(true)
		// The peer answers the goodbye by closing its side, which ends
		// this one: then the peer has seen the goodbye before any
		// connection loss.
		if s.meta.out.queue(outFrame{h: header{kind: kindGoodbye}}, true) {
			t := time.NewTimer(min(closeGrace, s.cfg.Timeout))
			select {
			case <-s.done:
			case <-t.C:
			}
			t.Stop()
		}
		s.die(ErrClosed)
		s.wg.Wait()
	})
	return nil
}

// die ends the session for cause (once; later causes are ignored).
func (s *Session) die(cause error) {
	if s.closing.Load() {
		cause = ErrClosed
	}
	err := cause
	if cause != ErrClosed {
		err = &closedError{cause: cause}
	}
	s.mu.Lock()
	if s.mu.err != nil {
		s.mu.Unlock()
		return
	}
	s.mu.err = err
	calls := s.mu.calls
	s.mu.calls = nil
	s.mu.Unlock()

	close(s.done)
	s.cancel()
	_ = s.data.raw.Close()
	_ = s.meta.raw.Close()
	for _, c := range calls {
		c.err = err
		close(c.done)
	}
	switch {
	case cause == ErrClosed:
		s.log.Info("link session closed")
	case errors.Is(cause, errPeerClosed):
		s.log.Info("link session closed by the peer")
	default:
		s.log.Warn("link session lost", "err", cause)
	}
}

func (s *Session) now() time.Time { return s.cfg.Now() }

// since is t relative to epoch, in nanoseconds.
func (s *Session) since(t time.Time) int64 { return int64(t.Sub(s.epoch)) }

// readLoop reads and handles c's frames until an error. A request's
// payload is read once it fits in reqBudget.
func (s *Session) readLoop(c *conn) error {
	c.fr.admit = func(h header) error {
		if h.kind != kindRequest {
			return nil
		}
		return s.reqBudget.acquire(s.ctx, s.done, int(h.length))
	}
	for {
		h, payload, err := c.fr.next()
		if err != nil {
			return err
		}
		s.lastHeard.Store(s.since(s.now()))
		if err := s.handle(c, h, payload); err != nil {
			return err
		}
	}
}

// handle acts on one frame. The meta reader never blocks here for long,
// so responses and pongs always get through.
func (s *Session) handle(c *conn, h header, payload []byte) error {
	want := connMeta
	if h.kind == kindRequest {
		want = connData
	}
	if c.kind != want {
		return protoErr("%s frame on the %s connection", h.kind, c.kind)
	}
	switch h.kind {
	case kindRequest:
		return s.dispatch(request{h: h, payload: payload})
	case kindResponse, kindError:
		return s.complete(h, payload)
	case kindPing:
		if len(payload) != 0 {
			return protoErr("ping with a payload")
		}
		s.meta.out.queue(outFrame{h: header{kind: kindPong, id: h.id}}, true)
	case kindPong:
		if len(payload) != 0 {
			return protoErr("pong with a payload")
		}
		s.pong(h.id)
	case kindGoodbye:
		return errPeerClosed
	}
	return nil
}

// complete hands a response to its Call.
func (s *Session) complete(h header, payload []byte) error {
	s.mu.Lock()
	c, ok := s.mu.calls[h.id]
	delete(s.mu.calls, h.id)
	dead := s.mu.calls == nil
	s.mu.Unlock()
	if !ok {
		if dead {
			return nil
		}
		return protoErr("%s for request %d, which is not pending", h.kind, h.id)
	}
	s.budget.release(c.size)
	if h.kind == kindError {
		c.err = &RemoteError{Msg: string(payload)}
	} else {
		c.resp = Message{Type: h.typ, Epoch: h.epoch, Payload: payload}
	}
	close(c.done)
	return nil
}

// dispatch gives a request to an idle worker, starts a new one below
// MaxConcurrentHandlers, or else waits for one (and so stops reading).
func (s *Session) dispatch(r request) error {
	select {
	case s.work <- r:
		return nil
	default:
	}
	if s.workers < s.cfg.MaxConcurrentHandlers {
		s.workers++
		s.wg.Add(1)
		go s.worker(r)
		return nil
	}
	select {
	case s.work <- r:
		return nil
	case <-s.done:
		return ErrClosed
	}
}

// worker serves requests until the session dies. Workers are kept rather
// than started per request, so their stacks are grown once.
func (s *Session) worker(r request) {
	defer s.wg.Done()
	typ := r.h.typ
	defer func() {
		if v := recover(); v != nil {
			s.die(s.cfg.recovered(s.log, fmt.Sprintf("the handler of a request of type %d", typ), v))
		}
	}()
	for {
		typ = r.h.typ
		s.serve(r)
		select {
		case r = <-s.work:
		case <-s.done:
			return
		}
	}
}

// serve runs the handler for r and queues its response.
func (s *Session) serve(r request) {
	var resp Message
	var err error
	if s.cfg.Handler == nil {
		err = fmt.Errorf("array %s serves no link requests", s.cfg.LocalID)
	} else {
		resp, err = s.cfg.Handler(s.ctx, Message{Type: r.h.typ, Epoch: r.h.epoch, Payload: r.payload})
	}
	s.reqBudget.release(int(r.h.length))
	if err == nil && len(resp.Payload) > MaxPayload {
		err = fmt.Errorf("%w: response of %d bytes to request type %d, the maximum is %d", ErrTooLarge, len(resp.Payload), r.h.typ, MaxPayload)
	}
	f := outFrame{h: header{kind: kindResponse, typ: resp.Type, epoch: resp.Epoch, id: r.h.id}, payload: resp.Payload}
	if err != nil {
		text := err.Error()
		if len(text) > maxErrorText {
			text = text[:maxErrorText]
		}
		f = outFrame{h: header{kind: kindError, typ: r.h.typ, id: r.h.id}, payload: []byte(text)}
	}
	n := len(f.payload)
	if s.respBudget.acquire(s.ctx, s.done, n) != nil {
		return
	}
	if !s.send(s.meta, f, false) {
		s.respBudget.release(n)
	}
}

// heartbeatLoop pings the peer every HeartbeatInterval and ends the
// session when nothing has been heard for Timeout.
func (s *Session) heartbeatLoop() {
	t := time.NewTicker(s.cfg.HeartbeatInterval)
	defer t.Stop()
	s.ping(s.now())
	for {
		select {
		case <-s.done:
			return
		case <-t.C:
		}
		now := s.now()
		if quiet := now.Sub(s.LastHeard()); quiet >= s.cfg.Timeout {
			s.die(fmt.Errorf("%w: nothing received from peer %s for %v (Timeout %v); the network between the arrays or the peer is down",
				ErrTimeout, s.peerID, quiet, s.cfg.Timeout))
			return
		}
		s.ping(now)
	}
}

func (s *Session) ping(now time.Time) {
	s.mu.Lock()
	s.mu.pingSeq++
	seq := s.mu.pingSeq
	s.mu.pings[seq%pingRing] = pingRecord{seq: seq, sent: s.since(now)}
	s.mu.Unlock()
	s.meta.out.queue(outFrame{h: header{kind: kindPing, id: seq}}, true)
}

// pong records the answer to ping seq: a round-trip sample and the lease.
// Only the meta reader calls it.
func (s *Session) pong(seq uint64) {
	now := s.since(s.now())
	s.mu.Lock()
	p := s.mu.pings[seq%pingRing]
	s.mu.Unlock()
	if seq == 0 || p.seq != seq {
		return // too old to be remembered
	}
	sample := max(now-p.sent, 0)
	if old := s.rtt.Load(); old == 0 {
		s.rtt.Store(sample)
	} else {
		s.rtt.Store(old - old/8 + sample/8)
	}
	if p.sent > s.leaseSent.Load() {
		s.leaseSent.Store(p.sent)
	}
}
