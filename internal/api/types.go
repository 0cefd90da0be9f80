// Package api is the array's management REST API: JSON over HTTPS with
// bearer tokens, versioned paths under /api/v1, an OpenAPI description at
// /api/v1/openapi.json, and the Go client the CLI is built on.
//
// Errors are JSON {"error": "..."} with a 4xx status that says what was
// wrong: 400 bad input, 401 missing or wrong token, 404 no such object,
// 409 conflict with the current configuration.
package api

import "time"

// Version is the path prefix of this API version.
const Version = "/api/v1"

// Error is the body of every error response.
type Error struct {
	Error string `json:"error"`
}

// ArrayInfo describes one array.
type ArrayInfo struct {
	Name      string   `json:"name"`
	ID        string   `json:"id"`
	Version   string   `json:"version"`
	Target    string   `json:"target"`
	Portals   []string `json:"portals"`
	API       string   `json:"api,omitempty"`
	TPG       uint16   `json:"target_port_group"`
	PortID    uint16   `json:"relative_port_id"`
	Capacity  uint64   `json:"capacity"`
	Used      uint64   `json:"used"`
	Provision uint64   `json:"provisioned"`
	// Status is "connected" for the array answering, and the link state
	// for a peer.
	Status string    `json:"status"`
	Time   time.Time `json:"time"`
	// RTTMillis is the link's measured round trip (peers).
	RTTMillis float64 `json:"rtt_ms,omitempty"`
	// Peer names the paired array (the array answering).
	Peer string `json:"peer,omitempty"`
	// Link counts the bytes this array sent over the replication link
	// since it started (the array answering, when paired).
	Link *LinkTraffic `json:"link,omitempty"`
	// Mediator is the mediator as this array sees it.
	Mediator *MediatorInfo `json:"mediator,omitempty"`
}

// LinkTraffic counts replication bytes sent, by kind.
type LinkTraffic struct {
	// Baseline is block data sent by baseline and resync copies.
	Baseline int64 `json:"baseline_bytes"`
	// Mirror is host write data the sequencer sent to the follower.
	Mirror int64 `json:"mirror_bytes"`
	// Forward is host write data the follower sent to the sequencer.
	Forward int64 `json:"forward_bytes"`
}

// PodArray is one array of a pod with the pod's status there, as seen by
// the array answering (online, paused, resyncing, offline, unknown).
type PodArray struct {
	Name   string `json:"name"`
	ID     string `json:"id"`
	Status string `json:"status"`
}

// Pod describes a pod. FailoverPreference is the array that keeps the
// pod online when the link between its arrays fails ("" for none);
// AutoRecover, whether after a failover the array that stopped serving
// resyncs and returns to in sync by itself once the link is back.
type Pod struct {
	Name               string     `json:"name"`
	ID                 string     `json:"id"`
	Created            time.Time  `json:"created"`
	Arrays             []PodArray `json:"arrays"`
	Sequencer          string     `json:"sequencer"`
	Epoch              uint64     `json:"epoch"`
	FailoverPreference string     `json:"failover_preference"`
	AutoRecover        bool       `json:"auto_recover"`
	Volumes            int        `json:"volumes"`
	Provisioned        uint64     `json:"provisioned"`
	Used               uint64     `json:"used"`
	// Pending is when this array's copy was set aside (pending
	// eradication), nil for a live pod.
	Pending *time.Time `json:"pending,omitempty"`
	// Replication is the copy progress of a stretched pod.
	Replication *PodReplication `json:"replication,omitempty"`
}

// PodCreate is the body of POST /pods.
type PodCreate struct {
	Name string `json:"name"`
}

// PodUpdate is the body of PATCH /pods/{name}.
type PodUpdate struct {
	// FailoverPreference names one of the pod's arrays, or "" for none.
	FailoverPreference *string `json:"failover_preference,omitempty"`
	AutoRecover        *bool   `json:"auto_recover,omitempty"`
}

// VolumeConnection is one connection of a volume.
type VolumeConnection struct {
	Host      string `json:"host,omitempty"`
	HostGroup string `json:"host_group,omitempty"`
	LUN       uint64 `json:"lun"`
}

