package pod

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/cockroachdb/datadriven"
)

// start is the fake clock's origin; transcripts give times as offsets
// from it (t=1500ms).
var start = time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)

// TestTranscripts runs the scripts in testdata/. Each directive is one
// event fed to the machine of array a (its peer is b); its output is the
// actions returned, in order, then what a driver can observe of the
// machine. Rewrite with -rewrite, then review the diff: the outputs are
// the contract.
//
// Directives (t=D moves the fake clock to start+D first; it never goes
// back):
//
//	new epoch=N seq=a|b synced=N [alone] [pre=a|b] [left] [single] [rectimeout=D] [pref=a|b] [timeout=D] [headstart=D]
//	    a machine restarted with that record and failover preference
//	    (timeout 1s, head start 1s)
//	link-up [hello=none|(N,a|b,N[,left])] | link-down [heard=D] [lease=D] | tick | lease-expired
//	    hello: the peer's record follows the link up (none: it has no copy);
//	    lease: this array's lease on the lost session (default heard plus
//	    four fifths of the timeout)
//	mediator up=B | peer-mediator up=B | preference array=a|b|none | auto-recover on=B
//	peer-record epoch=N seq=a|b synced=N [left] | peer-record none
//	persisted | persist-failed          the persist in flight
//	elected epoch=N won=B new=N winner=a|b | elect-failed epoch=N | elect-unsent epoch=N
//	resync-started epoch=N | resync-failed epoch=N peer=N | baseline-done epoch=N
//	peer-in-sync epoch=N | grant-failed epoch=N
//	pre-elected epoch=N pre=a|b|none | pre-elect-failed epoch=N
//	handover | remove-peer | peer-left epoch=N | remove-failed epoch=N
//	resync-requested epoch=N | receive-accepted epoch=N | grant-requested epoch=N pre=a|b|none
//	pre-elect-requested epoch=N pre=a|b|none | handover-requested epoch=N | remove-requested epoch=N
//	serves lease=D       whether reads are served at now with that lease
//	accepts epoch=N      whether a message of that epoch is applied
func TestTranscripts(t *testing.T) {
	datadriven.Walk(t, "testdata", func(t *testing.T, path string) {
		h := &transcript{now: start}
		datadriven.RunTest(t, path, h.run)
	})
}

type transcript struct {
	m   *Machine
	now time.Time
	// pending is the id of the persist in flight.
	pending uint64
}

func (h *transcript) run(t *testing.T, d *datadriven.TestData) string {
	if d.HasArg("t") {
		at := start.Add(h.duration(t, d, "t"))
		if at.Before(h.now) {
			d.Fatalf(t, "t=%s goes back in time (now %s)", at.Sub(start), h.now.Sub(start))
		}
		h.now = at
	}
	if d.Cmd == "new" {
		return h.create(t, d)
	}
	if h.m == nil {
		d.Fatalf(t, "%s before new", d.Cmd)
	}
	m, now := h.m, h.now
	epoch := func(key string) uint64 {
		var e uint64
		d.ScanArgs(t, key, &e)
		return e
	}
	flag := func(key string) bool {
		var b bool
		d.ScanArgs(t, key, &b)
		return b
	}
	var acts []Action
	var err error
	switch d.Cmd {
	case "link-up":
		acts = m.LinkUp(now)
		if d.HasArg("hello") {
			acts = append(acts, h.hello(t, d)...)
		}
	case "link-down":
		heard := now
		if d.HasArg("heard") {
			heard = start.Add(h.duration(t, d, "heard"))
		}
		lease := heard.Add(m.cfg.Timeout - m.cfg.Timeout/5)
		if d.HasArg("lease") {
			lease = start.Add(h.duration(t, d, "lease"))
		}
		acts = m.LinkDown(now, heard, lease)
	case "tick":
		acts = m.Tick(now)
	case "lease-expired":
		acts = m.LeaseExpired()
	case "mediator":
		acts = m.MediatorUp(flag("up"), now)
	case "peer-mediator":
		acts = m.PeerMediatorUp(flag("up"))
	case "preference":
		acts = m.SetPreference(array(t, d, "array"))
	case "auto-recover":
		acts = m.SetAutoRecover(flag("on"), now)
	case "peer-record":
		if d.HasArg("none") {
			acts = m.PeerRecord(Record{}, false, now)
		} else {
			acts = m.PeerRecord(h.record(t, d), true, now)
		}
	case "persisted":
		acts = m.Persisted(h.pending, now)
	case "persist-failed":
		acts = m.PersistFailed(h.pending, now)
	case "elected":
		acts = m.Elected(epoch("epoch"), ElectResult{Won: flag("won"), Epoch: epoch("new"), Winner: array(t, d, "winner")}, now)
	case "elect-failed":
		acts = m.ElectFailed(epoch("epoch"), now)
	case "elect-unsent":
		acts = m.ElectUnsent(epoch("epoch"), now)
	case "resync-started":
		acts = m.ResyncStarted(epoch("epoch"), now)
	case "resync-failed":
		acts = m.ResyncFailed(epoch("epoch"), epoch("peer"), now)
	case "baseline-done":
		acts = m.BaselineDone(epoch("epoch"))
	case "peer-in-sync":
		acts = m.PeerInSync(epoch("epoch"), now)
	case "grant-failed":
		acts = m.GrantFailed(epoch("epoch"))
	case "pre-elected":
		acts = m.PeerPreElected(epoch("epoch"), array(t, d, "pre"))
	case "pre-elect-failed":
		acts = m.PreElectFailed(epoch("epoch"))
	case "handover":
		acts, err = m.Handover()
	case "remove-peer":
		acts, err = m.RemovePeer()
	case "peer-left":
		acts = m.PeerLeft(epoch("epoch"))
	case "remove-failed":
		acts = m.RemoveFailed(epoch("epoch"))
	case "resync-requested":
		acts, err = m.ResyncRequested(epoch("epoch"))
	case "receive-accepted":
		acts, err = m.ReceiveAccepted(epoch("epoch"))
	case "grant-requested":
		acts, err = m.GrantRequested(epoch("epoch"), array(t, d, "pre"))
	case "pre-elect-requested":
		acts, err = m.PreElectRequested(epoch("epoch"), array(t, d, "pre"))
	case "handover-requested":
		acts, err = m.HandoverRequested(epoch("epoch"))
	case "remove-requested":
		acts, err = m.RemoveRequested(epoch("epoch"))
	case "accepts":
		return fmt.Sprintf("accepts=%t\n", m.AcceptsEpoch(epoch("epoch")))
	case "serves":
		lease := start.Add(h.duration(t, d, "lease"))
		return fmt.Sprintf("serves=%t\n", m.Serves(now, lease))
	default:
		d.Fatalf(t, "unknown directive %q", d.Cmd)
	}
	for _, a := range acts {
		if a.Kind == Persist {
			h.pending = a.ID
		}
	}
	var b strings.Builder
	if err != nil {
		fmt.Fprintf(&b, "error: %v\n", err)
	}
	b.WriteString("actions: ")
	b.WriteString(formatActions(acts))
	b.WriteString("\n")
	b.WriteString(h.state())
	return b.String()
}

