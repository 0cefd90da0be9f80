package array

import (
	"context"
	"encoding/hex"
	"fmt"
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
}

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

// PortGroups implements scsi.Resolver: one array, one group, always
// active/optimized. Stretched pods add the peer's group.
func (v *luView) PortGroups(initiator string, lu *scsi.LogicalUnit) []scsi.PortGroup {
	id := v.array.id
	return []scsi.PortGroup{{ID: id.TargetPortGroup(), State: scsi.ActiveOptimized, RelativePortIDs: []uint16{id.RelativePortID()}}}
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
			continue
		}
		if lu.Size() != vol.Size {
			lu.Resize(vol.Size)
		}
	}
	for id := range a.lus {
		if !live[id] {
			delete(a.lus, id)
		}
	}
	t := &luTable{byInitiator: map[string]map[uint64]*scsi.LogicalUnit{}}
	for _, h := range st.Hosts {
		for _, iqn := range h.IQNs {
			m := map[uint64]*scsi.LogicalUnit{}
			for lun, vol := range st.LUNsFor(iqn) {
				if lu := a.lus[vol.DataID]; lu != nil {
					m[lun] = lu
				}
			}
			t.byInitiator[strings.ToLower(iqn)] = m
		}
	}
	a.view.table.Store(t)
}

func prKey(uuid string) string { return "pr/" + uuid }

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
	return scsi.NewLogicalUnit(scsi.LUConfig{
		UUID:    uuid,
		Size:    vol.Size,
		Backend: a.store.Volume(vol.DataID),
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

// Eradicate implements api.Backend: forget a destroyed volume, then delete
// its blocks and reservation state.
func (a *Array) Eradicate(ctx context.Context, name string) error {
	vol, ok := a.cat.View().Volumes[name]
	if !ok {
		return fmt.Errorf("volume %s: %w", name, catalog.ErrNotFound)
	}
	if err := a.cat.Apply(catalog.EradicateVolume{Name: name}); err != nil {
		return err
	}
	if err := a.store.DeleteVolume(vol.DataID); err != nil {
		return fmt.Errorf("volume %s: delete blocks: %w", name, err)
	}
	b := a.store.NewBatch()
	b.DeleteMeta(prKey(vol.UUID))
	if err := b.Commit(); err != nil {
		return fmt.Errorf("volume %s: delete reservations: %w", name, err)
	}
	a.log.Info("volume eradicated", "volume", name)
	return nil
}
