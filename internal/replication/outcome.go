package replication

import (
	"context"
	"encoding/json"
	"sync"
	"sync/atomic"

	"github.com/metro-storage/metro/internal/link"
	"github.com/metro-storage/metro/internal/scsi"
)

// Outcomes of forwarded commands whose answers are lost (package scsi,
// outcome.go, has the rules). The sequencer runs a forwarded COMPARE AND
// WRITE or PERSISTENT RESERVE OUT under a sentAnswer: its answer is lost
// when it was not GOOD, when the follower reports that the host did not
// get GOOD (msgAnswered, Length 1: the command ended aborted there), or
// once the link session that carried the command has ended, unless the
// follower confirmed that the host got GOOD (msgAnswered, Length 0). The
// follower reports once the command has ended (scsi.Own.OnEnd), not when
// the answer reaches it: a task aborted meanwhile gives the host no
// status. The follower applies the sequencer's write or reservation
// state for its own forwarded command under the command's forwarded
// record, whose answer is lost once the forward failed or the command
// ended otherwise than GOOD: if this array wins the pod next, it knows
// the outcome the sequencer knew.
//
// The other way round, a COMPARE AND WRITE or PERSISTENT RESERVE OUT a
// host sent to the sequencer itself (a scsi.Own) carries its identity
// and an id of the sequencer's on the write or reservation state it
// mirrors (writeMsg.OwnID, reservationsMsg.OwnID). The follower applies
// them under a sentAnswer of its own session, which the sequencer
// confirms (msgAnswered) once the host got GOOD: if the link fails
// first, the follower's copy holds the effect and the memory of it,
// and answers the host's retry (through it, or forwarded to it by the
// sequencer once that follows).

// answerReport is what became of the answer to a command: the host got
// GOOD (good) or not (notGood), known once (settle).
type answerReport struct {
	good, notGood atomic.Bool
	// settled is closed by settle.
	settled chan struct{}
	once    sync.Once
}

// Settled implements scsi.AnswerFate.
func (r *answerReport) Settled() <-chan struct{} { return r.settled }

// settle records whether the host got GOOD, unless that is known
// already.
func (r *answerReport) settle(delivered bool) {
	r.once.Do(func() {
		if delivered {
			r.good.Store(true)
		} else {
			r.notGood.Store(true)
		}
		close(r.settled)
	})
}

// sentAnswer is the fate of the answer to a command the peer forwarded:
// the peer reports whether the host got GOOD (handleAnswered), and the
// answer is lost too when the link session ends first.
type sentAnswer struct {
	answerReport
	// sess is the link session's context, which ends with it.
	sess context.Context
	// stop cancels the registry's cleanup at the session's end.
	stop func() bool
}

// Lost implements scsi.AnswerFate.
func (a *sentAnswer) Lost() bool {
	return a.notGood.Load() || a.sess.Err() != nil && !a.good.Load()
}

// Delivered implements scsi.AnswerFate.
func (a *sentAnswer) Delivered() bool { return a.good.Load() }

// Lost implements scsi.AnswerFate: the forward of f failed, or the host
// did not get the sequencer's GOOD from this array.
func (f *forwarded) Lost() bool { return f.notGood.Load() }

// Delivered implements scsi.AnswerFate: the host got the sequencer's GOOD
// from this array.
func (f *forwarded) Delivered() bool { return f.good.Load() }

// answering returns the context to run the forwarded command m in (sess
// is the link session's context) and the function to call with its
// result: a command that remembers its outcome is registered until the
// follower confirms its answer or the session ends.
func (r *Replicator) answering(sess context.Context, m *forwardMsg) (context.Context, func(*scsi.Result)) {
	if !scsi.RemembersOutcome(m.Cmd.CDB) {
		return sess, func(*scsi.Result) {}
	}
	a := r.awaitAnswer(sess, m.ID)
	return scsi.WithForwarded(sess, &m.Cmd, a), func(res *scsi.Result) {
		if res.Status != scsi.StatusGood || res.Aborted {
			// The host does not get GOOD: an effect remembered (the
			// command failed after it) answers its retry.
			a.stop()
			r.answers.CompareAndDelete(m.ID, a)
			a.settle(false)
		}
	}
}

