package array

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/metro-storage/metro/internal/catalog"
)

// Hosts and host groups a stretched pod uses are part of its ordered
// configuration (DESIGN.md, "host"): a change of one reaches both arrays
// in the pod's order, made on either array, or is refused on both with a
// message whose fix works; it never ends the link.

// steadyLink is what must not move while the pod's configuration changes:
// the link sessions made so far and the pod's epoch on each array.
type steadyLink struct {
	sessions int
	epochs   [2]uint64
}

func (h *pairHarness) steadyLink() steadyLink {
	s := steadyLink{sessions: strings.Count(h.logs.String(), `msg="link session established"`)}
	for i, a := range h.arrays {
		s.epochs[i] = a.cat.View().Pods[pairPod].Epoch
	}
	return s
}

// checkSteady fails the test if the link was re-established or the pod's
// epoch moved since s, or the pod is not in sync.
func (h *pairHarness) checkSteady(s steadyLink, what string) {
	h.t.Helper()
	if now := h.steadyLink(); now != s {
		h.t.Fatalf("%s: the link was torn down: %d new link sessions, the pod's epochs went from %v to %v",
			what, now.sessions-s.sessions, s.epochs, now.epochs)
	}
	if ok, why := h.inSync(); !ok {
		h.t.Fatalf("%s: the pod is not in sync: %s", what, why)
	}
}

// samePodConfig waits until the pod's replicated configuration (the pod,
// its volumes and connections, the hosts and host groups they use) is
// the same on both arrays, and returns it.
func (h *pairHarness) samePodConfig(what string) *catalog.PodConfig {
	h.t.Helper()
	var pc *catalog.PodConfig
	h.waitFor(what+": the same pod configuration on both arrays", 10*time.Second, func() (bool, string) {
		pa, pb := h.arrays[0].cat.View().PodConfig(pairPod), h.arrays[1].cat.View().PodConfig(pairPod)
		pc = pa
		return reflect.DeepEqual(pa, pb), fmt.Sprintf("\n%s: %+v\n%s: %+v", h.arrays[0].cfg.Name, pa, h.arrays[1].cfg.Name, pb)
	})
	return pc
}

func hostOf(pc *catalog.PodConfig, name string) *catalog.Host {
	for i := range pc.Hosts {
		if pc.Hosts[i].Name == name {
			return &pc.Hosts[i]
		}
	}
	return nil
}

func groupOf(pc *catalog.PodConfig, name string) *catalog.HostGroup {
	for i := range pc.HostGroups {
		if pc.HostGroups[i].Name == name {
			return &pc.HostGroups[i]
		}
	}
	return nil
}

