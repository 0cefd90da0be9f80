package catalog

import (
	"encoding/hex"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"
	"unicode"
)

// SetPodMembership changes the arrays of a pod, its sequencer and its
// epoch: stretch, unstretch, a sequencer handover, a fence.
type SetPodMembership struct {
	Name      string     `json:"name"`
	Arrays    []PodArray `json:"arrays"`
	Sequencer string     `json:"sequencer"`
	Epoch     uint64     `json:"epoch"`
}

func (SetPodMembership) Kind() string { return "set_pod_membership" }

func (o SetPodMembership) apply(s *State) error {
	p, ok := s.Pods[o.Name]
	if !ok {
		return fmt.Errorf("pod %s: %w", o.Name, ErrNotFound)
	}
	if len(o.Arrays) == 0 || len(o.Arrays) > 2 {
		return fmt.Errorf("pod %s: %w: a pod lives on one or two arrays", o.Name, ErrInvalid)
	}
	if !slices.ContainsFunc(o.Arrays, func(a PodArray) bool { return a.Name == o.Sequencer }) {
		return fmt.Errorf("pod %s: sequencer %s: %w: not one of the pod's arrays", o.Name, o.Sequencer, ErrInvalid)
	}
	if o.Epoch < p.Epoch {
		return fmt.Errorf("pod %s: epoch %d is older than %d: %w", o.Name, o.Epoch, p.Epoch, ErrConflict)
	}
	p.Arrays = slices.Clone(o.Arrays)
	p.Sequencer = o.Sequencer
	p.Epoch = o.Epoch
	if !p.HasArray(p.FailoverPreference) {
		p.FailoverPreference = ""
	}
	return nil
}

// PodConfig is a pod's replicated configuration: the pod, its volumes,
// their connections, and the hosts and host groups those use. The
// sequencer sends it to the other array when it stretches the pod or
// starts a resync (InstallPod).
type PodConfig struct {
	Pod         Pod          `json:"pod"`
	Volumes     []Volume     `json:"volumes"`
	Connections []Connection `json:"connections"`
	Hosts       []Host       `json:"hosts"`
	HostGroups  []HostGroup  `json:"host_groups"`
	// DeletedHosts are hosts the pod used (through a host group) that
	// the change this configuration follows deleted: InstallPod deletes
	// them too, unless something else uses them there.
	DeletedHosts []string `json:"deleted_hosts,omitempty"`
}

// PodConfig returns the replicated configuration of a pod (nil if there
// is no such pod).
func (s *State) PodConfig(name string) *PodConfig {
	p, ok := s.Pods[name]
	if !ok {
		return nil
	}
	pc := &PodConfig{Pod: *p}
	pc.Pod.Arrays = slices.Clone(p.Arrays)
	hosts, groups := map[string]bool{}, map[string]bool{}
	for _, v := range s.PodVolumes(name) {
		vc := *v
		vc.DataID = 0
		pc.Volumes = append(pc.Volumes, vc)
		for _, c := range s.ConnectionsOf(v.Name) {
			pc.Connections = append(pc.Connections, c)
			if c.Host != "" {
				hosts[c.Host] = true
			}
			if c.HostGroup != "" && !groups[c.HostGroup] {
				groups[c.HostGroup] = true
				if g := s.HostGroups[c.HostGroup]; g != nil {
					for _, h := range g.Hosts {
						hosts[h] = true
					}
				}
			}
		}
	}
	for _, h := range s.SortedHosts() {
		if hosts[h.Name] {
			hc := *h
			hc.IQNs = slices.Clone(h.IQNs)
			hc.PreferredArrays = slices.Clone(h.PreferredArrays)
			pc.Hosts = append(pc.Hosts, hc)
		}
	}
	for _, g := range s.SortedHostGroups() {
		if groups[g.Name] {
			gc := *g
			gc.Hosts = slices.Clone(g.Hosts)
			pc.HostGroups = append(pc.HostGroups, gc)
		}
	}
	return pc
}

