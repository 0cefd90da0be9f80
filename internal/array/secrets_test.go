package array

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/metro-storage/metro/internal/api"
	"github.com/metro-storage/metro/internal/catalog"
	"github.com/metro-storage/metro/internal/fileperm"
)

// runUntilReady opens and runs an array with config c until its
// listeners are up, and stops it at the end of the test.
func runUntilReady(t *testing.T, c *Config, log *slog.Logger) *Array {
	t.Helper()
	a, stop := startArray(t, c, log)
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return a
}

// startArray opens and runs an array with config c until its listeners
// are up; stop ends Run and returns its error.
func startArray(t *testing.T, c *Config, log *slog.Logger) (a *Array, stop func() error) {
	t.Helper()
	a, err := Open(Options{Config: c, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan struct{})
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx, func() { close(ready) }) }()
	select {
	case <-ready:
	case err := <-done:
		cancel()
		t.Fatalf("Run ended before it was ready: %v", err)
	}
	return a, func() error {
		cancel()
		return <-done
	}
}

func loopbackConfig(t *testing.T, dir string) *Config {
	t.Helper()
	c := &Config{Name: "array-a", DataDir: dir}
	c.API.Listen = "127.0.0.1:0"
	c.ISCSI.Listen = []string{"127.0.0.1:0"}
	if err := c.setDefaults(); err != nil {
		t.Fatal(err)
	}
	return c
}

// TestDataDirModes: a new data directory is 0700 and every file the
// array writes in it (token, keys, certificates) 0600; an existing
// directory open to others is restricted at start, with a log line.
func TestDataDirModes(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	runUntilReady(t, loopbackConfig(t, dir), nil)
	checkModes(t, dir)
	for _, f := range []string{"api-token", "api-key.pem", "api-cert.pem", "link-key.pem", "link-cert.pem"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Errorf("the array did not write %s: %v", f, err)
		}
	}

	old := filepath.Join(t.TempDir(), "old")
	if err := os.Mkdir(old, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(old, 0o755); err != nil { // whatever the umask
		t.Fatal(err)
	}
	var logs bytes.Buffer
	runUntilReady(t, loopbackConfig(t, old), slog.New(slog.NewTextHandler(&logs, nil)))
	if fi, err := os.Stat(old); err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("an existing 0755 data directory is %v (%v) after start, want 0700", fi.Mode().Perm(), err)
	}
	if !strings.Contains(logs.String(), "data directory was open to other users") || !strings.Contains(logs.String(), "-rwxr-xr-x") {
		t.Fatalf("no log line about the restricted data directory:\n%s", logs.String())
	}
}

// checkModes fails the test for anything under dir open to others, the
// store's files included.
func checkModes(t *testing.T, dir string) {
	t.Helper()
	open, err := fileperm.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range open {
		t.Error(o)
	}
	if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != fileperm.Dir {
		t.Errorf("%s is %v (%v), want %v", dir, fi.Mode().Perm(), err, fileperm.Dir)
	}
}

