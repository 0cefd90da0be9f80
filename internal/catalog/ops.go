package catalog

import (
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"
)

// Op is one configuration change. Applying an op either changes the state
// and returns nil, or returns an error (wrapping one of the sentinels) and
// leaves the state as it was (the Catalog applies ops to a copy).
type Op interface {
	// Kind names the op in its serialised envelope.
	Kind() string
	apply(s *State) error
}

// CreatePod makes a new (local) pod on Array.
type CreatePod struct {
	Name    string    `json:"name"`
	ID      string    `json:"id"`
	Created time.Time `json:"created"`
	Array   PodArray  `json:"array"`
}

// DestroyPod removes an empty pod.
type DestroyPod struct {
	Name string `json:"name"`
}

// SetPodAttr changes pod attributes; nil fields are left alone.
type SetPodAttr struct {
	Name string `json:"name"`
	// FailoverPreference is one of the pod's arrays, or "" for none.
	FailoverPreference *string `json:"failover_preference,omitempty"`
	AutoRecover        *bool   `json:"auto_recover,omitempty"`
}

// CreateVolume makes a thin volume "pod::name".
type CreateVolume struct {
	Name    string    `json:"name"`
	UUID    string    `json:"uuid"`
	Size    uint64    `json:"size"`
	Created time.Time `json:"created"`
}

// ResizeVolume grows a volume.
type ResizeVolume struct {
	Name string `json:"name"`
	Size uint64 `json:"size"`
}

// DestroyVolume moves a volume to the destroyed state, recoverable until
// it is eradicated. A connected volume needs Force, which also removes
// its connections.
type DestroyVolume struct {
	Name  string    `json:"name"`
	At    time.Time `json:"at"`
	Force bool      `json:"force,omitempty"`
}

// RecoverVolume brings a destroyed volume back.
type RecoverVolume struct {
	Name string `json:"name"`
}

// EradicateVolume forgets a destroyed volume; its blocks are deleted by
// the array afterwards.
type EradicateVolume struct {
	Name string `json:"name"`
}

// CreateHost adds a host.
type CreateHost struct {
	Host Host `json:"host"`
}

// SetHostAttr changes a host; nil fields are left alone.
type SetHostAttr struct {
	Name             string    `json:"name"`
	AddIQNs          []string  `json:"add_iqns,omitempty"`
	RemoveIQNs       []string  `json:"remove_iqns,omitempty"`
	CHAPUser         *string   `json:"chap_user,omitempty"`
	CHAPSecret       *string   `json:"chap_secret,omitempty"`
	TargetCHAPUser   *string   `json:"target_chap_user,omitempty"`
	TargetCHAPSecret *string   `json:"target_chap_secret,omitempty"`
	PreferredArrays  *[]string `json:"preferred_arrays,omitempty"`
}

// DeleteHost removes a host that has no connections.
type DeleteHost struct {
	Name string `json:"name"`
}

// CreateHostGroup adds a host group.
type CreateHostGroup struct {
	Name  string   `json:"name"`
	Hosts []string `json:"hosts,omitempty"`
}

// SetHostGroupAttr adds or removes member hosts.
type SetHostGroupAttr struct {
	Name        string   `json:"name"`
	AddHosts    []string `json:"add_hosts,omitempty"`
	RemoveHosts []string `json:"remove_hosts,omitempty"`
}

// DeleteHostGroup removes a host group that has no connections.
type DeleteHostGroup struct {
	Name string `json:"name"`
}

// Connect connects a volume to a host or host group. A nil LUN picks the
// lowest free one.
type Connect struct {
	Volume    string  `json:"volume"`
	Host      string  `json:"host,omitempty"`
	HostGroup string  `json:"host_group,omitempty"`
	LUN       *uint64 `json:"lun,omitempty"`
}

// Disconnect removes a connection.
type Disconnect struct {
	Volume    string `json:"volume"`
	Host      string `json:"host,omitempty"`
	HostGroup string `json:"host_group,omitempty"`
}