// TestPairHostChangesReachBoth changes every attribute of a host the
// stretched pod uses, and the members of a host group it uses, through
// each array in turn: each change reaches both arrays, and the link
// stays up throughout.
func TestPairHostChangesReachBoth(t *testing.T) {
	h := newPair(t)
	a, b := h.arrays[0], h.arrays[1]
	str := func(s string) *string { return &s }
	const (
		iqn2 = "iqn.2026-11.io.metro:pair-host-second"
		iqn3 = "iqn.2026-11.io.metro:pair-host-third"
		iqn4 = "iqn.2026-11.io.metro:pair-host-fourth"
	)
	// g1 comes to the follower with its connection; h3, local to the
	// array a step runs on, joins it there.
	h.apply(a, catalog.CreateHostGroup{Name: "g1"}, catalog.Connect{Volume: pairVolume, HostGroup: "g1", LUN: lun(7)})
	steps := []struct {
		what  string
		setup []catalog.Op // on the array the step runs on, local
		op    catalog.Op
		check func(pc *catalog.PodConfig) error
	}{
		{what: "add an initiator", op: catalog.SetHostAttr{Name: pairHost, AddIQNs: []string{iqn2}},
			check: func(pc *catalog.PodConfig) error { return wantIQNs(pc, pairHost, pairIQN, iqn2) }},
		{what: "set CHAP", op: catalog.SetHostAttr{Name: pairHost, CHAPUser: str("h1"), CHAPSecret: str("h1-secret-0123")},
			check: func(pc *catalog.PodConfig) error { return want(hostOf(pc, pairHost).CHAPUser == "h1", "CHAP user") }},
		{what: "set mutual CHAP", op: catalog.SetHostAttr{Name: pairHost, TargetCHAPUser: str("arr"), TargetCHAPSecret: str("target-secret-0123")},
			check: func(pc *catalog.PodConfig) error {
				return want(hostOf(pc, pairHost).TargetCHAPSecret == "target-secret-0123", "target CHAP secret")
			}},
		{what: "prefer an array", op: catalog.SetHostAttr{Name: pairHost, PreferredArrays: &[]string{"array-b"}},
			check: func(pc *catalog.PodConfig) error {
				return want(reflect.DeepEqual(hostOf(pc, pairHost).PreferredArrays, []string{"array-b"}), "preferred arrays")
			}},
		{what: "turn CHAP off", op: catalog.SetHostAttr{Name: pairHost, CHAPUser: str(""), CHAPSecret: str(""), TargetCHAPUser: str(""), TargetCHAPSecret: str("")},
			check: func(pc *catalog.PodConfig) error { return want(hostOf(pc, pairHost).CHAPUser == "", "CHAP off") }},
		{what: "remove an initiator", op: catalog.SetHostAttr{Name: pairHost, RemoveIQNs: []string{iqn2}},
			check: func(pc *catalog.PodConfig) error { return wantIQNs(pc, pairHost, pairIQN) }},
		{what: "add a host to a group", setup: []catalog.Op{catalog.CreateHost{Host: catalog.Host{Name: "h3", IQNs: []string{iqn3}}}},
			op: catalog.SetHostGroupAttr{Name: "g1", AddHosts: []string{"h3"}},
			check: func(pc *catalog.PodConfig) error {
				if err := wantIQNs(pc, "h3", iqn3); err != nil {
					return err
				}
				return want(reflect.DeepEqual(groupOf(pc, "g1").Hosts, []string{"h3"}), "members of g1")
			}},
		{what: "change a host through its group", op: catalog.SetHostAttr{Name: "h3", AddIQNs: []string{iqn2}},
			check: func(pc *catalog.PodConfig) error { return wantIQNs(pc, "h3", iqn3, iqn2) }},
		{what: "remove a host from a group", op: catalog.SetHostGroupAttr{Name: "g1", RemoveHosts: []string{"h3"}},
			check: func(pc *catalog.PodConfig) error {
				return want(hostOf(pc, "h3") == nil && len(groupOf(pc, "g1").Hosts) == 0, "h3 out of the pod's configuration")
			}},
		{what: "connect a volume to a host of the array's own", setup: []catalog.Op{catalog.CreateHost{Host: catalog.Host{Name: "h4", IQNs: []string{iqn4}}}},
			op:    catalog.Connect{Volume: pairVolume, Host: "h4", LUN: lun(9)},
			check: func(pc *catalog.PodConfig) error { return wantIQNs(pc, "h4", iqn4) }},
		{what: "disconnect it", op: catalog.Disconnect{Volume: pairVolume, Host: "h4"},
			check: func(pc *catalog.PodConfig) error {
				return want(hostOf(pc, "h4") == nil, "h4 out of the pod's configuration")
			}},
	}
	for _, origin := range []*Array{a, b} {
		for _, s := range steps {
			what := fmt.Sprintf("%s through %s", s.what, origin.cfg.Name)
			steady := h.steadyLink()
			h.apply(origin, s.setup...)
			if err := origin.Apply(h.ctx, s.op); err != nil {
				t.Fatalf("%s: %v", what, err)
			}
			pc := h.samePodConfig(what)
			if err := s.check(pc); err != nil {
				t.Fatalf("%s: %v", what, err)
			}
			h.checkSteady(steady, what)
		}
		// h3 and h4 left the pod: each array's copy is its own again.
		for _, x := range []*Array{a, b} {
			h.apply(x, catalog.DeleteHost{Name: "h3"}, catalog.DeleteHost{Name: "h4"})
		}
	}
}

func want(ok bool, what string) error {
	if !ok {
		return fmt.Errorf("%s: not as changed", what)
	}
	return nil
}

func wantIQNs(pc *catalog.PodConfig, host string, iqns ...string) error {
	hc := hostOf(pc, host)
	if hc == nil {
		return fmt.Errorf("host %s is not in the pod's configuration", host)
	}
	if !reflect.DeepEqual(hc.IQNs, iqns) {
		return fmt.Errorf("host %s has initiators %v, want %v", host, hc.IQNs, iqns)
	}
	return nil
}

