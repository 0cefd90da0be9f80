// Package catalog is an array's durable configuration: pods, volumes,
// hosts, host groups and connections.
//
// The configuration changes only by applying operations (Op values: create
// a volume, connect a host, ...). An operation carries everything it needs
// (names, the new volume's UUID and creation time), so applying the same
// sequence of operations to two copies gives two identical copies: the seam
// through which a stretched pod's sequencer will later order configuration
// changes for both arrays. A Catalog persists the whole state as one
// versioned document in the array's store, written atomically and synced
// before Apply returns.
package catalog

import (
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"sort"
	"strings"
	"time"
)

// Sentinel errors; API handlers branch on them.
var (
	ErrNotFound = errors.New("not found")
	ErrExists   = errors.New("already exists")
	ErrInvalid  = errors.New("invalid")
	ErrConflict = errors.New("conflict")
)

// Pod statuses as `metro pod list` shows them for each array (DESIGN.md).
const (
	StatusOnline    = "online"
	StatusPaused    = "paused"
	StatusResyncing = "resyncing"
	StatusOffline   = "offline"
	StatusUnknown   = "unknown"
)

// State is the whole configuration of an array.
type State struct {
	// Version is the document format version.
	Version int `json:"version"`
	// Generation counts applied operations.
	Generation uint64 `json:"generation"`
	// NextDataID is the next volume data id; ids are never reused.
	NextDataID uint64                `json:"next_data_id"`
	Pods       map[string]*Pod       `json:"pods"`
	Volumes    map[string]*Volume    `json:"volumes"`
	Hosts      map[string]*Host      `json:"hosts"`
	HostGroups map[string]*HostGroup `json:"host_groups"`
	// Connections are kept sorted by volume, then host or group.
	Connections []Connection `json:"connections"`
}

// FormatVersion is the version of the State document this code writes.
// Version 2: a pod's failover_preference is one array name (a list in
// version 1, whose first name is read as the preference) and it has
// auto_recover (absent in version 1, read as true).
const FormatVersion = 2

// PodArray is one array of a pod.
type PodArray struct {
	Name string `json:"name"`
	ID   string `json:"id"`
}

// Pod is a namespace and consistency group of volumes.
type Pod struct {
	Name    string    `json:"name"`
	ID      string    `json:"id"`
	Created time.Time `json:"created"`
	// Arrays the pod lives on; one for a local pod.
	Arrays []PodArray `json:"arrays"`
	// Sequencer is the name of the array that orders the pod's writes.
	Sequencer string `json:"sequencer"`
	// Epoch is bumped whenever leadership or membership changes.
	Epoch uint64 `json:"epoch"`
	// FailoverPreference names the array that should keep the pod
	// online when the link between its arrays fails ("" for none): it
	// races for the pod at once, the other after a head start. It is
	// always one of Arrays.
	FailoverPreference string `json:"failover_preference,omitempty"`
	// AutoRecover: once the link is back after a failover, the array that
	// stopped serving resyncs and returns to in sync by itself (true, the
	// default); false holds it until an operator sets it back to true.
	AutoRecover bool `json:"auto_recover"`
	// Pending is set on an array that was removed from the pod (or handed
	// it over): its copy is kept, serving nothing, until it is eradicated.
	Pending *time.Time `json:"pending,omitempty"`
}

// UnmarshalJSON reads a pod of either format version: a version 1
// failover_preference (a list of names) becomes its first name, and a
// missing auto_recover reads as true.
func (p *Pod) UnmarshalJSON(data []byte) error {
	type plain Pod
	aux := struct {
		*plain
		FailoverPreference json.RawMessage `json:"failover_preference"`
		AutoRecover        *bool           `json:"auto_recover"`
	}{plain: (*plain)(p)}
	if err := json.Unmarshal(data, &aux); err != nil {
		return err
	}
	p.FailoverPreference = ""
	if raw := aux.FailoverPreference; len(raw) > 0 && string(raw) != "null" {
		if err := json.Unmarshal(raw, &p.FailoverPreference); err != nil {
			var list []string
			if json.Unmarshal(raw, &list) != nil {
				return fmt.Errorf("pod %s: failover_preference: %w", p.Name, err)
			}
			if len(list) > 0 {
				p.FailoverPreference = list[0]
			}
		}
	}
	p.AutoRecover = aux.AutoRecover == nil || *aux.AutoRecover
	return nil
}

// Volume is a block volume "pod::name".
type Volume struct {
	Name string `json:"name"`
	Pod  string `json:"pod"`
	// UUID is the volume's identity (hex, 32 digits); the NAA designator
	// and serial number derive from it.
	UUID string `json:"uuid"`
	// DataID names the volume's blocks in the store.
	DataID    uint64     `json:"data_id"`
	Size      uint64     `json:"size"`
	Created   time.Time  `json:"created"`
	Destroyed *time.Time `json:"destroyed,omitempty"`
}

// Host is an initiator identity.
type Host struct {
	Name string   `json:"name"`
	IQNs []string `json:"iqns"`
	// CHAPUser and CHAPSecret are what the host must present (one-way
	// CHAP); empty means no CHAP.
	CHAPUser   string `json:"chap_user,omitempty"`
	CHAPSecret string `json:"chap_secret,omitempty"`
	// TargetCHAPUser and TargetCHAPSecret are what the array answers with
	// when the host asks the target to authenticate (mutual CHAP).
	TargetCHAPUser   string   `json:"target_chap_user,omitempty"`
	TargetCHAPSecret string   `json:"target_chap_secret,omitempty"`
	PreferredArrays  []string `json:"preferred_arrays,omitempty"`
}

