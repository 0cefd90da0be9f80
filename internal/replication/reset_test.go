package replication

import (
	"context"
	"testing"

	"github.com/metro-storage/metro/internal/link"
)

// TestResetDeadline (issue 10, leftovers): a logical unit reset at the
// follower is shared with the sequencer (msgReset), which takes it and
// never answers, while the link stays up (its heartbeats are answered).
// Before, the reset waited for ever, and with it the host's task
// management function. Now it gives up after forwardTimeouts link
// timeouts, as a forwarded command does, and the link session ends, so
// the pod goes through the link-lost path and its machine decides.
func TestResetDeadline(t *testing.T) {
	arrived, sess, vol := newHostilePeer(t).followerStuckOn(msgReset)
	done := make(chan struct{})
	go func() {
		defer close(done)
		vol.Reset(context.Background(), true)
	}()
	// Liveness bounds, not timing assertions: the deadline is 10 s here.
	within(t, done, "the reset the sequencer never answers")
	select {
	case <-arrived:
	default:
		t.Fatal("the reset never reached the sequencer: the test tested nothing")
	}
	within(t, sess.Done(), "the end of the link session after a reset the sequencer never answered")
}

// stuckOn makes the fake peer take every request of type typ and never
// answer it (until the test ends; the others are answered at once), and
// returns a channel that has a value once one arrived.
func (h *hostilePeer) stuckOn(typ uint16) <-chan struct{} {
	stuck := make(chan struct{})
	h.t.Cleanup(func() { close(stuck) }) // before the peer's session closes
	arrived := make(chan struct{}, 1)
	serve := func(req link.Message) (link.Message, error) {
		if req.Type == typ {
			select {
			case arrived <- struct{}{}:
			default:
			}
			<-stuck
		}
		return link.Message{Type: req.Type}, nil
	}
	h.serve.Store(&serve)
	return arrived
}

// followerStuckOn makes this array pod1's in-sync follower of the fake
// peer, which never answers requests of type typ (stuckOn), and returns
// stuckOn's channel, the link session and pod1's volume.
func (h *hostilePeer) followerStuckOn(typ uint16) (arrived <-chan struct{}, sess *link.Session, vol *Volume) {
	h.followInSync("pod1", epoch1)
	arrived = h.stuckOn(typ)
	vol = h.env.r.Volume("pod1", uuidVol1, h.env.st.Volume(h.env.cat.View().Volumes["pod1::vol1"].DataID))
	return arrived, h.env.r.session(), vol
}
