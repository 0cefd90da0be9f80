package replication

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/metro-storage/metro/internal/catalog"
	"github.com/metro-storage/metro/internal/pod"
	"github.com/metro-storage/metro/internal/scsi"
	"github.com/metro-storage/metro/internal/store"
)

// The peer is trusted with the pods the pair shares and nothing else.
// Every request from it is checked before it is used, and a request that
// fails a check changes nothing here: its sender gets the error (which it
// logs) and this array logs it too (handle). The rules:
//
//   - A pod message names a pod stretched between this array and the
//     peer, in the role and at the epoch the message implies.
//   - A volume (by UUID) belongs to the pod the message names; an offset
//     and length lie inside the volume and are multiples of the block
//     size (a change ending beyond it waits, for the link's timeout at
//     most, for the configuration that grows the volume, which the
//     sequencer sends right after mirroring such a change); data
//     forwarded by this array is referred to only for a write to the
//     volume it was sent for.
//   - A forwarded command runs as an initiator of a host connected to
//     its volume (or is a RELEASE, which gives up only what its nexus
//     holds), on a nexus of the peer's port.
//   - A pod configuration (a resync, an ordered change, a stretch check)
//     describes that pod alone, stretched between the two arrays and
//     ordered by the peer; catalog.InstallPod keeps it from changing hosts
//     or host groups the pod did not use here before.
//   - A change the peer asks this array to order names no host or host
//     group that a pod not shared with the peer uses here
//     (checkPeerNames). It may bring the peer's definitions of the hosts
//     it connects (hostsNamed) and of no other: this array creates those
//     it lacks with the change (catalog.WithHosts), as the peer would
//     install them from this array, and keeps those it has as they are.
//   - Membership moves only as the pod's protocol moves it: the peer
//     cannot make this array stretch a pod to it, and hands a pod over or
//     removes this array only from pods it orders.
//
// The boundary this draws around hosts: a host (or host group) is one
// identity on both arrays, kept identical for every pod that shares it
// (DESIGN.md, "host"), so a host that a stretched pod uses is the peer's
// to change as much as this array's, through that pod's ordered
// configuration, and the change holds wherever the host is connected
// here, local pods included. That is what an administrator means by
// changing a host's initiators or CHAP on either array. An administrator
// who wants a local pod out of a paired array's reach connects it to a
// host that no stretched pod uses.

// errRefused is wrapped by the errors of requests the checks refuse.
var errRefused = errors.New("refused")

// refusef returns an error for a refused request.
func refusef(format string, args ...any) error {
	return fmt.Errorf("%w: %s", errRefused, fmt.Sprintf(format, args...))
}

// msgNames names the message types in logs and errors.
var msgNames = map[uint16]string{
	msgHello: "hello", msgWrite: "write", msgUnmap: "unmap", msgForward: "forward",
	msgReservations: "reservations", msgReset: "reset", msgResync: "resync",
	msgBaseline: "baseline", msgGrant: "grant", msgConfig: "config",
	msgApplyConfig: "apply-config", msgCheckStretch: "check-config",
	msgUnstretch: "unstretch", msgStretch: "stretch", msgCheckpoint: "checkpoint",
	msgWritten: "written", msgRepair: "repair", msgPeerRead: "peer-read",
	msgPodState: "pod-state", msgPreElect: "pre-elect", msgHandover: "handover", msgStatus: "status",
	msgAnswered: "answered",
}

func msgName(typ uint16) string {
	if n, ok := msgNames[typ]; ok {
		return n
	}
	return fmt.Sprintf("type-%d", typ)
}

// volRef is what the peer paths need of a volume, by UUID.
type volRef struct {
	name string
	pod  string
	size uint64
	// access tells the initiators connected to the volume.
	access *catalog.Access
	local  *store.Volume
}

// volumeOf returns the volume with the UUID if it belongs to the pod.
func (r *Replicator) volumeOf(podName, uuid string) (volRef, error) {
	if m := r.vols.Load(); m != nil {
		if v, ok := (*m)[uuid]; ok && v.pod == podName {
			return v, nil
		}
	}
	return volRef{}, refusef("pod %s has no volume %s here", podName, uuid)
}

