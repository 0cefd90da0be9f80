// Package replication makes stretched pods work: it keeps the link to the
// peer array, runs one goroutine per stretched pod that drives the pod's
// state machine (package pod), mirrors the sequencer's writes to the
// follower, forwards the follower's ordered commands to the sequencer,
// copies the baseline, and orders configuration changes.
//
// # Writes
//
// Through the sequencer, a host write takes the SCSI range lock, sends
// msgWrite to the follower, writes the local copy while the message
// travels, and completes once the follower acknowledged: both copies
// hold it, and the range lock (which reads through the sequencer also
// take) has kept every overlapping command out meanwhile.
//
// Through the follower, an ordered command travels to the sequencer
// (msgForward) and runs there as if a host had sent it; its writes come
// back as msgWrite referring to the forwarded data, which the follower
// still holds. A plain WRITE completes at the follower in one round trip:
// as soon as its own copy holds the data the sequencer says so
// (msgWritten), and the follower answers GOOD once it has also applied
// the msgWrite, without waiting for the forward's answer, which would
// follow the follower's acknowledgement. Every other command waits for
// that answer.
//
// The pod's protocol (who serves, at which epoch, under which lease,
// the race through the mediator, pre-election, copies, handover and
// removal) is package pod's machine; this package performs its actions
// (persist, elect, send, copy, mirror) and feeds it events. When the
// link fails both arrays pause the pod and the machine decides which one
// keeps it; what the other may lack is tracked for the resync.
//
// # The peer
//
// The peer is trusted with the pods the pair shares and nothing else:
// every request from it is checked before it is used (confine.go lists
// the rules), and one that fails a check changes nothing here; the peer
// gets the error and both arrays log it.
package replication

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/metro-storage/metro/internal/catalog"
	"github.com/metro-storage/metro/internal/link"
	"github.com/metro-storage/metro/internal/pod"
	"github.com/metro-storage/metro/internal/scsi"
	"github.com/metro-storage/metro/internal/store"
)

// Env is what the array gives the replicator.
type Env interface {
	Catalog() *catalog.Catalog
	Store() *store.Store
	Target() *scsi.Target
	// LU returns the logical unit of the live volume with the UUID, or nil.
	LU(uuid string) *scsi.LogicalUnit
}

// Peer is the paired array.
type Peer struct {
	Name string `json:"name"`
	ID   string `json:"id"`
	// LinkAddress is where the peer's link listens (as advertised).
	LinkAddress string `json:"link_address"`
	// Cert is the DER of the peer's link certificate.
	Cert []byte `json:"cert"`
	// API is the peer's management API URL.
	API string `json:"api"`
}

// Config configures a Replicator.
type Config struct {
	Name string
	ID   string
	Env  Env
	// Link holds this array's link certificate and the link listener's
	// limits (Cert, AuthTimeout, MaxHandshakes, MaxHandshakesPerAddress);
	// the replicator sets the rest.
	Link   link.Config
	Logger *slog.Logger
	Now    func() time.Time
	// Timeout is the link's dead-peer timeout (default 1s). It bounds a
	// lost peer's read lease, so that a winner serves alone at most
	// Timeout after the peer was last heard from, and how long a
	// mirrored write or reservation change waits for the peer; a
	// command forwarded to the sequencer waits ten times as long.
	Timeout time.Duration
	// HeadStart is how long an array that is not a pod's failover
	// preference waits before it races for the pod (default 1s).
	HeadStart time.Duration
	// Mediator is the mediator client (nil: none configured, and every
	// pod is pre-elected: its preference, else its sequencer).
	Mediator Mediator
	// Heartbeat is the link's heartbeat interval (default 100ms).
	Heartbeat time.Duration
	// BaselineRate limits baseline copy bytes per second (0: unlimited).
	BaselineRate int64
	// PortOf returns the relative target port id of an array's iSCSI
	// port: a command the peer forwards must come from the peer's. Nil
	// skips that check.
	PortOf func(arrayID string) uint16
}

