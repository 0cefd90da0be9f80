package replication

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/metro-storage/metro/internal/catalog"
	"github.com/metro-storage/metro/internal/link"
	"github.com/metro-storage/metro/internal/pod"
	"github.com/metro-storage/metro/internal/scsi"
)

// podRT runs one stretched pod on this array: it owns the pod's machine
// (package pod), performs its actions and feeds it what happened, and
// gives the I/O paths a consistent view (mode). It decides nothing of its
// own: who serves, at which epoch and under which lease is the machine's.
type podRT struct {
	r    *Replicator
	name string
	id   string
	// peer is the id of the pod's other array.
	peer string

	// actions wakes the pod's goroutine for the actions in q.
	actions chan struct{}
	q       struct {
		sync.Mutex
		acts []task
	}
	quit chan struct{}
	done chan struct{}
	// cfgMu orders configuration changes of the pod (sequencer).
	cfgMu sync.Mutex
	// hostWrites counts host writes being replicated; a copy yields to
	// them.
	hostWrites atomic.Int32
	// repairs counts the repairs of damaged blocks running in the
	// background (repair.go).
	repairs atomic.Int32
	// ioMu is held shared by every replicated operation and exclusively
	// by membership changes, which thus see no operation half done. It
	// is taken before cfgMu.
	ioMu sync.RWMutex
	// applyMu is the per-pod barrier for the peer's messages (package
	// pod): held shared from a message's epoch check to the end of its
	// apply, and exclusively across every change of the pod's epoch or
	// state a peer's request makes (resync, grant, pre-election,
	// handover, removal), so no message of an older epoch is applied
	// once a newer one is accepted, and a write the grant did not sync is
	// applied synced.
	applyMu sync.RWMutex

	mu struct {
		sync.Mutex
		m *pod.Machine
		// sess is the session the machine's link state refers to.
		sess *link.Session
		// changed is closed (and replaced) whenever the state changes.
		changed chan struct{}
		// progress of the copy under way (sending or receiving).
		progress *Progress
		lastErr  string
		// track is what the peer's durable copy may lack (resume.go).
		track tracking
		// copyEpoch is the epoch of the copy being made (sequencer), and
		// resume the peer's answer for it.
		copyEpoch uint64
		resume    *resumeAnswer
		// pref and autoRecover are the configuration last fed to the
		// machine.
		pref        string
		autoRecover bool
		// peerView is the peer's record and view of the mediator as its
		// latest notice said (for display).
		peerView *podStateMsg
	}
	// handedOver, when set, gets the outcome of the handover message
	// (the administrator's call waits for it).
	handedOver chan error
	// baseline copy cancel.
	copyCancel context.CancelFunc
	copyWG     sync.WaitGroup
}

func newPodRT(r *Replicator, cp *catalog.Pod, rec pod.Record) *podRT {
	p := &podRT{r: r, name: cp.Name, id: cp.ID,
		actions: make(chan struct{}, 1), quit: make(chan struct{}), done: make(chan struct{})}
	for _, a := range cp.Arrays {
		if a.ID != r.cfg.ID {
			p.peer = a.ID
		}
	}
	now := r.now()
	pref := r.preferenceOf(cp)
	p.mu.m = pod.New(pod.Config{Self: r.cfg.ID, Peer: p.peer, Timeout: r.cfg.Timeout, HeadStart: r.cfg.HeadStart,
		Preference: pref}, rec, now)
	p.mu.pref, p.mu.autoRecover = pref, autoRecoverOf(cp)
	p.mu.m.SetAutoRecover(p.mu.autoRecover, now)
	p.mu.changed = make(chan struct{})
	p.mu.track = noTracking()
	if rec.Sequencer != r.cfg.ID {
		p.mu.track.from = ownTrackingFrom(rec, func() (cursor, bool) { return r.loadCursor(cp.ID) })
	}
	return p
}