// After returns a copy of the state with op applied (or op's error),
// leaving s as it is.
func (s *State) After(op Op) (*State, error) {
	next, err := s.Clone()
	if err != nil {
		return nil, err
	}
	if err := op.apply(next); err != nil {
		return nil, err
	}
	return next, nil
}

// AddsTo reports whether pc, a pod's configuration after a change, has a
// host, an initiator name, a host group, a group member or a connection
// that before, the configuration before the change, has not. Only such
// additions can keep another array that holds before from installing pc
// (InstallPod: an initiator or a name that is another host's there, a
// LUN a host already sees there); removals, and changes of CHAP
// credentials, preferred arrays, volumes or the pod's attributes cannot.
func (pc *PodConfig) AddsTo(before *PodConfig) bool {
	if before == nil {
		return true
	}
	iqns := map[string][]string{}
	for _, h := range before.Hosts {
		iqns[h.Name] = h.IQNs
	}
	for _, h := range pc.Hosts {
		old, ok := iqns[h.Name]
		if !ok || !subsetFold(h.IQNs, old) {
			return true
		}
	}
	members := map[string][]string{}
	for _, g := range before.HostGroups {
		members[g.Name] = g.Hosts
	}
	for _, g := range pc.HostGroups {
		old, ok := members[g.Name]
		if !ok || slices.ContainsFunc(g.Hosts, func(h string) bool { return !slices.Contains(old, h) }) {
			return true
		}
	}
	return slices.ContainsFunc(pc.Connections, func(c Connection) bool { return !slices.Contains(before.Connections, c) })
}

// subsetFold reports whether every name of a is in b, in any case.
func subsetFold(a, b []string) bool {
	return !slices.ContainsFunc(a, func(x string) bool {
		return !slices.ContainsFunc(b, func(y string) bool { return strings.EqualFold(x, y) })
	})
}

// WithHosts applies Op after creating those of Hosts this array lacks,
// as one change: the hosts a change made on the other array of a
// stretched pod names (a host connected to one of its volumes, or added
// to a host group it uses) come with the change from there. A host this
// array has already stays as it is.
type WithHosts struct {
	Hosts []Host
	Op    Op
}

func (WithHosts) Kind() string { return "with_hosts" }

func (o WithHosts) apply(s *State) error {
	for _, h := range o.Hosts {
		if _, ok := s.Hosts[h.Name]; ok {
			continue
		}
		if err := (CreateHost{Host: h}).apply(s); err != nil {
			return err
		}
	}
	return o.Op.apply(s)
}

// withHostsJSON is WithHosts serialised, its op in MarshalOp's form.
type withHostsJSON struct {
	Hosts []Host          `json:"hosts"`
	Op    json.RawMessage `json:"op"`
}

func (o WithHosts) MarshalJSON() ([]byte, error) {
	op, err := MarshalOp(o.Op)
	if err != nil {
		return nil, err
	}
	return json.Marshal(withHostsJSON{Hosts: o.Hosts, Op: op})
}

func (o *WithHosts) UnmarshalJSON(data []byte) error {
	var w withHostsJSON
	if err := json.Unmarshal(data, &w); err != nil {
		return err
	}
	op, err := UnmarshalOp(w.Op)
	if err != nil {
		return err
	}
	o.Hosts, o.Op = w.Hosts, op
	return nil
}

// CheckInstall reports why InstallPod of pc would fail here, or nil.
func (s *State) CheckInstall(pc *PodConfig) error {
	c, err := s.Clone()
	if err != nil {
		return err
	}
	return InstallPod{Config: *pc}.apply(c)
}