// Volume describes a volume.
type Volume struct {
	Name        string             `json:"name"`
	Pod         string             `json:"pod"`
	UUID        string             `json:"uuid"`
	Serial      string             `json:"serial"`
	Size        uint64             `json:"size"`
	Used        uint64             `json:"used"`
	Created     time.Time          `json:"created"`
	Destroyed   *time.Time         `json:"destroyed,omitempty"`
	EradicateAt *time.Time         `json:"eradicate_at,omitempty"`
	Connections []VolumeConnection `json:"connections"`
}

// VolumeCreate is the body of POST /volumes.
type VolumeCreate struct {
	Name string `json:"name"`
	Size uint64 `json:"size"`
}

// VolumeUpdate is the body of PATCH /volumes/{name} (resize).
type VolumeUpdate struct {
	Size uint64 `json:"size"`
}

// Host describes a host. CHAP secrets are never returned: a CHAP user is
// set only together with its secret, so CHAPUser (TargetCHAPUser) not
// empty is what says that the host must log in with CHAP (mutual CHAP).
type Host struct {
	Name            string           `json:"name"`
	IQNs            []string         `json:"iqns"`
	CHAPUser        string           `json:"chap_user,omitempty"`
	TargetCHAPUser  string           `json:"target_chap_user,omitempty"`
	PreferredArrays []string         `json:"preferred_arrays"`
	HostGroups      []string         `json:"host_groups"`
	Connections     []HostConnection `json:"connections"`
	Sessions        int              `json:"sessions"`
}

// HostConnection is a volume a host sees.
type HostConnection struct {
	Volume    string `json:"volume"`
	LUN       uint64 `json:"lun"`
	HostGroup string `json:"host_group,omitempty"`
}

// HostCreate is the body of POST /hosts.
type HostCreate struct {
	Name             string   `json:"name"`
	IQNs             []string `json:"iqns"`
	CHAPUser         string   `json:"chap_user,omitempty"`
	CHAPSecret       string   `json:"chap_secret,omitempty"`
	TargetCHAPUser   string   `json:"target_chap_user,omitempty"`
	TargetCHAPSecret string   `json:"target_chap_secret,omitempty"`
	PreferredArrays  []string `json:"preferred_arrays,omitempty"`
}

// HostUpdate is the body of PATCH /hosts/{name}; absent fields stay.
type HostUpdate struct {
	AddIQNs          []string  `json:"add_iqns,omitempty"`
	RemoveIQNs       []string  `json:"remove_iqns,omitempty"`
	CHAPUser         *string   `json:"chap_user,omitempty"`
	CHAPSecret       *string   `json:"chap_secret,omitempty"`
	TargetCHAPUser   *string   `json:"target_chap_user,omitempty"`
	TargetCHAPSecret *string   `json:"target_chap_secret,omitempty"`
	PreferredArrays  *[]string `json:"preferred_arrays,omitempty"`
}

// HostGroup describes a host group.
type HostGroup struct {
	Name        string           `json:"name"`
	Hosts       []string         `json:"hosts"`
	Connections []HostConnection `json:"connections"`
}

// HostGroupCreate is the body of POST /hgroups.
type HostGroupCreate struct {
	Name  string   `json:"name"`
	Hosts []string `json:"hosts,omitempty"`
}

// HostGroupUpdate is the body of PATCH /hgroups/{name}.
type HostGroupUpdate struct {
	AddHosts    []string `json:"add_hosts,omitempty"`
	RemoveHosts []string `json:"remove_hosts,omitempty"`
}

// Connection is a volume connected to a host or host group.
type Connection struct {
	Volume    string  `json:"volume"`
	Host      string  `json:"host,omitempty"`
	HostGroup string  `json:"host_group,omitempty"`
	LUN       *uint64 `json:"lun,omitempty"`
}

// Session is a logged-in iSCSI session.
type Session struct {
	Initiator string `json:"initiator"`
	Host      string `json:"host,omitempty"`
	ISID      string `json:"isid"`
	TSIH      uint16 `json:"tsih"`
	Target    string `json:"target"`
	Remote    string `json:"remote"`
	Digests   string `json:"digests,omitempty"`
}
