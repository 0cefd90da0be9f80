package lab

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/metro-storage/metro/internal/api"
	"github.com/metro-storage/metro/internal/fileperm"
	"github.com/metro-storage/metro/internal/testbin"
)

var metroBin string

func TestMain(m *testing.M) {
	os.Exit(testbin.Run(m, &metroBin))
}

// TestUpWhenAPortIsTaken hands the first array a port that another
// process holds (as when two labs start at once): the array stops at
// once, and the lab starts it again on other ports.
func TestUpWhenAPortIsTaken(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	takenPort := taken.Addr().(*net.TCPAddr).Port
	free, calls := freePort, 0
	freePort = func() (int, error) {
		calls++
		if calls == 2 { // array-a's iSCSI portal
			return takenPort, nil
		}
		return free()
	}
	defer func() { freePort = free }()

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	l, err := Up(ctx, Options{Dir: t.TempDir(), Arrays: 1, Binary: metroBin})
	if err != nil {
		t.Fatalf("lab up with a taken port: %v", err)
	}
	defer l.Stop()
	if calls < 5 {
		t.Fatalf("%d ports picked: the array was not given fresh ones", calls)
	}
	ai := l.Info.Arrays[0]
	if ai.Portal == fmt.Sprintf("127.0.0.1:%d", takenPort) {
		t.Fatalf("the array's portal is the taken port %s", ai.Portal)
	}
	c, err := l.Client(0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Array(ctx); err != nil {
		t.Fatalf("the restarted array does not answer: %v", err)
	}
	if conn, err := net.Dial("tcp", ai.Portal); err != nil {
		t.Fatalf("the array's portal %s does not accept: %v", ai.Portal, err)
	} else {
		conn.Close()
	}
}

// TestUpFilesArePrivate starts a one-array lab (a `metro array run`
// process) in a directory an older lab left open to others, and checks
// that everything the lab and the array made in it is its user's only:
// directories 0700, files 0600 (the store's own files are the store's
// to check); that the
// configuration holds no token; and that neither the token nor a CHAP
// secret reaches the array's log or an error, also when a change that
// carries the secret is refused.
func TestUpFilesArePrivate(t *testing.T) {
	dir := t.TempDir()
	old := filepath.Join(dir, "array-a")
	if err := os.Mkdir(old, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(old, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(old, "array.log"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(filepath.Join(old, "array.log"), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	l, err := Up(ctx, Options{Dir: dir, Arrays: 1, Binary: metroBin})
	if err != nil {
		t.Fatalf("lab up: %v", err)
	}
	defer l.Stop()

	ai := l.Info.Arrays[0]
	token, err := os.ReadFile(ai.TokenFile)
	if err != nil || strings.TrimSpace(string(token)) != ai.Token || len(ai.Token) < 32 {
		t.Fatalf("token file %s: %q, %v; lab.json has a token of %d characters", ai.TokenFile, token, err, len(ai.Token))
	}
	cfg, err := os.ReadFile(ai.Config)
	if err != nil || strings.Contains(string(cfg), ai.Token) || strings.Contains(string(cfg), "token") {
		t.Fatalf("the configuration names a token (%v):\n%s", err, cfg)
	}

	// CHAP secrets, set and refused, through the API.
	c, err := l.Client(0)
	if err != nil {
		t.Fatal(err)
	}
	const secret, refused = "lab-secret-0123", "lab-refused-4567"
	if _, err := c.CreateHost(ctx, api.HostCreate{Name: "h1", IQNs: []string{"iqn.2020-01.org.example:h1"},
		CHAPUser: "u", CHAPSecret: secret}); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []api.HostCreate{
		{Name: "h1", IQNs: []string{}, CHAPUser: "u", CHAPSecret: refused},                                                 // exists
		{Name: "h2", IQNs: []string{}, CHAPUser: "u", CHAPSecret: refused[:8]},                                             // too short
		{Name: "h3", IQNs: []string{}, CHAPSecret: refused},                                                                // no user
		{Name: "h4", IQNs: []string{}, CHAPUser: "u", CHAPSecret: refused, TargetCHAPUser: "t", TargetCHAPSecret: refused}, // same
	} {
		_, err := c.CreateHost(ctx, bad)
		if err == nil || strings.Contains(err.Error(), refused[:8]) {
			t.Errorf("create host %s: %v; want a refusal that does not show the secret", bad.Name, err)
		}
	}
	hosts, err := c.Hosts(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(hosts) == "" || strings.Contains(fmt.Sprintf("%+v", hosts), secret) {
		t.Fatalf("the host list shows a CHAP secret: %+v", hosts)
	}

	l.Stop() // the log is complete
	log, err := os.ReadFile(ai.Log)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{ai.Token, secret, refused[:8]} {
		if strings.Contains(string(log), s) {
			t.Errorf("the array's log shows a secret (%.4s...):\n%s", s, log)
		}
	}
	if !strings.Contains(string(log), "array running") {
		t.Errorf("the array's log is not the one of this run:\n%s", log)
	}

	open, err := fileperm.Open(dir) // the user's dir keeps its mode
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range open {
		t.Error(o)
	}
	for _, f := range []string{"lab.json", "array-a/config.yaml", "array-a/array.log", "array-a/data/api-token", "array-a/data/api-key.pem"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Errorf("the lab did not make %s: %v", f, err)
		}
	}
}

// TestPrivateWriters: the lab's directories and files are private also
// when an older lab left them open to others.
func TestPrivateWriters(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "array-a")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	f := filepath.Join(dir, "lab.json")
	if err := os.WriteFile(f, []byte("{}"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(f, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := mkdirPrivate(dir); err != nil {
		t.Fatal(err)
	}
	if err := writePrivate(f, []byte(`{"token":"x"}`)); err != nil {
		t.Fatal(err)
	}
	for p, want := range map[string]os.FileMode{dir: 0o700, f: 0o600} {
		if fi, err := os.Stat(p); err != nil || fi.Mode().Perm() != want {
			t.Errorf("%s: %v (%v), want %v", p, fi.Mode().Perm(), err, want)
		}
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Errorf("temporary files left behind: %v", entries)
	}
}