// InstallPod makes a pod's configuration on this array equal to the
// sequencer's: the pod, its volumes (keeping this array's data of a
// volume it already has), connections, and the hosts and host groups
// those use. A host the pod used here that the sequencer deleted
// (DeletedHosts) is deleted here too once nothing else here uses it.
//
// The configuration comes from the peer array, so it is checked before
// anything changes: it must describe the pod only (its volumes, their
// connections, and exactly the hosts and host groups those connections
// use), may not replace a pod of another id or one this array holds
// under another sequencer, and may not take a volume UUID another pod
// uses here. Hosts and host groups are kept identical on both arrays, but
// one that exists here and that the pod's connections did not use here
// before is never changed by the peer: a host of the same name must have
// the same initiator names and CHAP settings, a host group the same
// members, or the install fails with an error that names it. Those the
// pod already used here follow the sequencer, which orders their changes
// (they are changes of the pod's configuration). An initiator name that
// belongs to another host here is an error too, and so is a host that
// would see one LUN twice.
type InstallPod struct {
	Config PodConfig `json:"config"`
}

func (InstallPod) Kind() string { return "install_pod" }

func (o InstallPod) apply(s *State) error {
	pc := &o.Config
	name := pc.Pod.Name
	if err := s.checkPodConfig(pc); err != nil {
		return err
	}
	cur, exists := s.Pods[name]
	if exists && cur.ID != pc.Pod.ID {
		return fmt.Errorf("pod %s: %w: this array has another pod of that name; rename or destroy it first", name, ErrExists)
	}
	if exists && cur.Pending == nil && cur.Sequencer != pc.Pod.Sequencer {
		return fmt.Errorf("pod %s: %w: array %s orders it here, the configuration comes from array %s", name, ErrConflict, cur.Sequencer, pc.Pod.Sequencer)
	}
	usedHosts, usedGroups := map[string]bool{}, map[string]bool{}
	if exists {
		usedHosts, usedGroups = s.podHosts(name)
	}
	owner := s.iqnOwners()
	for _, h := range pc.Hosts {
		if cur, ok := s.Hosts[h.Name]; ok && !usedHosts[h.Name] {
			if !sameIQNs(cur.IQNs, h.IQNs) {
				return fmt.Errorf("host %s: %w: it exists on this array with initiators %s, on the pod's array with %s; make them the same",
					h.Name, ErrConflict, strings.Join(cur.IQNs, ","), strings.Join(h.IQNs, ","))
			}
			if !sameCHAP(cur, &h) {
				return fmt.Errorf("host %s: %w: it exists on this array with other CHAP settings than on the pod's array; make them the same on both arrays (metro host setattr)",
					h.Name, ErrConflict)
			}
		}
		for _, iqn := range h.IQNs {
			if other, ok := owner[foldKey(iqn)]; ok && other != h.Name {
				return fmt.Errorf("host %s: initiator %s: %w: it belongs to host %s on this array", h.Name, iqn, ErrConflict, other)
			}
		}
		if cur := s.Hosts[h.Name]; cur != nil {
			for _, q := range cur.IQNs {
				delete(owner, foldKey(q))
			}
		}
		hc := h
		hc.IQNs = dedupe(h.IQNs)
		hc.PreferredArrays = slices.Clone(h.PreferredArrays)
		for _, q := range hc.IQNs {
			owner[foldKey(q)] = h.Name
		}
		s.Hosts[h.Name] = &hc
	}
	for _, g := range pc.HostGroups {
		if cur, ok := s.HostGroups[g.Name]; ok && !usedGroups[g.Name] && !sameSet(cur.Hosts, g.Hosts) {
			return fmt.Errorf("host group %s: %w: it exists on this array with hosts %s, on the pod's array with %s; make them the same",
				g.Name, ErrConflict, strings.Join(cur.Hosts, ","), strings.Join(g.Hosts, ","))
		}
		gc := g
		gc.Hosts = dedupe(g.Hosts)
		s.HostGroups[g.Name] = &gc
	}
	p := pc.Pod
	p.Arrays = slices.Clone(pc.Pod.Arrays)
	s.Pods[name] = &p
	keep := map[string]bool{}
	for _, v := range pc.Volumes {
		keep[v.Name] = true
		vc := v
		if cur, ok := s.Volumes[v.Name]; ok && cur.UUID == v.UUID {
			vc.DataID = cur.DataID
		} else {
			vc.DataID = s.NextDataID
			s.NextDataID++
		}
		s.Volumes[v.Name] = &vc
	}
	for n, v := range s.Volumes {
		if v.Pod == name && !keep[n] {
			delete(s.Volumes, n)
		}
	}
	// The pod's connections are replaced, those of its volumes that left
	// it too (a volume name starts with its pod's).
	var conns []Connection
	for _, c := range s.Connections {
		if pod, _, _ := SplitVolumeName(c.Volume); pod != name {
			conns = append(conns, c)
		}
	}
	s.Connections = append(conns, pc.Connections...)
	sortConnections(s.Connections)
	reached, _ := s.podHosts(name)
	if err := s.checkLUNClashesOf(reached); err != nil {
		return fmt.Errorf("pod %s: %w", name, err)
	}
	for _, h := range pc.DeletedHosts {
		if usedHosts[h] && !s.hasConnections(h, "") && len(s.HostGroupsOf(h)) == 0 {
			delete(s.Hosts, h)
		}
	}
	return nil
}

