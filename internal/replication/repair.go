package replication

import (
	"context"
	"fmt"

	"github.com/metro-storage/metro/internal/link"
	"github.com/metro-storage/metro/internal/pod"
	"github.com/metro-storage/metro/internal/store"
)

// Repair from the peer. In an in-sync pod both arrays hold the same
// blocks, so a host read that meets blocks damaged on one array (proven
// damage: they fail their checksums) is answered with the other array's
// copy of them, and the damaged copy is rewritten with it through the
// ordered write path, so that the repair cannot race a host write. The
// work goes by pieces: the maxRepair-aligned windows of the read that
// hold damaged blocks.
//
//   - At the follower, the read asks the sequencer to repair a piece
//     (msgRepair, listing the blocks damaged here). The sequencer takes
//     the unit's range lock, reads its own copy and, for the blocks
//     damaged there, the follower's (msgPeerRead); it rewrites the
//     blocks damaged on either array as mirrored writes (which mend the
//     follower's copy, in the sequencer's order), then answers with the
//     piece, listing the blocks it has no good copy of.
//   - At the sequencer, the host's read holds the range lock already, so
//     it reads the follower's copy of the piece (msgPeerRead: no mirrored
//     write to the range can be in flight while the lock is held) and
//     answers the host with it; a repair in the background then takes
//     the range lock, reads both copies again and writes the follower's
//     blocks over the damaged ones as mirrored writes.
//
// The follower's copy is read only under the sequencer's range lock, so
// a repair never writes back a block older than a write acknowledged
// before it. Copies are merged block by block: a range with some blocks
// damaged on one array and others on the other is repaired whole. Only a
// block damaged on both arrays stays a MEDIUM ERROR (at its own LBA), as
// does a read the disk failed (not proven damage), or a read at the
// sequencer of a pod not in sync. A follower that cannot have a piece
// repaired (the link failed, or the sequencer refused: the pod is
// changing state) answers NOT READY, so the host retries, and the good
// copy is not hidden behind a MEDIUM ERROR.

// maxRepair is the most bytes one repair message covers, and the size of
// the aligned windows a damaged read is repaired by. It bounds what the
// peer can make this array hold with requests of a few bytes each: at
// most one answer of maxRepair for each of the link's concurrent
// handlers, and as much again briefly while each is encoded
// (link.Config.MaxConcurrentHandlers: 512 × 128 KiB = 64 MiB by
// default, as much as the link lets the peer's requests hold; with
// 8 MiB answers, 512 requests of 60 bytes could hold 4 GiB).
const maxRepair = 128 << 10

// maxBackgroundRepairs bounds the sequencer's repairs running at once;
// a read that finds them all busy is answered all the same, and a later
// read of the range repairs it.
const maxBackgroundRepairs = 8

// repairRead is called by ReadAt when the local copy of p's range is
// damaged (err): it fills p, taking the damaged blocks from the other
// array's copy, and returns nil, or returns err (or the error of a block
// damaged on both arrays) when the range cannot be repaired.
func (v *Volume) repairRead(ctx context.Context, p []byte, off int64, err error) error {
	rt, nerr := v.rt()
	if rt == nil {
		if nerr != nil {
			return nerr
		}
		return err
	}
	md := rt.mode()
	follower := md.role == pod.Follower
	if follower && (md.sess == nil || !md.serving) {
		// The follower stopped serving the pod while the read ran: the
		// good copy is the sequencer's, and the host is to retry.
		return errNotServing
	}
	if md.sess == nil || (!follower && md.state != pod.InSync) {
		return err
	}
	// What is good here, and which blocks are not (none: mended
	// meanwhile).
	found, serr := v.local.ReadSalvage(ctx, p, off)
	if serr != nil {
		return serr
	}
	bad := extentsOf(found)
	for _, w := range damagedPieces(off, int64(len(p)), bad) {
		req := &writeMsg{Pod: v.pod, Volume: v.uuid, Off: w.Off, Length: w.Length}
		typ := msgPeerRead
		if follower {
			typ, req.Damaged = msgRepair, clip(bad, w)
		}
		ans, rerr := rt.fetch(ctx, md, typ, req)
		if rerr != nil {
			what := "damaged blocks could not be read from the follower's copy"
			if follower {
				what = "damaged blocks could not be repaired from the sequencer's copy"
			}
			v.r.log.Warn(what, "pod", v.pod, "volume", v.name(), "lba", w.Off/store.BlockSize, "blocks", w.Length/store.BlockSize, "err", rerr)
			if follower {
				// The link failed, or the sequencer could not repair
				// the piece now (the pod is changing state): the host
				// retries, here or through the sequencer.
				return errNotServing
			}
			return err
		}
		piece := p[int64(w.Off)-off : int64(w.Off+w.Length)-off]
		if at := mend(piece, int64(w.Off), bad, ans, follower); at >= 0 {
			return &store.CorruptError{Volume: v.local.ID(), Offset: at,
				Err: fmt.Errorf("damaged on both arrays of pod %s: %w", v.pod, store.ErrCorrupt)}
		}
		if !follower {
			rt.repairLater(v, int64(w.Off), int64(w.Length))
		}
	}
	return nil
}

