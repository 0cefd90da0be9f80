package replication

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/metro-storage/metro/internal/link"
	"github.com/metro-storage/metro/internal/pod"
	"github.com/metro-storage/metro/internal/scsi"
	"github.com/metro-storage/metro/internal/store"
)

// Volume is the replicated view of one volume: the Backend of its logical
// unit and its Replica. Reads are local; at the sequencer of a stretched
// pod, writes and unmaps also go to the follower; at the follower, ordered
// commands run at the sequencer.
type Volume struct {
	r     *Replicator
	pod   string
	uuid  string
	local *store.Volume
}

var (
	_ scsi.Backend = (*Volume)(nil)
	_ scsi.Replica = (*Volume)(nil)
)

// Volume returns the replicated view of a volume of pod with the UUID,
// whose blocks are local.
func (r *Replicator) Volume(podName, uuid string, local *store.Volume) *Volume {
	return &Volume{r: r, pod: podName, uuid: uuid, local: local}
}

// rt returns the pod's runtime when the pod is stretched (nil: local).
// A stretched pod whose runtime does not run (the replicator has not
// started it yet, or has stopped) is never served as local, whatever
// its copy holds: a write here would be in no order and no change
// tracking, so errNotServing (NOT READY, transitioning) until its
// runtime runs and its machine says this array serves it.
func (v *Volume) rt() (*podRT, error) {
	if p := v.r.pod(v.pod); p != nil {
		return p, nil
	}
	if v.r.idleStretched(v.pod) {
		return nil, errNotServing
	}
	return nil, nil
}

// ReadAt implements scsi.Backend. Blocks damaged here are read from the
// other array's copy when the pod is in sync, and rewritten (repair.go).
func (v *Volume) ReadAt(ctx context.Context, p []byte, off int64) error {
	if err := v.Readable(ctx); err != nil {
		return err
	}
	err := v.local.ReadAt(ctx, p, off)
	if store.IsDamage(err) {
		return v.repairRead(ctx, p, off, err)
	}
	return err
}

// Mapped implements scsi.Backend.
func (v *Volume) Mapped(ctx context.Context, off, length int64) (bool, int64, error) {
	return v.local.Mapped(ctx, off, length)
}

// forwarded is a command this array forwarded to the sequencer, while it
// waits for the answer.
type forwarded struct {
	// pod and uuid name the command's volume: the sequencer's mirror
	// writes referring to data are writes to it.
	pod, uuid string
	// data is the command's data-out, which the sequencer's mirror
	// writes refer to.
	data []byte
	// total is the data-out's length for a plain write, which completes
	// here as soon as both copies hold all of it (0: wait for the
	// sequencer's answer). applied counts the bytes of it this array
	// wrote (the sequencer's mirror), confirmed those the sequencer
	// wrote; written is closed when both reach total.
	total              int64
	applied, confirmed atomic.Int64
	written            chan struct{}
	once               sync.Once
	// cmd is the command; its answerReport tells whether the host got
	// the sequencer's GOOD, once the command has ended here, or not
	// (its forward failed, or it ended otherwise: outcome.go).
	cmd *scsi.Command
	answerReport
}

// add counts n bytes into c (applied or confirmed).
func (f *forwarded) add(c *atomic.Int64, n int64) {
	c.Add(n)
	if f.total > 0 && f.applied.Load() >= f.total && f.confirmed.Load() >= f.total {
		f.once.Do(func() { close(f.written) })
	}
}

// originKey marks the context of a command forwarded by the follower.
type originKey struct{}

// origin is a forwarded command's request id and data-out, which the
// follower still holds: writes of that data travel as references.
type origin struct {
	id   uint64
	data []byte
}

// within returns the offset of p inside o's data-out, or -1.
func (o *origin) within(p []byte) int64 {
	if o == nil || len(p) == 0 || len(o.data) == 0 {
		return -1
	}
	base := uintptr(unsafe.Pointer(unsafe.SliceData(o.data)))
	at := uintptr(unsafe.Pointer(unsafe.SliceData(p)))
	if at < base || at+uintptr(len(p)) > base+uintptr(len(o.data)) {
		return -1
	}
	return int64(at - base)
}

// WriteAt implements scsi.Backend. A write of a stretched pod goes
// through the pod's order (mirror), which refuses it unless this array is
// the pod's sequencer now: one that lost the pod between the command's
// routing and its write must not write its copy alone.
func (v *Volume) WriteAt(ctx context.Context, p []byte, off int64) error {
	rt, err := v.rt()
	if rt == nil {
		if err != nil {
			return err
		}
		return v.local.WriteAt(ctx, p, off)
	}
	// The space this write needs here is set aside before the peer is
	// asked to store it: a write this array cannot take for lack of
	// space fails before it is mirrored (forwarded writes too), so the
	// copies never differ and the peer is never suspended for this
	// array's full disk.
	res, err := v.local.Reserve(off, int64(len(p)))
	if err != nil {
		return err
	}
	defer res.Release()
	m := &writeMsg{Pod: v.pod, Volume: v.uuid, Off: uint64(off), Length: uint64(len(p))}
	o, _ := ctx.Value(originKey{}).(*origin)
	var done *writtenMsg
	if at := o.within(p); at >= 0 {
		m.Ref, m.RefOff = o.id, uint64(at)
		done = &writtenMsg{Pod: v.pod, Ref: o.id, Length: uint64(len(p))}
	} else {
		m.Data = p
		if id, ident := v.ownID(ctx, rt); id != 0 {
			m.OwnID, m.Own = id, mustJSON(ident)
		}
	}
	v.r.traffic.mirror.Add(int64(len(m.Data)))
	return rt.mirror(ctx, region{uuid: v.uuid, off: off, n: int64(len(p))},
		func(ctx context.Context) error { return v.local.WriteAtReserved(ctx, p, off, res) },
		msgWrite, m.encode(), done)
}

