package link

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/metro-storage/metro/internal/idlesock"
	"github.com/metro-storage/metro/internal/logtest"
)

// TestSlotEviction checks which unauthenticated connection the slot table
// drops when a limit is reached.
func TestSlotEviction(t *testing.T) {
	mk := func(addr string, heard bool) *slot {
		s := &slot{addr: addr}
		s.heard.Store(heard)
		return s
	}
	t.Run("per address: the oldest silent one, else the oldest", func(t *testing.T) {
		tb := newSlots(10, 3)
		a1, a2, a3 := mk("a", true), mk("a", false), mk("a", false)
		other := mk("b", false)
		for _, s := range []*slot{a1, other, a2, a3} {
			if ev := tb.admit(s); len(ev) != 0 {
				t.Fatalf("evicted %v below the limits", ev)
			}
		}
		if ev := tb.admit(mk("a", false)); len(ev) != 1 || ev[0] != a2 {
			t.Fatalf("evicted %v, want the oldest silent connection of the address", ev)
		}
		a3.heard.Store(true)
		tb.admit(mk("a", true)) // evicts the newest silent one
		if ev := tb.admit(mk("a", false)); len(ev) != 1 || ev[0] != a1 {
			t.Fatalf("evicted %v, want the oldest connection when none is silent", ev)
		}
		if other.gone || tb.byAddr["a"] != 3 || len(tb.list) != 4 {
			t.Fatalf("table after evictions: %d slots, %d of address a, other gone %v", len(tb.list), tb.byAddr["a"], other.gone)
		}
	})
	t.Run("total: from the address holding the most", func(t *testing.T) {
		tb := newSlots(6, 4)
		peer := mk("peer", false)
		tb.admit(peer)
		var as, bs []*slot
		for range 3 {
			as = append(as, mk("a", false))
			tb.admit(as[len(as)-1])
		}
		for range 2 {
			bs = append(bs, mk("b", false))
			tb.admit(bs[len(bs)-1])
		}
		// Full: a has the most.
		if ev := tb.admit(mk("b", false)); len(ev) != 1 || ev[0] != as[0] {
			t.Fatalf("evicted %v, want a's oldest", ev)
		}
		// a and b have 2 and 3... b has the most now.
		if ev := tb.admit(mk("c", false)); len(ev) != 1 || ev[0] != bs[0] {
			t.Fatalf("evicted %v, want b's oldest", ev)
		}
		if peer.gone {
			t.Fatal("the address holding one slot lost it")
		}
	})
	t.Run("total: the oldest silent one when no address holds more than a session", func(t *testing.T) {
		tb := newSlots(5, 4)
		p1, p2 := mk("peer", true), mk("peer", true)
		x1, y1, x2 := mk("x", true), mk("y", false), mk("x", false)
		for _, s := range []*slot{p1, p2, x1, y1, x2} {
			tb.admit(s)
		}
		if ev := tb.admit(mk("z", false)); len(ev) != 1 || ev[0] != y1 {
			t.Fatalf("evicted %v, want the oldest silent connection", ev)
		}
		x2.heard.Store(true)
		tb.admit(mk("w", true)) // evicts the newest silent one, z's
		if ev := tb.admit(mk("v", true)); len(ev) != 1 || ev[0] != p1 {
			t.Fatalf("evicted %v, want the oldest connection when none is silent", ev)
		}
	})
	t.Run("total: the address the peer authenticated from is spared", func(t *testing.T) {
		tb := newSlots(4, 4)
		tb.peer = "peer"
		p1, p2 := mk("peer", false), mk("peer", false)
		for _, s := range []*slot{p1, p2, mk("x", true), mk("y", true)} {
			tb.admit(s)
		}
		for i := range 10 {
			if ev := tb.admit(mk(fmt.Sprintf("z%d", i), true)); len(ev) != 1 || ev[0].addr == "peer" {
				t.Fatalf("admission %d evicted %v, want another address's", i, ev)
			}
		}
		tb = newSlots(2, 2)
		tb.peer = "peer"
		tb.admit(p1)
		tb.admit(p2)
		if ev := tb.admit(mk("x", false)); len(ev) != 1 || ev[0] != p1 {
			t.Fatalf("evicted %v, want the peer's oldest when it holds every slot", ev)
		}
	})
	t.Run("leave once", func(t *testing.T) {
		tb := newSlots(2, 2)
		s := mk("a", false)
		tb.admit(s)
		if !tb.leave(s) || tb.leave(s) || len(tb.list) != 0 || len(tb.byAddr) != 0 {
			t.Fatalf("leave: %d slots, %v", len(tb.list), tb.byAddr)
		}
	})
}

