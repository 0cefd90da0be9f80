package mediator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Defaults of a mediator's server.
const (
	// DefaultRequestTimeout bounds how long a request waits for the
	// state to be durable (a stalled disk) before it is answered 503.
	DefaultRequestTimeout = 10 * time.Second
	// DefaultMaxArrays bounds the arrays whose last heartbeat the status
	// lists (the oldest is forgotten beyond).
	DefaultMaxArrays = 10000
)

// ServerConfig configures a Server.
type ServerConfig struct {
	// Backend holds the state; the server does not close it.
	Backend Backend
	// Keys are the accepted auth keys: one, or two while rotating.
	Keys   []string
	Logger *slog.Logger
	// Now is the clock (time.Now when nil).
	Now func() time.Time
	// RequestTimeout: DefaultRequestTimeout when 0.
	RequestTimeout time.Duration
	// MaxArrays: DefaultMaxArrays when 0.
	MaxArrays int
	// Fatal is called (once) when the backend cannot make the state
	// durable: the mediator should exit; every request is answered 503
	// meanwhile.
	Fatal func(error)
}

// Server serves the mediator's HTTP API (see the package doc) over a
// Backend. It is an http.Handler; Serve runs it over TLS.
type Server struct {
	b        Backend
	log      *slog.Logger
	now      func() time.Time
	timeout  time.Duration
	maxArray int
	fatal    sync.Once
	onFatal  func(error)
	started  time.Time
	id       string // the mediator's id
	reset    uint64 // the backend's reset generation, fixed while it is open
	keys     atomic.Pointer[keySet]
	refused  refusals
	mu       struct {
		sync.Mutex
		arrays map[string]ArraySeen // by array id
	}
}

// NewServer checks the keys and returns the server.
func NewServer(cfg ServerConfig) (*Server, error) {
	s := &Server{b: cfg.Backend, log: cfg.Logger, now: cfg.Now, timeout: cfg.RequestTimeout, maxArray: cfg.MaxArrays, onFatal: cfg.Fatal}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.now == nil {
		s.now = time.Now
	}
	if s.timeout <= 0 {
		s.timeout = DefaultRequestTimeout
	}
	if s.maxArray <= 0 {
		s.maxArray = DefaultMaxArrays
	}
	if err := s.SetKeys(cfg.Keys); err != nil {
		return nil, err
	}
	info, err := s.b.Info(context.Background())
	if err != nil {
		return nil, err
	}
	s.id, s.reset, s.started = info.ID, info.ResetGeneration, s.now()
	s.mu.arrays = map[string]ArraySeen{}
	return s, nil
}

// SetKeys replaces the accepted auth keys (one, or two while rotating).
func (s *Server) SetKeys(keys []string) error {
	ks, err := newKeySet(keys)
	if err != nil {
		return err
	}
	s.keys.Store(&ks)
	return nil
}

// ServeHTTP authenticates and answers a request.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	defer func() {
		if v := recover(); v != nil {
			s.log.Error("mediator: panic answering a request", "path", r.URL.Path, "remote", r.RemoteAddr, "panic", v)
			writeJSON(w, http.StatusInternalServerError, ErrorResponse{Error: "internal error"})
		}
	}()
	got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok || !(*s.keys.Load()).accepts(got) {
		reason := "wrong auth key"
		if !ok {
			reason = "no auth key (Authorization: Bearer)"
		}
		s.refused.note(s.log, s.now(), r, reason)
		w.Header().Set("WWW-Authenticate", `Bearer realm="metro mediator"`)
		writeJSON(w, http.StatusUnauthorized, ErrorResponse{Error: "missing or wrong auth key: give the array the mediator's key " +
			"(metro array setattr --mediator-authkey-file)"})
		return
	}
	var method string
	var handle func(context.Context, *http.Request, []byte) (any, error)
	switch r.URL.Path {
	case PathHeartbeat:
		method, handle = http.MethodPost, s.heartbeat
	case PathElect:
		method, handle = http.MethodPost, s.elect
	case PathStatus:
		method, handle = http.MethodGet, s.status
	default:
		writeJSON(w, http.StatusNotFound, ErrorResponse{Error: fmt.Sprintf("no such endpoint %s: the mediator serves %s, %s and %s",
			r.URL.Path, PathHeartbeat, PathElect, PathStatus)})
		return
	}
	if r.Method != method {
		w.Header().Set("Allow", method)
		writeJSON(w, http.StatusMethodNotAllowed, ErrorResponse{Error: fmt.Sprintf("%s takes %s, not %s", r.URL.Path, method, r.Method)})
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBody))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			err = fmt.Errorf("%w: request body over %d KiB", ErrInvalid, MaxBody>>10)
		} else {
			err = fmt.Errorf("%w: reading the request body: %v", ErrInvalid, err)
		}
		s.fail(w, r, err)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.timeout)
	defer cancel()
	out, err := handle(ctx, r, body)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) heartbeat(ctx context.Context, r *http.Request, body []byte) (any, error) {
	req, err := ParseHeartbeat(body)
	if err != nil {
		return nil, err
	}
	info, err := s.b.Info(ctx)
	if err != nil {
		return nil, err
	}
	s.seen(req.Array, r.RemoteAddr)
	return HeartbeatResponse{Mediator: info.ID, Generation: info.Generation, ResetGeneration: s.reset}, nil
}

