package mediator_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/metro-storage/metro/internal/fileperm"
	"github.com/metro-storage/metro/internal/logtest"
	"github.com/metro-storage/metro/internal/mediator"
	"github.com/metro-storage/metro/internal/mediator/backendtest"
)

// testMediator is a mediator served over TLS on loopback whose process
// can be "restarted" on another copy of its data directory: the listener
// and certificate stay, the backend and server are replaced.
type testMediator struct {
	t       testing.TB
	url, ca string
	log     *logtest.Buffer
	h       atomic.Pointer[mediator.Server]
	b       *mediator.FileBackend
}

func startMediator(t testing.TB, dir string) *testMediator {
	t.Helper()
	m := &testMediator{t: t}
	m.start(dir)
	m.url, m.ca = serveTLS(t, t.TempDir(), http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		m.h.Load().ServeHTTP(w, r)
	}), mediator.Limits{})
	t.Cleanup(func() { m.b.Close() })
	return m
}

// start opens the state in dir and serves it (a start of the mediator).
func (m *testMediator) start(dir string) {
	m.t.Helper()
	if m.b != nil {
		m.b.Close()
	}
	b, err := mediator.OpenFile(dir, mediator.FileOptions{})
	if err != nil {
		m.t.Fatal(err)
	}
	m.log = &logtest.Buffer{}
	s, err := mediator.NewServer(mediator.ServerConfig{Backend: b, Keys: []string{key1}, Logger: m.log.Logger()})
	if err != nil {
		m.t.Fatal(err)
	}
	m.b = b
	m.h.Store(s)
}

// stop closes the state (the mediator's process is gone); requests fail.
func (m *testMediator) stop() { m.b.Close() }

