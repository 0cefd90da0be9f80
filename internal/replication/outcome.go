package replication

import (
	"context"
	"sync/atomic"

	"github.com/metro-storage/metro/internal/link"
	"github.com/metro-storage/metro/internal/scsi"
)

// Outcomes of forwarded commands whose answers are lost (package scsi,
// outcome.go, has the rules). The sequencer runs a forwarded COMPARE AND
// WRITE or PERSISTENT RESERVE OUT under a sentAnswer: its answer may be
// lost once the link session that carried the command has ended, unless
// the follower confirmed it got it (msgAnswered, sent after a GOOD). The
// follower applies the sequencer's write or reservation state for its
// own forwarded command under the command's forwarded record, whose
// answer is lost once the forward failed: if this array wins the pod
// next, it knows the outcome the sequencer knew.

// sentAnswer is the fate of the answer to a command the peer forwarded.
type sentAnswer struct {
	// sess is the link session's context, which ends with it.
	sess      context.Context
	confirmed atomic.Bool
	// stop cancels the registry's cleanup at the session's end.
	stop func() bool
}

// Lost implements scsi.AnswerFate.
func (a *sentAnswer) Lost() bool { return a.sess.Err() != nil && !a.confirmed.Load() }

// Delivered implements scsi.AnswerFate.
func (a *sentAnswer) Delivered() bool { return a.confirmed.Load() }

// Lost implements scsi.AnswerFate: the forward of f failed, so the host
// got no answer from this array.
func (f *forwarded) Lost() bool { return f.lost.Load() }

// Delivered implements scsi.AnswerFate: the forward of f was answered.
func (f *forwarded) Delivered() bool { return f.answered.Load() }

// answering returns the context to run the forwarded command m in (sess
// is the link session's context) and the function to call with its
// result: a command that remembers its outcome is registered until the
// follower confirms its answer or the session ends.
func (r *Replicator) answering(sess context.Context, m *forwardMsg) (context.Context, func(*scsi.Result)) {
	if !scsi.RemembersOutcome(m.Cmd.CDB) {
		return sess, func(*scsi.Result) {}
	}
	a := &sentAnswer{sess: sess}
	// stop is set before the registry publishes a: handleAnswered reads
	// it on another goroutine.
	a.stop = context.AfterFunc(sess, func() { r.answers.CompareAndDelete(m.ID, a) })
	r.answers.Store(m.ID, a)
	if sess.Err() != nil {
		r.answers.CompareAndDelete(m.ID, a) // the cleanup may have run first
	}
	return scsi.WithForwarded(sess, &m.Cmd, a), func(res *scsi.Result) {
		if res.Status != scsi.StatusGood {
			// Nothing remembered: the follower confirms only a GOOD.
			a.stop()
			r.answers.CompareAndDelete(m.ID, a)
		}
	}
}

// handleAnswered takes the follower's confirmation that it got the
// answer to its forwarded request (writtenMsg's Ref): the outcome is no
// longer answered to a retry.
func (r *Replicator) handleAnswered(req link.Message) error {
	m, err := decodeWritten(req.Payload)
	if err != nil {
		return err
	}
	if v, ok := r.answers.LoadAndDelete(m.Ref); ok {
		a := v.(*sentAnswer)
		a.confirmed.Store(true)
		a.stop()
	}
	return nil
}

// confirmAnswer tells the sequencer, without waiting, that this array got
// the GOOD answer to its forwarded request id (which remembers its
// outcome).
func (v *Volume) confirmAnswer(md mode, id uint64) {
	goCall(context.Background(), md.sess, msgAnswered, md.epoch, (&writtenMsg{Pod: v.pod, Ref: id}).encode())
}

// withOrigin returns ctx for applying at this array the sequencer's write
// or reservation state made for this array's forwarded request ref (0:
// none), so that the unit remembers the command's outcome with it.
func (r *Replicator) withOrigin(ctx context.Context, podName, uuid string, ref uint64) context.Context {
	if ref == 0 {
		return ctx
	}
	v, ok := r.refs.Load(ref)
	if !ok {
		return ctx
	}
	fw := v.(*forwarded)
	if fw.cmd == nil || fw.pod != podName || fw.uuid != uuid || !scsi.RemembersOutcome(fw.cmd.CDB) {
		return ctx // a plain write's mirror: nothing to remember
	}
	return scsi.WithForwarded(ctx, fw.cmd, fw)
}

// noteWrite tells the pod's unit of volume uuid that length bytes from off
// changed here (a mirrored write, unmap or copied piece), with ctx as
// withOrigin made it.
func (r *Replicator) noteWrite(ctx context.Context, uuid string, off, length uint64) {
	if lu := r.env.LU(uuid); lu != nil {
		lu.NoteWrite(ctx, int64(off), int64(length))
	}
}

// forgetOutcomes drops what the units of the pod remember for retries:
// this array's copy is being replaced by the peer's.
func (r *Replicator) forgetOutcomes(podName string) {
	for _, v := range r.env.Catalog().View().PodVolumes(podName) {
		if lu := r.env.LU(v.UUID); lu != nil {
			lu.ForgetOutcomes()
		}
	}
}
