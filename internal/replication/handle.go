package replication

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/metro-storage/metro/internal/catalog"
	"github.com/metro-storage/metro/internal/link"
	"github.com/metro-storage/metro/internal/pod"
	"github.com/metro-storage/metro/internal/scsi"
	"github.com/metro-storage/metro/internal/store"
)

// handle serves the peer's requests.
func (r *Replicator) handle(ctx context.Context, req link.Message) (link.Message, error) {
	var out []byte
	var err error
	switch req.Type {
	case msgWrite, msgUnmap, msgBaseline:
		out, err = r.handleCopy(ctx, req)
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
	case msgRepair:
		out, err = r.handleRepair(ctx, req)
	case msgPeerRead:
		out, err = r.handlePeerRead(ctx, req)
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
		err = r.handleStretch()
	case msgHello:
		err = r.handleHello(req)
	default:
		err = refusef("unknown message type %d", req.Type)
	}
	if err != nil {
		// Nothing has changed here (see confine.go); the peer gets the
		// error and logs it too.
		r.log.Warn("refused a request from the peer", "request", msgName(req.Type), "epoch", req.Epoch, "err", err)
		return link.Message{}, fmt.Errorf("array %s: %s: %w", r.cfg.Name, msgName(req.Type), err)
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
	p, err := r.stretched(name)
	if err != nil {
		return nil, mode{}, err
	}
	if p.role != role {
		return nil, mode{}, refusef("pod %s: this array is the %s", name, p.role)
	}
	md := p.mode()
	if md.epoch != epoch {
		return nil, mode{}, errEpoch(name, epoch, md.epoch)
	}
	return p, md, nil
}

// indexVolumes rebuilds the UUID index of the volumes (after every
// configuration change), so the write path does one map lookup.
func (r *Replicator) indexVolumes(st *catalog.State) {
	m := make(map[string]volRef, len(st.Volumes))
	access := st.Access()
	for _, v := range st.Volumes {
		m[v.UUID] = volRef{name: v.Name, pod: v.Pod, size: v.Size, access: access, local: r.env.Store().Volume(v.DataID)}
	}
	r.vols.Store(&m)
	next := make(chan struct{})
	close(*r.volsChanged.Swap(&next))
}

func (r *Replicator) handleWrite(ctx context.Context, req link.Message) error {
	m, err := decodeWrite(req.Payload)
	if err != nil {
		return err
	}
	p, err := r.podAt(m.Pod, req.Epoch, pod.Follower)
	if err != nil {
		return err
	}
	if _, err := r.volumeOf(m.Pod, m.Volume); err != nil {
		return err
	}
	if req.Type == msgUnmap {
		v, md, err := r.volumeRange(ctx, m.Pod, req.Epoch, m.Volume, m.Off, m.Length)
		if err != nil {
			return err
		}
		err = v.local.Unmap(ctx, int64(m.Off), int64(m.Length))
		if md.state == pod.Receiving && errors.Is(err, store.ErrNoSpace) {
			err = fmt.Errorf("%w: %w", errReceivingNoRoom, err)
		}
		return err
	}
	data := m.Data
	var fw *forwarded
	if m.Ref != 0 {
		f, ok := r.refs.Load(m.Ref)
		if !ok {
			return fmt.Errorf("pod %s: write refers to unknown request %d", m.Pod, m.Ref)
		}
		fw = f.(*forwarded)
		if fw.pod != m.Pod || fw.uuid != m.Volume {
			return refusef("pod %s: a write to volume %s refers to request %d, sent for volume %s of pod %s", m.Pod, m.Volume, m.Ref, fw.uuid, fw.pod)
		}
		d := fw.data
		if m.RefOff > uint64(len(d)) || m.Length > uint64(len(d))-m.RefOff {
			return refusef("pod %s: write reference out of range", m.Pod)
		}
		data = d[m.RefOff : m.RefOff+m.Length]
	} else if uint64(len(data)) != m.Length {
		return refusef("pod %s: a write of %d bytes carries %d", m.Pod, m.Length, len(data))
	}
	if err := checkDamaged(m, req.Type, uint64(len(data))); err != nil {
		return err
	}
	// The mode as of the range check: a wait there may have seen the
	// grant.
	v, md, err := r.volumeRange(ctx, m.Pod, req.Epoch, m.Volume, m.Off, uint64(len(data)))
	if err != nil {
		return err
	}
	switch {
	case len(m.Damaged) > 0:
		err = r.writeDamaged(ctx, m, v, md.state != pod.Receiving)
	case md.state == pod.Receiving:
		// This copy serves nothing until the grant, which syncs the
		// store first; a crash before it means a fresh copy anyway.
		err = v.local.WriteAtNoSync(ctx, data, int64(m.Off))
	default:
		err = v.local.WriteAt(ctx, data, int64(m.Off))
	}
	if err != nil {
		if md.state == pod.Receiving && errors.Is(err, store.ErrNoSpace) {
			err = fmt.Errorf("%w: %w", errReceivingNoRoom, err)
		}
		return err
	}
	if req.Type == msgBaseline {
		p.received(int64(len(data)))
	}
	if fw != nil && md.state != pod.Receiving {
		fw.add(&fw.applied, int64(len(data)))
	}
	return nil
}

// copyNoSpace opens the answer to a copied piece (msgBaseline), or to a
// write or unmap mirrored while this array receives a copy, that this
// array has no room for; the reason follows. An empty answer: stored.
const copyNoSpace byte = 1

// errReceivingNoRoom marks a mirrored write or unmap that this array,
// receiving a copy, has no room for.
var errReceivingNoRoom = errors.New("no room while receiving a copy")

// handleCopy applies a copied piece, or a mirrored write or unmap. A
// piece this array has no room for, or a write or unmap while it
// receives a copy, is answered, not refused: the sequencer's copy then
// waits and tries again (the write's blocks among them) while this array,
// which serves nothing of the pod until the copy is complete, frees
// space; a refusal would end the link session, for every pod, at every
// try (and at every host write).
func (r *Replicator) handleCopy(ctx context.Context, req link.Message) ([]byte, error) {
	err := r.handleWrite(ctx, req)
	if req.Type != msgBaseline {
		if errors.Is(err, errReceivingNoRoom) {
			// The copy's own retries say why, at their pace.
			return append([]byte{copyNoSpace}, err.Error()...), nil
		}
		return nil, err
	}
	if !errors.Is(err, store.ErrNoSpace) {
		return nil, err
	}
	podName := ""
	if m, derr := decodeWrite(req.Payload); derr == nil {
		podName = m.Pod
	}
	r.log.Error("no room on this array for the pod's copy: the copy waits until space is freed here (unmap or delete volumes, or raise the capacity)",
		"pod", podName, "err", err)
	return append([]byte{copyNoSpace}, err.Error()...), nil
}

// checkDamaged checks the damaged blocks a message of type typ with n
// bytes of data lists: only a copied piece (msgBaseline, data carried in
// the message) has any, each a run of whole blocks inside the piece.
func checkDamaged(m *writeMsg, typ uint16, n uint64) error {
	if len(m.Damaged) == 0 {
		return nil
	}
	if typ != msgBaseline || m.Ref != 0 {
		return refusef("pod %s: only a copied piece may list damaged blocks", m.Pod)
	}
	return checkExtents(m, n)
}

// checkExtents checks that the damaged blocks m lists are runs of whole
// blocks inside its n bytes from m.Off.
func checkExtents(m *writeMsg, n uint64) error {
	for _, x := range m.Damaged {
		if x.Length == 0 || x.Off%store.BlockSize != 0 || x.Length%store.BlockSize != 0 ||
			x.Off < m.Off || x.Off-m.Off > n || x.Length > n-(x.Off-m.Off) {
			return refusef("pod %s: damaged blocks %d+%d are not whole blocks of the copied piece %d+%d", m.Pod, x.Off, x.Length, m.Off, n)
		}
	}
	return nil
}

// writeDamaged writes a copied piece whose damaged blocks on the
// sequencer are recorded damaged here too, in the same batch as its good
// blocks (durably when sync): reads of them answer MEDIUM ERROR on this
// array as on the sequencer, until a host rewrites them.
func (r *Replicator) writeDamaged(ctx context.Context, m *writeMsg, v volRef, sync bool) error {
	b := r.env.Store().NewBatch()
	if err := b.WriteAt(v.local, m.Data, int64(m.Off)); err != nil {
		return err
	}
	for _, x := range m.Damaged {
		if err := b.MarkDamaged(v.local, int64(x.Off), int64(x.Length)); err != nil {
			return err
		}
		r.log.Error("the peer's copy of these blocks is damaged; they are recorded damaged here too (MEDIUM ERROR on both arrays): rewrite them from a backup or let the host rewrite them",
			"pod", m.Pod, "volume", v.name, "lba", x.Off/store.BlockSize, "blocks", x.Length/store.BlockSize, "last_lba", (x.Off+x.Length)/store.BlockSize-1)
	}
	if sync {
		return b.Commit()
	}
	return b.CommitNoSync(ctx)
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
		if fw.pod != m.Pod {
			return refusef("pod %s: request %d was sent for pod %s", m.Pod, m.Ref, fw.pod)
		}
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
	v, err := r.volumeOf(m.Pod, m.Volume)
	if err != nil {
		return nil, err
	}
	if err := r.checkNexus(m.Pod, v, m.Cmd.Nexus, m.Cmd.CDB); err != nil {
		return nil, err
	}
	lu, err := r.podLU(m.Pod, m.Volume)
	if err != nil {
		return nil, err
	}
	ctx = context.WithValue(ctx, originKey{}, &origin{id: m.ID, data: m.Cmd.DataOut})
	res := r.env.Target().ExecuteForwarded(ctx, lu, &m.Cmd)
	return encodeResult(res), nil
}

// stretched returns the runtime of a pod stretched to the peer.
func (r *Replicator) stretched(name string) (*podRT, error) {
	p := r.pod(name)
	if peer := r.peer(); p == nil || peer == nil || p.peer != peer.ID {
		return nil, refusef("pod %s is not stretched to the peer on this array", name)
	}
	return p, nil
}

// podLU returns the logical unit of the pod's volume with the UUID.
func (r *Replicator) podLU(podName, uuid string) (*scsi.LogicalUnit, error) {
	if _, err := r.volumeOf(podName, uuid); err != nil {
		return nil, err
	}
	lu := r.env.LU(uuid)
	if lu == nil {
		return nil, fmt.Errorf("pod %s has no live volume %s here", podName, uuid)
	}
	return lu, nil
}

func (r *Replicator) handleReservations(ctx context.Context, req link.Message) error {
	var m reservationsMsg
	if err := json.Unmarshal(req.Payload, &m); err != nil {
		return err
	}
	if _, err := r.podAt(m.Pod, req.Epoch, pod.Follower); err != nil {
		return err
	}
	lu, err := r.podLU(m.Pod, m.Volume)
	if err != nil {
		return err
	}
	return lu.InstallReservations(ctx, m.Update)
}

func (r *Replicator) handleReset(ctx context.Context, req link.Message) error {
	var m resetMsg
	if err := json.Unmarshal(req.Payload, &m); err != nil {
		return err
	}
	p, err := r.stretched(m.Pod)
	if err != nil {
		return err
	}
	if md := p.mode(); md.epoch != req.Epoch {
		return errEpoch(m.Pod, req.Epoch, md.epoch)
	}
	lu, err := r.podLU(m.Pod, m.Volume)
	if err != nil {
		return err
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
	if err := r.checkPeerConfig(&m.Config, true); err != nil {
		return nil, err
	}
	cat := r.env.Catalog()
	before := cat.View()
	// Refuse a resync the machine would refuse before anything changes.
	if p := r.pod(name); p != nil && p.id == m.Config.Pod.ID {
		if p.role != pod.Follower {
			return nil, refusef("pod %s: resync requested of its sequencer", name)
		}
		if md := p.mode(); req.Epoch <= md.epoch {
			return nil, refusef("pod %s: resync at epoch %d, already at %d", name, req.Epoch, md.epoch)
		}
	} else if cur, ok := before.Pods[name]; ok && cur.ID == m.Config.Pod.ID && req.Epoch <= cur.Epoch {
		return nil, refusef("pod %s: resync at epoch %d, already at %d", name, req.Epoch, cur.Epoch)
	}
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
	p, md, err := r.podMode(m.Pod, req.Epoch, pod.Follower)
	if err != nil {
		return err
	}
	if md.state != pod.Receiving {
		return refusef("pod %s: in-sync grant in state %s", m.Pod, md.state)
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
	peer := r.peer()
	if peer == nil || m.ID != peer.ID {
		return refusef("hello from array %s (%s), this array is paired with another", m.Name, m.ID)
	}
	st := r.env.Catalog().View()
	for _, p := range st.SortedPods() {
		if !r.peerOrders(p, peer) {
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