// client returns a client of array for the mediator, remembering in dir.
func (m *testMediator) client(t *testing.T, array, dir, key string) *mediator.Client {
	t.Helper()
	ca, err := os.ReadFile(m.ca)
	if err != nil {
		t.Fatal(err)
	}
	seen := ""
	if dir != "" {
		seen = filepath.Join(dir, "mediator-seen.json")
	}
	c, err := mediator.NewClient(mediator.ClientOptions{ArrayID: array, SeenFile: seen},
		mediator.ClientConfig{URL: m.url, AuthKey: key, CA: ca})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func online(t *testing.T, c *mediator.Client) mediator.Status {
	t.Helper()
	st := c.Heartbeat(context.Background())
	if st.State != mediator.StateOnline {
		t.Fatalf("heartbeat: %+v, want online", st)
	}
	return st
}

func mustElect(t *testing.T, c *mediator.Client, pod string, epoch uint64) mediator.ElectResult {
	t.Helper()
	res, err := c.Elect(context.Background(), pod, epoch)
	if err != nil {
		t.Fatalf("elect %s at %d: %v", pod, epoch, err)
	}
	return res
}

// TestClientOverTLS: heartbeats and the race between two arrays through
// a real mediator over TLS.
func TestClientOverTLS(t *testing.T) {
	m := startMediator(t, t.TempDir())
	a := m.client(t, "array-a", t.TempDir(), key1)
	b := m.client(t, "array-b", t.TempDir(), key1)
	st := online(t, a)
	if st.Generation == 0 || st.RTT <= 0 || len(st.ID) != 32 || st.URL != m.url {
		t.Fatalf("status %+v", st)
	}
	if r := mustElect(t, a, "pod1", 1); !r.Won || r.Epoch != 2 || r.Winner != "array-a" {
		t.Fatalf("a: %+v", r)
	}
	if r := mustElect(t, b, "pod1", 1); r.Won || r.Winner != "array-a" {
		t.Fatalf("b: %+v", r)
	}
	if r := mustElect(t, a, "pod1", 1); !r.Won {
		t.Fatalf("a's retry: %+v", r)
	}
	if r := mustElect(t, b, "pod1", 2); !r.Won || r.Epoch != 3 {
		t.Fatalf("b at the next epoch: %+v", r)
	}
	if st := b.Status(); st.State != mediator.StateOnline || st.Generation <= online(t, a).Generation-mediator.ChangeStep {
		t.Fatalf("b after electing: %+v", st)
	}
}

// TestClientConcurrentRace: two arrays race for many pods at once, round
// after round, through the real server over TLS: exactly one wins each
// pod at each epoch, and both agree which.
func TestClientConcurrentRace(t *testing.T) {
	m := startMediator(t, t.TempDir())
	clients := []*mediator.Client{m.client(t, "array-a", t.TempDir(), key1), m.client(t, "array-b", t.TempDir(), key1)}
	rounds, pods := 100, 8
	if testing.Short() {
		rounds = 20
	}
	wins := map[string]int{}
	for round := range rounds {
		epoch := uint64(round + 1)
		results := make([][2]mediator.ElectResult, pods)
		var wg sync.WaitGroup
		errs := make(chan error, 2*pods)
		for p := range pods {
			for i, c := range clients {
				wg.Go(func() {
					r, err := c.Elect(context.Background(), fmt.Sprintf("pod%d", p), epoch)
					if err != nil {
						errs <- err
					}
					results[p][i] = r
				})
			}
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatalf("round %d: %v", round, err)
		}
		for p, r := range results {
			if r[0].Won == r[1].Won || r[0].Winner != r[1].Winner || r[0].Epoch != epoch+1 || r[1].Epoch != epoch+1 {
				t.Fatalf("round %d pod%d: %+v", round, p, r)
			}
			wins[r[0].Winner]++
		}
	}
	for _, a := range []string{"array-a", "array-b"} {
		if wins[a] == 0 {
			t.Fatalf("%s never won in %d races: %v", a, rounds*pods, wins)
		}
	}
}

// TestClientWrongKey: a wrong key leaves the mediator unreachable with
// what to do; the mediator logs the refusal without the key.
func TestClientWrongKey(t *testing.T) {
	m := startMediator(t, t.TempDir())
	c := m.client(t, "array-a", "", key2)
	st := c.Heartbeat(context.Background())
	if st.State != mediator.StateUnreachable || !strings.Contains(st.Err, "refused this array's auth key") {
		t.Fatalf("%+v", st)
	}
	var se *mediator.StatusError
	if _, err := c.Elect(context.Background(), "pod1", 1); !errors.As(err, &se) || se.Code != 401 {
		t.Fatalf("elect: %v", err)
	}
	if log := m.log.String(); !strings.Contains(log, "wrong auth key") || strings.Contains(log, key2) {
		t.Fatalf("mediator log:\n%s", log)
	}
}

// copyDir copies a mediator's data directory (as a backup would).
func copyDir(t *testing.T, from, to string) {
	t.Helper()
	if out, err := exec.Command("cp", "-a", from, to).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v: %s", err, out)
	}
}

