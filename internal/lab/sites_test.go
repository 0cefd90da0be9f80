package lab

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/metro-storage/metro/internal/netproxy"
)

// echoServer accepts connections and echoes what each sends, standing in
// for an array's portal, until the test ends.
func echoServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Go(func() { _, _ = io.Copy(c, c) })
		}
	})
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String()
}

// cablesOnly is a pair's lab with no process: its arrays' portals,
// its link and its mediator are echo servers of the test, behind the
// lab's own routes (the host paths, the link proxy, the mediator
// routes), and it answers on its control socket.
func cablesOnly(t *testing.T) *Lab {
	t.Helper()
	l := &Lab{opts: Options{Dir: t.TempDir(), Arrays: 2, Logger: slog.New(slog.DiscardHandler)}}
	l.Info.Arrays = []ArrayInfo{{Name: "array-a", Portal: echoServer(t)}, {Name: "array-b", Portal: echoServer(t)}}
	l.mu.procs = make([]*proc, 2)
	t.Cleanup(l.Stop)
	var err error
	if l.proxy, err = netproxy.New("127.0.0.1:0", echoServer(t), netproxy.Settings{}, nil); err != nil {
		t.Fatal(err)
	}
	med := echoServer(t)
	l.med = &labMediator{addr: med, info: MediatorInfo{URL: "https://" + med}}
	for range 2 {
		r, err := netproxy.New("127.0.0.1:0", med, netproxy.Settings{}, nil)
		if err != nil {
			t.Fatal(err)
		}
		l.med.routes = append(l.med.routes, r)
	}
	if err := l.startHostPaths(); err != nil {
		t.Fatal(err)
	}
	if l.lock, err = lockDir(l.opts.Dir); err != nil {
		t.Fatal(err)
	}
	if l.ctlSrv, err = l.listenControl(); err != nil {
		t.Fatal(err)
	}
	l.ctlSrv.ready.Store(true)
	return l
}

// forEachPath calls fn with each host path of a pair's lab and whether
// it is one of cut.
func forEachPath(cut []HostPath, fn func(p HostPath, cut bool)) {
	for s := range 2 {
		for a := range 2 {
			p := HostPath{Site: s, Array: a}
			fn(p, slices.Contains(cut, p))
		}
	}
}

// Deadlines of an echo: short through a route that must lose it (any
// wait shows that), long through one that must carry it (a loaded
// machine may be slow).
const (
	lostEcho = time.Second
	echoed   = 30 * time.Second
)

// echoes reports whether conn echoes a message within timeout: a cut
// route loses it (a timeout); a route mended after a cut has reset the
// connection (an error at once).
func echoes(c net.Conn, timeout time.Duration) error {
	msg := []byte("ping\n")
	_ = c.SetDeadline(time.Now().Add(timeout))
	if _, err := c.Write(msg); err != nil {
		return err
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		return err
	}
	return nil
}

