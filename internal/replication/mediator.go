package replication

import (
	"context"
	"time"

	"github.com/metro-storage/metro/internal/pod"
)

// Mediator is the array's view of the mediator at a third site, the only
// grantor of an epoch after a link loss (package pod). Implementations
// are safe for concurrent use. The array's client (package mediator)
// satisfies it through a small adapter; tests use a fake.
type Mediator interface {
	// Elect asks the mediator for the pod's next epoch: won by the first
	// array that asks at epoch, which the mediator then stores as
	// epoch+1 with it as winner (a retried request of the winner is won
	// again). An error means the outcome is unknown (unreachable, no
	// answer, rolled back): the array treats it as not won.
	Elect(ctx context.Context, pod string, epoch uint64) (pod.ElectResult, error)
	// Status says whether the mediator is reachable now.
	Status() MediatorStatus
	// Changed is closed when Status().State changes, then replaced.
	Changed() <-chan struct{}
}

// Mediator states, as Status reports them.
const (
	MediatorOnline        = "online"
	MediatorUnreachable   = "unreachable"
	MediatorRolledBack    = "rolled back"
	MediatorNotConfigured = "not configured"
)

// MediatorStatus is the mediator's state as this array sees it.
type MediatorStatus struct {
	State string
	// RTT is the last heartbeat's round trip.
	RTT        time.Duration
	Generation uint64
	// Err says why, when not online.
	Err string
	// Since is when State last changed.
	Since time.Time
}

// mediatorStatus returns the configured mediator's status, "not
// configured" when there is none.
func (r *Replicator) mediatorStatus() MediatorStatus {
	if r.cfg.Mediator == nil {
		return MediatorStatus{State: MediatorNotConfigured}
	}
	return r.cfg.Mediator.Status()
}

// mediatorUp reports whether elections can go through the mediator now.
func (r *Replicator) mediatorUp() bool { return r.mediatorStatus().State == MediatorOnline }

// watchMediator feeds every pod the mediator's reachability when it
// changes, and tells the peer (its pods' pre-election depends on both
// arrays' views), until ctx ends.
func (r *Replicator) watchMediator(ctx context.Context) {
	if r.cfg.Mediator == nil {
		return
	}
	for {
		ch := r.cfg.Mediator.Changed()
		up := r.mediatorUp()
		r.mu.Lock()
		pods := r.podList()
		s := r.mu.sess
		r.mu.Unlock()
		for _, p := range pods {
			p.mediatorChanged(up)
		}
		if s != nil {
			r.sendStatus(s)
		}
		if !r.waitMediatorChange(ctx, ch) {
			return
		}
	}
}

// statusInterval is how often an array tells the peer its view of the
// mediator when nothing changed, so that the round trip the peer shows
// (metro array list) stays current.
const statusInterval = 10 * time.Second

// waitMediatorChange waits for the mediator's state to change (ch), and
// meanwhile tells the peer the current view every statusInterval; false
// when ctx ends.
func (r *Replicator) waitMediatorChange(ctx context.Context, ch <-chan struct{}) bool {
	t := time.NewTicker(statusInterval)
	defer t.Stop()
	for {
		select {
		case <-ch:
			return true
		case <-ctx.Done():
			return false
		case <-t.C:
			r.mu.Lock()
			s := r.mu.sess
			r.mu.Unlock()
			if s != nil {
				r.sendStatus(s)
			}
		}
	}
}

// elect runs an Elect action: it asks the mediator (if any) and feeds the
// answer to the machine.
func (p *podRT) elect(epoch uint64) {
	r := p.r
	med := r.cfg.Mediator
	st := r.mediatorStatus()
	if med == nil || st.State == MediatorNotConfigured || st.State == MediatorRolledBack {
		r.log.Warn("pod paused and no mediator to race through: suspended here", "pod", p.name, "epoch", epoch, "mediator", st.State, "why", st.Err)
		p.event(func(m *pod.Machine) []pod.Action { return m.ElectUnsent(epoch, r.now()) })
		return
	}
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		tctx, tcancel := context.WithTimeout(context.Background(), r.cfg.Timeout)
		defer tcancel()
		ctx, cancel := p.podCtx(tctx)
		defer cancel()
		start := r.now()
		res, err := med.Elect(ctx, p.id, epoch)
		if err != nil {
			r.log.Error("race to the mediator failed: the pod is suspended here until the link or the mediator returns", "pod", p.name, "epoch", epoch, "err", err)
			p.event(func(m *pod.Machine) []pod.Action { return m.ElectFailed(epoch, r.now()) })
			return
		}
		r.log.Info("race to the mediator", "pod", p.name, "epoch", epoch, "won", res.Won && res.Winner == r.cfg.ID,
			"new_epoch", res.Epoch, "winner", res.Winner, "took", r.now().Sub(start).Round(time.Millisecond))
		p.event(func(m *pod.Machine) []pod.Action { return m.Elected(epoch, res, r.now()) })
	}()
}
