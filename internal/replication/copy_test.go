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

	"github.com/metro-storage/metro/internal/link"
	"github.com/metro-storage/metro/internal/logtest"
	"github.com/metro-storage/metro/internal/pod"
	"github.com/metro-storage/metro/internal/scsi"
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

// TestRepairPieces checks the pieces a damaged read is repaired by: the
// maxRepair-aligned windows of the read holding damaged blocks, each
// once, and what a peer's repair requests can make an array hold: no
// more than the link lets its requests hold.
func TestRepairPieces(t *testing.T) {
	const w, bs = maxRepair, store.BlockSize
	got := damagedPieces(w/2, 3*w, []extent{{w / 2, bs}, {w - bs, 2 * bs}, {3*w - bs, w}})
	want := []extent{{w / 2, w / 2}, {w, w}, {2 * w, w}, {3 * w, w / 2}}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("pieces %v, want %v", got, want)
	}
	if held := maxRepair * link.DefaultMaxConcurrentHandlers; held > link.DefaultMaxInFlightBytes {
		t.Errorf("the peer's repair requests can make an array hold %d MiB of answers, beyond the link's %d MiB", held>>20, link.DefaultMaxInFlightBytes>>20)
	}
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
		{"a read of more than a repair's piece", "at most", r("pod1", uuidVol1, 0, 256<<10)},
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

// inSyncFollower puts pod1 (followed here) in sync at epoch1 on the fake
// peer's session, and returns its volume's store.
func (h *hostilePeer) inSyncFollower() *store.Volume {
	p := h.env.r.pod("pod1")
	p.mu.Lock()
	p.mu.m = newInSyncFollower(h.t, h, epoch1)
	p.mu.sess = h.env.r.session()
	p.mu.Unlock()
	return h.env.st.Volume(h.env.cat.View().Volumes["pod1::vol1"].DataID)
}

// serveFake makes the fake peer answer array-b's requests of type typ
// with f, and every other request with an empty answer.
func (h *hostilePeer) serveFake(typ uint16, f func(m *writeMsg) (*writeMsg, error)) {
	serve := func(req link.Message) (link.Message, error) {
		if req.Type != typ {
			return link.Message{Type: req.Type, Epoch: req.Epoch}, nil
		}
		m, err := decodeWrite(req.Payload)
		if err != nil {
			return link.Message{}, err
		}
		ans, err := f(m)
		if err != nil {
			return link.Message{}, err
		}
		return link.Message{Type: req.Type, Epoch: req.Epoch, Payload: ans.encode()}, nil
	}
	h.serve.Store(&serve)
}

