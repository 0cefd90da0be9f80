package replication

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/metro-storage/metro/internal/catalog"
	"github.com/metro-storage/metro/internal/link"
	"github.com/metro-storage/metro/internal/pod"
)

// Membership changes (stretch, unstretch, handover) are transitions of
// the pod's machine, fenced as package pod says: the array that gives a
// pod up stops serving before the other serves alone. This file performs
// them and answers the peer's side of them.

// Stretch adds the peer array to a pod of this array (metro pod add). The
// pod's configuration appears there and a baseline copy starts.
func (r *Replicator) Stretch(ctx context.Context, podName, array string) error {
	r.mu.Lock()
	peer := r.mu.peer
	r.mu.Unlock()
	if peer == nil {
		return fmt.Errorf("%w", ErrNoPeer)
	}
	if array == r.cfg.Name {
		return fmt.Errorf("pod %s: %w: it is already on array %s", podName, catalog.ErrConflict, array)
	}
	if array != peer.Name {
		return fmt.Errorf("array %s: %w: this array is connected to %s only", array, catalog.ErrNotFound, peer.Name)
	}
	s := r.session()
	if s == nil {
		return fmt.Errorf("pod %s: %w to %s; check 'metro array list'", podName, ErrLinkDown, peer.Name)
	}
	st := r.env.Catalog().View()
	cp, ok := st.Pods[podName]
	if !ok || cp.Pending != nil {
		return fmt.Errorf("pod %s: %w", podName, catalog.ErrNotFound)
	}
	if len(cp.Arrays) > 1 {
		return fmt.Errorf("pod %s: %w: already stretched to %s", podName, catalog.ErrConflict, cp.Arrays[1].Name)
	}
	pc := st.PodConfig(podName)
	var used uint64
	for _, v := range st.PodVolumes(podName) {
		used += r.env.Store().Volume(v.DataID).Used()
	}
	if err := callJSON(ctx, s, msgCheckStretch, 0, checkStretchMsg{Config: *pc, Used: used}, nil); err != nil {
		var re *link.RemoteError
		if errors.As(err, &re) {
			return fmt.Errorf("pod %s cannot be stretched: %s: %w", podName, re.Msg, catalog.ErrConflict)
		}
		return fmt.Errorf("pod %s: check array %s: %w", podName, array, err)
	}
	// The record first: this array owns the new epoch, and the peer has
	// no copy (it serves nothing, so there is nothing to fence).
	epoch := cp.Epoch + 1
	if rec, ok := r.loadRecord(cp.ID); ok && rec.Epoch >= epoch {
		epoch = rec.Epoch + 1
	}
	if err := r.saveRecord(podName, cp.ID, pod.Stretched(r.cfg.ID, epoch), false); err != nil {
		return fmt.Errorf("pod %s: %w", podName, err)
	}
	arrays := []catalog.PodArray{cp.Arrays[0], {Name: peer.Name, ID: peer.ID}}
	if err := r.env.Catalog().Apply(catalog.SetPodMembership{Name: podName, Arrays: arrays, Sequencer: r.cfg.Name, Epoch: epoch}); err != nil {
		return err
	}
	r.log.Info("pod stretched", "pod", podName, "to", array, "epoch", epoch)
	return nil
}

