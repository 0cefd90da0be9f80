package replication

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/metro-storage/metro/internal/catalog"
	"github.com/metro-storage/metro/internal/link"
	"github.com/metro-storage/metro/internal/pod"
	"github.com/metro-storage/metro/internal/scsi"
	"github.com/metro-storage/metro/internal/store"
)

// baselineChunk is the most bytes one baseline message carries, and
// baselineWorkers how many are in flight.
const (
	baselineChunk   = 1 << 20
	baselineWorkers = 4
)

// piece is a run of written blocks to copy.
type piece struct {
	lu    *scsi.LogicalUnit
	local *store.Volume
	uuid  string
	// name is the volume's name, for the log.
	name string
	off  int64
	n    int64
}

// position is a place in a copy: volume (UUID) and offset, or the end.
type position struct {
	volume string
	off    int64
	end    bool
}

// checkpointEvery is how many bytes are copied between checkpoints.
const checkpointEvery = 64 << 20

// listPieces sends every written run of the volumes from position from
// on, in pieces of at most baselineChunk, to pieces (counting each in
// inflight); it paces them to the configured rate, and every
// checkpointEvery bytes it waits for the pieces in flight and records a
// checkpoint at the follower. It returns an error when it stopped before
// listing everything: ctx ended, a piece failed, or it could not go on.
func (p *podRT) listPieces(ctx context.Context, epoch uint64, vols []*catalog.Volume, from position, start time.Time,
	done *atomic.Int64, inflight *sync.WaitGroup, failed *atomic.Bool, pieces chan<- piece) error {
	r := p.r
	if from.volume != "" && !slices.ContainsFunc(vols, func(v *catalog.Volume) bool { return v.UUID == from.volume }) {
		from = position{} // the volume is gone: from the start
	}
	started := from.volume == ""
	var sinceCheckpoint int64
	for _, v := range vols {
		if !started && v.UUID != from.volume {
			continue
		}
		first := int64(0)
		if !started {
			first, started = from.off, true
		}
		if v.Destroyed != nil {
			continue
		}
		lu := r.env.LU(v.UUID)
		m := r.vols.Load()
		if lu == nil || m == nil {
			continue
		}
		ref := (*m)[v.UUID]
		local := ref.local
		for off := first; off < int64(lu.Size()); {
			if err := ctx.Err(); err != nil {
				return err
			}
			if sinceCheckpoint >= checkpointEvery {
				inflight.Wait()
				if failed.Load() {
					return errPieceFailed
				}
				if err := p.checkpoint(ctx, epoch, v.UUID, off); err != nil {
					return fmt.Errorf("checkpoint: %w", err)
				}
				sinceCheckpoint = 0
			}
			mapped, run, err := local.Mapped(ctx, off, int64(lu.Size())-off)
			if err != nil {
				return fmt.Errorf("allocation map of volume %s: %w", ref.name, err)
			}
			if run <= 0 {
				break
			}
			if !mapped {
				off += run
				continue
			}
			n := min(run, baselineChunk)
			if rate := r.cfg.BaselineRate; rate > 0 {
				// Pace: the bytes handed out should take bytes/rate.
				due := start.Add(time.Duration(float64(done.Load()) / float64(rate) * float64(time.Second)))
				if d := due.Sub(r.now()); d > 0 {
					select {
					case <-time.After(d):
					case <-ctx.Done():
						return ctx.Err()
					}
				}
			}
			inflight.Add(1)
			select {
			case pieces <- pieceOf(lu, ref, v.UUID, off, n):
			case <-ctx.Done():
				inflight.Done()
				return ctx.Err()
			}
			off += n
			sinceCheckpoint += n
		}
	}
	return nil
}

// errPieceFailed stops the listing of a copy after a piece failed (the
// piece's error was handled where it happened).
var errPieceFailed = errors.New("a piece of the copy failed")

// pieceOf names a piece of a volume.
func pieceOf(lu *scsi.LogicalUnit, ref volRef, uuid string, off, n int64) piece {
	return piece{lu: lu, local: ref.local, uuid: uuid, name: ref.name, off: off, n: n}
}

