package array

import (
	"slices"
	"testing"
	"time"

	"github.com/metro-storage/metro/internal/catalog"
	"github.com/metro-storage/metro/internal/scsi"
)

// TestPairAccessChangedScoped: a host's preferred array decides the ALUA
// states its paths report, so a change of it raises ASYMMETRIC ACCESS
// STATE CHANGED (06/2a/06) on that host's nexuses of the stretched pod's
// volumes, through both arrays, and nowhere else: not on another host's
// nexuses, not on the host's path to a local pod's volume (one group,
// always active/optimized), not when the preference is set to what it
// was. (A host with a local pod's volume is changed through that pod's
// array.) Before, any host's preference change raised it on every nexus of
// every volume of both arrays.
func TestPairAccessChangedScoped(t *testing.T) {
	h := newPair(t)
	a, b := h.arrays[0], h.arrays[1]
	const iqn2 = "iqn.2026-11.io.metro:alua-h2"
	now := time.Now()
	h.apply(a,
		catalog.CreateHost{Host: catalog.Host{Name: "h2", IQNs: []string{iqn2}}},
		catalog.Connect{Volume: pairVolume, Host: "h2"},
		catalog.CreatePod{Name: "local", ID: newID(), Created: now, Array: catalog.PodArray{Name: a.cfg.Name, ID: a.id.ID}},
		catalog.CreateVolume{Name: "local::v", UUID: newID(), Size: pairVolSize, Created: now},
		catalog.Connect{Volume: "local::v", Host: "h2", LUN: lun(1)},
	)
	for _, arr := range []*Array{a, b} {
		h.waitLUN(arr, iqn2, 0)
	}
	h.waitLUN(a, iqn2, 1)

	h1a, h1b := newInitiator(a, pairIQN, 0x700), newInitiator(b, pairIQN, 0x701)
	h2a, h2b := newInitiator(a, iqn2, 0x702), newInitiator(b, iqn2, 0x703)
	paths := []uaPath{
		{"h1 through array-a", h1a, 0}, {"h1 through array-b", h1b, 0},
		{"h2 through array-a", h2a, 0}, {"h2 through array-b", h2b, 0},
		{"h2 to the local volume", h2a, 1},
	}
	for _, p := range paths {
		p.unitAttentions(t)
	}
	// step changes a host's preferred arrays through arr and checks that
	// exactly the named paths hear of it.
	step := func(what string, arr *Array, host string, prefer []string, want ...string) {
		t.Helper()
		h.apply(arr, catalog.SetHostAttr{Name: host, PreferredArrays: &prefer})
		for _, x := range []*Array{a, b} {
			if got := x.cat.View().Hosts[host].PreferredArrays; !slices.Equal(got, prefer) {
				t.Fatalf("%s: %s has preferred arrays %v, want %v", what, x.cfg.Name, got, prefer)
			}
		}
		h.expectUA(what, paths, scsi.SenseAsymmetricAccessChanged(), want)
	}
	step("h1 prefers array-a, set through the follower", b, pairHost, []string{a.cfg.Name}, "h1 through array-a", "h1 through array-b")
	step("h2 prefers array-b, set through the sequencer", a, "h2", []string{b.cfg.Name}, "h2 through array-a", "h2 through array-b")
	step("h1 prefers array-a again", a, pairHost, []string{a.cfg.Name})
	step("h1 has no preference", a, pairHost, []string{}, "h1 through array-a", "h1 through array-b")
	if ok, why := h.inSync(); !ok {
		t.Fatalf("the pod left sync: %s", why)
	}
}
