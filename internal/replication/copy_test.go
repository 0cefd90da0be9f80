package replication

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"testing/synctest"
	"time"

	"github.com/metro-storage/metro/internal/logtest"
	"github.com/metro-storage/metro/internal/store"
)

// TestCopyRetriesReadErrors runs a copy step whose reads the disk fails a
// few times (not proven damage): the step is retried with a growing
// backoff, each failure is logged at error level and shown as the pod's
// error, and once the read succeeds the copy goes on and the error is
// cleared. Any other error ends the step at once.
func TestCopyRetriesReadErrors(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var logs logtest.Buffer
		p := &podRT{r: &Replicator{log: logs.Logger()}, name: "pod1"}
		pc := piece{name: "pod1::vol1", off: 1 << 20, n: 1 << 20}
		const failing = 4
		var calls []time.Time
		err := p.copyRetry(context.Background(), pc, func() error {
			calls = append(calls, time.Now())
			if len(calls) <= failing {
				if got := p.status(); len(calls) > 1 && got == "" {
					t.Errorf("attempt %d: the pod shows no error while the copy retries", len(calls))
				}
				return &readError{errors.New("input/output error")}
			}
			return nil
		})
		if err != nil || len(calls) != failing+1 {
			t.Fatalf("copyRetry: %v after %d attempts, want success after %d", err, len(calls), failing+1)
		}
		// The waits double from copyRetryMin (fake time: exact).
		wait := copyRetryMin
		for i := 1; i < len(calls); i++ {
			if d := calls[i].Sub(calls[i-1]); d != wait {
				t.Errorf("wait before attempt %d: %v, want %v", i+1, d, wait)
			}
			wait *= 2
		}
		if n := logs.Count("level=ERROR"); n != failing {
			t.Errorf("%d error lines for %d failed reads:\n%s", n, failing, logs.String())
		}
		if logs.Count("lba=2048") < failing || logs.Count("volume=pod1::vol1") < failing {
			t.Errorf("the error lines do not name the volume and LBA:\n%s", logs.String())
		}
		if got := p.status(); got != "" {
			t.Errorf("pod error after the copy went on: %q", got)
		}

		// Another error (the peer's, or the pod changed) is not retried.
		calls = nil
		other := errors.New("the peer refused")
		if err := p.copyRetry(context.Background(), pc, func() error { calls = append(calls, time.Now()); return other }); err != other || len(calls) != 1 {
			t.Fatalf("copyRetry of another error: %v after %d attempts, want it at once", err, len(calls))
		}
		// A cancelled copy stops waiting.
		ctx, cancel := context.WithCancel(context.Background())
		go func() { time.Sleep(time.Hour); cancel() }()
		if err := p.copyRetry(ctx, pc, func() error { return &readError{store.ErrCorrupt} }); !errors.Is(err, context.Canceled) {
			t.Fatalf("copyRetry after cancel: %v", err)
		}
	})
}

// status returns the pod's error as the API shows it.
func (p *podRT) status() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.mu.lastErr
}

// TestPeerRepairConfined checks the repair messages from the peer: a
// range read (msgPeerRead) only of a pod this array follows in sync,
// inside a volume of that pod and at most maxRepair bytes; a repair
// (msgRepair) only of a pod this array orders, in sync. An accepted read
// answers with this array's copy.
func TestPeerRepairConfined(t *testing.T) {
	h := newHostilePeer(t)
	r := func(podName, uuid string, off, n uint64) []byte {
		return (&writeMsg{Pod: podName, Volume: uuid, Off: off, Length: n}).encode()
	}
	// pod1 is followed here but not in sync yet; pod2 is ordered here.
	h.refused("a read of a pod not in sync", msgPeerRead, epoch1, r("pod1", uuidVol1, 0, store.BlockSize), "not in sync")
	h.refused("a repair of a pod this array follows", msgRepair, epoch1, r("pod1", uuidVol1, 0, store.BlockSize), "this array is the follower")
	h.refused("a repair of a pod not in sync", msgRepair, epoch2, r("pod2", uuidVol2, 0, store.BlockSize), "not in sync")
	block := bytes.Repeat([]byte{0x5a}, store.BlockSize)
	p := h.env.r.pod("pod1")
	p.mu.Lock()
	p.mu.m = newInSyncFollower(t, h, epoch1)
	p.mu.sess = h.env.r.session()
	p.mu.Unlock()
	for _, tc := range []struct {
		name, want string
		payload    []byte
	}{
		{"a read of another pod's volume", "pod pod1 has no volume", r("pod1", uuidSecret, 0, store.BlockSize)},
		{"a read past the end", "end beyond the volume's", r("pod1", uuidVol1, volSize, store.BlockSize)},
		{"an unaligned read", "not whole", r("pod1", uuidVol1, 100, store.BlockSize)},
		{"an empty read", "at most", r("pod1", uuidVol1, 0, 0)},
		{"a read carrying data", "no data", (&writeMsg{Pod: "pod1", Volume: uuidVol1, Length: store.BlockSize, Data: block}).encode()},
	} {
		h.refused(tc.name, msgPeerRead, epoch1, tc.payload, tc.want)
	}
	vol := h.env.st.Volume(h.env.cat.View().Volumes["pod1::vol1"].DataID)
	if err := vol.WriteAt(context.Background(), bytes.Repeat(block, 3), store.BlockSize); err != nil {
		t.Fatal(err)
	}
	// The answer is the range, its damaged blocks listed (zeros).
	b := h.env.st.NewBatch()
	if err := b.MarkDamaged(vol, 2*store.BlockSize, store.BlockSize); err != nil {
		t.Fatal(err)
	}
	if err := b.Commit(); err != nil {
		t.Fatal(err)
	}
	req := &writeMsg{Pod: "pod1", Volume: uuidVol1, Off: 0, Length: 4 * store.BlockSize}
	ans, err := decodeCopy(h.accepted("a read of the pod's volume", msgPeerRead, epoch1, req.encode()), req)
	if err != nil {
		t.Fatal(err)
	}
	want := slices.Concat(make([]byte, store.BlockSize), block, make([]byte, store.BlockSize), block)
	if !bytes.Equal(ans.Data, want) || fmt.Sprint(ans.Damaged) != fmt.Sprint([]extent{{2 * store.BlockSize, store.BlockSize}}) {
		t.Fatalf("the read answered %d bytes, damaged %v", len(ans.Data), ans.Damaged)
	}
	h.refused("a read listing damaged blocks", msgPeerRead, epoch1,
		(&writeMsg{Pod: "pod1", Volume: uuidVol1, Length: store.BlockSize, Damaged: []extent{{0, store.BlockSize}}}).encode(), "only a repair lists damaged blocks")
}
