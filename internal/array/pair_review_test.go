package array

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/metro-storage/metro/internal/mediator"
	"github.com/metro-storage/metro/internal/replication"
)

// Adversarial tests of the pod protocol through the pair harness (a
// review of issue 9): each describes the schedule it forces and the
// rule it checks.

// slowElects is a mediator state whose answers to one array's elects
// are lost for a while: the elect is decided and made durable, then the
// answer waits until the asker gives up (its request's context ends).
// Heartbeats are answered as usual: the mediator is online throughout.
type slowElects struct {
	mediator.Backend
	// array is the id of the array whose answers are lost (empty: none).
	array atomic.Pointer[string]
	// until is when answers are no longer lost (unix nanoseconds; 0:
	// from the first lost one plus window).
	until  atomic.Int64
	window time.Duration
}

func (s *slowElects) Elect(ctx context.Context, req mediator.ElectRequest) (mediator.ElectResult, uint64, error) {
	res, gen, err := s.Backend.Elect(ctx, req)
	if a := s.array.Load(); err != nil || a == nil || *a != req.Array {
		return res, gen, err
	}
	now := time.Now()
	s.until.CompareAndSwap(0, now.Add(s.window).UnixNano())
	if now.UnixNano() >= s.until.Load() {
		return res, gen, err
	}
	<-ctx.Done() // decided and durable, but the answer never arrives
	return mediator.ElectResult{}, 0, ctx.Err()
}

// TestReviewPairLostElectAnswer: the link is cut; array-a, the preferred
// array, races at once and the mediator grants it the next epoch, but
// its answers are lost on the way back for 1.5 s (longer than the
// array's race deadline, one link Timeout), while the mediator stays
// online. array-b races after its head start, loses to array-a and
// suspends. array-a, which holds the mediator's grant and reaches the
// mediator, must end up serving the pod; on i9-pod it stays suspended
// for as long as the link is down (nothing races again while the
// mediator's reachability does not change), so the pod is offline on
// both arrays.
func TestReviewPairLostElectAnswer(t *testing.T) {
	slow := &slowElects{window: 1500 * time.Millisecond}
	h := newPairWith(t, pairOptions{mediator: true, mediatorBackend: func(b mediator.Backend) mediator.Backend {
		slow.Backend = b
		return slow
	}})
	h.stretch()
	h.waitMediator(replication.MediatorOnline)
	h.setPreference(0, h.arrays[0].cfg.Name)
	id := h.arrays[0].id.ID
	slow.array.Store(&id)
	h.proxy.Partition(true)
	h.log.Info("link cut; array-a's elect answers are lost for a while")
	h.waitWinner(0, "array-a, which the mediator granted the pod, to serve it alone")
	h.proxy.Partition(false)
	h.waitInSync(60 * time.Second)
}
