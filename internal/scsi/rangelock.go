package scsi

import (
	"context"
	"sync"
)

// rangeLock serialises commands on overlapping block ranges of one logical
// unit. Holders of non-overlapping ranges proceed in parallel. It is what
// makes COMPARE AND WRITE and ORWRITE atomic against other writes.
type rangeLock struct {
	// mu guards held.
	mu struct {
		sync.Mutex
		held map[*heldRange]struct{}
	}
}

// heldRange is one held range [start, end) of logical blocks; done is closed
// when it is released.
type heldRange struct {
	start, end uint64
	done       chan struct{}
}

// lock waits until no held range overlaps [lba, lba+n) and takes it. It
// returns the function that releases it, or the context's error.
func (l *rangeLock) lock(ctx context.Context, lba, n uint64) (func(), error) {
	r := &heldRange{start: lba, end: lba + n, done: make(chan struct{})}
	for {
		l.mu.Lock()
		var wait chan struct{}
		for h := range l.mu.held {
			if h.start < r.end && r.start < h.end {
				wait = h.done
				break
			}
		}
		if wait == nil {
			if l.mu.held == nil {
				l.mu.held = make(map[*heldRange]struct{})
			}
			l.mu.held[r] = struct{}{}
			l.mu.Unlock()
			return func() { l.unlock(r) }, nil
		}
		l.mu.Unlock()
		select {
		case <-wait:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

func (l *rangeLock) unlock(r *heldRange) {
	l.mu.Lock()
	delete(l.mu.held, r)
	l.mu.Unlock()
	close(r.done)
}