// awaitAnswer registers the fate of the answer to the peer's request id
// (sess is the link session's context) until the peer confirms it or the
// session ends.
func (r *Replicator) awaitAnswer(sess context.Context, id uint64) *sentAnswer {
	a := &sentAnswer{sess: sess, answerReport: answerReport{settled: make(chan struct{})}}
	// stop is set before the registry publishes a: handleAnswered reads
	// it on another goroutine.
	a.stop = context.AfterFunc(sess, func() {
		r.answers.CompareAndDelete(id, a)
		a.settle(false)
	})
	r.answers.Store(id, a)
	if sess.Err() != nil {
		r.answers.CompareAndDelete(id, a) // the cleanup may have run first
	}
	return a
}

// handleAnswered takes the peer's report on the answer to its request
// (writtenMsg's Ref): Length 0, the host got GOOD, and the outcome is no
// longer answered to a retry; Length 1, the host did not (the command
// was aborted or failed there, or its array could not pass the answer
// on), and the outcome answers the host's retry at once, without
// waiting for the link session to end.
func (r *Replicator) handleAnswered(req link.Message) error {
	m, err := decodeWritten(req.Payload)
	if err != nil {
		return err
	}
	if v, ok := r.answers.LoadAndDelete(m.Ref); ok {
		a := v.(*sentAnswer)
		a.stop()
		a.settle(m.Length == 0)
	}
	return nil
}

// ownID returns the id under which this array, the pod's sequencer,
// mirrors the effect of the command it runs under ctx for a host of its
// own (a scsi.Own), and the command's identity; 0 when ctx runs no such
// command (every plain write: the pod's mode is read only for an Own).
// Once the command ends, the peer is told, without waiting, whether the
// host got GOOD, on the link session the effect goes on.
func (v *Volume) ownID(ctx context.Context, rt *podRT) (uint64, *scsi.Identity) {
	own := scsi.OwnOf(ctx)
	if own == nil {
		return 0, nil
	}
	if o, _ := ctx.Value(originKey{}).(*origin); o != nil {
		return 0, nil // forwarded: the peer remembers it under its own request
	}
	md := rt.mode()
	if md.sess == nil {
		return 0, nil
	}
	id := v.r.nextRef.Add(1)
	ident := own.Identity()
	own.OnEnd(func(delivered bool) { v.sendAnswered(md, id, delivered) })
	return id, &ident
}

// sendAnswered tells the peer, without waiting, whether the host got
// GOOD for the command remembered under id (msgAnswered; Length 1: it
// did not).
func (v *Volume) sendAnswered(md mode, id uint64, delivered bool) {
	m := &writtenMsg{Pod: v.pod, Ref: id}
	if !delivered {
		m.Length = 1
	}
	goCall(context.Background(), md.sess, msgAnswered, md.epoch, m.encode())
}

// withOwn returns ctx for applying at this array the write or
// reservation state that the peer, the pod's sequencer, made for the
// command it ran for a host of its own under id (0: none), with its
// identity; sess is the link session's context.
func (r *Replicator) withOwn(ctx context.Context, sess context.Context, id uint64, ident *scsi.Identity) context.Context {
	if id == 0 || ident == nil {
		return ctx
	}
	return scsi.WithMirrored(ctx, *ident, r.awaitAnswer(sess, id))
}

// reportAnswer tells the sequencer, without waiting, whether the host got
// GOOD for this array's forwarded request id (which remembers its
// outcome), and settles f, its record here.
func (v *Volume) reportAnswer(md mode, id uint64, f *forwarded, delivered bool) {
	f.settle(delivered)
	v.sendAnswered(md, id, delivered)
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

// ownIdentity decodes a writeMsg's Own (nil when absent or malformed:
// nothing is remembered then).
func ownIdentity(p []byte) *scsi.Identity {
	if len(p) == 0 {
		return nil
	}
	var id scsi.Identity
	if json.Unmarshal(p, &id) != nil {
		return nil
	}
	return &id
}
