package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/metro-storage/metro/internal/api"
	"github.com/metro-storage/metro/internal/catalog"
)

// memPersist keeps the configuration document in memory.
type memPersist struct {
	mu struct {
		sync.Mutex
		data []byte // the last saved document
	}
}

func (m *memPersist) Load() ([]byte, bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.mu.data, m.mu.data != nil, nil
}

func (m *memPersist) Save(d []byte) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.mu.data = append([]byte(nil), d...)
	return nil
}

// fakeArray is an api.Backend on a real catalog, without storage or
// iSCSI: every volume reports 4K used.
type fakeArray struct {
	cat *catalog.Catalog
	now time.Time
	mu  struct {
		sync.Mutex
		nextID   int                  // counter behind NewID
		mediator *api.MediatorSetting // the last SetMediator
	}
}

func newFakeArray(t *testing.T) *fakeArray {
	t.Helper()
	c, err := catalog.Open(&memPersist{})
	if err != nil {
		t.Fatal(err)
	}
	return &fakeArray{cat: c, now: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)}
}

func (f *fakeArray) Info() api.ArrayInfo {
	return api.ArrayInfo{Name: "array-a", ID: "00112233445566778899aabbccddeeff", Version: "test",
		Target: "iqn.2026-01.io.metro:array-a", Portals: []string{"127.0.0.1:3260"},
		Capacity: 100 << 30, Used: 1 << 30, Status: "connected", Time: f.now}
}
func (f *fakeArray) Peers() []api.ArrayInfo { return nil }
func (f *fakeArray) State() *catalog.State  { return f.cat.View() }
func (f *fakeArray) Apply(_ context.Context, op catalog.Op) error {
	return f.cat.Apply(op)
}
func (f *fakeArray) Eradicate(_ context.Context, vol string) error {
	return f.cat.Apply(catalog.EradicateVolume{Name: vol})
}
func (f *fakeArray) PodArrays(p *catalog.Pod) []api.PodArray {
	out := []api.PodArray{}
	for _, a := range p.Arrays {
		out = append(out, api.PodArray{Name: a.Name, ID: a.ID, Status: catalog.StatusOnline})
	}
	return out
}
func (f *fakeArray) VolumeUsed(*catalog.Volume) uint64 { return 4096 }
func (f *fakeArray) Sessions() []api.Session           { return nil }
func (f *fakeArray) EradicationWindow() time.Duration  { return 24 * time.Hour }
func (f *fakeArray) Now() time.Time                    { return f.now }
func (f *fakeArray) NewID() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.mu.nextID++
	return fmt.Sprintf("%032x", f.mu.nextID)
}

const testToken = "test-token-0123"

// cli runs metro commands against a fake array behind the real API
// server.
type cli struct {
	t   *testing.T
	url string
	arr *fakeArray
	// con is the console the commands run on: by default no terminal and
	// an empty standard input, whatever the test runs on.
	con *console
}

func newCLI(t *testing.T) *cli {
	t.Helper()
	t.Setenv("METRO_API", "")
	t.Setenv("METRO_TOKEN", "")
	t.Setenv("METRO_CA", "")
	arr := newFakeArray(t)
	srv := httptest.NewServer(api.NewServer(arr, testToken, nil))
	t.Cleanup(srv.Close)
	return &cli{t: t, url: srv.URL, arr: arr, con: &console{stdin: strings.NewReader("")}}
}

// exec runs metro with args and the given token, returning what it
// printed and its error.
func (c *cli) exec(token string, args ...string) (string, error) {
	c.t.Helper()
	return c.run(append([]string{"--api", c.url, "--token", token}, args...)...)
}

// run runs metro with exactly args (no --api, no --token) on a copy of
// the cli's console, returning what it printed and its error.
func (c *cli) run(args ...string) (string, error) {
	c.t.Helper()
	con := *c.con // a fresh one for each command
	root := newRootOn(&con)
	var out, errOut bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errOut)
	root.SetArgs(args)
	err := root.Execute()
	return out.String(), err
}

// ok runs a command that must succeed.
func (c *cli) ok(args ...string) string {
	c.t.Helper()
	out, err := c.exec(testToken, args...)
	if err != nil {
		c.t.Fatalf("metro %s: %v", strings.Join(args, " "), err)
	}
	return out
}

