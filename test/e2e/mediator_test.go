package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/metro-storage/metro/internal/api"
	"github.com/metro-storage/metro/internal/lab"
	"github.com/metro-storage/metro/internal/mediator"
)

// mediatorProc is a `metro mediator run` process.
type mediatorProc struct {
	t       *testing.T
	dir     string // data directory
	listen  string
	logFile string
	cmd     *exec.Cmd
	exited  chan struct{}
}

// startMediatorProc starts a mediator on a free loopback port with its
// state in dir, and waits until it answers.
func startMediatorProc(t *testing.T, dir string) *mediatorProc {
	t.Helper()
	m := &mediatorProc{t: t, dir: dir, listen: fmt.Sprintf("127.0.0.1:%d", freePort(t)), logFile: filepath.Join(t.TempDir(), "mediator.log")}
	m.start()
	t.Cleanup(func() {
		m.kill()
		if t.Failed() {
			log, _ := os.ReadFile(m.logFile)
			t.Logf("mediator log (tail):\n%s", tailString(string(log), 3000))
		}
	})
	return m
}

func (m *mediatorProc) url() string { return "https://" + m.listen }

// start starts the process on the data directory and waits until it
// answers a heartbeat with its key.
func (m *mediatorProc) start() {
	m.t.Helper()
	log, err := os.OpenFile(m.logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		m.t.Fatal(err)
	}
	defer log.Close()
	m.cmd = exec.Command(metroBin, "mediator", "run", "--listen", m.listen, "--data-dir", m.dir)
	m.cmd.Stdout, m.cmd.Stderr = log, log
	if err := m.cmd.Start(); err != nil {
		m.t.Fatal(err)
	}
	m.exited = make(chan struct{})
	cmd, exited := m.cmd, m.exited
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	deadline := time.Now().Add(30 * time.Second)
	for {
		// Both files there (each written whole, by a rename): the
		// mediator is about to listen.
		_, kerr := os.Stat(filepath.Join(m.dir, "authkey"))
		_, cerr := os.Stat(filepath.Join(m.dir, mediator.CertFile))
		if kerr == nil && cerr == nil {
			c := m.client(m.t, "probe", "")
			if c.Heartbeat(context.Background()).State == mediator.StateOnline {
				return
			}
		}
		select {
		case <-exited:
			m.t.Fatalf("the mediator exited at start")
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			m.t.Fatal("the mediator did not answer within 30s")
		}
	}
}

// kill kills the process with SIGKILL and waits for it.
func (m *mediatorProc) kill() {
	if m.cmd == nil {
		return
	}
	_ = m.cmd.Process.Signal(syscall.SIGKILL)
	<-m.exited
	m.cmd = nil
}

// stop stops the process with SIGTERM and waits for it.
func (m *mediatorProc) stop() {
	_ = m.cmd.Process.Signal(syscall.SIGTERM)
	<-m.exited
	m.cmd = nil
}

// backup copies the data directory of the stopped mediator to dir.
func (m *mediatorProc) backup(dir string) string {
	m.t.Helper()
	if out, err := exec.Command("cp", "-a", m.dir, dir).CombinedOutput(); err != nil {
		m.t.Fatalf("cp: %v %s", err, out)
	}
	return dir
}

// restartFrom kills the mediator, replaces its data directory with the
// copy in backup and starts it again.
func (m *mediatorProc) restartFrom(backup string) {
	m.t.Helper()
	m.kill()
	if err := os.RemoveAll(m.dir); err != nil {
		m.t.Fatal(err)
	}
	if err := os.Rename(backup, m.dir); err != nil {
		m.t.Fatal(err)
	}
	m.start()
}

