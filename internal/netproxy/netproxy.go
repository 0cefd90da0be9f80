// Package netproxy is a userspace TCP proxy that stands in for the network
// between two arrays in the lab. The lab's kernel has no netem, so this is
// how tests give the replication link a distance, a width and a failure:
// it adds latency, limits bandwidth and cuts the link, and all three can be
// changed while connections are open, from Go or over a small HTTP API.
//
// Each connection accepted on the listen address (side a) is forwarded to
// the target (side b). In each direction a reader stamps every chunk it
// reads with its arrival time and queues it; a writer delivers the chunk at
// arrival + RTT/2, paced by a token bucket that all connections in that
// direction share, as they would share a cable. Delay therefore costs
// latency, not throughput. The queue is bounded: once it is full the reader
// stops reading and the sender feels TCP backpressure.
//
// A partition is a cable cut. Bytes are discarded silently in both
// directions; connections stay open and new ones are still accepted, their
// bytes discarded too (even when the target is down, which outside a cut
// resets the client). The endpoints must notice by their own heartbeats
// and timeouts. When the link heals, every connection that lost bytes (its
// byte stream now has a hole) is reset, so the endpoints reconnect;
// connections that lost nothing carry on. A one-way cut discards the bytes
// of one direction only: the other keeps flowing, so one endpoint still
// hears the other while its own words are lost; once a direction is whole
// again, the connections that lost bytes in it are reset.
//
// Apply changes several proxies in one instant, so that a test can cut a
// link and the paths to a third party at the same moment.
package netproxy

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Settings describe the link. The zero value is a plain, healthy proxy.
type Settings struct {
	// RTT is the added round trip: RTT/2 of delay in each direction.
	// Negative values count as 0.
	RTT time.Duration `json:"-"`
	// Bandwidth is bytes per second in each direction, shared by all
	// connections; 0 (or negative) is unlimited.
	Bandwidth int64 `json:"-"`
	// Partitioned cuts the link both ways (see the package comment).
	Partitioned bool `json:"partitioned"`
	// CutAToB and CutBToA cut one direction only: the bytes from the
	// connecting side (a) to the target (b), or those back, are lost as
	// in a partition while the other direction flows. Partitioned cuts
	// both whatever these say.
	CutAToB bool `json:"cut_a_to_b"`
	CutBToA bool `json:"cut_b_to_a"`
}

// cut reports whether direction d (aToB or bToA) is cut.
func (s Settings) cut(d int) bool {
	if d == aToB {
		return s.Partitioned || s.CutAToB
	}
	return s.Partitioned || s.CutBToA
}

// anyCut reports whether some direction is cut.
func (s Settings) anyCut() bool { return s.cut(aToB) || s.cut(bToA) }

// Heal clears every cut of s, both ways and one way.
func (s *Settings) Heal() { s.Partitioned, s.CutAToB, s.CutBToA = false, false, false }

// The JSON form of Settings is {"rtt":"20ms","bandwidth":"100M",
// "partitioned":false,"cut_a_to_b":false,"cut_b_to_a":false}; see
// MarshalJSON in control.go.

func (s Settings) normalize() Settings {
	s.RTT = max(s.RTT, 0)
	s.Bandwidth = max(s.Bandwidth, 0)
	return s
}

// Stats count a proxy's traffic since New.
type Stats struct {
	// Connections open now.
	Connections int64 `json:"connections"`
	// Accepted is every connection accepted so far.
	Accepted int64 `json:"accepted"`
	// BytesAToB and BytesBToA are bytes delivered from the connecting side
	// (a) to the target (b) and back.
	BytesAToB int64 `json:"bytes_a_to_b"`
	BytesBToA int64 `json:"bytes_b_to_a"`
	// BytesDropped is bytes discarded by partitions, both directions.
	BytesDropped int64 `json:"bytes_dropped"`
}

const (
	// chunkSize is the most a reader takes from a socket at once.
	chunkSize = 64 << 10
	// defaultMaxQueued is how many bytes a direction of one connection
	// holds in flight before its reader stops reading.
	defaultMaxQueued = 64 << 20
)