// copyPiece reads one piece and sends it, retrying (copyRetry) while
// this array's disk fails to read it.
func (p *podRT) copyPiece(ctx context.Context, epoch uint64, pc piece, buf []byte) error {
	return p.copyRetry(ctx, pc, func() error {
		p.yieldToHosts(ctx)
		sess, unlock, err := p.lockCopy(ctx, epoch, pc)
		if err != nil {
			return err
		}
		defer unlock()
		damaged, err := p.readCopy(ctx, pc, buf, pc.off)
		if err != nil {
			return err
		}
		m := &writeMsg{Pod: p.name, Volume: pc.uuid, Off: uint64(pc.off), Length: uint64(pc.n), Data: buf, Damaged: damaged}
		return p.sendCopy(ctx, sess, msgBaseline, epoch, m)
	})
}

// readError is a copy's failure to read this array's own blocks: the
// disk failed the read (not proven damage, which readCopy carries over).
type readError struct{ err error }

func (e *readError) Error() string { return e.err.Error() }
func (e *readError) Unwrap() error { return e.err }

// readCopy reads len(buf) bytes of the piece's volume at off for a copy.
// Damage does not stop a copy, nor is it hidden: the blocks proven
// damaged here read as zeros, are returned as extents for the follower
// to record as damaged too (so a host reading them there gets MEDIUM
// ERROR, as here, never zeros), and are logged at error level. Any other
// failure to read is a *readError.
func (p *podRT) readCopy(ctx context.Context, pc piece, buf []byte, off int64) ([]extent, error) {
	err := pc.local.ReadAt(ctx, buf, off)
	if errors.Is(err, store.ErrCorrupt) {
		var bad []store.DamagedBlocks
		if bad, err = pc.local.ReadSalvage(ctx, buf, off); err == nil {
			return p.carryDamage(pc, bad), nil
		}
	}
	if err != nil && ctx.Err() == nil && !errors.Is(err, store.ErrClosed) {
		return nil, &readError{err}
	}
	return nil, err
}

// carryDamage logs damaged blocks a copy carries to the follower and
// returns them as extents.
func (p *podRT) carryDamage(pc piece, bad []store.DamagedBlocks) []extent {
	for _, d := range bad {
		p.r.log.Error("damaged blocks on this array, copied to the peer as damaged: both copies answer MEDIUM ERROR for them; rewrite them from a backup or let the host rewrite them",
			"pod", p.name, "volume", pc.name, "lba", d.Offset/store.BlockSize, "blocks", d.Length/store.BlockSize,
			"last_lba", (d.Offset+d.Length)/store.BlockSize-1, "err", d.Err)
	}
	return extentsOf(bad)
}

// Retries of a copy whose blocks this array's disk fails to read: the
// first after copyRetryMin, doubling up to copyRetryMax.
const (
	copyRetryMin = 100 * time.Millisecond
	copyRetryMax = 30 * time.Second
)

// copyRetry runs one step of a copy (a piece or a region) until it
// succeeds or fails for another reason than a read error here or no room
// on the follower: each of those is logged, shown as the pod's error, and
// retried after a backoff, with the unit's range unlocked meanwhile (a
// host may rewrite the blocks). The copy goes on once the disk reads them
// again, or the follower has room again.
func (p *podRT) copyRetry(ctx context.Context, pc piece, step func() error) error {
	wait := copyRetryMin
	for failures := 0; ; failures++ {
		err := step()
		var re *readError
		var pf *peerFullError
		var msg string
		switch {
		case errors.As(err, &re):
			msg = "copy: this array's disk cannot read blocks of the volume; retrying (the pod stays resyncing meanwhile)"
		case errors.As(err, &pf):
			msg = "copy: the peer has no room for the copy; free space there (unmap or delete volumes, or raise its capacity); retrying (the pod stays resyncing meanwhile)"
		default:
			if failures > 0 && err == nil {
				p.setErr("")
				p.r.log.Info("copy: the blocks were copied after all; the copy goes on", "pod", p.name, "volume", pc.name, "lba", pc.off/store.BlockSize)
			}
			return err
		}
		p.r.log.Error(msg, "pod", p.name, "volume", pc.name, "lba", pc.off/store.BlockSize, "blocks", pc.n/store.BlockSize,
			"failures", failures+1, "retry_in", wait, "err", err)
		p.setErr(fmt.Sprintf("copy of volume %s at LBA %d: %v", pc.name, pc.off/store.BlockSize, err))
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			return ctx.Err()
		}
		wait = min(2*wait, copyRetryMax)
	}
}

