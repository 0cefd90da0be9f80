package replication

import (
	"context"
	"encoding/json"
	"slices"

	"github.com/metro-storage/metro/internal/link"
	"github.com/metro-storage/metro/internal/pod"
)

// A copy (baseline or resync) resumes where it stopped when the
// follower's copy is still good up to a point and the sequencer knows
// every region written since that the follower may lack:
//
//   - The follower keeps a cursor, durably: the copy's epoch and the
//     position (volume, offset) before which every block of the copy is
//     durable there, or that the copy completed. It is written at each
//     checkpoint (after syncing the store) and at the grant.
//   - The sequencer keeps, in memory, the regions the follower may lack:
//     those written while it was not mirroring (alone or paused), those
//     whose mirroring failed, and those mirrored during the copy since the
//     follower's last checkpoint (the follower writes them without syncing
//     until then). A sequencer that restarts has lost them: its next copy
//     is complete. The grant's answer clears them, but for the regions
//     whose mirror failed after the copy listed what it sends: the
//     follower may have accepted the grant without those.
//   - Each array keeps, in memory too, the regions it wrote as the
//     sequencer that the peer may lack (a race it lost with writes in
//     flight); the receiver lists them when a copy resumes. An array
//     that restarts has lost them unless its record proves there are
//     none (a follower in sync at its epoch): otherwise its next copy is
//     complete.
//
// Resuming then copies the tracked regions (their data, or unmaps where
// the sequencer has none) and continues from the cursor. This is the seam
// the recovery issue's durable change tracking replaces.

// regionSize is the granularity of change tracking.
const regionSize = 1 << 20

// region is a byte range of a volume (no volume: not a block change).
type region struct {
	uuid   string
	off, n int64
}

// regions is a set of tracked regions by volume UUID.
type regions map[string]map[int64]struct{}

func (rs regions) add(r region) {
	if r.uuid == "" || r.n <= 0 {
		return
	}
	m := rs[r.uuid]
	if m == nil {
		m = map[int64]struct{}{}
		rs[r.uuid] = m
	}
	for o := r.off / regionSize * regionSize; o < r.off+r.n; o += regionSize {
		m[o] = struct{}{}
	}
}

func (rs regions) merge(o regions) {
	for u, m := range o {
		for off := range m {
			rs.add(region{uuid: u, off: off, n: 1})
		}
	}
}

func (rs regions) count() (n int) {
	for _, m := range rs {
		n += len(m)
	}
	return n
}

// tracking is the sequencer's record of what the follower may lack.
type tracking struct {
	// from is the epoch of the follower's copy the regions are relative
	// to (0: nothing to resume from).
	from  uint64
	dirty regions
	// recent are regions mirrored during a copy since the follower's
	// last checkpoint.
	recent regions
	// lacking are regions of writes mirrored during a copy that the
	// follower had no room for: the copy sends them again before the
	// grant (they are in dirty too, for a resume).
	lacking regions
	// since are the regions added to dirty since the copy under way
	// listed what it sends (copyList): the grant does not cover them.
	// Their mirror failed, so the link is ending, but the peer may
	// still accept the grant without them, and a race this array then
	// wins acknowledges them; they stay tracked when the grant clears
	// the rest (ClearTracking), or the resync after it never sends them.
	since regions
}

// noTracking is a record of nothing the follower lacks.
func noTracking() tracking {
	return tracking{dirty: regions{}, recent: regions{}, lacking: regions{}, since: regions{}}
}

// clearTrackingLocked forgets what the peer's copy, complete and
// durable at epoch, holds: everything but the regions noted since the
// copy listed what it sends. p.mu must be held.
func (p *podRT) clearTrackingLocked(epoch uint64) {
	keep := p.mu.track.since
	p.mu.track = noTracking()
	p.mu.track.from = epoch
	p.mu.track.dirty.merge(keep)
}

// copyListLocked returns the regions a resumed copy sends (what the peer may
// lack), and notes changes from then on apart (since). p.mu must be
// held.
func (p *podRT) copyListLocked() regions {
	dirty := regions{}
	dirty.merge(p.mu.track.dirty)
	p.mu.track.since = regions{}
	return dirty
}