// volumeRange returns the pod's volume with the UUID when n bytes from off
// lie inside it, on block boundaries (checkRange), with the pod's mode,
// which must be a follower's at epoch. A range that ends beyond the
// volume may be a write the sequencer mirrors right after it grew the
// volume, before this array has installed the configuration that says
// so (the sequencer sends it next): such a range waits for the
// configuration to change, for the link's timeout at most, before it is
// refused; the pod is checked again after each wait.
func (r *Replicator) volumeRange(ctx context.Context, podName string, epoch uint64, uuid string, off, n uint64) (volRef, mode, error) {
	var timeout <-chan time.Time
	for {
		changed := *r.volsChanged.Load()
		_, md, err := r.podMode(podName, epoch, pod.Follower)
		if err != nil {
			return volRef{}, mode{}, err
		}
		v, err := r.volumeOf(podName, uuid)
		if err != nil {
			return volRef{}, mode{}, err
		}
		err = checkRange(podName, v, off, n)
		if err == nil || off%store.BlockSize != 0 || n%store.BlockSize != 0 {
			return v, md, err
		}
		if timeout == nil {
			r.log.Info("a replicated change ends beyond its volume here; waiting for the configuration that grows it",
				"pod", podName, "volume", v.name, "offset", off, "length", n, "size", v.size, "wait", r.cfg.Timeout)
			t := time.NewTimer(r.cfg.Timeout)
			defer t.Stop()
			timeout = t.C
		}
		select {
		case <-changed:
		case <-timeout:
			return volRef{}, mode{}, err
		case <-ctx.Done():
			return volRef{}, mode{}, err
		}
	}
}

// checkRange checks that n bytes from off lie inside the volume, on block
// boundaries.
func checkRange(podName string, v volRef, off, n uint64) error {
	switch {
	case off%store.BlockSize != 0 || n%store.BlockSize != 0:
		return refusef("pod %s: volume %s: %d bytes at offset %d are not whole %d-byte blocks", podName, v.name, n, off, store.BlockSize)
	case off > v.size || n > v.size-off:
		return refusef("pod %s: volume %s: %d bytes at offset %d end beyond the volume's %d bytes", podName, v.name, n, off, v.size)
	}
	return nil
}

// opRelease6 is RELEASE(6)'s operation code.
const opRelease6 = 0x17

// checkNexus checks the nexus a forwarded command (cdb) runs on: an
// initiator of a host connected to the volume, through the peer's port.
// A RELEASE(6) need not come from a connected host: it gives up only a
// reservation its own nexus holds, and the peer sends it when such a
// nexus ends, which may be after its host was disconnected (the
// reservation would otherwise stay held for good).
func (r *Replicator) checkNexus(podName string, v volRef, n scsi.Nexus, cdb []byte) error {
	release := len(cdb) > 0 && cdb[0] == opRelease6
	if n.InitiatorName == "" || (!release && !v.access.Connected(v.name, n.InitiatorName)) {
		return refusef("pod %s: volume %s: initiator %q is not a host connected to the volume", podName, v.name, n.InitiatorName)
	}
	if !strings.HasPrefix(n.InitiatorPort, n.InitiatorName+",i,") {
		return refusef("pod %s: volume %s: initiator port %q is not a port of initiator %q", podName, v.name, n.InitiatorPort, n.InitiatorName)
	}
	if peer := r.peer(); r.cfg.PortOf != nil && peer != nil {
		if want := r.cfg.PortOf(peer.ID); n.RelativePortID != want {
			return refusef("pod %s: volume %s: relative port %d is not the peer's (%d)", podName, v.name, n.RelativePortID, want)
		}
	}
	return nil
}

