package array

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/metro-storage/metro/internal/catalog"
	"github.com/metro-storage/metro/internal/netproxy"
	"github.com/metro-storage/metro/internal/pod"
	"github.com/metro-storage/metro/internal/replication"
	"github.com/metro-storage/metro/internal/scsi"
)

// Regression tests of the pod protocol's defects (issue 9, part 1) on the
// pair harness: each failed on the code before the protocol was rebuilt
// (package pod), and says how.

// writeValue writes value v to the 4 KiB unit at lba through in,
// retrying past unit attentions; it reports whether the write was
// acknowledged.
func writeValue(in *initiator, lba, v uint64) (*scsi.Result, bool) {
	r, _ := in.doPastUA(write16(lba, unitData(lba, v)), unitData(lba, v), 0)
	return r, r.Status == scsi.StatusGood
}

// hostPorts returns a host port on each array, past their unit
// attentions.
func (h *pairHarness) hostPorts() (inA, inB *initiator) {
	inA, inB = newInitiator(h.arrays[0], pairIQN, 0x100), newInitiator(h.arrays[1], pairIQN, 0x200)
	inA.drainUAs()
	inB.drainUAs()
	return inA, inB
}

// readValue reads the 4 KiB unit at lba through in.
func readValue(in *initiator, lba uint64) (uint64, *scsi.Result) {
	r, _ := in.doPastUA(read16(lba, 8), nil, 4096)
	if r.Status != scsi.StatusGood {
		return 0, r
	}
	return unitValue(lba, r.Data), r
}

// TestPairInterruptedHandover (defect 1): the administrator removes the
// sequencer (a handover to the other array) over a slow link, and gives
// up waiting before the answer. Before, the old sequencer kept its
// two-array configuration, paused, moved on alone and served while the
// other array served too: writes to one block were acknowledged through
// both. Now the old sequencer gives the pod up durably before it asks the
// other to take it: at most one array acknowledges writes, and the pod
// ends on the other array with every acknowledged write.
func TestPairInterruptedHandover(t *testing.T) {
	h := newPair(t)
	a, b := h.arrays[0], h.arrays[1]
	inA, inB := h.hostPorts()
	const lba = 40
	if _, ok := writeValue(inA, lba, 1); !ok {
		t.Fatal("a write before the handover failed")
	}
	// 250 ms each way: the handover's answer takes 500 ms; the caller
	// waits 400.
	// A handover refused as busy (a pre-election step or a resync under
	// way) changes nothing: asked again until it is under way.
	var err error
	for try := 0; ; try++ {
		h.proxy.Set(netproxy.Settings{RTT: 500 * time.Millisecond})
		ctx, cancel := context.WithTimeout(context.Background(), 400*time.Millisecond)
		err = a.UnstretchPod(ctx, pairPod, a.cfg.Name)
		cancel()
		if err == nil || !strings.Contains(err.Error(), "another change of the pod is under way") || try == 20 {
			break
		}
		t.Logf("the handover was refused as busy, asked again: %v", err)
		h.proxy.Set(netproxy.Settings{})
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("the handover ended with: %v", err)
	// Writes through both arrays, alternately, for longer than a link
	// timeout and a fence: before, both acknowledged some.
	acked := map[string]uint64{}
	v := uint64(10)
	for deadline := time.Now().Add(4 * pairTimeout); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		for _, in := range []*initiator{inA, inB} {
			v++
			if _, ok := writeValue(in, lba, v); ok {
				acked[in.arr.cfg.Name] = v
			}
		}
	}
	if acked[a.cfg.Name] != 0 && acked[b.cfg.Name] != 0 {
		t.Fatalf("after the interrupted handover both arrays acknowledged writes to the same block (last through %s: %d, through %s: %d): two arrays served the pod apart",
			a.cfg.Name, acked[a.cfg.Name], b.cfg.Name, acked[b.cfg.Name])
	}
	h.proxy.Set(netproxy.Settings{})
	h.waitFor("the pod to be array-b's alone and array-a's copy set aside", 30*time.Second, func() (bool, string) {
		pa, pb := a.cat.View().Pods[pairPod], b.cat.View().Pods[pairPod]
		ok := pa != nil && pa.Pending != nil && pb != nil && pb.Pending == nil && len(pb.Arrays) == 1 && pb.Sequencer == b.cfg.Name
		return ok, fmt.Sprintf("a: %+v, b: %+v", pa, pb)
	})
	last := acked[b.cfg.Name]
	if last == 0 {
		last = 1
	}
	in := newInitiator(b, pairIQN, 0x201)
	in.drainUAs()
	if got, r := readValue(in, lba); r.Status != scsi.StatusGood || got != last {
		t.Fatalf("after the handover array-b reads %d (%s), want the last acknowledged write, %d", got, describe(r), last)
	}
}