// hello feeds the peer's record given as hello=none or
// hello=(epoch,seq,synced[,left]).
func (h *transcript) hello(t *testing.T, d *datadriven.TestData) []Action {
	for _, a := range d.CmdArgs {
		if a.Key != "hello" {
			continue
		}
		if len(a.Vals) == 1 && a.Vals[0] == "none" {
			return h.m.PeerRecord(Record{}, false, h.now)
		}
		if len(a.Vals) < 3 {
			d.Fatalf(t, "hello=%v: want none or (epoch,seq,synced[,left])", a.Vals)
		}
		var r Record
		if _, err := fmt.Sscan(a.Vals[0], &r.Epoch); err != nil {
			d.Fatalf(t, "hello epoch: %v", err)
		}
		r.Sequencer = a.Vals[1]
		if _, err := fmt.Sscan(a.Vals[2], &r.Synced); err != nil {
			d.Fatalf(t, "hello synced: %v", err)
		}
		r.Left = len(a.Vals) > 3 && a.Vals[3] == "left"
		return h.m.PeerRecord(r, true, h.now)
	}
	return nil
}

// array reads an array name (a, b or none) as the machine's id.
func array(t *testing.T, d *datadriven.TestData, key string) string {
	var s string
	d.ScanArgs(t, key, &s)
	switch s {
	case "a", "b":
		return s
	case "none":
		return ""
	}
	d.Fatalf(t, "%s=%s: want a, b or none", key, s)
	return ""
}

func (h *transcript) record(t *testing.T, d *datadriven.TestData) Record {
	var r Record
	d.ScanArgs(t, "epoch", &r.Epoch)
	r.Sequencer = array(t, d, "seq")
	d.ScanArgs(t, "synced", &r.Synced)
	r.Alone = d.HasArg("alone")
	r.Left = d.HasArg("left")
	r.Single = d.HasArg("single")
	if d.HasArg("rectimeout") {
		r.Timeout = h.duration(t, d, "rectimeout")
	}
	if d.HasArg("pre") {
		r.Pre = array(t, d, "pre")
	}
	return r
}

func (h *transcript) create(t *testing.T, d *datadriven.TestData) string {
	cfg := Config{Self: "a", Peer: "b", Timeout: time.Second, HeadStart: time.Second}
	if d.HasArg("timeout") {
		cfg.Timeout = h.duration(t, d, "timeout")
	}
	if d.HasArg("headstart") {
		cfg.HeadStart = h.duration(t, d, "headstart")
	}
	if d.HasArg("pref") {
		cfg.Preference = array(t, d, "pref")
	}
	h.m = New(cfg, h.record(t, d), h.now)
	h.pending = 0
	return h.state()
}

func (h *transcript) duration(t *testing.T, d *datadriven.TestData, key string) time.Duration {
	var s string
	d.ScanArgs(t, key, &s)
	v, err := time.ParseDuration(s)
	if err != nil {
		d.Fatalf(t, "%s=%s: %v", key, s, err)
	}
	return v
}

// state prints everything a driver can observe of the machine.
func (h *transcript) state() string {
	m := h.m
	s := fmt.Sprintf("%s %s {%s} serving=%t mirroring=%t link=%t",
		m.State(), m.Role(), m.Record(), m.Serving(), m.Mirroring(), m.Link())
	if m.State() == Paused {
		s += " fence-at=" + m.FenceAt().Sub(start).String()
	}
	if m.Pending() {
		s += " persisting"
	}
	return s + "\n"
}

func formatActions(acts []Action) string {
	if len(acts) == 0 {
		return "none"
	}
	s := make([]string, len(acts))
	for i, a := range acts {
		s[i] = a.String()
	}
	return strings.Join(s, ", ")
}
