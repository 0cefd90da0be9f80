package lab

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/metro-storage/metro/internal/fileperm"
	"github.com/metro-storage/metro/internal/mediator"
	"github.com/metro-storage/metro/internal/netproxy"
	"github.com/metro-storage/metro/internal/testbin"
)

// peerView is array i's view of its peer: the link's status and round
// trip.
func peerView(l *Lab, i int) (status string, rtt float64, err error) {
	c, err := l.Client(i)
	if err != nil {
		return "", 0, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	arrays, err := c.Arrays(ctx)
	if err != nil {
		return "", 0, err
	}
	if len(arrays) < 2 {
		return "", 0, fmt.Errorf("%s lists %d arrays", l.Info.Arrays[i].Name, len(arrays))
	}
	return arrays[1].Status, arrays[1].RTTMillis, nil
}

// waitLinkSeen waits until array i reports the link in state want.
func waitLinkSeen(t *testing.T, l *Lab, i int, want string) {
	t.Helper()
	testbin.Eventually(t, time.Minute, fmt.Sprintf("%s sees the link %s", l.Info.Arrays[i].Name, want), func() (bool, string) {
		st, _, err := peerView(l, i)
		return err == nil && st == want, fmt.Sprintf("%s, %v", st, err)
	})
}

// waitMediatorSeen waits until array i sees its mediator as want.
func waitMediatorSeen(t *testing.T, l *Lab, i int, want string) {
	t.Helper()
	testbin.Eventually(t, time.Minute, fmt.Sprintf("%s sees the mediator %s", l.Info.Arrays[i].Name, want), func() (bool, string) {
		c, err := l.Client(i)
		if err != nil {
			return false, err.Error()
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		info, err := c.Array(ctx)
		if err != nil || info.Mediator == nil {
			return false, fmt.Sprintf("%+v, %v", info.Mediator, err)
		}
		return info.Mediator.Status == want, info.Mediator.Status + ": " + info.Mediator.Error
	})
}

// upPair starts a pair's lab with its mediator, which sees a lost link
// and a lost mediator quickly, for the test; it stops with the test.
func upPair(t *testing.T) (l *Lab, dir string, ctx context.Context) {
	t.Helper()
	dir = t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	t.Cleanup(cancel)
	l, err := Up(ctx, Options{Dir: dir, Binary: metroBin, Size: 16 << 20, LinkTimeout: 2 * time.Second, MediatorHeartbeat: time.Second})
	if err != nil {
		t.Fatalf("lab up: %v", err)
	}
	t.Cleanup(l.Stop)
	return l, dir, ctx
}

func readLabJSON(t *testing.T, dir string) Info {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(dir, "lab.json"))
	if err != nil {
		t.Fatal(err)
	}
	var info Info
	if err := json.Unmarshal(data, &info); err != nil {
		t.Fatal(err)
	}
	return info
}

// TestFaultControls drives every fault control of the Go API against a
// pair of real array processes and their mediator and checks each has the
// effect it claims, as the arrays see it: a cut link is reported down by
// the array that no longer hears its peer, a mended one up; a killed
// array is gone and its peer loses the link, a started one answers and
// catches up; the round trip set is the one the arrays measure; a stopped
// mediator, or a cut path to it, is unreachable for the arrays it should
// be, and online again once started or mended.
func TestFaultControls(t *testing.T) {
	l, dir, ctx := upPair(t)
	cut := func() []string { return l.Status().Link.Cut }
	// The mediator's key, certificate, state and log are private too, and
	// so are the control socket and the lock.
	open, err := fileperm.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range open {
		t.Error(o)
	}
	for _, f := range []string{"mediator/authkey", "mediator/" + mediator.CertFile, "mediator.log", SocketName, lockName} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Errorf("the lab did not make %s: %v", f, err)
		}
	}

	// Partition, both ways: both arrays lose the link; heal: both have it.
	must(t, l.Partition())
	if got := cut(); !slices.Equal(got, []string{"array-a", "array-b"}) {
		t.Fatalf("after partition the status says %v cut", got)
	}
	waitLinkSeen(t, l, 0, "disconnected")
	waitLinkSeen(t, l, 1, "disconnected")
	must(t, l.Partition()) // idempotent
	must(t, l.Heal())
	if got := cut(); len(got) != 0 {
		t.Fatalf("after heal the status says %v cut", got)
	}
	waitLinkSeen(t, l, 0, "connected")
	waitLinkSeen(t, l, 1, "connected")

	// One way, from each array: its peer stops hearing it and drops the
	// link; the proxy cuts exactly that direction.
	for i := range 2 {
		must(t, l.PartitionFrom(i))
		name := l.Info.Arrays[i].Name
		if got := cut(); !slices.Equal(got, []string{name}) {
			t.Fatalf("after partition --one-way %s the status says %v cut", name, got)
		}
		s := l.proxy.Settings()
		if want := (i == l.linkTarget); s.CutBToA != want || s.CutAToB == want || s.Partitioned {
			t.Fatalf("one-way cut of %s (the link's target: %v): proxy %+v", name, want, s)
		}
		waitLinkSeen(t, l, 1-i, "disconnected")
		must(t, l.Heal())
		waitLinkSeen(t, l, 0, "connected")
		waitLinkSeen(t, l, 1, "connected")
	}

	// The round trip the arrays measure follows the one set.
	must(t, l.SetRTT(40*time.Millisecond))
	for i := range 2 {
		testbin.Eventually(t, time.Minute, "the arrays measure the 40 ms round trip", func() (bool, string) {
			st, rtt, err := peerView(l, i)
			return err == nil && rtt >= 38 && rtt < 400, fmt.Sprintf("%s %.2f ms, %v", st, rtt, err)
		})
	}
	if got := l.Status().Link.RTT; got != "40ms" {
		t.Errorf("status rtt %q", got)
	}
	must(t, l.SetRTT(0))
	testbin.Eventually(t, time.Minute, "the round trip falls back", func() (bool, string) {
		st, rtt, err := peerView(l, 0)
		return err == nil && rtt < 20, fmt.Sprintf("%s %.2f ms, %v", st, rtt, err)
	})
	if err := l.SetRTT(-time.Second); err == nil {
		t.Error("a negative round trip was taken")
	}

	// Kill and start: the process is gone and its peer loses the link;
	// started again it answers, lab.json has its new PID, the pod is
	// back in sync.
	pid := l.Info.Arrays[1].PID
	must(t, l.Kill(1))
	if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
		t.Fatalf("array-b (pid %d) still exists after kill: %v", pid, err)
	}
	if st := l.Status().Arrays[1]; st.Running || st.PID != 0 {
		t.Fatalf("status after kill: %+v", st)
	}
	if info := readLabJSON(t, dir); info.Arrays[1].PID != 0 {
		t.Errorf("lab.json still gives the killed array pid %d", info.Arrays[1].PID)
	}
	must(t, l.Kill(1)) // idempotent
	waitLinkSeen(t, l, 0, "disconnected")
	must(t, l.Start(ctx, 1))
	must(t, l.Start(ctx, 1)) // idempotent
	st := l.Status().Arrays[1]
	if !st.Running || st.PID == 0 || st.PID == pid {
		t.Fatalf("status after start: %+v (old pid %d)", st, pid)
	}
	if info := readLabJSON(t, dir); info.Arrays[1].PID != st.PID {
		t.Errorf("lab.json gives pid %d, the array runs as %d", info.Arrays[1].PID, st.PID)
	}
	must(t, l.WaitInSync(ctx, 3*time.Minute))
	select {
	case e := <-l.Exits():
		t.Errorf("a killed array was reported as ending on its own: %+v", e)
	default:
	}

	// The mediator: stopped and started, one array's path cut and mended,
	// as each array sees it.
	mpid := l.Info.MediatorPID
	must(t, l.StopMediator())
	must(t, l.StopMediator()) // idempotent
	if err := syscall.Kill(mpid, 0); !errors.Is(err, syscall.ESRCH) || l.Status().Mediator.Running {
		t.Fatalf("the mediator (pid %d) after stop: %v, %+v", mpid, err, l.Status().Mediator)
	}
	waitMediatorSeen(t, l, 0, "unreachable")
	waitMediatorSeen(t, l, 1, "unreachable")
	must(t, l.StartMediator(ctx))
	must(t, l.StartMediator(ctx)) // idempotent
	if m := l.Status().Mediator; !m.Running || m.PID == mpid || readLabJSON(t, dir).MediatorPID != m.PID {
		t.Fatalf("the mediator after start: %+v (lab.json pid %d)", m, readLabJSON(t, dir).MediatorPID)
	}
	waitMediatorSeen(t, l, 0, "online")
	waitMediatorSeen(t, l, 1, "online")
	must(t, l.CutMediator(1))
	waitMediatorSeen(t, l, 1, "unreachable")
	waitMediatorSeen(t, l, 0, "online")
	must(t, l.RestoreMediator(1))
	waitMediatorSeen(t, l, 1, "online")

	// Isolate and rejoin: the link and one array's mediator path.
	must(t, l.Isolate(0))
	if st := l.Status(); len(st.Link.Cut) != 2 || !st.Arrays[0].MediatorCut || st.Arrays[1].MediatorCut {
		t.Fatalf("after isolate the status says %+v %+v", st.Link, st.Arrays)
	}
	waitLinkSeen(t, l, 1, "disconnected")
	waitMediatorSeen(t, l, 0, "unreachable")
	must(t, l.Rejoin(0))
	waitLinkSeen(t, l, 1, "connected")
	waitMediatorSeen(t, l, 0, "online")
	must(t, l.WaitInSync(ctx, 3*time.Minute))

	// What this lab cannot do is refused, saying why.
	if err := l.Isolate(2); err == nil {
		t.Error("isolate of a third array of a pair worked")
	}
	if _, err := l.ArrayIndex("B"); err != nil {
		t.Errorf("array B: %v", err)
	}
}

