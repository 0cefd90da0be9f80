package replication

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/metro-storage/metro/internal/scsi"
)

// TestForwardDeadline (issue 10, item 1): the sequencer takes a
// forwarded command and never answers it, while the link stays up (its
// heartbeats are answered). Before, the follower's host waited for ever
// (a fencing race left every reservation command of the volume hanging
// on both arrays). Now the command gets a retryable NOT READY within its
// deadline, forwardTimeouts link timeouts, and the link session ends, so
// the pod goes through the link-lost path and its machine decides.
func TestForwardDeadline(t *testing.T) {
	arrived, sess, vol := newHostilePeer(t).followerStuckOn(msgForward)
	cdb, param := prRegisterCDB(0x77)
	m := forwardCDB("pod1", uuidVol1, iqnH2, cdb, param)
	m.Cmd.Nexus.RelativePortID = portB
	got := make(chan *scsi.Result, 1)
	go func() {
		res, ok := vol.Forward(context.Background(), &m.Cmd)
		if !ok {
			res = nil
		}
		got <- res
	}()
	// Liveness bounds, not timing assertions: the deadline is 10 s here.
	res := within(t, got, "the forwarded command the sequencer never answers")
	select {
	case <-arrived:
	default:
		t.Fatal("the command never reached the sequencer: the test tested nothing")
	}
	if res == nil {
		t.Fatal("Forward ran the command here, at the follower")
	}
	s, err := scsi.ParseSense(res.Sense)
	if res.Status != scsi.StatusCheckCondition || err != nil || !s.Is(scsi.SenseNotReadyTransitioning()) {
		t.Fatalf("the unanswered command: status %#x sense %v (%v), want NOT READY (transitioning)", res.Status, s, err)
	}
	within(t, sess.Done(), "the end of the link session after a forwarded command the sequencer never answered")
}

// within returns what ch yields (or its closing), failing the test if
// it has not within 30 s: a liveness bound, not a timing assertion.
func within[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(30 * time.Second):
		t.Fatalf("%s: still waiting after 30s", what)
	}
	var zero T
	return zero
}

// TestShareAtFollowerFails (issue 10, item 8): a reservation change made
// on an array that no longer orders the pod (it lost the race between
// the command's routing and its share) is on no array that serves the
// pod. Before, the share did nothing and reported success, and the
// command was GOOD; now it fails, retryable, and the change is undone.
func TestShareAtFollowerFails(t *testing.T) {
	h := newHostilePeer(t)
	h.followInSync("pod1", epoch1)
	vol := h.env.r.Volume("pod1", uuidVol1, h.env.st.Volume(h.env.cat.View().Volumes["pod1::vol1"].DataID))
	u := scsi.ReservationUpdate{State: scsi.ReservationState{Generation: 1, Registrations: []scsi.Registration{{Key: 0x77}}}}
	if err := vol.ShareReservations(context.Background(), u); !errors.Is(err, scsi.ErrTransitioning) {
		t.Fatalf("a reservation change shared by the follower: %v, want NOT READY (transitioning)", err)
	}
}
