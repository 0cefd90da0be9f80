package array

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/metro-storage/metro/internal/mediator"
	"github.com/metro-storage/metro/internal/pod"
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

// gateFS is a stallFS whose blocked is closed when the first sync
// waits.
type gateFS struct {
	*stallFS
	blocked chan struct{}
}

func newGateFS(fs vfs.FS) *gateFS {
	g := &gateFS{stallFS: newStallFS(fs), blocked: make(chan struct{})}
	var once sync.Once
	g.onBlock = func() { once.Do(func() { close(g.blocked) }) }
	return g
}

// TestReviewPairHandoverRacesLinkLoss: the administrator hands the pod
// over from array-a (the sequencer, and the pod's preferred array) to
// array-b; while a's record "left, b owns E+1" is being written (its
// disk is slow), the link is cut. a's machine, still in sync, pauses and
// races at E, and wins E+1 at the mediator at once (b waits its head
// start, then loses to a and suspends, behind, holding a as the owner of
// E+1). Then a's record lands: a has left and names b the owner of E+1.
// When the link returns, neither array recognises the other's record:
// the pod is served by nobody, for good, with the link and the mediator
// up. An interrupted handover must end with one sequencer (or none only
// until the mediator or an operator decides): the array giving the pod
// up must not race for it.
func TestReviewPairHandoverRacesLinkLoss(t *testing.T) {
	gate := newGateFS(vfs.Default)
	defer gate.release()
	h := newPairWith(t, pairOptions{fs: [2]vfs.FS{gate, nil}, maxDiskStall: time.Minute, mediator: true})
	h.stretch()
	h.waitMediator(replication.MediatorOnline)
	h.setPreference(0, h.arrays[0].cfg.Name)
	a, b := h.arrays[0], h.arrays[1]
	epoch := h.podView(0).Epoch
	gate.stall()
	handedOver := make(chan error, 1)
	go func() { handedOver <- a.UnstretchPod(context.Background(), pairPod, a.cfg.Name) }()
	<-gate.blocked // the handover's record is being written
	h.proxy.Partition(true)
	h.log.Info("link cut while array-a's handover record is being written")
	// The race is decided: on i9-pod array-a won it (array-b suspended
	// behind, with array-a as the owner of E+1); array-a must not race
	// for a pod it is giving up, so array-b wins it after its head start.
	h.waitFor("the race to be decided", 30*time.Second, func() (bool, string) {
		v := h.podView(1)
		return v.Epoch == epoch+1 && (v.State == string(pod.Suspended) || v.State == string(pod.Alone)), h.describeViews()
	})
	gate.release()
	err := <-handedOver
	if err != nil && strings.Contains(err.Error(), "only an in-sync sequencer") {
		t.Fatalf("setting up: the handover came after the link loss: %v", err)
	}
	t.Logf("the handover ended with: %v", err)
	h.proxy.Partition(false)
	h.log.Info("link healed")
	h.waitFor("one array to serve the pod", 30*time.Second, func() (bool, string) {
		pa, pb := a.cat.View().Pods[pairPod], b.cat.View().Pods[pairPod]
		if pb != nil && pb.Pending == nil && len(pb.Arrays) == 1 {
			return true, ""
		}
		for i := range h.arrays {
			if v := h.podView(i); v != nil && (v.State == string(pod.Alone) || v.State == string(pod.InSync)) {
				return true, ""
			}
		}
		return false, fmt.Sprintf("%s; a's pod %+v, b's %+v", h.describeViews(), pa, pb)
	})
}