func (CreatePod) Kind() string        { return "create_pod" }
func (DestroyPod) Kind() string       { return "destroy_pod" }
func (SetPodAttr) Kind() string       { return "set_pod_attr" }
func (CreateVolume) Kind() string     { return "create_volume" }
func (ResizeVolume) Kind() string     { return "resize_volume" }
func (DestroyVolume) Kind() string    { return "destroy_volume" }
func (RecoverVolume) Kind() string    { return "recover_volume" }
func (EradicateVolume) Kind() string  { return "eradicate_volume" }
func (CreateHost) Kind() string       { return "create_host" }
func (SetHostAttr) Kind() string      { return "set_host_attr" }
func (DeleteHost) Kind() string       { return "delete_host" }
func (CreateHostGroup) Kind() string  { return "create_host_group" }
func (SetHostGroupAttr) Kind() string { return "set_host_group_attr" }
func (DeleteHostGroup) Kind() string  { return "delete_host_group" }
func (Connect) Kind() string          { return "connect" }
func (Disconnect) Kind() string       { return "disconnect" }

// MaxLUN is the highest LUN a connection may use.
const MaxLUN = 16383

func (o CreatePod) apply(s *State) error {
	if err := ValidName("pod", o.Name); err != nil {
		return err
	}
	if _, ok := s.Pods[o.Name]; ok {
		return fmt.Errorf("pod %s: %w", o.Name, ErrExists)
	}
	s.Pods[o.Name] = &Pod{Name: o.Name, ID: o.ID, Created: o.Created.UTC(),
		Arrays: []PodArray{o.Array}, Sequencer: o.Array.Name, Epoch: 1, AutoRecover: true}
	return nil
}

func (o DestroyPod) apply(s *State) error {
	if _, ok := s.Pods[o.Name]; !ok {
		return fmt.Errorf("pod %s: %w", o.Name, ErrNotFound)
	}
	if vols := s.PodVolumes(o.Name); len(vols) > 0 {
		return fmt.Errorf("pod %s still has %d volume(s) (%s): %w: destroy and eradicate them first", o.Name, len(vols), vols[0].Name, ErrConflict)
	}
	delete(s.Pods, o.Name)
	return nil
}

func (o SetPodAttr) apply(s *State) error {
	p, ok := s.Pods[o.Name]
	if !ok {
		return fmt.Errorf("pod %s: %w", o.Name, ErrNotFound)
	}
	if o.FailoverPreference != nil {
		if a := *o.FailoverPreference; a != "" && !p.HasArray(a) {
			names := make([]string, len(p.Arrays))
			for i, pa := range p.Arrays {
				names[i] = pa.Name
			}
			return fmt.Errorf("pod %s: failover preference %q: %w: it is not one of the pod's arrays (%s); name one of them, or \"\" for none",
				o.Name, a, ErrInvalid, strings.Join(names, ", "))
		}
		p.FailoverPreference = *o.FailoverPreference
	}
	if o.AutoRecover != nil {
		p.AutoRecover = *o.AutoRecover
	}
	return nil
}

// HasArray reports whether the pod lives on the array with the name.
func (p *Pod) HasArray(name string) bool {
	return slices.ContainsFunc(p.Arrays, func(pa PodArray) bool { return pa.Name == name })
}

func checkSize(size uint64) error {
	if size == 0 || size%4096 != 0 {
		return fmt.Errorf("size %d: %w: must be a positive multiple of 4K", size, ErrInvalid)
	}
	if size > 1<<50 {
		return fmt.Errorf("size %d: %w: at most 1P", size, ErrInvalid)
	}
	return nil
}

