package replication

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/metro-storage/metro/internal/scsi"
)

// TestIdleStretchedPodNotServed: a volume of a stretched pod is never
// served as local while the replicator does not run the pod's runtime:
// before Run starts it (the array's iSCSI server starts concurrently)
// and after Run stopped it (the iSCSI server stops concurrently). Its
// writes, reads, forwarded commands and reservation shares fail with
// the retryable NOT READY (transitioning) and leave its copy alone; a
// local pod's volume is served as ever. Before, with no runtime the
// volume wrote its own copy, in no order and no change tracking.
func TestIdleStretchedPodNotServed(t *testing.T) {
	h := newHostilePeer(t)
	r := New(Config{Name: nameB, ID: idB, Env: h.env, Logger: h.logs.Logger(), Timeout: time.Second})
	st := h.env.cat.View()
	stretched := r.Volume("pod2", uuidVol2, h.env.st.Volume(st.Volumes["pod2::vol2"].DataID))
	local := r.Volume("local", uuidSecret, h.env.st.Volume(st.Volumes["local::secret"].DataID))
	block := make([]byte, 4096)
	for i := range block {
		block[i] = 0x5a
	}
	check := func(when string) {
		t.Helper()
		ctx := context.Background()
		if err := stretched.WriteAt(ctx, block, 0); !errors.Is(err, scsi.ErrTransitioning) {
			t.Errorf("%s: a write of the stretched pod: %v, want not served (transitioning)", when, err)
		}
		got := make([]byte, 4096)
		if err := stretched.local.ReadAt(ctx, got, 0); err != nil || got[0] != 0 {
			t.Errorf("%s: the stretched pod's copy holds %x... (%v), want the refused write absent", when, got[:8], err)
		}
		if err := stretched.Unmap(ctx, 0, 4096); !errors.Is(err, scsi.ErrTransitioning) {
			t.Errorf("%s: an unmap of the stretched pod: %v, want not served (transitioning)", when, err)
		}
		if err := stretched.ReadAt(ctx, make([]byte, 4096), 0); !errors.Is(err, scsi.ErrTransitioning) {
			t.Errorf("%s: a read of the stretched pod: %v, want not served (transitioning)", when, err)
		}
		res, fwd := stretched.Forward(ctx, &scsi.Command{CDB: []byte{0x2a, 0, 0, 0, 0, 0, 0, 0, 8, 0}, DataOut: block})
		if s, err := scsi.ParseSense(resultSense(res)); !fwd || err != nil || s != scsi.SenseNotReadyTransitioning() {
			t.Errorf("%s: an ordered command of the stretched pod: forwarded %v, %+v, want NOT READY (transitioning)", when, fwd, res)
		}
		if err := stretched.ShareReservations(ctx, scsi.ReservationUpdate{}); !errors.Is(err, scsi.ErrTransitioning) {
			t.Errorf("%s: a reservation change of the stretched pod: %v, want not shared (transitioning)", when, err)
		}
		if err := local.WriteAt(ctx, block, 0); err != nil {
			t.Errorf("%s: a write of a local pod: %v", when, err)
		}
	}
	check("before Run")

	runUntilPod(t, r, "pod2")
	check("after Run")
}

// runUntilPod runs r until it has started the runtime of pod podName,
// then stops it.
func runUntilPod(t *testing.T, r *Replicator, podName string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx, nil) }()
	for r.pod(podName) == nil {
		time.Sleep(time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
}

// resultSense returns a result's sense data (none for nil).
func resultSense(r *scsi.Result) []byte {
	if r == nil {
		return nil
	}
	return r.Sense
}