// TestSlotsRandom admits and removes connections from random addresses
// and checks the limits after every step, and that the peer's address,
// holding at most two slots (one session), loses none: before the peer
// first authenticated, only when no other address holds more than a
// session's worth and every other connection has sent something;
// afterwards never, while another address holds a slot.
func TestSlotsRandom(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 8))
	const max, perAddr = 16, 4
	tb := newSlots(max, perAddr)
	var peer []*slot
	var evictions, peerAdmits, peerEvicted, protectedAdmits int
	admit := func(s *slot) {
		before := maps.Clone(tb.byAddr)
		list := slices.Clone(tb.list)
		for _, v := range tb.admit(s) {
			evictions++
			if v.addr != "peer" {
				continue
			}
			peerEvicted++
			if tb.peer == "peer" {
				t.Fatalf("the peer's connection was evicted after the peer authenticated from its address (slots by address %v)", before)
			}
			for a, n := range before {
				if a != "peer" && n > sessionConns {
					t.Fatalf("the peer's connection was evicted while %s held %d slots, the peer %d", a, n, before["peer"])
				}
			}
			// The victim was the oldest silent connection, else the
			// oldest.
			for _, o := range list {
				if o == v {
					break
				}
				if o.addr != "peer" && (!o.heard.Load() || v.heard.Load()) {
					t.Fatalf("the peer's connection (heard %v) was evicted while another address had an older one (heard %v)", v.heard.Load(), o.heard.Load())
				}
			}
			if v.heard.Load() && slices.ContainsFunc(list, func(o *slot) bool { return o.addr != "peer" && !o.heard.Load() }) {
				t.Fatalf("the peer's connection, which had sent its hello, was evicted while another address had a silent one")
			}
		}
	}
	for step := range 20000 {
		if step == 10000 {
			tb.peer = "peer" // the peer authenticated from its address
		}
		peer = slices.DeleteFunc(peer, func(s *slot) bool { return s.gone })
		switch n := r.IntN(10); {
		case n == 0 && len(peer) < 2:
			s := &slot{addr: "peer"}
			s.heard.Store(r.IntN(2) == 0)
			peer = append(peer, s)
			peerAdmits++
			if tb.peer != "" {
				protectedAdmits++
			}
			admit(s)
		case n == 1 && len(peer) > 0:
			tb.leave(peer[0])
		case n == 2 && len(tb.list) > 0:
			tb.leave(tb.list[r.IntN(len(tb.list))])
		default:
			s := &slot{addr: fmt.Sprintf("10.0.0.%d", r.IntN(8))}
			s.heard.Store(r.IntN(3) == 0)
			admit(s)
		}
		counts := map[string]int{}
		for _, s := range tb.list {
			counts[s.addr]++
			if s.gone {
				t.Fatalf("step %d: a slot that left is in the list", step)
			}
		}
		if len(tb.list) > max {
			t.Fatalf("step %d: %d slots, limit %d", step, len(tb.list), max)
		}
		if len(counts) != len(tb.byAddr) {
			t.Fatalf("step %d: counts of %d addresses for %d present", step, len(tb.byAddr), len(counts))
		}
		for a, n := range counts {
			if n > perAddr || tb.byAddr[a] != n {
				t.Fatalf("step %d: address %s holds %d slots (counted %d), limit %d", step, a, n, tb.byAddr[a], perAddr)
			}
		}
	}
	t.Logf("%d evictions, %d peer connections, %d of them evicted", evictions, peerAdmits, peerEvicted)
	if evictions < 1000 || peerAdmits < 100 || protectedAdmits < 50 || peerEvicted < 10 {
		t.Fatalf("only %d evictions and %d peer connections (%d after it authenticated, %d evicted): the test exercised too little",
			evictions, peerAdmits, protectedAdmits, peerEvicted)
	}
}