func (s *Server) elect(ctx context.Context, r *http.Request, body []byte) (any, error) {
	req, err := ParseElect(body)
	if err != nil {
		return nil, err
	}
	res, gen, err := s.b.Elect(ctx, req)
	if err != nil {
		return nil, err
	}
	s.log.Info("elect", "pod", req.Pod, "epoch", req.Epoch, "array", req.Array, "won", res.Won,
		"pod_epoch", res.Epoch, "winner", res.Winner, "generation", gen)
	return ElectResponse{Mediator: s.id, Won: res.Won, Epoch: res.Epoch, Winner: res.Winner, Generation: gen, ResetGeneration: s.reset}, nil
}

func (s *Server) status(ctx context.Context, r *http.Request, body []byte) (any, error) {
	info, err := s.b.Info(ctx)
	if err != nil {
		return nil, err
	}
	out := StatusResponse{Mediator: info.ID, Generation: info.Generation, ResetGeneration: info.ResetGeneration,
		Started: s.started.UTC(), Pods: info.Pods, Arrays: []ArraySeen{}}
	s.mu.Lock()
	for _, a := range s.mu.arrays {
		out.Arrays = append(out.Arrays, a)
	}
	s.mu.Unlock()
	slices.SortFunc(out.Arrays, func(a, b ArraySeen) int { return strings.Compare(a.Array, b.Array) })
	return out, nil
}

// seen records an array's heartbeat, forgetting the array heard from
// least recently when there are too many.
func (s *Server) seen(array, remote string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.mu.arrays[array]; !ok && len(s.mu.arrays) >= s.maxArray {
		oldest := ""
		for id, a := range s.mu.arrays {
			if oldest == "" || a.Last.Before(s.mu.arrays[oldest].Last) {
				oldest = id
			}
		}
		delete(s.mu.arrays, oldest)
	}
	s.mu.arrays[array] = ArraySeen{Array: array, Last: s.now().UTC(), Remote: remote}
}

// fail answers a request that failed.
func (s *Server) fail(w http.ResponseWriter, r *http.Request, err error) {
	code, msg := http.StatusServiceUnavailable, err.Error()
	switch {
	case errors.Is(err, ErrInvalid):
		code = http.StatusBadRequest
	case errors.Is(err, ErrFull):
		msg = err.Error() + ": no race for a new pod can be recorded; raise --max-pods and restart the mediator"
		s.log.Error("mediator: refused a new pod", "path", r.URL.Path, "err", err)
	case errors.Is(err, ErrFailed):
		msg = "the mediator cannot make its state durable and is stopping: " + err.Error()
		s.log.Error("mediator: the state cannot be made durable; stopping", "err", err)
		s.fatal.Do(func() {
			if s.onFatal != nil {
				s.onFatal(err)
			}
		})
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		msg = fmt.Sprintf("the mediator could not make its state durable within %v (a slow or stalled disk?)", s.timeout)
		s.log.Warn("mediator: request timed out waiting for the disk", "path", r.URL.Path, "timeout", s.timeout)
	case errors.Is(err, ErrClosed):
		msg = "the mediator is stopping"
	default:
		s.log.Error("mediator: request failed", "path", r.URL.Path, "err", err)
	}
	writeJSON(w, code, ErrorResponse{Error: msg})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

// refusals logs requests refused for their auth key, never the key: at
// most one line a second, which counts the lines left out.
type refusals struct {
	mu struct {
		sync.Mutex
		last    time.Time
		dropped int
	}
}

func (rf *refusals) note(log *slog.Logger, now time.Time, r *http.Request, reason string) {
	rf.mu.Lock()
	if now.Sub(rf.mu.last) < time.Second {
		rf.mu.dropped++
		rf.mu.Unlock()
		return
	}
	dropped := rf.mu.dropped
	rf.mu.last, rf.mu.dropped = now, 0
	rf.mu.Unlock()
	log.Warn("mediator: refused a request: "+reason, "remote", r.RemoteAddr, "path", r.URL.Path, "more_refused_since_last_line", dropped)
}