// Unmap implements scsi.Backend.
func (v *Volume) Unmap(ctx context.Context, off, length int64) error {
	rt, err := v.rt()
	if rt == nil {
		if err != nil {
			return err
		}
		return v.local.Unmap(ctx, off, length)
	}
	payload := (&writeMsg{Pod: v.pod, Volume: v.uuid, Off: uint64(off), Length: uint64(length)}).encode()
	return rt.mirror(ctx, region{uuid: v.uuid, off: off, n: length},
		func(ctx context.Context) error { return v.local.Unmap(ctx, off, length) },
		msgUnmap, payload, nil)
}

// forwardTimeouts is how many link timeouts a forwarded command is given
// to be answered (Config.Timeout). It is a backstop for a sequencer that
// answers the link's pings but not the command, not a bound on a busy
// one: the command may wait there behind many others for its locks, and
// for the sequencer's own disk (a stall below max_disk_stall is not a
// failure), so it is generous, and still well inside host I/O timeouts
// (30 s and more) at the default link timeout.
const forwardTimeouts = 10

// Forward implements scsi.Replica: at the follower, run cmd at the
// sequencer. The command's data-out stays registered until the
// sequencer's answer, for writes that refer to it. A command not
// answered within forwardTimeouts link timeouts ends the link session:
// the pod goes through the link-lost path and the host gets a retryable
// NOT READY.
func (v *Volume) Forward(ctx context.Context, cmd *scsi.Command) (*scsi.Result, bool) {
	rt, err := v.rt()
	if rt == nil {
		if err != nil {
			return notReady(scsi.SenseNotReadyTransitioning()), true
		}
		return nil, false
	}
	var md mode
	for {
		md = rt.mode()
		if md.role != pod.Follower {
			return nil, false // this array orders the pod (it may just have won it)
		}
		if md.serving && md.sess != nil && md.state == pod.InSync {
			break
		}
		if !md.waits() && !md.holds {
			return notReady(scsi.SenseNotReadyUnavailable()), true
		}
		// Paused (writes are held while the race is decided, even with
		// this array's read lease still running and the link gone), or
		// past the lease with the link ending: wait for the machine. The
		// wait is bounded by the race: the machine leaves the paused
		// state once it wins (this array then orders the command
		// itself), loses, or cannot reach the mediator (unavailable
		// then), within the head start plus the mediator's deadline plus
		// the fence; and by the command's context.
		select {
		case <-md.changed:
		case <-ctx.Done():
			return notReady(scsi.SenseNotReadyTransitioning()), true
		case <-time.After(50 * time.Millisecond):
		}
	}
	id := v.r.nextRef.Add(1)
	f := &forwarded{pod: v.pod, uuid: v.uuid, data: cmd.DataOut, cmd: cmd, answerReport: answerReport{settled: make(chan struct{})}}
	if scsi.IsPlainWrite(cmd.CDB) && len(cmd.DataOut) > 0 {
		f.total = int64(len(cmd.DataOut))
		f.written = make(chan struct{})
	}
	v.r.refs.Store(id, f)
	defer v.r.refs.Delete(id)
	m := &forwardMsg{Pod: v.pod, Volume: v.uuid, ID: id, Cmd: *cmd}
	v.r.traffic.forward.Add(int64(len(cmd.DataOut)))
	// The sequencer runs the command to its end whatever happens here,
	// so the answer is awaited even if the task is aborted meanwhile, up
	// to a deadline: a sequencer that answers pings but not the command
	// is treated as the link lost (the pod's machine decides), and the
	// host retries.
	cmd.Forwarded()
	pend := goCall(context.WithoutCancel(ctx), md.sess, msgForward, md.epoch, m.encode())
	deadline := time.NewTimer(forwardTimeouts * v.r.cfg.Timeout)
	defer deadline.Stop()
	select {
	case <-pend.Done():
	case <-deadline.C:
		f.settle(false)
		rt.peerFailed(md.sess, fmt.Errorf("the sequencer did not answer a forwarded command within %v", forwardTimeouts*v.r.cfg.Timeout))
		return notReady(scsi.SenseNotReadyTransitioning()), true
	case <-f.written:
		// A plain write is done once both copies hold all its data:
		// the sequencer said it wrote its copy, and this array applied
		// the sequencer's mirror of it, in the order the sequencer
		// chose. That is one round trip, where the sequencer's answer
		// would take two (it follows the mirror's acknowledgement); the
		// answer, GOOD, is dropped when it comes.
		return &scsi.Result{Status: scsi.StatusGood}, true
	}
	resp, err := pend.Wait()
	if err != nil {
		f.settle(false)
		var re *link.RemoteError
		if errors.As(err, &re) {
			v.r.log.Warn("the sequencer refused a forwarded command", "pod", v.pod, "initiator", cmd.Nexus.InitiatorName, "err", err)
		} else {
			v.r.log.Debug("forward failed", "pod", v.pod, "err", err)
		}
		return notReady(scsi.SenseNotReadyTransitioning()), true
	}
	res, err := decodeResult(resp.Payload)
	if err != nil {
		f.settle(false)
		return notReady(scsi.SenseNotReadyTransitioning()), true
	}
	own := scsi.OwnOf(ctx)
	switch {
	case !scsi.RemembersOutcome(cmd.CDB):
		f.settle(true)
	case own != nil:
		// The sequencer hears whether the host got GOOD once the
		// command has ended here: it may still be aborted, and the
		// answer is then lost after the sequencer's GOOD.
		own.OnEnd(func(delivered bool) { v.reportAnswer(md, id, f, delivered) })
	default:
		v.reportAnswer(md, id, f, res.Status == scsi.StatusGood && !res.Aborted)
	}
	return res, true
}

