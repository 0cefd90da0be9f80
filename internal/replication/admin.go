package replication

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"sort"
	"strings"
	"sync"

	"github.com/metro-storage/metro/internal/catalog"
	"github.com/metro-storage/metro/internal/link"
	"github.com/metro-storage/metro/internal/pod"
)

// remoteError is an error the peer returned for a configuration change,
// or one that tells of the peer's answer, keeping the sentinel the API
// maps to an HTTP status.
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
	m := configMsg{Op: data}
	for _, h := range hostsNamed(op) {
		if hc := st.Hosts[h]; hc != nil {
			m.Hosts = append(m.Hosts, *hc)
		}
	}
	var ans answer
	if err := callJSON(ctx, s, msgConfig, 0, m, &ans); err != nil {
		return fmt.Errorf("send the change to array %s: %w", seq, err)
	}
	if err := ans.err(); errors.Is(err, catalog.ErrNotFound) {
		return fmt.Errorf("array %s, which orders pod %s: %w: create it there too, or make the change there", seq, pods[0], err)
	} else if err != nil {
		return err
	}
	return nil
}

// hostsNamed lists the hosts a change gives a connection to: the host a
// volume is connected to, the hosts added to a host group.
func hostsNamed(op catalog.Op) []string {
	switch o := deref(op).(type) {
	case catalog.Connect:
		if o.Host != "" {
			return []string{o.Host}
		}
	case catalog.SetHostGroupAttr:
		return o.AddHosts
	}
	return nil
}

// order applies op here, at the sequencer of pods, then installs the
// pods' new configuration on the follower. A change the follower might
// not be able to install is first checked there (checkFollowers): if it
// cannot take it, or cannot be asked, the change is made on neither
// array. A concurrent change of the follower's own hosts can still make
// the install fail after the check; that ends the link session as
// before, and the resync says why.
func (r *Replicator) order(ctx context.Context, pods []string, op catalog.Op) error {
	var rts []*podRT
	for _, name := range pods {
		if p := r.pod(name); p != nil {
			p.cfgMu.Lock()
			defer p.cfgMu.Unlock()
			rts = append(rts, p)
		}
	}
	if err := r.checkFollowers(ctx, pods, op); err != nil {
		return err
	}
	if err := r.env.Catalog().Apply(op); err != nil {
		return err
	}
	var deleted []string
	if o, ok := deref(op).(catalog.DeleteHost); ok {
		deleted = []string{o.Name}
	}
	for _, p := range rts {
		p.pushConfig(ctx, deleted)
	}
	return nil
}

// checkFollowers asks the follower of each pod ordered here whether it
// can install the pod's configuration as op would make it, when op adds
// to the hosts, host groups or connections the pod uses
// (catalog.PodConfig.AddsTo): those may clash with the follower's own
// hosts and connections. The pods' cfgMu must be held.
func (r *Replicator) checkFollowers(ctx context.Context, pods []string, op catalog.Op) error {
	st := r.env.Catalog().View()
	var next *catalog.State
	for _, name := range pods {
		cp := st.Pods[name]
		if cp == nil || cp.Sequencer != r.cfg.Name {
			continue // its sequencer installs the change on this array
		}
		if next == nil {
			n, err := st.After(op)
			if err != nil {
				return err
			}
			next = n
		}
		if after := next.PodConfig(name); after != nil && after.AddsTo(st.PodConfig(name)) {
			if err := r.checkFollower(ctx, cp, after); err != nil {
				return err
			}
		}
	}
	return nil
}