// lockCopy checks that the copy at epoch still runs and takes the piece's
// range lock, so that the copy cannot overtake a host write to the same
// blocks (which is mirrored). It returns the session to send on.
func (p *podRT) lockCopy(ctx context.Context, epoch uint64, pc piece) (*link.Session, func(), error) {
	md := p.mode()
	if md.state != pod.Syncing || md.epoch != epoch || md.sess == nil {
		return nil, nil, errNotServing
	}
	unlock, err := pc.lu.LockRange(ctx, pc.off, pc.n)
	if err != nil {
		return nil, nil, err
	}
	return md.sess, unlock, nil
}

// sendCopy sends copied blocks (or an unmap); when the follower fails
// them, not this copy's cancellation, it is suspended. Copied blocks the
// follower has no room for are a *peerFullError (copyRetry).
func (p *podRT) sendCopy(ctx context.Context, s *link.Session, typ uint16, epoch uint64, m *writeMsg) error {
	ans, err := call(ctx, s, typ, epoch, m.encode())
	if err != nil {
		if ctx.Err() == nil {
			p.peerFailed(s, err)
		}
		return err
	}
	if typ == msgBaseline && len(ans) > 0 && ans[0] == copyNoSpace {
		return &peerFullError{string(ans[1:])}
	}
	return nil
}

// peerFullError is the follower's answer to copied blocks it has no room
// for.
type peerFullError struct{ msg string }

func (e *peerFullError) Error() string { return "the peer has no room for the copy: " + e.msg }

// Progress is a copy's progress (baseline or resync).
type Progress struct {
	// Total is the bytes to copy (the pod's written blocks when the copy
	// started); Done the bytes copied.
	Total int64 `json:"total"`
	Done  int64 `json:"done"`
	// Rate is bytes per second over the copy so far.
	Rate    int64     `json:"rate"`
	Started time.Time `json:"started"`
}

// Percent returns the share done, 0 to 100.
func (p Progress) Percent() float64 {
	if p.Total <= 0 {
		return 0
	}
	return min(100, 100*float64(p.Done)/float64(p.Total))
}

// ETA returns the estimated time left (0 when unknown).
func (p Progress) ETA() time.Duration {
	if p.Rate <= 0 || p.Done >= p.Total {
		return 0
	}
	return time.Duration(float64(p.Total-p.Done) / float64(p.Rate) * float64(time.Second))
}

// received counts baseline bytes at the follower.
func (p *podRT) received(n int64) {
	p.mu.Lock()
	if p.mu.progress != nil {
		p.mu.progress.Done += n
	}
	p.mu.Unlock()
}

