package mediator

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"strconv"
	"sync"
	"time"
)

// Client defaults.
const (
	// DefaultHeartbeat is how often an array heartbeats its mediator.
	DefaultHeartbeat = 5 * time.Second
	// DefaultTimeout bounds each request to the mediator.
	DefaultTimeout = 2 * time.Second
	// electAttempts is how often Elect sends its request before it gives
	// up (each within the caller's context and Timeout).
	electAttempts = 3
)

// The states of a Client (Status.State).
const (
	StateOnline        = "online"
	StateUnreachable   = "unreachable"
	StateRolledBack    = "rolled back"
	StateNotConfigured = "not configured"
)

// Errors of Elect.
var (
	ErrNotConfigured = errors.New("no mediator is configured")
	ErrRolledBack    = errors.New("the mediator was rolled back")
)

// Status is a mediator as an array sees it.
type Status struct {
	// State is StateOnline, StateUnreachable, StateRolledBack or
	// StateNotConfigured.
	State string
	// RTT is the last heartbeat's round trip.
	RTT time.Duration
	// Generation is the last generation the mediator reported.
	Generation uint64
	// Err says why the state is not online.
	Err string
	// Since is when State last changed.
	Since time.Time
	// URL and ID are the mediator's address and id (ID once it answered).
	URL string
	ID  string
}

// ClientConfig is the mediator an array uses.
type ClientConfig struct {
	// URL is the mediator's address, https://HOST[:PORT] (port 9095 by
	// default); empty when no mediator is configured.
	URL string
	// AuthKey is the key the mediator accepts.
	AuthKey string
	// CA is the PEM certificate (or CA) the mediator's certificate must
	// chain to; empty: the system's roots.
	CA []byte
	// Heartbeat is the interval of heartbeats (DefaultHeartbeat if 0).
	Heartbeat time.Duration
	// Timeout bounds each request (DefaultTimeout if 0).
	Timeout time.Duration
}

// ClientOptions are what a Client needs besides its mediator.
type ClientOptions struct {
	// ArrayID is this array's id, sent with every request.
	ArrayID string
	// SeenFile keeps the highest generation seen from each mediator
	// (0600, synced); empty keeps it in memory only (tests).
	SeenFile string
	Logger   *slog.Logger
	// Now is the clock (time.Now when nil).
	Now func() time.Time
	// Transport replaces the HTTPS transport (tests).
	Transport http.RoundTripper
}

// Client is an array's side of the mediator: a heartbeat loop (Run) that
// keeps Status current, and Elect, which races for a pod through the
// mediator. It remembers, durably, the highest generation each mediator
// reported and refuses to race through one that went back below it. It
// is safe for concurrent use; a nil *Client is not configured.
type Client struct {
	opts ClientOptions
	log  *slog.Logger
	now  func() time.Time
	// kick wakes the heartbeat loop after Reconfigure.
	kick chan struct{}
	sync *groupSync
	mu   struct {
		sync.Mutex
		conn    *conn // nil: not configured
		status  Status
		changed chan struct{}
		seen    seenState
		seenVer uint64 // version of seen (for sync)
	}
}

// conn is one configuration of the client, replaced whole.
type conn struct {
	cfg  ClientConfig
	http *http.Client
	tr   *http.Transport // nil with ClientOptions.Transport
}

// NewClient returns a client for the mediator of cfg (none when cfg.URL
// is empty). It loads the memory of generations seen.
func NewClient(opts ClientOptions, cfg ClientConfig) (*Client, error) {
	if err := checkID("array", opts.ArrayID); err != nil {
		return nil, err
	}
	c := &Client{opts: opts, log: opts.Logger, now: opts.Now, kick: make(chan struct{}, 1), sync: newGroupSync(0)}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	if c.now == nil {
		c.now = time.Now
	}
	seen, err := loadSeen(opts.SeenFile)
	if err != nil {
		return nil, err
	}
	cn, err := c.newConn(cfg)
	if err != nil {
		return nil, err
	}
	c.mu.seen, c.mu.changed = seen, make(chan struct{})
	c.mu.conn = cn
	c.mu.status = c.initialStatus(cn)
	return c, nil
}