// TestPairHostChangeRefusedByFollower: a change of the stretched pod's
// hosts, host groups or connections that the follower cannot take (an
// initiator another host of its own has, a group member that exists
// there with other initiators, a LUN a host already sees there) is
// refused, made on either array, with a message naming the follower and
// the clash; nothing changes on either array and the link stays up.
// Once the clash is fixed on the follower the way the message says, the
// same change reaches both arrays. Before, the sequencer made the change,
// answered success, then failed to install it on the follower: that
// ended the link session (pausing every stretched pod) and the resync
// failed on the same clash, leaving the pod offline on the follower
// until the change was undone; a change made on the follower changed the
// sequencer's copy only.
func TestPairHostChangeRefusedByFollower(t *testing.T) {
	h := newPair(t)
	a, b := h.arrays[0], h.arrays[1]
	const (
		iqn9  = "iqn.2026-11.io.metro:follower-own-host"
		iqn6  = "iqn.2026-11.io.metro:h6"
		iqn6b = "iqn.2026-11.io.metro:h6-on-array-b"
	)
	now := time.Now()
	h.apply(a, catalog.CreateHostGroup{Name: "g1"}, catalog.Connect{Volume: pairVolume, HostGroup: "g1", LUN: lun(7)},
		catalog.CreateVolume{Name: "pod1::vol2", UUID: newID(), Size: pairVolSize, Created: now},
		catalog.CreateHost{Host: catalog.Host{Name: "h6", IQNs: []string{iqn6}}})
	h.apply(b, catalog.CreatePod{Name: "local", ID: newID(), Created: now, Array: catalog.PodArray{Name: b.cfg.Name, ID: b.id.ID}},
		catalog.CreateVolume{Name: "local::v", UUID: newID(), Size: pairVolSize, Created: now})
	cases := []struct {
		what     string
		conflict []catalog.Op // on the follower
		op       catalog.Op
		says     []string
		fix      []catalog.Op // on the follower
		check    func(pc *catalog.PodConfig) error
		undo     []catalog.Op // through the origin, then on the follower
		cleanup  []catalog.Op
	}{
		{
			what:     "an initiator of the follower's own host",
			conflict: []catalog.Op{catalog.CreateHost{Host: catalog.Host{Name: "h9", IQNs: []string{iqn9}}}},
			op:       catalog.SetHostAttr{Name: pairHost, AddIQNs: []string{iqn9}},
			says:     []string{"array-b", iqn9, "host h9"},
			fix:      []catalog.Op{catalog.DeleteHost{Name: "h9"}},
			check:    func(pc *catalog.PodConfig) error { return wantIQNs(pc, pairHost, pairIQN, iqn9) },
			undo:     []catalog.Op{catalog.SetHostAttr{Name: pairHost, RemoveIQNs: []string{iqn9}}},
		},
		{
			what:     "a group member that is another host on the follower",
			conflict: []catalog.Op{catalog.CreateHost{Host: catalog.Host{Name: "h6", IQNs: []string{iqn6b}}}},
			op:       catalog.SetHostGroupAttr{Name: "g1", AddHosts: []string{"h6"}},
			says:     []string{"array-b", "host h6", iqn6b, "make them the same"},
			fix:      []catalog.Op{catalog.SetHostAttr{Name: "h6", AddIQNs: []string{iqn6}, RemoveIQNs: []string{iqn6b}}},
			check: func(pc *catalog.PodConfig) error {
				return want(reflect.DeepEqual(groupOf(pc, "g1").Hosts, []string{"h6"}) && hostOf(pc, "h6") != nil, "h6 in g1")
			},
			undo:    []catalog.Op{catalog.SetHostGroupAttr{Name: "g1", RemoveHosts: []string{"h6"}}},
			cleanup: []catalog.Op{catalog.DeleteHost{Name: "h6"}},
		},
		{
			what:     "a LUN the host sees on the follower",
			conflict: []catalog.Op{catalog.Connect{Volume: "local::v", Host: pairHost, LUN: lun(3)}},
			op:       catalog.Connect{Volume: "pod1::vol2", Host: pairHost, LUN: lun(3)},
			says:     []string{"array-b", "LUN 3", "local::v"},
			fix:      []catalog.Op{catalog.Disconnect{Volume: "local::v", Host: pairHost}},
			check: func(pc *catalog.PodConfig) error {
				return want(len(pc.Connections) == 3, fmt.Sprintf("connections %+v", pc.Connections))
			},
			undo: []catalog.Op{catalog.Disconnect{Volume: "pod1::vol2", Host: pairHost}},
		},
	}
	for _, c := range cases {
		for _, origin := range []*Array{a, b} {
			what := fmt.Sprintf("%s, changed through %s", c.what, origin.cfg.Name)
			h.apply(b, c.conflict...)
			before := h.samePodConfig(what)
			steady := h.steadyLink()
			err := origin.Apply(h.ctx, c.op)
			if err == nil {
				t.Fatalf("%s: the change was accepted; want it refused", what)
			}
			t.Logf("%s: refused: %v", what, err)
			if !errors.Is(err, catalog.ErrConflict) {
				t.Errorf("%s: %v is not a conflict", what, err)
			}
			for _, s := range c.says {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("%s: the refusal does not say %q: %v", what, s, err)
				}
			}
			if after := h.samePodConfig(what + ", refused"); !reflect.DeepEqual(after, before) {
				t.Fatalf("%s: the refused change changed the pod's configuration:\nbefore %+v\nafter  %+v", what, before, after)
			}
			h.checkSteady(steady, what+", refused")
			h.apply(b, c.fix...)
			if err := origin.Apply(h.ctx, c.op); err != nil {
				t.Fatalf("%s: once fixed on %s: %v", what, b.cfg.Name, err)
			}
			if err := c.check(h.samePodConfig(what + ", once fixed")); err != nil {
				t.Fatalf("%s: once fixed on %s: %v", what, b.cfg.Name, err)
			}
			h.checkSteady(steady, what+", once fixed")
			h.apply(origin, c.undo...)
			h.samePodConfig(what + ", undone")
			h.apply(b, c.cleanup...)
		}
	}
}