// Replicator is an array's replication engine.
type Replicator struct {
	cfg Config
	env Env
	log *slog.Logger
	now func() time.Time

	nextRef atomic.Uint64
	// refs holds the commands forwarded to the sequencer, by request id,
	// for the writes that refer to their data-out.
	refs sync.Map // uint64 → *forwarded
	// answers holds the peer's forwarded commands whose outcome is
	// remembered until it confirms their answer, by its request id.
	answers sync.Map // uint64 → *sentAnswer

	// traffic counts bytes sent over the link, by kind.
	traffic struct {
		baseline, mirror, forward atomic.Int64
	}

	// panics counts the panics recovered in link sessions (handlers
	// included).
	panics atomic.Int64
	// persistHook, when set (tests), is called before a pod's record is
	// written, and fails the write with its error.
	persistHook func(pod string, rec pod.Record) error
	// applyHook, when set (tests), is called by a mirrored write or
	// copied piece of the peer once it is checked, just before it is
	// applied.
	applyHook func(m *writeMsg)
	// peerView is mu.peer, for lock-free reads.
	peerView atomic.Pointer[Peer]

	mu struct {
		sync.Mutex
		peer *Peer
		sess *link.Session
		// pods are the runtimes of stretched pods, by name.
		pods map[string]*podRT
		// peerMed is the peer's view of the mediator on sess, once it
		// said (peerMedKnown).
		peerMed, peerMedKnown bool
		// peerMedStatus is the peer's whole view, for display.
		peerMedStatus MediatorStatus
		// stopped is set when Run ends: no pod runtime starts after it
		// (nothing would stop it).
		stopped bool
	}
	// podsView is a copy of mu.pods for lock-free lookups.
	podsView atomic.Pointer[map[string]*podRT]
	// running is set while Run keeps the pods' runtimes in line with the
	// configuration: from its first syncPods until it stops them. Outside
	// it a stretched pod has no runtime, and its volumes are not served
	// (Volume.rt).
	running atomic.Bool
	// vols indexes the volumes by UUID.
	vols atomic.Pointer[map[string]volRef]
	// volsChanged is closed (and replaced) whenever vols is.
	volsChanged atomic.Pointer[chan struct{}]
	// kick wakes the session loop (peer changed).
	kick chan struct{}
	wg   sync.WaitGroup
	ctx  context.Context
}

// New returns a Replicator; Run starts it.
func New(cfg Config) *Replicator {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.HeadStart == 0 {
		cfg.HeadStart = DefaultHeadStart
	}
	if cfg.Heartbeat == 0 {
		cfg.Heartbeat = 100 * time.Millisecond
	}
	r := &Replicator{cfg: cfg, env: cfg.Env, log: cfg.Logger, now: cfg.Now, kick: make(chan struct{}, 1)}
	changed := make(chan struct{})
	r.volsChanged.Store(&changed)
	r.mu.pods = map[string]*podRT{}
	return r
}

// Defaults of Config (see the timing arithmetic in package pod).
const (
	DefaultTimeout   = time.Second
	DefaultHeadStart = time.Second
)

// Errors.
var (
	// ErrNoPeer: the array is not paired.
	ErrNoPeer = errors.New("this array is not connected to a peer array: run 'metro array connect' first")
	// ErrLinkDown: the link to the peer is down.
	ErrLinkDown = errors.New("the link to the peer array is down")
)