func (o CreateVolume) apply(s *State) error {
	pod, _, err := SplitVolumeName(o.Name)
	if err != nil {
		return err
	}
	if _, ok := s.Pods[pod]; !ok {
		return fmt.Errorf("volume %s: pod %s: %w: create it with 'metro pod create %s'", o.Name, pod, ErrNotFound, pod)
	}
	if v, ok := s.Volumes[o.Name]; ok {
		if v.Destroyed != nil {
			return fmt.Errorf("volume %s: %w (destroyed, pending eradication): recover or eradicate it first", o.Name, ErrExists)
		}
		return fmt.Errorf("volume %s: %w", o.Name, ErrExists)
	}
	if err := checkSize(o.Size); err != nil {
		return fmt.Errorf("volume %s: %w", o.Name, err)
	}
	if b, err := hex.DecodeString(o.UUID); err != nil || len(b) != 16 {
		return fmt.Errorf("volume %s: uuid %q: %w: 32 hex digits", o.Name, o.UUID, ErrInvalid)
	}
	for _, v := range s.Volumes {
		if v.UUID == o.UUID {
			return fmt.Errorf("volume %s: uuid %s: %w: volume %s has it", o.Name, o.UUID, ErrConflict, v.Name)
		}
	}
	s.Volumes[o.Name] = &Volume{Name: o.Name, Pod: pod, UUID: o.UUID, DataID: s.NextDataID,
		Size: o.Size, Created: o.Created.UTC()}
	s.NextDataID++
	return nil
}

func (s *State) liveVolume(name string) (*Volume, error) {
	v, ok := s.Volumes[name]
	if !ok {
		return nil, fmt.Errorf("volume %s: %w", name, ErrNotFound)
	}
	if v.Destroyed != nil {
		return nil, fmt.Errorf("volume %s is destroyed: %w: recover it first with 'metro vol recover %s'", name, ErrConflict, name)
	}
	return v, nil
}

func (o ResizeVolume) apply(s *State) error {
	v, err := s.liveVolume(o.Name)
	if err != nil {
		return err
	}
	if err := checkSize(o.Size); err != nil {
		return fmt.Errorf("volume %s: %w", o.Name, err)
	}
	if o.Size < v.Size {
		return fmt.Errorf("volume %s: %w: shrinking (from %d to %d bytes) is not supported", o.Name, ErrInvalid, v.Size, o.Size)
	}
	v.Size = o.Size
	return nil
}

func (o DestroyVolume) apply(s *State) error {
	v, err := s.liveVolume(o.Name)
	if err != nil {
		return err
	}
	if conns := s.ConnectionsOf(o.Name); len(conns) > 0 {
		if !o.Force {
			return fmt.Errorf("volume %s is connected to %d host(s) or group(s): %w: disconnect it first or use --force", o.Name, len(conns), ErrConflict)
		}
		s.Connections = slices.DeleteFunc(s.Connections, func(c Connection) bool { return c.Volume == o.Name })
	}
	at := o.At.UTC()
	v.Destroyed = &at
	return nil
}

func (o RecoverVolume) apply(s *State) error {
	v, ok := s.Volumes[o.Name]
	if !ok {
		return fmt.Errorf("volume %s: %w", o.Name, ErrNotFound)
	}
	if v.Destroyed == nil {
		return fmt.Errorf("volume %s is not destroyed: %w", o.Name, ErrConflict)
	}
	v.Destroyed = nil
	return nil
}

func (o EradicateVolume) apply(s *State) error {
	v, ok := s.Volumes[o.Name]
	if !ok {
		return fmt.Errorf("volume %s: %w", o.Name, ErrNotFound)
	}
	if v.Destroyed == nil {
		return fmt.Errorf("volume %s is not destroyed: %w: destroy it first", o.Name, ErrConflict)
	}
	delete(s.Volumes, o.Name)
	return nil
}

func (s *State) checkIQNsFree(host string, iqns []string) error {
	for _, q := range iqns {
		if err := ValidIQN(q); err != nil {
			return err
		}
		if h := s.HostByIQN(q); h != nil && h.Name != host {
			return fmt.Errorf("initiator %s already belongs to host %s: %w", q, h.Name, ErrConflict)
		}
	}
	return nil
}

func checkCHAP(user, secret, what string) error {
	if (user == "") != (secret == "") {
		return fmt.Errorf("%s: %w: give both a user and a secret, or neither", what, ErrInvalid)
	}
	if secret != "" && (len(secret) < 12 || len(secret) > 255) {
		return fmt.Errorf("%s secret: %w: must be 12 to 255 characters", what, ErrInvalid)
	}
	return nil
}

