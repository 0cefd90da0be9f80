package array

import (
	"fmt"
	"testing"
	"time"

	"github.com/metro-storage/metro/internal/pod"
	"github.com/metro-storage/metro/internal/replication"
	"github.com/metro-storage/metro/internal/scsi"
)

// TestPausedReportsPeerTransitioning (issue 10, leftovers): an array
// restarts holding a stretched pod that it orders, and its link to the
// peer is not up. Before its replicator has started the pod's runtime,
// and then while the pod's machine is paused (it holds I/O until the
// peer's lease has surely run out, here one long link timeout), this
// array cannot know the peer's state: the peer may be serving the pod
// alone after winning it. Linux's ALUA handler updates every target port
// group from any array's REPORT TARGET PORT GROUPS and fails I/O on the
// paths of a group reported Unavailable without sending it, so the peer's
// group must not be reported Unavailable then: it is Transitioning
// (the host sends I/O there and the peer answers for itself), and this
// array's own group is Transitioning before the runtime runs and active
// while paused (its I/O is held, not refused). Before, the peer's group
// was Unavailable in both windows.
func TestPausedReportsPeerTransitioning(t *testing.T) {
	// The pause lasts one link timeout (the peer's lease): long, so that
	// the test reads the paused state however slow the machine.
	a, host, peer, release := heldPodArray(t, true, func(c *Config) { c.Replication.Timeout.Duration = 10 * time.Minute })
	own, other := a.id.TargetPortGroup(), (Identity{ID: peer.ID}).TargetPortGroup()
	check := func(when string, wantOwn scsi.AccessState) {
		t.Helper()
		if st := groupStateOf(t, host, own); st != wantOwn {
			t.Errorf("%s, this array reports its own group %#x, want %#x", when, st, wantOwn)
		}
		if st := groupStateOf(t, host, other); st != scsi.Transitioning {
			t.Errorf("%s, this array reports the peer's group %#x, want Transitioning (%#x): it cannot know the peer's state", when, st, scsi.Transitioning)
		}
	}
	check("before the pod's runtime runs", scsi.Transitioning)

	release()
	deadline := time.Now().Add(30 * time.Second)
	for {
		p := a.cat.View().Pods["pod1"]
		if _, running := a.repl.Serving("pod1"); running && a.repl.Status(p).State == string(pod.Paused) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the pod is not paused within 30s of the replicator's start: %+v", a.repl.Status(a.cat.View().Pods["pod1"]))
		}
		time.Sleep(10 * time.Millisecond)
	}
	check("while the pod is paused", scsi.ActiveOptimized)
	if st := a.repl.Status(a.cat.View().Pods["pod1"]).State; st != string(pod.Paused) {
		t.Fatalf("the pod left the paused state during the check (%s): the checks above did not read it paused", st)
	}
}

// groupsThrough returns the state of each target port group, by id, as
// REPORT TARGET PORT GROUPS through in reports them.
func groupsThrough(t *testing.T, in *initiator) map[uint16]scsi.AccessState {
	t.Helper()
	r, _ := in.doPastUA(reportTPG(), nil, 4096)
	if r.Status != scsi.StatusGood {
		t.Fatalf("REPORT TARGET PORT GROUPS through %s: %s", in.arr.cfg.Name, describe(r))
	}
	groups, err := parseTPG(r.Data)
	if err != nil {
		t.Fatal(err)
	}
	out := map[uint16]scsi.AccessState{}
	for _, g := range groups {
		out[g.id] = g.state
	}
	return out
}

// TestPairSuspendedSequencerReportsPeerTransitioning (issue 10,
// leftovers): the sequencer cannot reach the mediator when the link is
// cut; its elect fails and it suspends the pod, still owning its epoch
// as far as it knows, while the follower, which reaches the mediator,
// wins and serves alone. The suspended sequencer cannot know that: it
// must report the winner's group Transitioning, not Unavailable (a host
// reading it would stop using the only paths that serve the pod), and its
// own Unavailable. The winner reports its own group active and the
// loser's Unavailable. Before, the suspended sequencer reported the
// winner's group Unavailable.
func TestPairSuspendedSequencerReportsPeerTransitioning(t *testing.T) {
	h := newMediatedPair(t, 1)
	inA, inB := h.hostPorts()
	h.medProxy[0].Partition(true)
	h.waitFor("array-a to see the mediator unreachable", 30*time.Second, func() (bool, string) {
		v := h.podView(0)
		return v.Mediator.State != replication.MediatorOnline, fmt.Sprintf("%+v", v.Mediator)
	})
	h.proxy.Partition(true)
	h.log.Info("link cut; array-a cannot reach the mediator")
	h.waitWinner(1, "array-b to win and serve alone, array-a to suspend")
	if v := h.podView(0); v.Sequencer != h.arrays[0].cfg.Name {
		t.Fatalf("the suspended array-a learnt that it lost (sequencer %s): the test does not test an array that cannot know", v.Sequencer)
	}
	tpgA, tpgB := h.arrays[0].id.TargetPortGroup(), h.arrays[1].id.TargetPortGroup()
	if g := groupsThrough(t, inA); g[tpgA] != scsi.Unavailable || g[tpgB] != scsi.Transitioning {
		t.Errorf("through the suspended array-a: its group %#x, array-b's %#x; want Unavailable (%#x) and Transitioning (%#x)", g[tpgA], g[tpgB], scsi.Unavailable, scsi.Transitioning)
	}
	if g := groupsThrough(t, inB); g[tpgB] != scsi.ActiveOptimized || g[tpgA] != scsi.Unavailable {
		t.Errorf("through the winner array-b: its group %#x, array-a's %#x; want Active/Optimized (%#x) and Unavailable (%#x)", g[tpgB], g[tpgA], scsi.ActiveOptimized, scsi.Unavailable)
	}
}