// client returns a client of array for this mediator, remembering in
// seenDir ("" in memory).
func (m *mediatorProc) client(t *testing.T, array, seenDir string) *mediator.Client {
	t.Helper()
	key, err := mediator.ReadKeyFile(filepath.Join(m.dir, "authkey"))
	if err != nil {
		t.Fatal(err)
	}
	ca, err := os.ReadFile(filepath.Join(m.dir, mediator.CertFile))
	if err != nil {
		t.Fatal(err)
	}
	seen := ""
	if seenDir != "" {
		seen = filepath.Join(seenDir, "mediator-seen.json")
	}
	c, err := mediator.NewClient(mediator.ClientOptions{ArrayID: array, SeenFile: seen},
		mediator.ClientConfig{URL: m.url(), AuthKey: key, CA: ca, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestMediatorKill9 kills the mediator with SIGKILL while elections are
// in flight, as soon as some have been answered: after a restart every
// answered race is still recorded (the other array loses it, the winner's
// retry wins), and the generation is above every answer's.
func TestMediatorKill9(t *testing.T) {
	m := startMediatorProc(t, t.TempDir())
	a := m.client(t, "array-a", t.TempDir())
	b := m.client(t, "array-b", t.TempDir())
	const rounds, perRound, killAfter = 5, 40, 10
	for round := range rounds {
		type answer struct {
			pod string
			res mediator.ElectResult
		}
		answers := make(chan answer, perRound)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		var wg sync.WaitGroup
		for i := range perRound {
			wg.Go(func() {
				pod := fmt.Sprintf("r%d-pod%d", round, i)
				if res, err := a.Elect(ctx, pod, 1); err == nil {
					answers <- answer{pod, res}
				}
			})
		}
		// Kill as soon as killAfter answers are in.
		var got []answer
		for len(got) < killAfter {
			got = append(got, <-answers)
		}
		m.kill()
		cancel()
		wg.Wait()
		close(answers)
		for an := range answers {
			got = append(got, an)
		}
		m.start()
		for _, an := range got {
			if !an.res.Won || an.res.Epoch != 2 {
				t.Fatalf("round %d: %s: %+v", round, an.pod, an.res)
			}
			if r, err := b.Elect(context.Background(), an.pod, 1); err != nil || r.Won || r.Winner != "array-a" {
				t.Fatalf("round %d: %s won by array-a before the kill, after it array-b: %+v %v", round, an.pod, r, err)
			}
			if r, err := a.Elect(context.Background(), an.pod, 1); err != nil || !r.Won {
				t.Fatalf("round %d: %s: array-a's retry after the kill: %+v %v", round, an.pod, r, err)
			}
		}
		t.Logf("round %d: %d of %d elections answered before the kill -9, all recorded", round, len(got), perRound)
	}
	if st := a.Heartbeat(context.Background()); st.State != mediator.StateOnline {
		t.Fatalf("array-a after the restarts: %+v", st)
	}
}

// TestMediatorRestoredCopy starts the mediator from an older copy of its
// data directory: both arrays that used it report it rolled back and do
// not race through it, also after they restart; `metro mediator
// reset-generation` is refused while it runs and, once it is stopped,
// makes the arrays accept it again.
func TestMediatorRestoredCopy(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "mediator")
	m := startMediatorProc(t, dir)
	dirA, dirB := t.TempDir(), t.TempDir()
	a, b := m.client(t, "array-a", dirA), m.client(t, "array-b", dirB)
	for _, c := range []*mediator.Client{a, b} {
		if _, err := c.Elect(context.Background(), "pod1", 1); err != nil {
			t.Fatal(err)
		}
	}
	m.stop()
	backup := m.backup(filepath.Join(root, "backup"))
	m.start()
	if r, err := a.Elect(context.Background(), "pod1", 2); err != nil || !r.Won {
		t.Fatalf("%+v %v", r, err)
	}
	seenA, seenB := a.Heartbeat(context.Background()).Generation, b.Heartbeat(context.Background()).Generation
	m.restartFrom(backup)
	for name, c := range map[string]*mediator.Client{"array-a": a, "array-b": b} {
		st := c.Heartbeat(context.Background())
		if st.State != mediator.StateRolledBack || !strings.Contains(st.Err, "reset-generation") {
			t.Fatalf("%s: %+v", name, st)
		}
		if _, err := c.Elect(context.Background(), "pod1", 2); !errors.Is(err, mediator.ErrRolledBack) {
			t.Fatalf("%s raced through the restored copy: %v", name, err)
		}
	}
	// The arrays restart: they still know.
	a, b = m.client(t, "array-a", dirA), m.client(t, "array-b", dirB)
	if st := a.Heartbeat(context.Background()); st.State != mediator.StateRolledBack {
		t.Fatalf("array-a after its restart: %+v", st)
	}
	above := fmt.Sprint(max(seenA, seenB))
	out, err := exec.Command(metroBin, "mediator", "reset-generation", "--data-dir", dir, "--above", above).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "stop it first") {
		t.Fatalf("reset-generation of a running mediator: %v: %s", err, out)
	}
	m.stop()
	if out, err := exec.Command(metroBin, "mediator", "reset-generation", "--data-dir", dir, "--above", above).CombinedOutput(); err != nil {
		t.Fatalf("reset-generation: %v: %s", err, out)
	}
	m.start()
	for name, c := range map[string]*mediator.Client{"array-a": a, "array-b": b} {
		if st := c.Heartbeat(context.Background()); st.State != mediator.StateOnline {
			t.Fatalf("%s after the reset: %+v", name, st)
		}
	}
}

// TestMediatorBadFlags: the binary says what is wrong and exits non-zero.
func TestMediatorBadFlags(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"mediator", "run"}, "--data-dir is required"},
		{[]string{"mediator", "run", "--data-dir", t.TempDir(), "--listen", "nope"}, "give HOST:PORT"},
		{[]string{"mediator", "run", "--data-dir", t.TempDir(), "--wat"}, "unknown flag"},
		{[]string{"mediator", "reset-generation", "--data-dir", t.TempDir()}, "--above is required"},
	} {
		out, err := exec.Command(metroBin, tc.args...).CombinedOutput()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() == 0 || !strings.Contains(string(out), tc.want) {
			t.Errorf("metro %s: %v: %s", strings.Join(tc.args, " "), err, out)
		}
	}
}