func (h *Host) validate() error {
	if err := checkCHAP(h.CHAPUser, h.CHAPSecret, "host CHAP"); err != nil {
		return err
	}
	if err := checkCHAP(h.TargetCHAPUser, h.TargetCHAPSecret, "target CHAP"); err != nil {
		return err
	}
	if h.TargetCHAPUser != "" && h.CHAPUser == "" {
		return fmt.Errorf("host %s: %w: mutual CHAP needs host CHAP credentials too", h.Name, ErrInvalid)
	}
	if h.CHAPSecret != "" && h.CHAPSecret == h.TargetCHAPSecret {
		return fmt.Errorf("host %s: %w: the target CHAP secret must differ from the host's", h.Name, ErrInvalid)
	}
	return nil
}

func (o CreateHost) apply(s *State) error {
	h := o.Host
	if err := ValidName("host", h.Name); err != nil {
		return err
	}
	if _, ok := s.Hosts[h.Name]; ok {
		return fmt.Errorf("host %s: %w", h.Name, ErrExists)
	}
	if _, ok := s.HostGroups[h.Name]; ok {
		return fmt.Errorf("host %s: %w: a host group has that name", h.Name, ErrExists)
	}
	if err := s.checkIQNsFree(h.Name, h.IQNs); err != nil {
		return err
	}
	h.IQNs = dedupe(h.IQNs)
	if err := h.validate(); err != nil {
		return err
	}
	s.Hosts[h.Name] = &h
	return nil
}

func (o SetHostAttr) apply(s *State) error {
	h, ok := s.Hosts[o.Name]
	if !ok {
		return fmt.Errorf("host %s: %w", o.Name, ErrNotFound)
	}
	if err := s.checkIQNsFree(h.Name, o.AddIQNs); err != nil {
		return err
	}
	for _, q := range o.RemoveIQNs {
		if !slices.Contains(h.IQNs, q) {
			return fmt.Errorf("host %s does not have initiator %s: %w", h.Name, q, ErrNotFound)
		}
	}
	h.IQNs = dedupe(append(slices.DeleteFunc(h.IQNs, func(q string) bool { return slices.Contains(o.RemoveIQNs, q) }), o.AddIQNs...))
	set := func(dst *string, src *string) {
		if src != nil {
			*dst = *src
		}
	}
	set(&h.CHAPUser, o.CHAPUser)
	set(&h.CHAPSecret, o.CHAPSecret)
	set(&h.TargetCHAPUser, o.TargetCHAPUser)
	set(&h.TargetCHAPSecret, o.TargetCHAPSecret)
	if o.PreferredArrays != nil {
		h.PreferredArrays = dedupe(*o.PreferredArrays)
	}
	return h.validate()
}

func (s *State) hasConnections(host, group string) bool {
	return slices.ContainsFunc(s.Connections, func(c Connection) bool {
		return (host != "" && c.Host == host) || (group != "" && c.HostGroup == group)
	})
}

func (o DeleteHost) apply(s *State) error {
	if _, ok := s.Hosts[o.Name]; !ok {
		return fmt.Errorf("host %s: %w", o.Name, ErrNotFound)
	}
	if s.hasConnections(o.Name, "") {
		return fmt.Errorf("host %s has connections: %w: disconnect its volumes first", o.Name, ErrConflict)
	}
	for _, g := range s.HostGroups {
		g.Hosts = slices.DeleteFunc(g.Hosts, func(h string) bool { return h == o.Name })
	}
	delete(s.Hosts, o.Name)
	return nil
}

func (o CreateHostGroup) apply(s *State) error {
	if err := ValidName("host group", o.Name); err != nil {
		return err
	}
	if _, ok := s.HostGroups[o.Name]; ok {
		return fmt.Errorf("host group %s: %w", o.Name, ErrExists)
	}
	if _, ok := s.Hosts[o.Name]; ok {
		return fmt.Errorf("host group %s: %w: a host has that name", o.Name, ErrExists)
	}
	g := &HostGroup{Name: o.Name}
	s.HostGroups[o.Name] = g
	return SetHostGroupAttr{Name: o.Name, AddHosts: o.Hosts}.apply(s)
}