// ownTrackingFrom returns the epoch from which a restarted array's record
// rec, of a pod the peer orders, proves it has no write of its own the
// peer lacks (0: none proved; its next copy is complete). cursor loads
// the copy's cursor.
//   - A follower in sync at its epoch ordered no write at that epoch (the
//     peer owns it), and its copy was complete then: from that epoch.
//   - A copy under way that this array accepted at its record's epoch
//     (the cursor is of that epoch, saved only once the acceptance was
//     durable): its own writes the peer lacked went to the peer in its
//     answer, and a receiver orders none: from that epoch, and the copy
//     may resume. A race lost records the winner's new epoch, of which no
//     cursor exists.
//   - Any other record cannot prove it: behind with the peer as owner, it
//     may have ordered writes at its last in-sync epoch and lost the race
//     with some never acknowledged, whose regions were kept only in the
//     memory a restart lost.
func ownTrackingFrom(rec pod.Record, cursor func() (cursor, bool)) uint64 {
	if rec.Current() {
		return rec.Synced
	}
	if c, ok := cursor(); ok && !rec.Left && c.Epoch == rec.Epoch {
		return rec.Epoch
	}
	return 0
}

// task is an action of the machine with the link session the machine
// was on when it decided it (nil: the link was down). A request to the
// peer is sent only on that session: the machine decided it for the
// state the peer was in on that session, and on a later one the peer
// may have moved on (it may have raced, won, received another copy),
// so a request of an earlier session could undo what happened since. If
// the session has ended by the time the call runs, the call fails, as
// if the session had ended under it.
type task struct {
	pod.Action
	sess *link.Session
}

// errOldSession fails a request to the peer decided on a link session
// that has ended.
var errOldSession = fmt.Errorf("decided on a link session that has ended: %w", ErrLinkDown)

// mode is what the I/O paths need to know of the pod at one instant.
type mode struct {
	state   pod.State
	role    pod.Role
	epoch   uint64
	sess    *link.Session
	changed <-chan struct{}
	// serving: reads are served now (the machine's rule, with this
	// array's lease); holds: writes wait for the state to change;
	// active: the paths are active (serving, or paused deciding, or in
	// sync with a lease that ran out while the link ends: I/O waits).
	serving bool
	holds   bool
	active  bool
}

// waits reports whether I/O that cannot be served now waits for the
// pod's state to change rather than fail.
func (md mode) waits() bool { return md.active && !md.serving }

func (p *podRT) mode() mode {
	p.mu.Lock()
	defer p.mu.Unlock()
	m := p.mu.m
	return mode{state: m.State(), role: m.Role(), epoch: m.Epoch(), sess: p.mu.sess, changed: p.mu.changed,
		serving: m.Serves(p.r.now(), leaseEnd(p.mu.sess, p.r.cfg.Timeout)), holds: m.Holds(), active: m.Serving()}
}