// TestPeerReconnectsPastHeldSockets is the acceptance test of the
// handshake slots: with 200 idle sockets held against the link port, from
// other loopback addresses than the peer's (renewed as the listener drops
// them) or from the peer's own address, the peer still reconnects within
// 2 s (the bound), with the listener's default limits.
func TestPeerReconnectsPastHeldSockets(t *testing.T) {
	attackers := []string{"127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5", "127.0.0.6", "127.0.0.7", "127.0.0.8", "127.0.0.9"}
	for name, tc := range map[string]struct {
		from  []string
		renew bool
	}{
		"attacker on other addresses":    {attackers, true},
		"attacker on the peer's address": {[]string{"127.0.0.1"}, false},
	} {
		t.Run(name, func(t *testing.T) {
			checkLeaks(t)
			a, l := peerAndListener(t, true)
			addr := l.Addr().String()

			const held = 200
			holder, err := idlesock.Hold(addr, tc.from, held, tc.renew)
			if err != nil {
				t.Fatal(err)
			}
			defer holder.Stop()
			// Every attacker socket has reached the listener and the
			// slots are full.
			deadline := time.Now().Add(30 * time.Second)
			for {
				l.mu.Lock()
				seen := uint64(len(l.mu.slots.list)) + l.mu.evicted
				inUse := len(l.mu.slots.list)
				l.mu.Unlock()
				if seen >= held {
					t.Logf("the listener took in the %d sockets: %d hold a handshake slot", held, inUse)
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("the listener saw %d of the %d attacker sockets", seen, held)
				}
				time.Sleep(5 * time.Millisecond)
			}

			s, attempts, took := redial(t, a, l)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if _, err := s.Call(ctx, Message{Type: 1, Payload: []byte("after")}); err != nil {
				t.Fatalf("call on the new session: %v", err)
			}
			l.mu.Lock()
			inUse, evicted := len(l.mu.slots.list), l.mu.evicted
			l.mu.Unlock()
			t.Logf("the peer reconnected in %v (%d attempt(s)); %d unauthenticated connections hold slots, %d were dropped to make room",
				took, attempts, inUse, evicted)
		})
	}
}

// TestHandlerPanic checks that a handler's panic ends its session only:
// it is counted and logged with its stack, the peer's call fails, and the
// listener goes on accepting sessions.
func TestHandlerPanic(t *testing.T) {
	checkLeaks(t)
	a, b := testConfigs(t)
	logs := &logtest.Buffer{}
	b.Logger = logs.Logger()
	var panics atomic.Int64
	b.Panics = &panics
	b.Handler = func(ctx context.Context, req Message) (Message, error) {
		if req.Type == 13 {
			panic("a bug in the handler")
		}
		return req, nil
	}
	l := tcpListen(t, b)
	sa, sb := connect(t, a, l, l.Addr().String())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := sa.Call(ctx, Message{Type: 1}); err != nil {
		t.Fatalf("call before the panic: %v", err)
	}
	if _, err := sa.Call(ctx, Message{Type: 13}); !errors.Is(err, ErrClosed) {
		t.Fatalf("call whose handler panicked: %v, want the session closed", err)
	}
	<-sb.Done()
	if err := sb.Err(); !errors.Is(err, ErrPanic) {
		t.Fatalf("listener's session ended with %v, want ErrPanic", err)
	}
	if n := panics.Load(); n != 1 {
		t.Fatalf("%d panics counted, want 1", n)
	}
	if out := logs.String(); !containsAll(out, "panic recovered", "a bug in the handler", "goroutine ", "handler of a request of type 13") {
		t.Fatalf("the log does not show the panic with its stack:\n%s", out)
	}
	sa2, _ := connect(t, a, l, l.Addr().String())
	if _, err := sa2.Call(ctx, Message{Type: 1}); err != nil {
		t.Fatalf("call on a new session after the panic: %v", err)
	}
}

func containsAll(s string, subs ...string) bool {
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			return false
		}
	}
	return true
}