// iqnOwners returns the host of each initiator name, by foldKey.
func (s *State) iqnOwners() map[string]string {
	owner := map[string]string{}
	for _, h := range s.Hosts {
		for _, q := range h.IQNs {
			owner[foldKey(q)] = h.Name
		}
	}
	return owner
}

// foldKey returns a key equal for two strings exactly when
// strings.EqualFold holds for them: each rune is replaced by the least
// rune of its case-folding orbit.
func foldKey(s string) string {
	return strings.Map(func(r rune) rune {
		least := r
		for f := unicode.SimpleFold(r); f != r; f = unicode.SimpleFold(f) {
			least = min(least, f)
		}
		return least
	}, s)
}

// checkLUNClashesOf is checkLUNClashes of each of the hosts (the error
// names the first host in name order that has a clash), in time linear in
// the connections and in the pairs of connection sources (a host's own
// connections, each of its host groups) that a host shares, not in the
// LUNs each host sees: hosts reached through the same host group share
// its LUN map.
func (s *State) checkLUNClashesOf(hosts map[string]bool) error {
	// A source's LUN map, and a clash within it.
	type source struct {
		luns  map[uint64]string
		vols  map[string]uint64
		clash func(host string) error
	}
	sources := map[string]*source{}
	for _, c := range s.Connections {
		key := "group:" + c.HostGroup
		if c.Host != "" {
			if !hosts[c.Host] {
				continue
			}
			key = "host:" + c.Host
		}
		src := sources[key]
		if src == nil {
			src = &source{luns: map[uint64]string{}, vols: map[string]uint64{}}
			sources[key] = src
		}
		if src.clash != nil {
			continue
		}
		src.clash = lunClash(src.luns, src.vols, c.LUN, c.Volume)
		if src.clash == nil {
			src.luns[c.LUN], src.vols[c.Volume] = c.Volume, c.LUN
		}
	}
	of := map[string][]string{}
	for h := range hosts {
		if sources["host:"+h] != nil {
			of[h] = append(of[h], "host:"+h)
		}
	}
	for _, g := range s.HostGroups {
		if sources["group:"+g.Name] == nil {
			continue
		}
		for _, h := range dedupe(g.Hosts) {
			if hosts[h] {
				of[h] = append(of[h], "group:"+g.Name)
			}
		}
	}
	// pairs caches the clash between two sources ("" when none).
	pairs := map[[2]string]func(string) error{}
	for _, h := range slices.Sorted(maps.Keys(hosts)) {
		keys := of[h]
		for i, a := range keys {
			if c := sources[a].clash; c != nil {
				return c(h)
			}
			for _, b := range keys[i+1:] {
				pair := [2]string{min(a, b), max(a, b)}
				clash, ok := pairs[pair]
				if !ok {
					clash = sourcesClash(sources[a].luns, sources[a].vols, sources[b].luns, sources[b].vols)
					pairs[pair] = clash
				}
				if clash != nil {
					return clash(h)
				}
			}
		}
	}
	return nil
}