// TestClientRolledBack: a mediator restarted from an older copy of its
// data directory is "rolled back" for the arrays that saw more (also
// after they restart, also once other arrays' races have taken it past
// what they saw), they do not race through it, and they accept it again
// once an operator resets its generation above what they saw.
func TestClientRolledBack(t *testing.T) {
	root := t.TempDir()
	dir, backup := filepath.Join(root, "med"), filepath.Join(root, "backup")
	m := startMediator(t, dir)
	arrDir := t.TempDir()
	a := m.client(t, "array-a", arrDir, key1)
	online(t, a)
	mustElect(t, a, "pod1", 1)
	m.stop()
	copyDir(t, dir, backup)
	m.start(dir)
	// One change after the copy is enough to tell.
	mustElect(t, a, "pod1", 2)
	seen := online(t, a).Generation
	m.stop()
	m.start(backup)
	st := a.Heartbeat(context.Background())
	if st.State != mediator.StateRolledBack || !strings.Contains(st.Err, "reset-generation") || !strings.Contains(st.Err, fmt.Sprint(seen)) {
		t.Fatalf("after restoring the copy: %+v", st)
	}
	before, _ := m.b.Info(context.Background())
	if _, err := a.Elect(context.Background(), "pod2", 1); !errors.Is(err, mediator.ErrRolledBack) {
		t.Fatalf("elect through a rolled back mediator: %v", err)
	}
	if after, _ := m.b.Info(context.Background()); after.Pods != before.Pods {
		t.Fatal("the array raced through a rolled back mediator")
	}
	// The array restarts: it still knows.
	a = m.client(t, "array-a", arrDir, key1)
	if st := a.Heartbeat(context.Background()); st.State != mediator.StateRolledBack {
		t.Fatalf("after the array restarts: %+v", st)
	}
	// Another array's races take the mediator past what a saw: a still
	// does not trust it.
	other := m.client(t, "array-c", t.TempDir(), key1)
	for e := uint64(1); e < seen; e++ {
		mustElect(t, other, "other-pod", e)
	}
	if g := online(t, other).Generation; g <= seen {
		t.Fatalf("the other array's races took the generation only to %d", g)
	}
	if st := a.Heartbeat(context.Background()); st.State != mediator.StateRolledBack {
		t.Fatalf("once the generation grew past %d again: %+v", seen, st)
	}
	// The operator resets it above what a saw.
	m.stop()
	if _, _, err := mediator.ResetGeneration(backup, seen); err != nil {
		t.Fatal(err)
	}
	m.start(backup)
	online(t, a)
	if r := mustElect(t, a, "pod2", 1); !r.Won {
		t.Fatalf("after the reset: %+v", r)
	}
	if open, err := fileperm.Open(arrDir); err != nil || len(open) > 0 {
		t.Fatalf("the array's memory is open to others: %v %v", open, err)
	}
}

// TestClientReplaced: a mediator rebuilt from nothing at the same URL (a
// new id) is not trusted until the array is configured with it again.
func TestClientReplaced(t *testing.T) {
	m := startMediator(t, t.TempDir())
	a := m.client(t, "array-a", t.TempDir(), key1)
	online(t, a)
	mustElect(t, a, "pod1", 1)
	m.start(t.TempDir())
	st := a.Heartbeat(context.Background())
	if st.State != mediator.StateRolledBack || !strings.Contains(st.Err, "rebuilt or replaced") {
		t.Fatalf("%+v", st)
	}
	if _, err := a.Elect(context.Background(), "pod1", 1); !errors.Is(err, mediator.ErrRolledBack) {
		t.Fatalf("elect: %v", err)
	}
	ca, _ := os.ReadFile(m.ca)
	if err := a.Reconfigure(mediator.ClientConfig{URL: m.url, AuthKey: key1, CA: ca}); err != nil {
		t.Fatal(err)
	}
	online(t, a)
}

// TestClientNotConfigured: a nil client, or one without a URL, is "not
// configured" and does not elect; configured later, it goes online.
func TestClientNotConfigured(t *testing.T) {
	var nilClient *mediator.Client
	if st := nilClient.Status(); st.State != mediator.StateNotConfigured {
		t.Fatalf("nil: %+v", st)
	}
	if _, err := nilClient.Elect(context.Background(), "p", 1); !errors.Is(err, mediator.ErrNotConfigured) {
		t.Fatalf("nil elect: %v", err)
	}
	c, err := mediator.NewClient(mediator.ClientOptions{ArrayID: "array-a"}, mediator.ClientConfig{})
	if err != nil {
		t.Fatal(err)
	}
	if st := c.Heartbeat(context.Background()); st.State != mediator.StateNotConfigured {
		t.Fatalf("unconfigured: %+v", st)
	}
	if _, err := c.Elect(context.Background(), "p", 1); !errors.Is(err, mediator.ErrNotConfigured) {
		t.Fatalf("unconfigured elect: %v", err)
	}
	m := startMediator(t, t.TempDir())
	ca, _ := os.ReadFile(m.ca)
	changed := c.Changed()
	if err := c.Reconfigure(mediator.ClientConfig{URL: m.url, AuthKey: key1, CA: ca}); err != nil {
		t.Fatal(err)
	}
	<-changed // not configured -> unreachable (not contacted yet)
	if st := c.Status(); st.State != mediator.StateUnreachable {
		t.Fatalf("configured, before a heartbeat: %+v", st)
	}
	online(t, c)
}