// fetch sends a repair request (msgRepair or msgPeerRead) for req's range
// and returns the other array's answer, checked against the request.
func (p *podRT) fetch(ctx context.Context, md mode, typ uint16, req *writeMsg) (*writeMsg, error) {
	out, err := call(ctx, md.sess, typ, md.epoch, req.encode())
	if err != nil {
		return nil, err
	}
	return decodeCopy(out, req)
}

// mend fills piece, this array's copy of the range from off, with the
// other array's copy, ans: only the blocks bad lists when whole is
// false, the whole piece (one instant's data) when it is true, keeping
// the good blocks here that ans lists damaged there. It returns the
// offset of the first block damaged on both, or -1.
func mend(piece []byte, off int64, bad []extent, ans *writeMsg, whole bool) int64 {
	n := int64(len(piece))
	here := blockSet(off, n, bad)
	there := blockSet(off, n, ans.Damaged)
	for i := range here {
		b := int64(i) * store.BlockSize
		switch {
		case here[i] && there[i]:
			return off + b
		case there[i]:
			// Good here only: keep it.
		case here[i] || whole:
			copy(piece[b:b+store.BlockSize], ans.Data[b:])
		}
	}
	return -1
}

// repairLater runs the sequencer's repair of a range in the background
// (see above), unless maxBackgroundRepairs are running.
func (p *podRT) repairLater(v *Volume, off, n int64) {
	if p.repairs.Add(1) > maxBackgroundRepairs {
		p.repairs.Add(-1)
		return
	}
	p.r.wg.Add(1)
	go func() {
		defer p.r.wg.Done()
		defer p.repairs.Add(-1)
		ctx, cancel := p.podCtx(context.Background())
		defer cancel()
		if _, err := p.repair(ctx, v, off, n, nil, false); err != nil {
			p.r.log.Warn("damaged blocks not repaired", "pod", p.name, "volume", v.name(), "lba", off/store.BlockSize, "blocks", n/store.BlockSize, "err", err)
		}
	}()
}