// Directions, indexing per-direction state.
const (
	aToB = 0
	bToA = 1
)

// Proxy forwards connections from its listener to a target through an
// emulated link. It is safe for concurrent use.
type Proxy struct {
	// id orders proxies for Apply, which locks several at once.
	id uint64
	// precise: finish short delays with a kernel sleep (real sockets;
	// the in-memory tests run on a fake clock instead).
	precise bool
	ln      net.Listener
	dial    func(ctx context.Context) (net.Conn, error)
	log     *slog.Logger
	// maxQueued bounds the bytes queued per direction per connection.
	maxQueued int

	// ctx is cancelled by Close; it ends the accept loop and pending dials.
	ctx    context.Context
	cancel context.CancelFunc
	// wg counts the accept loop and every connection's handler.
	wg sync.WaitGroup

	accepted atomic.Int64
	dropped  atomic.Int64
	sent     [2]atomic.Int64 // bytes delivered, by direction

	// mu guards the settings and everything derived from them, and the set
	// of open connections.
	mu struct {
		sync.Mutex
		s Settings
		// changed is closed and replaced on every settings change, waking
		// writers that wait on a delay or on the bucket.
		changed chan struct{}
		// buckets pace each direction; all connections share them.
		buckets [2]bucket
		conns   map[*conn]struct{}
		closed  bool
	}
}

// proxyIDs numbers the proxies of the process, so that Apply always
// locks them in the same order.
var proxyIDs atomic.Uint64

// New listens on listenAddr (e.g. "127.0.0.1:0") and forwards each accepted
// connection to target over a link with settings s. A nil logger discards.
func New(listenAddr, target string, s Settings, logger *slog.Logger) (*Proxy, error) {
	ln, err := net.Listen("tcp", listenAddr)
	if err != nil {
		return nil, fmt.Errorf("link proxy: listen on %s: %w", listenAddr, err)
	}
	return Serve(ln, target, s, logger), nil
}

// Serve is New on a listener the caller opened (and the proxy now owns):
// a caller that must publish the proxy's address before the proxy starts
// keeps the port from being taken meanwhile.
func Serve(ln net.Listener, target string, s Settings, logger *slog.Logger) *Proxy {
	var d net.Dialer
	dial := func(ctx context.Context) (net.Conn, error) {
		return d.DialContext(ctx, "tcp", target)
	}
	p := newProxy(ln, dial, s, logger)
	p.precise = true
	return p
}

// newProxy serves ln, reaching the target with dial. Tests pass in-memory
// listeners and dialers.
func newProxy(ln net.Listener, dial func(context.Context) (net.Conn, error), s Settings, logger *slog.Logger) *Proxy {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	p := &Proxy{id: proxyIDs.Add(1), ln: ln, dial: dial, log: logger, maxQueued: defaultMaxQueued}
	p.ctx, p.cancel = context.WithCancel(context.Background())
	p.mu.s = s.normalize()
	p.mu.changed = make(chan struct{})
	p.mu.conns = make(map[*conn]struct{})
	p.wg.Go(p.serve)
	return p
}

// Addr is the address the proxy listens on, for the endpoint that dials.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Settings returns the link's current settings.
func (p *Proxy) Settings() Settings {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.mu.s
}

// Set replaces the settings. They apply at once, to open connections too:
// chunks waiting for their delay or their bandwidth share are re-timed.
func (p *Proxy) Set(s Settings) {
	_, _ = p.update(func(cur *Settings) error { *cur = s; return nil })
}

// Partition cuts the link both ways (on) or heals it (off): healing clears
// one-way cuts too.
func (p *Proxy) Partition(on bool) {
	_, _ = p.update(func(cur *Settings) error {
		if on {
			cur.Partitioned = true
		} else {
			cur.Heal()
		}
		return nil
	})
}

