package pipenet

import (
	"context"
	"errors"
	"io"
	"net"
	"testing"
	"testing/synctest"
)

func TestDialAcceptClose(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := Listen("pipe:1")
		if got := l.Addr().String(); got != "pipe:1" || l.Addr().Network() != "pipe" {
			t.Fatalf("Addr %q on %q", got, l.Addr().Network())
		}
		accepted := make(chan net.Conn, 1)
		go func() {
			c, err := l.Accept()
			if err != nil {
				t.Errorf("Accept: %v", err)
			}
			accepted <- c
		}()
		c, err := l.Dial(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		s := <-accepted
		go func() { _, _ = c.Write([]byte("hello")); c.Close() }()
		got, err := io.ReadAll(s)
		if err != nil || string(got) != "hello" {
			t.Fatalf("read %q, %v", got, err)
		}
		s.Close()

		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if _, err := l.Dial(ctx); !errors.Is(err, context.Canceled) {
			t.Fatalf("Dial with a cancelled context and no Accept: %v", err)
		}
		l.Close()
		l.Close()
		if _, err := l.Accept(); !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Accept after Close: %v", err)
		}
		if _, err := l.Dial(context.Background()); !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Dial after Close: %v", err)
		}
	})
}
