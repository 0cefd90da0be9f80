package catalog

import (
	"fmt"
	"slices"
	"strings"
	"time"
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
	var pref []string
	for _, a := range p.FailoverPreference {
		if slices.ContainsFunc(p.Arrays, func(pa PodArray) bool { return pa.Name == a }) {
			pref = append(pref, a)
		}
	}
	p.FailoverPreference = pref
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
	pc.Pod.FailoverPreference = slices.Clone(p.FailoverPreference)
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
			if c.HostGroup != "" {
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
// those use. A host of the same name with other initiator names, or an
// initiator name that belongs to another host here, is an error that
// names it: hosts are kept identical on both arrays.
type InstallPod struct {
	Config PodConfig `json:"config"`
}

func (InstallPod) Kind() string { return "install_pod" }

func (o InstallPod) apply(s *State) error {
	pc := &o.Config
	name := pc.Pod.Name
	if err := ValidName("pod", name); err != nil {
		return err
	}
	if p, ok := s.Pods[name]; ok && p.ID != pc.Pod.ID {
		return fmt.Errorf("pod %s: %w: this array has another pod of that name; rename or destroy it first", name, ErrExists)
	}
	for _, h := range pc.Hosts {
		if cur, ok := s.Hosts[h.Name]; ok && !sameIQNs(cur.IQNs, h.IQNs) {
			return fmt.Errorf("host %s: %w: it exists on this array with initiators %s, on the pod's array with %s; make them the same",
				h.Name, ErrConflict, strings.Join(cur.IQNs, ","), strings.Join(h.IQNs, ","))
		}
		for _, iqn := range h.IQNs {
			if other := s.HostByIQN(iqn); other != nil && other.Name != h.Name {
				return fmt.Errorf("host %s: initiator %s: %w: it belongs to host %s on this array", h.Name, iqn, ErrConflict, other.Name)
			}
		}
		hc := h
		hc.IQNs = slices.Clone(h.IQNs)
		hc.PreferredArrays = slices.Clone(h.PreferredArrays)
		s.Hosts[h.Name] = &hc
	}
	for _, g := range pc.HostGroups {
		if cur, ok := s.HostGroups[g.Name]; ok {
			cur.Hosts = dedupe(append(cur.Hosts, g.Hosts...))
			continue
		}
		gc := g
		gc.Hosts = slices.Clone(g.Hosts)
		s.HostGroups[g.Name] = &gc
	}
	p := pc.Pod
	p.Arrays = slices.Clone(pc.Pod.Arrays)
	p.FailoverPreference = slices.Clone(pc.Pod.FailoverPreference)
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
	var conns []Connection
	for _, c := range s.Connections {
		if v := s.Volumes[c.Volume]; v == nil || v.Pod != name {
			conns = append(conns, c)
		}
	}
	s.Connections = append(conns, pc.Connections...)
	sortConnections(s.Connections)
	return nil
}

func sameIQNs(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for _, x := range a {
		if !slices.ContainsFunc(b, func(y string) bool { return strings.EqualFold(x, y) }) {
			return false
		}
	}
	return true
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
