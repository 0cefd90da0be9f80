package netproxy

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"
)

// talker is a target that hands each connection to the test as a far
// end, which reports what it reads and writes what the test gives it, so
// each direction can be watched on its own.
type talker struct{ ends chan *farEnd }

type farEnd struct {
	// heard gets each read; it is closed when the connection ends.
	heard chan string
	say   chan string
}

func newTalker() *talker { return &talker{ends: make(chan *farEnd, 4)} }

func (tk *talker) serve(c net.Conn) {
	e := &farEnd{heard: make(chan string, 16), say: make(chan string, 16)}
	tk.ends <- e
	done := make(chan struct{})
	defer close(done)
	go func() {
		for {
			select {
			case msg := <-e.say:
				if _, err := c.Write([]byte(msg)); err != nil {
					return
				}
			case <-done:
				return
			}
		}
	}()
	buf := make([]byte, 64)
	for {
		n, err := c.Read(buf)
		if n > 0 {
			e.heard <- string(buf[:n])
		}
		if err != nil {
			close(e.heard)
			return
		}
	}
}

// dialed writes msg on c, a new connection, and returns its far end once
// that has heard msg.
func (tk *talker) dialed(t *testing.T, c net.Conn, msg string) *farEnd {
	t.Helper()
	write(t, c, msg)
	e := <-tk.ends
	if got := <-e.heard; got != msg {
		t.Fatalf("the target heard %q; want %q", got, msg)
	}
	return e
}

func write(t *testing.T, c net.Conn, msg string) {
	t.Helper()
	if _, err := c.Write([]byte(msg)); err != nil {
		t.Fatalf("write %q: %v", msg, err)
	}
}

// silent checks that nothing arrives on c within a minute of fake time.
func silent(t *testing.T, c net.Conn, what string) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(time.Minute))
	defer c.SetReadDeadline(time.Time{})
	var b [16]byte
	if n, err := c.Read(b[:]); n > 0 || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("%s: read %q, %v; want nothing", what, b[:n], err)
	}
}

func readString(t *testing.T, c net.Conn, n int) string {
	t.Helper()
	b := make([]byte, n)
	if _, err := io.ReadFull(c, b); err != nil {
		t.Fatalf("read: %v", err)
	}
	return string(b)
}

// TestOneWayCut cuts only the connecting side's direction: its bytes are
// lost while the target's still arrive, on open and new connections. The
// heal resets the connections that lost bytes, and only those.
func TestOneWayCut(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tk := newTalker()
		l := newPipeLab(t, Settings{}, tk.serve)
		defer l.stop()
		c := l.dial()
		defer c.Close()
		e := tk.dialed(t, c, "hi")

		l.p.Set(Settings{CutAToB: true})
		write(t, c, "lost")
		e.say <- "still here"
		if got := readString(t, c, len("still here")); got != "still here" {
			t.Fatalf("client read %q through a cut of the other direction", got)
		}
		synctest.Wait()
		select {
		case got := <-e.heard:
			t.Fatalf("target heard %q across the cut", got)
		default:
		}
		if st := l.p.Stats(); st.BytesDropped != 4 || st.BytesBToA != int64(len("still here")) {
			t.Errorf("stats %+v: want 4 bytes dropped and the target's words delivered", st)
		}

		// The other way round: the target's words are lost, the client's
		// arrive. The first connection already has a hole a→b.
		l.p.Set(Settings{CutBToA: true})
		synctest.Wait()
		if _, ok := <-e.heard; ok {
			t.Fatal("the connection that lost bytes a→b was not reset when that direction healed")
		}
		c2 := l.dial()
		defer c2.Close()
		e2 := tk.dialed(t, c2, "new")
		e2.say <- "gone"
		silent(t, c2, "b→a cut")

		l.p.Partition(false) // heals one-way cuts too
		if got := l.p.Settings(); got != (Settings{}) {
			t.Fatalf("after the heal the settings are %+v", got)
		}
		var b [8]byte
		if n, err := c2.Read(b[:]); err == nil {
			t.Fatalf("after the heal read %q; want the connection that lost bytes reset", b[:n])
		}
	})
}

// TestOneWayCutKeepsWholeConnections: a connection that lost nothing
// while one direction was cut carries on after the heal.
func TestOneWayCutKeepsWholeConnections(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := newPipeLab(t, Settings{}, pipeEcho)
		defer l.stop()
		c := l.dial()
		defer c.Close()
		ping(t, c, "before")
		l.p.Set(Settings{CutBToA: true})
		l.p.Partition(false)
		if d := ping(t, c, "after"); d != 0 {
			t.Errorf("round trip %v after a cut that took nothing", d)
		}
	})
}

// TestApply changes several proxies at once, and two changes of one proxy
// in order; a heal through Apply resets what lost bytes.
func TestApply(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l1 := newPipeLab(t, Settings{}, pipeEcho)
		defer l1.stop()
		l2 := newPipeLab(t, Settings{RTT: time.Millisecond}, pipeEcho)
		defer l2.stop()
		c := l1.dial()
		defer c.Close()

		cut := func(s *Settings) { s.Partitioned = true }
		Apply(Change{l1.p, cut}, Change{l2.p, cut},
			Change{l2.p, func(s *Settings) { s.RTT *= 3 }})
		for i, want := range []Settings{{Partitioned: true}, {Partitioned: true, RTT: 3 * time.Millisecond}} {
			if got := []*Proxy{l1.p, l2.p}[i].Settings(); got != want {
				t.Errorf("proxy %d: %+v; want %+v", i+1, got, want)
			}
		}
		write(t, c, "lost")
		silent(t, c, "partitioned by Apply")
		heal := func(s *Settings) { s.Heal() }
		Apply(Change{l2.p, heal}, Change{l1.p, heal})
		var b [8]byte
		if n, err := c.Read(b[:]); err == nil {
			t.Fatalf("after the heal read %q; want the connection reset", b[:n])
		}
		Apply() // nothing to do
	})
}

// TestApplyOneInstant races two observers against proxies that Apply
// cuts and heals together. Each observer reads the two proxies' settings
// in its own order. Each Apply sets both to the next generation while it
// holds both locks, so a later read never sees an older generation than
// an earlier one, whichever proxy each read is of. Changing the proxies
// one after the other fails one of the two observers: the one that reads
// the proxy changed first, then the other, can see the new generation
// and then the old.
func TestApplyOneInstant(t *testing.T) {
	p1 := startProxy(t, "127.0.0.1:1", Settings{})
	p2 := startProxy(t, "127.0.0.1:1", Settings{})
	var stop atomic.Bool
	var wg sync.WaitGroup
	var seen [2]atomic.Int64
	for o, order := range [][2]*Proxy{{p1, p2}, {p2, p1}} {
		wg.Go(func() {
			for !stop.Load() {
				// Generation of the first proxy read, then the second's.
				first, second := order[0].Settings().RTT, order[1].Settings().RTT
				if second < first {
					t.Errorf("observer %d read a proxy at generation %v, then the other at %v: Apply was not one instant", o, first, second)
					return
				}
				seen[o].Add(1)
			}
		})
	}
	const rounds = 20000
	for g := range rounds {
		rtt := time.Duration(g + 1)
		set := func(s *Settings) { s.RTT = rtt; s.Partitioned = g%2 == 0 }
		Apply(Change{p1, set}, Change{p2, set})
	}
	stop.Store(true)
	wg.Wait()
	for o := range seen {
		if n := seen[o].Load(); n < 100 {
			t.Errorf("observer %d made only %d observations: it did not race the changes", o, n)
		}
	}
}