// TestPairHostChangeNeedsFollower: while the follower cannot check a
// change that adds to the pod's hosts, host groups or connections (the
// link is down), the sequencer refuses it, saying how to make it; a
// change that cannot clash there (a host's preferred arrays) is made and
// reaches the follower with the resync. Before, the sequencer made the
// change alone; the resync then failed on the follower's clash (an
// initiator of a host of its own) and the pod stayed offline there.
func TestPairHostChangeNeedsFollower(t *testing.T) {
	h := newPair(t)
	a, b := h.arrays[0], h.arrays[1]
	const iqn9 = "iqn.2026-11.io.metro:follower-own-host"
	h.apply(b, catalog.CreateHost{Host: catalog.Host{Name: "h9", IQNs: []string{iqn9}}})
	h.split()
	add := catalog.SetHostAttr{Name: pairHost, AddIQNs: []string{iqn9}}
	err := a.Apply(h.ctx, add)
	if err == nil {
		t.Fatal("an initiator added to the pod's host while the follower is unreachable: accepted; want refused")
	}
	t.Logf("refused: %v", err)
	for _, s := range []string{"array-b", "link", "metro pod remove --array array-b pod1"} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("the refusal does not say %q: %v", s, err)
		}
	}
	if !errors.Is(err, catalog.ErrConflict) {
		t.Errorf("%v is not a conflict", err)
	}
	prefs := []string{"array-a"}
	h.apply(a, catalog.SetHostAttr{Name: pairHost, PreferredArrays: &prefs})
	h.proxy.Partition(false)
	h.waitInSync(60 * time.Second)
	if pc := h.samePodConfig("after the heal"); !reflect.DeepEqual(hostOf(pc, pairHost).PreferredArrays, prefs) {
		t.Fatalf("the preferred arrays set during the split: %v, want %v", hostOf(pc, pairHost).PreferredArrays, prefs)
	}
	// Now the follower checks it, and refuses it for its own host h9.
	steady := h.steadyLink()
	if err := a.Apply(h.ctx, add); err == nil || !strings.Contains(err.Error(), "host h9") {
		t.Fatalf("the same change with the link up: %v, want refused naming host h9", err)
	}
	h.checkSteady(steady, "refused with the link up")
}

func lun(n uint64) *uint64 { return &n }