// Unstretch removes an array from a stretched pod (metro pod remove). The
// removed array keeps its copy, pending eradication. Removing the
// sequencer hands the pod to the other array (it must be in sync).
// Asked of the array that does not order the pod, it asks the one that
// does.
func (r *Replicator) Unstretch(ctx context.Context, podName, array string) error {
	st := r.env.Catalog().View()
	cp, ok := st.Pods[podName]
	if !ok || cp.Pending != nil {
		return fmt.Errorf("pod %s: %w", podName, catalog.ErrNotFound)
	}
	if !slices.ContainsFunc(cp.Arrays, func(a catalog.PodArray) bool { return a.Name == array }) {
		return fmt.Errorf("pod %s is not on array %s: %w", podName, array, catalog.ErrNotFound)
	}
	if len(cp.Arrays) < 2 {
		return fmt.Errorf("pod %s lives only on %s: %w: destroy it instead", podName, array, catalog.ErrConflict)
	}
	p := r.pod(podName)
	if p == nil {
		return fmt.Errorf("pod %s: %w: not running here yet, try again", podName, catalog.ErrConflict)
	}
	if p.role() != pod.Sequencer {
		s := r.session()
		if s == nil {
			return fmt.Errorf("pod %s is ordered by array %s, which this array cannot reach: %w", podName, cp.Sequencer, ErrLinkDown)
		}
		var ans answer
		if err := callJSON(ctx, s, msgUnstretch, 0, unstretchMsg{Pod: podName, Array: array, Request: true}, &ans); err != nil {
			return fmt.Errorf("ask array %s: %w", cp.Sequencer, err)
		}
		return ans.err()
	}
	// No replicated operation is half done meanwhile (ioMu before
	// cfgMu, see podRT).
	p.ioMu.Lock()
	defer p.ioMu.Unlock()
	p.cfgMu.Lock()
	defer p.cfgMu.Unlock()
	if array == r.cfg.Name {
		return p.handover(ctx)
	}
	return p.removePeer(ctx)
}

// handover gives the pod to the peer: this array durably gives it up
// first and stops serving, then tells the peer (see package pod).
func (p *podRT) handover(ctx context.Context) error {
	r := p.r
	done := make(chan error, 1)
	p.mu.Lock()
	p.handedOver = done
	p.mu.Unlock()
	err := p.request(func(m *pod.Machine) ([]pod.Action, error) { return m.Handover() })
	if err != nil {
		peer := r.arrayName(p.peer)
		if errors.Is(err, pod.ErrBusy) {
			return fmt.Errorf("pod %s: %w: another change of the pod is under way (a removal of %s, a resync or a pre-election step); try again once 'metro pod list' shows it done",
				p.name, catalog.ErrConflict, peer)
		}
		if errors.Is(err, pod.ErrRefused) {
			return fmt.Errorf("pod %s: %w: %v; array %s must be in sync to take the pod: remove %s instead or wait for the resync",
				p.name, catalog.ErrConflict, err, peer, peer)
		}
		return fmt.Errorf("pod %s: hand over to %s: %w", p.name, peer, err)
	}
	// This array gave the pod up durably and serves it no more; the
	// call waits for the peer to take it.
	peer := r.arrayName(p.peer)
	select {
	case err = <-done:
	case <-ctx.Done():
		err = ctx.Err()
	}
	if err != nil {
		return fmt.Errorf("pod %s was handed over to array %s, which has not confirmed it takes it (%v): %w: it takes the pod when it next reaches this array; check 'metro pod list' on %s",
			p.name, peer, err, catalog.ErrConflict, peer)
	}
	r.log.Info("pod handed over", "pod", p.name, "to", peer)
	return nil
}

// removePeer removes the peer from the pod: at once if its copy is
// behind; otherwise once it confirmed it gave the pod up. The call waits
// for the outcome.
func (p *podRT) removePeer(ctx context.Context) error {
	r := p.r
	peer := r.arrayName(p.peer)
	changed := p.mode().changed
	if err := p.request(func(m *pod.Machine) ([]pod.Action, error) { return m.RemovePeer() }); err != nil {
		if errors.Is(err, pod.ErrPeerPreElected) {
			self := r.arrayName(r.cfg.ID)
			return fmt.Errorf("pod %s: %w: array %s is the pod's pre-elected array while the mediator is unavailable, and a removal whose answer was lost would leave the pod to nobody; move the pre-election first ('metro pod setattr --failover-preference %s %s', then wait until 'metro pod list' shows %s pre-elected) or wait for the mediator, then remove %s",
				p.name, catalog.ErrConflict, peer, self, p.name, self, peer)
		}
		if errors.Is(err, pod.ErrRefused) || errors.Is(err, pod.ErrBusy) {
			return fmt.Errorf("pod %s: %w: %v", p.name, catalog.ErrConflict, err)
		}
		return fmt.Errorf("pod %s: remove %s: %w", p.name, peer, err)
	}
	for {
		cp := r.env.Catalog().View().Pods[p.name]
		if cp == nil || len(cp.Arrays) < 2 {
			r.log.Info("pod unstretched", "pod", p.name, "removed", peer)
			return nil
		}
		md := p.mode()
		if md.state != pod.InSync && md.state != pod.Syncing && md.state != pod.Alone {
			return fmt.Errorf("pod %s: array %s did not confirm its removal: %w: the link was ended and the pod went through failover (%s here); check 'metro pod list' and try again",
				p.name, peer, catalog.ErrConflict, md.state)
		}
		select {
		case <-changed:
			changed = p.mode().changed
		case <-ctx.Done():
			return fmt.Errorf("pod %s: removal of %s under way: %w", p.name, peer, ctx.Err())
		case <-time.After(r.cfg.Timeout):
		}
	}
}

