package lab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/metro-storage/metro/internal/initiator"
)

// hostSessions are iSCSI sessions of the lab's host, one through each host
// path: [site][array].
type hostSessions struct {
	t *testing.T
	l *Lab
	c [2][2]*initiator.Conn
}

// Timeouts of the sessions' exchanges: long for a session that must
// work, short for a login through a path that must not.
const (
	sessionTimeout = 10 * time.Second
	deadLogin      = 2 * time.Second
)

// dial logs in to the lab volume's target through host path p.
func (h *hostSessions) dial(p HostPath, timeout time.Duration) (*initiator.Conn, error) {
	ai := h.l.Info.Arrays[p.Array]
	ctx, cancel := context.WithTimeout(context.Background(), sessionTimeout)
	defer cancel()
	return initiator.Dial(ctx, ai.HostPortals[p.Site].Portal,
		initiator.Options{InitiatorName: DefaultInitiator, TargetName: ai.Target, Timeout: timeout})
}

// redial replaces the session through p with a new one, which must log in.
func (h *hostSessions) redial(p HostPath) {
	h.t.Helper()
	if old := h.c[p.Site][p.Array]; old != nil {
		old.Close()
	}
	c, err := h.dial(p, sessionTimeout)
	if err != nil {
		h.t.Fatalf("log in through %s: %v", h.l.hostPathName(p), err)
	}
	h.c[p.Site][p.Array] = c
}

func (h *hostSessions) close() {
	for _, row := range h.c {
		for _, c := range row {
			if c != nil {
				c.Close()
			}
		}
	}
}

// inquiry sends INQUIRY through c: any SCSI answer (a suspended pod's NOT
// READY too) shows the path carries the session; an error does not.
func inquiry(c *initiator.Conn) error {
	_, err := c.Exec(0, []byte{0x12, 0, 0, 0, 96, 0}, nil, 96)
	if se := (*initiator.SCSIError)(nil); errors.As(err, &se) {
		return nil
	}
	return err
}

// unitAttention retries cmd while it ends with UNIT ATTENTION (a new
// session's power-on report, an ALUA change), as a host does, a few
// times.
func unitAttention(cmd func() error) error {
	var err error
	for range 4 {
		err = cmd()
		var se *initiator.SCSIError
		if !errors.As(err, &se) {
			return err
		}
		if key, _, _ := se.SenseKey(); key != 0x6 {
			return err
		}
	}
	return err
}

// writeRead writes a block of its own pattern at an LBA of its own
// through c and reads it back.
func writeRead(c *initiator.Conn, p HostPath, round int) error {
	lba := uint64(8 * (2*p.Site + p.Array))
	data := bytes.Repeat([]byte{byte(round), byte(p.Site), byte(p.Array), 0x5a}, 1024)
	if err := unitAttention(func() error { return c.Write(0, lba, data) }); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	var got []byte
	err := unitAttention(func() (err error) {
		got, err = c.Read(0, lba, 8)
		return err
	})
	if err != nil {
		return fmt.Errorf("read: %w", err)
	}
	if !bytes.Equal(got, data) {
		return errors.New("read back something else than written")
	}
	return nil
}

// expect checks every host path at once: the status says whether it is
// cut; through a cut one the session fails (its bytes lost: a timeout)
// and a new login fails; through a whole one the session works: a write
// read back when io is set, else an answer to INQUIRY (whatever the
// pod's state). A session that failed is replaced once its path is
// whole again (redial).
func (h *hostSessions) expect(step string, io bool, round int, cut ...HostPath) {
	h.t.Helper()
	st := h.l.Status()
	var wg sync.WaitGroup
	forEachPath(cut, func(p HostPath, want bool) {
		if got := st.Sites[p.Site].HostPaths[p.Array].Cut; got != want {
			h.t.Errorf("%s: the status says %s cut: %v; want %v", step, h.l.hostPathName(p), got, want)
		}
		c := h.c[p.Site][p.Array]
		wg.Go(func() {
			if want {
				var ne net.Error
				if err := inquiry(c); !errors.As(err, &ne) || !ne.Timeout() {
					h.t.Errorf("%s: the session through the cut %s: %v; want it to lose its bytes (a timeout)", step, h.l.hostPathName(p), err)
				}
				if c, err := h.dial(p, deadLogin); err == nil {
					c.Close()
					h.t.Errorf("%s: a login through the cut %s worked", step, h.l.hostPathName(p))
				}
				return
			}
			err := inquiry(c)
			if err == nil && io {
				err = writeRead(c, p, round)
			}
			if err != nil {
				h.t.Errorf("%s: the session through the whole %s: %v", step, h.l.hostPathName(p), err)
			}
		})
	})
	wg.Wait()
	if h.t.Failed() {
		h.t.FailNow()
	}
}