// TestClientConfigChecks: what NewClient and Reconfigure refuse.
func TestClientConfigChecks(t *testing.T) {
	for _, tc := range []struct {
		cfg  mediator.ClientConfig
		want string
	}{
		{mediator.ClientConfig{URL: "http://10.0.0.1:9095", AuthKey: key1}, "https://"},
		{mediator.ClientConfig{URL: "https://u:p@10.0.0.1:9095", AuthKey: key1}, "https://"},
		{mediator.ClientConfig{URL: "https://10.0.0.1:9095/x", AuthKey: key1}, "https://"},
		{mediator.ClientConfig{URL: "https://10.0.0.1:9095", AuthKey: "short"}, "too weak"},
		{mediator.ClientConfig{URL: "https://10.0.0.1:9095", AuthKey: key1, CA: []byte("not pem")}, "no PEM"},
	} {
		if err := mediator.CheckConfig(tc.cfg); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v, want %q", tc.cfg.URL, err, tc.want)
		}
	}
	if err := mediator.CheckConfig(mediator.ClientConfig{URL: "https://med.example", AuthKey: key1}); err != nil {
		t.Errorf("a URL without a port: %v", err)
	}
	if _, err := mediator.NewClient(mediator.ClientOptions{ArrayID: ""}, mediator.ClientConfig{}); err == nil {
		t.Error("a client without an array id")
	}
	dir := t.TempDir()
	seen := filepath.Join(dir, "seen.json")
	if err := os.WriteFile(seen, []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := mediator.NewClient(mediator.ClientOptions{ArrayID: "a", SeenFile: seen}, mediator.ClientConfig{}); err == nil || !strings.Contains(err.Error(), "damaged") {
		t.Errorf("a damaged memory: %v", err)
	}
}

// handlerTransport answers requests with a handler, in memory; down makes
// every request fail as an unreachable mediator does.
type handlerTransport struct {
	h    http.Handler
	down atomic.Bool
	n    atomic.Int32 // requests answered
}

func (ht *handlerTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if ht.down.Load() {
		return nil, errors.New("connection refused")
	}
	ht.n.Add(1)
	rec := httptest.NewRecorder()
	ht.h.ServeHTTP(rec, req)
	return rec.Result(), nil
}

// TestClientHeartbeatLoop: Run heartbeats at once, then every interval;
// losing and regaining the mediator changes the state, which closes the
// Changed channel and sets Since; Reconfigure heartbeats at once with the
// new interval; Run returns when its context ends.
func TestClientHeartbeatLoop(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		mem, _ := backendtest.NewMemory(0).Open()
		s, err := mediator.NewServer(mediator.ServerConfig{Backend: mem, Keys: []string{key1}})
		if err != nil {
			t.Fatal(err)
		}
		ht := &handlerTransport{h: s}
		cfg := mediator.ClientConfig{URL: "https://mediator.test", AuthKey: key1}
		c, err := mediator.NewClient(mediator.ClientOptions{ArrayID: "array-a", Transport: ht}, cfg)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error)
		go func() { done <- c.Run(ctx) }()
		synctest.Wait()
		if st := c.Status(); st.State != mediator.StateOnline || ht.n.Load() != 1 || st.URL != "https://mediator.test:9095" {
			t.Fatalf("after start: %+v, %d heartbeats", st, ht.n.Load())
		}
		time.Sleep(mediator.DefaultHeartbeat)
		synctest.Wait()
		if n := ht.n.Load(); n != 2 {
			t.Fatalf("%d heartbeats after one interval", n)
		}
		changed := c.Changed()
		ht.down.Store(true)
		time.Sleep(mediator.DefaultHeartbeat)
		synctest.Wait()
		<-changed
		if st := c.Status(); st.State != mediator.StateUnreachable || !strings.Contains(st.Err, "connection refused") || !st.Since.Equal(time.Now()) {
			t.Fatalf("mediator down: %+v", st)
		}
		changed = c.Changed()
		ht.down.Store(false)
		time.Sleep(mediator.DefaultHeartbeat)
		synctest.Wait()
		<-changed
		if st := c.Status(); st.State != mediator.StateOnline {
			t.Fatalf("mediator back: %+v", st)
		}
		cfg.Heartbeat = time.Second
		if err := c.Reconfigure(cfg); err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		n := ht.n.Load()
		if st := c.Status(); st.State != mediator.StateOnline || n != 4 {
			t.Fatalf("after Reconfigure: %+v, %d heartbeats", st, n)
		}
		time.Sleep(3 * time.Second)
		synctest.Wait()
		if got := ht.n.Load() - n; got != 3 {
			t.Fatalf("%d heartbeats in 3 intervals of 1s", got)
		}
		cancel()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	})
}

