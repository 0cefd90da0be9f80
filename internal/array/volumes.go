package array

import (
	"context"
	"encoding/hex"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync/atomic"

	"github.com/metro-storage/metro/internal/catalog"
	"github.com/metro-storage/metro/internal/scsi"
)

// luView answers the SCSI target's questions (which LUNs an initiator
// sees, ALUA states) from a table rebuilt after every configuration
// change, so the I/O path does one map lookup per command.
type luView struct {
	array *Array
	table atomic.Pointer[luTable]
}

// luTable maps lower-cased initiator names to their LUNs.
type luTable struct {
	byInitiator map[string]map[uint64]*scsi.LogicalUnit
	// pods holds each unit's pod and arrays.
	pods map[*scsi.LogicalUnit]*catalog.Pod
	// prefer holds each initiator's preferred arrays (its host's).
	prefer map[string][]string
	// ids holds the ALUA numbers of the pods' arrays, by array id
	// (deriving them hashes).
	ids map[string]aluaIDs
}

type aluaIDs struct{ tpg, rtpi uint16 }

var _ scsi.Resolver = (*luView)(nil)

func (v *luView) luns(initiator string) map[uint64]*scsi.LogicalUnit {
	t := v.table.Load()
	if t == nil {
		return nil
	}
	return t.byInitiator[strings.ToLower(initiator)]
}

// LUN implements scsi.Resolver.
func (v *luView) LUN(initiator string, lun uint64) *scsi.LogicalUnit {
	return v.luns(initiator)[lun]
}

// LUNs implements scsi.Resolver.
func (v *luView) LUNs(initiator string) []uint64 {
	m := v.luns(initiator)
	out := make([]uint64, 0, len(m))
	for l := range m {
		out = append(out, l)
	}
	slices.Sort(out)
	return out
}

// PortGroups implements scsi.Resolver: each array of the unit's pod is
// one target port group. A group is Unavailable where the pod is not
// served; otherwise paths to the initiator's preferred array are
// Active/Optimized (with the PREF bit) and to the other Active/
// Non-optimized, and with no preference both are Active/Optimized. The
// peer's group is Transitioning while this array cannot know whether the
// peer serves the pod (replication.PeerServing).
func (v *luView) PortGroups(initiator string, lu *scsi.LogicalUnit) []scsi.PortGroup {
	a := v.array
	t := v.table.Load()
	var p *catalog.Pod
	var prefer []string
	if t != nil {
		p = t.pods[lu]
		prefer = t.prefer[strings.ToLower(initiator)]
	}
	if p == nil || len(p.Arrays) < 2 {
		return []scsi.PortGroup{{ID: a.tpg, State: scsi.ActiveOptimized, RelativePortIDs: []uint16{a.rtpi}}}
	}
	serving, running := a.repl.Serving(p.Name)
	if !running {
		// The pod's runtime does not run (the replicator is starting or
		// stopping, or has not caught up with the configuration that
		// stretched the pod): its machine has not said this array
		// serves the pod, so it reports its own paths Transitioning and
		// refuses I/O with the matching NOT READY, never serves the pod
		// as local; the peer, unknown, Transitioning, as a paused
		// machine reports it.
		return a.idleGroups(p, t)
	}
	peerUp, peerKnown := a.repl.PeerServing(p.Name)
	serves := func(name string) bool {
		if name == a.cfg.Name {
			return serving
		}
		return peerUp
	}
	// A preference for an array that does not serve the pod now is no
	// preference: the paths that work are all optimized.
	if !slices.ContainsFunc(p.Arrays, func(pa catalog.PodArray) bool { return serves(pa.Name) && slices.Contains(prefer, pa.Name) }) {
		prefer = nil
	}
	groups := make([]scsi.PortGroup, 0, len(p.Arrays))
	for _, pa := range p.Arrays {
		g := scsi.PortGroup{ID: t.ids[pa.ID].tpg, RelativePortIDs: []uint16{t.ids[pa.ID].rtpi}}
		switch {
		case pa.Name != a.cfg.Name && !peerKnown:
			g.State = scsi.Transitioning
		case !serves(pa.Name):
			g.State = scsi.Unavailable
		case len(prefer) == 0:
			g.State = scsi.ActiveOptimized
		case slices.Contains(prefer, pa.Name):
			g.State = scsi.ActiveOptimized
			g.Preferred = true
		default:
			g.State = scsi.ActiveNonOptimized
		}
		groups = append(groups, g)
	}
	return groups
}

// idleGroups are the port groups of a stretched pod whose runtime does
// not run (see PortGroups): every one Transitioning.
func (a *Array) idleGroups(p *catalog.Pod, t *luTable) []scsi.PortGroup {
	groups := make([]scsi.PortGroup, 0, len(p.Arrays))
	for _, pa := range p.Arrays {
		groups = append(groups, scsi.PortGroup{ID: t.ids[pa.ID].tpg, RelativePortIDs: []uint16{t.ids[pa.ID].rtpi}, State: scsi.Transitioning})
	}
	return groups
}

