package mediator

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"
)

// Limits bound what clients may hold of a mediator. Zero fields take the
// defaults of DefaultLimits.
type Limits struct {
	// MaxConns is the most connections open at once; more wait to be
	// accepted.
	MaxConns int
	// ReadHeader bounds the TLS handshake and the request's headers.
	ReadHeader time.Duration
	// Read bounds the whole request (bodies are at most 64 KiB).
	Read time.Duration
	// Write bounds the time from the end of the headers to the end of the
	// answer; it must exceed the request timeout (the wait for the disk).
	Write time.Duration
	// Idle is how long a kept-alive connection may wait between requests;
	// arrays heartbeat every 5 s by default and keep theirs.
	Idle time.Duration
}

// DefaultLimits are the limits of `metro mediator run`.
var DefaultLimits = Limits{MaxConns: 1024, ReadHeader: 5 * time.Second, Read: 10 * time.Second,
	Write: DefaultRequestTimeout + 5*time.Second, Idle: 2 * time.Minute}

// maxHeaderBytes bounds a request's headers.
const maxHeaderBytes = 16 << 10

func (l Limits) withDefaults() Limits {
	set := func(v *time.Duration, d time.Duration) {
		if *v <= 0 {
			*v = d
		}
	}
	if l.MaxConns <= 0 {
		l.MaxConns = DefaultLimits.MaxConns
	}
	set(&l.ReadHeader, DefaultLimits.ReadHeader)
	set(&l.Read, DefaultLimits.Read)
	set(&l.Write, DefaultLimits.Write)
	set(&l.Idle, DefaultLimits.Idle)
	return l
}

// TLSConfig is the mediator's TLS configuration: TLS 1.3 only, HTTP/1.1.
func TLSConfig(cert tls.Certificate) *tls.Config {
	return &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13, NextProtos: []string{"http/1.1"}}
}

// Serve serves h over TLS with cert on ln until ctx is done, then shuts
// down (waiting up to 5 s for requests in progress) and returns nil; it
// returns earlier with the listener's error. It closes ln.
func Serve(ctx context.Context, ln net.Listener, h http.Handler, cert tls.Certificate, lim Limits, log *slog.Logger) error {
	lim = lim.withDefaults()
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	srv := &http.Server{
		Handler:           h,
		TLSConfig:         TLSConfig(cert),
		ReadHeaderTimeout: lim.ReadHeader,
		ReadTimeout:       lim.Read,
		WriteTimeout:      lim.Write,
		IdleTimeout:       lim.Idle,
		MaxHeaderBytes:    maxHeaderBytes,
		// TLS handshake failures (scanners, clients without the CA) are
		// the server's debug noise, not errors.
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	ln = tls.NewListener(newLimitListener(ln, lim.MaxConns), srv.TLSConfig)
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
	}
	shut, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(shut); err != nil {
		_ = srv.Close()
	}
	if err := <-done; !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// limitListener accepts at most n connections open at once.
type limitListener struct {
	net.Listener
	sem       chan struct{}
	done      chan struct{}
	closeOnce sync.Once
}

func newLimitListener(l net.Listener, n int) *limitListener {
	return &limitListener{Listener: l, sem: make(chan struct{}, n), done: make(chan struct{})}
}

func (l *limitListener) Accept() (net.Conn, error) {
	select {
	case l.sem <- struct{}{}:
	case <-l.done:
		return nil, net.ErrClosed
	}
	c, err := l.Listener.Accept()
	if err != nil {
		<-l.sem
		return nil, err
	}
	return &limitConn{Conn: c, release: func() { <-l.sem }}, nil
}

func (l *limitListener) Close() error {
	l.closeOnce.Do(func() { close(l.done) })
	return l.Listener.Close()
}

type limitConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *limitConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}