// checkFollower asks the follower of a pod ordered here whether it can
// install pc, the pod's configuration after a change.
func (r *Replicator) checkFollower(ctx context.Context, cp *catalog.Pod, pc *catalog.PodConfig) error {
	var follower string
	for _, a := range cp.Arrays {
		if a.Name != r.cfg.Name {
			follower = a.Name
		}
	}
	p := r.pod(cp.Name)
	var md mode
	var why string
	switch {
	case p == nil || p.role != pod.Sequencer:
		why = "the pod is not running on this array yet"
	default:
		if md = p.mode(); md.sess == nil {
			why = "the link to it is down"
		} else if md.state != pod.Syncing && md.state != pod.InSync {
			why = fmt.Sprintf("the pod is not in sync there (%s here)", md.state)
		}
	}
	if why != "" {
		return fmt.Errorf("pod %s: array %s must first check this change, which adds to the hosts, host groups or connections the pod uses there, "+
			"and cannot now (%s): %w: make it once 'metro pod list' shows %s online on both arrays, "+
			"or remove %s from the pod first ('metro pod remove --array %s %s')",
			cp.Name, follower, why, catalog.ErrConflict, cp.Name, follower, follower, cp.Name)
	}
	err := callJSON(ctx, md.sess, msgCheckStretch, md.epoch, checkStretchMsg{Config: *pc, Ordered: true}, nil)
	var re *link.RemoteError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &re):
		// The follower's words, without the name of the message.
		why := strings.TrimPrefix(re.Msg, fmt.Sprintf("array %s: %s: ", follower, msgName(msgCheckStretch)))
		return &remoteError{kind: catalog.ErrConflict, msg: fmt.Sprintf("pod %s: array %s cannot take this change, so neither array made it; "+
			"on %s: %s; fix that there, then make the change again", cp.Name, follower, follower, why)}
	default:
		return &remoteError{kind: catalog.ErrConflict, msg: fmt.Sprintf("pod %s: array %s could not check this change, so neither array made it: %v; try again",
			cp.Name, follower, err)}
	}
}