// fail runs a command that must fail with an error containing each of
// want.
func (c *cli) fail(args []string, want ...string) error {
	c.t.Helper()
	out, err := c.exec(testToken, args...)
	if err == nil {
		c.t.Fatalf("metro %s: succeeded, want an error; printed:\n%s", strings.Join(args, " "), out)
	}
	for _, w := range want {
		if !strings.Contains(err.Error(), w) {
			c.t.Errorf("metro %s: error %q does not mention %q", strings.Join(args, " "), err, w)
		}
	}
	return err
}

// jsonOf runs a command with --json and decodes its output into v.
func (c *cli) jsonOf(v any, args ...string) {
	c.t.Helper()
	out := c.ok(append([]string{"--json"}, args...)...)
	if err := json.Unmarshal([]byte(out), v); err != nil {
		c.t.Fatalf("metro --json %s: %v in\n%s", strings.Join(args, " "), err, out)
	}
}

// setup makes pod1, pod1::vol1 (1G) and host h1 connected at LUN 0.
func (c *cli) setup() {
	c.t.Helper()
	c.ok("pod", "create", "pod1")
	c.ok("vol", "create", "--size", "1G", "pod1::vol1")
	c.ok("host", "create", "--iqn", "iqn.2020-01.org.example:h1", "h1")
	c.ok("host", "connect", "--vol", "pod1::vol1", "--lun", "0", "h1")
}

func statusCode(err error) int {
	var se *api.StatusError
	if errors.As(err, &se) {
		return se.Code
	}
	return 0
}

func mustContain(t *testing.T, out string, want ...string) {
	t.Helper()
	for _, w := range want {
		if !strings.Contains(out, w) {
			t.Errorf("output does not contain %q:\n%s", w, out)
		}
	}
}

func TestPodCreateAndList(t *testing.T) {
	c := newCLI(t)
	if out := c.ok("--json", "pod", "list"); strings.TrimSpace(out) != "[]" {
		t.Fatalf("empty pod list --json = %q, want []", out)
	}
	out := c.ok("pod", "create", "pod1")
	mustContain(t, out, "Name", "Arrays", "Sequencer", "Epoch", "Volumes", "Provisioned", "Used", "pod1", "array-a:online")
	if n := strings.Count(strings.TrimSpace(out), "\n"); n != 1 {
		t.Errorf("create printed %d rows, want a header and one row:\n%s", n+1, out)
	}
	c.ok("vol", "create", "--size", "1G", "pod1::vol1")

	// The shape scripts and the lab rely on.
	var raw []map[string]any
	c.jsonOf(&raw, "pod", "list")
	if len(raw) != 1 || raw[0]["name"] != "pod1" {
		t.Fatalf("pod list --json: %v", raw)
	}
	arrays, ok := raw[0]["arrays"].([]any)
	if !ok || len(arrays) != 1 {
		t.Fatalf("pod list --json arrays: %v", raw[0]["arrays"])
	}
	a := arrays[0].(map[string]any)
	if a["name"] != "array-a" || a["status"] != "online" {
		t.Fatalf("pod list --json arrays[0] = %v, want name array-a, status online", a)
	}
	var pods []api.Pod
	c.jsonOf(&pods, "pod", "list", "pod1")
	if len(pods) != 1 || pods[0].Volumes != 1 || pods[0].Provisioned != 1<<30 {
		t.Fatalf("pod list pod1: %+v", pods)
	}

	out = c.ok("pod", "list")
	mustContain(t, out, "pod1", "array-a:online", "1G")
	c.fail([]string{"pod", "list", "nopod"}, "nopod", "not found")
	c.fail([]string{"pod", "create", "pod1"}, "already exists")
	c.fail([]string{"pod", "destroy", "pod1"})
	c.ok("vol", "destroy", "pod1::vol1")
	c.ok("vol", "eradicate", "pod1::vol1")
	out = c.ok("pod", "destroy", "pod1")
	mustContain(t, out, "Destroyed pod pod1")
	if out := c.ok("--json", "pod", "list"); strings.TrimSpace(out) != "[]" {
		t.Fatalf("pod list after destroy = %q", out)
	}
}