// lunClash returns the clash a connection of vol at lun would make with a
// LUN map (luns, and its inverse vols), or nil.
func lunClash(luns map[uint64]string, vols map[string]uint64, lun uint64, vol string) func(string) error {
	if v, ok := luns[lun]; ok && v != vol {
		return func(host string) error {
			return fmt.Errorf("host %s would see LUN %d twice (%s and %s): %w", host, lun, v, vol, ErrConflict)
		}
	}
	if l, ok := vols[vol]; ok && l != lun {
		return func(host string) error {
			return fmt.Errorf("host %s would see volume %s at two LUNs: %w", host, vol, ErrConflict)
		}
	}
	return nil
}

// sourcesClash returns the clash between two LUN maps seen together, or
// nil; it walks the smaller.
func sourcesClash(aLuns map[uint64]string, aVols map[string]uint64, bLuns map[uint64]string, bVols map[string]uint64) func(string) error {
	if len(aLuns) > len(bLuns) {
		aLuns, aVols, bLuns, bVols = bLuns, bVols, aLuns, aVols
	}
	for lun, vol := range aLuns {
		if c := lunClash(bLuns, bVols, lun, vol); c != nil {
			return c
		}
	}
	return nil
}

// checkPodConfig checks that a pod configuration from the peer describes
// that pod only, consistently, and takes no volume identity of another
// pod here.
func (s *State) checkPodConfig(pc *PodConfig) error {
	name := pc.Pod.Name
	if err := ValidName("pod", name); err != nil {
		return err
	}
	bad := func(format string, args ...any) error {
		return fmt.Errorf("pod %s: configuration from the peer: %w: %s", name, ErrInvalid, fmt.Sprintf(format, args...))
	}
	p := &pc.Pod
	switch {
	case p.ID == "":
		return bad("no pod id")
	case p.Pending != nil:
		return bad("the pod is pending eradication")
	case len(p.Arrays) == 0 || len(p.Arrays) > 2:
		return bad("%d arrays", len(p.Arrays))
	case !slices.ContainsFunc(p.Arrays, func(a PodArray) bool { return a.Name == p.Sequencer }):
		return bad("sequencer %q is not one of the pod's arrays", p.Sequencer)
	}
	if p.FailoverPreference != "" && !p.HasArray(p.FailoverPreference) {
		return bad("failover preference %q is not one of the pod's arrays", p.FailoverPreference)
	}
	vols := map[string]*Volume{}
	uuids := map[string]bool{}
	for i := range pc.Volumes {
		v := &pc.Volumes[i]
		vp, _, err := SplitVolumeName(v.Name)
		if err != nil {
			return bad("%v", err)
		}
		if vp != name || v.Pod != name {
			return bad("volume %s belongs to pod %s", v.Name, v.Pod)
		}
		if err := checkSize(v.Size); err != nil {
			return bad("volume %s: %v", v.Name, err)
		}
		if b, err := hex.DecodeString(v.UUID); err != nil || len(b) != 16 {
			return bad("volume %s: uuid %q is not 32 hex digits", v.Name, v.UUID)
		}
		if vols[v.Name] != nil || uuids[v.UUID] {
			return bad("volume %s or its uuid %s is listed twice", v.Name, v.UUID)
		}
		vols[v.Name], uuids[v.UUID] = v, true
	}
	for _, v := range s.Volumes {
		if v.Pod != name && uuids[v.UUID] {
			return fmt.Errorf("pod %s: volume uuid %s: %w: volume %s of another pod has it on this array", name, v.UUID, ErrConflict, v.Name)
		}
	}
	hosts := map[string]*Host{}
	for i := range pc.Hosts {
		h := &pc.Hosts[i]
		if err := ValidName("host", h.Name); err != nil {
			return bad("%v", err)
		}
		if hosts[h.Name] != nil {
			return bad("host %s is listed twice", h.Name)
		}
		for _, q := range h.IQNs {
			if err := ValidIQN(q); err != nil {
				return bad("host %s: %v", h.Name, err)
			}
		}
		if err := h.validate(); err != nil {
			return bad("host %s: %v", h.Name, err)
		}
		if _, ok := s.HostGroups[h.Name]; ok {
			return fmt.Errorf("host %s: %w: a host group has that name on this array", h.Name, ErrConflict)
		}
		hosts[h.Name] = h
	}
	for _, h := range pc.DeletedHosts {
		if hosts[h] != nil {
			return bad("host %s is deleted and among the pod's hosts", h)
		}
	}
	groups := map[string]*HostGroup{}
	for i := range pc.HostGroups {
		g := &pc.HostGroups[i]
		if err := ValidName("host group", g.Name); err != nil {
			return bad("%v", err)
		}
		if groups[g.Name] != nil || hosts[g.Name] != nil {
			return bad("host group %s is listed twice, or as a host too", g.Name)
		}
		if _, ok := s.Hosts[g.Name]; ok {
			return fmt.Errorf("host group %s: %w: a host has that name on this array", g.Name, ErrConflict)
		}
		for _, h := range g.Hosts {
			if hosts[h] == nil {
				return bad("host group %s: member %s is not among the pod's hosts", g.Name, h)
			}
		}
		groups[g.Name] = g
	}
	usedHosts, usedGroups := map[string]bool{}, map[string]bool{}
	seen := map[Connection]bool{}
	for _, c := range pc.Connections {
		v := vols[c.Volume]
		switch {
		case v == nil:
			return bad("a connection of volume %s, which is not the pod's", c.Volume)
		case v.Destroyed != nil:
			return bad("a connection of destroyed volume %s", c.Volume)
		case (c.Host == "") == (c.HostGroup == ""):
			return bad("a connection of volume %s names no host or host group, or both", c.Volume)
		case c.Host != "" && hosts[c.Host] == nil:
			return bad("volume %s is connected to host %s, which is not among the pod's hosts", c.Volume, c.Host)
		case c.HostGroup != "" && groups[c.HostGroup] == nil:
			return bad("volume %s is connected to host group %s, which is not among the pod's host groups", c.Volume, c.HostGroup)
		case c.LUN > MaxLUN:
			return bad("volume %s at LUN %d, above %d", c.Volume, c.LUN, MaxLUN)
		}
		key := c
		key.LUN = 0
		if seen[key] {
			return bad("volume %s is connected to %s%s twice", c.Volume, c.Host, c.HostGroup)
		}
		seen[key] = true
		usedHosts[c.Host] = true
		if g := groups[c.HostGroup]; g != nil && !usedGroups[g.Name] {
			usedGroups[g.Name] = true
			for _, h := range g.Hosts {
				usedHosts[h] = true
			}
		}
	}
	for h := range hosts {
		if !usedHosts[h] {
			return bad("host %s is not used by the pod's connections", h)
		}
	}
	for g := range groups {
		if !usedGroups[g] {
			return bad("host group %s is not used by the pod's connections", g)
		}
	}
	return nil
}

