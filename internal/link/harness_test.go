package link

import (
	"bytes"
	"context"
	"crypto/tls"
	"log/slog"
	"net"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/metro-storage/metro/internal/pipenet"
)

// The test harness: certificates and configs for two arrays "a" (which
// dials) and "b" (which listens), a loopback TCP pair, and for tests under
// testing/synctest an in-memory network whose links can delay, throttle,
// blackhole or cut traffic. Set LINK_TEST_LOG=1 to see the debug log.

func testLogger(t testing.TB) *slog.Logger {
	if os.Getenv("LINK_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

func newCert(t testing.TB, name string) tls.Certificate {
	t.Helper()
	c, err := NewCertificate(name)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// echo answers a request with itself.
func echo(_ context.Context, req Message) (Message, error) { return req, nil }

// testConfigs returns configs for arrays a and b that pin each other and
// echo requests.
func testConfigs(t testing.TB) (a, b Config) {
	t.Helper()
	ca, cb := newCert(t, "array-a"), newCert(t, "array-b")
	a = Config{LocalID: "array-a", PeerID: "array-b", Cert: ca, PeerCert: cb.Certificate[0], Handler: echo, Logger: testLogger(t)}
	b = Config{LocalID: "array-b", PeerID: "array-a", Cert: cb, PeerCert: ca.Certificate[0], Handler: echo, Logger: testLogger(t)}
	return a, b
}

// checkLeaks fails the test if goroutines started during it outlive its
// cleanups. Call it first, so that its cleanup runs last.
func checkLeaks(t *testing.T) {
	t.Helper()
	before := runtime.NumGoroutine()
	t.Cleanup(func() {
		// Goroutines that were told to stop may take a moment to be
		// reaped after the last Close returned.
		deadline := time.Now().Add(5 * time.Second)
		for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
		if n := runtime.NumGoroutine(); n > before {
			buf := make([]byte, 1<<20)
			t.Fatalf("%d goroutines left (%d before):\n%s", n, before, buf[:runtime.Stack(buf, true)])
		}
	})
}

// tcpListen listens on loopback for b.
func tcpListen(t testing.TB, b Config) *Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := Listen(b, ln)
	t.Cleanup(func() { _ = l.Close() })
	return l
}

// tcpPair connects a to b over loopback TCP; the sessions are closed at
// cleanup.
func tcpPair(t testing.TB, a, b Config) (sa, sb *Session) {
	t.Helper()
	l := tcpListen(t, b)
	return connect(t, a, l, l.Addr().String())
}

func connect(t testing.TB, a Config, l *Listener, addr string) (sa, sb *Session) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	sa, err := Dial(ctx, a, addr)
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	t.Cleanup(func() { _ = sa.Close() })
	sb, err = l.Accept(ctx)
	if err != nil {
		t.Fatalf("Accept: %v", err)
	}
	t.Cleanup(func() { _ = sb.Close() })
	return sa, sb
}

// pipeNet is an in-memory network for tests under synctest. Each dialed
// connection runs through a proxy link of two pumps, one per direction.
type pipeNet struct {
	ln *pipenet.Listener
	// delay is the one-way delay of new links.
	delay time.Duration
	mu    sync.Mutex
	links []*proxyLink
}

func newPipeNet(delay time.Duration) *pipeNet {
	return &pipeNet{ln: pipenet.Listen("pipe:7000"), delay: delay}
}

// proxyLink is one proxied connection.
type proxyLink struct {
	// client is the dialer's end: the raw conn of a session's conn.
	client net.Conn
	// toListener and toDialer are the two directions.
	toListener, toDialer *pump
}

// cut closes the link in both directions at once, dropping what is in
// flight.
func (l *proxyLink) cut() {
	l.toListener.stop()
	l.toDialer.stop()
}

func (n *pipeNet) dial(ctx context.Context, _ string) (net.Conn, error) {
	client, proxyA := net.Pipe()
	proxyB, server := net.Pipe()
	link := &proxyLink{
		client:     client,
		toListener: newPump(proxyA, proxyB, n.delay),
		toDialer:   newPump(proxyB, proxyA, n.delay),
	}
	go link.toListener.run()
	go link.toDialer.run()
	n.mu.Lock()
	n.links = append(n.links, link)
	n.mu.Unlock()
	if err := n.ln.Offer(ctx, server); err != nil {
		link.cut()
		return nil, err
	}
	return client, nil
}

// linkOf returns the link a session's connection runs over (the session
// must be the dialer's).
func (n *pipeNet) linkOf(c *conn) *proxyLink {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, l := range n.links {
		if l.client == c.raw {
			return l
		}
	}
	panic("no link for connection")
}

// blackhole makes every link drop what it carries, in both directions.
func (n *pipeNet) blackhole() {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, l := range n.links {
		l.toListener.blackhole.Store(true)
		l.toDialer.blackhole.Store(true)
	}
}

// pump copies src to dst, each chunk delivered delay after it was read and
// no faster than bytesPerSec; while blackhole is set chunks are dropped.
// It stops when either side is closed (and then closes the other unless
// blackholed: a lost link loses the close too) or when stopped.
type pump struct {
	src, dst    net.Conn
	delay       time.Duration
	blackhole   atomic.Bool
	bytesPerSec atomic.Int64
	stopOnce    sync.Once
	stopped     chan struct{}
}

func newPump(src, dst net.Conn, delay time.Duration) *pump {
	return &pump{src: src, dst: dst, delay: delay, stopped: make(chan struct{})}
}

// stop ends the pump at once and closes both sides.
func (p *pump) stop() {
	p.stopOnce.Do(func() {
		close(p.stopped)
		p.src.Close()
		p.dst.Close()
	})
}

// sleep waits for d or until the pump is stopped.
func (p *pump) sleep(d time.Duration) bool {
	if d <= 0 {
		return true
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-p.stopped:
		return false
	}
}

func (p *pump) run() {
	type chunk struct {
		due time.Time
		b   []byte
	}
	q := make(chan chunk, 4096)
	delivered := make(chan struct{})
	go func() {
		defer close(delivered)
		for c := range q {
			if !p.sleep(time.Until(c.due)) {
				break
			}
			if _, err := p.dst.Write(c.b); err != nil {
				p.src.Close()
				break
			}
		}
		for range q {
		}
	}()
	buf := make([]byte, 64<<10)
	var free time.Time // when the throttled wire is free again
	for {
		n, err := p.src.Read(buf)
		if n > 0 && !p.blackhole.Load() {
			due := time.Now()
			bw := p.bytesPerSec.Load()
			if bw > 0 {
				free = maxTime(free, due).Add(time.Duration(int64(n) * int64(time.Second) / bw))
				due = free
			}
			q <- chunk{due: due.Add(p.delay), b: bytes.Clone(buf[:n])}
			// A throttled wire holds what it can send in wireBuffer;
			// beyond that the sender waits (TCP's window).
			if bw > 0 && !p.sleep(time.Until(free)-wireBuffer) {
				break
			}
		}
		if err != nil {
			break
		}
	}
	close(q)
	<-delivered
	if !p.blackhole.Load() {
		p.dst.Close()
	}
}

// wireBuffer is how much sending time a throttled pump buffers.
const wireBuffer = 50 * time.Millisecond

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// pipeSetup is a pair of sessions on a pipeNet (for synctest).
type pipeSetup struct {
	net    *pipeNet
	l      *Listener
	sa, sb *Session
}

// pipePair connects a to b over a pipeNet with the given one-way delay.
// Everything is closed at cleanup (which runs inside the bubble).
func pipePair(t *testing.T, a, b Config, delay time.Duration) *pipeSetup {
	t.Helper()
	n := newPipeNet(delay)
	a.dial = n.dial
	l := Listen(b, n.ln)
	ctx := context.Background()
	sa, err := Dial(ctx, a, "pipe")
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	sb, err := l.Accept(ctx)
	if err != nil {
		t.Fatalf("Accept: %v", err)
	}
	p := &pipeSetup{net: n, l: l, sa: sa, sb: sb}
	t.Cleanup(p.close)
	return p
}

// close cuts the network and closes everything. It runs at cleanup, when
// the bubble's clock no longer advances, so the links are cut first: then
// nothing waits for a delayed delivery.
func (p *pipeSetup) close() {
	p.net.mu.Lock()
	for _, l := range p.net.links {
		l.cut()
	}
	p.net.mu.Unlock()
	p.sa.Close()
	p.sb.Close()
	p.l.Close()
}

// tcpProxy forwards loopback TCP connections to target through pumps with
// the given one-way delay (real time).
type tcpProxy struct {
	ln    net.Listener
	delay time.Duration
	wg    sync.WaitGroup
	mu    sync.Mutex
	pumps []*pump
}

func newTCPProxy(t testing.TB, target string, delay time.Duration) *tcpProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &tcpProxy{ln: ln, delay: delay}
	p.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			up, down := newPump(c, s, delay), newPump(s, c, delay)
			p.mu.Lock()
			p.pumps = append(p.pumps, up, down)
			p.mu.Unlock()
			p.wg.Go(up.run)
			p.wg.Go(down.run)
		}
	})
	t.Cleanup(p.close)
	return p
}

func (p *tcpProxy) addr() string { return p.ln.Addr().String() }

func (p *tcpProxy) close() {
	p.ln.Close()
	p.mu.Lock()
	for _, pp := range p.pumps {
		pp.stop()
	}
	p.mu.Unlock()
	p.wg.Wait()
}