// CheckConfig checks a mediator configuration without using it.
func CheckConfig(cfg ClientConfig) error {
	_, err := (&Client{}).newConn(cfg)
	return err
}

// newConn checks cfg and makes its HTTP client; nil when cfg names no
// mediator.
func (c *Client) newConn(cfg ClientConfig) (*conn, error) {
	if cfg.URL == "" {
		return nil, nil
	}
	u, err := url.Parse(cfg.URL)
	if err != nil || u.Scheme != "https" || u.Host == "" || u.User != nil || (u.Path != "" && u.Path != "/") || u.RawQuery != "" {
		return nil, fmt.Errorf("mediator URL %q: expected https://HOST[:PORT], e.g. https://10.0.2.5:%d", cfg.URL, DefaultPort)
	}
	if u.Port() == "" {
		u.Host = net.JoinHostPort(u.Hostname(), strconv.Itoa(DefaultPort))
	}
	cfg.URL = "https://" + u.Host
	if err := CheckKey(cfg.AuthKey); err != nil {
		return nil, fmt.Errorf("mediator auth key: %w", err)
	}
	if cfg.Heartbeat < 0 || cfg.Timeout < 0 {
		return nil, fmt.Errorf("mediator heartbeat and timeout must be positive")
	}
	if cfg.Heartbeat == 0 {
		cfg.Heartbeat = DefaultHeartbeat
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = DefaultTimeout
	}
	tlsCfg := &tls.Config{MinVersion: tls.VersionTLS13}
	if len(cfg.CA) > 0 {
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(cfg.CA) {
			return nil, errors.New("mediator CA: no PEM certificate in it")
		}
		tlsCfg.RootCAs = pool
	}
	cn := &conn{cfg: cfg}
	rt := c.opts.Transport
	if rt == nil {
		// Proxy is nil: the mediator is reached directly.
		cn.tr = &http.Transport{TLSClientConfig: tlsCfg, DialContext: (&net.Dialer{Timeout: cfg.Timeout, KeepAlive: 30 * time.Second}).DialContext,
			TLSHandshakeTimeout: cfg.Timeout, MaxConnsPerHost: 16, MaxIdleConnsPerHost: 16, IdleConnTimeout: 90 * time.Second}
		rt = cn.tr
	}
	noRedirect := func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	cn.http = &http.Client{Transport: rt, CheckRedirect: noRedirect}
	return cn, nil
}

func (c *Client) initialStatus(cn *conn) Status {
	if cn == nil {
		return Status{State: StateNotConfigured, Since: c.now()}
	}
	return Status{State: StateUnreachable, Err: "not contacted yet", Since: c.now(), URL: cn.cfg.URL}
}

// Reconfigure makes the client use the mediator of cfg from now on (none
// when cfg.URL is empty), and forgets which mediator it found at that URL
// before: an operator configuring it accepts the mediator found there.
func (c *Client) Reconfigure(cfg ClientConfig) error {
	cn, err := c.newConn(cfg)
	if err != nil {
		return err
	}
	c.mu.Lock()
	old := c.mu.conn
	c.mu.conn = cn
	if cn != nil {
		delete(c.mu.seen.Bound, cn.cfg.URL)
		c.mu.seenVer++
	}
	c.setStatusLocked(c.initialStatus(cn))
	ver := c.mu.seenVer
	c.mu.Unlock()
	if old != nil && old.tr != nil {
		old.tr.CloseIdleConnections()
	}
	select {
	case c.kick <- struct{}{}:
	default:
	}
	return c.sync.wait(context.Background(), ver, c.seenSnapshot, c.writeSeen)
}

