package netproxy

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// These tests run the proxy on loopback TCP between real sockets. Timing
// assertions are lower bounds (the proxy never delivers early) with upper
// bounds loose enough for a loaded machine; exact timing is checked under
// a fake clock in pipe_test.go.

// server is a TCP target that runs serve on every connection it accepts.
type server struct {
	ln    net.Listener
	wg    sync.WaitGroup
	mu    sync.Mutex
	conns []net.Conn
}

func startServer(t testing.TB, serve func(c *net.TCPConn)) *server {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &server{ln: ln}
	s.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.mu.Lock()
			s.conns = append(s.conns, c)
			s.mu.Unlock()
			s.wg.Go(func() {
				defer c.Close()
				serve(c.(*net.TCPConn))
			})
		}
	})
	t.Cleanup(s.close)
	return s
}

func (s *server) addr() string { return s.ln.Addr().String() }

// close stops the server and waits for its goroutines.
func (s *server) close() {
	s.ln.Close()
	s.mu.Lock()
	for _, c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

// echo sends back what it reads, then passes the FIN on.
func echo(c *net.TCPConn) {
	if _, err := io.Copy(c, c); err == nil {
		c.CloseWrite()
	}
}

// sink reads to EOF and answers with the byte count.
func sink(c *net.TCPConn) {
	n, err := io.Copy(io.Discard, c)
	if err != nil {
		return
	}
	c.Write(binary.BigEndian.AppendUint64(nil, uint64(n)))
}

func startProxy(t testing.TB, target string, s Settings) *Proxy {
	t.Helper()
	p, err := New("127.0.0.1:0", target, s, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

func dial(t testing.TB, p *Proxy) *net.TCPConn {
	t.Helper()
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c.(*net.TCPConn)
}

// TestEchoIntegrity pushes random payloads through the proxy and back on
// many connections at once, writing and reading concurrently, and checks
// every byte.
func TestEchoIntegrity(t *testing.T) {
	srv := startServer(t, echo)
	p := startProxy(t, srv.addr(), Settings{RTT: 2 * time.Millisecond})
	const conns = 16
	var wg sync.WaitGroup
	for i := range conns {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(i), 1))
			payload := make([]byte, 1+rng.IntN(512<<10))
			for j := range payload {
				payload[j] = byte(rng.Uint32())
			}
			c, err := net.Dial("tcp", p.Addr())
			if err != nil {
				t.Error(err)
				return
			}
			defer c.Close()
			go func() {
				// Random write sizes, so chunks are cut everywhere.
				for rest := payload; len(rest) > 0; {
					n := min(len(rest), 1+rng.IntN(100<<10))
					if _, err := c.Write(rest[:n]); err != nil {
						return
					}
					rest = rest[n:]
				}
				c.(*net.TCPConn).CloseWrite()
			}()
			c.SetReadDeadline(time.Now().Add(30 * time.Second))
			got, err := io.ReadAll(c)
			if err != nil {
				t.Errorf("conn %d: read: %v", i, err)
				return
			}
			if !bytes.Equal(got, payload) {
				t.Errorf("conn %d: echoed %d bytes that differ from the %d sent", i, len(got), len(payload))
			}
		})
	}
	wg.Wait()
	st := p.Stats()
	if st.Accepted != conns || st.BytesAToB != st.BytesBToA || st.BytesAToB == 0 || st.BytesDropped != 0 {
		t.Errorf("stats %+v: want %d accepted, equal non-zero bytes both ways, none dropped", st, conns)
	}
}

// TestAddedRTT times a one-byte ping-pong: every round trip takes at least
// the RTT.
func TestAddedRTT(t *testing.T) {
	const rtt = 40 * time.Millisecond
	srv := startServer(t, echo)
	p := startProxy(t, srv.addr(), Settings{RTT: rtt})
	c := dial(t, p)
	best := time.Hour
	buf := make([]byte, 1)
	for range 5 {
		start := time.Now()
		if _, err := c.Write([]byte{'x'}); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			t.Fatal(err)
		}
		d := time.Since(start)
		if d < rtt {
			t.Errorf("round trip took %v; want at least the RTT %v", d, rtt)
		}
		best = min(best, d)
	}
	if best > rtt+200*time.Millisecond {
		t.Errorf("fastest round trip took %v; want about the RTT %v", best, rtt)
	}
}