// configChanged brings the logical units in line with the configuration:
// new volumes get one, resized ones grow, destroyed ones go away.
func (a *Array) configChanged(st *catalog.State) {
	a.luMu.Lock()
	defer a.luMu.Unlock()
	live := map[uint64]bool{}
	for _, vol := range st.Volumes {
		if vol.Destroyed != nil {
			continue
		}
		live[vol.DataID] = true
		lu, ok := a.lus[vol.DataID]
		if !ok {
			var err error
			if lu, err = a.newLU(vol); err != nil {
				a.log.Error("volume unavailable", "volume", vol.Name, "err", err)
				continue
			}
			a.lus[vol.DataID] = lu
			a.byUUID[vol.UUID] = lu
			continue
		}
		if lu.Size() != vol.Size {
			lu.Resize(vol.Size)
		}
	}
	for id, lu := range a.lus {
		if !live[id] {
			delete(a.lus, id)
			for u, l := range a.byUUID {
				if l == lu {
					delete(a.byUUID, u)
				}
			}
		}
	}
	t := &luTable{byInitiator: map[string]map[uint64]*scsi.LogicalUnit{},
		pods: map[*scsi.LogicalUnit]*catalog.Pod{}, prefer: map[string][]string{}}
	t.ids = map[string]aluaIDs{}
	for _, vol := range st.Volumes {
		if lu := a.lus[vol.DataID]; lu != nil && vol.Destroyed == nil {
			p := st.Pods[vol.Pod]
			t.pods[lu] = p
			for _, pa := range p.Arrays {
				id := Identity{ID: pa.ID}
				t.ids[pa.ID] = aluaIDs{tpg: id.TargetPortGroup(), rtpi: id.RelativePortID()}
			}
		}
	}
	for _, h := range st.Hosts {
		for _, iqn := range h.IQNs {
			key := strings.ToLower(iqn)
			t.prefer[key] = h.PreferredArrays
			m := map[uint64]*scsi.LogicalUnit{}
			for lun, vol := range st.LUNsFor(iqn) {
				if lu := a.lus[vol.DataID]; lu != nil {
					m[lun] = lu
				}
			}
			t.byInitiator[strings.ToLower(iqn)] = m
		}
	}
	// A host's preferred arrays decide its paths' ALUA states: the nexuses
	// whose states changed hear of it at their next command (the unit
	// compares each nexus's groups then: scsi's takeUA).
	old := a.view.table.Swap(t)
	if old != nil {
		// The hosts whose LUNs changed rescan on this unit attention.
		for _, iqn := range lunsChanged(old, t) {
			a.target.LUNsChanged(iqn)
		}
	}
	a.dropEradicated(st)
}

// lunsChanged returns the initiators whose LUNs (numbers and units)
// differ between two tables.
func lunsChanged(old, cur *luTable) []string {
	var out []string
	for iqn, m := range cur.byInitiator {
		if !maps.Equal(m, old.byInitiator[iqn]) {
			out = append(out, iqn)
		}
	}
	for iqn, m := range old.byInitiator {
		if _, ok := cur.byInitiator[iqn]; !ok && len(m) > 0 {
			out = append(out, iqn)
		}
	}
	return out
}

func prKey(uuid string) string { return "pr/" + uuid }

// dropEradicated deletes the blocks and saved reservations of volumes
// that left the configuration (eradicated here, or through the pod's
// sequencer, or with a pod copy). a.luMu must be held.
func (a *Array) dropEradicated(st *catalog.State) {
	present := make(map[uint64]string, len(st.Volumes))
	for _, v := range st.Volumes {
		present[v.DataID] = v.UUID
	}
	for id, uuid := range a.known {
		if _, ok := present[id]; ok {
			continue
		}
		if err := a.store.DeleteVolume(id); err != nil {
			a.log.Error("delete the blocks of an eradicated volume", "data_id", id, "err", err)
			continue
		}
		if _, again := findUUID(st, uuid); !again {
			b := a.store.NewBatch()
			b.DeleteMeta(prKey(uuid))
			if err := b.Commit(); err != nil {
				a.log.Error("delete saved reservations", "uuid", uuid, "err", err)
			}
		}
		delete(a.known, id)
	}
	for id, uuid := range present {
		a.known[id] = uuid
	}
}

func findUUID(st *catalog.State, uuid string) (*catalog.Volume, bool) {
	for _, v := range st.Volumes {
		if v.UUID == uuid {
			return v, true
		}
	}
	return nil, false
}

func (a *Array) newLU(vol *catalog.Volume) (*scsi.LogicalUnit, error) {
	var uuid [16]byte
	if b, err := hex.DecodeString(vol.UUID); err != nil || len(b) != 16 {
		return nil, fmt.Errorf("volume %s: bad uuid %q", vol.Name, vol.UUID)
	} else {
		copy(uuid[:], b)
	}
	pr, _, err := a.store.GetMeta(prKey(vol.UUID))
	if err != nil {
		return nil, err
	}
	key := prKey(vol.UUID)
	rv := a.repl.Volume(vol.Pod, vol.UUID, a.store.Volume(vol.DataID))
	return scsi.NewLogicalUnit(scsi.LUConfig{
		UUID:    uuid,
		Size:    vol.Size,
		Backend: rv,
		Replica: rv,
		Logger:  a.log,
		// Forwarded commands whose answers the link lost (outcome.go).
		RememberedOutcomes: a.cfg.Replication.RememberedOutcomes,
		PersistPR: func(state []byte) error {
			b := a.store.NewBatch()
			if state == nil {
				b.DeleteMeta(key)
			} else {
				b.SetMeta(key, state)
			}
			return b.Commit()
		},
		LoadedPR: pr,
	}), nil
}

// Eradicate implements api.Backend: forget a destroyed volume; its blocks
// and reservation state go when the configuration changes (see
// dropEradicated). For a stretched pod the pod's sequencer orders it.
func (a *Array) Eradicate(ctx context.Context, name string) error {
	if _, ok := a.cat.View().Volumes[name]; !ok {
		return fmt.Errorf("volume %s: %w", name, catalog.ErrNotFound)
	}
	if err := a.repl.Apply(ctx, catalog.EradicateVolume{Name: name}); err != nil {
		return err
	}
	a.log.Info("volume eradicated", "volume", name)
	return nil
}