// repair rewrites, at the sequencer and under the unit's range lock, the
// blocks of n bytes at off (at most maxRepair) that are damaged on
// either array, from the good copy: its own blocks where they are good,
// the follower's where its own are damaged (read under the lock, and
// only in sync; that read lists the follower's damaged blocks too).
// asked says the follower asked, listing the blocks damaged on its copy
// (theirs: a hint, never trusted for data). It
// returns the range as this array has it after the repair, with the
// blocks it has no good copy of listed damaged (zeros), or nil when
// nothing was asked and nothing is damaged here any more.
func (p *podRT) repair(ctx context.Context, v *Volume, off, n int64, theirs []extent, asked bool) (*writeMsg, error) {
	lu := p.r.env.LU(v.uuid)
	if lu == nil {
		return nil, fmt.Errorf("pod %s has no live volume %s here", p.name, v.uuid)
	}
	unlock, err := lu.LockRange(ctx, off, n)
	if err != nil {
		return nil, err
	}
	defer unlock()
	ans := &writeMsg{Pod: p.name, Volume: v.uuid, Off: uint64(off), Length: uint64(n), Data: make([]byte, n)}
	found, err := v.local.ReadSalvage(ctx, ans.Data, off)
	if err != nil {
		return nil, err // not proven damage: nothing is rewritten
	}
	if len(found) == 0 && !asked {
		return nil, nil // mended meanwhile
	}
	ours := extentsOf(found)
	if len(ours) > 0 {
		md := p.mode()
		if md.state == pod.InSync && md.sess != nil {
			peer, err := p.fetch(ctx, md, msgPeerRead, &writeMsg{Pod: p.name, Volume: v.uuid, Off: uint64(off), Length: uint64(n)})
			if err != nil && !asked {
				return nil, err
			}
			if err == nil {
				mend(ans.Data, off, ours, peer, false)
				ours = intersect(off, n, ours, peer.Damaged)
				// The follower's own damaged blocks are mended too.
				theirs = append(theirs[:len(theirs):len(theirs)], peer.Damaged...)
			}
		} else if !asked {
			return nil, errNotServing
		}
		// Otherwise (syncing: the follower's copy may lack what this
		// one has) the follower gets this array's damaged blocks listed
		// and keeps its own good copy of them.
	}
	// The blocks damaged on one array only are rewritten, each run as a
	// mirrored write; those damaged on both keep their damage.
	fix := blockSet(off, n, append(extentsOf(found), theirs...))
	lost := blockSet(off, n, ours)
	var fixed int64
	for i := 0; i < len(fix); {
		if !fix[i] || lost[i] {
			i++
			continue
		}
		j := i
		for j < len(fix) && fix[j] && !lost[j] {
			j++
		}
		b, e := int64(i)*store.BlockSize, int64(j)*store.BlockSize
		if err := v.WriteAt(ctx, ans.Data[b:e], off+b); err != nil {
			if !asked {
				return nil, fmt.Errorf("rewrite: %w", err)
			}
			// The answer is good all the same (read under the lock);
			// the follower's next read of the blocks tries again.
			p.r.log.Warn("damaged blocks could not be rewritten", "pod", p.name, "volume", v.name(), "lba", (off+b)/store.BlockSize, "blocks", j-i, "err", err)
			break
		}
		fixed += e - b
		i = j
	}
	if fixed > 0 {
		where := p.r.cfg.Name
		switch {
		case len(found) == 0:
			where = "the follower"
		case len(theirs) > 0:
			where = "both arrays"
		}
		p.r.log.Warn("damaged blocks repaired from the other array's copy", "pod", p.name, "volume", v.name(),
			"lba", off/store.BlockSize, "blocks", n/store.BlockSize, "repaired_blocks", fixed/store.BlockSize, "damaged_on", where)
	}
	ans.Damaged = ours
	return ans, nil
}

// repairRange decodes and checks a msgRepair or msgPeerRead: a range of a
// volume of the pod, at most maxRepair bytes, whose role here is role.
// The sequencer repairs while the follower may serve: in sync, or
// syncing (the follower serves once it has accepted the grant, before
// the sequencer learns it did).
func (r *Replicator) repairRange(req link.Message, role pod.Role) (*podRT, *Volume, *writeMsg, error) {
	m, err := decodeWrite(req.Payload)
	if err != nil {
		return nil, nil, nil, err
	}
	p, md, err := r.podMode(m.Pod, req.Epoch, role)
	if err != nil {
		return nil, nil, nil, err
	}
	if (role == pod.Sequencer && md.state != pod.InSync && md.state != pod.Syncing) || (role == pod.Follower && !md.serving) {
		return nil, nil, nil, fmt.Errorf("pod %s is not in sync here", m.Pod)
	}
	v, err := r.volumeOf(m.Pod, m.Volume)
	if err != nil {
		return nil, nil, nil, err
	}
	if err := checkRange(m.Pod, v, m.Off, m.Length); err != nil {
		return nil, nil, nil, err
	}
	if m.Length == 0 || m.Length > maxRepair || len(m.Data) != 0 || m.Ref != 0 {
		return nil, nil, nil, refusef("pod %s: a repair of %d bytes (at most %d, no data)", m.Pod, m.Length, maxRepair)
	}
	if len(m.Damaged) > 0 && req.Type != msgRepair {
		return nil, nil, nil, refusef("pod %s: only a repair lists damaged blocks", m.Pod)
	}
	if err := checkExtents(m, m.Length); err != nil {
		return nil, nil, nil, err
	}
	return p, r.Volume(m.Pod, m.Volume, v.local), m, nil
}

