package array

import (
	"context"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/metro-storage/metro/internal/scsi"
)

// TestPairLinWriteOnceAbortedNotAcknowledged: the linearizability test
// (TestPairLinearizableFailover) once reported an acknowledged write-once
// write missing from both arrays after the final resync. A task aborted
// by task management (there, another client's PREEMPT AND ABORT while the
// write waited) returns a Result with Aborted set and a zero Status, which
// is GOOD's value; the write-once check took Status alone for the host's
// acknowledgement, so a write aborted before it was made counted as an
// acknowledged write lost. The host gets no GOOD for an aborted task, so
// it is of unknown outcome: its unit may hold its value or nothing.
//
// Here the write waits for the unit's range lock (held by the test, as a
// command ahead of it would), is aborted (ABORT TASK SET of its nexus)
// and never written: the write-once bookkeeping must record it as not
// acknowledged, and the unit reads zeros through both arrays. Before the
// fix the bookkeeping recorded it as acknowledged.
func TestPairLinWriteOnceAbortedNotAcknowledged(t *testing.T) {
	h := newPair(t)
	inA, inB := h.hostPorts()
	var fresh atomic.Int64
	var freshMu sync.Mutex
	freshes := map[int64]freshWrite{}
	c := &linClient{id: 0, in: inA, rng: rand.New(rand.NewPCG(1, 1)), rec: newLinRecorder(),
		stats: &linStats{byKind: map[string]int{}, senses: map[string]int{}}, fresh: &fresh, freshMu: &freshMu, freshes: freshes}

	const k = 0
	lba := uint64(freshBaseLBA + 8*k)
	unlock, err := h.lu(0).LockRange(context.Background(), int64(lba*scsi.BlockSize), 4096)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); c.writeOnce() }()
	bounded(t, "the aborted write-once write", 30*time.Second, func() {
		for {
			if resp := inA.arr.target.TaskManagement(context.Background(), inA.nexus, scsi.AbortTaskSet, 0, 0); resp != scsi.TMFComplete {
				t.Errorf("ABORT TASK SET through %s: response %d", inA.arr.cfg.Name, resp)
				return
			}
			select {
			case <-done:
				return
			case <-time.After(time.Millisecond):
			}
		}
	})
	unlock()
	freshMu.Lock()
	fw, ok := freshes[k]
	freshMu.Unlock()
	if !ok {
		t.Fatal("the write-once write recorded nothing")
	}
	if fw.answer != "aborted" {
		t.Fatalf("the write-once write got %s, not aborted: the test did not abort it", fw.answer)
	}
	if fw.acked {
		t.Errorf("an aborted write-once write is recorded as acknowledged (%+v): the final check would report it lost", fw)
	}
	if n := c.stats.byKind["fresh-write aborted"]; n != 1 {
		t.Errorf("the aborted write-once write counted %d times as aborted, want 1 (counts: %v)", n, c.stats.byKind)
	}
	for _, in := range []*initiator{inA, inB} {
		if got, r := readValue(in, lba); !acknowledged(r) || got != 0 {
			t.Errorf("unit %d through %s after the aborted write: %#x (%s), want zeros: the abort came before the write", k, in.arr.cfg.Name, got, describe(r))
		}
	}
}
