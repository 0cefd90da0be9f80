package replication

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/metro-storage/metro/internal/catalog"
	"github.com/metro-storage/metro/internal/link"
	"github.com/metro-storage/metro/internal/pod"
	"github.com/metro-storage/metro/internal/store"
)

// handle serves the peer's requests.
func (r *Replicator) handle(ctx context.Context, req link.Message) (link.Message, error) {
	var out []byte
	var err error
	switch req.Type {
	case msgWrite, msgUnmap, msgBaseline:
		err = r.handleWrite(ctx, req)
	case msgForward:
		out, err = r.handleForward(ctx, req)
	case msgReservations:
		err = r.handleReservations(ctx, req)
	case msgReset:
		err = r.handleReset(ctx, req)
	case msgResync:
		out, err = r.handleResync(ctx, req)
	case msgCheckpoint:
		err = r.handleCheckpoint(req)
	case msgWritten:
		err = r.handleWritten(req)
	case msgGrant:
		err = r.handleGrant(req)
	case msgConfig:
		out, err = r.handleConfig(ctx, req)
	case msgApplyConfig:
		err = r.handleApplyConfig(req)
	case msgCheckStretch:
		err = r.handleCheckStretch(req)
	case msgUnstretch:
		out, err = r.handleUnstretch(req)

	case msgStretch:
		out, err = r.handleStretch(ctx, req)
	case msgHello:
		err = r.handleHello(req)
	default:
		err = fmt.Errorf("unknown message type %d", req.Type)
	}
	if err != nil {
		return link.Message{}, err
	}
	return link.Message{Type: req.Type, Epoch: req.Epoch, Payload: out}, nil
}

// podAt returns the runtime of a stretched pod whose epoch is epoch and
// whose role here is role.
func (r *Replicator) podAt(name string, epoch uint64, role pod.Role) (*podRT, error) {
	p, _, err := r.podMode(name, epoch, role)
	return p, err
}

// podMode is podAt that also returns the pod's mode it checked.
func (r *Replicator) podMode(name string, epoch uint64, role pod.Role) (*podRT, mode, error) {
	p := r.pod(name)
	if p == nil {
		return nil, mode{}, fmt.Errorf("pod %s is not stretched to this array", name)
	}
	if p.role != role {
		return nil, mode{}, fmt.Errorf("pod %s: this array is the %s", name, p.role)
	}
	md := p.mode()
	if md.epoch != epoch {
		return nil, mode{}, errEpoch(name, epoch, md.epoch)
	}
	return p, md, nil
}

// localVolume returns the store volume of the pod's volume with the UUID.
func (r *Replicator) localVolume(podName, uuid string) (*store.Volume, error) {
	if m := r.vols.Load(); m != nil {
		if v, ok := (*m)[uuid]; ok && v.pod == podName {
			return v.local, nil
		}
	}
	return nil, fmt.Errorf("pod %s has no volume %s here", podName, uuid)
}

// volRef is a volume's pod and local blocks, by UUID.
type volRef struct {
	pod   string
	local *store.Volume
}

// indexVolumes rebuilds the UUID index of the volumes (after every
// configuration change), so the write path does one map lookup.
func (r *Replicator) indexVolumes(st *catalog.State) {
	m := make(map[string]volRef, len(st.Volumes))
	for _, v := range st.Volumes {
		m[v.UUID] = volRef{pod: v.Pod, local: r.env.Store().Volume(v.DataID)}
	}
	r.vols.Store(&m)
}

func (r *Replicator) handleWrite(ctx context.Context, req link.Message) error {
	m, err := decodeWrite(req.Payload)
	if err != nil {
		return err
	}
	p, md, err := r.podMode(m.Pod, req.Epoch, pod.Follower)
	if err != nil {
		return err
	}
	vol, err := r.localVolume(m.Pod, m.Volume)
	if err != nil {
		return err
	}
	if req.Type == msgUnmap {
		return vol.Unmap(ctx, int64(m.Off), int64(m.Length))
	}
	data := m.Data
	var fw *forwarded
	if m.Ref != 0 {
		v, ok := r.refs.Load(m.Ref)
		if !ok {
			return fmt.Errorf("pod %s: write refers to unknown request %d", m.Pod, m.Ref)
		}
		fw = v.(*forwarded)
		d := fw.data
		if m.RefOff > uint64(len(d)) || m.Length > uint64(len(d))-m.RefOff {
			return fmt.Errorf("pod %s: write reference out of range", m.Pod)
		}
		data = d[m.RefOff : m.RefOff+m.Length]
	}
	if req.Type == msgBaseline {
		p.received(int64(len(data)))
	}
	if md.state == pod.Receiving {
		// This copy serves nothing until the grant, which syncs the
		// store first; a crash before it means a fresh copy anyway.
		return vol.WriteAtNoSync(ctx, data, int64(m.Off))
	}
	if err := vol.WriteAt(ctx, data, int64(m.Off)); err != nil {
		return err
	}
	if fw != nil {
		fw.add(&fw.applied, int64(len(data)))
	}
	return nil
}

