package link

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"
)

// gate is a handler that holds requests until released.
type gate struct {
	entered atomic.Int32
	running atomic.Int32
	release chan struct{}
}

func newGate() *gate { return &gate{release: make(chan struct{})} }

func (g *gate) handle(ctx context.Context, req Message) (Message, error) {
	g.entered.Add(1)
	g.running.Add(1)
	defer g.running.Add(-1)
	select {
	case <-g.release:
	case <-ctx.Done():
		return Message{}, ctx.Err()
	}
	return Message{Type: req.Type}, nil
}

func TestInFlightLimit(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		a, b := testConfigs(t)
		a.MaxInFlightBytes = 1 << 20
		g := newGate()
		b.Handler = g.handle
		p := pipePair(t, a, b, time.Millisecond)
		var wg sync.WaitGroup
		call := func(size int) {
			wg.Go(func() {
				if _, err := p.sa.Call(context.Background(), Message{Payload: make([]byte, size)}); err != nil {
					t.Errorf("Call: %v", err)
				}
			})
			time.Sleep(10 * time.Millisecond)
		}
		call(600 << 10)
		if n := g.entered.Load(); n != 1 {
			t.Fatalf("%d requests reached the handler, want 1", n)
		}
		call(600 << 10) // does not fit: waits
		call(2 << 20)   // larger than the limit: waits to travel alone
		call(1 << 10)   // would fit, but comes after the waiting ones
		if n := g.entered.Load(); n != 1 {
			t.Fatalf("%d requests reached the handler beyond the limit, want 1", n)
		}
		if n := p.sa.budget.inUse(); n != 600<<10 {
			t.Fatalf("%d bytes in flight", n)
		}
		g.release <- struct{}{} // the first returns; the second goes
		time.Sleep(10 * time.Millisecond)
		if n := g.entered.Load(); n != 2 {
			t.Fatalf("%d requests reached the handler, want 2", n)
		}
		g.release <- struct{}{} // now the large one, alone
		time.Sleep(10 * time.Millisecond)
		if n, in := g.entered.Load(), p.sa.budget.inUse(); n != 3 || in != 2<<20 {
			t.Fatalf("%d requests reached the handler with %d bytes in flight, want 3 with the large one alone", n, in)
		}
		close(g.release)
		wg.Wait()
		if n := p.sa.budget.inUse(); n != 0 {
			t.Fatalf("%d bytes in flight after all calls", n)
		}
	})
}

func TestHandlerConcurrencyBound(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		a, b := testConfigs(t)
		b.MaxConcurrentHandlers = 4
		g := newGate()
		b.Handler = g.handle
		p := pipePair(t, a, b, time.Millisecond)
		var wg sync.WaitGroup
		for range 10 {
			wg.Go(func() {
				if _, err := p.sa.Call(context.Background(), Message{}); err != nil {
					t.Errorf("Call: %v", err)
				}
			})
		}
		time.Sleep(10 * time.Millisecond)
		if n := g.running.Load(); n != 4 {
			t.Fatalf("%d handlers running, want 4", n)
		}
		// Heartbeats still flow while the data reader waits.
		time.Sleep(3 * time.Second)
		if p.sa.Err() != nil || p.sb.Err() != nil {
			t.Fatalf("sessions died while handlers were busy: %v, %v", p.sa.Err(), p.sb.Err())
		}
		close(g.release)
		wg.Wait()
		if n := g.entered.Load(); n != 10 {
			t.Fatalf("%d requests served", n)
		}
	})
}

func TestCallCancel(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		a, b := testConfigs(t)
		a.MaxInFlightBytes = 1 << 10
		g := newGate()
		b.Handler = g.handle
		p := pipePair(t, a, b, time.Millisecond)
		sa := p.sa

		// A cancelled context fails at once.
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if _, err := sa.Call(ctx, Message{}); !errors.Is(err, context.Canceled) {
			t.Fatalf("Call with a cancelled context: %v", err)
		}

		// Cancel a call the handler holds.
		ctx1, cancel1 := context.WithCancel(context.Background())
		errc := make(chan error, 2)
		go func() {
			_, err := sa.Call(ctx1, Message{Payload: make([]byte, 1<<10)})
			errc <- err
		}()
		time.Sleep(10 * time.Millisecond)
		// Cancel one waiting for the in-flight budget.
		ctx2, cancel2 := context.WithTimeout(context.Background(), time.Second)
		defer cancel2()
		go func() {
			_, err := sa.Call(ctx2, Message{Payload: make([]byte, 1<<10)})
			errc <- err
		}()
		synctest.Wait()
		if n := g.entered.Load(); n != 1 {
			t.Fatalf("%d requests reached the handler", n)
		}
		cancel1()
		if err := <-errc; !errors.Is(err, context.Canceled) {
			t.Fatalf("cancelled Call: %v", err)
		}
		// The peer still holds the request, so its bytes stay counted
		// and the second call keeps waiting until its deadline.
		if err := <-errc; !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Call waiting for budget: %v", err)
		}
		if n := sa.budget.inUse(); n != 1<<10 {
			t.Fatalf("%d bytes in flight, want the cancelled request's", n)
		}
		// The late response releases them and is dropped.
		close(g.release)
		synctest.Wait()
		time.Sleep(10 * time.Millisecond)
		if n := sa.budget.inUse(); n != 0 {
			t.Fatalf("%d bytes in flight after the late response", n)
		}
		if _, err := sa.Call(context.Background(), Message{Type: 9}); err != nil || sa.Err() != nil {
			t.Fatalf("session after cancelled calls: %v, %v", err, sa.Err())
		}
	})
}