// TestPairRemovalFencesFollower (defect 2): the sequencer removes the
// follower over a slow link. Before, the sequencer went single-array and
// acknowledged writes at once while the follower, whose read lease the
// link's heartbeats kept renewing, still served reads until the removal
// reached it: a read through it returned data older than a write already
// acknowledged. Now the sequencer is alone only once the follower has
// durably given the pod up.
func TestPairRemovalFencesFollower(t *testing.T) {
	h := newPair(t)
	a, b := h.arrays[0], h.arrays[1]
	inA, inB := h.hostPorts()
	const lba = 48
	if _, ok := writeValue(inA, lba, 1); !ok {
		t.Fatal("a write before the removal failed")
	}
	if got, r := readValue(inB, lba); got != 1 {
		t.Fatalf("read through the follower before the removal: %d (%s)", got, describe(r))
	}
	h.proxy.Set(netproxy.Settings{RTT: 600 * time.Millisecond})
	removed := make(chan error, 1)
	go func() { removed <- a.UnstretchPod(context.Background(), pairPod, b.cfg.Name) }()
	h.waitFor("array-a to have the pod alone", 30*time.Second, func() (bool, string) {
		p := a.cat.View().Pods[pairPod]
		return len(p.Arrays) == 1, fmt.Sprintf("%+v", p)
	})
	if _, ok := writeValue(inA, lba, 2); !ok {
		t.Fatal("a write through the array that kept the pod failed")
	}
	if got, r := readValue(inB, lba); r.Status == scsi.StatusGood && got != 2 {
		t.Fatalf("a read through the removed follower returned %d after array-a acknowledged 2: a stale read", got)
	}
	if err := <-removed; err != nil {
		t.Fatalf("the removal: %v", err)
	}
}

// TestPairFollowerDiskStall (defect 5): the follower's disk stops
// answering syncs while it keeps answering pings. Before, every write
// through the sequencer waited for the follower for ever (here until the
// follower's store gave up, a minute later). Now a mirrored write that
// does not complete within the link's timeout ends the link, and the
// pod's pre-elected sequencer goes on alone.
func TestPairFollowerDiskStall(t *testing.T) {
	stall := newStallFS(vfs.Default)
	defer stall.release()
	h := newPairWith(t, pairOptions{fs: [2]vfs.FS{nil, stall}, maxDiskStall: time.Minute})
	h.stretch()
	inA := newInitiator(h.arrays[0], pairIQN, 0x100)
	inA.drainUAs()
	const lba = 56
	if _, ok := writeValue(inA, lba, 1); !ok {
		t.Fatal("a write before the stall failed")
	}
	stall.stall()
	h.log.Info("the follower's disk stalls")
	bounded(t, "a write through the sequencer while the follower's disk stalls", 15*time.Second, func() {
		if r, ok := writeValue(inA, lba, 2); !ok {
			t.Errorf("the write through the sequencer: %s", describe(r))
		}
	})
	stall.release()
	h.log.Info("the follower's disk answers again")
	h.waitInSync(60 * time.Second)
	for _, arr := range h.arrays {
		in := newInitiator(arr, pairIQN, 0x300)
		in.drainUAs()
		if got, r := readValue(in, lba); got != 2 {
			t.Fatalf("%s reads %d (%s) after the resync, want 2", arr.cfg.Name, got, describe(r))
		}
	}
}

// stallFS is a filesystem whose files' syncs block while it is stalled
// (a disk that stops answering).
type stallFS struct {
	vfs.FS
	mu      sync.Mutex
	stalled chan struct{} // closed when not stalled
	// onBlock, when set, is called when a sync starts to wait.
	onBlock func()
}

func newStallFS(fs vfs.FS) *stallFS {
	s := &stallFS{FS: fs, stalled: make(chan struct{})}
	close(s.stalled)
	return s
}