// podHosts returns the hosts and host groups the connections of a pod's
// volumes reach here (a group's members count as reached).
func (s *State) podHosts(pod string) (hosts, groups map[string]bool) {
	hosts, groups = map[string]bool{}, map[string]bool{}
	for _, c := range s.Connections {
		if v := s.Volumes[c.Volume]; v == nil || v.Pod != pod {
			continue
		}
		if c.Host != "" {
			hosts[c.Host] = true
		}
		if g := s.HostGroups[c.HostGroup]; g != nil && !groups[g.Name] {
			groups[g.Name] = true
			for _, h := range g.Hosts {
				hosts[h] = true
			}
		}
	}
	return hosts, groups
}

// Access answers whether an initiator is connected to a volume, directly
// or through a host group. It is built in time linear in the
// configuration (not in the number of initiator and volume pairs it
// connects, which a host group connected to many volumes multiplies)
// and must not outlive the State it was made from.
type Access struct {
	// host is the host of each initiator name, by foldKey.
	host map[string]string
	// groups are the host groups of each host.
	groups map[string][]string
	// conns are the hosts and host groups each volume is connected to.
	conns map[string]map[string]bool
}

// Access returns the connections of the state as an Access.
func (s *State) Access() *Access {
	a := &Access{host: map[string]string{}, groups: map[string][]string{}, conns: map[string]map[string]bool{}}
	for _, h := range s.Hosts {
		for _, q := range h.IQNs {
			a.host[foldKey(q)] = h.Name
		}
	}
	for _, g := range s.HostGroups {
		for _, h := range g.Hosts {
			a.groups[h] = append(a.groups[h], g.Name)
		}
	}
	for _, c := range s.Connections {
		m := a.conns[c.Volume]
		if m == nil {
			m = map[string]bool{}
			a.conns[c.Volume] = m
		}
		if c.Host != "" {
			m["host:"+c.Host] = true
		} else {
			m["group:"+c.HostGroup] = true
		}
	}
	return a
}

