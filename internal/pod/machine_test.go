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
// event fed to one machine; its output is the actions returned, in order,
// then the machine's observable state. Rewrite with -rewrite.
//
// Directives (t=D moves the fake clock to start+D first; it never goes
// back):
//
//	new role=sequencer|follower epoch=N [fenced=B] [timeout=D] [t=D]
//	link-up | link-down [heard=D] | tick | lease-expired
//	persisted | resync-started | resync-failed | baseline-done |
//	peer-in-sync | resync-requested | granted | accepts   (all epoch=N)
//
// fenced=true says the follower is known to hold no lease (a fresh
// stretch: it never had a copy). New has no way to say so; the driver
// back-dates the fence instead, New(role, epoch, now-timeout, timeout), so
// the fence is at now.
func TestTranscripts(t *testing.T) {
	datadriven.Walk(t, "testdata", func(t *testing.T, path string) {
		h := &transcript{now: start}
		datadriven.RunTest(t, path, h.run)
	})
}

type transcript struct {
	m       *Machine
	now     time.Time
	timeout time.Duration
}

func (h *transcript) run(t *testing.T, d *datadriven.TestData) string {
	if d.HasArg("t") {
		var off time.Duration
		h.scanDuration(t, d, "t", &off)
		at := start.Add(off)
		if at.Before(h.now) {
			d.Fatalf(t, "t=%s goes back in time (now %s)", off, h.now.Sub(start))
		}
		h.now = at
	}
	if d.Cmd == "new" {
		return h.create(t, d)
	}
	if h.m == nil {
		d.Fatalf(t, "%s before new", d.Cmd)
	}
	epoch := func() uint64 {
		var e uint64
		d.ScanArgs(t, "epoch", &e)
		return e
	}
	var acts []Action
	var err error
	switch d.Cmd {
	case "link-up":
		acts = h.m.LinkUp(h.now)
	case "link-down":
		heard := h.now
		if d.HasArg("heard") {
			var off time.Duration
			h.scanDuration(t, d, "heard", &off)
			heard = start.Add(off)
		}
		acts = h.m.LinkDown(h.now, heard)
	case "tick":
		acts = h.m.Tick(h.now)
	case "lease-expired":
		acts = h.m.LeaseExpired()
	case "persisted":
		acts = h.m.Persisted(epoch())
	case "resync-started":
		acts = h.m.ResyncStarted(epoch())
	case "resync-failed":
		acts = h.m.ResyncFailed(epoch())
	case "baseline-done":
		acts = h.m.BaselineDone(epoch())
	case "peer-in-sync":
		acts = h.m.PeerInSync(epoch())
	case "resync-requested":
		acts, err = h.m.ResyncRequested(epoch())
	case "granted":
		acts, err = h.m.GrantedInSync(epoch())
	case "accepts":
		return fmt.Sprintf("accepts=%t\n%s", h.m.AcceptsEpoch(epoch()), h.state())
	default:
		d.Fatalf(t, "unknown directive %q", d.Cmd)
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

func (h *transcript) create(t *testing.T, d *datadriven.TestData) string {
	var role string
	var epoch uint64
	d.ScanArgs(t, "role", &role)
	d.ScanArgs(t, "epoch", &epoch)
	h.timeout = 2 * time.Second
	if d.HasArg("timeout") {
		h.scanDuration(t, d, "timeout", &h.timeout)
	}
	var fenced bool
	d.MaybeScanArgs(t, "fenced", &fenced)
	var r Role
	switch role {
	case "sequencer":
		r = Sequencer
	case "follower":
		r = Follower
	default:
		d.Fatalf(t, "unknown role %q", role)
	}
	now := h.now
	if fenced {
		now = now.Add(-h.timeout)
	}
	h.m = New(r, epoch, now, h.timeout)
	if h.m.Role() != r {
		d.Fatalf(t, "New(%s) has role %s", r, h.m.Role())
	}
	return h.state()
}

func (h *transcript) scanDuration(t *testing.T, d *datadriven.TestData, key string, dst *time.Duration) {
	var s string
	d.ScanArgs(t, key, &s)
	v, err := time.ParseDuration(s)
	if err != nil {
		d.Fatalf(t, "%s=%s: %v", key, s, err)
	}
	*dst = v
}

// state prints everything a driver can observe of the machine.
func (h *transcript) state() string {
	m := h.m
	s := fmt.Sprintf("state=%s epoch=%d serving=%t mirroring=%t link=%t",
		m.State(), m.Epoch(), m.Serving(), m.Mirroring(), m.Link())
	if m.State() == Paused {
		s += " fence-at=" + m.FenceAt().Sub(start).String()
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

// The randomised test drives a sequencer and a follower together, as the
// replication package would, through random schedules of link loss and
// return, clock ticks, durable writes completing, baselines completing,
// heartbeats, host writes, lease expiry and restarts, with the messages
// between the arrays delivered, lost or (in the stale modes) delayed,
// reordered and duplicated across link sessions. After every step it
// checks what must hold whatever the schedule; at the end it heals the
// link and checks that the pod gets back in sync.
//
// The model of the world around the machines:
//   - The follower's read lease comes only from the sequencer in sync
//     (its heartbeats) or from the in-sync grant; it ends at the send time
//     plus the timeout, and the sequencer passes the last such send time
//     as lastHeard. The follower's timer feeds LeaseExpired the moment the
//     lease ends.
//   - Host writes go through the sequencer: acknowledged when the machine
//     does not hold them (not paused), and on the follower's copy only if
//     the sequencer mirrors and the follower accepts the epoch.
//   - The follower's copy is cleared by ClearCopy and filled by a baseline
//     that targeted that copy; it is stale once a write misses it.
