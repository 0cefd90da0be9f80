package array

import (
	"context"
	"testing"
	"time"

	"github.com/metro-storage/metro/internal/catalog"
	iscsiinit "github.com/metro-storage/metro/internal/initiator"
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
	c := loopbackConfig(t, t.TempDir())
	c.ISCSI.Listen = []string{reservePort(t)}
	// The pause lasts one link timeout (the peer's lease): long, so that
	// the test reads the paused state however slow the machine.
	c.Replication.Timeout.Duration = 10 * time.Minute
	a, err := Open(Options{Config: c})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	self := catalog.PodArray{Name: c.Name, ID: a.id.ID}
	peer := catalog.PodArray{Name: "array-p", ID: newID()}
	for _, op := range []catalog.Op{
		catalog.CreatePod{Name: "pod1", ID: newID(), Created: now, Array: self},
		catalog.CreateVolume{Name: "pod1::vol1", UUID: newID(), Size: 64 << 20, Created: now},
		catalog.CreateHost{Host: catalog.Host{Name: "h1", IQNs: []string{testIQN}}},
		catalog.Connect{Volume: "pod1::vol1", Host: "h1"},
		catalog.SetPodMembership{Name: "pod1", Arrays: []catalog.PodArray{self, peer}, Sequencer: self.Name, Epoch: 2},
	} {
		if err := a.cat.Apply(op); err != nil {
			a.Close()
			t.Fatalf("%s: %v", op.Kind(), err)
		}
	}
	held, release := make(chan struct{}), make(chan struct{})
	a.holdReplication = func(ctx context.Context) {
		close(held)
		select {
		case <-release:
		case <-ctx.Done():
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	ready, done := make(chan struct{}), make(chan error, 1)
	go func() { done <- a.Run(ctx, func() { close(ready) }) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	select {
	case <-ready:
	case err := <-done:
		done <- err
		t.Fatalf("Run ended before it was ready: %v", err)
	}
	<-held

	dctx, dcancel := context.WithTimeout(ctx, 30*time.Second)
	defer dcancel()
	host, err := iscsiinit.Dial(dctx, c.ISCSI.Listen[0], iscsiinit.Options{InitiatorName: testIQN, TargetName: c.ISCSI.Target, Timeout: 20 * time.Second})
	if err != nil {
		t.Fatalf("log in while the replicator has not started: %v", err)
	}
	defer host.Close()
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

	close(release)
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