func notReady(s scsi.Sense) *scsi.Result {
	return &scsi.Result{Status: scsi.StatusCheckCondition, Sense: s.Bytes()}
}

// Ordering implements scsi.Replica.
func (v *Volume) Ordering() bool {
	rt, _ := v.rt()
	if rt == nil || rt.role() != pod.Sequencer {
		return false
	}
	// From Syncing on: the follower starts serving when it accepts the
	// grant, before this array learns it did.
	s := rt.mode().state
	return s == pod.Syncing || s == pod.InSync || s == pod.Paused
}

// Readable implements scsi.Replica: the rule of ReadAt.
func (v *Volume) Readable(ctx context.Context) error {
	rt, err := v.rt()
	if rt != nil {
		return rt.waitReadable(ctx)
	}
	return err
}

// ShareReservations implements scsi.Replica. While the follower
// receives a copy, it may lack changes made before (it was cut off): the
// update is marked Resync, for it to give its nexuses the unit
// attentions they missed. At an array that does not order the pod (it
// may have lost it since the command that made the change was routed
// here) it fails: the change is on no array that serves the pod.
func (v *Volume) ShareReservations(ctx context.Context, u scsi.ReservationUpdate) error {
	rt, err := v.rt()
	if rt == nil {
		// A stretched pod without its runtime: the change cannot reach
		// the peer, so it must not be reported GOOD (err).
		return err
	}
	if rt.role() != pod.Sequencer {
		return errNotServing
	}
	if rt.mode().state == pod.Syncing {
		u.Resync = true
	}
	m := reservationsMsg{Pod: v.pod, Volume: v.uuid, Update: u}
	if o, _ := ctx.Value(originKey{}).(*origin); o != nil {
		m.Origin = o.id
	} else {
		m.OwnID, m.Own = v.ownID(ctx, rt)
	}
	payload := mustJSON(m)
	return rt.mirror(ctx, region{}, nil, msgReservations, payload, nil)
}

// Reset implements scsi.Replica. The peer performs the reset (it aborts
// tasks there and may wait for them, and at the sequencer shares the
// resulting state), so it is given the bound of a forwarded command,
// forwardTimeouts link timeouts: a peer that answers the link's pings
// but not the reset is treated as the link lost (the session ends and
// the pod's machine decides), and the host's task management function
// completes.
func (v *Volume) Reset(ctx context.Context, lunReset bool) {
	rt, _ := v.rt()
	if rt == nil {
		return
	}
	md := rt.mode()
	if md.sess == nil || (md.role == pod.Sequencer && md.state != pod.InSync && md.state != pod.Syncing) {
		return
	}
	payload := mustJSON(resetMsg{Pod: v.pod, Volume: v.uuid, LUNReset: lunReset})
	bound := forwardTimeouts * v.r.cfg.Timeout
	cctx, cancel := context.WithTimeout(ctx, bound)
	defer cancel()
	if _, err := call(cctx, md.sess, msgReset, md.epoch, payload); err != nil {
		if ctx.Err() == nil && cctx.Err() != nil {
			rt.peerFailed(md.sess, fmt.Errorf("the peer did not answer a reset within %v", bound))
			return
		}
		v.r.log.Warn("reset on the peer failed", "pod", v.pod, "err", err)
	}
}

// Decides implements scsi.Replica: a local pod's array decides, a
// stretched pod's sequencer does (not an array whose runtime of the pod
// does not run).
func (v *Volume) Decides() bool {
	rt, err := v.rt()
	if rt == nil {
		return err == nil
	}
	return rt.role() == pod.Sequencer
}

// errEpoch refuses a message of another epoch.
func errEpoch(podName string, got, want uint64) error {
	return fmt.Errorf("pod %s: message of epoch %d refused at epoch %d", podName, got, want)
}