// sendAndCount streams n bytes to a sink through p and returns how long
// until the sink's count came back.
func sendAndCount(t *testing.T, p *Proxy, n int) time.Duration {
	t.Helper()
	c := dial(t, p)
	start := time.Now()
	errc := make(chan error, 1)
	go func() {
		buf := make([]byte, 256<<10)
		for sent := 0; sent < n; {
			m, err := c.Write(buf[:min(len(buf), n-sent)])
			if err != nil {
				errc <- err
				return
			}
			sent += m
		}
		errc <- c.CloseWrite()
	}()
	var count [8]byte
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.ReadFull(c, count[:]); err != nil {
		t.Fatalf("reading the sink's count: %v", err)
	}
	d := time.Since(start)
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if got := binary.BigEndian.Uint64(count[:]); got != uint64(n) {
		t.Fatalf("sink got %d bytes; want %d", got, n)
	}
	return d
}

// TestDelayKeepsThroughput streams 32 MiB one way across a 20 ms RTT. A
// proxy that held each 64 KiB chunk for RTT/2 in turn would need 512 × 10
// ms; a pipe with latency takes little more than the copy itself.
func TestDelayKeepsThroughput(t *testing.T) {
	const rtt = 20 * time.Millisecond
	srv := startServer(t, sink)
	p := startProxy(t, srv.addr(), Settings{RTT: rtt})
	d := sendAndCount(t, p, 32<<20)
	stopAndWait := (32 << 20) / chunkSize * (rtt / 2)
	t.Logf("32 MiB over a %v RTT in %v (stop-and-wait: at least %v)", rtt, d, stopAndWait)
	if d < rtt {
		t.Errorf("took %v; want at least the RTT %v", d, rtt)
	}
	if d > stopAndWait/2 {
		t.Errorf("took %v; delay seems to serialize chunks (stop-and-wait: %v)", d, stopAndWait)
	}
}

// TestBandwidth sends 8 MiB at 8 MiB/s, on one connection and then split
// over two that share the link.
func TestBandwidth(t *testing.T) {
	srv := startServer(t, sink)
	p := startProxy(t, srv.addr(), Settings{Bandwidth: 8 << 20})
	if d := sendAndCount(t, p, 8<<20); d < 900*time.Millisecond {
		t.Errorf("8 MiB at 8 MiB/s took %v; want at least 0.9s", d)
	}
	start := time.Now()
	var wg sync.WaitGroup
	for range 2 {
		wg.Go(func() { sendAndCount(t, p, 4<<20) })
	}
	wg.Wait()
	if d := time.Since(start); d < 900*time.Millisecond {
		t.Errorf("2 × 4 MiB at a shared 8 MiB/s took %v; want at least 0.9s", d)
	}
}

// roundTrip sends msg through an echo and checks it comes back.
func roundTrip(t *testing.T, c net.Conn, msg string) {
	t.Helper()
	if _, err := c.Write([]byte(msg)); err != nil {
		t.Fatalf("write %q: %v", msg, err)
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil || string(got) != msg {
		t.Fatalf("echo of %q: got %q, %v", msg, got, err)
	}
}

// expectSilence checks that nothing arrives on c for a while.
func expectSilence(t *testing.T, c net.Conn, d time.Duration) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(d))
	var b [64]byte
	n, err := c.Read(b[:])
	if n > 0 || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("during the partition read %q, %v; want nothing until the deadline", b[:n], err)
	}
}

// expectBroken checks that c is closed on us (reset or EOF) promptly.
func expectBroken(t *testing.T, c net.Conn) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	var b [64]byte
	n, err := c.Read(b[:])
	if err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("after the heal read %q, %v; want the connection closed", b[:n], err)
	}
}

