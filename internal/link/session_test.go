package link

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/metro-storage/metro/internal/pipenet"
)

func TestRoundTrip(t *testing.T) {
	checkLeaks(t)
	a, b := testConfigs(t)
	sa, sb := tcpPair(t, a, b)
	if sa.PeerID() != "array-b" || sb.PeerID() != "array-a" {
		t.Fatalf("peer ids %q, %q", sa.PeerID(), sb.PeerID())
	}
	ctx := context.Background()
	for _, s := range []*Session{sa, sb} { // requests go both ways
		for _, req := range []Message{
			{Type: 7, Epoch: 1<<63 + 5, Payload: []byte("hello")},
			{Type: 0xffff, Epoch: 0, Payload: nil},
			{Type: 1, Epoch: 9, Payload: bytes.Repeat([]byte{0xa5}, MaxPayload)},
		} {
			resp, err := s.Call(ctx, req)
			if err != nil {
				t.Fatalf("Call: %v", err)
			}
			if resp.Type != req.Type || resp.Epoch != req.Epoch || !bytes.Equal(resp.Payload, req.Payload) {
				t.Fatalf("sent type %d epoch %d %d bytes, got type %d epoch %d %d bytes",
					req.Type, req.Epoch, len(req.Payload), resp.Type, resp.Epoch, len(resp.Payload))
			}
		}
	}
	if sa.Err() != nil || sb.Err() != nil {
		t.Fatalf("errors on live sessions: %v, %v", sa.Err(), sb.Err())
	}
}

// TestConcurrentCalls runs many callers on both sides with random payload
// sizes (most small, some up to 1 MiB) under a small in-flight limit, and
// checks every echo.
func TestConcurrentCalls(t *testing.T) {
	checkLeaks(t)
	a, b := testConfigs(t)
	a.MaxInFlightBytes = 4 << 20
	b.MaxInFlightBytes = 4 << 20
	// The handler answers with the payload and the next type.
	next := func(_ context.Context, req Message) (Message, error) {
		return Message{Type: req.Type + 1, Epoch: req.Epoch, Payload: req.Payload}, nil
	}
	a.Handler, b.Handler = next, next
	sa, sb := tcpPair(t, a, b)

	const goroutines, calls = 64, 200
	var wg sync.WaitGroup
	errc := make(chan error, goroutines)
	for g := range goroutines {
		s := sa
		if g%4 == 3 {
			s = sb
		}
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(g), 1))
			for i := range calls {
				size := r.IntN(16 << 10)
				if r.IntN(32) == 0 {
					size = r.IntN(1<<20 + 1)
				}
				p := make([]byte, size)
				fill(p, uint64(g)<<32|uint64(i))
				want := bytes.Clone(p)
				resp, err := s.Call(context.Background(), Message{Type: uint16(i), Epoch: uint64(g), Payload: p})
				if err != nil {
					errc <- fmt.Errorf("goroutine %d call %d: %w", g, i, err)
					return
				}
				if !bytes.Equal(resp.Payload, want) || resp.Type != uint16(i)+1 || resp.Epoch != uint64(g) {
					errc <- fmt.Errorf("goroutine %d call %d: got type %d epoch %d, %d bytes of %d", g, i, resp.Type, resp.Epoch, len(resp.Payload), len(want))
					return
				}
			}
		})
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Error(err)
	}
	for _, s := range []*Session{sa, sb} {
		if n := s.budget.inUse(); n != 0 {
			t.Errorf("%d request bytes still counted in flight", n)
		}
	}
}

func TestRemoteError(t *testing.T) {
	checkLeaks(t)
	a, b := testConfigs(t)
	b.Handler = func(_ context.Context, req Message) (Message, error) {
		return Message{}, fmt.Errorf("volume %d: disk on fire", req.Type)
	}
	a.Handler = nil
	sa, sb := tcpPair(t, a, b)
	_, err := sa.Call(context.Background(), Message{Type: 3})
	var re *RemoteError
	if !errors.As(err, &re) || re.Msg != "volume 3: disk on fire" {
		t.Fatalf("got %v, want RemoteError with the handler's text", err)
	}
	// A side without a handler refuses requests, and the session lives.
	_, err = sb.Call(context.Background(), Message{Type: 4})
	if !errors.As(err, &re) || re.Msg == "" {
		t.Fatalf("request to a side without handler: %v", err)
	}
	if _, err := sa.Call(context.Background(), Message{Type: 5}); !errors.As(err, &re) {
		t.Fatalf("session after remote errors: %v", err)
	}
}

