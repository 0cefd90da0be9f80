package replication

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"sort"

	"github.com/metro-storage/metro/internal/catalog"
	"github.com/metro-storage/metro/internal/link"
	"github.com/metro-storage/metro/internal/pod"
)

// remoteError is an error the peer returned for a configuration change,
// keeping the sentinel the API maps to an HTTP status.
type remoteError struct {
	msg  string
	kind error
}

func (e *remoteError) Error() string { return e.msg }
func (e *remoteError) Unwrap() error { return e.kind }

var sentinels = map[string]error{
	"not_found": catalog.ErrNotFound, "exists": catalog.ErrExists,
	"invalid": catalog.ErrInvalid, "conflict": catalog.ErrConflict,
}

func errorKind(err error) string {
	for k, s := range sentinels {
		if errors.Is(err, s) {
			return k
		}
	}
	return ""
}

// answer is the JSON answer to msgConfig and the admin requests.
type answer struct {
	Error string `json:"error,omitempty"`
	Kind  string `json:"kind,omitempty"`
}

func answerOf(err error) answer {
	if err == nil {
		return answer{}
	}
	return answer{Error: err.Error(), Kind: errorKind(err)}
}

func (a answer) err() error {
	if a.Error == "" {
		return nil
	}
	kind := sentinels[a.Kind]
	if kind == nil {
		kind = catalog.ErrConflict
	}
	return &remoteError{msg: a.Error, kind: kind}
}

// deref returns the op a pointer op (as catalog.UnmarshalOp makes them)
// points to.
func deref(op catalog.Op) catalog.Op {
	if v := reflect.ValueOf(op); v.Kind() == reflect.Pointer && !v.IsNil() {
		if o, ok := v.Elem().Interface().(catalog.Op); ok {
			return o
		}
	}
	return op
}

// stretchedPods lists the stretched pods an op concerns, by name.
func stretchedPods(st *catalog.State, op catalog.Op) []string {
	op = deref(op)
	var pods []string
	addPod := func(name string) {
		if p := st.Pods[name]; p != nil && len(p.Arrays) > 1 && p.Pending == nil && !slices.Contains(pods, name) {
			pods = append(pods, name)
		}
	}
	addVol := func(vol string) {
		if pod, _, err := catalog.SplitVolumeName(vol); err == nil {
			addPod(pod)
		}
	}
	addHost := func(host, group string) {
		for _, c := range st.Connections {
			if (host != "" && (c.Host == host || slices.Contains(st.HostGroupsOf(host), c.HostGroup))) ||
				(group != "" && c.HostGroup == group) {
				addVol(c.Volume)
			}
		}
	}
	switch o := op.(type) {
	case catalog.SetPodAttr:
		addPod(o.Name)
	case catalog.DestroyPod:
		addPod(o.Name)
	case catalog.CreateVolume:
		addVol(o.Name)
	case catalog.ResizeVolume:
		addVol(o.Name)
	case catalog.DestroyVolume:
		addVol(o.Name)
	case catalog.RecoverVolume:
		addVol(o.Name)
	case catalog.EradicateVolume:
		addVol(o.Name)
	case catalog.Connect:
		addVol(o.Volume)
	case catalog.Disconnect:
		addVol(o.Volume)
	case catalog.SetHostAttr:
		addHost(o.Name, "")
	case catalog.DeleteHost:
		addHost(o.Name, "")
	case catalog.SetHostGroupAttr:
		addHost("", o.Name)
	case catalog.DeleteHostGroup:
		addHost("", o.Name)
	}
	sort.Strings(pods)
	return pods
}

// Apply applies a configuration change. A change that concerns stretched
// pods is ordered by their sequencer: applied there, then installed on
// the follower; a change made on the follower is sent to the sequencer.
func (r *Replicator) Apply(ctx context.Context, op catalog.Op) error {
	st := r.env.Catalog().View()
	pods := stretchedPods(st, op)
	if len(pods) == 0 {
		return r.env.Catalog().Apply(op)
	}
	if _, ok := deref(op).(catalog.DestroyPod); ok {
		return fmt.Errorf("pod %s is stretched: %w: remove one array first with 'metro pod remove --array ARRAY %s'", pods[0], catalog.ErrConflict, pods[0])
	}
	seq := st.Pods[pods[0]].Sequencer
	if seq == r.cfg.Name {
		return r.order(ctx, pods, op)
	}
	s := r.session()
	if s == nil {
		return fmt.Errorf("pod %s is ordered by array %s, which this array cannot reach: %w; make the change on %s", pods[0], seq, ErrLinkDown, seq)
	}
	data, err := catalog.MarshalOp(op)
	if err != nil {
		return err
	}
	var ans answer
	if err := callJSON(ctx, s, msgConfig, 0, configMsg{Op: data}, &ans); err != nil {
		return fmt.Errorf("send the change to array %s: %w", seq, err)
	}
	return ans.err()
}

// order applies op here, at the sequencer of pods, then installs the
// pods' new configuration on the follower.
func (r *Replicator) order(ctx context.Context, pods []string, op catalog.Op) error {
	var rts []*podRT
	for _, name := range pods {
		if p := r.pod(name); p != nil {
			p.cfgMu.Lock()
			defer p.cfgMu.Unlock()
			rts = append(rts, p)
		}
	}
	if err := r.env.Catalog().Apply(op); err != nil {
		return err
	}
	for _, p := range rts {
		p.pushConfig(ctx)
	}
	return nil
}