type unstretchMsg struct {
	Pod   string `json:"pod"`
	Array string `json:"array"`
	// Request: the sender asks the sequencer to remove Array.
	Request bool `json:"request,omitempty"`
	// Notice: the sender made the pod its own alone (the receiver, if it
	// still has a copy, gives it up).
	Notice bool `json:"notice,omitempty"`
}

// keepPending marks this array's copy of a pod pending eradication.
func (r *Replicator) keepPending(podName string, epoch uint64) error {
	return r.env.Catalog().Apply(catalog.SetPodPending{Name: podName, At: r.now(), Epoch: epoch})
}

func (r *Replicator) handleUnstretch(req link.Message) ([]byte, error) {
	var m unstretchMsg
	if err := json.Unmarshal(req.Payload, &m); err != nil {
		return nil, err
	}
	peer := r.peer()
	if peer == nil {
		return nil, fmt.Errorf("%w", ErrNoPeer)
	}
	cp := r.env.Catalog().View().Pods[m.Pod]
	switch {
	case m.Request:
		// The peer's administrator asks to remove an array; this array
		// orders the pod.
		p := r.pod(m.Pod)
		if cp == nil || cp.Pending != nil || p == nil || p.role() != pod.Sequencer || !hasArray(cp, peer.ID) {
			return r.refusedAnswer(req, refusef("pod %s is not a pod this array orders for the peer; try again", m.Pod)), nil
		}
		return mustJSON(answerOf(r.Unstretch(context.Background(), m.Pod, m.Array))), nil
	case m.Notice:
		// The peer made the pod its own alone at the message's epoch:
		// the hello's rule.
		if p, err := r.stretched(m.Pod); err == nil {
			rec := singleRecord(peer.ID, req.Epoch)
			p.event(func(mm *pod.Machine) []pod.Action { return mm.PeerRecord(rec, true, r.now()) })
		}
		return nil, nil
	default:
		// The sequencer removes this array: its machine decides, and
		// gives the copy up durably before the answer.
		if cp == nil || cp.Pending != nil {
			return nil, nil // gone or set aside already
		}
		if m.Array != r.cfg.Name {
			return nil, refusef("pod %s: array %s cannot remove array %s", m.Pod, peer.Name, m.Array)
		}
		_, unlock, err := r.podRequest(m.Pod, func(mm *pod.Machine) ([]pod.Action, error) { return mm.RemoveRequested(req.Epoch) })
		if err != nil {
			return nil, err
		}
		unlock()
		r.log.Info("this array was removed from the pod", "pod", m.Pod, "by", peer.Name)
		return nil, nil
	}
}

// handleHandover takes the pod the peer gave up (see package pod).
func (r *Replicator) handleHandover(req link.Message) error {
	var m podStateMsg
	if err := json.Unmarshal(req.Payload, &m); err != nil {
		return err
	}
	if p := r.pod(m.Pod); p != nil && p.id != m.ID {
		return refusef("pod %s: the handover is of another pod of that name", m.Pod)
	}
	_, unlock, err := r.podRequest(m.Pod, func(mm *pod.Machine) ([]pod.Action, error) { return mm.HandoverRequested(req.Epoch) })
	if err != nil {
		return err
	}
	unlock()
	r.log.Info("the peer handed the pod over to this array", "pod", m.Pod, "epoch", req.Epoch)
	return nil
}

