package array

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/metro-storage/metro/internal/catalog"
	"github.com/metro-storage/metro/internal/scsi"
)

// TestPairLUNInventoryChanged: a change of the LUNs a host sees (a volume
// connected to it or disconnected, directly or through a host group, a
// host's initiators changing) raises REPORTED LUNS DATA HAS CHANGED
// (06/3f/0e) on that host's I_T nexuses on every array that serves the
// volume, the stretched pod's other array included (the change reaches
// it through the pod's ordered configuration), whichever array the
// change is made through; and on no other nexus: another host's, or the
// host's nexuses on an array whose LUNs for it did not change (a local
// pod's volume is served by one array only). Linux and ESXi rescan on
// it; before, nothing raised it and a new LUN went unseen.
func TestPairLUNInventoryChanged(t *testing.T) {
	h := newPair(t)
	a, b := h.arrays[0], h.arrays[1]
	const (
		iqn2 = "iqn.2026-11.io.metro:luns-h2"
		iqn3 = "iqn.2026-11.io.metro:luns-h3"
		vol2 = "pod1::vol2"
	)
	now := time.Now()
	h.apply(a,
		catalog.CreateHost{Host: catalog.Host{Name: "h2", IQNs: []string{iqn2}}},
		catalog.Connect{Volume: pairVolume, Host: "h2"},
		catalog.CreateHost{Host: catalog.Host{Name: "h3", IQNs: []string{iqn3}}},
		catalog.Connect{Volume: pairVolume, Host: "h3"},
		catalog.CreateVolume{Name: vol2, UUID: newID(), Size: pairVolSize, Created: now},
		catalog.CreatePod{Name: "local", ID: newID(), Created: now, Array: catalog.PodArray{Name: a.cfg.Name, ID: a.id.ID}},
		catalog.CreateVolume{Name: "local::v", UUID: newID(), Size: pairVolSize, Created: now},
	)
	for _, iqn := range []string{iqn2, iqn3} {
		for _, arr := range []*Array{a, b} {
			h.waitLUN(arr, iqn, 0)
		}
	}
	// One nexus per host and array, each having used LUN 0 (vol1).
	var paths []uaPath
	for _, iqn := range []string{pairIQN, iqn2, iqn3} {
		for _, arr := range []*Array{a, b} {
			name := fmt.Sprintf("%s through %s", strings.TrimPrefix(iqn, "iqn.2026-11.io.metro:"), arr.cfg.Name)
			paths = append(paths, uaPath{name, newInitiator(arr, iqn, 0x500+uint64(len(paths))), 0})
		}
	}
	for _, p := range paths {
		p.unitAttentions(t)
	}
	// step makes a change through arr and checks that exactly the named
	// paths hear of it.
	step := func(what string, arr *Array, want []string, ops ...catalog.Op) {
		t.Helper()
		h.apply(arr, ops...)
		h.expectUA(what, paths, scsi.SenseLUNsChanged(), want)
	}
	h1 := []string{"pair-host through array-a", "pair-host through array-b"}
	h2 := []string{"luns-h2 through array-a", "luns-h2 through array-b"}
	h3 := []string{"luns-h3 through array-a", "luns-h3 through array-b"}

	step("vol2 connected to h1 through the follower", b, h1, catalog.Connect{Volume: vol2, Host: pairHost})
	step("vol2 disconnected from h1 through the sequencer", a, h1, catalog.Disconnect{Volume: vol2, Host: pairHost})
	step("host group g of h2 made", a, nil, catalog.CreateHostGroup{Name: "g", Hosts: []string{"h2"}})
	step("vol2 connected to group g through the sequencer", a, h2, catalog.Connect{Volume: vol2, HostGroup: "g"})
	step("h1 added to group g through the follower", b, h1, catalog.SetHostGroupAttr{Name: "g", AddHosts: []string{pairHost}})
	step("h2 removed from group g", a, h2, catalog.SetHostGroupAttr{Name: "g", RemoveHosts: []string{"h2"}})
	// h3's initiator moves to h1: it sees vol2 besides vol1 at LUN 0.
	step("h3's initiator given to h1", a, h3,
		catalog.SetHostAttr{Name: "h3", RemoveIQNs: []string{iqn3}},
		catalog.SetHostAttr{Name: pairHost, AddIQNs: []string{iqn3}})
	step("nothing that changes LUNs: h2's preferred array", b, nil,
		catalog.SetHostAttr{Name: "h2", PreferredArrays: &[]string{b.cfg.Name}})
	// A local pod's volume is served by array-a only: array-b's nexuses
	// of h1 see the same LUNs as before.
	step("a local pod's volume connected to h1", a, []string{"pair-host through array-a", "luns-h3 through array-a"},
		catalog.Connect{Volume: "local::v", Host: pairHost})
	if ok, why := h.inSync(); !ok {
		t.Fatalf("the pod left sync: %s", why)
	}
}

// uaPath is a host's path to a volume: a nexus and the LUN it addresses.
type uaPath struct {
	name string
	in   *initiator
	lun  uint64
}

// unitAttentions runs TEST UNIT READY on the path until it is not a unit
// attention, which must then be GOOD, and returns the unit attentions.
func (p uaPath) unitAttentions(t testing.TB) []scsi.Sense {
	t.Helper()
	var seen []scsi.Sense
	for range 32 {
		p.in.tag++
		r := p.in.arr.target.Execute(context.Background(), &scsi.Command{Nexus: p.in.nexus, LUN: p.lun, Tag: p.in.tag, CDB: testUnitReady()})
		s, ok := senseOf(r)
		if !ok || s.Key != scsi.KeyUnitAttention {
			if r.Status != scsi.StatusGood {
				t.Fatalf("TEST UNIT READY on %s: %s", p.name, describe(r))
			}
			return seen
		}
		seen = append(seen, s)
	}
	t.Fatalf("%s: unit attentions without end: %v", p.name, seen)
	return nil
}

// expectUA checks that the paths named in want report unit attention
// sense (waiting for each) and that no other path of paths does.
func (h *pairHarness) expectUA(what string, paths []uaPath, sense scsi.Sense, want []string) {
	h.t.Helper()
	has := func(p uaPath) bool {
		return slices.ContainsFunc(p.unitAttentions(h.t), func(s scsi.Sense) bool { return s.Is(sense) })
	}
	for _, p := range paths {
		if slices.Contains(want, p.name) {
			heard := false
			h.waitFor(fmt.Sprintf("%s: %s on %s", what, sense, p.name), 10*time.Second, func() (bool, string) {
				heard = heard || has(p)
				return heard, "not reported"
			})
		}
	}
	for _, p := range paths {
		if !slices.Contains(want, p.name) && has(p) {
			h.t.Errorf("%s: %s got %s; only %v should", what, p.name, sense, want)
		}
	}
}
