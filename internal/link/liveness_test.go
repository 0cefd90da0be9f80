package link

import (
	"context"
	"errors"
	"strings"
	"testing"
	"testing/synctest"
	"time"
)

// Tests of heartbeats, death detection and leases run under synctest on
// an in-memory network: time is fake and exact.

func TestSilentPeerTimesOut(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		a, b := testConfigs(t)
		b.Handler = func(ctx context.Context, req Message) (Message, error) {
			<-ctx.Done()
			return Message{}, ctx.Err()
		}
		p := pipePair(t, a, b, time.Millisecond)
		time.Sleep(time.Second) // a while of healthy heartbeats
		if p.sa.Err() != nil || p.sb.Err() != nil {
			t.Fatalf("healthy sessions died: %v, %v", p.sa.Err(), p.sb.Err())
		}
		errc := make(chan error, 1)
		go func() {
			_, err := p.sa.Call(context.Background(), Message{Payload: []byte("x")})
			errc <- err
		}()
		synctest.Wait()
		start := time.Now()
		p.net.blackhole()
		for _, s := range []*Session{p.sa, p.sb} {
			<-s.Done()
			// Silence began at most one delay before the blackhole;
			// the check runs every heartbeat.
			if d := time.Since(start); d < DefaultTimeout-DefaultHeartbeatInterval-2*time.Millisecond || d > DefaultTimeout+DefaultHeartbeatInterval {
				t.Errorf("%s: died %v after the peer went silent (Timeout %v)", s.PeerID(), d, DefaultTimeout)
			}
			if err := s.Err(); !errors.Is(err, ErrTimeout) || !errors.Is(err, ErrClosed) {
				t.Errorf("%s: Err %v, want ErrTimeout and ErrClosed", s.PeerID(), err)
			}
		}
		if err := <-errc; !errors.Is(err, ErrClosed) || !errors.Is(err, ErrTimeout) {
			t.Errorf("pending Call: %v", err)
		}
	})
}

// TestLease checks the lease promise: with the dialer's frames lost on the
// way, the listener gives up on it only once the dialer's lease is over.
func TestLease(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		a, b := testConfigs(t)
		b.Timeout = 3 * time.Second // the lease follows the peer's Timeout
		const delay = 5 * time.Millisecond
		p := pipePair(t, a, b, delay)
		sa, sb := p.sa, p.sb
		if !sa.Lease().IsZero() {
			t.Fatalf("lease %v before any pong", sa.Lease())
		}
		time.Sleep(time.Second + 3*time.Millisecond)
		now := time.Now()
		if d := now.Sub(sa.LastHeard()); d < 0 || d > DefaultHeartbeatInterval {
			t.Errorf("LastHeard %v before now", d)
		}
		// The latest answered ping left at most a heartbeat and a round
		// trip ago.
		if d := sa.Lease().Sub(now); d > b.Timeout || d < b.Timeout-DefaultHeartbeatInterval-2*delay {
			t.Errorf("lease ends %v from now, peer Timeout %v", d, b.Timeout)
		}
		if got, want := sa.PeerLease(), sa.LastHeard().Add(DefaultTimeout); !got.Equal(want) {
			t.Errorf("PeerLease %v, want LastHeard+Timeout %v", got, want)
		}
		if rtt := sa.RTT(); rtt != 2*delay {
			t.Errorf("RTT %v, want %v", rtt, 2*delay)
		}

		// From now on nothing a sends reaches b.
		for _, c := range []*conn{sa.data, sa.meta} {
			p.net.linkOf(c).toListener.blackhole.Store(true)
		}
		cut := time.Now()
		time.Sleep(time.Second)
		lease := sa.Lease()
		if lease.After(cut.Add(b.Timeout)) {
			t.Errorf("lease %v past the cut + peer Timeout", lease.Sub(cut))
		}
		heardA := sb.LastHeard()
		<-sb.Done()
		if now := time.Now(); now.Before(lease) {
			t.Errorf("peer gave up %v before the lease ended", lease.Sub(now))
		}
		if sb.PeerLease().Before(lease) {
			t.Errorf("peer's PeerLease %v before the lease %v", sb.PeerLease(), lease)
		}
		if !sb.LastHeard().Equal(heardA) {
			t.Error("LastHeard moved while nothing arrived")
		}
		<-sa.Done() // b closed the connections
	})
}

// TestInjectedClock checks that the bookkeeping follows Config.Now.
func TestInjectedClock(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		a, b := testConfigs(t)
		offset := 1000 * time.Hour
		a.Now = func() time.Time { return time.Now().Add(offset) }
		p := pipePair(t, a, b, time.Millisecond)
		time.Sleep(500 * time.Millisecond)
		now := time.Now().Add(offset)
		if d := now.Sub(p.sa.LastHeard()); d < 0 || d > DefaultHeartbeatInterval {
			t.Errorf("LastHeard %v from the injected now", d)
		}
		if d := p.sa.Lease().Sub(now); d < DefaultTimeout-DefaultHeartbeatInterval-2*time.Millisecond || d > DefaultTimeout {
			t.Errorf("Lease %v from the injected now", d)
		}
	})
}