func (s *stallFS) stall() {
	s.mu.Lock()
	defer s.mu.Unlock()
	select {
	case <-s.stalled:
		s.stalled = make(chan struct{})
	default:
	}
}

func (s *stallFS) release() {
	s.mu.Lock()
	defer s.mu.Unlock()
	select {
	case <-s.stalled:
	default:
		close(s.stalled)
	}
}

func (s *stallFS) wait() {
	s.mu.Lock()
	ch, onBlock := s.stalled, s.onBlock
	s.mu.Unlock()
	select {
	case <-ch:
		return
	default:
	}
	if onBlock != nil {
		onBlock()
	}
	<-ch
}

func (s *stallFS) wrap(f vfs.File, err error) (vfs.File, error) {
	if err != nil {
		return nil, err
	}
	return &stallFile{File: f, fs: s}, nil
}

func (s *stallFS) Create(name string, cat vfs.DiskWriteCategory) (vfs.File, error) {
	return s.wrap(s.FS.Create(name, cat))
}

func (s *stallFS) ReuseForWrite(oldname, newname string, cat vfs.DiskWriteCategory) (vfs.File, error) {
	return s.wrap(s.FS.ReuseForWrite(oldname, newname, cat))
}

func (s *stallFS) OpenReadWrite(name string, cat vfs.DiskWriteCategory, opts ...vfs.OpenOption) (vfs.File, error) {
	return s.wrap(s.FS.OpenReadWrite(name, cat, opts...))
}

type stallFile struct {
	vfs.File
	fs *stallFS
}

func (f *stallFile) Sync() error {
	f.fs.wait()
	return f.File.Sync()
}

func (f *stallFile) SyncData() error {
	f.fs.wait()
	return f.File.SyncData()
}

func (f *stallFile) SyncTo(length int64) (bool, error) {
	f.fs.wait()
	return f.File.SyncTo(length)
}

// Failover through the mediator (issue 9, part 2), on the pair harness
// with a mediator each array reaches through a proxy of its own.

// podView returns array i's view of the pod's replication.
func (h *pairHarness) podView(i int) *replication.PodStatus {
	a := h.arrays[i]
	p := a.cat.View().Pods[pairPod]
	if p == nil {
		return nil
	}
	return a.repl.Status(p)
}

// describeViews renders both arrays' views of the pod.
func (h *pairHarness) describeViews() string {
	var parts []string
	for i := range h.arrays {
		v := h.podView(i)
		if v == nil {
			parts = append(parts, h.arrays[i].cfg.Name+": no pod")
			continue
		}
		parts = append(parts, fmt.Sprintf("%s: %s epoch %d seq %s pre %q", h.arrays[i].cfg.Name, v.State, v.Epoch, v.Sequencer, v.PreElected))
	}
	return strings.Join(parts, "; ")
}

// waitMediator waits until both arrays see the mediator so.
func (h *pairHarness) waitMediator(state string) {
	h.t.Helper()
	h.waitFor("the mediator "+state+" on both arrays", 30*time.Second, func() (bool, string) {
		sa, sb := h.arrays[0].med.Status().State, h.arrays[1].med.Status().State
		return sa == state && sb == state, sa + ", " + sb
	})
}

// setPreference sets the pod's failover preference through array i.
func (h *pairHarness) setPreference(i int, name string) {
	h.t.Helper()
	if err := h.arrays[i].Apply(context.Background(), catalog.SetPodAttr{Name: pairPod, FailoverPreference: &name}); err != nil {
		h.t.Fatalf("set the failover preference to %q: %v", name, err)
	}
}

// newMediatedPair starts a pair with a mediator, stretches the pod, waits
// until both arrays reach the mediator, and sets the pod's failover
// preference to array pref (-1: none).
func newMediatedPair(t *testing.T, pref int) *pairHarness {
	t.Helper()
	h := newPairWith(t, pairOptions{mediator: true})
	h.stretch()
	h.waitMediator(replication.MediatorOnline)
	if pref >= 0 {
		h.setPreference(0, h.arrays[pref].cfg.Name)
	}
	return h
}

// waitWinner waits until array i serves the pod alone and the other has
// suspended it.
func (h *pairHarness) waitWinner(i int, what string) {
	h.t.Helper()
	h.waitFor(what, 30*time.Second, func() (bool, string) {
		w, l := h.podView(i), h.podView(1-i)
		return w.State == string(pod.Alone) && w.Sequencer == h.arrays[i].cfg.Name && l.State == string(pod.Suspended), h.describeViews()
	})
}