// handleWritten counts bytes of a forwarded write the sequencer's copy
// holds.
func (r *Replicator) handleWritten(req link.Message) error {
	m, err := decodeWritten(req.Payload)
	if err != nil {
		return err
	}
	if _, err := r.podAt(m.Pod, req.Epoch, pod.Follower); err != nil {
		return err
	}
	if v, ok := r.refs.Load(m.Ref); ok {
		fw := v.(*forwarded)
		fw.add(&fw.confirmed, int64(m.Length))
	}
	return nil
}

func (r *Replicator) handleForward(ctx context.Context, req link.Message) ([]byte, error) {
	m, err := decodeForward(req.Payload)
	if err != nil {
		return nil, err
	}
	p, err := r.podAt(m.Pod, req.Epoch, pod.Sequencer)
	if err != nil {
		return nil, err
	}
	if !p.mode().serving {
		return nil, fmt.Errorf("pod %s is not served here", m.Pod)
	}
	lu := r.env.LU(m.Volume)
	if lu == nil {
		return nil, fmt.Errorf("pod %s has no volume %s here", m.Pod, m.Volume)
	}
	ctx = context.WithValue(ctx, originKey{}, &origin{id: m.ID, data: m.Cmd.DataOut})
	res := r.env.Target().ExecuteForwarded(ctx, lu, &m.Cmd)
	return encodeResult(res), nil
}

func (r *Replicator) handleReservations(ctx context.Context, req link.Message) error {
	var m reservationsMsg
	if err := json.Unmarshal(req.Payload, &m); err != nil {
		return err
	}
	if _, err := r.podAt(m.Pod, req.Epoch, pod.Follower); err != nil {
		return err
	}
	lu := r.env.LU(m.Volume)
	if lu == nil {
		return fmt.Errorf("pod %s has no volume %s here", m.Pod, m.Volume)
	}
	return lu.InstallReservations(ctx, m.Update)
}

func (r *Replicator) handleReset(ctx context.Context, req link.Message) error {
	var m resetMsg
	if err := json.Unmarshal(req.Payload, &m); err != nil {
		return err
	}
	p := r.pod(m.Pod)
	if p == nil {
		return fmt.Errorf("pod %s is not stretched to this array", m.Pod)
	}
	if md := p.mode(); md.epoch != req.Epoch {
		return errEpoch(m.Pod, req.Epoch, md.epoch)
	}
	lu := r.env.LU(m.Volume)
	if lu == nil {
		return fmt.Errorf("pod %s has no volume %s here", m.Pod, m.Volume)
	}
	lu.ResetFromPeer(ctx, m.LUNReset)
	return nil
}

