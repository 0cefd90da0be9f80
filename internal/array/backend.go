package array

import (
	"context"
	"strconv"
	"strings"
	"time"

	"github.com/metro-storage/metro/internal/api"
	"github.com/metro-storage/metro/internal/catalog"
	"github.com/metro-storage/metro/internal/iscsi"
)

var (
	_ api.Backend   = (*Array)(nil)
	_ iscsi.Backend = (*Array)(nil)
)

// Info implements api.Backend.
func (a *Array) Info() api.ArrayInfo {
	used, capacity := a.store.Usage()
	var prov uint64
	for _, v := range a.cat.View().Volumes {
		if v.Destroyed == nil {
			prov += v.Size
		}
	}
	scheme := "http"
	if a.cert != nil {
		scheme = "https"
	}
	info := api.ArrayInfo{
		Name: a.cfg.Name, ID: a.id.ID, Version: Version, Target: a.cfg.ISCSI.Target,
		Portals: a.cfg.ISCSI.Advertise, API: scheme + "://" + a.cfg.API.Listen,
		TPG: a.id.TargetPortGroup(), PortID: a.id.RelativePortID(),
		Capacity: capacity, Used: used, Provision: prov, Status: "connected", Time: a.now().UTC(),
		Mediator: mediatorInfo(a.med.Status()),
	}
	if p, _, _ := a.repl.PeerInfo(); p != nil {
		info.Peer = p.Name
		b, m, f := a.repl.Traffic()
		info.Link = &api.LinkTraffic{Baseline: b, Mirror: m, Forward: f}
	}
	return info
}

// Peers implements api.Backend: the paired array, with the link's state
// and round trip.
func (a *Array) Peers() []api.ArrayInfo {
	p, up, rtt := a.repl.PeerInfo()
	if p == nil {
		return nil
	}
	id := Identity{ID: p.ID}
	info := api.ArrayInfo{Name: p.Name, ID: p.ID, API: p.API, TPG: id.TargetPortGroup(), PortID: id.RelativePortID(),
		Status: "disconnected", Peer: a.cfg.Name, Mediator: a.peerMediatorInfo()}
	if up {
		info.Status = "connected"
		info.RTTMillis = float64(rtt.Microseconds()) / 1000
	}
	return []api.ArrayInfo{info}
}

// State implements api.Backend.
func (a *Array) State() *catalog.State { return a.cat.View() }

// Apply implements api.Backend.
func (a *Array) Apply(ctx context.Context, op catalog.Op) error { return a.repl.Apply(ctx, op) }

// PodArrays implements api.Backend: a local pod is online on its array;
// a stretched pod's arrays have the status this array sees.
func (a *Array) PodArrays(p *catalog.Pod) []api.PodArray {
	out := make([]api.PodArray, 0, len(p.Arrays))
	if p.Pending != nil {
		for _, pa := range p.Arrays {
			out = append(out, api.PodArray{Name: pa.Name, ID: pa.ID, Status: catalog.StatusOffline})
		}
		return out
	}
	if ps := a.repl.Status(p); ps != nil {
		for _, as := range ps.Arrays {
			out = append(out, api.PodArray{Name: as.Name, ID: as.ID, Status: as.Status})
		}
		return out
	}
	for _, pa := range p.Arrays {
		status := catalog.StatusUnknown
		if pa.Name == a.cfg.Name {
			status = catalog.StatusOnline
		}
		out = append(out, api.PodArray{Name: pa.Name, ID: pa.ID, Status: status})
	}
	return out
}

// VolumeUsed implements api.Backend.
func (a *Array) VolumeUsed(v *catalog.Volume) uint64 { return a.store.Volume(v.DataID).Used() }

// Sessions implements api.Backend.
func (a *Array) Sessions() []api.Session {
	st := a.cat.View()
	var out []api.Session
	for _, s := range a.iscsi.Sessions() {
		if s.Discovery {
			continue
		}
		as := api.Session{Initiator: s.InitiatorName, ISID: s.ISID, TSIH: s.TSIH, Target: s.Target, Remote: s.RemoteAddr,
			Digests: "header " + s.HeaderDigest + ", data " + s.DataDigest}
		if h := st.HostByIQN(s.InitiatorName); h != nil {
			as.Host = h.Name
		}
		out = append(out, as)
	}
	return out
}

// EradicationWindow implements api.Backend.
func (a *Array) EradicationWindow() time.Duration { return a.cfg.EradicationWindow.Duration }

// Now implements api.Backend.
func (a *Array) Now() time.Time { return a.now() }

// NewID implements api.Backend.
func (a *Array) NewID() string { return newID() }

// Targets implements iscsi.Backend: the array is one target with its
// portals.
func (a *Array) Targets(initiator string) []iscsi.TargetInfo {
	tag := a.id.PortalGroupTag()
	addrs := make([]string, 0, len(a.cfg.ISCSI.Advertise))
	for _, p := range a.cfg.ISCSI.Advertise {
		addrs = append(addrs, p+","+strconv.Itoa(int(tag)))
	}
	return []iscsi.TargetInfo{{Name: a.cfg.ISCSI.Target, Addresses: addrs}}
}

// Authorize implements iscsi.Backend: a normal session needs a known
// initiator (a host's IQN) and that host's CHAP secrets, if any.
func (a *Array) Authorize(target, initiator string) (iscsi.CHAP, error) {
	if target != "" && !strings.EqualFold(target, a.cfg.ISCSI.Target) {
		return iscsi.CHAP{}, iscsi.ErrTargetNotFound
	}
	h := a.cat.View().HostByIQN(initiator)
	if h == nil {
		if target == "" {
			return iscsi.CHAP{}, nil
		}
		a.log.Info("login refused: unknown initiator; create a host with its IQN", "initiator", initiator)
		return iscsi.CHAP{}, iscsi.ErrNotAuthorized
	}
	return iscsi.CHAP{User: h.CHAPUser, Secret: h.CHAPSecret, MutualUser: h.TargetCHAPUser, MutualSecret: h.TargetCHAPSecret}, nil
}
