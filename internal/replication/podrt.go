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

// podRT runs one stretched pod on this array: it owns the pod's state
// machine, performs its actions on the pod's goroutine, and gives the I/O
// paths a consistent view (mode).
type podRT struct {
	r    *Replicator
	name string
	id   string
	role pod.Role
	// peer is the id of the pod's other array.
	peer string

	actions chan []pod.Action
	quit    chan struct{}
	done    chan struct{}
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
	// is taken before cfgMu: an operation waiting while the pod is paused
	// holds it until the pod has persisted a new epoch, under cfgMu.
	ioMu sync.RWMutex

	mu struct {
		sync.Mutex
		m *pod.Machine
		// sess is the session the machine's link state refers to.
		sess *link.Session
		// changed is closed (and replaced) whenever the state changes.
		changed chan struct{}
		// progress of the copy under way (sequencer).
		progress *Progress
		lastErr  string
		// track is what the follower may lack (sequencer).
		track tracking
		// copyEpoch is the epoch of the follower's latest copy
		// (sequencer), and resume the follower's answer for the copy
		// being started.
		copyEpoch uint64
		resume    *resumeAnswer
	}
	// baseline copy cancel.
	copyCancel context.CancelFunc
	copyWG     sync.WaitGroup
}

func newPodRT(r *Replicator, cp *catalog.Pod, fenced bool) *podRT {
	p := &podRT{r: r, name: cp.Name, id: cp.ID, role: roleOf(cp, r.cfg.Name),
		actions: make(chan []pod.Action, 64), quit: make(chan struct{}), done: make(chan struct{})}
	for _, a := range cp.Arrays {
		if a.ID != r.cfg.ID {
			p.peer = a.ID
		}
	}
	// A pod that was just stretched (its follower never served) needs no
	// fence; one that existed before may have a serving follower, whose
	// lease must run out first.
	if fenced && p.role == pod.Sequencer {
		p.mu.m = pod.NewStretched(cp.Epoch, r.cfg.Timeout)
	} else {
		p.mu.m = pod.New(p.role, cp.Epoch, r.now(), r.cfg.Timeout)
	}
	p.mu.changed = make(chan struct{})
	p.mu.track = noTracking()
	return p
}

// mode is what the I/O paths need to know of the pod at one instant.
type mode struct {
	state   pod.State
	epoch   uint64
	sess    *link.Session
	changed <-chan struct{}
	serving bool
}

func (p *podRT) mode() mode {
	p.mu.Lock()
	defer p.mu.Unlock()
	m := p.mu.m
	md := mode{state: m.State(), epoch: m.Epoch(), sess: p.mu.sess, changed: p.mu.changed, serving: m.Serving()}
	if p.role == pod.Follower && md.serving {
		// The follower serves only under the sequencer's lease (with a
		// margin for clock rates).
		if md.sess == nil || !p.r.now().Before(leaseEnd(md.sess, p.r.cfg.Timeout)) {
			md.serving = false
		}
	}
	return md
}

// leaseEnd is when the follower's read lease ends: the link's lease less
// a fifth of the timeout.
func leaseEnd(s *link.Session, timeout time.Duration) time.Time {
	return s.Lease().Add(-timeout / 5)
}

func (p *podRT) start(sess *link.Session) {
	p.r.wg.Add(1)
	go func() {
		defer p.r.wg.Done()
		p.loop()
	}()
	if sess != nil {
		p.linkUp(sess)
	}
	p.accessChanged()
}

func (p *podRT) stop() {
	select {
	case <-p.quit:
	default:
		close(p.quit)
	}
	<-p.done
}

// event applies f to the machine under the lock and queues the actions.
func (p *podRT) event(f func(m *pod.Machine) []pod.Action) {
	p.mu.Lock()
	was := p.mu.m.State()
	acts := f(p.mu.m)
	now, epoch := p.mu.m.State(), p.mu.m.Epoch()
	p.mu.Unlock()
	if now != was {
		p.r.log.Info("pod state", "pod", p.name, "role", p.role, "from", was, "to", now, "epoch", epoch)
	}
	p.queue(acts)
}