// copyBaseline sends every written block of the pod's volumes to the
// follower. Each piece is read and sent under the unit's range lock, so
// it cannot overtake a host write to the same blocks (which is mirrored):
// the follower ends with what this array has.
func (p *podRT) copyBaseline(ctx context.Context, epoch uint64) {
	r := p.r
	st := r.env.Catalog().View()
	vols := st.PodVolumes(p.name)
	// A write that began before the pod was mirrored (or stretched) may
	// still be landing, after the listing below would have passed its
	// blocks: wait for every write in progress. They hold their range
	// lock until they are done, and the ones that take it after this
	// see the pod syncing and are mirrored.
	for _, v := range vols {
		if lu := r.env.LU(v.UUID); lu != nil && v.Destroyed == nil {
			unlock, err := lu.LockRange(ctx, 0, int64(lu.Size()))
			if err != nil {
				return
			}
			unlock()
		}
	}
	p.mu.Lock()
	ans := p.mu.resume
	var dirty regions
	from := position{}
	listed := p.copyListLocked()
	if ans != nil && ans.Resume {
		dirty = listed
		from = position{volume: ans.Cursor.Volume, off: ans.Cursor.Off, end: ans.Cursor.Complete}
	}
	p.mu.Unlock()
	var total int64
	after := from.volume == ""
	for _, v := range vols {
		after = after || v.UUID == from.volume
		if v.Destroyed == nil && after && !from.end {
			total += int64(r.env.Store().Volume(v.DataID).Used())
		}
	}
	total += int64(dirty.count()) * regionSize
	start := r.now()
	p.mu.Lock()
	p.mu.progress = &Progress{Total: total, Started: start}
	p.mu.Unlock()
	if dirty != nil {
		r.log.Info("copy resumed", "pod", p.name, "epoch", epoch, "changed_regions", dirty.count(), "volume", from.volume, "offset", from.off, "complete", from.end)
	} else {
		r.log.Info("baseline copy started", "pod", p.name, "epoch", epoch, "bytes", total)
	}
	// The follower gets the units' reservations now that this array
	// shares every change of them (the resync request carries none).
	for _, v := range vols {
		if lu := r.env.LU(v.UUID); lu != nil && v.Destroyed == nil {
			if err := lu.ShareReservationsNow(ctx); err != nil {
				r.log.Warn("baseline: share reservations", "pod", p.name, "err", err)
				return
			}
		}
	}
	var done atomic.Int64
	progress := func(n int64) {
		d := done.Add(n)
		p.mu.Lock()
		if pr := p.mu.progress; pr != nil {
			pr.Done = d
			if el := r.now().Sub(start).Seconds(); el > 0 {
				pr.Rate = int64(float64(d) / el)
			}
		}
		p.mu.Unlock()
	}
	if dirty != nil {
		if err := p.copyDirty(ctx, epoch, dirty, make([]byte, regionSize)); err != nil {
			p.copyStopped(ctx, epoch, err)
			return
		}
		progress(int64(dirty.count()) * regionSize)
	}
	if !from.end {
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		var failed atomic.Bool
		pieces := make(chan piece)
		var wg, inflight sync.WaitGroup
		for range baselineWorkers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				buf := make([]byte, baselineChunk)
				for pc := range pieces {
					if ctx.Err() == nil {
						if err := p.copyPiece(ctx, epoch, pc, buf[:pc.n]); err != nil {
							failed.Store(true)
							cancel()
						} else {
							r.traffic.baseline.Add(pc.n)
							progress(pc.n)
						}
					}
					inflight.Done()
				}
			}()
		}
		lerr := p.listPieces(ctx, epoch, vols, from, start, &done, &inflight, &failed, pieces)
		close(pieces)
		wg.Wait()
		if !errors.Is(lerr, errPieceFailed) {
			p.copyStopped(ctx, epoch, lerr)
		}
		if lerr != nil || failed.Load() || ctx.Err() != nil {
			return
		}
	}
	if err := p.copyLacking(ctx, epoch); err != nil {
		p.copyStopped(ctx, epoch, err)
		return
	}
	r.log.Info("baseline copy done", "pod", p.name, "epoch", epoch, "bytes", done.Load(), "took", r.now().Sub(start).Round(time.Millisecond))
}

// copyLacking sends again the regions of the writes mirrored during the
// copy that the follower had no room for (lacks), until none is left,
// and then ends the copy (BaselineDone) under the lock they are recorded
// under: a write the follower lacks is either copied or, once the grant
// is out, refused there (the follower is then suspended).
func (p *podRT) copyLacking(ctx context.Context, epoch uint64) error {
	var buf []byte
	for {
		var lacking regions
		p.event(func(m *pod.Machine) []pod.Action {
			if p.mu.track.lacking.count() > 0 {
				lacking, p.mu.track.lacking = p.mu.track.lacking, regions{}
				return nil
			}
			return m.BaselineDone(epoch)
		})
		if lacking == nil {
			return nil
		}
		p.r.log.Info("copy: sending again the writes the peer had no room for", "pod", p.name, "epoch", epoch, "regions", lacking.count())
		if buf == nil {
			buf = make([]byte, regionSize)
		}
		if err := p.copyDirty(ctx, epoch, lacking, buf); err != nil {
			return err
		}
	}
}

// copyStopped logs why a copy stopped before its end, unless it was
// cancelled or the pod left the state the copy runs in (the pod machine
// then starts what follows), or err is nil.
func (p *podRT) copyStopped(ctx context.Context, epoch uint64, err error) {
	if err == nil || ctx.Err() != nil || errors.Is(err, errNotServing) {
		return
	}
	p.r.log.Error("copy stopped", "pod", p.name, "epoch", epoch, "err", err)
	p.setErr(fmt.Sprintf("copy stopped: %v", err))
}

// yieldToHosts holds a copy back, for a few milliseconds at most, while
// host writes are being replicated: they go first on the link and at the
// follower, so hosts keep their speed during a baseline.
func (p *podRT) yieldToHosts(ctx context.Context) {
	for i := 0; i < 10 && p.hostWrites.Load() > 0 && ctx.Err() == nil; i++ {
		time.Sleep(500 * time.Microsecond)
	}
}