// TestPairFailoverToPreferred: with a mediator, the link is cut and the
// pod's preferred array, the follower, wins the race (the sequencer waits
// its head start): it serves alone while the old sequencer answers NOT
// READY; when the link returns the loser resyncs from the winner by
// itself and every acknowledged write reads back through both.
func TestPairFailoverToPreferred(t *testing.T) {
	h := newMediatedPair(t, 1)
	a, b := h.arrays[0], h.arrays[1]
	inA, inB := h.hostPorts()
	const lba = 64
	if _, ok := writeValue(inA, lba, 1); !ok {
		t.Fatal("a write before the cut failed")
	}
	h.proxy.Partition(true)
	h.log.Info("link cut")
	h.waitWinner(1, "array-b to win and serve alone, array-a to suspend")
	if r, ok := writeValue(inB, lba, 2); !ok {
		t.Fatalf("a write through the winner: %s", describe(r))
	}
	if r, ok := writeValue(inA, lba, 3); ok {
		t.Fatal("the loser acknowledged a write")
	} else if s, _ := senseOf(r); s.Key != scsi.KeyNotReady {
		t.Fatalf("a write through the loser: %s, want NOT READY", describe(r))
	}
	h.proxy.Partition(false)
	h.log.Info("link healed")
	h.waitInSync(60 * time.Second)
	for _, in := range []*initiator{newInitiator(a, pairIQN, 0x101), newInitiator(b, pairIQN, 0x201)} {
		in.drainUAs()
		if got, r := readValue(in, lba); got != 2 {
			t.Fatalf("%s reads %d (%s) after the recovery, want 2", in.arr.cfg.Name, got, describe(r))
		}
	}
	if v := h.podView(0); v.Sequencer != b.cfg.Name {
		t.Fatalf("after the recovery the sequencer is %s, want the winner %s", v.Sequencer, b.cfg.Name)
	}
}

// TestPairIsolatedSequencer: the sequencer loses the link and the
// mediator at once (isolated); the follower reaches the mediator, wins
// and serves, whatever the preference (the sequencer's here).
func TestPairIsolatedSequencer(t *testing.T) {
	h := newMediatedPair(t, 0)
	_, inB := h.hostPorts()
	h.medProxy[0].Partition(true)
	h.proxy.Partition(true)
	h.log.Info("array-a isolated")
	h.waitWinner(1, "array-b to win")
	if r, ok := writeValue(inB, 72, 5); !ok {
		t.Fatalf("a write through the winner: %s", describe(r))
	}
	h.medProxy[0].Partition(false)
	h.proxy.Partition(false)
	h.waitInSync(60 * time.Second)
}

// TestPairPreElection: both arrays lose the mediator with the link up:
// they pre-elect the preferred array (the follower here); then the link
// is cut: the pre-elected array serves alone without the mediator, the
// other suspends (and does not race).
func TestPairPreElection(t *testing.T) {
	h := newMediatedPair(t, 1)
	b := h.arrays[1]
	for _, px := range h.medProxy {
		px.Partition(true)
	}
	h.waitMediator(replication.MediatorUnreachable)
	h.waitFor("both arrays to show array-b pre-elected", 30*time.Second, func() (bool, string) {
		va, vb := h.podView(0), h.podView(1)
		return va.PreElected == b.cfg.Name && vb.PreElected == b.cfg.Name, h.describeViews()
	})
	// What 'metro pod list --json' shows of each array, as each sees it
	// (the peer's part as it last told: a moment later).
	h.waitFor("both arrays to show each array's view of the pod", 30*time.Second, func() (bool, string) {
		for _, x := range h.arrays {
			for _, pa := range x.PodArrays(x.cat.View().Pods[pairPod]) {
				if pa.PreElected != (pa.Name == b.cfg.Name) || pa.Sequencer != h.arrays[0].cfg.Name || pa.Epoch == 0 ||
					pa.Mediator != replication.MediatorUnreachable || pa.FailoverPreference != b.cfg.Name {
					return false, fmt.Sprintf("%s shows %s as %+v", x.cfg.Name, pa.Name, pa)
				}
			}
		}
		return true, ""
	})
	h.proxy.Partition(true)
	h.log.Info("link cut with the pre-election engaged")
	h.waitWinner(1, "the pre-elected array-b to serve alone, array-a to suspend")
	_, inB := h.hostPorts()
	if r, ok := writeValue(inB, 80, 7); !ok {
		t.Fatalf("a write through the pre-elected array: %s", describe(r))
	}
	h.proxy.Partition(false)
	h.waitInSync(60 * time.Second)
	// With the mediator back, the pre-election disengages.
	for _, px := range h.medProxy {
		px.Partition(false)
	}
	h.waitFor("the pre-election to disengage", 30*time.Second, func() (bool, string) {
		va, vb := h.podView(0), h.podView(1)
		return va.PreElected == "" && vb.PreElected == "", h.describeViews()
	})
}