func TestPodSetattr(t *testing.T) {
	c := newCLI(t)
	c.ok("pod", "create", "pod1")
	var pods []api.Pod
	c.jsonOf(&pods, "pod", "list", "pod1")
	if p := pods[0]; p.FailoverPreference != "" || !p.AutoRecover {
		t.Fatalf("new pod: failover preference %q, auto recover %v; want none and true", p.FailoverPreference, p.AutoRecover)
	}
	var p api.Pod
	c.jsonOf(&p, "pod", "setattr", "--failover-preference", "array-a", "pod1")
	if p.FailoverPreference != "array-a" || !p.AutoRecover {
		t.Fatalf("failover preference = %q, auto recover %v", p.FailoverPreference, p.AutoRecover)
	}
	mustContain(t, c.ok("pod", "list"), "Failover Preference", "Auto Recover", "array-a", "true")
	c.jsonOf(&p, "pod", "setattr", "--auto-recover", "false", "pod1")
	if p.FailoverPreference != "array-a" || p.AutoRecover {
		t.Fatalf("after --auto-recover false: failover preference = %q, auto recover %v", p.FailoverPreference, p.AutoRecover)
	}
	c.jsonOf(&p, "pod", "setattr", "--failover-preference", "", "--auto-recover", "true", "pod1")
	if p.FailoverPreference != "" || !p.AutoRecover {
		t.Fatalf("not cleared: failover preference %q, auto recover %v", p.FailoverPreference, p.AutoRecover)
	}
	c.fail([]string{"pod", "setattr", "pod1"}, "nothing to change", "--failover-preference", "--auto-recover")
	c.fail([]string{"pod", "setattr", "--failover-preference", "array-z", "pod1"}, "array-z", "not one of the pod's arrays (array-a)")
	c.fail([]string{"pod", "setattr", "--auto-recover", "maybe", "pod1"}, "maybe", "true or false")
}

func TestVolumeLifecycle(t *testing.T) {
	c := newCLI(t)
	c.ok("pod", "create", "pod1")
	out := c.ok("vol", "create", "--size", "1G", "pod1::vol1")
	mustContain(t, out, "Name", "Size", "Used", "Serial", "Created", "pod1::vol1", "1G", "4K")

	var vols []api.Volume
	c.jsonOf(&vols, "vol", "list")
	if len(vols) != 1 || vols[0].Name != "pod1::vol1" || vols[0].Size != 1<<30 || vols[0].Serial == "" {
		t.Fatalf("vol list --json: %+v", vols)
	}

	var v api.Volume
	c.jsonOf(&v, "vol", "resize", "--size", "2G", "pod1::vol1")
	if v.Size != 2<<30 {
		t.Fatalf("resize to 2G: size %d", v.Size)
	}
	c.jsonOf(&v, "vol", "resize", "--size", "+512M", "pod1::vol1")
	if v.Size != 2<<30+512<<20 {
		t.Fatalf("resize by +512M: size %d", v.Size)
	}
	c.fail([]string{"vol", "resize", "--size", "1G", "pod1::vol1"}, "only grow")
	c.fail([]string{"vol", "resize", "pod1::vol1"}, "--size is required")

	c.ok("pod", "create", "pod2")
	c.ok("vol", "create", "--size", "4K", "pod2::small")
	c.jsonOf(&vols, "vol", "list", "--pod", "pod2")
	if len(vols) != 1 || vols[0].Name != "pod2::small" {
		t.Fatalf("vol list --pod pod2: %+v", vols)
	}
	c.fail([]string{"vol", "list", "--pod", "nopod"}, "nopod")

	out = c.ok("vol", "destroy", "pod1::vol1")
	mustContain(t, out, "Destroyed volume pod1::vol1", "metro vol recover pod1::vol1")
	c.jsonOf(&vols, "vol", "list")
	if len(vols) != 1 {
		t.Fatalf("destroyed volume still listed: %+v", vols)
	}
	out = c.ok("vol", "list", "--pending")
	mustContain(t, out, "Destroyed", "Eradicate-at", "pod1::vol1")
	c.jsonOf(&vols, "vol", "list", "--pending", "pod1::vol1")
	if len(vols) != 1 || vols[0].Destroyed == nil || vols[0].EradicateAt == nil ||
		!vols[0].EradicateAt.Equal(vols[0].Destroyed.Add(24*time.Hour)) {
		t.Fatalf("pending volume: %+v", vols)
	}
	c.fail([]string{"vol", "list", "pod1::vol1"}, "--pending")
	c.ok("vol", "recover", "pod1::vol1")
	c.fail([]string{"vol", "eradicate", "pod1::vol1"}, "not destroyed")
	c.ok("vol", "destroy", "pod1::vol1")
	out = c.ok("vol", "eradicate", "pod1::vol1")
	mustContain(t, out, "Eradicated volume pod1::vol1")
	c.jsonOf(&vols, "vol", "list", "--pending")
	if len(vols) != 0 {
		t.Fatalf("eradicated volume still pending: %+v", vols)
	}
}