// checkPeerNames refuses a change from the peer that names a host or
// host group (to connect a volume to it, or to change or delete it) that
// connections of a pod not shared with the peer reach here: through the
// change, the peer could otherwise give itself that pod's volumes
// (connect a shared volume to the host, then add its own initiator and
// CHAP secret to it). Such a host is changed on this array.
func (r *Replicator) checkPeerNames(st *catalog.State, peer *Peer, op catalog.Op) error {
	var hosts, groups []string
	switch o := deref(op).(type) {
	case catalog.Connect:
		hosts, groups = []string{o.Host}, []string{o.HostGroup}
	case catalog.SetHostAttr:
		hosts = []string{o.Name}
	case catalog.DeleteHost:
		hosts = []string{o.Name}
	case catalog.SetHostGroupAttr:
		groups = []string{o.Name}
	case catalog.DeleteHostGroup:
		groups = []string{o.Name}
	default:
		return nil
	}
	usedHosts, usedGroups := unsharedUse(st, peer.ID)
	for _, h := range hosts {
		if p, ok := usedHosts[h]; ok && h != "" {
			return refusef("host %s is also connected to pod %s on array %s, which array %s does not share: make the change on array %s", h, p, r.cfg.Name, peer.Name, r.cfg.Name)
		}
	}
	for _, g := range groups {
		if p, ok := usedGroups[g]; ok && g != "" {
			return refusef("host group %s is also connected to pod %s on array %s, which array %s does not share: make the change on array %s", g, p, r.cfg.Name, peer.Name, r.cfg.Name)
		}
	}
	return nil
}

// unsharedUse returns the hosts and host groups that connections of the
// pods here not stretched to the peer (and not set aside) reach, each
// with one such pod; a group's members count as reached.
func unsharedUse(st *catalog.State, peerID string) (hosts, groups map[string]string) {
	hosts, groups = map[string]string{}, map[string]string{}
	for _, c := range st.Connections {
		v := st.Volumes[c.Volume]
		if v == nil {
			continue
		}
		p := st.Pods[v.Pod]
		if p == nil || p.Pending != nil || hasArray(p, peerID) {
			continue
		}
		if c.Host != "" {
			hosts[c.Host] = p.Name
		}
		if g := st.HostGroups[c.HostGroup]; g != nil {
			if _, seen := groups[g.Name]; !seen {
				groups[g.Name] = p.Name
				for _, h := range g.Hosts {
					hosts[h] = p.Name
				}
			}
		}
	}
	return hosts, groups
}

// peer returns the paired array, or nil.
func (r *Replicator) peer() *Peer { return r.peerView.Load() }

// hasArray reports whether the pod lives on the array with the id.
func hasArray(p *catalog.Pod, id string) bool {
	return slices.ContainsFunc(p.Arrays, func(a catalog.PodArray) bool { return a.ID == id })
}

// peerOrders reports whether a pod here is stretched to the peer and
// ordered by it.
func (r *Replicator) peerOrders(cp *catalog.Pod, peer *Peer) bool {
	return cp.Pending == nil && len(cp.Arrays) == 2 && hasArray(cp, peer.ID) && hasArray(cp, r.cfg.ID) && cp.Sequencer == peer.Name
}

// checkPeerConfig checks the membership a pod configuration from the peer
// states: the pod is ordered by the peer and lives on the peer and, once
// stretched (stretched), on this array; with ordered, a pod of that id
// here is either set aside (pending) or stretched to the peer and
// ordered by it (a resync's proposal is the pod machine's to judge). The
// rest is InstallPod's to check.
func (r *Replicator) checkPeerConfig(pc *catalog.PodConfig, stretched, ordered bool) error {
	peer := r.peer()
	if peer == nil {
		return fmt.Errorf("%w", ErrNoPeer)
	}
	p := &pc.Pod
	me := catalog.PodArray{Name: r.cfg.Name, ID: r.cfg.ID}
	them := catalog.PodArray{Name: peer.Name, ID: peer.ID}
	for _, a := range p.Arrays {
		if a != me && a != them {
			return refusef("pod %s: array %s (%s) is neither this array nor the peer", p.Name, a.Name, a.ID)
		}
	}
	switch {
	case p.Sequencer != peer.Name || !slices.Contains(p.Arrays, them):
		return refusef("pod %s: the configuration is not of a pod array %s orders", p.Name, peer.Name)
	case stretched && (len(p.Arrays) != 2 || !slices.Contains(p.Arrays, me)):
		return refusef("pod %s: the configuration does not stretch the pod to array %s", p.Name, r.cfg.Name)
	}
	if cp, ok := r.env.Catalog().View().Pods[p.Name]; ordered && ok && cp.ID == p.ID && cp.Pending == nil && !r.peerOrders(cp, peer) {
		return refusef("pod %s is not ordered by array %s here", p.Name, peer.Name)
	}
	return nil
}
