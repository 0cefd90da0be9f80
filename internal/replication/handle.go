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
	case msgAnswered:
		err = r.handleAnswered(req)
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

	case msgPodState:
		out, err = r.handlePodState(req)
	case msgPreElect:
		err = r.handlePreElect(req)
	case msgHandover:
		err = r.handleHandover(req)
	case msgStatus:
		err = r.handleStatus(req)
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
	md := p.mode()
	if md.role != role {
		return nil, mode{}, refusef("pod %s: this array is the %s", name, md.role)
	}
	if md.epoch != epoch {
		return nil, mode{}, errEpoch(name, epoch, md.epoch)
	}
	return p, md, nil
}

// applying checks a message of the peer for a pod at epoch (this array in
// role) and holds the pod's barrier shared until done is called: the
// check and the apply are one step, so no message of an older epoch is
// applied once a newer one is accepted (package pod).
func (r *Replicator) applying(name string, epoch uint64, role pod.Role) (*podRT, mode, func(), error) {
	p, err := r.stretched(name)
	if err != nil {
		return nil, mode{}, nil, err
	}
	p.applyMu.RLock()
	_, md, err := r.podMode(name, epoch, role)
	if err != nil {
		p.applyMu.RUnlock()
		return nil, mode{}, nil, err
	}
	return p, md, p.applyMu.RUnlock, nil
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

// handleWrite applies a mirrored write, unmap or copied piece at the
// follower and answers writeDurable when it made it durable (the pod is
// served here), nothing when it wrote without syncing (a copy being
// received, synced at the next checkpoint or the grant).
func (r *Replicator) handleWrite(ctx context.Context, req link.Message) ([]byte, error) {
	m, err := decodeWrite(req.Payload)
	if err != nil {
		return nil, err
	}
	if _, err := r.podAt(m.Pod, req.Epoch, pod.Follower); err != nil {
		return nil, err
	}
	if _, err := r.volumeOf(m.Pod, m.Volume); err != nil {
		return nil, err
	}
	data := m.Data
	var fw *forwarded
	if req.Type != msgUnmap && m.Ref != 0 {
		f, ok := r.refs.Load(m.Ref)
		if !ok {
			return nil, fmt.Errorf("pod %s: write refers to unknown request %d", m.Pod, m.Ref)
		}
		fw = f.(*forwarded)
		if fw.pod != m.Pod || fw.uuid != m.Volume {
			return nil, refusef("pod %s: a write to volume %s refers to request %d, sent for volume %s of pod %s", m.Pod, m.Volume, m.Ref, fw.uuid, fw.pod)
		}
		d := fw.data
		if m.RefOff > uint64(len(d)) || m.Length > uint64(len(d))-m.RefOff {
			return nil, refusef("pod %s: write reference out of range", m.Pod)
		}
		data = d[m.RefOff : m.RefOff+m.Length]
	} else if req.Type != msgUnmap && uint64(len(data)) != m.Length {
		return nil, refusef("pod %s: a write of %d bytes carries %d", m.Pod, m.Length, len(data))
	}
	if err := checkDamaged(m, req.Type, uint64(len(data))); err != nil {
		return nil, err
	}
	n := m.Length
	if req.Type != msgUnmap {
		n = uint64(len(data))
	}
	// A range beyond the volume may wait for the configuration that
	// grows it; then the message is checked again and applied under the
	// pod's barrier, at the state and epoch of that check.
	if _, _, err := r.volumeRange(ctx, m.Pod, req.Epoch, m.Volume, m.Off, n); err != nil {
		return nil, err
	}
	p, md, done, err := r.applying(m.Pod, req.Epoch, pod.Follower)
	if err != nil {
		return nil, err
	}
	defer done()
	v, err := r.volumeOf(m.Pod, m.Volume)
	if err == nil {
		err = checkRange(m.Pod, v, m.Off, n)
	}
	if err != nil {
		return nil, err
	}
	if md.state != pod.Receiving && md.state != pod.InSync {
		return nil, refusef("pod %s: a write in state %s", m.Pod, md.state)
	}
	if r.applyHook != nil {
		r.applyHook(m)
	}
	receiving := md.state == pod.Receiving
	durable := !receiving
	switch {
	case req.Type == msgUnmap:
		err = v.local.Unmap(ctx, int64(m.Off), int64(m.Length)) // always synced
		durable = true
	case len(m.Damaged) > 0:
		err = r.writeDamaged(ctx, m, v, durable)
	case !durable:
		// This copy serves nothing until the grant, which syncs the
		// store first; a crash before it means a fresh copy anyway.
		err = v.local.WriteAtNoSync(ctx, data, int64(m.Off))
	default:
		err = v.local.WriteAt(ctx, data, int64(m.Off))
	}
	if err != nil {
		r.noteWrite(ctx, m.Volume, m.Off, n) // it may have changed part of them
		if receiving && errors.Is(err, store.ErrNoSpace) {
			err = fmt.Errorf("%w: %w", errReceivingNoRoom, err)
		}
		return nil, err
	}
	if req.Type == msgBaseline {
		p.received(int64(len(data)))
	}
	r.noteWrite(r.withOwn(r.withOrigin(ctx, m.Pod, m.Volume, m.Ref), ctx, m.OwnID, ownIdentity(m.Own)), m.Volume, m.Off, n)
	if fw != nil && durable {
		fw.add(&fw.applied, int64(len(data)))
	}
	if durable {
		return []byte{writeDurable}, nil
	}
	return nil, nil
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
	out, err := r.handleWrite(ctx, req)
	if req.Type != msgBaseline {
		if errors.Is(err, errReceivingNoRoom) {
			// The copy's own retries say why, at their pace.
			return append([]byte{copyNoSpace}, err.Error()...), nil
		}
		return out, err
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
	ctx, answered := r.answering(ctx, m)
	ctx = context.WithValue(ctx, originKey{}, &origin{id: m.ID, data: m.Cmd.DataOut})
	res := r.env.Target().ExecuteForwarded(ctx, lu, &m.Cmd)
	answered(res)
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
	_, _, done, err := r.applying(m.Pod, req.Epoch, pod.Follower)
	if err != nil {
		return err
	}
	defer done()
	lu, err := r.podLU(m.Pod, m.Volume)
	if err != nil {
		return err
	}
	return lu.InstallReservations(r.withOwn(r.withOrigin(ctx, m.Pod, m.Volume, m.Origin), ctx, m.OwnID, m.Own), m.Update)
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

// acceptedAlready reports whether rec, this array's stored record of a
// pod it holds no runtime of, is its durable acceptance of the peer's
// proposal at epoch: the handler that accepted it stopped (a crash, a
// failed install) before the pod's configuration was installed, and the
// peer proposes the same epoch again, not knowing. Taking it up lets the
// copy go ahead; refusing it as an old proposal would refuse it for
// ever. No copy is lost by it: a pod without a runtime serves nothing,
// and a copy set aside has a record that left.
func acceptedAlready(rec pod.Record, stored bool, peer string, epoch uint64) bool {
	return stored && !rec.Left && rec.Epoch == epoch && rec.Sequencer == peer && rec.Synced < rec.Epoch
}

// handleResync accepts the peer's proposal to give this array a copy of
// a pod at the message's epoch: the machine decides first (only from a
// state that neither serves nor races, at a later epoch), the record is
// persisted, and only then is the pod's configuration installed and the
// copy cleared or kept to resume (package pod: nothing from a peer
// changes state before its epoch is accepted). A refusal is an answer
// that says why and this array's epoch.
func (r *Replicator) handleResync(ctx context.Context, req link.Message) ([]byte, error) {
	var m resyncMsg
	if err := json.Unmarshal(req.Payload, &m); err != nil {
		return nil, err
	}
	name, id := m.Config.Pod.Name, m.Config.Pod.ID
	if err := r.checkPeerConfig(&m.Config, true, false); err != nil {
		return nil, err
	}
	peer := r.peer()
	cat := r.env.Catalog()
	refuse := func(err error, epoch uint64) ([]byte, error) {
		return nil, fmt.Errorf("pod %s (at epoch %d here): %w", name, epoch, err)
	}
	if cur := cat.View().Pods[name]; cur != nil && cur.ID == id && cur.Pending == nil && !hasArray(cur, peer.ID) {
		return nil, refusef("pod %s is not ordered by array %s here", name, peer.Name)
	}
	cfg := m.Config
	cfg.Pod.Epoch = req.Epoch
	// Everything but who orders the pod is checked before anything
	// changes; who orders it is the machine's to accept (its record
	// then moves the catalog's sequencer to the peer).
	check := cfg
	if cur := cat.View().Pods[name]; cur != nil && cur.ID == id && cur.Pending == nil {
		check.Pod.Sequencer = cur.Sequencer
	}
	if err := cat.View().CheckInstall(&check); err != nil {
		return nil, fmt.Errorf("pod %s cannot be stretched to array %s: %w", name, r.cfg.Name, err)
	}
	p := r.pod(name)
	if p != nil && p.id != id {
		return nil, refusef("pod %s: this array has another pod of that name", name)
	}
	var prior pod.Record
	if p == nil {
		// The pod is new here, or a copy set aside: decide on its stored
		// record (none: no copy), and persist the acceptance before the
		// configuration makes the pod's runtime start.
		rec, ok := r.loadRecord(id)
		stored := ok
		if cur := cat.View().Pods[name]; !ok && cur != nil && cur.ID == id {
			rec, ok = r.recordOf(cur), true
		}
		if !ok {
			rec = pod.Record{Sequencer: peer.ID, Left: true}
		}
		prior = rec
		var acts []pod.Action
		if !acceptedAlready(rec, stored, peer.ID, req.Epoch) {
			tmp := pod.New(pod.Config{Self: r.cfg.ID, Peer: peer.ID, Timeout: r.cfg.Timeout}, rec, r.now())
			var err error
			if acts, err = tmp.ResyncRequested(req.Epoch); err != nil {
				return refuse(err, rec.Epoch)
			}
		}
		for _, a := range acts {
			if a.Kind == pod.Persist {
				if err := r.saveRecord(name, id, a.Record, false); err != nil {
					return nil, fmt.Errorf("pod %s: %w", name, err)
				}
			}
		}
		if err := cat.Apply(catalog.InstallPod{Config: cfg}); err != nil {
			return nil, fmt.Errorf("pod %s cannot be stretched to array %s: %w", name, r.cfg.Name, err)
		}
		if p = r.pod(name); p == nil {
			return nil, fmt.Errorf("pod %s: not stretched here after install", name)
		}
		p.applyMu.Lock()
		defer p.applyMu.Unlock()
		// The runtime started behind at the accepted epoch: receiving.
		if err := p.request(func(mm *pod.Machine) ([]pod.Action, error) { return mm.ReceiveAccepted(req.Epoch) }); err != nil {
			return nil, fmt.Errorf("pod %s: %w", name, err)
		}
	} else {
		p.applyMu.Lock()
		defer p.applyMu.Unlock()
		p.mu.Lock()
		prior = p.mu.m.Record()
		p.mu.Unlock()
		if err := p.request(func(mm *pod.Machine) ([]pod.Action, error) { return mm.ResyncRequested(req.Epoch) }); err != nil {
			return refuse(err, prior.Epoch)
		}
		if err := cat.Apply(catalog.InstallPod{Config: cfg}); err != nil {
			return nil, fmt.Errorf("pod %s: install the configuration: %w", name, err)
		}
	}
	// This array's own replicated operations on the pod, begun while it
	// served it, end first (they hold ioMu shared from their start to
	// their tracking; the machine no longer lets a new one write): their
	// regions are then tracked, or the copy is cleared after them.
	p.ioMu.Lock()
	defer p.ioMu.Unlock()
	// Resume when this array's copy is the one the sequencer tracked
	// changes against: complete and identical at that epoch (it was in
	// sync then), or a copy under way whose cursor is of that epoch; and
	// this array's own record of what it wrote that the sequencer may
	// lack holds from then. Otherwise discard the copy before the first
	// block of the new one may arrive (the sequencer sends none before
	// this answer).
	ans := resumeAnswer{}
	p.mu.Lock()
	own := p.mu.track
	p.mu.Unlock()
	ownOK := own.from == m.ResumeFrom
	c, hasCursor := r.loadCursor(id)
	switch {
	case m.ResumeFrom == 0 || !ownOK:
	case prior.Synced == m.ResumeFrom:
		ans = resumeAnswer{Resume: true, Cursor: cursor{Epoch: m.ResumeFrom, Complete: true}}
	case hasCursor && c.Epoch == m.ResumeFrom:
		ans = resumeAnswer{Resume: true, Cursor: c}
	}
	if ans.Resume {
		mine := regions{}
		mine.merge(own.dirty)
		mine.merge(own.recent)
		ans.Volumes, ans.Regions = listRegions(mine)
	} else {
		for _, v := range cat.View().PodVolumes(name) {
			if err := r.env.Store().DeleteVolume(v.DataID); err != nil {
				return nil, fmt.Errorf("pod %s: clear %s: %w", name, v.Name, err)
			}
		}
	}
	r.forgetOutcomes(name)
	next := cursor{Epoch: req.Epoch}
	if ans.Resume {
		next = ans.Cursor
		next.Epoch = req.Epoch
	}
	if err := r.saveCursor(id, next); err != nil {
		return nil, err
	}
	p.mu.Lock()
	p.mu.progress = &Progress{}
	p.mu.track = noTracking()
	p.mu.Unlock()
	if ans.Resume {
		r.log.Info("resuming the copy", "pod", name, "epoch", req.Epoch, "from_epoch", m.ResumeFrom, "volume", ans.Cursor.Volume,
			"offset", ans.Cursor.Off, "complete", ans.Cursor.Complete, "own_regions", len(ans.Regions))
	} else {
		r.log.Info("receiving a fresh copy", "pod", name, "epoch", req.Epoch)
	}
	return mustJSON(ans), nil
}

// handleGrant accepts the peer's grant: this array's copy is complete at
// the message's epoch. Under the pod's barrier (every write applied
// before it is covered by the sync, every one after it is synced), the
// machine accepts, the received data is synced and the record (and the
// cursor) made durable, and only then does this array serve and answer.
func (r *Replicator) handleGrant(req link.Message) error {
	var m grantMsg
	if err := json.Unmarshal(req.Payload, &m); err != nil {
		return err
	}
	pre := m.Pre // the machine refuses an array not of the pod
	p, unlock, err := r.podRequest(m.Pod, func(mm *pod.Machine) ([]pod.Action, error) { return mm.GrantRequested(req.Epoch, pre) })
	if err != nil {
		return err
	}
	defer unlock()
	if err := r.saveCursor(p.id, cursor{Epoch: req.Epoch, Complete: true}); err != nil {
		r.log.Warn("record the copy complete", "pod", m.Pod, "err", err)
	}
	p.mu.Lock()
	p.mu.track = noTracking()
	p.mu.track.from = req.Epoch
	p.mu.Unlock()
	r.log.Info("pod in sync", "pod", m.Pod, "epoch", req.Epoch, "pre_elected", r.arrayName(pre))
	return nil
}

// handlePreElect holds the pre-election the sequencer asks for.
func (r *Replicator) handlePreElect(req link.Message) error {
	var m grantMsg
	if err := json.Unmarshal(req.Payload, &m); err != nil {
		return err
	}
	pre := m.Pre
	_, unlock, err := r.podRequest(m.Pod, func(mm *pod.Machine) ([]pod.Action, error) { return mm.PreElectRequested(req.Epoch, pre) })
	if err != nil {
		return err
	}
	unlock()
	r.log.Info("pre-election", "pod", m.Pod, "epoch", req.Epoch, "pre_elected", r.arrayName(pre))
	return nil
}

// podRequest feeds a request of the peer to the machine of a pod
// stretched to it, under the pod's barrier, which it leaves held for the
// caller to release with unlock once it has finished what the request
// does; the records it made are durable when it returns.
func (r *Replicator) podRequest(name string, f func(*pod.Machine) ([]pod.Action, error)) (p *podRT, unlock func(), err error) {
	p, err = r.stretched(name)
	if err != nil {
		return nil, nil, err
	}
	p.applyMu.Lock()
	if err := p.request(f); err != nil {
		p.applyMu.Unlock()
		return nil, nil, fmt.Errorf("pod %s: %w", name, err)
	}
	return p, p.applyMu.Unlock, nil
}

// hello tells the peer who this array is (the pods' records are asked
// per pod, msgPodState).
func (r *Replicator) hello(s *link.Session) {
	m := helloMsg{Name: r.cfg.Name, ID: r.cfg.ID}
	if err := callJSON(context.Background(), s, msgHello, 0, m, nil); err != nil {
		r.log.Warn("hello to the peer", "err", err)
	}
}

// handleHello checks that the peer is the paired array.
func (r *Replicator) handleHello(req link.Message) error {
	var m helloMsg
	if err := json.Unmarshal(req.Payload, &m); err != nil {
		return err
	}
	peer := r.peer()
	if peer == nil || m.ID != peer.ID {
		return refusef("hello from array %s (%s), this array is paired with another", m.Name, m.ID)
	}
	return nil
}
