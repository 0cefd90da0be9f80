package replication

import (
	"context"
	"errors"
	"fmt"

	"github.com/metro-storage/metro/internal/link"
	"github.com/metro-storage/metro/internal/pod"
	"github.com/metro-storage/metro/internal/store"
)

// Repair from the peer. In an in-sync pod both arrays hold the same
// blocks, so a host read that meets blocks damaged on one array (proven
// damage: they fail their checksums) is answered with the other array's
// copy, and the damaged copy is rewritten with it through the ordered
// write path, so that the repair cannot race a host write:
//
//   - At the follower, the read asks the sequencer to repair the range
//     (msgRepair). The sequencer takes the unit's range lock, reads its
//     own copy and writes it back as a mirrored write (which mends the
//     follower's copy, in the sequencer's order), then answers with the
//     data, which the follower gives the host.
//   - At the sequencer, the host's read may hold the range lock already,
//     so it reads the follower's copy (msgPeerRead: no mirrored write to
//     the range can be in flight while the lock is held, and outside it a
//     read racing a write may see either) and answers the host with it;
//     a repair in the background then takes the range lock, reads both
//     copies again and writes the follower's blocks over the damaged ones
//     as a mirrored write.
//
// Blocks damaged on both arrays, a disk that fails the read (not proven
// damage), or a pod not in sync leave the read's MEDIUM ERROR as it was.

// maxRepair is the most bytes one repair covers (a host's read is at most
// 4 MiB, see scsi's maximum transfer length).
const maxRepair = 8 << 20

// maxBackgroundRepairs bounds the sequencer's repairs running at once;
// a read that finds them all busy is answered all the same, and a later
// read of the range repairs it.
const maxBackgroundRepairs = 8

// repairRead is called by ReadAt when the local copy of p's range is
// damaged (err): it fills p from the other array's copy and returns nil,
// or returns err when the range cannot be repaired.
func (v *Volume) repairRead(ctx context.Context, p []byte, off int64, err error) error {
	rt := v.rt()
	if rt == nil || len(p) > maxRepair {
		return err
	}
	md := rt.mode()
	if md.role == pod.Follower && (md.sess == nil || !md.serving) {
		// The follower stopped serving the pod while the read ran: the
		// good copy is the sequencer's, and the host is to retry.
		return errNotServing
	}
	if md.sess == nil || (md.role == pod.Sequencer && md.state != pod.InSync) {
		return err
	}
	req := (&writeMsg{Pod: v.pod, Volume: v.uuid, Off: uint64(off), Length: uint64(len(p))}).encode()
	if md.role == pod.Follower {
		data, rerr := call(ctx, md.sess, msgRepair, md.epoch, req)
		if rerr != nil || len(data) != len(p) {
			v.r.log.Warn("damaged blocks could not be repaired from the sequencer's copy", "pod", v.pod, "volume", v.name(), "lba", off/store.BlockSize, "blocks", len(p)/store.BlockSize, "err", rerr)
			var re *link.RemoteError
			if rerr != nil && !errors.As(rerr, &re) {
				// The link failed, not the repair: the follower
				// stops serving the pod, the host retries.
				return errNotServing
			}
			return err
		}
		copy(p, data)
		return nil
	}
	data, rerr := call(ctx, md.sess, msgPeerRead, md.epoch, req)
	if rerr != nil || len(data) != len(p) {
		v.r.log.Warn("damaged blocks could not be read from the follower's copy", "pod", v.pod, "volume", v.name(), "lba", off/store.BlockSize, "blocks", len(p)/store.BlockSize, "err", rerr)
		return err
	}
	copy(p, data)
	rt.repairLater(v, off, int64(len(p)))
	return nil
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
		if _, err := p.repair(ctx, v, off, n, false); err != nil {
			p.r.log.Warn("damaged blocks not repaired", "pod", p.name, "volume", v.name(), "lba", off/store.BlockSize, "blocks", n/store.BlockSize, "err", err)
		}
	}()
}

