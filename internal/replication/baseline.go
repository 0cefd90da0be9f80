package replication

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/metro-storage/metro/internal/catalog"
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
	off   int64
	n     int64
}

// listPieces sends every written run of the volumes, in pieces of at most
// baselineChunk, to pieces; it paces them to the configured rate.
func (p *podRT) listPieces(ctx context.Context, vols []*catalog.Volume, start time.Time, done *atomic.Int64, pieces chan<- piece) {
	r := p.r
	for _, v := range vols {
		if v.Destroyed != nil {
			continue
		}
		lu := r.env.LU(v.UUID)
		if lu == nil {
			continue
		}
		local := r.env.Store().Volume(v.DataID)
		for off := int64(0); off < int64(lu.Size()); {
			if ctx.Err() != nil {
				return
			}
			mapped, run, err := local.Mapped(ctx, off, int64(lu.Size())-off)
			if err != nil {
				r.log.Warn("baseline: allocation map", "pod", p.name, "err", err)
				return
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
						return
					}
				}
			}
			select {
			case pieces <- piece{lu: lu, local: local, uuid: v.UUID, off: off, n: n}:
			case <-ctx.Done():
				return
			}
			off += n
		}
	}
}

// copyPiece reads one piece and sends it under the unit's range lock, so
// it cannot overtake a host write to the same blocks (which is mirrored).
func (p *podRT) copyPiece(ctx context.Context, epoch uint64, pc piece, buf []byte) error {
	md := p.mode()
	if md.state != pod.Syncing || md.epoch != epoch || md.sess == nil {
		return errNotServing
	}
	unlock, err := pc.lu.LockRange(ctx, pc.off, pc.n)
	if err != nil {
		return err
	}
	defer unlock()
	if err := pc.local.ReadAt(ctx, buf, pc.off); err != nil {
		return err
	}
	m := &writeMsg{Pod: p.name, Volume: pc.uuid, Off: uint64(pc.off), Length: uint64(pc.n), Data: buf}
	if _, err := call(ctx, md.sess, msgBaseline, epoch, m.encode()); err != nil {
		if ctx.Err() == nil {
			p.peerFailed(md.sess, err)
		}
		return err
	}
	return nil
}

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
	var total int64
	for _, v := range vols {
		if v.Destroyed == nil {
			total += int64(r.env.Store().Volume(v.DataID).Used())
		}
	}
	start := r.now()
	p.mu.Lock()
	p.mu.progress = &Progress{Total: total, Started: start}
	p.mu.Unlock()
	r.log.Info("baseline copy started", "pod", p.name, "epoch", epoch, "bytes", total)
	// The reservations sent with the resync request may have changed
	// before this array began to share changes: send them again.
	for _, v := range vols {
		if lu := r.env.LU(v.UUID); lu != nil && v.Destroyed == nil {
			if err := lu.ShareReservationsNow(ctx); err != nil {
				r.log.Warn("baseline: share reservations", "pod", p.name, "err", err)
				return
			}
		}
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var done atomic.Int64
	var failed atomic.Bool
	pieces := make(chan piece)
	var wg sync.WaitGroup
	for range baselineWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, baselineChunk)
			for pc := range pieces {
				if ctx.Err() != nil {
					continue
				}
				if err := p.copyPiece(ctx, epoch, pc, buf[:pc.n]); err != nil {
					failed.Store(true)
					cancel()
					continue
				}
				r.traffic.baseline.Add(pc.n)
				d := done.Add(pc.n)
				p.mu.Lock()
				if pr := p.mu.progress; pr != nil {
					pr.Done = d
					if el := r.now().Sub(start).Seconds(); el > 0 {
						pr.Rate = int64(float64(d) / el)
					}
				}
				p.mu.Unlock()
			}
		}()
	}
	p.listPieces(ctx, vols, start, &done, pieces)
	close(pieces)
	wg.Wait()
	if failed.Load() || ctx.Err() != nil {
		return
	}
	r.log.Info("baseline copy done", "pod", p.name, "epoch", epoch, "bytes", done.Load(), "took", r.now().Sub(start).Round(time.Millisecond))
	p.event(func(m *pod.Machine) []pod.Action { return m.BaselineDone(epoch) })
}
