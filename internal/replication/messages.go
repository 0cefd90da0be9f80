package replication

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/metro-storage/metro/internal/catalog"
	"github.com/metro-storage/metro/internal/pod"
	"github.com/metro-storage/metro/internal/scsi"
)

// Message types on the link. Every pod message carries the pod's epoch in
// the link header; a message of another epoch is refused.
const (
	// msgHello (both ways, at session start): the sender's pods.
	msgHello uint16 = iota + 1
	// msgWrite (sequencer → follower): apply a write, with its data or a
	// reference to data the follower forwarded.
	msgWrite
	// msgUnmap (sequencer → follower): deallocate a range.
	msgUnmap
	// msgForward (follower → sequencer): an ordered SCSI command a host
	// sent to the follower.
	msgForward
	// msgReservations (sequencer → follower): a unit's new reservation
	// state.
	msgReservations
	// msgReset (either way): a reset happened on the sender.
	msgReset
	// msgResync (sequencer → follower): receive a fresh copy of the pod
	// at the message's epoch; carries the pod's configuration.
	msgResync
	// msgBaseline (sequencer → follower): copied blocks, and which of
	// them are damaged on the sequencer (writeMsg.Damaged).
	msgBaseline
	// msgGrant (sequencer → follower): the copy is complete; serve.
	msgGrant
	// msgConfig (either way, to the sequencer): order and apply a
	// configuration change.
	msgConfig
	// msgApplyConfig (sequencer → follower): apply an ordered change.
	msgApplyConfig
	// msgCheckStretch (sequencer → follower): could the pod be stretched
	// here?
	msgCheckStretch
	// msgUnstretch (sequencer → follower): the pod no longer lives here.
	msgUnstretch
	// msgStretch is retired and refused: it asked the receiver to stretch
	// one of its pods to the sender. A pod is stretched only when an
	// administrator asks the array that holds it (Stretch).
	msgStretch
	// msgCheckpoint (sequencer → follower): make the copy durable up to a
	// position and record it (a resumable cursor).
	msgCheckpoint
	// msgWritten (sequencer → follower): the sequencer's copy holds a
	// write of data the follower forwarded (writtenMsg).
	msgWritten
	// msgRepair (follower → sequencer): the follower's copy of a range
	// (writeMsg without data) is damaged: rewrite it from the
	// sequencer's through the order and answer with the data.
	msgRepair
	// msgPeerRead (sequencer → follower): answer with the follower's
	// copy of a range (writeMsg without data), which the sequencer's
	// copy has damaged.
	msgPeerRead
	// msgPodState (either way): the receiver's record of a pod
	// (podStateMsg), asked when a pod's runtime has a new session.
	msgPodState
	// msgPreElect (sequencer → follower): hold this pre-election
	// (grantMsg's Pre), durably, at the message's epoch.
	msgPreElect
	// msgHandover (old sequencer → the other array): the sender gave the
	// pod up; the receiver owns it alone from the message's epoch.
	msgHandover
	// msgStatus (either way): the sender's view of the mediator
	// (statusMsg).
	msgStatus
	// msgAnswered (either way): the sender gave the host GOOD for its
	// forwarded request, once the command ended, or for a command it
	// ran as the sequencer (writtenMsg's Ref, Length 0), whose outcome
	// the receiver then forgets; Length 1: that command ended otherwise
	// (the host got no GOOD), and the receiver answers the host's retry
	// with the outcome at once (outcome.go).
	msgAnswered
)

// errShort is returned for a truncated binary message.
var errShort = errors.New("replication: short message")

// enc builds a binary message.
type enc struct{ b []byte }

func (e *enc) u8(v uint8)   { e.b = append(e.b, v) }
func (e *enc) u16(v uint16) { e.b = binary.BigEndian.AppendUint16(e.b, v) }
func (e *enc) u32(v uint32) { e.b = binary.BigEndian.AppendUint32(e.b, v) }
func (e *enc) u64(v uint64) { e.b = binary.BigEndian.AppendUint64(e.b, v) }
func (e *enc) bytes(p []byte) {
	e.u32(uint32(len(p)))
	e.b = append(e.b, p...)
}
func (e *enc) str(s string) { e.bytes([]byte(s)) }

// dec reads a binary message; the first error sticks.
type dec struct {
	b   []byte
	err error
}

func (d *dec) take(n int) []byte {
	if d.err != nil {
		return nil
	}
	if n < 0 || len(d.b) < n {
		d.err = errShort
		return nil
	}
	p := d.b[:n:n]
	d.b = d.b[n:]
	return p
}

func (d *dec) u8() uint8 {
	if p := d.take(1); p != nil {
		return p[0]
	}
	return 0
}

func (d *dec) u16() uint16 {
	if p := d.take(2); p != nil {
		return binary.BigEndian.Uint16(p)
	}
	return 0
}

func (d *dec) u32() uint32 {
	if p := d.take(4); p != nil {
		return binary.BigEndian.Uint32(p)
	}
	return 0
}