func (o SetHostGroupAttr) apply(s *State) error {
	g, ok := s.HostGroups[o.Name]
	if !ok {
		return fmt.Errorf("host group %s: %w", o.Name, ErrNotFound)
	}
	for _, h := range o.AddHosts {
		if _, ok := s.Hosts[h]; !ok {
			return fmt.Errorf("host %s: %w", h, ErrNotFound)
		}
	}
	for _, h := range o.RemoveHosts {
		if !slices.Contains(g.Hosts, h) {
			return fmt.Errorf("host %s is not in group %s: %w", h, g.Name, ErrNotFound)
		}
	}
	g.Hosts = dedupe(append(slices.DeleteFunc(g.Hosts, func(h string) bool { return slices.Contains(o.RemoveHosts, h) }), o.AddHosts...))
	// Every member must still see each LUN at most once.
	members := map[string]bool{}
	for _, h := range g.Hosts {
		members[h] = true
	}
	if err := s.checkLUNClashesOf(members); err != nil {
		return fmt.Errorf("host group %s: %w", g.Name, err)
	}
	return nil
}

func (o DeleteHostGroup) apply(s *State) error {
	if _, ok := s.HostGroups[o.Name]; !ok {
		return fmt.Errorf("host group %s: %w", o.Name, ErrNotFound)
	}
	if s.hasConnections("", o.Name) {
		return fmt.Errorf("host group %s has connections: %w: disconnect its volumes first", o.Name, ErrConflict)
	}
	delete(s.HostGroups, o.Name)
	return nil
}

// hostsOf returns the hosts a connection target reaches.
func (s *State) hostsOf(host, group string) []string {
	if host != "" {
		return []string{host}
	}
	if g := s.HostGroups[group]; g != nil {
		return g.Hosts
	}
	return nil
}

// usedLUNs returns the LUNs a host sees (own and group connections).
func (s *State) usedLUNs(host string) map[uint64]string {
	groups := s.HostGroupsOf(host)
	out := map[uint64]string{}
	for _, c := range s.Connections {
		if c.Host == host || contains(groups, c.HostGroup) {
			out[c.LUN] = c.Volume
		}
	}
	return out
}

func (s *State) checkLUNClashes(host string) error {
	groups := s.HostGroupsOf(host)
	seen := map[uint64]string{}
	vols := map[string]bool{}
	for _, c := range s.Connections {
		if c.Host != host && !contains(groups, c.HostGroup) {
			continue
		}
		if v, ok := seen[c.LUN]; ok && v != c.Volume {
			return fmt.Errorf("host %s would see LUN %d twice (%s and %s): %w", host, c.LUN, v, c.Volume, ErrConflict)
		}
		if vols[c.Volume] && seen[c.LUN] != c.Volume {
			return fmt.Errorf("host %s would see volume %s at two LUNs: %w", host, c.Volume, ErrConflict)
		}
		seen[c.LUN] = c.Volume
		vols[c.Volume] = true
	}
	return nil
}

func (o Connect) apply(s *State) error {
	if (o.Host == "") == (o.HostGroup == "") {
		return fmt.Errorf("connect %s: %w: name a host or a host group", o.Volume, ErrInvalid)
	}
	if _, err := s.liveVolume(o.Volume); err != nil {
		return err
	}
	if o.Host != "" {
		if _, ok := s.Hosts[o.Host]; !ok {
			return fmt.Errorf("host %s: %w", o.Host, ErrNotFound)
		}
	} else if _, ok := s.HostGroups[o.HostGroup]; !ok {
		return fmt.Errorf("host group %s: %w", o.HostGroup, ErrNotFound)
	}
	for _, c := range s.Connections {
		if c.Volume == o.Volume && c.Host == o.Host && c.HostGroup == o.HostGroup {
			return fmt.Errorf("volume %s is already connected there at LUN %d: %w", o.Volume, c.LUN, ErrExists)
		}
	}
	hosts := s.hostsOf(o.Host, o.HostGroup)
	var lun uint64
	if o.LUN != nil {
		lun = *o.LUN
		if lun > MaxLUN {
			return fmt.Errorf("LUN %d: %w: at most %d", lun, ErrInvalid, MaxLUN)
		}
	} else {
		used := map[uint64]bool{}
		for _, h := range hosts {
			for l := range s.usedLUNs(h) {
				used[l] = true
			}
		}
		for used[lun] {
			lun++
		}
		if lun > MaxLUN {
			return fmt.Errorf("connect %s: %w: no free LUN", o.Volume, ErrConflict)
		}
	}
	s.Connections = append(s.Connections, Connection{Volume: o.Volume, Host: o.Host, HostGroup: o.HostGroup, LUN: lun})
	sortConnections(s.Connections)
	for _, h := range hosts {
		if err := s.checkLUNClashes(h); err != nil {
			return err
		}
	}
	return nil
}