func TestVolumeErrors(t *testing.T) {
	c := newCLI(t)
	c.ok("pod", "create", "pod1")
	cases := []struct {
		args []string
		want []string
	}{
		{[]string{"vol", "create", "--size", "1X", "pod1::v"}, []string{"--size", "1X"}},
		{[]string{"vol", "create", "--size", "0", "pod1::v"}, []string{"--size", "above zero"}},
		{[]string{"vol", "create", "--size", "1000", "pod1::v"}, []string{"4K"}},
		{[]string{"vol", "create", "pod1::v"}, []string{"--size is required", "e.g. metro vol create --size 10G"}},
		{[]string{"vol", "create", "--size", "1G"}, []string{"missing the volume name POD::NAME"}},
		{[]string{"vol", "create", "--size", "1G", "a::b", "c::d"}, []string{"too many arguments"}},
		{[]string{"vol", "create", "--size", "1G", "novolname"}, []string{"POD::NAME"}},
		{[]string{"vol", "create", "--size", "1G", "nopod::v"}, []string{"metro pod create nopod"}},
		{[]string{"vol", "resize", "--size", "2G", "pod1::nope"}, []string{"pod1::nope", "not found"}},
		{[]string{"vol", "destroy", "pod1::nope"}, []string{"not found"}},
		{[]string{"vol", "recover", "pod1::nope"}, []string{"not found"}},
		{[]string{"vol", "create", "--bogus", "pod1::v"}, []string{"unknown flag: --bogus", "metro vol create --help"}},
		{[]string{"vol", "frobnicate"}, []string{"unknown command", "frobnicate"}},
		{[]string{"pod", "create"}, []string{"missing the name of the pod", "metro pod create pod1"}},
		{[]string{"array", "list", "extra"}, []string{"takes no arguments"}},
	}
	for _, tc := range cases {
		c.fail(tc.args, tc.want...)
	}
}

func TestDestroyConnectedVolume(t *testing.T) {
	c := newCLI(t)
	c.setup()
	err := c.fail([]string{"vol", "destroy", "pod1::vol1"}, "connected", "--force")
	if statusCode(err) != 409 {
		t.Fatalf("destroy of a connected volume: %v (code %d), want 409", err, statusCode(err))
	}
	var v api.Volume
	c.jsonOf(&v, "vol", "destroy", "--force", "pod1::vol1")
	if v.Destroyed == nil || len(v.Connections) != 0 {
		t.Fatalf("forced destroy: %+v", v)
	}
	var hosts []api.Host
	c.jsonOf(&hosts, "host", "list")
	if len(hosts) != 1 || len(hosts[0].Connections) != 0 {
		t.Fatalf("host still connected after forced destroy: %+v", hosts)
	}
}