// TestWriteFileSyncMode: a file written over an existing one, or over a
// temporary file a crash left behind with other permissions, is 0600.
func TestWriteFileSyncMode(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "api-token")
	for _, f := range []string{p, p + ".tmp"} {
		if err := os.WriteFile(f, []byte("old\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(f, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := writeFileSync(p, []byte("new\n"), fileMode); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(p); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("written file is %v (%v), want 0600", fi.Mode().Perm(), err)
	}
}

// TestTokenStrength: a configured token (or one written into the token
// file) of less than 128 bits is refused with a message that says how to
// make one and never shows it.
func TestTokenStrength(t *testing.T) {
	for tok, ok := range map[string]bool{
		"0123456789abcdef0123456789abcdef":        true,  // 32 hex digits: 128 bits
		"0123456789abcdef0123456789abcde":         false, // 31
		"AAECAwQFBgcICQoLDA0ODw":                  true,  // 22 base64url: 132 bits
		"AAECAwQFBgcICQoLDA0OD":                   false, // 21
		"012345678901234567890123456789012345678": true,  // 39 digits: 129.6 bits
		"01234567890123456789012345678901":        false, // 32 digits: 106 bits
		"pair-test-token":                         false,
		"xyz":                                     false,
		"has a space in it but is long enough":    false,
		"h\u00e9llo-0123456789-0123456789-012345": false,
		"Pa$$w0rd!Pa$$w0rd!Pa$$w0rd!":             true, // 27 printable: 177 bits
	} {
		c := &Config{Name: "array-a", DataDir: "/data"}
		c.API.Token = tok
		err := c.setDefaults()
		if (err == nil) != ok {
			t.Errorf("token %q: %v", tok, err)
		}
		if err != nil && (strings.Contains(err.Error(), tok) || !strings.Contains(err.Error(), "token")) {
			t.Errorf("token %q: error %q shows the token or does not name it", tok, err)
		}
	}

	// A short token put into the data directory's token file by hand.
	dir := filepath.Join(t.TempDir(), "data")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "api-token"), []byte("secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	a, err := Open(Options{Config: loopbackConfig(t, dir)})
	if err != nil {
		t.Fatal(err)
	}
	err = a.Run(context.Background(), nil)
	if err == nil || !strings.Contains(err.Error(), "too weak") || strings.Contains(err.Error(), "secret") {
		t.Fatalf("Run with a short token file: %v", err)
	}

	// The tokens the array makes are strong enough.
	if err := checkToken(newID()); err != nil {
		t.Fatalf("a generated token: %v", err)
	}
}

// TestPlainAPIOnlyOnLoopback: tls: false is refused on any address but
// loopback, with a message saying what to do.
func TestPlainAPIOnlyOnLoopback(t *testing.T) {
	for listen, ok := range map[string]bool{
		"127.0.0.1:8443": true, "[::1]:8443": true, "localhost:8443": true, "127.0.0.2:8443": true,
		"0.0.0.0:8443": false, ":8443": false, "10.0.1.5:8443": false, "[::]:8443": false, "array-a.example:8443": false,
	} {
		c := &Config{Name: "array-a", DataDir: "/data"}
		c.API.Listen = listen
		off := false
		c.API.TLS = &off
		err := c.setDefaults()
		if (err == nil) != ok {
			t.Errorf("tls: false on %s: %v", listen, err)
		}
		if err != nil && !strings.Contains(err.Error(), "loopback") {
			t.Errorf("tls: false on %s: %q does not say what to do", listen, err)
		}
		c = &Config{Name: "array-a", DataDir: "/data"}
		c.API.Listen = listen
		if err := c.setDefaults(); err != nil {
			t.Errorf("TLS on %s: %v", listen, err)
		}
	}
}

// TestConnectPeerNeedsHTTPS: the array refuses to pair with a peer whose
// API is not HTTPS, before sending it anything.
func TestConnectPeerNeedsHTTPS(t *testing.T) {
	a, err := Open(Options{Config: loopbackConfig(t, t.TempDir())})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	_, err = a.ConnectPeer(context.Background(), api.ArrayConnect{PeerURL: "http://127.0.0.1:1", Token: "0123456789abcdef0123456789abcdef"})
	if !errors.Is(err, catalog.ErrInvalid) || !strings.Contains(err.Error(), "https://") {
		t.Fatalf("pairing over plain HTTP: %v", err)
	}
}

func TestAPITimeoutsConfigured(t *testing.T) {
	path := filepath.Join(t.TempDir(), "array.yaml")
	if err := os.WriteFile(path, []byte("name: array-a\ndata_dir: data\napi:\n  write_timeout: 5m\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := LoadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	want := api.DefaultTimeouts
	want.Write = 5 * 60e9
	if got := c.apiTimeouts(); got != want {
		t.Fatalf("timeouts %+v, want %+v", got, want)
	}
}