// TestPairPodAttributesReachBoth: a stretched pod's failover preference
// and auto-recover setting are part of its ordered configuration: set
// through either array they reach both, without touching the link; a
// preference for an array the pod is not on is refused on both, with the
// pod's arrays.
func TestPairPodAttributesReachBoth(t *testing.T) {
	h := newPair(t)
	a, b := h.arrays[0], h.arrays[1]
	steady := h.steadyLink()
	str := func(s string) *string { return &s }
	off, on := false, true
	for _, s := range []struct {
		origin *Array
		op     catalog.SetPodAttr
		pref   string
		auto   bool
	}{
		{b, catalog.SetPodAttr{Name: pairPod, FailoverPreference: str("array-b")}, "array-b", true},
		{a, catalog.SetPodAttr{Name: pairPod, AutoRecover: &off}, "array-b", false},
		{b, catalog.SetPodAttr{Name: pairPod, FailoverPreference: str("array-a"), AutoRecover: &on}, "array-a", true},
		{a, catalog.SetPodAttr{Name: pairPod, FailoverPreference: str("")}, "", true},
	} {
		what := fmt.Sprintf("%+v through %s", s.op, s.origin.cfg.Name)
		h.apply(s.origin, s.op)
		if pc := h.samePodConfig(what); pc.Pod.FailoverPreference != s.pref || pc.Pod.AutoRecover != s.auto {
			t.Fatalf("%s: preference %q, auto recover %v; want %q, %v", what, pc.Pod.FailoverPreference, pc.Pod.AutoRecover, s.pref, s.auto)
		}
		h.checkSteady(steady, what)
	}
	for _, origin := range []*Array{a, b} {
		err := origin.Apply(h.ctx, catalog.SetPodAttr{Name: pairPod, FailoverPreference: str("array-z")})
		if !errors.Is(err, catalog.ErrInvalid) || !strings.Contains(err.Error(), "(array-a, array-b)") {
			t.Fatalf("preference array-z through %s: %v, want invalid, listing the pod's arrays", origin.cfg.Name, err)
		}
	}
	h.checkSteady(steady, "refused preferences")
}

// TestPairHostDeletedOnBoth: a host a stretched pod uses through a host
// group is deleted on both arrays, through either; the follower keeps its
// copy while something of its own uses it (a host group of its own). (The
// sequencer deletes its copy itself, as its administrator would; it
// refuses the peer's deletion of a host its own pods use, see
// TestPeerCannotTakeALocalHost.) Before, the other array kept its copy:
// deleted through the follower, the host was gone from the sequencer
// only.
func TestPairHostDeletedOnBoth(t *testing.T) {
	h := newPair(t)
	a, b := h.arrays[0], h.arrays[1]
	const iqn5 = "iqn.2026-11.io.metro:h5"
	h.apply(a, catalog.CreateHostGroup{Name: "g1"}, catalog.Connect{Volume: pairVolume, HostGroup: "g1", LUN: lun(7)})
	steady := h.steadyLink()
	for _, c := range []struct {
		origin, other *Array
		keep          bool // the other array has h5 in a group of its own
	}{{a, b, false}, {b, a, false}, {a, b, true}} {
		what := fmt.Sprintf("h5 deleted through %s", c.origin.cfg.Name)
		h.apply(c.origin, catalog.CreateHost{Host: catalog.Host{Name: "h5", IQNs: []string{iqn5}}},
			catalog.SetHostGroupAttr{Name: "g1", AddHosts: []string{"h5"}})
		if pc := h.samePodConfig(what); hostOf(pc, "h5") == nil {
			t.Fatalf("%s: h5 did not join the pod's configuration", what)
		}
		if c.keep {
			what += ", in a group of " + c.other.cfg.Name + "'s own"
			h.apply(c.other, catalog.CreateHostGroup{Name: "own", Hosts: []string{"h5"}})
		}
		h.apply(c.origin, catalog.DeleteHost{Name: "h5"})
		pc := h.samePodConfig(what)
		if hostOf(pc, "h5") != nil || len(groupOf(pc, "g1").Hosts) != 0 {
			t.Fatalf("%s: h5 is still in the pod's configuration", what)
		}
		if c.origin.cat.View().Hosts["h5"] != nil {
			t.Fatalf("%s: %s still has h5", what, c.origin.cfg.Name)
		}
		if kept := c.other.cat.View().Hosts["h5"] != nil; kept != c.keep {
			t.Fatalf("%s: %s has h5: %v, want %v", what, c.other.cfg.Name, kept, c.keep)
		}
		if c.keep {
			h.apply(c.other, catalog.DeleteHostGroup{Name: "own"}, catalog.DeleteHost{Name: "h5"})
		}
		h.checkSteady(steady, what)
	}
}