// writeDamaged writes data at off of vol, then marks the blocks of
// damaged as damaged.
func writeDamaged(t *testing.T, st *store.Store, vol *store.Volume, off int64, data []byte, damaged ...extent) {
	t.Helper()
	b := st.NewBatch()
	if err := b.WriteAt(vol, data, off); err != nil {
		t.Fatal(err)
	}
	for _, x := range damaged {
		if err := b.MarkDamaged(vol, int64(x.Off), int64(x.Length)); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Commit(); err != nil {
		t.Fatal(err)
	}
}

// TestFollowerRepairRead reads, at the follower, a range with a block
// damaged on its copy, against a sequencer (the fake peer) that answers
// the repair each way it may: with the piece (the read returns it whole:
// one instant's data), listing blocks it has no good copy of (the read
// keeps this array's good copy of those, and fails at a block damaged on
// both with its LBA), or refusing (the pod changes state there; the read
// answers NOT READY, transitioning, so that the host retries: before, it
// answered MEDIUM ERROR while the sequencer's copy was good).
func TestFollowerRepairRead(t *testing.T) {
	h := newHostilePeer(t)
	vol := h.inSyncFollower()
	const bs = store.BlockSize
	mine, theirs := bytes.Repeat([]byte{0x11}, 4*bs), bytes.Repeat([]byte{0x22}, 4*bs)
	writeDamaged(t, h.env.st, vol, 0, mine, extent{2 * bs, bs})
	var asked []*writeMsg
	var refuse error
	var lacks []extent
	h.serveFake(msgRepair, func(m *writeMsg) (*writeMsg, error) {
		asked = append(asked, m)
		if refuse != nil {
			return nil, refuse
		}
		return &writeMsg{Pod: m.Pod, Volume: m.Volume, Off: m.Off, Length: m.Length, Data: theirs[m.Off : m.Off+m.Length], Damaged: lacks}, nil
	})
	rv := h.env.r.Volume("pod1", uuidVol1, vol)
	read := func() ([]byte, error) {
		buf := make([]byte, 4*bs)
		return buf, rv.ReadAt(context.Background(), buf, 0)
	}

	refuse = errors.New("pod pod1 is not in sync here")
	if _, err := read(); !errors.Is(err, scsi.ErrTransitioning) || store.IsDamage(err) {
		t.Fatalf("read with the repair refused: %v, want NOT READY (scsi.ErrTransitioning)", err)
	}
	if len(asked) != 1 || asked[0].Off != 0 || asked[0].Length != 4*bs || fmt.Sprint(asked[0].Damaged) != fmt.Sprint([]extent{{2 * bs, bs}}) {
		t.Fatalf("the repairs asked: %+v, want one of the read's range listing block 2", asked)
	}
	refuse = nil
	if got, err := read(); err != nil || !bytes.Equal(got, theirs) {
		t.Fatalf("read repaired: %v, %x…, want the sequencer's piece whole", err, got[:8])
	}
	lacks = []extent{{0, bs}}
	if got, err := read(); err != nil || !bytes.Equal(got, slices.Concat(mine[:bs], theirs[bs:])) {
		t.Fatalf("read repaired by a sequencer lacking block 0: %v, want this array's block 0 and the sequencer's others", err)
	}
	lacks = []extent{{2 * bs, bs}}
	var ce *store.CorruptError
	if _, err := read(); !errors.As(err, &ce) || ce.Offset != 2*bs || !store.IsDamage(err) {
		t.Fatalf("read of a block damaged on both arrays: %v, want damage at block 2", err)
	}
}

// TestSequencerRepairsWhileSyncing asks this array, the sequencer of
// pod2, for a repair after the in-sync grant, before the follower's
// acceptance is known here (the pod is syncing here while the follower
// serves): the repair is made and answered (before, it was refused, and
// the host reading through the follower got MEDIUM ERROR). The blocks
// the follower lists are rewritten from this array's copy; a block
// damaged here is not (the follower's copy is not read while syncing)
// but listed in the answer.
func TestSequencerRepairsWhileSyncing(t *testing.T) {
	h := newHostilePeer(t)
	p := h.env.r.pod("pod2")
	m := pod.NewStretched(epoch2-1, time.Second)
	m.LinkUp(time.Now())
	m.Persisted(epoch2)
	m.ResyncStarted(epoch2)
	m.BaselineDone(epoch2)
	if m.State() != pod.Syncing || m.Epoch() != epoch2 {
		t.Fatalf("the machine is %s at epoch %d", m.State(), m.Epoch())
	}
	p.mu.Lock()
	p.mu.m = m
	p.mu.sess = h.env.r.session()
	p.mu.Unlock()
	const bs = store.BlockSize
	vol := h.env.st.Volume(h.env.cat.View().Volumes["pod2::vol2"].DataID)
	data := bytes.Repeat([]byte{0x33}, 4*bs)
	writeDamaged(t, h.env.st, vol, 0, data, extent{3 * bs, bs})
	var mirrored []*writeMsg
	h.serveFake(msgWrite, func(m *writeMsg) (*writeMsg, error) {
		mirrored = append(mirrored, m)
		return &writeMsg{}, nil
	})
	req := &writeMsg{Pod: "pod2", Volume: uuidVol2, Off: 0, Length: 4 * bs, Damaged: []extent{{bs, bs}}}
	ans, err := decodeCopy(h.accepted("a repair while syncing", msgRepair, epoch2, req.encode()), req)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(ans.Data[:3*bs], data[:3*bs]) || fmt.Sprint(ans.Damaged) != fmt.Sprint([]extent{{3 * bs, bs}}) {
		t.Fatalf("the answer: %x… damaged %v, want this array's blocks, block 3 listed damaged", ans.Data[:8], ans.Damaged)
	}
	if len(mirrored) != 1 || mirrored[0].Off != bs || !bytes.Equal(mirrored[0].Data, data[bs:2*bs]) {
		t.Fatalf("mirrored writes: %+v, want block 1 rewritten", mirrored)
	}
}