func TestHostAndConnections(t *testing.T) {
	c := newCLI(t)
	c.ok("pod", "create", "pod1")
	c.ok("vol", "create", "--size", "1G", "pod1::vol1")
	c.ok("vol", "create", "--size", "1G", "pod1::vol2")
	const secret, tsecret = "host-secret-123456", "target-secret-654321"
	out := c.ok("host", "create", "--iqn", "iqn.2020-01.org.example:h1", "--iqn", "iqn.2020-01.org.example:h1b",
		"--chap-user", "hu", "--chap-secret", secret, "--target-chap-user", "tu", "--target-chap-secret", tsecret,
		"--preferred-array", "array-a", "h1")
	mustContain(t, out, "Name", "IQNs", "h1", "iqn.2020-01.org.example:h1, iqn.2020-01.org.example:h1b", "hu", "tu", "array-a")
	out = c.ok("host", "connect", "--vol", "pod1::vol1", "h1")
	mustContain(t, out, "Name", "Vol", "LUN", "h1", "pod1::vol1", "0")
	var conn api.Connection
	c.jsonOf(&conn, "host", "connect", "--vol", "pod1::vol2", "--lun", "7", "h1")
	if conn.LUN == nil || *conn.LUN != 7 || conn.Host != "h1" || conn.Volume != "pod1::vol2" {
		t.Fatalf("connect --lun 7: %+v", conn)
	}
	c.fail([]string{"host", "connect", "--vol", "pod1::vol1", "--lun", "3", "h1"}, "already")
	c.fail([]string{"host", "connect", "h1"}, "--vol is required")
	c.fail([]string{"host", "connect", "--vol", "vol1", "h1"}, "--vol", "POD::NAME")
	c.fail([]string{"host", "connect", "--vol", "pod1::nope", "h1"}, "not found")
	c.fail([]string{"host", "connect", "--vol", "pod1::vol1", "--lun", "-1", "h1"}, "--lun")

	out = c.ok("host", "list")
	mustContain(t, out, "pod1::vol1@0", "pod1::vol2@7")
	for _, all := range []string{out, c.ok("--json", "host", "list"), c.ok("--json", "host", "list", "h1")} {
		if strings.Contains(all, secret) || strings.Contains(all, tsecret) {
			t.Fatalf("a CHAP secret was printed:\n%s", all)
		}
	}
	var hosts []api.Host
	c.jsonOf(&hosts, "host", "list", "h1")
	if len(hosts) != 1 || len(hosts[0].IQNs) != 2 || hosts[0].CHAPUser != "hu" || len(hosts[0].Connections) != 2 {
		t.Fatalf("host list h1: %+v", hosts)
	}
	c.fail([]string{"host", "list", "nohost"}, "not found")

	// setattr
	var h api.Host
	c.jsonOf(&h, "host", "setattr", "--remiqn", "iqn.2020-01.org.example:h1b", "--addiqn", "iqn.2020-01.org.example:h1c", "h1")
	if strings.Join(h.IQNs, " ") != "iqn.2020-01.org.example:h1 iqn.2020-01.org.example:h1c" {
		t.Fatalf("setattr iqns: %v", h.IQNs)
	}
	c.jsonOf(&h, "host", "setattr", "--preferred-array", "", "h1")
	if len(h.PreferredArrays) != 0 {
		t.Fatalf("preferred arrays not cleared: %v", h.PreferredArrays)
	}
	h = api.Host{} // absent (empty) fields must not keep old values
	c.jsonOf(&h, "host", "setattr", "--target-chap-user", "", "--target-chap-secret", "", "h1")
	if h.TargetCHAPUser != "" || h.CHAPUser != "hu" {
		t.Fatalf("target CHAP not cleared: %+v", h)
	}
	c.fail([]string{"host", "setattr", "h1"}, "nothing to change")
	c.fail([]string{"host", "setattr", "--chap-user", "x", "h1"}, "--chap-user needs its secret", "--chap-secret-file")
	c.fail([]string{"host", "setattr", "--chap-secret", "0123456789abcdef", "h1"}, "--chap-secret needs --chap-user")
	c.fail([]string{"host", "setattr", "--preferred-array", "array-z", "h1"}, "array-z")
	c.fail([]string{"host", "create", "--iqn", "not-an-iqn", "h2"}, "not-an-iqn")
	c.fail([]string{"host", "create", "--iqn", "iqn.2020-01.org.example:h1", "h2"}, "already belongs to host h1")

	// delete and disconnect
	c.fail([]string{"host", "delete", "h1"}, "connection")
	out = c.ok("host", "disconnect", "--vol", "pod1::vol1", "h1")
	mustContain(t, out, "Disconnected volume pod1::vol1 from host h1")
	c.ok("host", "disconnect", "--vol", "pod1::vol2", "h1")
	c.fail([]string{"host", "disconnect", "--vol", "pod1::vol2", "h1"}, "not found")
	out = c.ok("host", "delete", "h1")
	mustContain(t, out, "Deleted host h1")
	c.fail([]string{"host", "delete", "h1"}, "not found")
	c.ok("host", "create", "h9")
	if out := c.ok("--json", "host", "delete", "h9"); out != "" {
		t.Fatalf("host delete --json printed %q, want nothing", out)
	}
}