// SetPeer sets (or with nil clears) the paired array.
func (r *Replicator) SetPeer(p *Peer) {
	r.mu.Lock()
	r.mu.peer = p
	r.peerView.Store(p)
	s := r.mu.sess
	r.mu.Unlock()
	if s != nil {
		s.Close()
	}
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// PeerInfo returns the paired array, its link state and round trip.
func (r *Replicator) PeerInfo() (p *Peer, up bool, rtt time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.mu.sess != nil {
		return r.mu.peer, true, r.mu.sess.RTT()
	}
	return r.mu.peer, false, 0
}

// session returns the live session, or nil.
func (r *Replicator) session() *link.Session {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.mu.sess
}

func (r *Replicator) linkConfig(p *Peer) link.Config {
	c := r.cfg.Link
	c.LocalID = r.cfg.ID
	c.PeerID = p.ID
	c.PeerCert = p.Cert
	c.Handler = r.handle
	c.Timeout = r.cfg.Timeout
	c.HeartbeatInterval = r.cfg.Heartbeat
	c.Logger = r.log.With("component", "link")
	c.Now = r.now
	c.Panics = &r.panics
	return c
}

// Panics returns how many panics were recovered in link sessions since the
// array started (each ended its session; the pods went through link
// loss).
func (r *Replicator) Panics() int64 { return r.panics.Load() }

// Run keeps the link to the peer (the array with the smaller id dials,
// the other accepts on ln) and the pods' goroutines until ctx ends.
func (r *Replicator) Run(ctx context.Context, ln net.Listener) error {
	r.ctx = ctx
	r.env.Catalog().Watch(func(st *catalog.State) {
		r.indexVolumes(st)
		r.syncPods()
	})
	r.syncPods()
	r.running.Store(true)
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		r.watchMediator(ctx)
	}()
	var lis *link.Listener
	var lisPeer *Peer
	defer func() {
		if lis != nil {
			lis.Close()
		} else if ln != nil {
			ln.Close()
		}
		// The pods' volumes stop being served before their runtimes go.
		r.running.Store(false)
		r.mu.Lock()
		pods := r.mu.pods
		r.mu.pods = map[string]*podRT{}
		r.mu.stopped = true
		r.publishPods()
		s := r.mu.sess
		r.mu.Unlock()
		if s != nil {
			s.Close()
		}
		for _, p := range pods {
			p.stop()
		}
		r.wg.Wait()
	}()
	accepted := make(chan *link.Session)
	for {
		r.mu.Lock()
		peer := r.mu.peer
		r.mu.Unlock()
		var sess *link.Session
		if peer != nil && r.cfg.ID < peer.ID {
			if lis != nil {
				lis.Close()
				lis = nil
			}
			dctx, cancel := context.WithTimeout(ctx, r.cfg.Timeout)
			s, err := link.Dial(dctx, r.linkConfig(peer), peer.LinkAddress)
			cancel()
			if err != nil {
				r.log.Debug("link dial", "peer", peer.Name, "err", err)
				var ve *link.VersionError
				if errors.As(err, &ve) {
					r.log.Error("link refused", "peer", peer.Name, "err", err)
				}
			} else {
				sess = s
			}
		} else if peer != nil && ln != nil && lisPeer != peer {
			if lis != nil {
				// The link.Listener closed the previous socket: listen
				// again on the same address for the new peer.
				lis.Close()
				nl, err := net.Listen("tcp", ln.Addr().String())
				if err != nil {
					return fmt.Errorf("link listen: %w", err)
				}
				ln = nl
			}
			lis = link.Listen(r.linkConfig(peer), ln)
			lisPeer = peer
			l := lis
			r.wg.Add(1)
			go func() {
				defer r.wg.Done()
				for {
					s, err := l.Accept(ctx)
					if err != nil {
						return
					}
					select {
					case accepted <- s:
					case <-ctx.Done():
						s.Close()
						return
					}
				}
			}()
		}
		if sess == nil {
			select {
			case <-ctx.Done():
				return nil
			case <-r.kick:
				continue
			case s := <-accepted:
				sess = s
			case <-time.After(500 * time.Millisecond):
				continue
			}
		}
		r.sessionUp(sess)
		select {
		case <-sess.Done():
		case <-ctx.Done():
		}
		// The pods learn first: Close waits for the session's handlers,
		// and a handler may be a write waiting for its pod to fence the
		// peer.
		r.sessionDown(sess)
		sess.Close()
		if ctx.Err() != nil {
			return nil
		}
	}
}

func (r *Replicator) sessionUp(s *link.Session) {
	r.mu.Lock()
	r.mu.sess = s
	r.mu.peerMedKnown = false
	pods := r.podList()
	r.mu.Unlock()
	r.log.Info("link up", "peer", s.PeerID())
	r.hello(s)
	r.sendStatus(s)
	for _, p := range pods {
		p.linkUp(s)
	}
}

// sendStatus tells the peer this array's view of the mediator.
func (r *Replicator) sendStatus(s *link.Session) {
	st := r.mediatorStatus()
	msg := statusMsg{Mediator: st.State == MediatorOnline, State: st.State, RTTMicros: st.RTT.Microseconds(),
		Generation: st.Generation, Err: st.Err}
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		if err := callJSON(context.Background(), s, msgStatus, 0, msg, nil); err != nil {
			r.log.Debug("tell the peer the mediator's status", "err", err)
		}
	}()
}

// PeerMediator returns the peer array's view of its mediator, as it last
// said over the link (on every change of state, and every
// statusInterval for the round trip); false while the link is down or
// before the peer said.
func (r *Replicator) PeerMediator() (MediatorStatus, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.mu.sess == nil || !r.mu.peerMedKnown {
		return MediatorStatus{}, false
	}
	return r.mu.peerMedStatus, true
}

// peerMediatorStatus is the view a statusMsg tells.
func peerMediatorStatus(m statusMsg) MediatorStatus {
	st := MediatorStatus{State: m.State, RTT: time.Duration(m.RTTMicros) * time.Microsecond, Generation: m.Generation, Err: m.Err}
	if st.State == "" { // a peer that tells only whether it reaches it
		st.State = MediatorUnreachable
		if m.Mediator {
			st.State = MediatorOnline
		}
	}
	return st
}

// peerMediator returns the peer's view of the mediator on session s, if
// it said.
func (r *Replicator) peerMediator(s *link.Session) (up, ok bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.mu.sess != s || !r.mu.peerMedKnown {
		return false, false
	}
	return r.mu.peerMed, true
}

func (r *Replicator) sessionDown(s *link.Session) {
	r.mu.Lock()
	if r.mu.sess == s {
		r.mu.sess = nil
		r.mu.peerMedKnown = false
	}
	pods := r.podList()
	r.mu.Unlock()
	r.log.Warn("link down", "peer", s.PeerID(), "err", s.Err())
	for _, p := range pods {
		p.linkDown(s)
	}
}