// TestPairLinkAndMediatorLostTogether: the link and both arrays' routes
// to the mediator are cut at once, before a pre-election could engage:
// the pod suspends on both arrays (never served by both); when the
// mediator returns, the race is run again and one array serves.
func TestPairLinkAndMediatorLostTogether(t *testing.T) {
	h := newMediatedPair(t, -1)
	h.proxy.Partition(true)
	for _, px := range h.medProxy {
		px.Partition(true)
	}
	h.waitFor("the pod to suspend on both arrays", 30*time.Second, func() (bool, string) {
		va, vb := h.podView(0), h.podView(1)
		return va.State == string(pod.Suspended) && vb.State == string(pod.Suspended), h.describeViews()
	})
	for _, px := range h.medProxy {
		px.Partition(false)
	}
	h.waitFor("one array to win once the mediator returns", 30*time.Second, func() (bool, string) {
		va, vb := h.podView(0), h.podView(1)
		alone := 0
		for _, v := range []*replication.PodStatus{va, vb} {
			if v.State == string(pod.Alone) {
				alone++
			}
		}
		if alone > 1 {
			t.Fatalf("both arrays serve the pod alone: %s", h.describeViews())
		}
		return alone == 1, h.describeViews()
	})
	h.proxy.Partition(false)
	h.waitInSync(60 * time.Second)
}

// TestPairFailoverPause measures, at the default timing (the harness's
// link timeout is the default 1 s; the head start is the default 1 s),
// the longest pause a host writing through the winner sees across a
// link cut: with the preference on the surviving array, and with the
// preferred array isolated (the other wins after its head start). It
// logs the figures (run with -v); it asserts only that the writes go on.
func TestPairFailoverPause(t *testing.T) {
	if testing.Short() {
		t.Skip("measures several failovers")
	}
	for _, tc := range []struct {
		name     string
		pref     int  // the preferred array
		isolated bool // the preferred array is cut from the mediator too
	}{
		{"preferred survivor", 1, false},
		{"preferred array gone", 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var pauses []time.Duration
			for run := 0; run < 3; run++ {
				t.Run(fmt.Sprint(run), func(t *testing.T) { pauses = append(pauses, measurePause(t, tc.pref, tc.isolated)) })
			}
			slices.Sort(pauses)
			t.Logf("%s: longest write pause through the winner, 3 runs: %v (median %v)", tc.name, pauses, pauses[1])
		})
	}
}

// measurePause runs one failover to array-b (see TestPairFailoverPause)
// and returns the longest pause between writes acknowledged through it.
func measurePause(t *testing.T, pref int, isolated bool) time.Duration {
	h := newMediatedPair(t, pref)
	_, inB := h.hostPorts()
	stop := make(chan struct{})
	longest := make(chan time.Duration, 1)
	go func() {
		var worst time.Duration
		last := time.Now()
		for v := uint64(1); ; v++ {
			select {
			case <-stop:
				longest <- worst
				return
			default:
			}
			if _, ok := writeValue(inB, 96, v); ok {
				if d := time.Since(last); d > worst {
					worst = d
				}
				last = time.Now()
			}
		}
	}()
	time.Sleep(300 * time.Millisecond)
	if isolated {
		h.medProxy[pref].Partition(true)
	}
	h.proxy.Partition(true)
	h.waitWinner(1, "array-b to win")
	time.Sleep(500 * time.Millisecond) // writes go on through the winner
	close(stop)
	worst := <-longest
	h.proxy.Partition(false)
	h.medProxy[pref].Partition(false)
	return worst
}