// TestCallWithdraw cancels a request before the writer took it: it is
// never sent.
func TestCallWithdraw(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		a, b := testConfigs(t)
		g := newGate()
		b.Handler = g.handle
		p := pipePair(t, a, b, time.Millisecond)
		// Stall the data writer: the link delivers nothing for now, and
		// the writer blocks on a large request.
		link := p.net.linkOf(p.sa.data)
		link.toListener.bytesPerSec.Store(1 << 20)
		big := make(chan error, 1)
		go func() {
			_, err := p.sa.Call(context.Background(), Message{Payload: make([]byte, 8<<20)})
			big <- err
		}()
		synctest.Wait()
		ctx, cancel := context.WithCancel(context.Background())
		small := make(chan error, 1)
		go func() {
			_, err := p.sa.Call(ctx, Message{Payload: []byte("never sent")})
			small <- err
		}()
		synctest.Wait()
		cancel()
		if err := <-small; !errors.Is(err, context.Canceled) {
			t.Fatalf("withdrawn Call: %v", err)
		}
		close(g.release)
		if err := <-big; err != nil {
			t.Fatalf("large Call: %v", err)
		}
		synctest.Wait()
		if n := g.entered.Load(); n != 1 {
			t.Fatalf("%d requests reached the handler, want 1 (the withdrawn one was sent)", n)
		}
		if n := p.sa.budget.inUse(); n != 0 {
			t.Fatalf("%d bytes in flight", n)
		}
	})
}

// TestPipelining runs 2000 calls of 4 KiB, 64 at a time, over a link with
// 5 ms each way: serially they would take 2000 round trips (20 s).
func TestPipelining(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		a, b := testConfigs(t)
		const delay = 5 * time.Millisecond
		p := pipePair(t, a, b, delay)
		const calls, depth = 2000, 64
		work := make(chan int, calls)
		for i := range calls {
			work <- i
		}
		close(work)
		start := time.Now()
		var wg sync.WaitGroup
		for range depth {
			wg.Go(func() {
				payload := make([]byte, 4<<10)
				for i := range work {
					resp, err := p.sa.Call(context.Background(), Message{Type: uint16(i), Payload: payload})
					if err != nil || resp.Type != uint16(i) || len(resp.Payload) != len(payload) {
						t.Errorf("call %d: %v", i, err)
						return
					}
				}
			})
		}
		wg.Wait()
		elapsed := time.Since(start)
		serial := calls * 2 * delay
		t.Logf("%d calls, %d in flight, RTT %v: %v (serial %v)", calls, depth, 2*delay, elapsed, serial)
		if elapsed > serial/8 {
			t.Errorf("took %v, more than 1/8 of serial time %v: calls are not pipelined", elapsed, serial)
		}
	})
}

// TestPipeliningTCP is TestPipelining over real loopback TCP and a proxy
// adding 5 ms each way, in real time: a functional check with a generous
// bound, not a benchmark.
func TestPipeliningTCP(t *testing.T) {
	checkLeaks(t)
	a, b := testConfigs(t)
	l := tcpListen(t, b)
	const delay = 5 * time.Millisecond
	proxy := newTCPProxy(t, l.Addr().String(), delay)
	sa, _ := connect(t, a, l, proxy.addr())
	const calls, depth = 2000, 64
	work := make(chan int, calls)
	for i := range calls {
		work <- i
	}
	close(work)
	start := time.Now()
	var wg sync.WaitGroup
	for range depth {
		wg.Go(func() {
			payload := make([]byte, 4<<10)
			for i := range work {
				resp, err := sa.Call(context.Background(), Message{Type: uint16(i), Payload: payload})
				if err != nil || resp.Type != uint16(i) || len(resp.Payload) != len(payload) {
					t.Errorf("call %d: %v", i, err)
					return
				}
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	serial := calls * 2 * delay
	t.Logf("%d calls, %d in flight, RTT %v (heartbeat RTT %v): %v (serial %v)", calls, depth, 2*delay, sa.RTT(), elapsed, serial)
	if elapsed > serial/8 {
		t.Errorf("took %v, more than 1/8 of serial time %v: calls are not pipelined", elapsed, serial)
	}
}

// TestRequestBytesBoundAtReceiver checks that the payload bytes of the
// peer's requests held by a session, from reading them to the end of
// their handlers, stay within its MaxInFlightBytes even when the peer
// does not keep to its own bound: the reader waits. (Before, a peer's
// requests were read as long as handlers were free: 512 of 16 MiB, 8 GiB,
// from a peer whose requests its handlers were slow to serve.)
func TestRequestBytesBoundAtReceiver(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		a, b := testConfigs(t)
		a.MaxInFlightBytes = 1 << 30 // the sender does not hold back
		b.MaxInFlightBytes = 4 << 20
		g := newGate()
		b.Handler = g.handle
		p := pipePair(t, a, b, time.Millisecond)
		var wg sync.WaitGroup
		for range 16 {
			wg.Go(func() {
				if _, err := p.sa.Call(context.Background(), Message{Payload: make([]byte, 1<<20)}); err != nil {
					t.Errorf("Call: %v", err)
				}
			})
		}
		time.Sleep(10 * time.Millisecond)
		if n := g.running.Load(); n != 4 {
			t.Fatalf("%d requests of 1 MiB in handlers at once, want 4 (the receiver's 4 MiB)", n)
		}
		// Heartbeats still flow while the data reader waits.
		time.Sleep(3 * time.Second)
		if p.sa.Err() != nil || p.sb.Err() != nil {
			t.Fatalf("sessions died while the reader waited: %v, %v", p.sa.Err(), p.sb.Err())
		}
		close(g.release)
		wg.Wait()
		if n, in := g.entered.Load(), p.sb.reqBudget.inUse(); n != 16 || in != 0 {
			t.Fatalf("%d requests served, %d bytes still held", n, in)
		}
	})
}