// TestPartition cuts the link: bytes stop in both directions, new
// connections are accepted but silent. After the heal, connections that
// lost bytes are closed, an idle one carries on, and new ones work.
func TestPartition(t *testing.T) {
	srv := startServer(t, echo)
	p := startProxy(t, srv.addr(), Settings{})
	lossy, idle := dial(t, p), dial(t, p)
	roundTrip(t, lossy, "before")
	roundTrip(t, idle, "before")

	p.Partition(true)
	if _, err := lossy.Write([]byte("lost")); err != nil {
		t.Fatal(err)
	}
	expectSilence(t, lossy, 300*time.Millisecond)
	during := dial(t, p)
	if _, err := during.Write([]byte("lost too")); err != nil {
		t.Fatal(err)
	}
	expectSilence(t, during, 100*time.Millisecond)
	if st := p.Stats(); st.BytesDropped != int64(len("lost")+len("lost too")) || st.Connections != 3 {
		t.Errorf("stats during the partition %+v: want 12 bytes dropped, 3 connections open", st)
	}

	p.Partition(false)
	expectBroken(t, lossy)
	expectBroken(t, during)
	roundTrip(t, idle, "after")
	roundTrip(t, dial(t, p), "fresh")
}

// TestCloseLeavesNoGoroutine closes a proxy with connections in every
// state (streaming, paced, waiting on their delay, partitioned, still
// dialling the target) and checks that Close returns only after every
// goroutine of the proxy has ended.
func TestCloseLeavesNoGoroutine(t *testing.T) {
	before := runtime.NumGoroutine()
	srv := startServer(t, echo)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var dials atomic.Int64
	toTarget := func(ctx context.Context) (net.Conn, error) {
		if dials.Add(1) == 6 {
			// A target that never answers, and a dial that takes a moment
			// to give up: Close must wait for it.
			<-ctx.Done()
			time.Sleep(50 * time.Millisecond)
			return nil, ctx.Err()
		}
		var d net.Dialer
		return d.DialContext(ctx, "tcp", srv.addr())
	}
	p := newProxy(ln, toTarget, Settings{RTT: 50 * time.Millisecond, Bandwidth: 256 << 10}, testLogger(t))
	var clients sync.WaitGroup
	stream := func() {
		c := dial(t, p)
		clients.Go(func() { io.Copy(io.Discard, c) })
		clients.Go(func() {
			// Stream until the proxy resets us.
			buf := make([]byte, 64<<10)
			for {
				if _, err := c.Write(buf); err != nil {
					return
				}
			}
		})
	}
	waitFor := func(what string, cond func(Stats) bool) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); !cond(p.Stats()); time.Sleep(time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("stats %+v: %s did not happen", p.Stats(), what)
			}
		}
	}
	for range 4 {
		stream()
	}
	waitFor("traffic both ways", func(s Stats) bool { return s.BytesAToB > 0 && s.BytesBToA > 0 })
	p.Partition(true)
	stream()
	waitFor("a loss", func(s Stats) bool { return s.BytesDropped > 0 && s.Connections == 5 })
	dial(t, p) // the 6th, whose target never answers
	waitFor("the 6th connection", func(s Stats) bool { return s.Accepted == 6 })

	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if left := proxyGoroutines(); left != "" {
		t.Fatalf("goroutines of the proxy left after Close:\n%s", left)
	}
	if err := p.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	clients.Wait()
	srv.close()
	// Everything else (clients, server, runtime) may take a moment to be
	// reaped.
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > before {
		buf := make([]byte, 1<<20)
		t.Fatalf("%d goroutines left (%d before):\n%s", n, before, buf[:runtime.Stack(buf, true)])
	}
}

// proxyGoroutines returns the stacks of goroutines running the proxy's
// code. Its goroutines are started with WaitGroup.Go, so one that has
// finished but not yet exited shows only WaitGroup frames: the check needs
// no grace period.
func proxyGoroutines() string {
	buf := make([]byte, 1<<20)
	var left []string
	for _, g := range strings.Split(string(buf[:runtime.Stack(buf, true)]), "\n\n") {
		if strings.Contains(g, "netproxy.(*Proxy)") || strings.Contains(g, "netproxy.(*conn)") {
			left = append(left, g)
		}
	}
	return strings.Join(left, "\n\n")
}