// update changes the settings with fn atomically and returns the result. If
// fn fails nothing changes. Healing resets the connections that lost bytes.
func (p *Proxy) update(fn func(*Settings) error) (Settings, error) {
	p.mu.Lock()
	old := p.mu.s
	s := old
	if err := fn(&s); err != nil {
		p.mu.Unlock()
		return old, err
	}
	ch := p.setLocked(s)
	p.mu.Unlock()
	ch.finish()
	return ch.s, nil
}

// Change is one proxy's part of Apply: Set edits its settings.
type Change struct {
	Proxy *Proxy
	Set   func(*Settings)
}

// Apply makes several proxies' changes in one instant: it holds every
// proxy's lock while it sets them all, and each proxy decides under its
// lock whether a byte is lost, so no byte crosses one of them under the
// old settings once any byte has crossed one under the new. Changes to
// the same proxy apply in order.
func Apply(changes ...Change) {
	byID := make(map[uint64][]Change)
	var ps []*Proxy
	for _, c := range changes {
		if _, ok := byID[c.Proxy.id]; !ok {
			ps = append(ps, c.Proxy)
		}
		byID[c.Proxy.id] = append(byID[c.Proxy.id], c)
	}
	slices.SortFunc(ps, func(a, b *Proxy) int { return cmp.Compare(a.id, b.id) })
	for _, p := range ps {
		p.mu.Lock()
	}
	done := make([]applied, 0, len(ps))
	for _, p := range ps {
		s := p.mu.s
		for _, c := range byID[p.id] {
			c.Set(&s)
		}
		done = append(done, p.setLocked(s))
	}
	for _, p := range slices.Backward(ps) {
		p.mu.Unlock()
	}
	for _, ch := range done {
		ch.finish()
	}
}

// applied is a settings change made under p.mu, with what remains to do
// once the lock is released.
type applied struct {
	p       *Proxy
	s       Settings
	changed bool
	// broken are the connections to reset: they lost bytes in a
	// direction that is no longer cut.
	broken []*conn
}

// setLocked installs s, with p.mu held.
func (p *Proxy) setLocked(s Settings) applied {
	s = s.normalize()
	if s == p.mu.s {
		return applied{p: p, s: s}
	}
	p.mu.s = s
	close(p.mu.changed)
	p.mu.changed = make(chan struct{})
	var broken []*conn
	for c := range p.mu.conns {
		for d := range c.broken {
			if c.broken[d] && !s.cut(d) {
				broken = append(broken, c)
				break
			}
		}
	}
	return applied{p: p, s: s, changed: true, broken: broken}
}

// finish logs a change and resets the connections it healed.
func (a applied) finish() {
	if !a.changed {
		return
	}
	p, s := a.p, a.s
	p.log.Info("link proxy: settings changed", "addr", p.Addr(), "rtt", s.RTT,
		"bandwidth", formatBandwidth(s.Bandwidth), "partitioned", s.Partitioned,
		"cut_a_to_b", s.CutAToB, "cut_b_to_a", s.CutBToA)
	if len(a.broken) > 0 {
		p.log.Info("link proxy: healed; resetting connections that lost bytes", "connections", len(a.broken))
	}
	for _, c := range a.broken {
		c.shut(true)
	}
}

// Stats returns the proxy's counters.
func (p *Proxy) Stats() Stats {
	p.mu.Lock()
	n := len(p.mu.conns)
	p.mu.Unlock()
	return Stats{
		Connections:  int64(n),
		Accepted:     p.accepted.Load(),
		BytesAToB:    p.sent[aToB].Load(),
		BytesBToA:    p.sent[bToA].Load(),
		BytesDropped: p.dropped.Load(),
	}
}