func (p *podRT) queue(acts []pod.Action) {
	if len(acts) == 0 {
		return
	}
	select {
	case p.actions <- acts:
	case <-p.quit:
	}
}

func (p *podRT) linkUp(s *link.Session) {
	p.event(func(m *pod.Machine) []pod.Action {
		p.mu.sess = s
		return m.LinkUp(p.r.now())
	})
}

func (p *podRT) linkDown(s *link.Session) {
	p.event(func(m *pod.Machine) []pod.Action {
		if p.mu.sess != s {
			return nil
		}
		p.mu.sess = nil
		if p.role == pod.Sequencer {
			p.copyInterruptedLocked(m.State())
		}
		return m.LinkDown(p.r.now(), s.LastHeard())
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
		case acts := <-p.actions:
			for _, a := range acts {
				p.do(a)
			}
		case <-tick.C:
			now := p.r.now()
			var expired *link.Session
			p.event(func(m *pod.Machine) []pod.Action {
				acts := m.Tick(now)
				if p.role == pod.Follower && m.State() == pod.InSync &&
					(p.mu.sess == nil || !now.Before(leaseEnd(p.mu.sess, p.r.cfg.Timeout))) {
					acts = append(acts, m.LeaseExpired()...)
					expired = p.mu.sess
				}
				return acts
			})
			if expired != nil {
				// The sequencer must learn that this copy no longer
				// serves: ending the session sends the pod through the
				// link-lost path, then a resync.
				p.peerFailed(expired, fmt.Errorf("read lease expired (last renewed %v ago)", now.Sub(expired.Lease())))
			}
		}
	}
}

// do performs one action on the pod's goroutine.
func (p *podRT) do(a pod.Action) {
	switch a.Kind {
	case pod.PersistEpoch:
		err := p.persistEpoch(a.Epoch)
		if err != nil {
			p.r.log.Error("persist pod epoch", "pod", p.name, "err", err)
			return
		}
		p.event(func(m *pod.Machine) []pod.Action { return m.Persisted(a.Epoch) })
	case pod.StartResync:
		p.startResync(a.Epoch)
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
		s := p.mode().sess
		if s == nil {
			return
		}
		if err := callJSON(context.Background(), s, msgGrant, a.Epoch, grantMsg{Pod: p.name}, nil); err != nil {
			p.r.log.Warn("grant in-sync", "pod", p.name, "err", err)
			p.peerFailed(s, err)
			return
		}
		p.r.log.Info("pod in sync", "pod", p.name, "epoch", a.Epoch)
		p.event(func(m *pod.Machine) []pod.Action {
			acts := m.PeerInSync(a.Epoch)
			if m.State() == pod.InSync {
				// The follower has everything, durably.
				p.mu.track = noTracking()
			}
			return acts
		})
	case pod.ReleaseWrites:
		p.release()
	case pod.AccessChanged:
		p.accessChanged()
	case pod.ClearCopy:
		// Done by the resync handler before it answers.
	}
}

// release wakes everything waiting for a state change.
func (p *podRT) release() {
	p.mu.Lock()
	close(p.mu.changed)
	p.mu.changed = make(chan struct{})
	p.mu.Unlock()
}

// accessChanged raises ASYMMETRIC ACCESS STATE CHANGED on the pod's units.
func (p *podRT) accessChanged() {
	st := p.r.env.Catalog().View()
	for _, v := range st.PodVolumes(p.name) {
		if lu := p.r.env.LU(v.UUID); lu != nil {
			lu.AccessChanged()
		}
	}
}

// persistEpoch durably records the pod's epoch (sequencer).
func (p *podRT) persistEpoch(epoch uint64) error {
	p.cfgMu.Lock()
	defer p.cfgMu.Unlock()
	cp := p.r.env.Catalog().View().Pods[p.name]
	if cp == nil {
		return fmt.Errorf("pod %s is gone", p.name)
	}
	if cp.Epoch >= epoch {
		return nil
	}
	return p.r.env.Catalog().Apply(catalog.SetPodMembership{Name: p.name, Arrays: cp.Arrays, Sequencer: cp.Sequencer, Epoch: epoch})
}