// TestExitReported: an array that dies without the lab killing it is
// reported on Exits; a lab of one array has no link to cut, nor a
// mediator.
func TestExitReported(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	l, err := Up(ctx, Options{Dir: t.TempDir(), Binary: metroBin, Arrays: 1, Size: 16 << 20})
	if err != nil {
		t.Fatalf("lab up: %v", err)
	}
	defer l.Stop()
	if err := l.Partition(); !errors.Is(err, ErrNoLink) {
		t.Errorf("partition of one array: %v", err)
	}
	if err := l.CutMediator(0); !errors.Is(err, ErrNoMediator) {
		t.Errorf("cut the mediator path of one array: %v", err)
	}
	if err := syscall.Kill(l.Info.Arrays[0].PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	select {
	case e := <-l.Exits():
		if e.Name != "array-a" || e.Log != l.Info.Arrays[0].Log {
			t.Errorf("exit reported: %+v", e)
		}
	case <-time.After(time.Minute):
		t.Fatal("the array's death was not reported")
	}
	must(t, l.Start(ctx, 0))
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// TestMediatorPaths drives the mediator path controls on a lab whose
// mediator is a TLS server of the test (no processes): each array's route
// is cut and mended on its own, isolate cuts the link and one route,
// partition --and-mediator all three, and a request through a cut route
// gets no answer while one through a whole route does.
func TestMediatorPaths(t *testing.T) {
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, "mediator")
	}))
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "https://")
	l := &Lab{opts: Options{Dir: t.TempDir(), Arrays: 2}}
	l.Info.Arrays = []ArrayInfo{{Name: "array-a"}, {Name: "array-b"}}
	l.mu.procs = make([]*proc, 2)
	var err error
	if l.proxy, err = netproxy.New("127.0.0.1:0", addr, netproxy.Settings{}, nil); err != nil {
		t.Fatal(err)
	}
	l.med = &labMediator{addr: addr, info: MediatorInfo{URL: srv.URL}}
	for range 2 {
		r, err := netproxy.New("127.0.0.1:0", addr, netproxy.Settings{}, nil)
		if err != nil {
			t.Fatal(err)
		}
		l.med.routes = append(l.med.routes, r)
	}
	defer l.Stop()

	// reaches reports whether array i reaches the mediator through its
	// route, on a new connection.
	reaches := func(i int) bool {
		tr := srv.Client().Transport.(*http.Transport).Clone()
		tr.DisableKeepAlives = true
		c := &http.Client{Transport: tr, Timeout: 500 * time.Millisecond}
		resp, err := c.Get("https://" + l.med.routes[i].Addr() + "/")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}
	check := func(step string, link []string, cut ...bool) {
		t.Helper()
		st := l.Status()
		if !slices.Equal(st.Link.Cut, link) {
			t.Errorf("%s: link cut %v; want %v", step, st.Link.Cut, link)
		}
		for i, want := range cut {
			if st.Arrays[i].MediatorCut != want {
				t.Errorf("%s: %s's mediator path cut %v; want %v", step, st.Arrays[i].Name, st.Arrays[i].MediatorCut, want)
			}
			if got := reaches(i); got == want {
				t.Errorf("%s: %s reaches the mediator: %v; want %v", step, st.Arrays[i].Name, got, !want)
			}
		}
	}
	both := []string{"array-a", "array-b"}
	check("at the start", []string{}, false, false)
	must(t, l.CutMediator(1))
	must(t, l.CutMediator(1))
	check("mediator cut array-b", []string{}, false, true)
	must(t, l.RestoreMediator(1))
	check("mediator restore array-b", []string{}, false, false)
	must(t, l.Isolate(0))
	check("isolate array-a", both, true, false)
	must(t, l.Rejoin(0))
	check("rejoin array-a", []string{}, false, false)
	must(t, l.PartitionAndMediator())
	check("partition --and-mediator", both, true, true)
	must(t, l.Heal())
	check("heal", []string{}, true, true)
	must(t, l.HealAndMediator())
	check("heal --and-mediator", []string{}, false, false)
	if st := l.Status(); st.Mediator == nil || st.Mediator.Running || st.Mediator.URL != srv.URL {
		t.Errorf("mediator status %+v", st.Mediator)
	}
}

// TestUpAgain stops a pair's lab and starts it again in its directory:
// the arrays, which remember each other's addresses from when they
// paired, link up again and the pod is in sync, with its data. Before,
// the second lab put the link's proxy on new ports and its start failed
// ("the link between the arrays did not come up").
func TestUpAgain(t *testing.T) {
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	opts := Options{Dir: dir, Binary: metroBin, Size: 16 << 20, LinkTimeout: 2 * time.Second}
	l, err := Up(ctx, opts)
	if err != nil {
		t.Fatalf("lab up: %v", err)
	}
	first := l.Info
	l.Stop()
	if l, err = Up(ctx, opts); err != nil {
		t.Fatalf("lab up again in the same directory: %v", err)
	}
	defer l.Stop()
	for i, a := range l.Info.Arrays {
		if a.LinkAdvertise != first.Arrays[i].LinkAdvertise {
			t.Logf("%s's link address moved from %s to %s (the old port was taken)", a.Name, first.Arrays[i].LinkAdvertise, a.LinkAdvertise)
		}
		waitLinkSeen(t, l, i, "connected")
	}
	must(t, l.WaitInSync(ctx, time.Minute))
}