// mediatorSeenBy returns the mediator as array a reports itself seeing
// it (metro array list --json).
func mediatorSeenBy(t *testing.T, l *lab.Lab, i int) api.MediatorInfo {
	t.Helper()
	a := l.Info.Arrays[i]
	var arrays []api.ArrayInfo
	if err := json.Unmarshal([]byte(cliOn(t, l, i, "array", "list", "--json")), &arrays); err != nil {
		t.Fatal(err)
	}
	for _, ai := range arrays {
		if ai.Name == a.Name && ai.Mediator != nil {
			return *ai.Mediator
		}
	}
	t.Fatalf("array list on %s does not show its mediator", a.Name)
	return api.MediatorInfo{}
}

// waitMediatorSeen waits (the arrays heartbeat every 5 s) until every
// array of the lab sees its mediator as ok says.
func waitMediatorSeen(t *testing.T, l *lab.Lab, what string, ok func(api.MediatorInfo) bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for i, a := range l.Info.Arrays {
		for {
			m := mediatorSeenBy(t, l, i)
			if ok(m) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s does not see the mediator %s after 30s: %+v", a.Name, what, m)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
}

// TestMediatorArrays configures both arrays of a pair with a mediator
// through `metro array setattr`, and follows what `metro array list`
// shows on each: online with its round trip; unreachable when the
// mediator is stopped; rolled back (with what to do) when it comes back
// from an older copy of its data directory.
func TestMediatorArrays(t *testing.T) {
	l := startLab(t, lab.Options{Initiators: []string{testInitiator}, Size: 16 << 20})
	root := t.TempDir()
	dir := filepath.Join(root, "mediator")
	m := startMediatorProc(t, dir)
	key, ca := filepath.Join(dir, "authkey"), filepath.Join(dir, mediator.CertFile)
	for i, a := range l.Info.Arrays {
		out := cliOn(t, l, i, "array", "setattr", "--mediator", m.url(), "--mediator-authkey-file", key, "--mediator-ca", ca)
		if k, _ := mediator.ReadKeyFile(key); strings.Contains(out, k) {
			t.Fatal("setattr printed the key")
		}
		if m := mediatorSeenBy(t, l, i); m.Status != mediator.StateOnline || m.RTTMillis <= 0 {
			t.Fatalf("%s after setattr: %+v", a.Name, m)
		}
		if table := cliOn(t, l, i, "array", "list"); !strings.Contains(table, "Mediator RTT") || !strings.Contains(table, "online") {
			t.Fatalf("array list on %s:\n%s", a.Name, table)
		}
	}
	m.stop()
	waitMediatorSeen(t, l, "unreachable", func(mi api.MediatorInfo) bool { return mi.Status == mediator.StateUnreachable })
	backup := m.backup(filepath.Join(root, "backup"))
	m.start()
	// A race recorded after the copy; both arrays see its generation.
	if _, err := m.client(t, "array-x", "").Elect(context.Background(), "pod-x", 1); err != nil {
		t.Fatal(err)
	}
	gen := m.client(t, "array-x", "").Heartbeat(context.Background()).Generation
	waitMediatorSeen(t, l, fmt.Sprintf("online at generation %d", gen), func(mi api.MediatorInfo) bool {
		return mi.Status == mediator.StateOnline && mi.Generation >= gen
	})
	m.restartFrom(backup)
	waitMediatorSeen(t, l, "rolled back", func(mi api.MediatorInfo) bool {
		return mi.Status == mediator.StateRolledBack && strings.Contains(mi.Error, "reset-generation")
	})
	if table := cliOn(t, l, 0, "array", "list"); !strings.Contains(table, "rolled back") || !strings.Contains(table, "reset-generation") {
		t.Fatalf("array list:\n%s", table)
	}
}
