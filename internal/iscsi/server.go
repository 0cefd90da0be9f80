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
	"sync/atomic"
	"syscall"
	"time"
)

// Server is an iSCSI target: it accepts connections on listeners and runs
// their sessions.
type Server struct {
	cfg  Config
	log  *slog.Logger
	bufs bufferPool
	outs sync.Pool // *outPDU
	// sizer is the Executor's DataOutSizer, if it has one (cfg.Executor
	// is the guarded wrapper).
	sizer DataOutSizer
	// units is the Executor's LogicalUnits, if it has one (task
	// management scope).
	units LogicalUnits
	// panics counts the panics contained (see recoverPanic).
	panics atomic.Uint64
	// budget bounds the write data held for commands, reads the read
	// data.
	budget, reads budget
	// refused counts connections closed at once by a limit; refusedLog
	// rate-limits the warning about them.
	refused    atomic.Uint64
	refusedLog atomic.Int64

	// wg counts every connection goroutine of every Serve call.
	wg sync.WaitGroup

	mu struct {
		sync.Mutex
		closed    bool
		listeners map[net.Listener]struct{}
		conns     map[*conn]struct{}
		// nconns counts the connections admitted and not yet gone,
		// bySource those from each source address; logins lists those
		// still logging in by source, in the order they came (the
		// conns' loginListed), nlogins counts them all.
		nconns   int
		bySource map[string]int
		logins   map[string][]*conn
		nlogins  int
		// sessions holds the logged-in sessions by I_T nexus identity;
		// byTSIH by their target session handle.
		sessions map[sessionKey]*session
		byTSIH   map[uint16]*session
		lastTSIH uint16
		// loginSeq numbers the connections in the order they came.
		loginSeq uint64
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
	s.sizer, _ = cfg.Executor.(DataOutSizer)
	s.units, _ = cfg.Executor.(LogicalUnits)
	s.cfg.Executor = guardedExecutor{srv: s, inner: cfg.Executor}
	s.budget.init(uint64(cfg.MaxWriteBytes), uint64(cfg.MaxSessionWriteBytes),
		func(ss *session) *sessionBudget { return &ss.wb }, (*session).admitWaiting)
	s.reads.init(uint64(cfg.MaxReadBytes), uint64(cfg.MaxSessionReadBytes),
		func(ss *session) *sessionBudget { return &ss.rb }, (*session).admitReads)
	s.mu.listeners = make(map[net.Listener]struct{})
	s.mu.conns = make(map[*conn]struct{})
	s.mu.bySource = make(map[string]int)
	s.mu.logins = make(map[string][]*conn)
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
			// Out of file descriptors (or a timeout): retry, the
			// connections that end give them back.
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) {
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
		src := sourceAddr(nc.RemoteAddr())
		c, v, victim := s.admitConn(src, func() *conn { return newConn(s, nc, src) })
		if v == admitRefused {
			// Over a limit: closed before anything is allocated for it
			// (counted first, so whoever sees the close sees the count).
			s.noteRefused(src)
			_ = nc.Close()
			continue
		}
		if v == admitClosed {
			_ = nc.Close()
			break
		}
		if victim != nil {
			victim.close()
			s.log.Debug("iscsi login in progress dropped for a new connection: too many logins in progress",
				"evicted", victim.remote, "for", c.remote)
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

// removeConn forgets a connection that ended, releasing what admitConn
// counted for it.
func (s *Server) removeConn(c *conn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.mu.conns, c)
	s.loginDoneLocked(c)
	s.mu.nconns--
	if s.mu.bySource[c.source]--; s.mu.bySource[c.source] <= 0 {
		delete(s.mu.bySource, c.source)
	}
}

// admitVerdict is what admitConn decided.
type admitVerdict int

const (
	admitOK      admitVerdict = iota
	admitRefused              // a limit is reached: close it at once
	admitClosed               // the server is closing
)

// admitConn counts a new connection against the limits on connections
// (in all and per source) and on logins in progress (in all and per
// source); every accepted connection starts logging in.
//
// When the logins in progress are at their limit in all, the oldest login
// in progress of the busiest source (the one with the most) is dropped
// for the new connection, unless the new connection's source has as many:
// hosts at many addresses holding half-done logins cannot keep a host at
// another address from logging in; they only push each other out.
//
// The connection is made (newConn) only once it is admitted.
func (s *Server) admitConn(src string, newConn func() *conn) (c *conn, v admitVerdict, victim *conn) {
	cfg := &s.cfg
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.mu.closed:
		return nil, admitClosed, nil
	case s.mu.nconns >= cfg.MaxConnections,
		s.mu.bySource[src] >= cfg.MaxConnectionsPerSource,
		len(s.mu.logins[src]) >= cfg.MaxLoginsPerSource:
		return nil, admitRefused, nil
	case s.mu.nlogins >= cfg.MaxLogins:
		if victim = s.evictLocked(len(s.mu.logins[src])); victim == nil {
			return nil, admitRefused, nil
		}
	}
	c = newConn()
	s.mu.conns[c] = struct{}{}
	s.mu.nconns++
	s.mu.bySource[src]++
	s.mu.logins[src] = append(s.mu.logins[src], c)
	s.mu.nlogins++
	s.mu.loginSeq++
	c.loginSeq, c.loginListed = s.mu.loginSeq, true
	return c, admitOK, victim
}

// evictLocked takes the oldest login in progress of the busiest source
// out of the logins in progress and returns it, if that source has more
// than mine.
func (s *Server) evictLocked(mine int) *conn {
	var busiest []*conn
	for _, l := range s.mu.logins {
		if len(l) > len(busiest) || len(l) == len(busiest) && len(l) > 0 && l[0].loginSeq < busiest[0].loginSeq {
			busiest = l
		}
	}
	if len(busiest) <= mine {
		return nil
	}
	victim := busiest[0]
	s.loginDoneLocked(victim)
	return victim
}

// loginDone ends a connection's login (successful or not) for the limits
// on logins in progress.
func (s *Server) loginDone(c *conn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.loginDoneLocked(c)
}

func (s *Server) loginDoneLocked(c *conn) {
	if !c.loginListed {
		return
	}
	c.loginListed = false
	s.mu.nlogins--
	l := s.mu.logins[c.source]
	for i, lc := range l {
		if lc == c {
			l = append(l[:i], l[i+1:]...)
			break
		}
	}
	if len(l) == 0 {
		delete(s.mu.logins, c.source)
	} else {
		s.mu.logins[c.source] = l
	}
}

// noteRefused counts a refused connection and warns about refusals at
// most once a second, so that a flood does not flood the log too.
func (s *Server) noteRefused(src string) {
	n := s.refused.Add(1)
	now := time.Now().UnixNano()
	last := s.refusedLog.Load()
	if now-last < int64(time.Second) || !s.refusedLog.CompareAndSwap(last, now) {
		return
	}
	s.log.Warn("iscsi connection refused: a connection or login limit is reached (see the iscsi limits of the array configuration)",
		"source", src, "refused_total", n)
}

// Refused returns how many connections were closed at once because a
// limit on connections or logins in progress was reached.
func (s *Server) Refused() uint64 { return s.refused.Load() }

// sourceAddr is the address a connection comes from, without its port.
func sourceAddr(a net.Addr) string {
	if ta, ok := a.(*net.TCPAddr); ok {
		return ta.IP.String()
	}
	host, _, err := net.SplitHostPort(a.String())
	if err != nil {
		return a.String()
	}
	return host
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