func TestHostGroup(t *testing.T) {
	c := newCLI(t)
	c.setup()
	c.ok("host", "create", "--iqn", "iqn.2020-01.org.example:h2", "h2")
	c.ok("host", "create", "h3")
	out := c.ok("hgroup", "create", "--hostlist", "h1,h2", "g1")
	mustContain(t, out, "Name", "Hosts", "Connections", "g1", "h1, h2")
	var g api.HostGroup
	// h1 already sees vol1 at LUN 0: the group cannot show it again.
	c.fail([]string{"hgroup", "connect", "--vol", "pod1::vol1", "g1"}, "two LUNs")
	c.ok("vol", "create", "--size", "1G", "pod1::shared")
	var conn api.Connection
	c.jsonOf(&conn, "hgroup", "connect", "--vol", "pod1::shared", "g1")
	if conn.LUN == nil || *conn.LUN != 1 || conn.HostGroup != "g1" {
		// LUN 0 is taken on h1 by its own connection.
		t.Fatalf("hgroup connect: %+v", conn)
	}
	out = c.ok("hgroup", "list")
	mustContain(t, out, "g1", "h1, h2", "pod1::shared@1")
	out = c.ok("host", "list", "h2")
	mustContain(t, out, "pod1::shared@1(g1)")
	c.jsonOf(&g, "hgroup", "setattr", "--addhost", "h3", "--remhost", "h1", "g1")
	if strings.Join(g.Hosts, ",") != "h2,h3" {
		t.Fatalf("setattr hosts: %v", g.Hosts)
	}
	c.fail([]string{"hgroup", "setattr", "g1"}, "nothing to change")
	c.fail([]string{"hgroup", "setattr", "--addhost", "nohost", "g1"}, "nohost")
	c.fail([]string{"hgroup", "delete", "g1"}, "connections")
	out = c.ok("hgroup", "disconnect", "--vol", "pod1::shared", "g1")
	mustContain(t, out, "Disconnected volume pod1::shared from host group g1")
	c.ok("hgroup", "delete", "g1")
	var groups []api.HostGroup
	c.jsonOf(&groups, "hgroup", "list")
	if groups == nil || len(groups) != 0 {
		t.Fatalf("hgroup list after delete: %+v", groups)
	}
}

func TestArrayList(t *testing.T) {
	c := newCLI(t)
	out := c.ok("array", "list")
	mustContain(t, out, "Name", "ID", "Status", "Target", "Portals", "Capacity", "Used",
		"array-a", "connected", "iqn.2026-01.io.metro:array-a", "127.0.0.1:3260", "100G", "1G (1%)")
	var arrays []api.ArrayInfo
	c.jsonOf(&arrays, "array", "list")
	if len(arrays) != 1 || arrays[0].Name != "array-a" {
		t.Fatalf("array list --json: %+v", arrays)
	}
}

func TestAuthAndConnectionErrors(t *testing.T) {
	c := newCLI(t)
	_, err := c.exec("wrong-token", "pod", "list")
	if err == nil || !strings.Contains(err.Error(), "token") || statusCode(err) != 401 {
		t.Fatalf("wrong token: %v (code %d), want a 401 mentioning the token", err, statusCode(err))
	}
	_, err = c.exec("", "vol", "list")
	if err == nil || !strings.Contains(err.Error(), "token") {
		t.Fatalf("no token: %v", err)
	}

	root := newRoot()
	root.SetOut(&bytes.Buffer{})
	root.SetArgs([]string{"pod", "list"})
	if err := root.Execute(); err == nil || !strings.Contains(err.Error(), "--api") {
		t.Fatalf("no --api: %v", err)
	}
	root = newRoot()
	root.SetOut(&bytes.Buffer{})
	root.SetArgs([]string{"--api", "ftp://x", "pod", "list"})
	if err := root.Execute(); err == nil || !strings.Contains(err.Error(), "http(s)://") {
		t.Fatalf("bad --api: %v", err)
	}
}

func TestNounWithoutVerbPrintsHelp(t *testing.T) {
	c := newCLI(t)
	out := c.ok("vol")
	mustContain(t, out, "create", "resize", "eradicate")
}