// repair rewrites n bytes at off of the volume from the good copy, at the
// sequencer, under the unit's range lock: its own blocks where they are
// good, the follower's where its own are damaged. followerDamaged says
// the follower asked (its copy is damaged): the range is then written
// even if this array's copy is intact. It returns the good data.
func (p *podRT) repair(ctx context.Context, v *Volume, off, n int64, followerDamaged bool) ([]byte, error) {
	lu := p.r.env.LU(v.uuid)
	if lu == nil {
		return nil, fmt.Errorf("pod %s has no live volume %s here", p.name, v.uuid)
	}
	unlock, err := lu.LockRange(ctx, off, n)
	if err != nil {
		return nil, err
	}
	defer unlock()
	buf := make([]byte, n)
	bad, err := v.local.ReadSalvage(ctx, buf, off)
	if err != nil {
		return nil, err // not proven damage: nothing is rewritten
	}
	if len(bad) == 0 && !followerDamaged {
		return buf, nil // mended meanwhile
	}
	if len(bad) > 0 {
		if followerDamaged {
			return nil, fmt.Errorf("the blocks are damaged on both arrays: %w", &store.CorruptError{Volume: v.local.ID(), Offset: bad[0].Offset, Err: bad[0].Err})
		}
		md := p.mode()
		if md.state != pod.InSync || md.sess == nil {
			return nil, errNotServing
		}
		req := (&writeMsg{Pod: p.name, Volume: v.uuid, Off: uint64(off), Length: uint64(n)}).encode()
		theirs, err := call(ctx, md.sess, msgPeerRead, md.epoch, req)
		if err != nil {
			return nil, err
		}
		if int64(len(theirs)) != n {
			return nil, fmt.Errorf("the follower sent %d bytes of %d", len(theirs), n)
		}
		for _, d := range bad {
			copy(buf[d.Offset-off:d.Offset-off+d.Length], theirs[d.Offset-off:])
		}
	}
	if err := v.WriteAt(ctx, buf, off); err != nil {
		return nil, fmt.Errorf("rewrite: %w", err)
	}
	where := p.r.cfg.Name
	if followerDamaged {
		where = "the follower"
	}
	p.r.log.Warn("damaged blocks repaired from the other array's copy", "pod", p.name, "volume", v.name(),
		"lba", off/store.BlockSize, "blocks", n/store.BlockSize, "damaged_on", where)
	return buf, nil
}

// repairRange decodes and checks a msgRepair or msgPeerRead: a range of a
// volume of the pod, at most maxRepair bytes, whose role here is role.
func (r *Replicator) repairRange(req link.Message, role pod.Role) (*podRT, *Volume, *writeMsg, error) {
	m, err := decodeWrite(req.Payload)
	if err != nil {
		return nil, nil, nil, err
	}
	p, md, err := r.podMode(m.Pod, req.Epoch, role)
	if err != nil {
		return nil, nil, nil, err
	}
	if (role == pod.Sequencer && md.state != pod.InSync) || (role == pod.Follower && !md.serving) {
		return nil, nil, nil, fmt.Errorf("pod %s is not in sync here", m.Pod)
	}
	v, err := r.volumeOf(m.Pod, m.Volume)
	if err != nil {
		return nil, nil, nil, err
	}
	if err := checkRange(m.Pod, v, m.Off, m.Length); err != nil {
		return nil, nil, nil, err
	}
	if m.Length == 0 || m.Length > maxRepair || len(m.Data) != 0 || len(m.Damaged) != 0 || m.Ref != 0 {
		return nil, nil, nil, refusef("pod %s: a repair of %d bytes (at most %d, no data)", m.Pod, m.Length, maxRepair)
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
	return p.repair(ctx, v, int64(m.Off), int64(m.Length), true)
}

// handlePeerRead answers with this array's copy of a range (follower).
func (r *Replicator) handlePeerRead(ctx context.Context, req link.Message) ([]byte, error) {
	_, v, m, err := r.repairRange(req, pod.Follower)
	if err != nil {
		return nil, err
	}
	buf := make([]byte, m.Length)
	if err := v.local.ReadAt(ctx, buf, int64(m.Off)); err != nil {
		return nil, err
	}
	return buf, nil
}

// name returns the volume's name, for the log.
func (v *Volume) name() string {
	if ref, err := v.r.volumeOf(v.pod, v.uuid); err == nil {
		return ref.name
	}
	return v.uuid
}