func TestCallTooLarge(t *testing.T) {
	checkLeaks(t)
	a, b := testConfigs(t)
	sa, _ := tcpPair(t, a, b)
	_, err := sa.Call(context.Background(), Message{Payload: make([]byte, MaxPayload+1)})
	if !errors.Is(err, ErrTooLarge) {
		t.Fatalf("got %v, want ErrTooLarge", err)
	}
	if _, err := sa.Call(context.Background(), Message{}); err != nil {
		t.Fatalf("session after a refused call: %v", err)
	}
}

// TestCloseConnection closes one TCP connection of a session under a
// pending Call: both sessions die and the Call fails with ErrClosed.
func TestCloseConnection(t *testing.T) {
	for _, kind := range []connKind{connData, connMeta} {
		t.Run(kind.String(), func(t *testing.T) {
			checkLeaks(t)
			a, b := testConfigs(t)
			entered := make(chan struct{})
			b.Handler = func(ctx context.Context, req Message) (Message, error) {
				close(entered)
				<-ctx.Done() // released when the session dies
				return Message{}, ctx.Err()
			}
			sa, sb := tcpPair(t, a, b)
			errc := make(chan error, 1)
			go func() {
				_, err := sa.Call(context.Background(), Message{Payload: []byte("x")})
				errc <- err
			}()
			<-entered
			c := sa.data
			if kind == connMeta {
				c = sa.meta
			}
			c.raw.Close()
			if err := <-errc; !errors.Is(err, ErrClosed) {
				t.Fatalf("pending Call: %v, want ErrClosed", err)
			}
			<-sa.Done()
			<-sb.Done()
			if !errors.Is(sa.Err(), ErrClosed) || !errors.Is(sb.Err(), ErrClosed) {
				t.Fatalf("errors %v, %v", sa.Err(), sb.Err())
			}
			if _, err := sa.Call(context.Background(), Message{}); !errors.Is(err, ErrClosed) {
				t.Fatalf("Call on a dead session: %v", err)
			}
		})
	}
}

func TestClose(t *testing.T) {
	checkLeaks(t)
	a, b := testConfigs(t)
	released := make(chan struct{})
	entered := make(chan struct{})
	b.Handler = func(ctx context.Context, req Message) (Message, error) {
		close(entered)
		<-ctx.Done()
		close(released)
		return Message{}, nil
	}
	sa, sb := tcpPair(t, a, b)
	errc := make(chan error, 1)
	go func() {
		_, err := sa.Call(context.Background(), Message{Payload: []byte("x")})
		errc <- err
	}()
	<-entered
	sb.Close()
	// Close returned, so the handler has returned too.
	select {
	case <-released:
	default:
		t.Fatal("Close returned before the handler did")
	}
	if sb.Err() != ErrClosed {
		t.Fatalf("closed side: Err %v, want ErrClosed", sb.Err())
	}
	<-sa.Done()
	if err := sa.Err(); !errors.Is(err, ErrClosed) || !errors.Is(err, errPeerClosed) {
		t.Fatalf("peer side: Err %v, want ErrClosed by the peer", err)
	}
	if err := <-errc; !errors.Is(err, ErrClosed) {
		t.Fatalf("pending Call: %v", err)
	}
	if err := sb.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

// TestListenerClose closes a listener holding a session nobody accepted
// and a connection waiting for its partner.
func TestListenerClose(t *testing.T) {
	checkLeaks(t)
	a, b := testConfigs(t)
	l := tcpListen(t, b)
	ctx := context.Background()
	sa, err := Dial(ctx, a, l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer sa.Close()
	// Half a session: only its data connection.
	ca, err := a.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	half, _, err := dialConn(ctx, &ca, l.Addr().String(), connData, [16]byte{1})
	if err != nil {
		t.Fatal(err)
	}
	defer half.raw.Close()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	<-sa.Done() // the session Accept never returned was closed
	if _, err := l.Accept(ctx); err == nil {
		t.Fatal("Accept after Close succeeded")
	}
	// The half connection was closed too.
	_ = half.raw.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, _, err := half.fr.next(); err == nil {
		t.Fatal("half-open connection still open")
	}
}

func TestConfigErrors(t *testing.T) {
	a, b := testConfigs(t)
	a.PeerCert = nil
	if _, err := Dial(context.Background(), a, "127.0.0.1:1"); err == nil {
		t.Fatal("Dial without PeerCert succeeded")
	}
	b.Timeout = time.Second
	b.HeartbeatInterval = time.Second
	l := Listen(b, pipenet.Listen("pipe:7000"))
	defer l.Close()
	if _, err := l.Accept(context.Background()); err == nil {
		t.Fatal("Accept with Timeout <= HeartbeatInterval succeeded")
	}
}

// fill fills p with pseudo-random bytes from seed.
func fill(p []byte, seed uint64) {
	var key [32]byte
	binary.LittleEndian.PutUint64(key[:], seed)
	_, _ = rand.NewChaCha8(key).Read(p)
}