// handlePodState answers with this array's record of a pod, and feeds
// this array's machine of the pod nothing: the asker's record comes with
// its own answer.
func (r *Replicator) handlePodState(req link.Message) ([]byte, error) {
	var m podStateMsg
	if err := json.Unmarshal(req.Payload, &m); err != nil {
		return nil, err
	}
	peer := r.peer()
	if peer == nil {
		return nil, fmt.Errorf("%w", ErrNoPeer)
	}
	if m.Notice {
		if p := r.pod(m.Pod); p != nil && p.id == m.ID {
			p.mu.Lock()
			p.mu.peerView = &m
			p.mu.Unlock()
		}
		return nil, nil
	}
	ans := podStateMsg{Pod: m.Pod, ID: m.ID, Mediator: r.mediatorUp()}
	cp := r.env.Catalog().View().Pods[m.Pod]
	switch {
	case cp != nil && cp.ID == m.ID && cp.Pending == nil && len(cp.Arrays) == 1 && cp.Arrays[0].ID == r.cfg.ID:
		// The pod is this array's alone: the peer's copy, if it has
		// one, is no longer part of it (a removal, or a handover this
		// array took).
		ans.Has = true
		ans.Record = singleRecord(r.cfg.ID, cp.Epoch)
	case cp != nil && cp.ID == m.ID && hasArray(cp, peer.ID) && (len(cp.Arrays) == 2 || cp.Pending != nil):
		ans.Has = true
		if p := r.pod(m.Pod); p != nil && p.id == m.ID {
			p.mu.Lock()
			ans.Record = p.mu.m.Record()
			p.mu.Unlock()
		} else {
			ans.Record = r.recordOf(cp)
		}
	}
	return mustJSON(ans), nil
}

// singleRecord is the record of a pod that is array id's alone from
// epoch, as the peer is told it.
func singleRecord(id string, epoch uint64) pod.Record {
	return pod.Record{Epoch: epoch, Sequencer: id, Synced: epoch, Alone: true, Single: true}
}

// handleStatus takes the peer's view of the mediator.
func (r *Replicator) handleStatus(req link.Message) error {
	var m statusMsg
	if err := json.Unmarshal(req.Payload, &m); err != nil {
		return err
	}
	r.mu.Lock()
	r.mu.peerMed, r.mu.peerMedKnown = m.Mediator, true
	r.mu.peerMedStatus = peerMediatorStatus(m)
	pods := r.podList()
	r.mu.Unlock()
	for _, p := range pods {
		p.event(func(mm *pod.Machine) []pod.Action { return mm.PeerMediatorUp(m.Mediator) })
	}
	return nil
}

// handleStretch refuses the retired msgStretch: the peer cannot take a
// pod of this array; only an administrator of the array that holds a
// pod stretches it (metro pod add), and that array then sends it.
func (r *Replicator) handleStretch() error {
	return refusef("array %s stretches a pod only when its administrator asks (metro pod add --array PEER POD on %s)", r.cfg.Name, r.cfg.Name)
}

// ArrayStatus is one array's status in a pod, as this array sees it.
type ArrayStatus struct {
	Name   string `json:"name"`
	ID     string `json:"id"`
	Status string `json:"status"`
}

// PodStatus is a pod's replication status as this array sees it.
type PodStatus struct {
	Arrays    []ArrayStatus `json:"arrays"`
	Sequencer string        `json:"sequencer"`
	Epoch     uint64        `json:"epoch"`
	// State is the machine's state here (package pod).
	State string `json:"state"`
	// PreElected names the pre-elected array ("" none).
	PreElected string `json:"pre_elected,omitempty"`
	// Mediator is the mediator's state as this array sees it.
	Mediator MediatorStatus `json:"-"`
	Progress *Progress      `json:"progress,omitempty"`
	Error    string         `json:"error,omitempty"`
	// Peer is the peer's view of the pod as it last told this array
	// (nil: not known).
	Peer *PeerView `json:"peer,omitempty"`
}

// PeerView is the peer's view of a pod as it last told this array.
type PeerView struct {
	Epoch      uint64
	Sequencer  string
	PreElected string
	// Mediator is the peer's view of the mediator: online or
	// unreachable ("" unknown).
	Mediator string
}