// handleRepair repairs a range the follower found damaged (sequencer)
// and answers with its data.
func (r *Replicator) handleRepair(ctx context.Context, req link.Message) ([]byte, error) {
	p, v, m, err := r.repairRange(req, pod.Sequencer)
	if err != nil {
		return nil, err
	}
	ans, err := p.repair(ctx, v, int64(m.Off), int64(m.Length), m.Damaged, true)
	if err != nil {
		return nil, err
	}
	return ans.encode(), nil
}

// handlePeerRead answers with this array's copy of a range (follower),
// its damaged blocks listed.
func (r *Replicator) handlePeerRead(ctx context.Context, req link.Message) ([]byte, error) {
	_, v, m, err := r.repairRange(req, pod.Follower)
	if err != nil {
		return nil, err
	}
	m.Data = make([]byte, m.Length)
	found, err := v.local.ReadSalvage(ctx, m.Data, int64(m.Off))
	if err != nil {
		return nil, err
	}
	m.Damaged = extentsOf(found)
	return m.encode(), nil
}

// decodeCopy decodes the answer to a repair request (msgRepair or
// msgPeerRead) for req's range: that range's data, its damaged blocks
// listed (whole blocks inside it).
func decodeCopy(out []byte, req *writeMsg) (*writeMsg, error) {
	m, err := decodeWrite(out)
	if err != nil {
		return nil, err
	}
	if m.Pod != req.Pod || m.Volume != req.Volume || m.Off != req.Off || m.Length != req.Length || uint64(len(m.Data)) != m.Length || m.Ref != 0 {
		return nil, fmt.Errorf("pod %s: the peer answered a repair of %d bytes at %d with %d bytes at %d", req.Pod, req.Length, req.Off, len(m.Data), m.Off)
	}
	if err := checkExtents(m, m.Length); err != nil {
		return nil, err
	}
	return m, nil
}

// damagedPieces returns the maxRepair-aligned windows of n bytes from off
// that hold blocks bad lists (ascending, inside the range).
func damagedPieces(off, n int64, bad []extent) []extent {
	var out []extent
	end := off + n
	for _, x := range bad {
		for b := int64(x.Off); b < int64(x.Off+x.Length) && b < end; {
			lo := b / maxRepair * maxRepair
			w := extent{Off: uint64(max(off, lo)), Length: uint64(min(end, lo+maxRepair) - max(off, lo))}
			if k := len(out); k == 0 || out[k-1] != w {
				out = append(out, w)
			}
			b = lo + maxRepair
		}
	}
	return out
}

// clip returns the parts of xs inside w.
func clip(xs []extent, w extent) []extent {
	var out []extent
	for _, x := range xs {
		lo, hi := max(x.Off, w.Off), min(x.Off+x.Length, w.Off+w.Length)
		if lo < hi {
			out = append(out, extent{Off: lo, Length: hi - lo})
		}
	}
	return out
}

// blockSet returns which blocks of n bytes from off the extents cover.
func blockSet(off, n int64, xs []extent) []bool {
	set := make([]bool, n/store.BlockSize)
	for _, x := range clip(xs, extent{Off: uint64(off), Length: uint64(n)}) {
		for b := int64(x.Off); b < int64(x.Off+x.Length); b += store.BlockSize {
			set[(b-off)/store.BlockSize] = true
		}
	}
	return set
}

// intersect returns the blocks of n bytes from off that both a and b
// cover, as ascending runs.
func intersect(off, n int64, a, b []extent) []extent {
	sa, sb := blockSet(off, n, a), blockSet(off, n, b)
	var out []extent
	for i := range sa {
		if !sa[i] || !sb[i] {
			continue
		}
		at := uint64(off + int64(i)*store.BlockSize)
		if k := len(out); k > 0 && out[k-1].Off+out[k-1].Length == at {
			out[k-1].Length += store.BlockSize
			continue
		}
		out = append(out, extent{Off: at, Length: store.BlockSize})
	}
	return out
}

// extentsOf returns the byte ranges of damaged blocks.
func extentsOf(bad []store.DamagedBlocks) []extent {
	out := make([]extent, 0, len(bad))
	for _, d := range bad {
		out = append(out, extent{Off: uint64(d.Offset), Length: uint64(d.Length)})
	}
	return out
}

// name returns the volume's name, for the log.
func (v *Volume) name() string {
	if ref, err := v.r.volumeOf(v.pod, v.uuid); err == nil {
		return ref.name
	}
	return v.uuid
}
