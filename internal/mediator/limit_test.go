package mediator

import (
	"net"
	"sync/atomic"
	"testing"
	"testing/synctest"
)

// chanListener hands out the connections sent to it.
type chanListener struct {
	conns   chan net.Conn
	accepts atomic.Int32
}

func (l *chanListener) Accept() (net.Conn, error) {
	c, ok := <-l.conns
	if !ok {
		return nil, net.ErrClosed
	}
	l.accepts.Add(1)
	return c, nil
}
func (l *chanListener) Close() error   { return nil }
func (l *chanListener) Addr() net.Addr { return &net.TCPAddr{} }

// TestLimitListener: with n connections open, the next is not accepted
// until one of them closes; closing the listener ends a waiting Accept.
func TestLimitListener(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		inner := &chanListener{conns: make(chan net.Conn, 4)}
		l := newLimitListener(inner, 2)
		var open []net.Conn
		for range 4 {
			c1, c2 := net.Pipe()
			defer c2.Close()
			inner.conns <- c1
		}
		for range 2 {
			c, err := l.Accept()
			if err != nil {
				t.Fatal(err)
			}
			open = append(open, c)
		}
		got := make(chan net.Conn)
		go func() {
			c, _ := l.Accept()
			got <- c
		}()
		synctest.Wait()
		if n := inner.accepts.Load(); n != 2 {
			t.Fatalf("%d connections accepted with a limit of 2", n)
		}
		open[0].Close()
		open[0].Close() // a second close releases nothing more
		third := <-got
		if third == nil || inner.accepts.Load() != 3 {
			t.Fatal("the third connection was not accepted once one closed")
		}
		go func() {
			_, err := l.Accept()
			if err == nil {
				t.Error("Accept after Close succeeded")
			}
			got <- nil
		}()
		synctest.Wait()
		if n := inner.accepts.Load(); n != 3 {
			t.Fatalf("%d connections accepted with 2 open and a limit of 2 (a double close released twice?)", n)
		}
		l.Close()
		<-got
		third.Close()
		open[1].Close()
	})
}
