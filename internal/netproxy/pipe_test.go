package netproxy

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/metro-storage/metro/internal/pipenet"
)

// These tests run the proxy between net.Pipe connections inside a
// synctest bubble, so time is fake: delays and pacing can be checked
// exactly, and synctest.Test fails if any goroutine outlives the test.

func testLogger(t testing.TB) *slog.Logger {
	if os.Getenv("NETPROXY_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// pipeLab is a proxy between two pipe listeners, with a target serving
// every connection with serve.
type pipeLab struct {
	t           *testing.T
	front, back *pipenet.Listener
	p           *Proxy
	wg          sync.WaitGroup
}

func newPipeLab(t *testing.T, s Settings, serve func(net.Conn)) *pipeLab {
	l := &pipeLab{t: t, front: pipenet.Listen("pipe"), back: pipenet.Listen("pipe")}
	l.p = newProxy(l.front, l.back.Dial, s, testLogger(t))
	l.wg.Go(func() {
		for {
			c, err := l.back.Accept()
			if err != nil {
				return
			}
			l.wg.Go(func() {
				defer c.Close()
				serve(c)
			})
		}
	})
	return l
}

func (l *pipeLab) dial() net.Conn {
	c, err := l.front.Dial(context.Background())
	if err != nil {
		l.t.Fatal(err)
	}
	return c
}

// stop closes the proxy and the target and waits for both.
func (l *pipeLab) stop() {
	if err := l.p.Close(); err != nil {
		l.t.Error(err)
	}
	l.back.Close()
	l.wg.Wait()
}

func pipeEcho(c net.Conn) { io.Copy(c, c) }

// ping writes msg and reads the echo, returning how long that took.
func ping(t *testing.T, c net.Conn, msg string) time.Duration {
	t.Helper()
	start := time.Now()
	if _, err := c.Write([]byte(msg)); err != nil {
		t.Fatalf("write %q: %v", msg, err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil || string(got) != msg {
		t.Fatalf("echo of %q: got %q, %v", msg, got, err)
	}
	return time.Since(start)
}

func TestDelayExact(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := newPipeLab(t, Settings{RTT: 100 * time.Millisecond}, pipeEcho)
		defer l.stop()
		c := l.dial()
		defer c.Close()
		for range 3 {
			if d := ping(t, c, "ping"); d != 100*time.Millisecond {
				t.Errorf("round trip %v; want exactly the RTT", d)
			}
		}
	})
}

// TestRTTAppliesLive lowers the RTT while a byte waits out a long delay:
// it goes at once.
func TestRTTAppliesLive(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := newPipeLab(t, Settings{RTT: time.Hour}, pipeEcho)
		defer l.stop()
		c := l.dial()
		defer c.Close()
		go func() {
			time.Sleep(time.Second)
			l.p.Set(Settings{RTT: 10 * time.Millisecond})
		}()
		// Sent at 0, due at 30 min; at 1s the RTT becomes 10ms, so the
		// byte is overdue and goes, and the echo takes 5ms back.
		if d := ping(t, c, "x"); d != time.Second+5*time.Millisecond {
			t.Errorf("round trip %v; want 1.005s", d)
		}
	})
}

// pipeSink reads to EOF and reports the count and when the last byte came.
func pipeSink(got chan<- int64, at chan<- time.Time) func(net.Conn) {
	return func(c net.Conn) {
		n, _ := io.Copy(io.Discard, c)
		at <- time.Now()
		got <- n
	}
}

// send writes n bytes to c in 16 KiB writes and closes it.
func send(c net.Conn, n int) {
	defer c.Close()
	buf := make([]byte, 16<<10)
	for sent := 0; sent < n; sent += len(buf) {
		if _, err := c.Write(buf[:min(len(buf), n-sent)]); err != nil {
			return
		}
	}
}