// handleResync installs the pod's configuration, clears this array's
// copy and starts receiving (follower).
func (r *Replicator) handleResync(ctx context.Context, req link.Message) ([]byte, error) {
	var m resyncMsg
	if err := json.Unmarshal(req.Payload, &m); err != nil {
		return nil, err
	}
	name := m.Config.Pod.Name
	if m.Config.Pod.Sequencer == r.cfg.Name {
		return nil, fmt.Errorf("pod %s: resync requested of its sequencer", name)
	}
	cat := r.env.Catalog()
	before := cat.View()
	// The pod's epoch here moves to the resync's only once the machine
	// has accepted it.
	cfg := m.Config
	cfg.Pod.Epoch = 0
	if cur, ok := before.Pods[name]; ok && cur.ID == cfg.Pod.ID {
		cfg.Pod.Epoch = cur.Epoch
	}
	if err := cat.Apply(catalog.InstallPod{Config: cfg}); err != nil {
		return nil, fmt.Errorf("pod %s cannot be stretched to array %s: %w", name, r.cfg.Name, err)
	}
	after := cat.View()
	p := r.pod(name)
	if p == nil {
		return nil, fmt.Errorf("pod %s: not stretched here after install", name)
	}
	var acts []pod.Action
	var rerr error
	p.mu.Lock()
	acts, rerr = p.mu.m.ResyncRequested(req.Epoch)
	p.mu.Unlock()
	if rerr != nil {
		return nil, fmt.Errorf("pod %s: %w", name, rerr)
	}
	// Resume when this array's copy is the one the sequencer tracked
	// changes against; otherwise discard it before the first block of
	// the new one may arrive (the sequencer sends none before this
	// answer).
	ans := resumeAnswer{}
	if c, ok := r.loadCursor(p.id); ok && m.ResumeFrom != 0 && c.Epoch == m.ResumeFrom {
		ans = resumeAnswer{Resume: true, Cursor: c}
	}
	if !ans.Resume {
		for _, v := range after.PodVolumes(name) {
			if err := r.env.Store().DeleteVolume(v.DataID); err != nil {
				return nil, fmt.Errorf("pod %s: clear %s: %w", name, v.Name, err)
			}
		}
	}
	next := cursor{Epoch: req.Epoch}
	if ans.Resume {
		next = ans.Cursor
		next.Epoch = req.Epoch
	}
	if err := r.saveCursor(p.id, next); err != nil {
		return nil, err
	}
	cp := cat.View().Pods[name]
	if err := cat.Apply(catalog.SetPodMembership{Name: name, Arrays: cp.Arrays, Sequencer: cp.Sequencer, Epoch: req.Epoch}); err != nil {
		return nil, err
	}
	p.mu.Lock()
	p.mu.progress = &Progress{}
	p.mu.Unlock()
	p.queue(acts)
	if ans.Resume {
		r.log.Info("resuming the copy", "pod", name, "epoch", req.Epoch, "from_epoch", m.ResumeFrom, "volume", ans.Cursor.Volume, "offset", ans.Cursor.Off, "complete", ans.Cursor.Complete)
	} else {
		r.log.Info("receiving a fresh copy", "pod", name, "epoch", req.Epoch)
	}
	return mustJSON(ans), nil
}

func (r *Replicator) handleGrant(req link.Message) error {
	var m grantMsg
	if err := json.Unmarshal(req.Payload, &m); err != nil {
		return err
	}
	p := r.pod(m.Pod)
	if p == nil {
		return fmt.Errorf("pod %s is not stretched to this array", m.Pod)
	}
	// Everything received while the copy was made is made durable
	// before this array may serve it, and the copy is recorded complete.
	if err := r.saveCursor(p.id, cursor{Epoch: req.Epoch, Complete: true}); err != nil {
		return fmt.Errorf("pod %s: %w", m.Pod, err)
	}
	p.mu.Lock()
	acts, err := p.mu.m.GrantedInSync(req.Epoch)
	p.mu.Unlock()
	if err != nil {
		return fmt.Errorf("pod %s: %w", m.Pod, err)
	}
	p.queue(acts)
	r.log.Info("pod in sync", "pod", m.Pod, "epoch", req.Epoch)
	return nil
}

// hello tells the peer which pods this array has stretched with it.
func (r *Replicator) hello(s *link.Session) {
	st := r.env.Catalog().View()
	m := helloMsg{Name: r.cfg.Name, ID: r.cfg.ID}
	for _, p := range st.SortedPods() {
		if len(p.Arrays) > 1 && p.Pending == nil {
			m.Pods = append(m.Pods, helloPod{Pod: p.Name, ID: p.ID, Epoch: p.Epoch, Sequencer: p.Sequencer})
		}
	}
	if err := callJSON(context.Background(), s, msgHello, 0, m, nil); err != nil {
		r.log.Warn("hello to the peer", "err", err)
	}
}

// handleHello sets aside this array's copy of every pod whose sequencer
// is the peer and which the peer no longer has stretched here (it was
// unstretched while the arrays could not talk).
func (r *Replicator) handleHello(req link.Message) error {
	var m helloMsg
	if err := json.Unmarshal(req.Payload, &m); err != nil {
		return err
	}
	st := r.env.Catalog().View()
	for _, p := range st.SortedPods() {
		if len(p.Arrays) < 2 || p.Pending != nil || p.Sequencer != m.Name {
			continue
		}
		found := false
		for _, ps := range m.Pods {
			if ps.ID == p.ID {
				found = true
			}
		}
		if !found {
			r.log.Warn("the pod was unstretched from this array while the link was down; keeping the copy pending eradication", "pod", p.Name)
			if err := r.keepPending(p.Name, p.Epoch); err != nil {
				return err
			}
		}
	}
	return nil
}