// TestPeerReconnectsPastChurningAddresses is the handshake-slot attack
// from many source addresses, each holding one socket at a time and
// reopening it at once when the listener drops it: the table stays full
// and every new socket evicts one. The peer's session opens two
// connections from one address, which a rule taking victims from the
// address holding the most slots would pick (it did: the peer never got
// in within 2 s, in over 200 attempts). Silent sockets are dropped
// before the peer's, which send their TLS hello at once; sockets that
// send a byte too are dropped before the peer's once the peer has
// authenticated from its address.
func TestPeerReconnectsPastChurningAddresses(t *testing.T) {
	for name, tc := range map[string]struct {
		speak, before bool
	}{
		"silent sockets, first session":                     {false, false},
		"sockets that send a byte, after a session dropped": {true, true},
	} {
		t.Run(name, func(t *testing.T) {
			checkLeaks(t)
			a, l := peerAndListener(t, tc.before)
			addr := l.Addr().String()
			opened := churn(t, addr, 200, tc.speak)
			for opened.Load() < 1000 {
				time.Sleep(5 * time.Millisecond)
			}
			_, attempts, took := redial(t, a, l)
			if tc.before && attempts > 1 {
				// Once it has authenticated from its address, the
				// peer's connections are never the ones dropped for
				// other addresses' (nor does the peer hold more
				// than its address's limit).
				t.Errorf("the peer needed %d attempts: its connections were dropped to make room for other addresses'", attempts)
			}
			l.mu.Lock()
			evicted := l.mu.evicted
			l.mu.Unlock()
			t.Logf("the peer reconnected in %v (%d attempt(s)); %d attacker sockets opened, %d dropped to make room",
				took.Round(time.Millisecond), attempts, opened.Load(), evicted)
		})
	}
}

// peerAndListener returns the peer's configuration, dialing from
// 127.0.0.1, and a listener on loopback; with before, the peer had a
// session with it, which dropped.
func peerAndListener(t *testing.T, before bool) (Config, *Listener) {
	t.Helper()
	a, b := testConfigs(t)
	a.dial = func(ctx context.Context, addr string) (net.Conn, error) {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)}}
		return d.DialContext(ctx, "tcp", addr)
	}
	l := tcpListen(t, b)
	if before {
		sa, sb := connect(t, a, l, l.Addr().String())
		sa.Close() // the link drops
		sb.Close()
	}
	return a, l
}

// redial dials from a to l's address until a session is up, failing
// the test unless it is within 2 s (the bound), and returns the
// dialer's end (both are closed at the end of the test), the attempts
// made and the time taken.
func redial(t *testing.T, a Config, l *Listener) (s *Session, attempts int, took time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	start := time.Now()
	for s == nil {
		attempts++
		var err error
		if s, err = Dial(ctx, a, l.Addr().String()); err != nil {
			if ctx.Err() != nil {
				t.Fatalf("the peer did not reconnect within 2s (%d attempts): %v", attempts, err)
			}
			t.Logf("attempt %d: %v", attempts, err)
		}
	}
	took = time.Since(start)
	t.Cleanup(func() { s.Close() })
	sl, err := l.Accept(ctx)
	if err != nil {
		t.Fatalf("Accept: %v", err)
	}
	t.Cleanup(func() { sl.Close() })
	return s, attempts, took
}

// churn opens a socket to addr from each of n loopback addresses other
// than the peer's, sending a byte on each when speak, and reopens each as
// soon as the listener drops it, until the test ends. It returns the
// count of sockets opened.
func churn(t *testing.T, addr string, n int, speak bool) *atomic.Int64 {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() {
		cancel()
		wg.Wait()
	})
	var opened atomic.Int64
	for i := range n {
		from := &net.TCPAddr{IP: net.IPv4(127, 0, byte(1+i/250), byte(1+i%250))}
		wg.Go(func() {
			for ctx.Err() == nil {
				d := net.Dialer{LocalAddr: from}
				c, err := d.DialContext(ctx, "tcp", addr)
				if err != nil {
					continue
				}
				opened.Add(1)
				if speak {
					_, _ = c.Write([]byte{0x16})
				}
				stop := context.AfterFunc(ctx, func() { c.Close() })
				_, _ = c.Read(make([]byte, 1)) // until the listener drops it
				stop()
				c.Close()
			}
		})
	}
	return &opened
}