func TestBandwidthExact(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const rate = 1 << 20
		got, at := make(chan int64, 2), make(chan time.Time, 2)
		l := newPipeLab(t, Settings{Bandwidth: rate}, pipeSink(got, at))
		defer l.stop()

		// One connection: 1 MiB takes 1s less the 10 ms burst.
		start := time.Now()
		go send(l.dial(), rate)
		if n := <-got; n != rate {
			t.Errorf("sink got %d bytes; want %d", n, rate)
		}
		if d := (<-at).Sub(start); d < 980*time.Millisecond || d > time.Second {
			t.Errorf("1 MiB at 1 MiB/s took %v; want 0.99s", d)
		}

		// Two connections share the link: 2 × 512 KiB take as long.
		time.Sleep(time.Second) // let the bucket fill
		start = time.Now()
		go send(l.dial(), rate/2)
		go send(l.dial(), rate/2)
		var last time.Time
		for range 2 {
			if n := <-got; n != rate/2 {
				t.Errorf("sink got %d bytes; want %d", n, rate/2)
			}
			if a := <-at; a.After(last) {
				last = a
			}
		}
		if d := last.Sub(start); d < 980*time.Millisecond || d > time.Second {
			t.Errorf("2 × 512 KiB at a shared 1 MiB/s took %v; want 0.99s", d)
		}

		// Lifting the limit half way lets the rest go at once.
		time.Sleep(time.Second)
		start = time.Now()
		go send(l.dial(), 2*rate)
		time.Sleep(500 * time.Millisecond)
		l.p.Set(Settings{})
		<-got
		if d := (<-at).Sub(start); d != 500*time.Millisecond {
			t.Errorf("2 MiB, limit lifted after 0.5s, took %v; want 0.5s", d)
		}
	})
}

// TestQueueBound holds bytes for a long RTT: the proxy takes about its
// queue limit from the sender and then stops reading, so the sender
// blocks, until the delay is lifted.
func TestQueueBound(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		got, at := make(chan int64, 1), make(chan time.Time, 1)
		l := newPipeLab(t, Settings{RTT: time.Hour}, pipeSink(got, at))
		defer l.stop()
		const limit = 256 << 10
		l.p.maxQueued = limit // before any connection exists
		c := l.dial()
		var sent atomic.Int64
		done := make(chan struct{})
		go func() {
			defer close(done)
			defer c.Close()
			buf := make([]byte, 16<<10)
			for range 64 { // 1 MiB
				n, err := c.Write(buf)
				sent.Add(int64(n))
				if err != nil {
					return
				}
			}
		}()
		synctest.Wait()
		// Queued up to the limit plus one chunk read on the last room, plus
		// the chunk the writer holds.
		if n := sent.Load(); n < limit || n > limit+2*chunkSize {
			t.Errorf("sender got %d bytes out while the link holds everything; want the queue limit %d (+ 2 chunks)", n, limit)
		}
		l.p.Set(Settings{})
		<-done
		if n := <-got; n != 1<<20 {
			t.Errorf("sink got %d bytes; want 1 MiB", n)
		}
		<-at
	})
}