// Connected reports whether the initiator (an iSCSI name, in any case)
// belongs to a host connected to the volume, directly or through a host
// group.
func (a *Access) Connected(volume, initiator string) bool {
	h, ok := a.host[foldKey(initiator)]
	m := a.conns[volume]
	if !ok || m == nil {
		return false
	}
	if m["host:"+h] {
		return true
	}
	return slices.ContainsFunc(a.groups[h], func(g string) bool { return m["group:"+g] })
}

func sameCHAP(a, b *Host) bool {
	return a.CHAPUser == b.CHAPUser && a.CHAPSecret == b.CHAPSecret &&
		a.TargetCHAPUser == b.TargetCHAPUser && a.TargetCHAPSecret == b.TargetCHAPSecret
}

func sameSet(a, b []string) bool {
	da, db := dedupe(a), dedupe(b)
	if len(da) != len(db) {
		return false
	}
	in := make(map[string]bool, len(db))
	for _, x := range db {
		in[x] = true
	}
	return !slices.ContainsFunc(da, func(x string) bool { return !in[x] })
}

func sameIQNs(a, b []string) bool {
	return len(a) == len(b) && subsetFold(a, b)
}

// SetPodPending sets this array's copy of a pod aside after the array was
// removed from the pod: it serves nothing and is eradicated after the
// eradication window (or with EradicatePod).
type SetPodPending struct {
	Name  string    `json:"name"`
	At    time.Time `json:"at"`
	Epoch uint64    `json:"epoch"`
}

func (SetPodPending) Kind() string { return "set_pod_pending" }

func (o SetPodPending) apply(s *State) error {
	p, ok := s.Pods[o.Name]
	if !ok {
		return fmt.Errorf("pod %s: %w", o.Name, ErrNotFound)
	}
	at := o.At.UTC()
	p.Pending = &at
	if o.Epoch > p.Epoch {
		p.Epoch = o.Epoch
	}
	return nil
}

// EradicatePod forgets a pod copy pending eradication with its volumes;
// the array deletes their blocks afterwards.
type EradicatePod struct {
	Name string `json:"name"`
}

func (EradicatePod) Kind() string { return "eradicate_pod" }

func (o EradicatePod) apply(s *State) error {
	p, ok := s.Pods[o.Name]
	if !ok {
		return fmt.Errorf("pod %s: %w", o.Name, ErrNotFound)
	}
	if p.Pending == nil {
		return fmt.Errorf("pod %s: %w: it is not pending eradication", o.Name, ErrConflict)
	}
	for n, v := range s.Volumes {
		if v.Pod == o.Name {
			delete(s.Volumes, n)
		}
	}
	var conns []Connection
	for _, c := range s.Connections {
		if pod, _, _ := SplitVolumeName(c.Volume); pod != o.Name {
			conns = append(conns, c)
		}
	}
	s.Connections = conns
	delete(s.Pods, o.Name)
	return nil
}