// Close stops accepting, resets every open connection and returns once
// every goroutine the proxy started has ended. Calling it again only waits.
func (p *Proxy) Close() error {
	p.mu.Lock()
	if p.mu.closed {
		p.mu.Unlock()
		p.wg.Wait()
		return nil
	}
	p.mu.closed = true
	conns := make([]*conn, 0, len(p.mu.conns))
	for c := range p.mu.conns {
		conns = append(conns, c)
	}
	p.mu.Unlock()

	p.cancel()
	err := p.ln.Close()
	for _, c := range conns {
		c.shut(true)
	}
	p.wg.Wait()
	if err != nil {
		return fmt.Errorf("link proxy %s: close: %w", p.Addr(), err)
	}
	return nil
}

// serve accepts connections until Close.
func (p *Proxy) serve() {
	var backoff time.Duration
	for {
		a, err := p.ln.Accept()
		if err != nil {
			if p.ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of file descriptors and the like: wait and retry, as
			// net/http does.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			p.log.Warn("link proxy: accept failed; retrying", "addr", p.Addr(), "err", err, "retry_in", backoff)
			select {
			case <-time.After(backoff):
			case <-p.ctx.Done():
				return
			}
			continue
		}
		backoff = 0
		id := p.accepted.Add(1)
		p.wg.Go(func() { p.handle(id, a) })
	}
}

// handle dials the target for a and runs the connection until both
// directions end or it is reset.
func (p *Proxy) handle(id int64, a net.Conn) {
	log := p.log.With("conn", id, "client", a.RemoteAddr().String())
	b, err := p.dial(p.ctx)
	if err != nil {
		if p.ctx.Err() != nil {
			reset(a)
			return
		}
		if p.hold(a) {
			log.Debug("link proxy: target unreachable during a partition; the client's connection was held silent", "err", err)
			return
		}
		log.Info("link proxy: cannot reach the target; resetting the client", "err", err)
		reset(a)
		return
	}
	c := newConn(p, a, b)
	if !p.add(c) {
		c.shut(true)
		return
	}
	defer p.remove(c)
	log.Debug("link proxy: connection open")

	var wg sync.WaitGroup
	for _, d := range c.dirs {
		wg.Go(func() { c.read(d) })
		wg.Go(func() { c.write(d) })
	}
	wg.Wait()
	c.shut(false)
	log.Debug("link proxy: connection closed")
}

// hold keeps a, whose target could not be reached, open and silent while
// the link is cut, either way: across a cut the client cannot learn that
// the target is down, not even from a reset. Its bytes are lost and the
// heal resets it. It reports false, doing nothing, if the link is not cut.
func (p *Proxy) hold(a net.Conn) bool {
	c := &conn{p: p, a: a, done: make(chan struct{})}
	p.mu.Lock()
	if p.mu.closed || !p.mu.s.anyCut() {
		p.mu.Unlock()
		return false
	}
	c.broken = [2]bool{p.mu.s.cut(aToB), p.mu.s.cut(bToA)}
	p.mu.conns[c] = struct{}{}
	p.mu.Unlock()
	defer p.remove(c)
	buf := make([]byte, chunkSize)
	for {
		n, err := a.Read(buf)
		p.dropped.Add(int64(n))
		if err != nil {
			break
		}
	}
	c.shut(true)
	return true
}

// add registers c unless the proxy is closing.
func (p *Proxy) add(c *conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.mu.closed {
		return false
	}
	p.mu.conns[c] = struct{}{}
	return true
}

func (p *Proxy) remove(c *conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.mu.conns, c)
}

// lose reports whether n bytes of c in direction d (0 for a FIN or a
// reset) are lost: if that direction is cut, or c already lost bytes in
// it. A loss marks the direction broken so that the heal resets c, and a
// broken direction delivers nothing more, not even in the moment between
// the heal and the reset: its receiver never sees bytes after a hole.
// Deciding under p.mu means no loss can slip past a heal.
func (p *Proxy) lose(c *conn, d, n int) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.loseLocked(c, d, n)
}

// loseLocked is lose with p.mu held.
func (p *Proxy) loseLocked(c *conn, d, n int) bool {
	if !p.mu.s.cut(d) && !c.broken[d] {
		return false
	}
	c.broken[d] = true
	p.dropped.Add(int64(n))
	return true
}