func timedOut(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// TestHostPathCables drives the host path controls on a lab whose arrays
// are echo servers of the test (no processes), through the control
// socket as metro lab does: cutting the paths to an array, the paths of
// a site's hosts, one path; the sites partitioned and healed; a site
// down. After each step every path is checked three ways: the status
// says whether it is cut, a connection opened through it before the
// step echoes (a cut one times out, silently), and a new connection
// through it echoes (a cut one is accepted, its bytes lost). A
// connection that lost bytes is reset when its path is mended, and a new
// one then works.
func TestHostPathCables(t *testing.T) {
	l := cablesOnly(t)
	dir := l.opts.Dir
	info := l.Info
	if len(info.Sites) != 2 || info.Sites[0] != (SiteInfo{Name: "A", Array: "array-a"}) || info.Sites[1] != (SiteInfo{Name: "B", Array: "array-b"}) {
		t.Fatalf("sites %+v", info.Sites)
	}
	// conns[s][a] is a connection of a host of site s through its path to
	// array a, opened before the step checked.
	var conns [2][2]net.Conn
	var err error
	open := func(s, a int) (net.Conn, error) {
		c, err := net.Dial("tcp", l.Info.Arrays[a].HostPortals[s].Portal)
		if err == nil {
			t.Cleanup(func() { c.Close() })
		}
		return c, err
	}
	for s := range 2 {
		for a := range 2 {
			hp := info.Arrays[a].HostPortals[s]
			if hp.Site != siteName(s) || hp.Portal == info.Arrays[a].Portal {
				t.Fatalf("%s's host portal for site %s: %+v (its own portal %s)", info.Arrays[a].Name, siteName(s), hp, info.Arrays[a].Portal)
			}
			if conns[s][a], err = open(s, a); err != nil {
				t.Fatal(err)
			}
		}
	}
	// check runs req, then checks that exactly the paths in cut are cut,
	// and the link and mediator routes as given.
	check := func(req Request, link bool, med [2]bool, cut ...HostPath) {
		t.Helper()
		resp, err := ask(t, dir, req)
		if err != nil {
			t.Fatalf("%+v: %v", req, err)
		}
		js, _ := json.Marshal(req)
		step := fmt.Sprintf("%s (%q)", js, resp.Message)
		st := resp.Status
		if got := len(st.Link.Cut) == 2; got != link {
			t.Errorf("%s: link cut %v; want %v", step, st.Link.Cut, link)
		}
		for i := range 2 {
			if st.Arrays[i].MediatorCut != med[i] {
				t.Errorf("%s: %s's mediator path cut %v; want %v", step, st.Arrays[i].Name, st.Arrays[i].MediatorCut, med[i])
			}
		}
		var wg sync.WaitGroup
		forEachPath(cut, func(p HostPath, want bool) {
			s, a := p.Site, p.Array
			if got := st.Sites[s].HostPaths[a]; got.Cut != want || got.Array != l.Info.Arrays[a].Name ||
				got.Portal != l.Info.Arrays[a].HostPortals[s].Portal {
				t.Errorf("%s: status of %s: %+v; want cut %v", step, l.hostPathName(p), got, want)
			}
			wg.Go(func() {
				if want {
					err := echoes(conns[s][a], lostEcho)
					if !timedOut(err) {
						t.Errorf("%s: a connection through the cut %s: %v; want its bytes lost (a timeout)", step, l.hostPathName(p), err)
					}
					c, err := open(s, a)
					if err == nil {
						err = echoes(c, lostEcho)
					}
					if !timedOut(err) {
						t.Errorf("%s: a new connection through the cut %s: %v; want its bytes lost", step, l.hostPathName(p), err)
					}
					return
				}
				err := echoes(conns[s][a], echoed)
				if err != nil {
					// It lost bytes before: reset by the mend.
					if timedOut(err) {
						t.Errorf("%s: a connection through the whole %s: %v", step, l.hostPathName(p), err)
					}
					conns[s][a].Close()
					if conns[s][a], err = open(s, a); err != nil {
						t.Errorf("%s: connect through %s: %v", step, l.hostPathName(p), err)
						return
					}
					err = echoes(conns[s][a], echoed)
				}
				if err != nil {
					t.Errorf("%s: %s is whole but a connection through it: %v", step, l.hostPathName(p), err)
				}
			})
		})
		wg.Wait()
	}
	a0, a1, b0, b1 := HostPath{0, 0}, HostPath{0, 1}, HostPath{1, 0}, HostPath{1, 1}
	none := [2]bool{}

	check(Request{Verb: VerbStatus}, false, none)
	check(Request{Verb: VerbHostPathCut, Array: "array-a"}, false, none, a0, b0)
	check(Request{Verb: VerbHostPathCut, Array: "a"}, false, none, a0, b0) // idempotent
	check(Request{Verb: VerbHostPathCut, Site: "B", Array: "b"}, false, none, a0, b0, b1)
	check(Request{Verb: VerbHostPathRestore, Array: "a"}, false, none, b1)
	check(Request{Verb: VerbHostPathRestore, Site: "b"}, false, none)
	check(Request{Verb: VerbHostPathCut, Site: "A"}, false, none, a0, a1)
	check(Request{Verb: VerbHostPathRestore, Site: "A", Array: "array-b"}, false, none, a0)
	check(Request{Verb: VerbHostPathRestore, Site: "A"}, false, none)

	// A data-center partition: the link and the paths across sites.
	check(Request{Verb: VerbPartition, Sites: true}, true, none, a1, b0)
	check(Request{Verb: VerbPartition, Sites: true}, true, none, a1, b0)
	// A heal of the link alone leaves the paths cut, and says so.
	resp, err := ask(t, dir, Request{Verb: VerbHeal})
	if err != nil || !strings.Contains(resp.Message, "Host paths still cut: site A -> array-b, site B -> array-a") {
		t.Errorf("heal after partition --sites: %q, %v", resp.Message, err)
	}
	check(Request{Verb: VerbHeal, Sites: true}, false, none)
	check(Request{Verb: VerbPartition, Sites: true, AndMediator: true}, true, [2]bool{true, true}, a1, b0)
	check(Request{Verb: VerbHeal, Sites: true, AndMediator: true}, false, none)

	// A site down cuts everything of the site (its array runs no process
	// here, so there is none to kill); up mends it.
	check(Request{Verb: VerbSiteDown, Site: "A"}, true, [2]bool{true, false}, a0, a1, b0)
	if resp, err := ask(t, dir, Request{Verb: VerbSiteDown, Site: "a"}); err != nil || resp.Message != "Site A was down already." {
		t.Errorf("site down A again: %q, %v", resp.Message, err)
	}
	check(Request{Verb: VerbSiteDown, Site: "array-b"}, true, [2]bool{true, true}, a0, a1, b0, b1)
	if resp, err := ask(t, dir, Request{Verb: VerbSiteDown, Site: "b"}); err != nil || resp.Message != "Site B was down already." {
		t.Errorf("site down B again: %q, %v", resp.Message, err)
	}

	// The Go API names the same paths.
	for _, tc := range []struct {
		got, want []HostPath
	}{
		{l.PathsTo(1), []HostPath{a1, b1}},
		{l.PathsFrom(1), []HostPath{b0, b1}},
		{l.CrossSitePaths(), []HostPath{a1, b0}},
		{l.sitePaths(0), []HostPath{a0, a1, b0}},
	} {
		if fmt.Sprint(tc.got) != fmt.Sprint(tc.want) {
			t.Errorf("paths %v; want %v", tc.got, tc.want)
		}
	}
	if err := l.CutHostPaths(HostPath{Site: 2, Array: 0}); err == nil {
		t.Error("a host path from a third site was cut")
	}

	// Wrong requests say what to do.
	for _, tc := range []struct {
		req  Request
		want string
	}{
		{Request{Verb: VerbHostPathCut}, "name an array (every site's path to it: array-a, array-b), a site (its hosts' paths to every array: A, B), or both"},
		{Request{Verb: VerbHostPathRestore, Array: "array-c"}, `no array "array-c"`},
		{Request{Verb: VerbHostPathCut, Site: "C"}, `no site "C" in this lab: name one of A, B`},
		{Request{Verb: VerbSiteDown}, "site-down: name a site of the lab (A, B)"},
		{Request{Verb: VerbSiteUp, Site: "west"}, `no site "west"`},
		{Request{Verb: VerbPartition, Array: "a", Sites: true}, "one-way cut is of the link only"},
		{Request{Verb: VerbKill, Array: "a", Sites: true}, "partition and heal only"},
		{Request{Verb: VerbKill, Array: "a", Site: "A"}, "site goes with"},
	} {
		if _, err := ask(t, dir, tc.req); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v; want an error with %q", tc.req, err, tc.want)
		}
	}
}