// pushConfig installs the pod's configuration on the follower when it is
// receiving or in sync (otherwise it gets it with the next resync).
// p.cfgMu must be held.
func (p *podRT) pushConfig(ctx context.Context) {
	md := p.mode()
	if md.role != pod.Sequencer {
		return
	}
	if md.sess == nil || (md.state != pod.Syncing && md.state != pod.InSync) {
		return
	}
	pc := p.r.env.Catalog().View().PodConfig(p.name)
	if pc == nil {
		return
	}
	if err := callJSON(context.WithoutCancel(ctx), md.sess, msgApplyConfig, md.epoch, pc, nil); err != nil {
		p.peerFailed(md.sess, fmt.Errorf("install configuration: %w", err))
	}
}

func (r *Replicator) handleConfig(ctx context.Context, req link.Message) ([]byte, error) {
	var m configMsg
	if err := json.Unmarshal(req.Payload, &m); err != nil {
		return nil, err
	}
	op, err := catalog.UnmarshalOp(m.Op)
	if err != nil {
		return nil, err
	}
	st := r.env.Catalog().View()
	pods := stretchedPods(st, op)
	if err := r.orderable(st, pods, op); err != nil {
		return r.refusedAnswer(req, err), nil
	}
	return mustJSON(answerOf(r.order(ctx, pods, op))), nil
}

// refusedAnswer logs a refused administrative request from the peer and
// answers it as a conflict, which the peer's administrator sees.
func (r *Replicator) refusedAnswer(req link.Message, err error) []byte {
	r.log.Warn("refused a request from the peer", "request", msgName(req.Type), "err", err)
	return mustJSON(answer{Error: fmt.Sprintf("array %s: %v", r.cfg.Name, err), Kind: "conflict"})
}

// orderable checks a change the peer asks this array to order: it
// concerns stretched pods only through the ops stretchedPods knows, each
// pod is stretched to the peer, the first (which orders the change, as
// in Apply) is ordered here, it destroys none, and it names no host or
// host group that a pod not shared with the peer uses here
// (checkPeerNames). A change of a host may concern pods ordered by
// either array: the others learn it from the configuration of the
// first.
func (r *Replicator) orderable(st *catalog.State, pods []string, op catalog.Op) error {
	peer := r.peer()
	if len(pods) == 0 || peer == nil {
		return refusef("a %s change concerns no pod stretched to the peer", op.Kind())
	}
	if _, ok := deref(op).(catalog.DestroyPod); ok {
		return refusef("pod %s is stretched: a stretched pod is not destroyed", pods[0])
	}
	if st.Pods[pods[0]].Sequencer != r.cfg.Name {
		return refusef("the change concerns pod %s, which this array does not order; try again", pods[0])
	}
	for _, name := range pods {
		if !hasArray(st.Pods[name], peer.ID) {
			return refusef("the change concerns pod %s, which is not stretched to array %s", name, peer.Name)
		}
	}
	return r.checkPeerNames(st, peer, op)
}

// installPod installs a pod's configuration from the sequencer (the
// array deletes the blocks of volumes that left it).
func (r *Replicator) installPod(pc *catalog.PodConfig) error {
	return r.env.Catalog().Apply(catalog.InstallPod{Config: *pc})
}

func (r *Replicator) handleApplyConfig(req link.Message) error {
	var pc catalog.PodConfig
	if err := json.Unmarshal(req.Payload, &pc); err != nil {
		return err
	}
	p, _, done, err := r.applying(pc.Pod.Name, req.Epoch, pod.Follower)
	if err != nil {
		return err
	}
	defer done()
	if pc.Pod.ID != p.id {
		return refusef("pod %s: the configuration is of another pod of that name (%s, here %s)", pc.Pod.Name, pc.Pod.ID, p.id)
	}
	if err := r.checkPeerConfig(&pc, true, true); err != nil {
		return err
	}
	// The epoch moves with the pod's protocol, never with its
	// configuration.
	if cur := r.env.Catalog().View().Pods[pc.Pod.Name]; cur != nil {
		pc.Pod.Epoch = cur.Epoch
	}
	return r.installPod(&pc)
}

// checkStretch says why the pod could not be stretched to this array.
func (r *Replicator) checkStretch(pc *catalog.PodConfig, used uint64) error {
	st := r.env.Catalog().View()
	if p, ok := st.Pods[pc.Pod.Name]; ok && p.ID != pc.Pod.ID {
		return fmt.Errorf("array %s already has a pod named %s: %w: rename or destroy one of them", r.cfg.Name, pc.Pod.Name, catalog.ErrExists)
	}
	if err := st.CheckInstall(pc); err != nil {
		return err // handle names this array
	}
	usedHere, capacity := r.env.Store().Usage()
	if capacity > 0 && usedHere+used > capacity {
		return fmt.Errorf("array %s has %d bytes free and the pod holds %d: %w: free space or grow the array", r.cfg.Name, capacity-usedHere, used, catalog.ErrConflict)
	}
	return nil
}

type checkStretchMsg struct {
	Config catalog.PodConfig `json:"config"`
	Used   uint64            `json:"used"`
}

func (r *Replicator) handleCheckStretch(req link.Message) error {
	var m checkStretchMsg
	if err := json.Unmarshal(req.Payload, &m); err != nil {
		return err
	}
	if err := r.checkPeerConfig(&m.Config, false, true); err != nil {
		return err
	}
	return r.checkStretch(&m.Config, m.Used)
}

// Traffic returns the bytes sent over the link for baselines, mirrored
// host writes and forwarded commands since the array started.
func (r *Replicator) Traffic() (baseline, mirror, forward int64) {
	return r.traffic.baseline.Load(), r.traffic.mirror.Load(), r.traffic.forward.Load()
}