// TestPartitionExact cuts the link while an echo is on its way back: it
// never arrives, nor do bytes sent during the cut. The heal resets that
// connection but not one that lost nothing, and new ones work.
func TestPartitionExact(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const rtt = 200 * time.Millisecond
		l := newPipeLab(t, Settings{RTT: rtt}, pipeEcho)
		defer l.stop()
		lossy, idle := l.dial(), l.dial()
		defer lossy.Close()
		defer idle.Close()

		// The echo reaches the target at 100ms and is due back at 200ms.
		if _, err := lossy.Write([]byte("ping")); err != nil {
			t.Fatal(err)
		}
		time.Sleep(150 * time.Millisecond)
		l.p.Partition(true)
		if _, err := lossy.Write([]byte("more")); err != nil {
			t.Fatal(err)
		}
		during := l.dial()
		defer during.Close()
		if _, err := during.Write([]byte("new")); err != nil {
			t.Fatal(err)
		}
		for _, c := range []net.Conn{lossy, during} {
			c.SetReadDeadline(time.Now().Add(time.Minute))
			var b [16]byte
			if n, err := c.Read(b[:]); n > 0 || !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("during the partition read %q, %v; want nothing", b[:n], err)
			}
			c.SetReadDeadline(time.Time{})
		}
		if st := l.p.Stats(); st.BytesDropped != 4+4+3 || st.BytesAToB != 4 || st.BytesBToA != 0 {
			t.Errorf("stats %+v: want 11 bytes dropped, 4 delivered a→b, none b→a", st)
		}

		l.p.Partition(false)
		for _, c := range []net.Conn{lossy, during} {
			var b [16]byte
			if n, err := c.Read(b[:]); err == nil {
				t.Errorf("after the heal read %q; want the connection closed", b[:n])
			}
		}
		if d := ping(t, idle, "idle"); d != rtt {
			t.Errorf("idle connection after the heal: round trip %v; want %v", d, rtt)
		}
		fresh := l.dial()
		defer fresh.Close()
		if d := ping(t, fresh, "fresh"); d != rtt {
			t.Errorf("fresh connection after the heal: round trip %v; want %v", d, rtt)
		}
		synctest.Wait()
		if st := l.p.Stats(); st.Connections != 2 || st.Accepted != 4 {
			t.Errorf("stats %+v: want 2 connections open of 4 accepted", st)
		}
	})
}

// TestTargetDown: a client whose target cannot be reached is reset, but
// during a partition it is held silent instead, and reset by the heal.
func TestTargetDown(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := newPipeLab(t, Settings{}, pipeEcho)
		defer l.stop()
		l.back.Close() // the target is down

		c := l.dial()
		defer c.Close()
		var b [16]byte
		if n, err := c.Read(b[:]); err == nil {
			t.Fatalf("read %q from a connection to a dead target; want it closed", b[:n])
		}

		l.p.Partition(true)
		held := l.dial()
		defer held.Close()
		if _, err := held.Write([]byte("lost")); err != nil {
			t.Fatal(err)
		}
		held.SetReadDeadline(time.Now().Add(time.Minute))
		if n, err := held.Read(b[:]); n > 0 || !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("during the partition read %q, %v; want nothing", b[:n], err)
		}
		held.SetReadDeadline(time.Time{})
		if st := l.p.Stats(); st.Connections != 1 || st.BytesDropped != 4 {
			t.Errorf("stats %+v: want the held connection open and 4 bytes dropped", st)
		}
		l.p.Partition(false)
		if n, err := held.Read(b[:]); err == nil {
			t.Fatalf("after the heal read %q; want the connection closed", b[:n])
		}
	})
}

// TestPartitionWhilePaced cuts the link while bytes wait for their share
// of a slow link: they are lost, not delivered late.
func TestPartitionWhilePaced(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		got, at := make(chan int64, 1), make(chan time.Time, 1)
		// 1 KiB/s: one 1 KiB piece at 0s, 1s, 2s, 3s.
		l := newPipeLab(t, Settings{Bandwidth: 1 << 10}, pipeSink(got, at))
		defer l.stop()
		c := l.dial()
		defer c.Close()
		if _, err := c.Write(make([]byte, 4<<10)); err != nil {
			t.Fatal(err)
		}
		time.Sleep(1500 * time.Millisecond)
		l.p.Partition(true)
		time.Sleep(time.Minute)
		l.p.Partition(false) // resets the connection
		if n := <-got; n != 2<<10 {
			t.Errorf("sink got %d bytes; want the 2 KiB sent before the cut", n)
		}
		<-at
		if st := l.p.Stats(); st.BytesAToB != 2<<10 || st.BytesDropped != 2<<10 {
			t.Errorf("stats %+v: want 2 KiB delivered and 2 KiB dropped", st)
		}
	})
}