func (d *dec) u64() uint64 {
	if p := d.take(8); p != nil {
		return binary.BigEndian.Uint64(p)
	}
	return 0
}

func (d *dec) bytes() []byte {
	n := d.u32()
	if d.err != nil {
		return nil
	}
	if uint64(n) > uint64(len(d.b)) {
		d.err = errShort
		return nil
	}
	return d.take(int(n))
}

func (d *dec) str() string { return string(d.bytes()) }

// writeMsg is a msgWrite or msgUnmap.
type writeMsg struct {
	Pod    string
	Volume string // UUID
	Off    uint64
	// Length is the byte count (unmap, or a reference).
	Length uint64
	// Ref names data the follower forwarded (its request id), 0 when the
	// data travels in Data; RefOff is the data's offset in that request.
	Ref    uint64
	RefOff uint64
	Data   []byte
	// Damaged lists the blocks of a copy (msgBaseline) that are damaged
	// on the sender: their bytes in Data are zeros, and the receiver
	// records them as damaged (protocol version 3).
	Damaged []extent
	// OwnID names a COMPARE AND WRITE the sender, the pod's sequencer,
	// ran for a host of its own, whose write this is (0: none; its id
	// among the sender's requests); Own is its scsi.Identity as JSON.
	// The receiver remembers its outcome with the write (outcome.go).
	// Both are absent from the messages of a sender that has none.
	OwnID uint64
	Own   []byte
}

// extent is a byte range of a volume.
type extent struct {
	Off, Length uint64
}

// extentLen is the encoded size of an extent.
const extentLen = 16

func (m *writeMsg) encode() []byte {
	e := enc{b: make([]byte, 0, 68+len(m.Pod)+len(m.Data)+extentLen*len(m.Damaged))}
	e.str(m.Pod)
	e.str(m.Volume)
	e.u64(m.Off)
	e.u64(m.Length)
	e.u64(m.Ref)
	e.u64(m.RefOff)
	e.bytes(m.Data)
	e.u32(uint32(len(m.Damaged)))
	for _, x := range m.Damaged {
		e.u64(x.Off)
		e.u64(x.Length)
	}
	if m.OwnID != 0 {
		e.u64(m.OwnID)
		e.bytes(m.Own)
	}
	return e.b
}

func decodeWrite(p []byte) (*writeMsg, error) {
	d := dec{b: p}
	m := &writeMsg{Pod: d.str(), Volume: d.str(), Off: d.u64(), Length: d.u64(), Ref: d.u64(), RefOff: d.u64(), Data: d.bytes()}
	n := d.u32()
	if d.err == nil && uint64(n)*extentLen > uint64(len(d.b)) {
		d.err = errShort
	}
	if d.err == nil && n > 0 {
		m.Damaged = make([]extent, n)
		for i := range m.Damaged {
			m.Damaged[i] = extent{Off: d.u64(), Length: d.u64()}
		}
	}
	if d.err == nil && len(d.b) > 0 {
		m.OwnID, m.Own = d.u64(), d.bytes()
	}
	if d.err != nil {
		return nil, fmt.Errorf("write message: %w", d.err)
	}
	return m, nil
}

// writtenMsg is a msgWritten: Length bytes of the data-out of the
// follower's forwarded request Ref are durable on the sequencer.
type writtenMsg struct {
	Pod    string
	Ref    uint64
	Length uint64
}

func (m *writtenMsg) encode() []byte {
	e := enc{b: make([]byte, 0, 24+len(m.Pod))}
	e.str(m.Pod)
	e.u64(m.Ref)
	e.u64(m.Length)
	return e.b
}

func decodeWritten(p []byte) (*writtenMsg, error) {
	d := dec{b: p}
	m := &writtenMsg{Pod: d.str(), Ref: d.u64(), Length: d.u64()}
	if d.err != nil {
		return nil, fmt.Errorf("written message: %w", d.err)
	}
	return m, nil
}

// forwardMsg is a msgForward.
type forwardMsg struct {
	Pod    string
	Volume string
	ID     uint64
	Cmd    scsi.Command
}

func (m *forwardMsg) encode() []byte {
	c := &m.Cmd
	e := enc{b: make([]byte, 0, 128+len(c.CDB)+len(c.DataOut))}
	e.str(m.Pod)
	e.str(m.Volume)
	e.u64(m.ID)
	e.str(c.Nexus.InitiatorName)
	e.str(c.Nexus.InitiatorPort)
	e.str(c.Nexus.TargetPort)
	e.u16(c.Nexus.RelativePortID)
	e.u64(c.LUN)
	e.u32(c.Tag)
	e.u8(uint8(c.Attr))
	e.u32(c.ExpectedDataIn)
	e.bytes(c.CDB)
	e.bytes(c.DataOut)
	return e.b
}

