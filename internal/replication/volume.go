package replication

import (
	"context"
	"fmt"
	"unsafe"

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

// rt returns the pod's runtime when the pod is stretched.
func (v *Volume) rt() *podRT { return v.r.pod(v.pod) }

// ReadAt implements scsi.Backend.
func (v *Volume) ReadAt(ctx context.Context, p []byte, off int64) error {
	return v.local.ReadAt(ctx, p, off)
}

// Mapped implements scsi.Backend.
func (v *Volume) Mapped(ctx context.Context, off, length int64) (bool, int64, error) {
	return v.local.Mapped(ctx, off, length)
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

// WriteAt implements scsi.Backend.
func (v *Volume) WriteAt(ctx context.Context, p []byte, off int64) error {
	rt := v.rt()
	if rt == nil || rt.role != pod.Sequencer {
		return v.local.WriteAt(ctx, p, off)
	}
	m := &writeMsg{Pod: v.pod, Volume: v.uuid, Off: uint64(off), Length: uint64(len(p))}
	o, _ := ctx.Value(originKey{}).(*origin)
	if at := o.within(p); at >= 0 {
		m.Ref, m.RefOff = o.id, uint64(at)
	} else {
		m.Data = p
	}
	v.r.traffic.mirror.Add(int64(len(m.Data)))
	return rt.mirror(ctx, region{uuid: v.uuid, off: off, n: int64(len(p))},
		func(ctx context.Context) error { return v.local.WriteAt(ctx, p, off) },
		msgWrite, m.encode())
}

// Unmap implements scsi.Backend.
func (v *Volume) Unmap(ctx context.Context, off, length int64) error {
	rt := v.rt()
	if rt == nil || rt.role != pod.Sequencer {
		return v.local.Unmap(ctx, off, length)
	}
	payload := (&writeMsg{Pod: v.pod, Volume: v.uuid, Off: uint64(off), Length: uint64(length)}).encode()
	return rt.mirror(ctx, region{uuid: v.uuid, off: off, n: length},
		func(ctx context.Context) error { return v.local.Unmap(ctx, off, length) },
		msgUnmap, payload)
}

// Forward implements scsi.Replica: at the follower, run cmd at the
// sequencer. The command's data-out stays registered until the
// sequencer's answer, for writes that refer to it.
func (v *Volume) Forward(ctx context.Context, cmd *scsi.Command) (*scsi.Result, bool) {
	rt := v.rt()
	if rt == nil || rt.role != pod.Follower {
		return nil, false
	}
	md := rt.mode()
	if !md.serving || md.sess == nil {
		return notReady(scsi.SenseNotReadyUnavailable()), true
	}
	id := v.r.nextRef.Add(1)
	v.r.refs.Store(id, cmd.DataOut)
	defer v.r.refs.Delete(id)
	m := &forwardMsg{Pod: v.pod, Volume: v.uuid, ID: id, Cmd: *cmd}
	v.r.traffic.forward.Add(int64(len(cmd.DataOut)))
	// The sequencer runs the command to its end whatever happens here,
	// so the answer is awaited even if the task is aborted meanwhile.
	resp, err := call(context.WithoutCancel(ctx), md.sess, msgForward, md.epoch, m.encode())
	if err != nil {
		v.r.log.Debug("forward failed", "pod", v.pod, "err", err)
		return notReady(scsi.SenseNotReadyTransitioning()), true
	}
	res, err := decodeResult(resp)
	if err != nil {
		return notReady(scsi.SenseNotReadyTransitioning()), true
	}
	return res, true
}

func notReady(s scsi.Sense) *scsi.Result {
	return &scsi.Result{Status: scsi.StatusCheckCondition, Sense: s.Bytes()}
}

// Ordering implements scsi.Replica.
func (v *Volume) Ordering() bool {
	rt := v.rt()
	if rt == nil || rt.role != pod.Sequencer {
		return false
	}
	// From Syncing on: the follower starts serving when it accepts the
	// grant, before this array learns it did.
	s := rt.mode().state
	return s == pod.Syncing || s == pod.InSync || s == pod.Paused
}

// ShareReservations implements scsi.Replica.
func (v *Volume) ShareReservations(ctx context.Context, u scsi.ReservationUpdate) error {
	rt := v.rt()
	if rt == nil || rt.role != pod.Sequencer {
		return nil
	}
	payload := mustJSON(reservationsMsg{Pod: v.pod, Volume: v.uuid, Update: u})
	return rt.mirror(ctx, region{}, nil, msgReservations, payload)
}

// Reset implements scsi.Replica.
func (v *Volume) Reset(ctx context.Context, lunReset bool) {
	rt := v.rt()
	if rt == nil {
		return
	}
	md := rt.mode()
	if md.sess == nil || (rt.role == pod.Sequencer && md.state != pod.InSync && md.state != pod.Syncing) {
		return
	}
	payload := mustJSON(resetMsg{Pod: v.pod, Volume: v.uuid, LUNReset: lunReset})
	if _, err := call(ctx, md.sess, msgReset, md.epoch, payload); err != nil {
		v.r.log.Warn("reset on the peer failed", "pod", v.pod, "err", err)
	}
}

// errEpoch refuses a message of another epoch.
func errEpoch(podName string, got, want uint64) error {
	return fmt.Errorf("pod %s: message of epoch %d refused at epoch %d", podName, got, want)
}
