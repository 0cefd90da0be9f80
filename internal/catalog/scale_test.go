package catalog

import (
	"encoding/json"
	"fmt"
	"runtime"
	"testing"
)

// bigGroupConfig is the configuration of a pod whose volumes (vols) are
// all connected to one host group of members hosts: every host sees
// every volume.
func bigGroupConfig(members, vols int) *PodConfig {
	pc := &PodConfig{Pod: Pod{Name: "big", ID: "big-id", Arrays: []PodArray{{Name: "a", ID: "ia"}, {Name: "b", ID: "ib"}}, Sequencer: "a"}}
	g := HostGroup{Name: "g"}
	for i := range members {
		h := fmt.Sprintf("h%d", i)
		pc.Hosts = append(pc.Hosts, Host{Name: h, IQNs: []string{fmt.Sprintf("iqn.2026-01.test:%d", i)}})
		g.Hosts = append(g.Hosts, h)
	}
	pc.HostGroups = []HostGroup{g}
	for i := range vols {
		v := fmt.Sprintf("big::v%d", i)
		pc.Volumes = append(pc.Volumes, Volume{Name: v, Pod: "big", UUID: fmt.Sprintf("%032x", i+1), Size: 1 << 20})
		pc.Connections = append(pc.Connections, Connection{Volume: v, HostGroup: "g", LUN: uint64(i)})
	}
	return pc
}

// allocated returns the bytes f allocates.
func allocated(f func()) uint64 {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	f()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}

// TestInstallScalesWithTheConfiguration checks that installing a pod
// configuration from the peer, and indexing who is connected to what
// (which the array does after every change), cost in proportion to the
// configuration's size, not to the host and volume pairs it connects: a
// configuration of 620 KiB, 8000 hosts of a group connected to 1000
// volumes, made the array allocate 833 MiB to index it and spend seconds
// checking it; one of a few MiB would have taken the array's memory.
func TestInstallScalesWithTheConfiguration(t *testing.T) {
	pc := bigGroupConfig(8000, 1000)
	data, err := json.Marshal(pc)
	if err != nil {
		t.Fatal(err)
	}
	s := NewState()
	var ierr error
	install := allocated(func() { ierr = InstallPod{Config: *pc}.apply(s) })
	if ierr != nil {
		t.Fatal(ierr)
	}
	var a *Access
	index := allocated(func() { a = s.Access() })
	t.Logf("a configuration of %d KiB: the install allocated %d KiB, the access index %d KiB", len(data)>>10, install>>10, index>>10)
	if limit := 64 * uint64(len(data)); install > limit || index > limit {
		t.Fatalf("a configuration of %d KiB: the install allocated %d KiB and the access index %d KiB, more than %d KiB",
			len(data)>>10, install>>10, index>>10, limit>>10)
	}
	for _, c := range []struct {
		vol, iqn string
		want     bool
	}{
		{"big::v999", "IQN.2026-01.TEST:7999", true},
		{"big::v0", "iqn.2026-01.test:0", true},
		{"big::v0", "iqn.2026-01.test:8000", false},
		{"big::v1000", "iqn.2026-01.test:0", false},
	} {
		if got := a.Connected(c.vol, c.iqn); got != c.want {
			t.Errorf("Connected(%s, %s) = %v, want %v", c.vol, c.iqn, got, c.want)
		}
	}
}