// URL returns the configured mediator's URL ("" when none).
func (c *Client) URL() string {
	if c == nil {
		return ""
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.mu.conn == nil {
		return ""
	}
	return c.mu.conn.cfg.URL
}

// Status returns the mediator's status as this array sees it.
func (c *Client) Status() Status {
	if c == nil {
		return Status{State: StateNotConfigured}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.mu.status
}

// Changed returns a channel that is closed when Status().State changes
// (ask again for the next change). A nil client's never closes.
func (c *Client) Changed() <-chan struct{} {
	if c == nil {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.mu.changed
}

// setStatusLocked sets the status (c.mu held), signalling and logging a
// change of state.
func (c *Client) setStatusLocked(st Status) {
	prev := c.mu.status
	st.Since = prev.Since
	if st.State != prev.State || st.URL != prev.URL {
		st.Since = c.now()
	}
	c.mu.status = st
	if st.State == prev.State {
		return
	}
	close(c.mu.changed)
	c.mu.changed = make(chan struct{})
	switch st.State {
	case StateOnline:
		c.log.Info("mediator online", "url", st.URL, "id", st.ID, "generation", st.Generation, "rtt", st.RTT)
	case StateUnreachable:
		c.log.Warn("mediator unreachable", "url", st.URL, "err", st.Err)
	case StateRolledBack:
		c.log.Error("mediator rolled back: "+st.Err, "url", st.URL, "id", st.ID)
	default:
		c.log.Info("mediator not configured")
	}
}

// Run heartbeats the mediator until ctx is done: at once, then every
// heartbeat interval, and at once after Reconfigure.
func (c *Client) Run(ctx context.Context) error {
	for {
		c.Heartbeat(ctx)
		var tick <-chan time.Time
		var t *time.Timer
		c.mu.Lock()
		if cn := c.mu.conn; cn != nil {
			t = time.NewTimer(cn.cfg.Heartbeat)
			tick = t.C
		}
		c.mu.Unlock()
		select {
		case <-ctx.Done():
		case <-tick:
		case <-c.kick:
		}
		if t != nil {
			t.Stop()
		}
		if ctx.Err() != nil {
			return nil
		}
	}
}

// Heartbeat sends one heartbeat and updates the status; it returns the
// status.
func (c *Client) Heartbeat(ctx context.Context) Status {
	c.mu.Lock()
	cn := c.mu.conn
	c.mu.Unlock()
	if cn == nil {
		return c.Status()
	}
	var resp HeartbeatResponse
	floors := c.floors()
	rtt, err := c.post(ctx, cn, PathHeartbeat, HeartbeatRequest{Array: c.opts.ArrayID}, &resp)
	if err == nil && (resp.Mediator == "" || resp.Generation == 0) {
		err = fmt.Errorf("the mediator at %s answered a heartbeat without its id or generation", cn.cfg.URL)
	}
	if err != nil {
		if ctx.Err() != nil {
			return c.Status()
		}
		c.unreachable(cn, err)
		return c.Status()
	}
	_ = c.answered(ctx, cn, resp.Mediator, resp.Generation, resp.ResetGeneration, rtt, floors)
	return c.Status()
}

// unreachable records a failed request to cn.
func (c *Client) unreachable(cn *conn, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.mu.conn != cn {
		return // reconfigured meanwhile
	}
	st := c.mu.status
	st.State, st.Err = StateUnreachable, err.Error()
	c.setStatusLocked(st)
}

// floors returns the generations an answer to a request sent now may not
// go below (seenState.floors).
func (c *Client) floors() map[string]uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.mu.seen.floors()
}

// answered judges an answer of mediator id at generation gen to a request
// sent when the generations seen were floors, makes the memory durable,
// and sets the status; it returns ErrRolledBack (with what to do) when the
// answer must not be used.
func (c *Client) answered(ctx context.Context, cn *conn, id string, gen, reset uint64, rtt time.Duration, floors map[string]uint64) error {
	c.mu.Lock()
	if c.mu.conn != cn {
		c.mu.Unlock()
		return fmt.Errorf("the mediator was reconfigured during the request")
	}
	v := c.mu.seen.judge(cn.cfg.URL, id, gen, reset, floors)
	if v.changed {
		c.mu.seenVer++
	}
	ver := c.mu.seenVer
	c.mu.Unlock()
	werr := c.sync.wait(ctx, ver, c.seenSnapshot, c.writeSeen)
	if werr != nil && ctx.Err() != nil {
		return werr
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.mu.conn != cn {
		return fmt.Errorf("the mediator was reconfigured during the request")
	}
	st := Status{URL: cn.cfg.URL, ID: id, Generation: gen, RTT: rtt}
	switch {
	case !v.ok:
		st.State, st.Err = StateRolledBack, v.msg
	case werr != nil:
		st.State, st.Err = StateUnreachable, fmt.Sprintf("cannot record the mediator's generation in %s: %v", c.opts.SeenFile, werr)
	default:
		st.State = StateOnline
	}
	c.setStatusLocked(st)
	switch {
	case !v.ok:
		return fmt.Errorf("%w: %s", ErrRolledBack, v.msg)
	case werr != nil:
		return fmt.Errorf("record the mediator's generation: %w", werr)
	}
	return nil
}

func (c *Client) seenSnapshot() ([]byte, uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	data, _ := json.Marshal(c.mu.seen)
	return data, c.mu.seenVer
}

func (c *Client) writeSeen(data []byte) error {
	if c.opts.SeenFile == "" {
		return nil
	}
	return WriteFileDurable(c.opts.SeenFile, data)
}

// Elect races for pod at epoch: it asks the mediator to move the pod to
// epoch+1 for this array, retrying (the request is idempotent) within
// ctx. It fails without asking when no mediator is configured, and
// without using the answer when the mediator was rolled back.
func (c *Client) Elect(ctx context.Context, pod string, epoch uint64) (ElectResult, error) {
	if c == nil {
		return ElectResult{}, ErrNotConfigured
	}
	req := ElectRequest{Pod: pod, Epoch: epoch, Array: c.opts.ArrayID}
	if err := req.Validate(); err != nil {
		return ElectResult{}, err
	}
	c.mu.Lock()
	cn, st := c.mu.conn, c.mu.status
	c.mu.Unlock()
	if cn == nil {
		return ElectResult{}, ErrNotConfigured
	}
	if st.State == StateRolledBack {
		// Look again before refusing: an operator may have reset it.
		if st = c.Heartbeat(ctx); st.State == StateRolledBack {
			return ElectResult{}, fmt.Errorf("%w: %s", ErrRolledBack, st.Err)
		}
	}
	var resp ElectResponse
	var err error
	backoff := 50 * time.Millisecond
	for attempt := 1; ; attempt++ {
		var rtt time.Duration
		floors := c.floors()
		rtt, err = c.post(ctx, cn, PathElect, req, &resp)
		if err == nil {
			if err = checkElectAnswer(req, resp); err != nil {
				return ElectResult{}, fmt.Errorf("mediator %s: %w", cn.cfg.URL, err)
			}
			if err = c.answered(ctx, cn, resp.Mediator, resp.Generation, resp.ResetGeneration, rtt, floors); err != nil {
				return ElectResult{}, err
			}
			c.log.Info("elect", "pod", pod, "epoch", epoch, "won", resp.Won, "pod_epoch", resp.Epoch, "winner", resp.Winner)
			return ElectResult{Won: resp.Won, Epoch: resp.Epoch, Winner: resp.Winner}, nil
		}
		var se *StatusError
		if errors.As(err, &se) && se.Code != http.StatusServiceUnavailable {
			if se.Code == http.StatusUnauthorized {
				c.unreachable(cn, err)
			}
			return ElectResult{}, fmt.Errorf("elect pod %s at epoch %d: %w", pod, epoch, err)
		}
		if attempt == electAttempts || ctx.Err() != nil {
			break
		}
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
		case <-t.C:
		}
		t.Stop()
		backoff *= 2
	}
	if ctx.Err() == nil {
		c.unreachable(cn, err)
	}
	return ElectResult{}, fmt.Errorf("elect pod %s at epoch %d: %w", pod, epoch, err)
}

// checkElectAnswer refuses an answer that contradicts the rule: a win
// moves the pod to the request's epoch + 1 for the asking array; a loss
// names another holder of that epoch or a later one.
func checkElectAnswer(req ElectRequest, r ElectResponse) error {
	bad := func() error { return fmt.Errorf("inconsistent answer %+v to %+v", r, req) }
	switch {
	case r.Mediator == "" || r.Generation == 0 || r.Winner == "":
		return bad()
	case r.Won && (r.Epoch != req.Epoch+1 || r.Winner != req.Array):
		return bad()
	case !r.Won && (r.Epoch <= req.Epoch || r.Epoch == req.Epoch+1 && r.Winner == req.Array):
		return bad()
	}
	return nil
}

// StatusError is an error answer of the mediator.
type StatusError struct {
	Code    int
	Message string
}

func (e *StatusError) Error() string { return fmt.Sprintf("%d: %s", e.Code, e.Message) }

// QueryStatus asks the mediator of cfg for its status (GET /v1/status)
// and returns it with the round trip.
func QueryStatus(ctx context.Context, cfg ClientConfig) (StatusResponse, time.Duration, error) {
	var out StatusResponse
	cn, err := (&Client{}).newConn(cfg)
	if err != nil {
		return out, 0, err
	}
	if cn == nil {
		return out, 0, errors.New("no mediator URL given")
	}
	rtt, err := cn.do(ctx, http.MethodGet, PathStatus, nil, &out)
	return out, rtt, err
}

// post sends one request to the mediator of cn (see conn.do).
func (c *Client) post(ctx context.Context, cn *conn, path string, body, out any) (time.Duration, error) {
	return cn.do(ctx, http.MethodPost, path, body, out)
}

// do sends one request to the mediator within the configured timeout and
// decodes the answer into out; it returns the round trip, from the
// request written to the answer's first byte.
func (cn *conn) do(ctx context.Context, method, path string, body, out any) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, cn.cfg.Timeout)
	defer cancel()
	var data []byte
	if body != nil {
		data, _ = json.Marshal(body)
	}
	var wrote, first time.Time
	ctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{
		WroteRequest:         func(httptrace.WroteRequestInfo) { wrote = time.Now() },
		GotFirstResponseByte: func() { first = time.Now() },
	})
	req, err := http.NewRequestWithContext(ctx, method, cn.cfg.URL+path, bytes.NewReader(data))
	if err != nil {
		return 0, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+cn.cfg.AuthKey)
	// Both requests are idempotent: the transport may resend one whose
	// kept-alive connection turned out closed.
	req.Header.Set("Idempotency-Key", path)
	start := time.Now()
	resp, err := cn.http.Do(req)
	if err != nil {
		var uerr x509.UnknownAuthorityError
		var herr x509.HostnameError
		if errors.As(err, &uerr) || errors.As(err, &herr) {
			return 0, fmt.Errorf("mediator %s: its certificate is not trusted: %w (give the mediator's certificate, its mediator.crt: "+
				"metro array setattr --mediator-ca FILE for an array)", cn.cfg.URL, err)
		}
		return 0, fmt.Errorf("cannot reach the mediator at %s: %w", cn.cfg.URL, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, MaxBody))
	if err != nil {
		return 0, fmt.Errorf("mediator %s: reading the answer: %w", cn.cfg.URL, err)
	}
	rtt := time.Since(start)
	if !wrote.IsZero() && first.After(wrote) {
		rtt = first.Sub(wrote)
	}
	if resp.StatusCode != http.StatusOK {
		var e ErrorResponse
		if json.Unmarshal(raw, &e) != nil || e.Error == "" {
			e.Error = http.StatusText(resp.StatusCode)
		}
		if resp.StatusCode == http.StatusUnauthorized {
			e.Error = "the mediator refused this array's auth key: set the right one with `metro array setattr --mediator URL " +
				"--mediator-authkey-file FILE`"
		}
		return rtt, &StatusError{Code: resp.StatusCode, Message: e.Error}
	}
	if err := json.Unmarshal(raw, out); err != nil {
		return rtt, fmt.Errorf("mediator %s: undecodable answer: %w", cn.cfg.URL, err)
	}
	return rtt, nil
}
