package link

import (
	"context"
	"slices"
	"sync"
)

// budget is a first-come-first-served weighted semaphore over bytes.
// acquire waits until n more bytes fit under max; an amount larger than
// max is admitted when nothing else is held, so it travels alone. Waiters
// are served in order, so a large amount is not starved by small ones.
type budget struct {
	mu struct {
		sync.Mutex
		max  int
		used int
		// waiters are the acquires waiting, in arrival order.
		waiters []*budgetWaiter
	}
}

type budgetWaiter struct {
	n     int
	ready chan struct{} // closed when the bytes are granted
}

func newBudget(max int) *budget {
	b := &budget{}
	b.mu.max = max
	return b
}

func (b *budget) fitsLocked(n int) bool {
	return b.mu.used == 0 || b.mu.used+n <= b.mu.max
}

// acquire takes n bytes, waiting while they do not fit. It gives up with
// ctx's error when ctx ends and with ErrClosed when done is closed.
func (b *budget) acquire(ctx context.Context, done <-chan struct{}, n int) error {
	b.mu.Lock()
	if len(b.mu.waiters) == 0 && b.fitsLocked(n) {
		b.mu.used += n
		b.mu.Unlock()
		return nil
	}
	w := &budgetWaiter{n: n, ready: make(chan struct{})}
	b.mu.waiters = append(b.mu.waiters, w)
	b.mu.Unlock()

	var err error
	select {
	case <-w.ready:
		return nil
	case <-ctx.Done():
		err = ctx.Err()
	case <-done:
		err = ErrClosed
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	select {
	case <-w.ready:
		b.mu.used -= n // granted meanwhile: give it back
	default:
		i := slices.Index(b.mu.waiters, w)
		b.mu.waiters = slices.Delete(b.mu.waiters, i, i+1)
	}
	// Whoever waited behind w may fit now.
	b.grantLocked()
	return err
}

// release gives back n bytes.
func (b *budget) release(n int) {
	b.mu.Lock()
	b.mu.used -= n
	b.grantLocked()
	b.mu.Unlock()
}

func (b *budget) grantLocked() {
	for len(b.mu.waiters) > 0 && b.fitsLocked(b.mu.waiters[0].n) {
		w := b.mu.waiters[0]
		b.mu.used += w.n
		close(w.ready)
		b.mu.waiters = slices.Delete(b.mu.waiters, 0, 1)
	}
}

// inUse reports the bytes held (tests).
func (b *budget) inUse() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.mu.used
}
