package catalog

import (
	"encoding/json"
	"errors"
	"maps"
	"slices"
	"testing"
	"time"
)

// peerBase is an array's configuration with a local pod (a volume
// connected to h1, which has CHAP, and group g of h1) and pod1, stretched
// from the peer (its volume connected to h2).
func peerBase(t testing.TB) *State {
	t.Helper()
	c, _ := Open(&memPersist{})
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	a, b := PodArray{Name: "a", ID: "ida"}, PodArray{Name: "b", ID: "idb"}
	for _, op := range []Op{
		CreatePod{Name: "local", ID: "pl", Created: now, Array: b},
		CreateVolume{Name: "local::secret", UUID: uuid1, Size: 1 << 20, Created: now},
		CreateHost{Host: Host{Name: "h1", IQNs: []string{"iqn.2020-01.x:h1"}, CHAPUser: "h1", CHAPSecret: "h1-secret-12345"}},
		CreateHost{Host: Host{Name: "h2", IQNs: []string{"iqn.2020-01.x:h2"}}},
		CreateHostGroup{Name: "g", Hosts: []string{"h1"}},
		Connect{Volume: "local::secret", HostGroup: "g", LUN: lun(0)},
		CreatePod{Name: "pod1", ID: "p1", Created: now, Array: a},
		SetPodMembership{Name: "pod1", Arrays: []PodArray{a, b}, Sequencer: "a", Epoch: 3},
		CreateVolume{Name: "pod1::vol1", UUID: uuid2, Size: 1 << 20, Created: now},
		Connect{Volume: "pod1::vol1", Host: "h2", LUN: lun(0)},
	} {
		if err := c.Apply(op); err != nil {
			t.Fatalf("%s: %v", op.Kind(), err)
		}
	}
	return c.View()
}