// noteWrite records a change the follower does not have (mirrored is
// false) or has without having made it durable (durable is false: it
// receives a copy and syncs at its next checkpoint or the grant). A
// mirrored write the follower made durable records nothing, and takes no
// lock.
func (p *podRT) noteWrite(r region, mirrored, durable bool) {
	if r.uuid == "" || (mirrored && durable) {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if mirrored {
		p.mu.track.recent.add(r)
	} else {
		p.mu.track.dirty.add(r)
		p.mu.track.since.add(r)
	}
}

// copyInterruptedLocked is called when the link is lost while the peer
// had (part of) a copy: what it may lack becomes dirty. p.mu must be
// held.
func (p *podRT) copyInterruptedLocked(was pod.State) {
	t := &p.mu.track
	if was != pod.Syncing && was != pod.InSync {
		return
	}
	t.dirty.merge(t.recent)
	t.recent = regions{}
}

// cursor is the follower's durable position in a copy.
type cursor struct {
	Epoch    uint64 `json:"epoch"`
	Volume   string `json:"volume,omitempty"`
	Off      int64  `json:"off"`
	Complete bool   `json:"complete,omitempty"`
}

func cursorKey(podID string) string { return "resync/" + podID }

func (r *Replicator) loadCursor(podID string) (cursor, bool) {
	data, ok, err := r.env.Store().GetMeta(cursorKey(podID))
	if err != nil || !ok {
		return cursor{}, false
	}
	var c cursor
	if json.Unmarshal(data, &c) != nil {
		return cursor{}, false
	}
	return c, true
}

// saveCursor syncs the store (everything received so far becomes
// durable) and then records the cursor.
func (r *Replicator) saveCursor(podID string, c cursor) error {
	if err := r.env.Store().Sync(); err != nil {
		return err
	}
	b := r.env.Store().NewBatch()
	b.SetMeta(cursorKey(podID), mustJSON(c))
	return b.Commit()
}

// resumeAnswer is the follower's answer to a resync request it
// accepted: resuming from Cursor with the Regions it wrote that the
// sequencer may lack (as the loser of a race), or from nothing.
type resumeAnswer struct {
	Resume  bool     `json:"resume"`
	Cursor  cursor   `json:"cursor"`
	Regions []extent `json:"regions,omitempty"`
	Volumes []string `json:"volumes,omitempty"`
}

// maxPeerRegions bounds the regions a resync answer may list (1 TiB of
// 1 MiB regions); more, and the copy is complete instead.
const maxPeerRegions = 1 << 20

// dirtyRegions returns the regions the answer lists.
func (a *resumeAnswer) dirtyRegions() regions {
	rs := regions{}
	for i, x := range a.Regions {
		if i < len(a.Volumes) {
			rs.add(region{uuid: a.Volumes[i], off: int64(x.Off), n: int64(x.Length)})
		}
	}
	return rs
}

// listRegions lists a set of regions as the answer carries them.
func listRegions(rs regions) (vols []string, exts []extent) {
	for u, m := range rs {
		for off := range m {
			vols = append(vols, u)
			exts = append(exts, extent{Off: uint64(off), Length: regionSize})
		}
	}
	return vols, exts
}

// writeDurable opens the answer to a mirrored write the follower made
// durable (it serves the pod); otherwise it wrote it without syncing (it
// receives a copy).
// (2: copyNoSpace is 1).
const writeDurable byte = 2

type checkpointMsg struct {
	Pod    string `json:"pod"`
	Volume string `json:"volume"`
	Off    int64  `json:"off"`
}

func (r *Replicator) handleCheckpoint(req link.Message) error {
	var m checkpointMsg
	if err := json.Unmarshal(req.Payload, &m); err != nil {
		return err
	}
	p, _, done, err := r.applying(m.Pod, req.Epoch, pod.Follower)
	if err != nil {
		return err
	}
	defer done()
	if m.Volume != "" {
		v, err := r.volumeOf(m.Pod, m.Volume)
		if err != nil {
			return err
		}
		if m.Off < 0 || uint64(m.Off) > v.size {
			return refusef("pod %s: checkpoint at offset %d of volume %s, whose size is %d", m.Pod, m.Off, v.name, v.size)
		}
	}
	return r.saveCursor(p.id, cursor{Epoch: req.Epoch, Volume: m.Volume, Off: m.Off})
}

// checkpoint asks the follower to make the copy durable up to (volume,
// off); then the regions mirrored before it are no longer at risk.
func (p *podRT) checkpoint(ctx context.Context, epoch uint64, volume string, off int64) error {
	md := p.mode()
	if md.sess == nil || md.epoch != epoch {
		return errNotServing
	}
	p.mu.Lock()
	snap := p.mu.track.recent
	p.mu.track.recent = regions{}
	p.mu.Unlock()
	if err := callJSON(ctx, md.sess, msgCheckpoint, epoch, checkpointMsg{Pod: p.name, Volume: volume, Off: off}, nil); err != nil {
		p.mu.Lock()
		p.mu.track.recent.merge(snap)
		p.mu.Unlock()
		if ctx.Err() == nil {
			// As for a copied piece the follower failed: the pod goes
			// through the link-lost path and the copy starts again.
			p.peerFailed(md.sess, err)
		}
		return err
	}
	return nil
}

// copyDirty copies the tracked regions: each under the unit's range lock,
// the sequencer's data where it has some and an unmap where it has none.
func (p *podRT) copyDirty(ctx context.Context, epoch uint64, dirty regions, buf []byte) error {
	r := p.r
	uuids := make([]string, 0, len(dirty))
	for u := range dirty {
		uuids = append(uuids, u)
	}
	slices.Sort(uuids)
	for _, u := range uuids {
		lu := r.env.LU(u)
		m := r.vols.Load()
		if lu == nil || m == nil {
			continue // the volume is gone
		}
		ref, ok := (*m)[u]
		if !ok {
			continue
		}
		offs := make([]int64, 0, len(dirty[u]))
		for o := range dirty[u] {
			offs = append(offs, o)
		}
		slices.Sort(offs)
		for _, off := range offs {
			size := int64(lu.Size())
			if off >= size {
				continue
			}
			n := min(regionSize, size-off)
			if err := p.copyRegion(ctx, epoch, pieceOf(lu, ref, u, off, n), buf); err != nil {
				return err
			}
		}
	}
	return nil
}

// copyRegion sends one region as it is here: written runs as data (with
// the blocks damaged here marked so, see readCopy), unwritten runs as
// unmaps. It is retried while this array's disk fails to read it
// (copyRetry).
func (p *podRT) copyRegion(ctx context.Context, epoch uint64, pc piece, buf []byte) error {
	return p.copyRetry(ctx, pc, func() error { return p.copyRegionOnce(ctx, epoch, pc, buf) })
}

func (p *podRT) copyRegionOnce(ctx context.Context, epoch uint64, pc piece, buf []byte) error {
	sess, unlock, err := p.lockCopy(ctx, epoch, pc)
	if err != nil {
		return err
	}
	defer unlock()
	for off := pc.off; off < pc.off+pc.n; {
		mapped, run, err := pc.local.Mapped(ctx, off, pc.off+pc.n-off)
		if err != nil {
			return err
		}
		if run <= 0 {
			break
		}
		m := &writeMsg{Pod: p.name, Volume: pc.uuid, Off: uint64(off), Length: uint64(run)}
		typ := msgUnmap
		if mapped {
			damaged, err := p.readCopy(ctx, pc, buf[:run], off)
			if err != nil {
				return err
			}
			m.Data, m.Damaged, typ = buf[:run], damaged, msgBaseline
		}
		if err := p.sendCopy(ctx, sess, typ, epoch, m); err != nil {
			return err
		}
		if mapped {
			p.r.traffic.baseline.Add(run)
		}
		off += run
	}
	return nil
}
