package replication

import (
	"context"
	"time"

	"github.com/metro-storage/metro/internal/pod"
)

// baselineChunk is the most bytes one baseline message carries.
const baselineChunk = 1 << 20

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
	var done int64
	buf := make([]byte, baselineChunk)
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
			md := p.mode()
			if md.state != pod.Syncing || md.epoch != epoch || md.sess == nil {
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
			unlock, err := lu.LockRange(ctx, off, n)
			if err != nil {
				return
			}
			err = local.ReadAt(ctx, buf[:n], off)
			if err == nil {
				m := &writeMsg{Pod: p.name, Volume: v.UUID, Off: uint64(off), Length: uint64(n), Data: buf[:n]}
				_, err = call(ctx, md.sess, msgBaseline, epoch, m.encode())
			}
			unlock()
			if err != nil {
				if ctx.Err() == nil {
					p.peerFailed(md.sess, err)
				}
				return
			}
			r.traffic.baseline.Add(n)
			done += n
			off += n
			p.mu.Lock()
			pr := p.mu.progress
			pr.Done = done
			if el := r.now().Sub(start).Seconds(); el > 0 {
				pr.Rate = int64(float64(done) / el)
			}
			p.mu.Unlock()
			if rate := r.cfg.BaselineRate; rate > 0 {
				// Pace: done bytes should take done/rate seconds.
				due := start.Add(time.Duration(float64(done) / float64(rate) * float64(time.Second)))
				if d := due.Sub(r.now()); d > 0 {
					select {
					case <-time.After(d):
					case <-ctx.Done():
						return
					}
				}
			}
		}
	}
	r.log.Info("baseline copy done", "pod", p.name, "epoch", epoch, "bytes", done, "took", r.now().Sub(start).Round(time.Millisecond))
	p.event(func(m *pod.Machine) []pod.Action { return m.BaselineDone(epoch) })
}
