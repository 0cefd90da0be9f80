package array

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/metro-storage/metro/internal/catalog"
	iscsiinit "github.com/metro-storage/metro/internal/initiator"
	"github.com/metro-storage/metro/internal/scsi"
)

// heldPodArray opens an array holding pod1, a stretched pod whose other
// array (peer, array-p) never answers and whose sequencer is this array
// when selfOrders is set (else the peer), with edit applied to its
// configuration. It runs the array with its replicator held before it
// starts the pods' runtimes, and logs a host in meanwhile: release lets
// the replicator start. Everything stops at the end of the test.
func heldPodArray(t *testing.T, selfOrders bool, edit func(*Config)) (a *Array, host *iscsiinit.Conn, peer catalog.PodArray, release func()) {
	t.Helper()
	c := loopbackConfig(t, t.TempDir())
	c.ISCSI.Listen = []string{reservePort(t)}
	if edit != nil {
		edit(c)
	}
	a, err := Open(Options{Config: c})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	self := catalog.PodArray{Name: c.Name, ID: a.id.ID}
	peer = catalog.PodArray{Name: "array-p", ID: newID()}
	seq := peer.Name
	if selfOrders {
		seq = self.Name
	}
	for _, op := range []catalog.Op{
		catalog.CreatePod{Name: "pod1", ID: newID(), Created: now, Array: self},
		catalog.CreateVolume{Name: "pod1::vol1", UUID: newID(), Size: 64 << 20, Created: now},
		catalog.CreateHost{Host: catalog.Host{Name: "h1", IQNs: []string{testIQN}}},
		catalog.Connect{Volume: "pod1::vol1", Host: "h1"},
		catalog.SetPodMembership{Name: "pod1", Arrays: []catalog.PodArray{self, peer}, Sequencer: seq, Epoch: 2},
	} {
		if err := a.cat.Apply(op); err != nil {
			a.Close()
			t.Fatalf("%s: %v", op.Kind(), err)
		}
	}
	held, released := make(chan struct{}), make(chan struct{})
	a.holdReplication = func(ctx context.Context) {
		close(held)
		select {
		case <-released:
		case <-ctx.Done():
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	ready, done := make(chan struct{}), make(chan error, 1)
	go func() { done <- a.Run(ctx, func() { close(ready) }) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	select {
	case <-ready:
	case err := <-done:
		done <- err
		t.Fatalf("Run ended before it was ready: %v", err)
	}
	<-held

	dctx, dcancel := context.WithTimeout(ctx, 30*time.Second)
	defer dcancel()
	host, err = iscsiinit.Dial(dctx, c.ISCSI.Listen[0], iscsiinit.Options{InitiatorName: testIQN, TargetName: c.ISCSI.Target, Timeout: 20 * time.Second})
	if err != nil {
		t.Fatalf("log in while the replicator has not started: %v", err)
	}
	t.Cleanup(func() { host.Close() })
	return a, host, peer, func() { close(released) }
}

// TestStretchedPodNotServedBeforeItsRuntime: an array starts holding a
// copy of a stretched pod that its peer orders (as a follower does after
// a restart), and its iSCSI server serves before its replicator has
// started the pod's runtime: a hook holds that start. A host that logs in
// meanwhile sees this array's paths Transitioning, its write is refused
// with the retryable NOT READY (04/0A) and lands nowhere. Once the runtime
// runs, its machine decides (the peer is unreachable here, so the array
// suspends and reports Unavailable) and the block was never written.
// Before, the array reported its paths Active/Optimized in that window
// and wrote the block to its own copy alone, in no order and no change
// tracking, where no resync would ever repair it.
func TestStretchedPodNotServedBeforeItsRuntime(t *testing.T) {
	a, host, _, release := heldPodArray(t, false, nil)
	ctx := context.Background()
	tpg := a.id.TargetPortGroup()
	block := bytes.Repeat([]byte{0x5a}, 4096)
	if st := groupStateOf(t, host, tpg); st != scsi.Transitioning {
		t.Errorf("before the pod's runtime runs, this array reports its paths %#x, want Transitioning (%#x)", st, scsi.Transitioning)
	}
	if err := pastUA(func() error { return host.Write(0, 0, block) }); !isNotReady(err, 0x0a) {
		t.Errorf("a write before the pod's runtime runs: %v, want NOT READY 04/0A (transitioning)", err)
	}
	if err := pastUA(func() error { _, err := host.Read(0, 0, 8); return err }); !isNotReady(err, 0x0a) {
		t.Errorf("a read before the pod's runtime runs: %v, want NOT READY 04/0A (transitioning)", err)
	}
	local := make([]byte, len(block))
	vol := a.store.Volume(a.cat.View().Volumes["pod1::vol1"].DataID)
	if err := vol.ReadAt(ctx, local, 0); err != nil || !bytes.Equal(local, make([]byte, len(local))) {
		t.Fatalf("the write refused before the runtime ran is in this array's copy (%x..., %v)", local[:8], err)
	}

	release()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, running := a.repl.Serving("pod1"); running {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the pod's runtime did not start within 30s of the replicator's")
		}
		time.Sleep(10 * time.Millisecond)
	}
	// The peer never answers: the machine suspends the pod here (its
	// record says the peer orders it), and reports it Unavailable.
	for st := groupStateOf(t, host, tpg); st != scsi.Unavailable; st = groupStateOf(t, host, tpg) {
		if time.Now().After(deadline) {
			t.Fatalf("once the runtime runs, this array reports its paths %#x, want Unavailable", st)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := pastUA(func() error { return host.Write(0, 0, block) }); !isNotReady(err, 0x0c) {
		t.Errorf("a write with the pod suspended: %v, want NOT READY 04/0C (unavailable)", err)
	}
	if err := vol.ReadAt(ctx, local, 0); err != nil || !bytes.Equal(local, make([]byte, len(local))) {
		t.Fatalf("a refused write is in this array's copy (%x..., %v)", local[:8], err)
	}
}

// pastUA runs op again while it fails with a unit attention (a few at
// most).
func pastUA(op func() error) error {
	for i := 0; ; i++ {
		err := op()
		var se *iscsiinit.SCSIError
		if i == 8 || !errors.As(err, &se) {
			return err
		}
		if key, _, _ := se.SenseKey(); key != scsi.KeyUnitAttention {
			return err
		}
	}
}

// isNotReady reports whether err is CHECK CONDITION NOT READY 04/ascq.
func isNotReady(err error, ascq byte) bool {
	var se *iscsiinit.SCSIError
	if !errors.As(err, &se) {
		return false
	}
	key, asc, q := se.SenseKey()
	return key == scsi.KeyNotReady && asc == 0x04 && q == ascq
}

// groupStateOf returns the access state the host is told of target port
// group tpg (REPORT TARGET PORT GROUPS, extended header).
func groupStateOf(t *testing.T, c *iscsiinit.Conn, tpg uint16) scsi.AccessState {
	t.Helper()
	var d []byte
	err := pastUA(func() error {
		var err error
		d, err = c.ReportTargetPortGroups(0)
		return err
	})
	if err != nil {
		t.Fatalf("REPORT TARGET PORT GROUPS: %v", err)
	}
	var seen []string
	for p := 8; p+8 <= len(d); p += 8 + 4*int(d[p+7]) {
		id := uint16(d[p+2])<<8 | uint16(d[p+3])
		if id == tpg {
			return scsi.AccessState(d[p] & 0x0f)
		}
		seen = append(seen, fmt.Sprint(id))
	}
	t.Fatalf("REPORT TARGET PORT GROUPS has no group %d (groups %v)", tpg, seen)
	return 0
}