// HostGroup is a named set of hosts that share connections.
type HostGroup struct {
	Name  string   `json:"name"`
	Hosts []string `json:"hosts"`
}

// Connection maps a volume to a host or a host group at a LUN.
type Connection struct {
	Volume    string `json:"volume"`
	Host      string `json:"host,omitempty"`
	HostGroup string `json:"host_group,omitempty"`
	LUN       uint64 `json:"lun"`
}

// NewState returns an empty configuration.
func NewState() *State {
	return &State{
		Version:    FormatVersion,
		NextDataID: 1,
		Pods:       map[string]*Pod{},
		Volumes:    map[string]*Volume{},
		Hosts:      map[string]*Host{},
		HostGroups: map[string]*HostGroup{},
	}
}

var nameRE = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9-]{0,62}$`)

// ValidName checks an object name: a letter, then letters, digits and
// dashes, at most 63 characters.
func ValidName(kind, name string) error {
	if !nameRE.MatchString(name) {
		return fmt.Errorf("%s name %q: %w: use 1-63 letters, digits or dashes, starting with a letter", kind, name, ErrInvalid)
	}
	return nil
}

// SplitVolumeName splits "pod::vol".
func SplitVolumeName(full string) (pod, vol string, err error) {
	p, v, ok := strings.Cut(full, "::")
	if !ok {
		return "", "", fmt.Errorf("volume name %q: %w: volumes are named POD::NAME, e.g. pod1::vol1", full, ErrInvalid)
	}
	if err := ValidName("pod", p); err != nil {
		return "", "", err
	}
	if err := ValidName("volume", v); err != nil {
		return "", "", err
	}
	return p, v, nil
}

var iqnRE = regexp.MustCompile(`^(iqn\.[0-9]{4}-[0-9]{2}\.[^\s]+|eui\.[0-9A-Fa-f]{16}|naa\.[0-9A-Fa-f]{16,32})$`)

// ValidIQN checks an iSCSI name (iqn., eui. or naa. form).
func ValidIQN(s string) error {
	if len(s) > 223 || !iqnRE.MatchString(s) {
		return fmt.Errorf("initiator name %q: %w: expected an iSCSI name such as iqn.1993-08.org.debian:01:abcdef", s, ErrInvalid)
	}
	return nil
}

// HostByIQN returns the host that has the initiator name, or nil.
func (s *State) HostByIQN(iqn string) *Host {
	for _, h := range s.Hosts {
		for _, q := range h.IQNs {
			if strings.EqualFold(q, iqn) {
				return h
			}
		}
	}
	return nil
}

// HostGroupsOf lists the groups a host belongs to.
func (s *State) HostGroupsOf(host string) []string {
	var out []string
	for _, g := range s.HostGroups {
		for _, h := range g.Hosts {
			if h == host {
				out = append(out, g.Name)
			}
		}
	}
	sort.Strings(out)
	return out
}

// LUNsFor returns the LUN → volume map an initiator sees: the
// connections of its host and of the host groups it belongs to. Destroyed
// volumes are never visible.
func (s *State) LUNsFor(iqn string) map[uint64]*Volume {
	h := s.HostByIQN(iqn)
	if h == nil {
		return nil
	}
	groups := s.HostGroupsOf(h.Name)
	out := map[uint64]*Volume{}
	for _, c := range s.Connections {
		if c.Host != h.Name && !contains(groups, c.HostGroup) {
			continue
		}
		v := s.Volumes[c.Volume]
		if v == nil || v.Destroyed != nil {
			continue
		}
		if p := s.Pods[v.Pod]; p != nil && p.Pending != nil {
			continue
		}
		out[c.LUN] = v
	}
	return out
}

// ConnectionsOf lists the connections of a volume.
func (s *State) ConnectionsOf(vol string) []Connection {
	var out []Connection
	for _, c := range s.Connections {
		if c.Volume == vol {
			out = append(out, c)
		}
	}
	return out
}

// PodVolumes lists the volumes of a pod (destroyed ones too), by name.
func (s *State) PodVolumes(pod string) []*Volume {
	var out []*Volume
	for _, v := range s.Volumes {
		if v.Pod == pod {
			out = append(out, v)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// SortedPods returns the pods by name.
func (s *State) SortedPods() []*Pod {
	out := make([]*Pod, 0, len(s.Pods))
	for _, p := range s.Pods {
		out = append(out, p)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// SortedVolumes returns the volumes by name.
func (s *State) SortedVolumes() []*Volume {
	out := make([]*Volume, 0, len(s.Volumes))
	for _, v := range s.Volumes {
		out = append(out, v)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// SortedHosts returns the hosts by name.
func (s *State) SortedHosts() []*Host {
	out := make([]*Host, 0, len(s.Hosts))
	for _, h := range s.Hosts {
		out = append(out, h)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// SortedHostGroups returns the host groups by name.
func (s *State) SortedHostGroups() []*HostGroup {
	out := make([]*HostGroup, 0, len(s.HostGroups))
	for _, g := range s.HostGroups {
		out = append(out, g)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s && s != "" {
			return true
		}
	}
	return false
}