func (o Disconnect) apply(s *State) error {
	n := len(s.Connections)
	s.Connections = slices.DeleteFunc(s.Connections, func(c Connection) bool {
		return c.Volume == o.Volume && c.Host == o.Host && c.HostGroup == o.HostGroup
	})
	if len(s.Connections) == n {
		return fmt.Errorf("volume %s is not connected to %s%s: %w", o.Volume, o.Host, o.HostGroup, ErrNotFound)
	}
	return nil
}

func sortConnections(cs []Connection) {
	sort.Slice(cs, func(i, j int) bool {
		a, b := cs[i], cs[j]
		if a.Volume != b.Volume {
			return a.Volume < b.Volume
		}
		if a.Host != b.Host {
			return a.Host < b.Host
		}
		return a.HostGroup < b.HostGroup
	})
}

func dedupe(in []string) []string {
	out := []string{}
	seen := make(map[string]bool, len(in))
	for _, s := range in {
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	return out
}

// envelope is an op's serialised form.
type envelope struct {
	Kind string          `json:"kind"`
	Op   json.RawMessage `json:"op"`
}

// MarshalOp serialises an op with its kind.
func MarshalOp(op Op) ([]byte, error) {
	b, err := json.Marshal(op)
	if err != nil {
		return nil, err
	}
	return json.Marshal(envelope{Kind: op.Kind(), Op: b})
}

// UnmarshalOp reads an op serialised by MarshalOp.
func UnmarshalOp(data []byte) (Op, error) {
	var e envelope
	if err := json.Unmarshal(data, &e); err != nil {
		return nil, fmt.Errorf("op: %w", err)
	}
	newOp, ok := opKinds[e.Kind]
	if !ok {
		return nil, fmt.Errorf("op kind %q: %w", e.Kind, ErrInvalid)
	}
	op := newOp()
	if err := json.Unmarshal(e.Op, op); err != nil {
		return nil, fmt.Errorf("op %s: %w", e.Kind, err)
	}
	return op, nil
}

// opKinds makes an empty op (a pointer, whose method set includes the
// value methods) for each kind.
var opKinds = map[string]func() Op{
	"create_pod":          func() Op { return &CreatePod{} },
	"destroy_pod":         func() Op { return &DestroyPod{} },
	"set_pod_attr":        func() Op { return &SetPodAttr{} },
	"create_volume":       func() Op { return &CreateVolume{} },
	"resize_volume":       func() Op { return &ResizeVolume{} },
	"destroy_volume":      func() Op { return &DestroyVolume{} },
	"recover_volume":      func() Op { return &RecoverVolume{} },
	"eradicate_volume":    func() Op { return &EradicateVolume{} },
	"create_host":         func() Op { return &CreateHost{} },
	"set_host_attr":       func() Op { return &SetHostAttr{} },
	"delete_host":         func() Op { return &DeleteHost{} },
	"create_host_group":   func() Op { return &CreateHostGroup{} },
	"set_host_group_attr": func() Op { return &SetHostGroupAttr{} },
	"delete_host_group":   func() Op { return &DeleteHostGroup{} },
	"connect":             func() Op { return &Connect{} },
	"disconnect":          func() Op { return &Disconnect{} },
	"set_pod_membership":  func() Op { return &SetPodMembership{} },
	"install_pod":         func() Op { return &InstallPod{} },
	"set_pod_pending":     func() Op { return &SetPodPending{} },
	"eradicate_pod":       func() Op { return &EradicatePod{} },
	"with_hosts":          func() Op { return &WithHosts{} },
}
