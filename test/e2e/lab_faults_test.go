package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/metro-storage/metro/internal/api"
	"github.com/metro-storage/metro/internal/lab"
	"github.com/metro-storage/metro/internal/testbin"
)

// labProc is `metro lab up` running as its own process, as a user runs
// it, with the arrays' API clients read from its lab.json.
type labProc struct {
	t    *testing.T
	dir  string
	cmd  *exec.Cmd
	out  *bytes.Buffer
	done chan error
	info lab.Info
}

// startLabProc runs metro lab up --dir D in a process of its own and
// waits until its control socket answers.
func startLabProc(t *testing.T, args ...string) *labProc {
	t.Helper()
	p := &labProc{t: t, dir: t.TempDir(), out: new(bytes.Buffer), done: make(chan error, 1)}
	p.cmd = exec.Command(metroBin, append([]string{"lab", "up", "--dir", p.dir, "--size", "16M"}, args...)...)
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.done <- p.cmd.Wait() }()
	t.Cleanup(func() {
		if p.cmd.ProcessState == nil {
			_ = p.cmd.Process.Signal(os.Interrupt)
			select {
			case <-p.done:
			case <-time.After(30 * time.Second):
				_ = p.cmd.Process.Kill()
				<-p.done
			}
		}
		if t.Failed() {
			t.Logf("metro lab up said:\n%s", tailString(p.out.String(), 4000))
			for _, a := range p.info.Arrays {
				log, _ := os.ReadFile(a.Log)
				t.Logf("%s log (tail):\n%s", a.Name, tailString(string(log), 3000))
			}
		}
	})
	deadline := time.Now().Add(3 * time.Minute)
	for {
		if _, err := p.run("status"); err == nil {
			break
		}
		select {
		case err := <-p.done:
			t.Fatalf("metro lab up exited (%v):\n%s", err, p.out.String())
		case <-time.After(200 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("the lab did not come up within 3 minutes:\n%s", p.out.String())
		}
	}
	data, err := os.ReadFile(filepath.Join(p.dir, "lab.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, &p.info); err != nil {
		t.Fatal(err)
	}
	return p
}

// run runs metro lab VERB ... --dir D and returns its output.
func (p *labProc) run(args ...string) (string, error) {
	cmd := exec.Command(metroBin, append(append([]string{"lab"}, args...), "--dir", p.dir)...)
	out, err := cmd.CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

// must runs a verb that must succeed and returns what it said.
func (p *labProc) must(args ...string) string {
	p.t.Helper()
	out, err := p.run(args...)
	if err != nil {
		p.t.Fatalf("metro lab %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// refused runs a verb that must fail saying want.
func (p *labProc) refused(want string, args ...string) {
	p.t.Helper()
	out, err := p.run(args...)
	if err == nil || !strings.Contains(out, want) {
		p.t.Fatalf("metro lab %s: %v\n%s\nwant a failure saying %q", strings.Join(args, " "), err, out, want)
	}
}

// status is metro lab status --json.
func (p *labProc) status() lab.Status {
	p.t.Helper()
	var st lab.Status
	if err := json.Unmarshal([]byte(p.must("status", "--json")), &st); err != nil {
		p.t.Fatal(err)
	}
	return st
}

func (p *labProc) client(i int) *api.Client {
	p.t.Helper()
	a := p.info.Arrays[i]
	c, err := api.NewClient(a.API, a.Token, a.CA)
	if err != nil {
		p.t.Fatal(err)
	}
	return c
}

// peer is array i's view of the link: its status and round trip.
func (p *labProc) peer(i int) (string, float64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	arrays, err := p.client(i).Arrays(ctx)
	if err != nil {
		return "", 0, err
	}
	if len(arrays) < 2 {
		return "", 0, fmt.Errorf("%d arrays listed", len(arrays))
	}
	return arrays[1].Status, arrays[1].RTTMillis, nil
}

// waitLink waits until array i reports the link want.
func (p *labProc) waitLink(i int, want string) {
	p.t.Helper()
	testbin.Eventually(p.t, time.Minute, fmt.Sprintf("%s reports the link %s", p.info.Arrays[i].Name, want), func() (bool, string) {
		st, _, err := p.peer(i)
		return err == nil && st == want, fmt.Sprintf("%q, %v", st, err)
	})
}

// waitMediator waits until array i sees its mediator as want.
func (p *labProc) waitMediator(i int, want string) {
	p.t.Helper()
	testbin.Eventually(p.t, time.Minute, fmt.Sprintf("%s sees the mediator %s", p.info.Arrays[i].Name, want), func() (bool, string) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		info, err := p.client(i).Array(ctx)
		if err != nil || info.Mediator == nil {
			return false, fmt.Sprintf("%+v, %v", info.Mediator, err)
		}
		return info.Mediator.Status == want, fmt.Sprintf("%s (%s)", info.Mediator.Status, info.Mediator.Error)
	})
}

// waitInSync waits until both arrays see pod1 online on both.
func (p *labProc) waitInSync() {
	p.t.Helper()
	testbin.Eventually(p.t, 3*time.Minute, "pod1 in sync", func() (bool, string) {
		for i := range p.info.Arrays {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			pod, err := p.client(i).Pod(ctx, "pod1")
			cancel()
			if err != nil {
				return false, err.Error()
			}
			for _, a := range pod.Arrays {
				if a.Status != "online" || len(pod.Arrays) != 2 {
					return false, fmt.Sprintf("%s sees %+v", p.info.Arrays[i].Name, pod.Arrays)
				}
			}
		}
		return true, ""
	})
}

func logSize(t *testing.T, path string) int64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}

// logSince reads what a log gained after offset from.
func logSince(t *testing.T, path string, from int64) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(data[min(from, int64(len(data))):])
}

func gone(pid int) bool { return errors.Is(syscall.Kill(pid, 0), syscall.ESRCH) }

// TestLabVerbs runs metro lab up as a user would and drives every fault
// control through the metro lab verbs from other processes, checking
// each has the effect it claims as the arrays see it: a partition (both
// ways, one way) is reported by the arrays as the link down and a heal as
// up; kill removes the process and its peer loses the link, start brings
// it back in sync; isolate and rejoin cut and mend the link at once; the
// round trip set is the one the arrays measure; the mediator verbs act on
// the mediator's process and paths, as each array sees its mediator
// (online, unreachable). Verbs are idempotent, wrong ones say
// what to do, a second lab in the same directory is refused, and Ctrl-C
// stops everything.
func TestLabVerbs(t *testing.T) {
	p := startLabProc(t)
	st := p.status()
	if len(st.Arrays) != 2 || !st.Arrays[0].Running || !st.Arrays[1].Running || st.Link == nil || len(st.Link.Cut) != 0 ||
		st.Mediator == nil || !st.Mediator.Running {
		t.Fatalf("status of a new lab: %+v", st)
	}
	// lab.json names the mediator, and each array its own route to it;
	// both arrays use it.
	m := p.info.Mediator
	if m == nil || !strings.HasPrefix(m.URL, "https://127.0.0.1:") || p.info.MediatorPID != st.Mediator.PID {
		t.Fatalf("lab.json: mediator %+v, pid %d", m, p.info.MediatorPID)
	}
	if _, err := os.Stat(m.CA); err != nil {
		t.Fatalf("the mediator's certificate: %v", err)
	}
	for i, a := range p.info.Arrays {
		if a.MediatorURL == "" || a.MediatorURL == m.URL || a.MediatorURL == p.info.Arrays[1-i].MediatorURL {
			t.Fatalf("lab.json: %s reaches the mediator at %q (the mediator is at %s)", a.Name, a.MediatorURL, m.URL)
		}
		p.waitMediator(i, "online")
	}
	if out := p.must("status"); !strings.Contains(out, "array-a  running (pid") || !strings.Contains(out, "array-a -> array-b whole") {
		t.Errorf("status for people:\n%s", out)
	}

	// partition / heal, both ways.
	p.must("partition")
	p.must("partition") // idempotent
	if got := p.status().Link.Cut; !slices.Equal(got, []string{"array-a", "array-b"}) {
		t.Fatalf("after partition: cut %v", got)
	}
	p.waitLink(0, "disconnected")
	p.waitLink(1, "disconnected")
	p.must("heal")
	p.waitLink(0, "connected")
	p.waitLink(1, "connected")

	// partition --one-way: the peer of the array cut stops hearing it,
	// and the link session ends (the array cut, whose pings go
	// unanswered, may end it first: which array notices the silence
	// first is a race, so neither's log of the end is required); the
	// peer never hears the array cut close the session (closed by the
	// peer, or an end of file), for none of its traffic arrives. The
	// proxy's cut of one direction alone is tested in internal/netproxy.
	heardEnd := func(log string) bool {
		return strings.Contains(log, "link session closed by the peer") || strings.Contains(log, "read: EOF")
	}
	for i, name := range []string{"array-a", "B"} {
		cutName, peerName := p.info.Arrays[i].Name, p.info.Arrays[1-i].Name
		from := []int64{logSize(t, p.info.Arrays[0].Log), logSize(t, p.info.Arrays[1].Log)}
		p.must("partition", "--one-way", name)
		if got := p.status().Link.Cut; !slices.Equal(got, []string{cutName}) {
			t.Fatalf("after partition --one-way %s: cut %v", name, got)
		}
		p.waitLink(0, "disconnected")
		p.waitLink(1, "disconnected")
		if log := logSince(t, p.info.Arrays[1-i].Log, from[1-i]); heardEnd(log) {
			t.Errorf("%s heard %s close the session although %s's traffic was cut:\n%s", peerName, cutName, cutName, tailString(log, 2000))
		}
		p.must("heal")
		p.waitLink(0, "connected")
		p.waitLink(1, "connected")
	}

	// rtt: the arrays measure the round trip set, and its clearing.
	p.must("rtt", "40ms")
	for i := range 2 {
		testbin.Eventually(t, time.Minute, "the arrays measure 40 ms", func() (bool, string) {
			s, rtt, err := p.peer(i)
			return err == nil && rtt >= 38 && rtt < 400, fmt.Sprintf("%s %.2f ms, %v", s, rtt, err)
		})
	}
	p.must("rtt", "0")
	testbin.Eventually(t, time.Minute, "the round trip falls back", func() (bool, string) {
		s, rtt, err := p.peer(0)
		return err == nil && rtt < 20, fmt.Sprintf("%s %.2f ms, %v", s, rtt, err)
	})

	// kill / start.
	pid := p.status().Arrays[1].PID
	if out := p.must("kill", "array-b"); !strings.Contains(out, "killed") {
		t.Errorf("kill said %q", out)
	}
	if !gone(pid) {
		t.Fatalf("array-b (pid %d) still exists after kill", pid)
	}
	if out := p.must("kill", "array-b"); !strings.Contains(out, "was not running") {
		t.Errorf("kill of a stopped array said %q", out)
	}
	if a := p.status().Arrays[1]; a.Running {
		t.Fatalf("status after kill: %+v", a)
	}
	p.waitLink(0, "disconnected")
	p.must("start", "array-b")
	if out := p.must("start", "b"); !strings.Contains(out, "already running") {
		t.Errorf("start of a running array said %q", out)
	}
	if a := p.status().Arrays[1]; !a.Running || a.PID == pid || gone(a.PID) {
		t.Fatalf("status after start: %+v (old pid %d)", a, pid)
	}
	p.waitInSync()

	// isolate / rejoin.
	p.must("isolate", "a")
	st = p.status()
	if !slices.Equal(st.Link.Cut, []string{"array-a", "array-b"}) || !st.Arrays[0].MediatorCut || st.Arrays[1].MediatorCut {
		t.Fatalf("after isolate a: %+v %+v", st.Link, st.Arrays)
	}
	p.waitLink(1, "disconnected")
	p.waitMediator(0, "unreachable")
	p.waitMediator(1, "online")
	p.must("rejoin", "a")
	if st := p.status(); len(st.Link.Cut) != 0 || st.Arrays[0].MediatorCut {
		t.Fatalf("after rejoin a: %+v %+v", st.Link, st.Arrays)
	}
	p.waitLink(1, "connected")
	p.waitMediator(0, "online")
	p.waitInSync()

	// The mediator verbs: the process, and each array's path to it, as
	// each array sees its mediator.
	mpid := st.Mediator.PID
	p.must("mediator", "stop")
	p.must("mediator", "stop") // idempotent
	if m := p.status().Mediator; m.Running || !gone(mpid) {
		t.Fatalf("after mediator stop: %+v, pid %d gone: %v", m, mpid, gone(mpid))
	}
	p.waitMediator(0, "unreachable")
	p.waitMediator(1, "unreachable")
	p.must("mediator", "start")
	p.must("mediator", "start") // idempotent
	if m := p.status().Mediator; !m.Running || gone(m.PID) {
		t.Fatalf("after mediator start: %+v", m)
	}
	p.waitMediator(0, "online")
	p.waitMediator(1, "online")
	p.must("mediator", "cut", "array-b")
	if a := p.status().Arrays; a[0].MediatorCut || !a[1].MediatorCut {
		t.Fatalf("after mediator cut array-b: %+v", a)
	}
	p.waitMediator(1, "unreachable")
	p.waitMediator(0, "online")
	p.must("mediator", "restore", "array-b")
	p.waitMediator(1, "online")
	p.must("partition", "--and-mediator")
	if st := p.status(); len(st.Link.Cut) != 2 || !st.Arrays[0].MediatorCut || !st.Arrays[1].MediatorCut {
		t.Fatalf("after partition --and-mediator: %+v %+v", st.Link, st.Arrays)
	}
	for i := range 2 {
		p.waitLink(i, "disconnected")
		p.waitMediator(i, "unreachable")
	}
	p.must("heal", "--and-mediator")
	if st := p.status(); len(st.Link.Cut) != 0 || st.Arrays[0].MediatorCut || st.Arrays[1].MediatorCut {
		t.Fatalf("after heal --and-mediator: %+v %+v", st.Link, st.Arrays)
	}
	for i := range 2 {
		p.waitLink(i, "connected")
		p.waitMediator(i, "online")
	}

	// Wrong requests say what to do.
	p.refused(`no array "array-c"`, "kill", "array-c")
	p.refused("not a duration", "rtt", "fast")
	p.refused("do not go together", "partition", "--one-way", "a", "--and-mediator")
	empty := t.TempDir()
	if out, err := exec.Command(metroBin, "lab", "status", "--dir", empty).CombinedOutput(); err == nil ||
		!strings.Contains(string(out), "no lab is running in "+empty+": start one with metro lab up --dir "+empty) {
		t.Errorf("status of no lab: %v\n%s", err, out)
	}
	if out, err := exec.Command(metroBin, "lab", "up", "--dir", p.dir).CombinedOutput(); err == nil ||
		!strings.Contains(string(out), "a lab is already running in "+p.dir) {
		t.Errorf("a second lab in the same directory: %v\n%s", err, out)
	}

	// Ctrl-C stops the lab and every process of it.
	st = p.status()
	if err := p.cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-p.done:
		if err != nil {
			t.Fatalf("metro lab up ended with %v", err)
		}
	case <-time.After(time.Minute):
		t.Fatal("metro lab up did not stop on Ctrl-C")
	}
	for _, a := range st.Arrays {
		if !gone(a.PID) {
			t.Errorf("%s (pid %d) outlives the lab", a.Name, a.PID)
		}
	}
	if _, err := os.Stat(filepath.Join(p.dir, lab.SocketName)); !os.IsNotExist(err) {
		t.Errorf("the control socket outlives the lab: %v", err)
	}
	p.refused("no lab is running in "+p.dir, "status")
}
