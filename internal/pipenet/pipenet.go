// Package pipenet is an in-memory network for tests: a net.Listener whose
// connections are net.Pipe pairs made by Dial, or connections a test
// builds itself and hands over with Offer. Nothing touches the kernel, so
// it works inside a testing/synctest bubble.
package pipenet

import (
	"context"
	"net"
	"sync"
)

// Listener is a net.Listener fed by Dial and Offer.
type Listener struct {
	addr   Addr
	conns  chan net.Conn
	closed chan struct{}
	once   sync.Once
}

// Listen returns a Listener whose Addr is addr (any text; it names the
// listener in logs and errors).
func Listen(addr string) *Listener {
	return &Listener{addr: Addr(addr), conns: make(chan net.Conn), closed: make(chan struct{})}
}

// Accept waits for a connection from Dial or Offer.
func (l *Listener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

// Close stops Accept, Dial and Offer (idempotent).
func (l *Listener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return nil
}

// Addr returns the listener's address.
func (l *Listener) Addr() net.Addr { return l.addr }

// Dial connects to the listener: it returns one end of a net.Pipe once
// Accept has taken the other.
func (l *Listener) Dial(ctx context.Context) (net.Conn, error) {
	client, server := net.Pipe()
	if err := l.Offer(ctx, server); err != nil {
		client.Close()
		server.Close()
		return nil, err
	}
	return client, nil
}

// Offer hands c to Accept, waiting until it is taken.
func (l *Listener) Offer(ctx context.Context, c net.Conn) error {
	select {
	case l.conns <- c:
		return nil
	case <-l.closed:
		return net.ErrClosed
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Addr is a Listener's address, on the network "pipe".
type Addr string

// Network returns "pipe".
func (Addr) Network() string { return "pipe" }

func (a Addr) String() string { return string(a) }