// pushConfig installs the pod's configuration on the follower when it is
// receiving or in sync (otherwise it gets it with the next resync), with
// the hosts the change deleted. p.cfgMu must be held.
func (p *podRT) pushConfig(ctx context.Context, deleted []string) {
	if p.role != pod.Sequencer {
		return
	}
	md := p.mode()
	if md.sess == nil || (md.state != pod.Syncing && md.state != pod.InSync) {
		return
	}
	pc := p.r.env.Catalog().View().PodConfig(p.name)
	if pc == nil {
		return
	}
	pc.DeletedHosts = deleted
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
	if len(m.Hosts) > 0 {
		for _, h := range m.Hosts {
			if !slices.Contains(hostsNamed(op), h.Name) {
				return r.refusedAnswer(req, refusef("host %s comes with a %s change that does not name it", h.Name, op.Kind())), nil
			}
		}
		op = catalog.WithHosts{Hosts: m.Hosts, Op: op}
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
	if err := r.checkOrdered(req.Epoch, &pc); err != nil {
		return err
	}
	return r.installPod(&pc)
}

// checkOrdered checks an ordered configuration of a pod stretched to the
// peer, which its sequencer sent at epoch, before it is checked or
// installed: this array is the pod's follower at that epoch, and the
// configuration is of the same pod, ordered by the peer. It sets pc's
// epoch to this array's: the epoch moves with the pod's protocol, never
// with its configuration.
func (r *Replicator) checkOrdered(epoch uint64, pc *catalog.PodConfig) error {
	p, err := r.podAt(pc.Pod.Name, epoch, pod.Follower)
	if err != nil {
		return err
	}
	if pc.Pod.ID != p.id {
		return refusef("pod %s: the configuration is of another pod of that name (%s, here %s)", pc.Pod.Name, pc.Pod.ID, p.id)
	}
	if err := r.checkPeerConfig(pc, true); err != nil {
		return err
	}
	if cur := r.env.Catalog().View().Pods[pc.Pod.Name]; cur != nil {
		pc.Pod.Epoch = cur.Epoch
	}
	return nil
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

// checkStretchMsg asks the follower whether it could install a pod's
// configuration: for a stretch (the pod, of Used bytes, is not on the
// follower yet), or (Ordered) after a change of a pod stretched to it,
// which the sequencer has not made yet.
type checkStretchMsg struct {
	Config  catalog.PodConfig `json:"config"`
	Used    uint64            `json:"used"`
	Ordered bool              `json:"ordered,omitempty"`
}

func (r *Replicator) handleCheckStretch(req link.Message) error {
	var m checkStretchMsg
	if err := json.Unmarshal(req.Payload, &m); err != nil {
		return err
	}
	if m.Ordered {
		if err := r.checkOrdered(req.Epoch, &m.Config); err != nil {
			return err
		}
		return r.env.Catalog().View().CheckInstall(&m.Config)
	}
	if err := r.checkPeerConfig(&m.Config, false); err != nil {
		return err
	}
	return r.checkStretch(&m.Config, m.Used)
}

// Stretch adds the peer array to a pod of this array (metro pod add). The
// pod's configuration appears there and a baseline copy starts.
func (r *Replicator) Stretch(ctx context.Context, podName, array string) error {
	r.mu.Lock()
	peer := r.mu.peer
	r.mu.Unlock()
	if peer == nil {
		return fmt.Errorf("%w", ErrNoPeer)
	}
	if array == r.cfg.Name {
		return fmt.Errorf("pod %s: %w: it is already on array %s", podName, catalog.ErrConflict, array)
	}
	if array != peer.Name {
		return fmt.Errorf("array %s: %w: this array is connected to %s only", array, catalog.ErrNotFound, peer.Name)
	}
	s := r.session()
	if s == nil {
		return fmt.Errorf("pod %s: %w to %s; check 'metro array list'", podName, ErrLinkDown, peer.Name)
	}
	st := r.env.Catalog().View()
	cp, ok := st.Pods[podName]
	if !ok || cp.Pending != nil {
		return fmt.Errorf("pod %s: %w", podName, catalog.ErrNotFound)
	}
	if len(cp.Arrays) > 1 {
		return fmt.Errorf("pod %s: %w: already stretched to %s", podName, catalog.ErrConflict, cp.Arrays[1].Name)
	}
	pc := st.PodConfig(podName)
	var used uint64
	for _, v := range st.PodVolumes(podName) {
		used += r.env.Store().Volume(v.DataID).Used()
	}
	if err := callJSON(ctx, s, msgCheckStretch, 0, checkStretchMsg{Config: *pc, Used: used}, nil); err != nil {
		var re *link.RemoteError
		if errors.As(err, &re) {
			return fmt.Errorf("pod %s cannot be stretched: %s: %w", podName, re.Msg, catalog.ErrConflict)
		}
		return fmt.Errorf("pod %s: check array %s: %w", podName, array, err)
	}
	arrays := []catalog.PodArray{cp.Arrays[0], {Name: peer.Name, ID: peer.ID}}
	r.mu.Lock()
	r.mu.fresh = podName
	r.mu.Unlock()
	err := r.env.Catalog().Apply(catalog.SetPodMembership{Name: podName, Arrays: arrays, Sequencer: r.cfg.Name, Epoch: cp.Epoch + 1})
	r.mu.Lock()
	r.mu.fresh = ""
	r.mu.Unlock()
	if err != nil {
		return err
	}
	r.log.Info("pod stretched", "pod", podName, "to", array)
	return nil
}

// Unstretch removes an array from a stretched pod (metro pod remove). The
// removed array keeps its copy, pending eradication. Removing the
// sequencer hands the pod to the other array first (it must be in sync).
func (r *Replicator) Unstretch(ctx context.Context, podName, array string) error {
	st := r.env.Catalog().View()
	cp, ok := st.Pods[podName]
	if !ok || cp.Pending != nil {
		return fmt.Errorf("pod %s: %w", podName, catalog.ErrNotFound)
	}
	if !slices.ContainsFunc(cp.Arrays, func(a catalog.PodArray) bool { return a.Name == array }) {
		return fmt.Errorf("pod %s is not on array %s: %w", podName, array, catalog.ErrNotFound)
	}
	if len(cp.Arrays) < 2 {
		return fmt.Errorf("pod %s lives only on %s: %w: destroy it instead", podName, array, catalog.ErrConflict)
	}
	if cp.Sequencer != r.cfg.Name {
		s := r.session()
		if s == nil {
			return fmt.Errorf("pod %s is ordered by array %s, which this array cannot reach: %w", podName, cp.Sequencer, ErrLinkDown)
		}
		var ans answer
		if err := callJSON(ctx, s, msgUnstretch, 0, unstretchMsg{Pod: podName, Array: array, Request: true}, &ans); err != nil {
			return fmt.Errorf("ask array %s: %w", cp.Sequencer, err)
		}
		return ans.err()
	}
	p := r.pod(podName)
	if p == nil {
		return fmt.Errorf("pod %s: %w: not running here yet, try again", podName, catalog.ErrConflict)
	}
	// ioMu before cfgMu (see podRT): a write waiting while the pod is
	// paused holds ioMu until the pod has persisted a new epoch, which
	// takes cfgMu.
	p.ioMu.Lock()
	unlockIO := sync.OnceFunc(p.ioMu.Unlock)
	defer unlockIO()
	p.cfgMu.Lock()
	defer p.cfgMu.Unlock()
	// The pod may have moved while this waited.
	if cp = r.env.Catalog().View().Pods[podName]; cp == nil || cp.Pending != nil || len(cp.Arrays) < 2 || cp.Sequencer != r.cfg.Name || r.pod(podName) != p {
		return fmt.Errorf("pod %s: %w: it changed meanwhile; try again", podName, catalog.ErrConflict)
	}
	var other catalog.PodArray
	for _, a := range cp.Arrays {
		if a.Name != r.cfg.Name {
			other = a
		}
	}
	md := p.mode()
	if array == r.cfg.Name {
		// Hand the pod to the follower, which must have all of it.
		if md.state != pod.InSync || md.sess == nil {
			return fmt.Errorf("pod %s: %w: array %s is not in sync, so the pod cannot move to it; remove %s instead or wait for the resync",
				podName, catalog.ErrConflict, other.Name, other.Name)
		}
		next := catalog.SetPodMembership{Name: podName, Arrays: []catalog.PodArray{other}, Sequencer: other.Name, Epoch: cp.Epoch + 1}
		if err := callJSON(ctx, md.sess, msgUnstretch, md.epoch, unstretchMsg{Pod: podName, Array: array, Membership: &next}, nil); err != nil {
			return fmt.Errorf("pod %s: hand over to %s: %w", podName, other.Name, err)
		}
		return r.keepPending(podName, cp.Epoch+1)
	}
	err := r.env.Catalog().Apply(catalog.SetPodMembership{Name: podName, Arrays: []catalog.PodArray{{Name: r.cfg.Name, ID: r.cfg.ID}}, Sequencer: r.cfg.Name, Epoch: cp.Epoch + 1})
	unlockIO()
	if err != nil {
		return err
	}
	if md.sess != nil {
		if err := callJSON(ctx, md.sess, msgUnstretch, 0, unstretchMsg{Pod: podName, Array: array}, nil); err != nil {
			r.log.Warn("the removed array will learn of it later", "pod", podName, "array", array, "err", err)
		}
	}
	r.log.Info("pod unstretched", "pod", podName, "removed", array)
	return nil
}

type unstretchMsg struct {
	Pod   string `json:"pod"`
	Array string `json:"array"`
	// Request: the sender asks the sequencer to remove Array.
	Request bool `json:"request,omitempty"`
	// Membership: the sequencer hands the pod to the receiver with it.
	Membership *catalog.SetPodMembership `json:"membership,omitempty"`
}

// keepPending marks this array's copy of a pod pending eradication.
func (r *Replicator) keepPending(podName string, epoch uint64) error {
	return r.env.Catalog().Apply(catalog.SetPodPending{Name: podName, At: r.now(), Epoch: epoch})
}

func (r *Replicator) handleUnstretch(req link.Message) ([]byte, error) {
	var m unstretchMsg
	if err := json.Unmarshal(req.Payload, &m); err != nil {
		return nil, err
	}
	peer := r.peer()
	if peer == nil {
		return nil, fmt.Errorf("%w", ErrNoPeer)
	}
	cp := r.env.Catalog().View().Pods[m.Pod]
	switch {
	case m.Request:
		// The peer's administrator asks to remove an array; this array
		// orders the pod.
		if cp == nil || cp.Pending != nil || cp.Sequencer != r.cfg.Name || !hasArray(cp, peer.ID) {
			return r.refusedAnswer(req, refusef("pod %s is not a pod this array orders for the peer; try again", m.Pod)), nil
		}
		return mustJSON(answerOf(r.Unstretch(context.Background(), m.Pod, m.Array))), nil
	case m.Membership != nil:
		// The sequencer hands the pod over and keeps its copy aside.
		p, err := r.podAt(m.Pod, req.Epoch, pod.Follower)
		if err != nil {
			return nil, err
		}
		if md := p.mode(); md.state != pod.InSync {
			return nil, fmt.Errorf("pod %s is not in sync here", m.Pod)
		}
		mb := *m.Membership
		me := catalog.PodArray{Name: r.cfg.Name, ID: r.cfg.ID}
		if cp == nil || mb.Name != m.Pod || len(mb.Arrays) != 1 || mb.Arrays[0] != me || mb.Sequencer != me.Name || mb.Epoch <= cp.Epoch {
			return nil, refusef("pod %s: a handover must leave the pod to this array alone at a later epoch, not %+v", m.Pod, mb)
		}
		return nil, r.env.Catalog().Apply(mb)
	default:
		// The sequencer removed this array.
		if cp == nil || cp.Pending != nil {
			return nil, nil // gone or set aside already
		}
		if m.Array != r.cfg.Name || !r.peerOrders(cp, peer) {
			return nil, refusef("pod %s: array %s cannot remove array %s from a pod it does not order", m.Pod, peer.Name, m.Array)
		}
		return nil, r.keepPending(m.Pod, cp.Epoch)
	}
}

// handleStretch refuses the retired msgStretch: the peer cannot take a
// pod of this array; only an administrator of the array that holds a
// pod stretches it (metro pod add), and that array then sends it.
func (r *Replicator) handleStretch() error {
	return refusef("array %s stretches a pod only when its administrator asks (metro pod add --array PEER POD on %s)", r.cfg.Name, r.cfg.Name)
}

// ArrayStatus is one array's status in a pod, as this array sees it.
type ArrayStatus struct {
	Name   string `json:"name"`
	ID     string `json:"id"`
	Status string `json:"status"`
}

// PodStatus is a pod's replication status as this array sees it.
type PodStatus struct {
	Arrays    []ArrayStatus `json:"arrays"`
	Sequencer string        `json:"sequencer"`
	Epoch     uint64        `json:"epoch"`
	Progress  *Progress     `json:"progress,omitempty"`
	Error     string        `json:"error,omitempty"`
}

// Status returns a pod's status (nil when the pod is not stretched).
func (r *Replicator) Status(cp *catalog.Pod) *PodStatus {
	p := r.pod(cp.Name)
	if p == nil {
		return nil
	}
	p.mu.Lock()
	m := p.mu.m
	state, epoch, link := m.State(), m.Epoch(), p.mu.sess != nil
	var prog *Progress
	if p.mu.progress != nil && (state == pod.Syncing || state == pod.Receiving) {
		c := *p.mu.progress
		prog = &c
	}
	lastErr := p.mu.lastErr
	p.mu.Unlock()
	if p.role == pod.Follower && state == pod.InSync && !p.mode().serving {
		state = pod.Suspended
	}
	self := map[pod.State]string{
		pod.Syncing: catalog.StatusOnline, pod.InSync: catalog.StatusOnline, pod.Alone: catalog.StatusOnline,
		pod.Paused: catalog.StatusPaused, pod.Receiving: catalog.StatusResyncing, pod.Suspended: catalog.StatusOffline,
	}[state]
	peer := catalog.StatusUnknown
	if link {
		switch state {
		case pod.Syncing:
			peer = catalog.StatusResyncing
		case pod.InSync:
			peer = catalog.StatusOnline
		case pod.Alone:
			peer = catalog.StatusOffline
		case pod.Receiving, pod.Suspended:
			peer = catalog.StatusOnline
		}
	}
	ps := &PodStatus{Sequencer: cp.Sequencer, Epoch: epoch, Progress: prog, Error: lastErr}
	for _, a := range cp.Arrays {
		s := peer
		if a.Name == r.cfg.Name {
			s = self
		}
		ps.Arrays = append(ps.Arrays, ArrayStatus{Name: a.Name, ID: a.ID, Status: s})
	}
	return ps
}

// LinkSession returns the link session in use (one lives from the link
// coming up to its going down), or nil while the link is down.
func (r *Replicator) LinkSession() *link.Session { return r.session() }

// Serving reports whether this array serves I/O for the pod now, and
// whether the pod is stretched.
func (r *Replicator) Serving(podName string) (serving, stretched bool) {
	p := r.pod(podName)
	if p == nil {
		return true, false
	}
	return p.mode().serving, true
}

// PeerServing reports whether the peer serves I/O for the pod as far as
// this array knows.
func (r *Replicator) PeerServing(podName string) bool {
	p := r.pod(podName)
	if p == nil {
		return false
	}
	md := p.mode()
	if p.role == pod.Sequencer {
		return md.state == pod.InSync && md.sess != nil
	}
	return md.sess != nil || md.state == pod.Suspended
}

// Traffic returns the bytes sent over the link for baselines, mirrored
// host writes and forwarded commands since the array started.
func (r *Replicator) Traffic() (baseline, mirror, forward int64) {
	return r.traffic.baseline.Load(), r.traffic.mirror.Load(), r.traffic.forward.Load()
}