// FuzzInstallPod installs arbitrary pod configurations, as a peer may
// send them, and checks that one accepted changed nothing but its pod and
// the hosts and host groups that pod's connections used before, and left
// a consistent configuration.
func FuzzInstallPod(f *testing.F) {
	base := peerBase(f)
	valid := base.PodConfig("pod1")
	add := func(edit func(pc *PodConfig)) []byte {
		pc := base.PodConfig("pod1")
		edit(pc)
		b, _ := json.Marshal(pc)
		return b
	}
	seed, _ := json.Marshal(valid)
	f.Add(seed)
	f.Add(add(func(pc *PodConfig) {
		pc.Hosts = append(pc.Hosts, Host{Name: "evil", IQNs: []string{"iqn.2020-01.x:evil"}})
		pc.Connections = append(pc.Connections, Connection{Volume: "local::secret", Host: "evil", LUN: 1})
	}))
	f.Add(add(func(pc *PodConfig) {
		pc.Hosts = append(pc.Hosts, Host{Name: "h1", IQNs: []string{"iqn.2020-01.x:h1"}})
		pc.Connections = append(pc.Connections, Connection{Volume: "pod1::vol1", Host: "h1", LUN: 1})
	}))
	f.Add(add(func(pc *PodConfig) {
		pc.Hosts = append(pc.Hosts, Host{Name: "h1", IQNs: []string{"iqn.2020-01.x:h1"}, CHAPUser: "h1", CHAPSecret: "h1-secret-12345"},
			Host{Name: "h3", IQNs: []string{"iqn.2020-01.x:h3"}})
		pc.HostGroups = append(pc.HostGroups, HostGroup{Name: "g", Hosts: []string{"h1", "h3"}})
		pc.Connections = append(pc.Connections, Connection{Volume: "pod1::vol1", HostGroup: "g", LUN: 2})
	}))
	f.Add(add(func(pc *PodConfig) {
		pc.Hosts[0].CHAPUser, pc.Hosts[0].CHAPSecret = "h2", "h2-secret-12345"
		pc.Volumes = append(pc.Volumes, Volume{Name: "pod1::v2", Pod: "pod1", UUID: "fedcba98765432100123456789abcdef", Size: 1 << 20})
	}))
	f.Add(add(func(pc *PodConfig) {
		pc.Hosts, pc.Connections = nil, nil
		pc.DeletedHosts = []string{"h2", "h1"}
	}))
	f.Add([]byte(`{"pod":{"name":"pod9","id":"p9","arrays":[{"name":"a"}],"sequencer":"a"}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		var pc PodConfig
		if json.Unmarshal(data, &pc) != nil {
			return
		}
		before := base
		after, err := before.Clone()
		if err != nil {
			t.Fatal(err)
		}
		if (InstallPod{Config: pc}).apply(after) != nil {
			return
		}
		checkInstalled(t, before, after, pc.Pod.Name)
	})
}

// checkInstalled checks what an accepted install of pod name may have
// changed.
func checkInstalled(t *testing.T, before, after *State, name string) {
	t.Helper()
	for n, v := range before.Volumes {
		if v.Pod != name && !equalJSON(v, after.Volumes[n]) {
			t.Fatalf("volume %s of pod %s changed: %+v → %+v", n, v.Pod, v, after.Volumes[n])
		}
	}
	for n, v := range after.Volumes {
		if v.Pod != name && before.Volumes[n] == nil {
			t.Fatalf("volume %s of pod %s appeared", n, v.Pod)
		}
	}
	for p, cp := range before.Pods {
		if p != name && !equalJSON(cp, after.Pods[p]) {
			t.Fatalf("pod %s changed", p)
		}
	}
	otherConns := func(s *State) []Connection {
		return slices.DeleteFunc(slices.Clone(s.Connections), func(c Connection) bool { return s.Volumes[c.Volume] != nil && s.Volumes[c.Volume].Pod == name })
	}
	if !slices.Equal(otherConns(before), otherConns(after)) {
		t.Fatalf("connections of other pods changed: %v → %v", otherConns(before), otherConns(after))
	}
	usedHosts, usedGroups := before.podHosts(name)
	for n, h := range before.Hosts {
		a := after.Hosts[n]
		if a == nil && (!usedHosts[n] || after.hasConnections(n, "") || len(after.HostGroupsOf(n)) > 0) {
			t.Fatalf("host %s deleted, though pod %s did not use it before or something else uses it", n, name)
		}
		if !usedHosts[n] && (!sameIQNs(h.IQNs, a.IQNs) || !sameCHAP(h, a)) {
			t.Fatalf("host %s, unused by pod %s before, changed: %+v → %+v", n, name, h, a)
		}
	}
	for n, g := range before.HostGroups {
		if !usedGroups[n] && !sameSet(g.Hosts, after.HostGroups[n].Hosts) {
			t.Fatalf("host group %s, unused by pod %s before, changed: %v → %v", n, name, g.Hosts, after.HostGroups[n].Hosts)
		}
	}
	reached, _ := after.podHosts(name)
	for n := range after.Hosts {
		if before.Hosts[n] == nil && !reached[n] {
			t.Fatalf("host %s created though pod %s does not use it", n, name)
		}
	}
	uuids := map[string]string{}
	for n, v := range after.Volumes {
		if o, dup := uuids[v.UUID]; dup {
			t.Fatalf("volumes %s and %s share uuid %s", n, o, v.UUID)
		}
		uuids[v.UUID] = n
	}
	for _, c := range after.Connections {
		if after.Volumes[c.Volume] == nil || (c.Host != "" && after.Hosts[c.Host] == nil) || (c.HostGroup != "" && after.HostGroups[c.HostGroup] == nil) {
			t.Fatalf("connection %+v refers to nothing", c)
		}
	}
	for _, h := range slices.Sorted(maps.Keys(after.Hosts)) {
		if err := after.checkLUNClashes(h); err != nil {
			t.Fatal(err)
		}
	}
}

func equalJSON(a, b any) bool {
	x, _ := json.Marshal(a)
	y, _ := json.Marshal(b)
	return string(x) == string(y)
}

// TestInstallPodDeletedHosts: a host the sequencer deleted is deleted
// here once the pod no longer uses it, if the pod used it here and
// nothing else here does; a deletion of any other host changes nothing.
func TestInstallPodDeletedHosts(t *testing.T) {
	st := peerBase(t)
	pc := st.PodConfig("pod1")
	pc.Hosts, pc.Connections = nil, nil
	pc.DeletedHosts = []string{"h2", "h1", "nobody"}
	after, _ := st.Clone()
	if err := (InstallPod{Config: *pc}).apply(after); err != nil {
		t.Fatal(err)
	}
	if after.Hosts["h2"] != nil {
		t.Fatal("h2, which pod1 used and nothing else does, was kept")
	}
	if after.Hosts["h1"] == nil {
		t.Fatal("h1, which pod1 did not use (the local pod does), was deleted")
	}
	checkInstalled(t, st, after, "pod1")
	pc = st.PodConfig("pod1")
	pc.DeletedHosts = []string{"h2"}
	if err := st.CheckInstall(pc); !errors.Is(err, ErrInvalid) {
		t.Fatalf("a deleted host among the pod's hosts: %v, want invalid", err)
	}
}

// TestInstallPodOrderedHostChange checks that hosts the pod's connections
// used before follow the sequencer (an ordered change of the pod): new
// CHAP settings and initiators are installed, and a group's member removed
// there is removed here.
func TestInstallPodOrderedHostChange(t *testing.T) {
	st := peerBase(t)
	pc := st.PodConfig("pod1")
	pc.Hosts[0].IQNs = []string{"iqn.2020-01.x:h2", "iqn.2020-01.x:h2b"}
	pc.Hosts[0].CHAPUser, pc.Hosts[0].CHAPSecret = "h2", "h2-secret-12345"
	after, _ := st.Clone()
	if err := (InstallPod{Config: *pc}).apply(after); err != nil {
		t.Fatal(err)
	}
	if h := after.Hosts["h2"]; len(h.IQNs) != 2 || h.CHAPSecret != "h2-secret-12345" {
		t.Fatalf("h2 after the ordered change: %+v", h)
	}
	checkInstalled(t, st, after, "pod1")
}

// podWithHost returns a catalog with pod1 on array a, its volume
// pod1::v and host h1, and when it made them.
func podWithHost(t *testing.T) (*Catalog, time.Time) {
	t.Helper()
	c, err := Open(&memPersist{})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	mustApply(t, c,
		CreatePod{Name: "pod1", ID: "p1", Created: now, Array: PodArray{Name: "a", ID: "ida"}},
		CreateVolume{Name: "pod1::v", UUID: uuid1, Size: 1 << 20, Created: now},
		CreateHost{Host: Host{Name: "h1", IQNs: []string{"iqn.2020-01.org.example:h1"}}})
	return c, now
}

// TestAddsTo: the changes that add to a pod's hosts, initiators, host
// groups, members or connections are those another array may be unable
// to take; removals and changes of CHAP or preferred arrays are not.
func TestAddsTo(t *testing.T) {
	c, now := podWithHost(t)
	mustApply(t, c,
		CreateVolume{Name: "pod1::w", UUID: uuid2, Size: 1 << 20, Created: now},
		CreateHost{Host: Host{Name: "h2", IQNs: []string{"iqn.2020-01.org.example:h2"}}},
		CreateHost{Host: Host{Name: "h3", IQNs: []string{"iqn.2020-01.org.example:h3"}}},
		CreateHostGroup{Name: "g", Hosts: []string{"h3"}},
		Connect{Volume: "pod1::v", Host: "h1"},
		Connect{Volume: "pod1::v", HostGroup: "g", LUN: lun(4)},
	)
	secret, prefs := "a-chap-secret-1", []string{"a"}
	for _, c1 := range []struct {
		op   Op
		adds bool
	}{
		{SetHostAttr{Name: "h1", AddIQNs: []string{"iqn.2020-01.org.example:h1b"}}, true},
		{SetHostAttr{Name: "h1", AddIQNs: []string{"iqn.2020-01.org.example:H1"}, RemoveIQNs: []string{"iqn.2020-01.org.example:h1"}}, false},
		{SetHostAttr{Name: "h1", CHAPUser: &secret, CHAPSecret: &secret}, false},
		{SetHostAttr{Name: "h1", PreferredArrays: &prefs}, false},
		{SetHostGroupAttr{Name: "g", AddHosts: []string{"h2"}}, true},
		{SetHostGroupAttr{Name: "g", RemoveHosts: []string{"h3"}}, false},
		{Connect{Volume: "pod1::w", Host: "h1"}, true},
		{Connect{Volume: "pod1::w", Host: "h2"}, true},
		{Disconnect{Volume: "pod1::v", Host: "h1"}, false},
		{CreateVolume{Name: "pod1::x", UUID: "00112233445566778899aabbccddeeff", Size: 1 << 20, Created: now}, false},
		{DestroyVolume{Name: "pod1::v", At: now, Force: true}, false},
	} {
		st := c.View()
		next, err := st.After(c1.op)
		if err != nil {
			t.Fatalf("%s %+v: %v", c1.op.Kind(), c1.op, err)
		}
		if got := next.PodConfig("pod1").AddsTo(st.PodConfig("pod1")); got != c1.adds {
			t.Errorf("%s %+v: AddsTo %v, want %v", c1.op.Kind(), c1.op, got, c1.adds)
		}
	}
	if _, err := c.View().After(Connect{Volume: "pod1::v", Host: "nobody"}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("After a change that fails: %v", err)
	}
}

// TestWithHosts: the hosts a change brings are created with it when this
// array lacks them, one this array has stays as it is, and a change that
// fails creates none. The op travels (MarshalOp) whole.
func TestWithHosts(t *testing.T) {
	c, _ := podWithHost(t)
	mustApply(t, c, CreateHostGroup{Name: "g"})
	newHost := Host{Name: "h2", IQNs: []string{"iqn.2020-01.org.example:h2"}}
	otherH1 := Host{Name: "h1", IQNs: []string{"iqn.2020-01.org.example:other"}}
	op := WithHosts{Hosts: []Host{newHost, otherH1}, Op: SetHostGroupAttr{Name: "g", AddHosts: []string{"h1", "h2"}}}
	data, err := MarshalOp(op)
	if err != nil {
		t.Fatal(err)
	}
	back, err := UnmarshalOp(data)
	if err != nil {
		t.Fatal(err)
	}
	applyErr(t, c, WithHosts{Hosts: []Host{newHost}, Op: Connect{Volume: "pod1::nope", Host: "h2"}}, ErrNotFound)
	if c.View().Hosts["h2"] != nil {
		t.Fatal("a failed change left the host it brought")
	}
	mustApply(t, c, back)
	st := c.View()
	if h := st.Hosts["h2"]; h == nil || h.IQNs[0] != newHost.IQNs[0] {
		t.Fatalf("h2 after the change: %+v", h)
	}
	if h := st.Hosts["h1"]; h.IQNs[0] != "iqn.2020-01.org.example:h1" {
		t.Fatalf("h1 was replaced by the one the change brought: %+v", h)
	}
	if g := st.HostGroups["g"]; len(g.Hosts) != 2 {
		t.Fatalf("g after the change: %+v", g)
	}
}