// waitReadable returns once reads may be served here, or errNotServing
// when the pod is not served here: while it is paused past this array's
// lease (or its lease ran out with the link still ending), reads wait for
// the machine to decide.
func (p *podRT) waitReadable(ctx context.Context) error {
	for {
		md := p.mode()
		switch {
		case md.serving:
			return nil
		case !md.waits():
			return errNotServing
		}
		select {
		case <-md.changed:
		case <-ctx.Done():
			return errNotServing
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// role returns the array's role in the pod now.
func (p *podRT) role() pod.Role {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.mu.m.Role()
}

// leaseEnd is when this array's read lease on the session ends: the
// link's lease less a fifth of the timeout, for clock rates (zero
// without a session).
func leaseEnd(s *link.Session, timeout time.Duration) time.Time {
	if s == nil {
		return time.Time{}
	}
	l := s.Lease()
	if l.IsZero() {
		return l
	}
	return l.Add(-timeout / 5)
}

func (p *podRT) start(sess *link.Session) {
	p.r.wg.Add(1)
	go func() {
		defer p.r.wg.Done()
		p.loop()
	}()
	p.mediatorChanged(p.r.mediatorUp())
	if sess != nil {
		p.linkUp(sess)
	}
}

func (p *podRT) stop() {
	select {
	case <-p.quit:
	default:
		close(p.quit)
	}
	<-p.done
}

// event applies f to the machine under the lock and queues the actions
// to the pod's goroutine, which performs them in order (a record first
// made durable, then what follows from it). Events come from any
// goroutine, catalog watchers included, so this never blocks.
func (p *podRT) event(f func(m *pod.Machine) []pod.Action) {
	p.queue(p.apply(f))
}

// request is event for a request of the peer: the machine may refuse it
// (err); the records it makes are persisted at once, in the handler's
// goroutine, which answers only once they are durable (and gets the
// first error otherwise); the rest is queued.
func (p *podRT) request(f func(m *pod.Machine) ([]pod.Action, error)) error {
	var err error
	acts := p.apply(func(m *pod.Machine) []pod.Action {
		var acts []pod.Action
		acts, err = f(m)
		return acts
	})
	if err != nil {
		return err
	}
	return p.persistInline(acts)
}

// apply runs f on the machine, logging state changes, and binds the
// actions to the link session the machine is on (task). The change
// tracking is cleared in the same step as the event that allows it (the
// peer's durable confirmation), not later on the pod's goroutine: a
// write noted meanwhile as one the peer lacks would be forgotten.
func (p *podRT) apply(f func(m *pod.Machine) []pod.Action) []task {
	p.mu.Lock()
	m := p.mu.m
	was, wasRole := m.State(), m.Role()
	acts := f(m)
	sess := p.mu.sess
	tasks := make([]task, 0, len(acts))
	for _, a := range acts {
		if a.Kind == pod.ClearTracking {
			p.clearTrackingLocked(a.Epoch)
			continue
		}
		tasks = append(tasks, task{Action: a, sess: sess})
	}
	now, role, epoch := m.State(), m.Role(), m.Epoch()
	p.mu.Unlock()
	if now != was || role != wasRole {
		p.r.log.Info("pod state", "pod", p.name, "from", was, "to", now, "role", role, "epoch", epoch)
	}
	if now == pod.Alone && was != pod.Alone {
		p.goCall(p.peerNexusesLost)
	}
	return tasks
}

// peerNexusesLost releases the SCSI-2 reservations held through the
// peer's port on the pod's volumes: serving the pod alone, this array
// has lost every I_T nexus through the peer (fenced, or gone), and
// SPC-2 releases a SCSI-2 reservation on the loss of its nexus. Left
// held, it would refuse every other host through this array for as long
// as the peer is away, and its holder could not release it.
func (p *podRT) peerNexusesLost() {
	if p.r.cfg.PortOf == nil {
		return
	}
	port := p.r.cfg.PortOf(p.peer)
	ctx, cancel := p.podCtx(context.Background())
	defer cancel()
	for _, v := range p.r.env.Catalog().View().PodVolumes(p.name) {
		if lu := p.r.env.LU(v.UUID); lu != nil && v.Destroyed == nil {
			if err := lu.PortLost(ctx, port); err != nil {
				p.r.log.Warn("release the SCSI-2 reservation held through the peer", "pod", p.name, "volume", v.Name, "err", err)
			}
		}
	}
}

// current reports whether s is the link session the machine is on now.
func (p *podRT) current(s *link.Session) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return s != nil && p.mu.sess == s
}

// persistInline persists the records among acts at once, and makes the
// membership changes that follow (the answer then implies them), and
// queues the rest; it returns the first persist error.
func (p *podRT) persistInline(acts []task) error {
	var queue []task
	var first error
	for _, a := range acts {
		switch a.Kind {
		case pod.Unstretched, pod.GaveUp, pod.SendHandover:
			p.queue(queue)
			queue = nil
			p.do(a)
			continue
		case pod.Persist:
		default:
			queue = append(queue, a)
			continue
		}
		p.queue(queue)
		queue = nil
		more, err := p.persist(a.Action)
		if err != nil && first == nil {
			first = err
		}
		if err := p.persistInline(more); err != nil && first == nil {
			first = err
		}
	}
	p.queue(queue)
	return first
}

// persist makes a record durable and tells the machine, returning what
// follows.
func (p *podRT) persist(a pod.Action) ([]task, error) {
	err := p.r.saveRecord(p.name, p.id, a.Record, a.SyncData)
	if err != nil {
		p.r.log.Error("persist the pod's record: the pod waits, and it is tried again", "pod", p.name, "record", a.Record.String(), "err", err)
		p.setErr(fmt.Sprintf("persist the pod's record: %v", err))
	} else {
		p.r.log.Debug("pod record persisted", "pod", p.name, "record", a.Record.String(), "reason", a.Reason)
		p.notifyPeer(a.Record)
	}
	id, now := a.ID, p.r.now()
	return p.apply(func(m *pod.Machine) []pod.Action {
		if err != nil {
			return m.PersistFailed(id, now)
		}
		return m.Persisted(id, now)
	}), err
}

// queue hands actions to the pod's goroutine, without blocking.
func (p *podRT) queue(acts []task) {
	if len(acts) == 0 {
		return
	}
	p.q.Lock()
	p.q.acts = append(p.q.acts, acts...)
	p.q.Unlock()
	select {
	case p.actions <- struct{}{}:
	default:
	}
}

// take returns the queued actions.
func (p *podRT) take() []task {
	p.q.Lock()
	defer p.q.Unlock()
	acts := p.q.acts
	p.q.acts = nil
	return acts
}

func (p *podRT) linkUp(s *link.Session) {
	p.event(func(m *pod.Machine) []pod.Action {
		if s.Err() != nil {
			// Ended already (a runtime started while the session went
			// down): its linkDown may have come first and found no
			// session here. The session's error is set before the
			// replicator tells the pods it went down, and pod events
			// run one at a time, so either this sees it or the
			// linkDown comes after.
			return nil
		}
		p.mu.sess = s
		return m.LinkUp(p.r.now())
	})
	if up, ok := p.r.peerMediator(s); ok {
		p.event(func(m *pod.Machine) []pod.Action { return m.PeerMediatorUp(up) })
	}
	// The peer's record of the pod, before anything is proposed to it.
	p.goCall(func() { p.askPeerRecord(s) })
}

// notifyPeer tells the peer this array's new record of the pod, for
// display; it changes nothing of the protocol there.
func (p *podRT) notifyPeer(rec pod.Record) {
	s := p.r.session()
	if s == nil {
		return
	}
	msg := podStateMsg{Pod: p.name, ID: p.id, Has: !rec.Left, Record: rec, Mediator: p.r.mediatorUp(), Notice: true}
	p.goCall(func() {
		if err := callJSON(context.Background(), s, msgPodState, 0, msg, nil); err != nil {
			p.r.log.Debug("tell the peer the pod's record", "pod", p.name, "err", err)
		}
	})
}

// askPeerRecord asks the peer its record of the pod and feeds it to the
// machine.
func (p *podRT) askPeerRecord(s *link.Session) {
	var ans podStateMsg
	if err := callJSON(context.Background(), s, msgPodState, 0, podStateMsg{Pod: p.name, ID: p.id}, &ans); err != nil {
		p.r.log.Debug("ask the peer's record", "pod", p.name, "err", err)
		return
	}
	p.event(func(m *pod.Machine) []pod.Action {
		if p.mu.sess != s {
			return nil
		}
		acts := m.PeerMediatorUp(ans.Mediator)
		return append(acts, m.PeerRecord(ans.Record, ans.Has, p.r.now())...)
	})
}

func (p *podRT) linkDown(s *link.Session) {
	p.event(func(m *pod.Machine) []pod.Action {
		if p.mu.sess != s {
			return nil
		}
		p.mu.sess = nil
		p.mu.peerView = nil
		p.copyInterruptedLocked(m.State())
		return m.LinkDown(p.r.now(), s.LastHeard(), leaseEnd(s, p.r.cfg.Timeout))
	})
}

// mediatorChanged feeds the machine this array's view of the mediator.
func (p *podRT) mediatorChanged(up bool) {
	p.event(func(m *pod.Machine) []pod.Action { return m.MediatorUp(up, p.r.now()) })
}

// configChanged feeds the machine the pod's failover preference and
// auto-recover setting when they changed.
func (p *podRT) configChanged(cp *catalog.Pod) {
	pref, auto := p.r.preferenceOf(cp), autoRecoverOf(cp)
	p.event(func(m *pod.Machine) []pod.Action {
		var acts []pod.Action
		if pref != p.mu.pref {
			p.mu.pref = pref
			acts = append(acts, m.SetPreference(pref)...)
		}
		if auto != p.mu.autoRecover {
			p.mu.autoRecover = auto
			acts = append(acts, m.SetAutoRecover(auto, p.r.now())...)
		}
		return acts
	})
}

// peerFailed ends the session after a replicated operation failed on it:
// the pod then goes through the link-lost path.
func (p *podRT) peerFailed(s *link.Session, err error) {
	select {
	case <-s.Done():
		return // already gone; the link-lost path is under way
	default:
	}
	p.r.log.Warn("replication to the peer failed; ending the link session", "pod", p.name, "err", err)
	// Not here: Close waits for the session's handlers, and this may be
	// one of them.
	p.r.wg.Add(1)
	go func() {
		defer p.r.wg.Done()
		s.Close()
	}()
}

func (p *podRT) loop() {
	defer close(p.done)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	defer func() {
		if p.copyCancel != nil {
			p.copyCancel()
		}
		p.copyWG.Wait()
		p.release()
	}()
	for {
		select {
		case <-p.quit:
			return
		case <-p.actions:
			for _, a := range p.take() {
				p.do(a)
			}
		case <-tick.C:
			now := p.r.now()
			p.event(func(m *pod.Machine) []pod.Action {
				acts := m.Tick(now)
				if !m.Serves(now, leaseEnd(p.mu.sess, p.r.cfg.Timeout)) && (m.State() == pod.InSync || m.State() == pod.Syncing) {
					// This array's lease ran out with the link up (a
					// one-way cut): the machine ends the link.
					acts = append(acts, m.LeaseExpired()...)
				}
				return acts
			})
		}
	}
}

// do performs one action on the pod's goroutine. Calls to the peer run
// in goroutines of their own, whose outcome is fed back as an event.
func (p *podRT) do(a task) {
	switch a.Kind {
	case pod.Persist:
		if a.Record.Epoch != p.mode().epoch {
			// A record that changes the epoch (a race won or lost, a
			// handover) waits for the peer's messages being applied at
			// the old one: the barrier, exclusively (package pod).
			p.applyMu.Lock()
			defer p.applyMu.Unlock()
		}
		more, _ := p.persist(a.Action)
		p.queue(more)
	case pod.Elect:
		p.elect(a.Epoch)
	case pod.StartResync:
		p.goCall(func() { p.startResync(a.sess, a.Epoch) })
	case pod.CopyBaseline:
		ctx, cancel := context.WithCancel(context.Background())
		if p.copyCancel != nil {
			p.copyCancel()
		}
		p.copyCancel = cancel
		p.copyWG.Add(1)
		go func() {
			defer p.copyWG.Done()
			p.copyBaseline(ctx, a.Epoch)
		}()
	case pod.GrantInSync:
		p.goCall(func() { p.grant(a.sess, a.Epoch, a.Pre) })
	case pod.SendPreElect:
		p.goCall(func() { p.sendPreElect(a.sess, a.Epoch, a.Pre) })
	case pod.SendHandover:
		p.goCall(func() { p.sendHandover(a.Epoch) })
	case pod.AskRemove:
		p.goCall(func() { p.askRemove(a.sess, a.Epoch) })
	case pod.Unstretched:
		p.unstretched(a.Epoch)
	case pod.GaveUp:
		if err := p.r.keepPending(p.name, p.mode().epoch); err != nil {
			p.r.log.Error("keep the copy given up pending eradication", "pod", p.name, "err", err)
		}
	case pod.EndLink:
		// The session the machine decided to end: a later one is not
		// ended for an old decision.
		if a.sess != nil {
			p.peerFailed(a.sess, fmt.Errorf("pod %s: the protocol ends the link", p.name))
		}
	case pod.ReleaseWrites:
		p.release()
	case pod.AccessChanged:
		// Nothing to tell the units: each nexus's next command compares
		// the port groups it would be reported with those it last heard
		// of (scsi), and only those that changed hear of it.
	case pod.ClearCopy:
		// Done by the resync handler before it answers.
	}
}

// podCtx returns a context that ends when the pod's runtime stops (or
// cancel is called).
func (p *podRT) podCtx(parent context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(parent)
	go func() {
		select {
		case <-p.quit:
			cancel()
		case <-ctx.Done():
		}
	}()
	return ctx, cancel
}

// goCall runs f (a call to the peer) in a goroutine the replicator waits
// for.
func (p *podRT) goCall(f func()) {
	p.r.wg.Add(1)
	go func() {
		defer p.r.wg.Done()
		f()
	}()
}

// release wakes everything waiting for a state change.
func (p *podRT) release() {
	p.mu.Lock()
	close(p.mu.changed)
	p.mu.changed = make(chan struct{})
	p.mu.Unlock()
}

// startResync asks the peer, on the session s the machine decided it
// on, to receive a copy at epoch; the machine takes the epoch once the
// peer durably accepted it.
func (p *podRT) startResync(s *link.Session, epoch uint64) {
	failed := func(peerEpoch uint64) {
		p.event(func(m *pod.Machine) []pod.Action { return m.ResyncFailed(epoch, peerEpoch, p.r.now()) })
	}
	if !p.current(s) {
		if s != nil {
			p.r.log.Info("resync proposal not sent: decided on a link session that has ended; proposed again later", "pod", p.name, "epoch", epoch)
		}
		failed(0)
		return
	}
	// cfgMu stays held until the pod is syncing, so no configuration
	// change falls between the copy's configuration and the mirroring.
	p.cfgMu.Lock()
	defer p.cfgMu.Unlock()
	pc := p.r.env.Catalog().View().PodConfig(p.name)
	if pc == nil {
		failed(0)
		return
	}
	msg := resyncMsg{Config: *pc}
	p.mu.Lock()
	msg.ResumeFrom = p.mu.track.from
	p.mu.Unlock()
	var ans resumeAnswer
	if err := callJSON(context.Background(), s, msgResync, epoch, msg, &ans); err != nil {
		p.r.log.Warn("resync refused by the peer; proposed again later", "pod", p.name, "epoch", epoch, "err", err)
		p.setErr(fmt.Sprint(err))
		// Its record may have moved: ask it again before the next
		// proposal.
		p.askPeerRecord(s)
		failed(0)
		return
	}
	if len(ans.Regions) > maxPeerRegions || len(ans.Volumes) != len(ans.Regions) {
		ans.Resume, ans.Regions, ans.Volumes = false, nil, nil
	}
	p.setErr("")
	p.event(func(m *pod.Machine) []pod.Action {
		acts := m.ResyncStarted(epoch, p.r.now())
		if len(acts) == 0 {
			// Not the resync the machine proposes now (an answer to a
			// proposal it has moved on from, or sent again on a later
			// session): its resume point is not this copy's.
			return nil
		}
		// p.mu is held (apply).
		p.mu.resume = &ans
		p.mu.copyEpoch = epoch
		if !ans.Resume {
			// The peer starts from nothing: what it lacked is moot.
			p.mu.track = noTracking()
		} else {
			p.mu.track.dirty.merge(ans.dirtyRegions())
		}
		p.mu.track.from = epoch
		p.r.log.Info("resync started", "pod", p.name, "epoch", epoch, "resume", ans.Resume)
		return acts
	})
}

// grant tells the peer its copy is complete at epoch, with the
// pre-election pre.
func (p *podRT) grant(s *link.Session, epoch uint64, pre string) {
	p.callThen(s, "grant in-sync", msgGrant, epoch, grantMsg{Pod: p.name, Pre: pre},
		func(m *pod.Machine) []pod.Action { return m.GrantFailed(epoch) },
		func(m *pod.Machine) []pod.Action {
			p.r.log.Info("pod in sync", "pod", p.name, "epoch", epoch, "pre_elected", p.r.arrayName(pre))
			return m.PeerInSync(epoch, p.r.now())
		})
}

// sendPreElect asks the peer to hold the pre-election pre.
func (p *podRT) sendPreElect(s *link.Session, epoch uint64, pre string) {
	p.callThen(s, "pre-election step", msgPreElect, epoch, grantMsg{Pod: p.name, Pre: pre},
		func(m *pod.Machine) []pod.Action { return m.PreElectFailed(epoch) },
		func(m *pod.Machine) []pod.Action {
			p.r.log.Info("pre-election", "pod", p.name, "epoch", epoch, "pre_elected", p.r.arrayName(pre))
			return m.PeerPreElected(epoch, pre)
		})
}

// callThen sends a control message of the pod on the session s the
// machine decided it on and feeds the machine the outcome: failed when
// the peer refused it or did not answer (or s has ended), ok when it
// took it.
func (p *podRT) callThen(s *link.Session, what string, typ uint16, epoch uint64, in any, failed, ok func(m *pod.Machine) []pod.Action) {
	if err := p.callPeer(s, typ, epoch, in); err != nil {
		p.r.log.Warn(what+": the peer did not take it", "pod", p.name, "epoch", epoch, "err", err)
		p.event(failed)
		return
	}
	p.event(ok)
}

// callPeer sends a control message of the pod on the session s the
// machine decided it on, if the machine is still on it, and waits for
// the answer.
func (p *podRT) callPeer(s *link.Session, typ uint16, epoch uint64, in any) error {
	switch {
	case s == nil:
		return ErrLinkDown
	case !p.current(s):
		return errOldSession
	}
	return callJSON(context.Background(), s, typ, epoch, in, nil)
}

// sendHandover tells the peer it owns the pod alone from epoch; this
// array already gave it up. Its answer changes nothing here: if it is
// lost, the peer learns from its next question of this array's record.
func (p *podRT) sendHandover(epoch uint64) {
	err := ErrLinkDown
	if s := p.r.session(); s != nil {
		err = callJSON(context.Background(), s, msgHandover, epoch, podStateMsg{Pod: p.name, ID: p.id}, nil)
	}
	if err != nil {
		p.r.log.Warn("the peer did not confirm the handover; it takes the pod when it next asks", "pod", p.name, "epoch", epoch, "err", err)
	}
	p.mu.Lock()
	done := p.handedOver
	p.mu.Unlock()
	if done != nil {
		done <- err
	}
}

// askRemove asks the peer to give the pod up.
func (p *podRT) askRemove(s *link.Session, epoch uint64) {
	peer := p.r.arrayName(p.peer)
	p.callThen(s, "removal of the peer (the link ends and the pod goes through the race)", msgUnstretch, epoch, unstretchMsg{Pod: p.name, Array: peer},
		func(m *pod.Machine) []pod.Action {
			p.mu.lastErr = fmt.Sprintf("removal of array %s not confirmed", peer)
			return m.RemoveFailed(epoch)
		},
		func(m *pod.Machine) []pod.Action { return m.PeerLeft(epoch) })
}

// unstretched makes the pod this array's alone (a local pod) from epoch,
// and tells the peer.
func (p *podRT) unstretched(epoch uint64) {
	r := p.r
	cp := r.env.Catalog().View().Pods[p.name]
	if cp == nil || cp.ID != p.id {
		return
	}
	me := catalog.PodArray{Name: r.cfg.Name, ID: r.cfg.ID}
	if err := r.env.Catalog().Apply(catalog.SetPodMembership{Name: p.name, Arrays: []catalog.PodArray{me}, Sequencer: me.Name, Epoch: epoch}); err != nil {
		r.log.Error("make the pod local", "pod", p.name, "err", err)
		return
	}
	r.log.Info("the pod is this array's alone now", "pod", p.name, "epoch", epoch)
	if s := r.session(); s != nil {
		p.goCall(func() {
			if err := callJSON(context.Background(), s, msgUnstretch, epoch, unstretchMsg{Pod: p.name, Notice: true}, nil); err != nil {
				r.log.Debug("tell the peer the pod is unstretched", "pod", p.name, "err", err)
			}
		})
	}
}

func (p *podRT) setErr(s string) {
	p.mu.Lock()
	p.mu.lastErr = s
	p.mu.Unlock()
}

// lacks records that the follower had no room for a change of rg that
// this array mirrored at epoch, and reports whether the change may be
// acknowledged all the same: only while the follower receives a copy
// and serves nothing (syncing, before the grant), for the copy then
// sends rg again before it grants (copyBaseline). Otherwise the follower
// must be suspended.
func (p *podRT) lacks(rg region, epoch uint64) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	m := p.mu.m
	if rg.uuid == "" || m.State() != pod.Syncing || m.Granting() || m.Epoch() != epoch {
		return false
	}
	p.mu.track.lacking.add(rg)
	return true
}

// errNotServing is returned by the replicated paths when the pod stopped
// being served on this array meanwhile; the host gets NOT READY
// (transitioning) and retries.
var errNotServing = fmt.Errorf("pod not served on this array: %w", scsi.ErrTransitioning)

// mirror performs a replicated change at the sequencer: local (may be nil)
// here and the request typ with payload on the follower, and returns once
// the change is on every array that serves the pod. The request is sent
// first and local runs while it travels. Neither part is cancelled by ctx
// once started (an aborted command may have changed either copy; both
// must match): ctx only stops waiting for a paused pod. A follower that
// does not answer within the link's timeout is treated as lost (the link
// ends), like a silent one. For a write of data the follower forwarded,
// done tells the follower, as soon as the local write succeeded, that
// this copy has it (see forwarded).
//
// A change with no local part (local nil: a reservation change, which the
// caller made here and undoes when it fails) that ctx ends while it waits
// after a failed attempt fails with scsi.ErrMayBeShared: the follower may
// hold it (and may have served it), so the caller must keep it.
func (p *podRT) mirror(ctx context.Context, rg region, local func(context.Context) error, typ uint16, payload []byte, done *writtenMsg) error {
	p.ioMu.RLock()
	defer p.ioMu.RUnlock()
	if rg.uuid != "" {
		p.hostWrites.Add(1)
		defer p.hostWrites.Add(-1)
	}
	bg := context.WithoutCancel(ctx)
	localDone := local == nil
	sent := false // an attempt failed after the request went out
	for {
		md := p.mode()
		switch {
		case md.holds:
			// Paused: wait for the machine below.
		case md.role != pod.Sequencer:
			return errNotServing
		case md.sess != nil && (md.state == pod.Syncing || md.state == pod.InSync):
			// Mirrored: a write is on both copies once the peer
			// answered, whatever the leases (they guard reads).
			remote := goCall(bg, md.sess, typ, md.epoch, payload)
			var lerr error
			if !localDone {
				lerr = local(bg)
				localDone = true
			}
			if lerr == nil && done != nil {
				// Not awaited: the answer says nothing this write needs.
				goCall(bg, md.sess, msgWritten, md.epoch, done.encode())
			}
			ans, rerr := p.awaitPeer(remote)
			lacked := rerr == nil && len(ans) > 0 && ans[0] == copyNoSpace
			if lacked && !p.lacks(rg, md.epoch) {
				rerr = &peerFullError{string(ans[1:])}
			}
			// A change the follower may lack, or has but has not made
			// durable, must be copied again on a resume.
			p.noteWrite(rg, rerr == nil && lerr == nil && !lacked, rerr == nil && len(ans) > 0 && ans[0] == writeDurable)
			if lerr != nil {
				if rerr == nil && !lacked {
					// The follower has what this array could not
					// write: the copies differ. Suspend the follower;
					// it gets a fresh copy.
					p.peerFailed(md.sess, fmt.Errorf("local write failed after the peer's succeeded: %w", lerr))
				}
				return lerr
			}
			if rerr == nil {
				return nil
			}
			p.peerFailed(md.sess, rerr)
			sent = true
		case md.state == pod.Alone:
			p.noteWrite(rg, false, false)
			if !localDone {
				return local(bg)
			}
			return nil
		default:
			return errNotServing
		}
		// Paused (or between states): wait for the machine.
		select {
		case <-md.changed:
		case <-ctx.Done():
			if sent && local == nil {
				return fmt.Errorf("%w: %w", scsi.ErrMayBeShared, ctx.Err())
			}
			return ctx.Err()
		case <-time.After(p.r.cfg.Timeout):
		}
	}
}

// awaitPeer waits for the peer's answer to a mirrored change, at most the
// link's timeout (a follower whose store stalls keeps answering pings,
// and must not hold the sequencer's writes for ever).
func (p *podRT) awaitPeer(pend *link.Pending) ([]byte, error) {
	select {
	case <-pend.Done():
		// Usually so: the local write ran while the request travelled.
		resp, err := pend.Wait()
		return resp.Payload, err
	default:
	}
	t := time.NewTimer(p.r.cfg.Timeout)
	defer t.Stop()
	select {
	case <-pend.Done():
		resp, err := pend.Wait()
		return resp.Payload, err
	case <-t.C:
		return nil, fmt.Errorf("the peer did not apply a mirrored write within %v", p.r.cfg.Timeout)
	}
}