// podList returns the pod runtimes. r.mu must be held.
func (r *Replicator) podList() []*podRT {
	out := make([]*podRT, 0, len(r.mu.pods))
	for _, p := range r.mu.pods {
		out = append(out, p)
	}
	return out
}

// pod returns the runtime of a stretched pod, or nil. It takes no lock:
// every I/O asks.
func (r *Replicator) pod(name string) *podRT {
	if m := r.podsView.Load(); m != nil {
		return (*m)[name]
	}
	return nil
}

// stretchedHere reports whether this array holds a copy of the pod that
// it serves stretched (a copy given up, pending eradication, is not).
func stretchedHere(cp *catalog.Pod) bool {
	return cp != nil && len(cp.Arrays) >= 2 && cp.Pending == nil
}

// idleStretched reports whether the pod is stretched while Run does not
// keep its runtime (before Run starts it, after Run stopped it): its
// volumes are not served then. Only volumes of pods without a runtime
// ask, so the configuration is read only for them.
func (r *Replicator) idleStretched(podName string) bool {
	return !r.running.Load() && stretchedHere(r.env.Catalog().View().Pods[podName])
}

// publishPods makes the current runtimes visible to pod. r.mu must be
// held.
func (r *Replicator) publishPods() {
	m := make(map[string]*podRT, len(r.mu.pods))
	for k, v := range r.mu.pods {
		m[k] = v
	}
	r.podsView.Store(&m)
}

// syncPods starts a runtime for every stretched pod this array holds,
// stops those of pods no longer stretched, and feeds the others their
// configuration.
func (r *Replicator) syncPods() {
	if r.ctx == nil {
		return
	}
	st := r.env.Catalog().View()
	r.mu.Lock()
	if r.mu.stopped {
		r.mu.Unlock()
		return
	}
	sess := r.mu.sess
	var started, stopped, kept []*podRT
	for name, p := range r.mu.pods {
		cp := st.Pods[name]
		if !stretchedHere(cp) || cp.ID != p.id {
			delete(r.mu.pods, name)
			stopped = append(stopped, p)
		} else {
			kept = append(kept, p)
		}
	}
	for name, cp := range st.Pods {
		if !stretchedHere(cp) {
			continue
		}
		if _, ok := r.mu.pods[name]; ok {
			continue
		}
		p := newPodRT(r, cp, r.recordOf(cp))
		r.mu.pods[name] = p
		started = append(started, p)
	}
	r.publishPods()
	r.mu.Unlock()
	// syncPods runs inside catalog changes: stopping must not wait here
	// for a pod goroutine that may itself be applying one.
	for _, p := range stopped {
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			p.stop()
		}()
	}
	for _, p := range started {
		p.start(sess)
	}
	for _, p := range kept {
		if cp := st.Pods[p.name]; cp != nil {
			p.configChanged(cp)
		}
	}
}

// preferenceOf returns the id of the pod's preferred array for failover
// ("" none).
func (r *Replicator) preferenceOf(cp *catalog.Pod) string {
	if name := cp.FailoverPreference; name != "" {
		if id := r.arrayID(cp, name); id != "" && hasArray(cp, id) {
			return id
		}
	}
	return ""
}

// autoRecoverOf reports whether the pod's owner resyncs the other array
// by itself when the link returns (the pod's auto_recover attribute).
func autoRecoverOf(cp *catalog.Pod) bool { return cp.AutoRecover }

// call sends a pod message over the session at epoch and waits for the
// answer.
func call(ctx context.Context, s *link.Session, typ uint16, epoch uint64, payload []byte) ([]byte, error) {
	resp, err := goCall(ctx, s, typ, epoch, payload).Wait()
	if err != nil {
		return nil, err
	}
	return resp.Payload, nil
}

// goCall sends a request without waiting for its answer. Host I/O goes
// ahead of copy and control traffic.
func goCall(ctx context.Context, s *link.Session, typ uint16, epoch uint64, payload []byte) *link.Pending {
	urgent := typ == msgWrite || typ == msgUnmap || typ == msgForward || typ == msgWritten
	return s.Go(ctx, link.Message{Type: typ, Epoch: epoch, Payload: payload, Urgent: urgent})
}

// callJSON sends a JSON control message and decodes the JSON answer into
// out (when non-nil).
func callJSON(ctx context.Context, s *link.Session, typ uint16, epoch uint64, in, out any) error {
	resp, err := call(ctx, s, typ, epoch, mustJSON(in))
	if err != nil {
		return err
	}
	if out != nil {
		if err := json.Unmarshal(resp, out); err != nil {
			return fmt.Errorf("decode answer: %w", err)
		}
	}
	return nil
}