// TestSites drives the host path and site controls of the Go API on a
// pair of real array processes with their mediator, with the lab's host
// logged in through all four host paths (two sites, two arrays) with the
// project's initiator: a session through a cut path loses its bytes and
// a login through it fails, while the sessions through the other paths
// go on writing and reading; once mended, new logins work and the host
// writes through them. Partitioning the sites also cuts the link, as the
// arrays report it; losing site A kills array-a and cuts it from the
// mediator as array-b keeps it; bringing the site back starts array-a and
// the pod returns to sync.
func TestSites(t *testing.T) {
	l, dir, ctx := upPair(t)
	info := readLabJSON(t, dir)
	for a, ai := range info.Arrays {
		if len(ai.HostPortals) != 2 || ai.Portal == "" {
			t.Fatalf("lab.json: %s has portal %q and host portals %+v", ai.Name, ai.Portal, ai.HostPortals)
		}
		for s, hp := range ai.HostPortals {
			if want := fmt.Sprintf("iscsi://%s/%s/0", hp.Portal, ai.Target); hp.Site != siteName(s) || hp.URL != want || hp.Portal == ai.Portal {
				t.Errorf("lab.json: %s's host portal %d: %+v", ai.Name, s, hp)
			}
		}
		if info.Sites[a] != (SiteInfo{Name: siteName(a), Array: ai.Name}) {
			t.Errorf("lab.json: site %d: %+v", a, info.Sites[a])
		}
	}
	h := &hostSessions{t: t, l: l}
	defer h.close()
	all := []HostPath{{0, 0}, {0, 1}, {1, 0}, {1, 1}}
	for _, p := range all {
		h.redial(p)
	}
	h.expect("at the start", true, 1)

	// Every host's path to array-a: cut, then mended.
	must(t, l.CutHostPaths(l.PathsTo(0)...))
	must(t, l.CutHostPaths(l.PathsTo(0)...)) // idempotent
	h.expect("hostpath cut array-a", true, 2, HostPath{0, 0}, HostPath{1, 0})
	// The array's own portal is not cut.
	direct, err := initiator.Dial(ctx, info.Arrays[0].Portal, initiator.Options{InitiatorName: DefaultInitiator,
		TargetName: info.Arrays[0].Target, Timeout: sessionTimeout})
	if err != nil {
		t.Fatalf("login through array-a's own portal while its host paths are cut: %v", err)
	}
	direct.Close()
	must(t, l.RestoreHostPaths(l.PathsTo(0)...))
	h.redial(HostPath{0, 0})
	h.redial(HostPath{1, 0})
	h.expect("hostpath restore array-a", true, 3)

	// One site's hosts, and one path.
	must(t, l.CutHostPaths(l.PathsFrom(1)...))
	h.expect("hostpath cut --site B", true, 4, HostPath{1, 0}, HostPath{1, 1})
	must(t, l.RestoreHostPaths(HostPath{1, 1}))
	h.redial(HostPath{1, 1})
	h.expect("hostpath restore array-b --site B", true, 5, HostPath{1, 0})
	must(t, l.RestoreHostPaths(l.PathsFrom(1)...))
	h.redial(HostPath{1, 0})
	h.expect("hostpath restore --site B", true, 6)

	// A data-center partition: the link and the paths across sites; each
	// site's hosts still reach their own array (whatever it serves).
	must(t, l.PartitionSites())
	waitLinkSeen(t, l, 0, "disconnected")
	waitLinkSeen(t, l, 1, "disconnected")
	h.expect("partition --sites", false, 0, HostPath{0, 1}, HostPath{1, 0})
	must(t, l.HealSites())
	waitLinkSeen(t, l, 0, "connected")
	must(t, l.WaitInSync(ctx, 3*time.Minute))
	h.redial(HostPath{0, 1})
	h.redial(HostPath{1, 0})
	h.expect("heal --sites", true, 7)

	// Site A lost: array-a killed behind its cut cables; array-b loses the
	// link, keeps the mediator; only site B's path to array-b carries.
	pid := l.Info.Arrays[0].PID
	logB := l.Info.Arrays[1].Log
	before, err := os.ReadFile(logB)
	if err != nil {
		t.Fatal(err)
	}
	must(t, l.SiteDown(0))
	if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
		t.Fatalf("array-a (pid %d) still exists after site down A: %v", pid, err)
	}
	st := l.Status()
	if st.Arrays[0].Running || !st.Arrays[0].MediatorCut || st.Arrays[1].MediatorCut || len(st.Link.Cut) != 2 {
		t.Fatalf("status after site down A: %+v, link %+v", st.Arrays, st.Link)
	}
	must(t, l.SiteDown(0)) // idempotent
	waitLinkSeen(t, l, 1, "disconnected")
	waitMediatorSeen(t, l, 1, "online")
	h.expect("site down A", false, 0, HostPath{0, 1}, HostPath{1, 0}, HostPath{0, 0})
	// array-b heard nothing of array-a's end, only silence (it ends the
	// link session itself, when its lease or its link times out).
	after, err := os.ReadFile(logB)
	if err != nil {
		t.Fatal(err)
	}
	since := string(after[min(len(before), len(after)):])
	if strings.Contains(since, "closed by the peer") || strings.Contains(since, "EOF") || strings.Contains(since, "connection reset") {
		t.Errorf("array-b's log since site down A; want no end heard from array-a:\n%s", since)
	}
	if down, up := l.siteState(0); !down || up {
		t.Errorf("site A after site down: down %v, up %v", down, up)
	}

	// Site A back: its cables mended, array-a started; the pod returns to
	// sync and every path carries writes again.
	must(t, l.SiteUp(ctx, 0))
	must(t, l.SiteUp(ctx, 0)) // idempotent
	st = l.Status()
	if !st.Arrays[0].Running || st.Arrays[0].PID == pid || st.Arrays[0].MediatorCut || len(st.Link.Cut) != 0 {
		t.Fatalf("status after site up A: %+v, link %+v", st.Arrays, st.Link)
	}
	if down, up := l.siteState(0); down || !up {
		t.Errorf("site A after site up: down %v, up %v", down, up)
	}
	if got := readLabJSON(t, dir).Arrays[0].PID; got != st.Arrays[0].PID {
		t.Errorf("lab.json gives array-a pid %d, it runs as %d", got, st.Arrays[0].PID)
	}
	waitMediatorSeen(t, l, 0, "online")
	must(t, l.WaitInSync(ctx, 3*time.Minute))
	for _, p := range all {
		h.redial(p)
	}
	h.expect("site up A", true, 8)
	select {
	case e := <-l.Exits():
		t.Errorf("an array of a site brought down was reported as ending on its own: %+v", e)
	default:
	}
}
