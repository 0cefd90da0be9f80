package iscsi

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sort"
	"sync"
	"time"
)

// Server is an iSCSI target: it accepts connections on listeners and runs
// their sessions.
type Server struct {
	cfg  Config
	log  *slog.Logger
	bufs bufferPool
	outs sync.Pool // *outPDU

	// wg counts every connection goroutine of every Serve call.
	wg sync.WaitGroup

	mu struct {
		sync.Mutex
		closed    bool
		listeners map[net.Listener]struct{}
		conns     map[*conn]struct{}
		// sessions holds the logged-in sessions by I_T nexus identity;
		// byTSIH by their target session handle.
		sessions map[sessionKey]*session
		byTSIH   map[uint16]*session
		lastTSIH uint16
	}
}

// sessionKey identifies a session for reinstatement: the same initiator
// name and ISID logging in to the same target replaces it.
type sessionKey struct {
	initiator string
	isid      [6]byte
	target    string
}

// NewServer returns a Server; zero limits in cfg take the package
// defaults.
func NewServer(cfg Config) *Server {
	cfg = cfg.withDefaults()
	s := &Server{cfg: cfg, log: cfg.Logger}
	s.mu.listeners = make(map[net.Listener]struct{})
	s.mu.conns = make(map[*conn]struct{})
	s.mu.sessions = make(map[sessionKey]*session)
	s.mu.byTSIH = make(map[uint16]*session)
	return s
}

// Serve accepts connections on l until ctx is done or Close is called. It
// closes l and returns after every connection goroutine it started has
// exited: ctx.Err() when ctx ended it, ErrServerClosed after Close, or the
// listener's error.
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	s.mu.Lock()
	if s.mu.closed {
		s.mu.Unlock()
		_ = l.Close()
		return ErrServerClosed
	}
	s.mu.listeners[l] = struct{}{}
	s.mu.Unlock()

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(ctx, func() { _ = l.Close() })
	defer stop()

	var conns sync.WaitGroup
	var serveErr error
	var backoff time.Duration
	for {
		nc, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil || s.isClosed() || errors.Is(err, net.ErrClosed) {
				break
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				s.log.Warn("iscsi accept failed; retrying", "err", err, "in", backoff)
				t := time.NewTimer(backoff)
				select {
				case <-t.C:
				case <-ctx.Done():
					t.Stop()
				}
				continue
			}
			serveErr = fmt.Errorf("iscsi: accept on %s: %w", l.Addr(), err)
			break
		}
		backoff = 0
		c := newConn(s, nc)
		if !s.addConn(c) {
			_ = nc.Close()
			break
		}
		conns.Add(1)
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer conns.Done()
			c.serve(ctx)
		}()
	}
	_ = l.Close()
	cancel() // ends this listener's connections
	conns.Wait()

	s.mu.Lock()
	delete(s.mu.listeners, l)
	closed := s.mu.closed
	s.mu.Unlock()
	switch {
	case serveErr != nil:
		return serveErr
	case closed:
		return ErrServerClosed
	}
	return context.Cause(ctx)
}

// Close stops every listener and connection and returns once all
// connection goroutines have exited.
func (s *Server) Close() error {
	s.mu.Lock()
	s.mu.closed = true
	ls := make([]net.Listener, 0, len(s.mu.listeners))
	for l := range s.mu.listeners {
		ls = append(ls, l)
	}
	cs := make([]*conn, 0, len(s.mu.conns))
	for c := range s.mu.conns {
		cs = append(cs, c)
	}
	s.mu.Unlock()
	for _, l := range ls {
		_ = l.Close()
	}
	for _, c := range cs {
		c.close()
	}
	s.wg.Wait()
	return nil
}

func (s *Server) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.mu.closed
}

func (s *Server) addConn(c *conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.mu.closed {
		return false
	}
	s.mu.conns[c] = struct{}{}
	return true
}

func (s *Server) removeConn(c *conn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.mu.conns, c)
}

// Sessions lists the logged-in sessions, ordered by initiator and TSIH.
func (s *Server) Sessions() []SessionInfo {
	s.mu.Lock()
	out := make([]SessionInfo, 0, len(s.mu.sessions))
	for _, ss := range s.mu.sessions {
		out = append(out, ss.info())
	}
	s.mu.Unlock()
	sort.Slice(out, func(i, j int) bool {
		if out[i].InitiatorName != out[j].InitiatorName {
			return out[i].InitiatorName < out[j].InitiatorName
		}
		return out[i].TSIH < out[j].TSIH
	})
	return out
}

// register makes sess the session for its key, assigning its TSIH
// (or keeping the one the initiator gave for a connection
// reinstatement). The session it replaces, if any, is returned for the
// caller to end before the login completes.
func (s *Server) register(sess *session, tsih uint16) (old *session, status loginStatus) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.mu.closed {
		return nil, statusServiceUnavailable
	}
	old = s.mu.sessions[sess.key]
	if tsih != 0 {
		// Joining an existing session: with one connection per session
		// at ErrorRecoveryLevel 0 this is a connection reinstatement,
		// done as a restart of the session under the same TSIH.
		if old == nil || old.tsih != tsih {
			return nil, statusSessionNotFound
		}
		sess.tsih = tsih
	} else {
		sess.tsih = s.allocTSIHLocked()
		if sess.tsih == 0 {
			return nil, statusOutOfResources
		}
	}
	if old != nil {
		delete(s.mu.byTSIH, old.tsih)
	}
	s.mu.sessions[sess.key] = sess
	s.mu.byTSIH[sess.tsih] = sess
	return old, statusSuccess
}

func (s *Server) allocTSIHLocked() uint16 {
	for range 1 << 16 {
		s.mu.lastTSIH++
		if t := s.mu.lastTSIH; t != 0 {
			if _, used := s.mu.byTSIH[t]; !used {
				return t
			}
		}
	}
	return 0
}

// unregister removes sess if it is still the registered session for its
// key.
func (s *Server) unregister(sess *session) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.mu.sessions[sess.key] == sess {
		delete(s.mu.sessions, sess.key)
	}
	if s.mu.byTSIH[sess.tsih] == sess {
		delete(s.mu.byTSIH, sess.tsih)
	}
}

// allSessions returns the registered sessions (for target-wide task
// management).
func (s *Server) allSessions() []*session {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]*session, 0, len(s.mu.sessions))
	for _, ss := range s.mu.sessions {
		out = append(out, ss)
	}
	return out
}

func (s *Server) getOut() *outPDU {
	if p, ok := s.outs.Get().(*outPDU); ok {
		return p
	}
	return new(outPDU)
}

func (s *Server) putOut(p *outPDU) {
	*p = outPDU{}
	s.outs.Put(p)
}

func isidString(isid [6]byte) string { return hex.EncodeToString(isid[:]) }