// raceAll has every array of every pair race for each of the pair's pods
// at epoch, all at once, and checks that exactly one array of the pair
// wins each pod.
func raceAll(t testing.TB, pairs [][2]*mediator.Client, pods int, epoch uint64) {
	var wg sync.WaitGroup
	results := make([][][2]mediator.ElectResult, len(pairs))
	errs := make(chan error, len(pairs)*pods*2)
	for p, pair := range pairs {
		results[p] = make([][2]mediator.ElectResult, pods)
		for i := range pods {
			for side, c := range pair {
				wg.Go(func() {
					r, err := c.Elect(context.Background(), fmt.Sprintf("pair%d-pod%d", p, i), epoch)
					if err != nil {
						errs <- err
					}
					results[p][i][side] = r
				})
			}
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	for p, rs := range results {
		for i, r := range rs {
			if r[0].Won == r[1].Won || r[0].Winner != r[1].Winner || r[0].Epoch != epoch+1 {
				t.Fatalf("pair %d pod %d: %+v", p, i, r)
			}
		}
	}
}

func newPairs(t testing.TB, m *testMediator, n int) [][2]*mediator.Client {
	pairs := make([][2]*mediator.Client, n)
	for p := range pairs {
		for side := range 2 {
			ca, _ := os.ReadFile(m.ca)
			c, err := mediator.NewClient(mediator.ClientOptions{ArrayID: fmt.Sprintf("pair%d-array%d", p, side)},
				mediator.ClientConfig{URL: m.url, AuthKey: key1, CA: ca, Timeout: 30 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			pairs[p][side] = c
		}
	}
	return pairs
}

// TestManyPairs: one mediator serves 20 array pairs racing for 50 pods
// each, all at once (2000 elections over TLS, with the file backend):
// one winner per pod, every record kept.
func TestManyPairs(t *testing.T) {
	m := startMediator(t, t.TempDir())
	const npairs, pods = 20, 50
	pairs := newPairs(t, m, npairs)
	start := time.Now()
	raceAll(t, pairs, pods, 1)
	t.Logf("%d pairs raced for %d pods each (%d elections) in %v", npairs, pods, npairs*pods*2, time.Since(start))
	if info, _ := m.b.Info(context.Background()); info.Pods != npairs*pods {
		t.Fatalf("%d pods recorded, want %d", info.Pods, npairs*pods)
	}
}

// BenchmarkRace1000: one operation is a race of two arrays for 1000 pods
// at once (2000 elections over TLS, the file backend syncing its state).
func BenchmarkRace1000(b *testing.B) {
	m := startMediator(b, b.TempDir())
	pairs := newPairs(b, m, 1)
	epoch := uint64(1)
	for b.Loop() {
		raceAll(b, pairs, 1000, epoch)
		epoch++
	}
}
