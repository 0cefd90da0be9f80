package array

import (
	"testing"
	"time"

	"github.com/metro-storage/metro/internal/pod"
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