// TestBulkDoesNotDelayHeartbeats sends a 16 MiB request over a data link
// throttled to 4 MiB/s (4 s on the wire) with a 1 s Timeout: heartbeats
// run on meta, so the sessions live and the round trip stays short.
func TestBulkDoesNotDelayHeartbeats(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		a, b := testConfigs(t)
		a.Timeout, b.Timeout = time.Second, time.Second
		b.Handler = func(_ context.Context, req Message) (Message, error) {
			return Message{Payload: []byte{byte(len(req.Payload) >> 20)}}, nil
		}
		const delay = time.Millisecond
		p := pipePair(t, a, b, delay)
		link := p.net.linkOf(p.sa.data)
		link.toListener.bytesPerSec.Store(4 << 20)
		link.toDialer.bytesPerSec.Store(4 << 20)
		start := time.Now()
		done := make(chan error, 1)
		go func() {
			resp, err := p.sa.Call(context.Background(), Message{Payload: make([]byte, 16<<20)})
			if err == nil && (len(resp.Payload) != 1 || resp.Payload[0] != 16) {
				err = errors.New("wrong response")
			}
			done <- err
		}()
		maxRTT := time.Duration(0)
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
	wait:
		for {
			select {
			case err := <-done:
				if err != nil {
					t.Fatalf("Call: %v", err)
				}
				break wait
			case <-tick.C:
				maxRTT = max(maxRTT, p.sa.RTT(), p.sb.RTT())
			}
		}
		if d := time.Since(start); d < 4*time.Second {
			t.Fatalf("16 MiB took %v: the throttle did not work", d)
		}
		if p.sa.Err() != nil || p.sb.Err() != nil {
			t.Fatalf("sessions died during the bulk transfer: %v, %v", p.sa.Err(), p.sb.Err())
		}
		if maxRTT > 2*delay {
			t.Errorf("RTT reached %v during the bulk transfer, base %v", maxRTT, 2*delay)
		}
	})
}

// TestHandshakeTimeouts checks that the listener drops a connection that
// does not authenticate within AuthTimeout, and one whose partner does
// not come within HandshakeTimeout.
func TestHandshakeTimeouts(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		a, b := testConfigs(t)
		b.HandshakeTimeout = 5 * time.Second
		b.AuthTimeout = time.Second
		refused := make(chan error, 4)
		b.onRefuse = func(err error) { refused <- err }
		n := newPipeNet(time.Millisecond)
		l := Listen(b, n.ln)
		defer l.Close()

		// A connection that says nothing.
		start := time.Now()
		mute, err := n.dial(context.Background(), "pipe")
		if err != nil {
			t.Fatal(err)
		}
		defer mute.Close()
		err = <-refused
		if d := time.Since(start); d < b.AuthTimeout || d > b.AuthTimeout+10*time.Millisecond {
			t.Errorf("mute connection dropped after %v: %v", d, err)
		}
		if !strings.Contains(err.Error(), "AuthTimeout") {
			t.Errorf("mute connection's refusal does not name the limit: %v", err)
		}

		// Half a session.
		ca, err := a.withDefaults()
		if err != nil {
			t.Fatal(err)
		}
		ca.dial = n.dial
		start = time.Now()
		half, _, err := dialConn(context.Background(), &ca, "pipe", connMeta, [16]byte{7})
		if err != nil {
			t.Fatal(err)
		}
		defer half.raw.Close()
		err = <-refused
		if d := time.Since(start); d < b.HandshakeTimeout-10*time.Millisecond || d > b.HandshakeTimeout+10*time.Millisecond {
			t.Errorf("half session dropped after %v: %v", d, err)
		}
		if _, _, err := half.fr.next(); err == nil {
			t.Error("half session's connection still open")
		}
		n.mu.Lock()
		for _, l := range n.links {
			l.cut()
		}
		n.mu.Unlock()
	})
}

// TestProtocolErrors checks that frames that break the protocol end the
// session of the side that receives them.
func TestProtocolErrors(t *testing.T) {
	for name, f := range map[string]struct {
		frame outFrame
		meta  bool
	}{
		"request on meta":     {outFrame{h: header{kind: kindRequest, id: 1}}, true},
		"response on data":    {outFrame{h: header{kind: kindResponse, id: 1}}, false},
		"unknown response id": {outFrame{h: header{kind: kindResponse, id: 12345}}, true},
		"ping with payload":   {outFrame{h: header{kind: kindPing, id: 1}, payload: []byte("x")}, true},
	} {
		t.Run(name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				a, b := testConfigs(t)
				p := pipePair(t, a, b, time.Millisecond)
				c := p.sa.data
				if f.meta {
					c = p.sa.meta
				}
				c.out.queue(f.frame, false)
				<-p.sb.Done()
				if err := p.sb.Err(); !errors.Is(err, errProtocol) || !errors.Is(err, ErrClosed) {
					t.Fatalf("Err %v, want a protocol error", err)
				}
				<-p.sa.Done()
			})
		})
	}
}