// Status returns a pod's status (nil when the pod is not stretched).
func (r *Replicator) Status(cp *catalog.Pod) *PodStatus {
	p := r.pod(cp.Name)
	if p == nil {
		return nil
	}
	md := p.mode()
	link := md.sess != nil
	p.mu.Lock()
	m := p.mu.m
	rec := m.Record()
	var prog *Progress
	if p.mu.progress != nil && (md.state == pod.Syncing || md.state == pod.Receiving) {
		c := *p.mu.progress
		prog = &c
	}
	lastErr := p.mu.lastErr
	prec, pok, pmed, pmedKnown := m.Peer()
	if v := p.mu.peerView; v != nil && link {
		// Its latest notice; the mediator's view comes with its status
		// messages, which the machine has.
		prec, pok = v.Record, v.Has
	}
	p.mu.Unlock()
	state := md.state
	if (state == pod.InSync || state == pod.Syncing) && !md.serving {
		state = pod.Suspended // the lease ran out; the link is ending
	}
	self := map[pod.State]string{
		pod.Syncing: catalog.StatusOnline, pod.InSync: catalog.StatusOnline, pod.Alone: catalog.StatusOnline,
		pod.Paused: catalog.StatusPaused, pod.Receiving: catalog.StatusResyncing, pod.Suspended: catalog.StatusOffline,
		pod.Left: catalog.StatusOffline,
	}[state]
	peer := catalog.StatusUnknown
	if link {
		switch state {
		case pod.Syncing:
			peer = catalog.StatusResyncing
		case pod.InSync, pod.Receiving:
			peer = catalog.StatusOnline
		case pod.Alone, pod.Left:
			peer = catalog.StatusOffline
		case pod.Suspended:
			if md.role == pod.Follower {
				peer = catalog.StatusOnline
			}
		}
	}
	ps := &PodStatus{Sequencer: r.arrayName(rec.Sequencer), Epoch: rec.Epoch, State: string(md.state), Progress: prog, Error: lastErr,
		PreElected: r.arrayName(rec.Pre), Mediator: r.mediatorStatus()}
	if rec.Pre == "" {
		ps.PreElected = ""
	}
	if pok {
		ps.Peer = &PeerView{Epoch: prec.Epoch, Sequencer: r.arrayName(prec.Sequencer)}
		if prec.Pre != "" {
			ps.Peer.PreElected = r.arrayName(prec.Pre)
		}
		if pmedKnown {
			ps.Peer.Mediator = MediatorUnreachable
			if pmed {
				ps.Peer.Mediator = MediatorOnline
			}
		}
	}
	for _, a := range cp.Arrays {
		s := peer
		if a.Name == r.cfg.Name {
			s = self
		}
		ps.Arrays = append(ps.Arrays, ArrayStatus{Name: a.Name, ID: a.ID, Status: s})
	}
	return ps
}

// Serving reports whether this array's paths to the pod are active now
// (it serves I/O, or holds it while the pod's state is decided), and
// whether the pod has a runtime (running): a stretched pod has none
// before the replicator starts it and after it stopped, and then is not
// served (Volume.rt).
func (r *Replicator) Serving(podName string) (serving, running bool) {
	p := r.pod(podName)
	if p == nil {
		return true, false
	}
	return p.mode().active, true
}

// PeerServing reports whether the peer serves I/O for the pod as far as
// this array knows (serving): in sync, or (this array not serving) when
// the peer owns the pod's epoch; and whether this array can know it
// (known). It cannot while the pod is paused (the race is being decided:
// the peer may be paused too, or have won and serve alone), suspended
// here with this array still owning the epoch it knows (its elect failed
// or was not made: the peer may have won), or in sync with its link
// session just ended (it is about to pause): the peer's paths are then
// neither said to work nor said not to (ALUA Transitioning), for a
// host's ALUA handler takes every array's word for every group, and
// would stop using the paths of a winner reported Unavailable by an
// array that has not heard of its win.
func (r *Replicator) PeerServing(podName string) (serving, known bool) {
	p := r.pod(podName)
	if p == nil {
		return false, true
	}
	md := p.mode()
	switch md.state {
	case pod.Paused:
		return false, false
	case pod.InSync:
		return md.sess != nil, md.sess != nil
	case pod.Suspended:
		return md.role == pod.Follower, md.role == pod.Follower
	case pod.Receiving, pod.Left:
		return md.role == pod.Follower, true
	}
	return false, true
}