// startResync asks the follower to receive a fresh copy at epoch.
func (p *podRT) startResync(epoch uint64) {
	s := p.mode().sess
	if s == nil {
		p.event(func(m *pod.Machine) []pod.Action { return m.ResyncFailed(epoch) })
		return
	}
	p.cfgMu.Lock()
	st := p.r.env.Catalog().View()
	pc := st.PodConfig(p.name)
	// The reservations follow when the copy starts (copyBaseline).
	var msg resyncMsg
	p.mu.Lock()
	msg.ResumeFrom = p.mu.track.from
	p.mu.Unlock()
	if pc != nil {
		msg.Config = *pc
	}
	var ans resumeAnswer
	err := callJSON(context.Background(), s, msgResync, epoch, msg, &ans)
	// cfgMu stays held until the pod is syncing, so no configuration
	// change falls between the copy's configuration and the mirroring.
	defer p.cfgMu.Unlock()
	if err == nil {
		p.mu.Lock()
		p.mu.resume = &ans
		p.mu.copyEpoch = epoch
		if !ans.Resume {
			// The follower starts from nothing: what it lacked is moot.
			p.mu.track = noTracking()
		}
		p.mu.Unlock()
	}
	if err != nil || pc == nil {
		p.r.log.Warn("resync refused by the peer", "pod", p.name, "err", err)
		p.setErr(fmt.Sprint(err))
		p.event(func(m *pod.Machine) []pod.Action { return m.ResyncFailed(epoch) })
		// Try again later while the link stays up.
		p.r.wg.Add(1)
		go func() {
			defer p.r.wg.Done()
			select {
			case <-time.After(2 * time.Second):
			case <-p.quit:
				return
			}
			if cur := p.mode().sess; cur == s {
				p.linkUp(s)
			}
		}()
		return
	}
	p.setErr("")
	p.r.log.Info("resync started", "pod", p.name, "epoch", epoch)
	p.event(func(m *pod.Machine) []pod.Action { return m.ResyncStarted(epoch) })
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
	if rg.uuid == "" || m.State() != pod.Syncing || m.Granted() || m.Epoch() != epoch {
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
// must match): ctx only stops waiting for a paused pod. For a write of
// data the follower forwarded, done tells the follower, as soon as the
// local write succeeded, that this copy has it (see forwarded).
func (p *podRT) mirror(ctx context.Context, rg region, local func(context.Context) error, typ uint16, payload []byte, done *writtenMsg) error {
	p.ioMu.RLock()
	defer p.ioMu.RUnlock()
	if rg.uuid != "" {
		p.hostWrites.Add(1)
		defer p.hostWrites.Add(-1)
	}
	bg := context.WithoutCancel(ctx)
	localDone := local == nil
	for {
		md := p.mode()
		switch {
		case md.state == pod.Syncing || md.state == pod.InSync:
			if md.sess == nil {
				break
			}
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
			resp, rerr := remote.Wait()
			lacked := rerr == nil && len(resp.Payload) > 0 && resp.Payload[0] == copyNoSpace
			if lacked && !p.lacks(rg, md.epoch) {
				rerr = &peerFullError{string(resp.Payload[1:])}
			}
			// A change the follower may lack, or has and this array
			// has not, must be copied again on a resume.
			p.noteWrite(rg, rerr == nil && lerr == nil && !lacked, md.state)
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
		case md.state == pod.Alone:
			p.noteWrite(rg, false, md.state)
			if !localDone {
				return local(bg)
			}
			return nil
		case !md.serving:
			return errNotServing
		}
		// Paused (or between states): wait for the machine.
		select {
		case <-md.changed:
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(p.r.cfg.Timeout):
		}
	}
}