func decodeForward(p []byte) (*forwardMsg, error) {
	d := dec{b: p}
	m := &forwardMsg{Pod: d.str(), Volume: d.str(), ID: d.u64()}
	c := &m.Cmd
	c.Nexus.InitiatorName = d.str()
	c.Nexus.InitiatorPort = d.str()
	c.Nexus.TargetPort = d.str()
	c.Nexus.RelativePortID = d.u16()
	c.LUN = d.u64()
	c.Tag = d.u32()
	c.Attr = scsi.TaskAttr(d.u8())
	c.ExpectedDataIn = d.u32()
	c.CDB = d.bytes()
	c.DataOut = d.bytes()
	if d.err != nil {
		return nil, fmt.Errorf("forward message: %w", d.err)
	}
	return m, nil
}

func encodeResult(r *scsi.Result) []byte {
	e := enc{b: make([]byte, 0, 32+len(r.Sense)+len(r.Data))}
	e.u8(uint8(r.Status))
	if r.Aborted {
		e.u8(1)
	} else {
		e.u8(0)
	}
	e.bytes(r.Sense)
	e.bytes(r.Data)
	return e.b
}

func decodeResult(p []byte) (*scsi.Result, error) {
	d := dec{b: p}
	r := &scsi.Result{Status: scsi.Status(d.u8()), Aborted: d.u8() != 0, Sense: d.bytes(), Data: d.bytes()}
	if d.err != nil {
		return nil, fmt.Errorf("forward result: %w", d.err)
	}
	if len(r.Sense) == 0 {
		r.Sense = nil
	}
	if len(r.Data) == 0 {
		r.Data = nil
	}
	return r, nil
}

// Control messages are JSON.

// helloMsg lists the sender's stretched pods (the link's own hello
// carries the protocol version).
type helloMsg struct {
	Name string     `json:"name"`
	ID   string     `json:"id"`
	Pods []helloPod `json:"pods"`
}

// helloPod is one stretched pod of the sender.
type helloPod struct {
	Pod       string `json:"pod"`
	ID        string `json:"id"`
	Epoch     uint64 `json:"epoch"`
	Sequencer string `json:"sequencer"`
}

type reservationsMsg struct {
	Pod    string                 `json:"pod"`
	Volume string                 `json:"volume"`
	Update scsi.ReservationUpdate `json:"update"`
	// Origin is the receiver's forwarded request that made the change
	// (0: none), whose outcome it remembers with it (outcome.go).
	Origin uint64 `json:"origin,omitempty"`
	// OwnID names a PERSISTENT RESERVE OUT the sender, the pod's
	// sequencer, ran for a host of its own, which made the change (0:
	// none; its id among the sender's requests); Own is its identity.
	// The receiver remembers its outcome with the state (outcome.go).
	OwnID uint64         `json:"own_id,omitempty"`
	Own   *scsi.Identity `json:"own,omitempty"`
}

type resetMsg struct {
	Pod      string `json:"pod"`
	Volume   string `json:"volume"`
	LUNReset bool   `json:"lun_reset"`
}

type resyncMsg struct {
	Config catalog.PodConfig `json:"config"`
	// ResumeFrom is the epoch of the follower's earlier copy the
	// sequencer can resume (0: start from nothing).
	ResumeFrom uint64 `json:"resume_from,omitempty"`
}

// grantMsg is a msgGrant or a msgPreElect: Pre is the pod's pre-elected
// array ("" none).
type grantMsg struct {
	Pod string `json:"pod"`
	Pre string `json:"pre,omitempty"`
}

// podStateMsg asks for (Pod, ID) or answers with the sender's record of
// a pod: Has is false when it has no copy of it at all, or has made it
// local.
type podStateMsg struct {
	Pod    string     `json:"pod"`
	ID     string     `json:"id"`
	Has    bool       `json:"has,omitempty"`
	Record pod.Record `json:"record"`
	// Mediator is the sender's view of the mediator (an answer), so the
	// asker knows it before it proposes a copy whose grant carries the
	// pre-election.
	Mediator bool `json:"mediator,omitempty"`
	// Notice: the sender tells its record after a change, for display
	// (metro pod list); the receiver's protocol ignores it.
	Notice bool `json:"notice,omitempty"`
}

// statusMsg is a msgStatus.
type statusMsg struct {
	Mediator bool `json:"mediator"`
	// State, RTTMicros, Generation and Err are the sender's view of the
	// mediator in full, for display (metro array list); an older peer
	// sends Mediator only.
	State      string `json:"state,omitempty"`
	RTTMicros  int64  `json:"rtt_us,omitempty"`
	Generation uint64 `json:"generation,omitempty"`
	Err        string `json:"err,omitempty"`
}

type configMsg struct {
	Pod string          `json:"pod,omitempty"`
	Op  json.RawMessage `json:"op"`
	// Hosts are the sender's hosts the change names (hostsNamed), which
	// the sequencer creates with the change if it lacks them.
	Hosts []catalog.Host `json:"hosts,omitempty"`
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(fmt.Sprintf("replication: encode %T: %v", v, err))
	}
	return b
}
