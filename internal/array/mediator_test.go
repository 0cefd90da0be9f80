package array

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/metro-storage/metro/internal/api"
	"github.com/metro-storage/metro/internal/logtest"
	"github.com/metro-storage/metro/internal/mediator"
)

// testMediator is a mediator served over TLS on loopback.
type testMediator struct {
	url, key, caFile string
	ca               []byte
}

func serveMediator(t *testing.T) testMediator { return serveMediatorWith(t, nil) }

// serveMediatorWith is serveMediator with the mediator's state seen
// through wrap (nil: as it is).
func serveMediatorWith(t *testing.T, wrap func(mediator.Backend) mediator.Backend) testMediator {
	t.Helper()
	dir := t.TempDir()
	b, err := mediator.OpenFile(dir, mediator.FileOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var backend mediator.Backend = b
	if wrap != nil {
		backend = wrap(b)
	}
	key := mediator.NewKey()
	s, err := mediator.NewServer(mediator.ServerConfig{Backend: backend, Keys: []string{key}})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cert, caFile, err := mediator.LoadOrMakeCert(dir, "", "", ln.Addr().String(), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- mediator.Serve(ctx, ln, s, cert, mediator.Limits{}, nil) }()
	t.Cleanup(func() {
		cancel()
		<-done
		b.Close()
	})
	ca, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	return testMediator{url: "https://" + ln.Addr().String(), key: key, caFile: caFile, ca: ca}
}

// patchArray sends PATCH /array to the array's API handler.
func patchArray(t *testing.T, h http.Handler, set api.MediatorSetting) (int, string) {
	t.Helper()
	body, _ := json.Marshal(api.ArrayUpdate{Mediator: &set})
	req := httptest.NewRequest("PATCH", api.Version+"/array", strings.NewReader(string(body)))
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec.Code, rec.Body.String()
}

// TestSetMediator: the mediator set through the API is checked (a key it
// refuses, a certificate that does not verify: 400, nothing changed),
// used at once, kept across a restart (its key 0600 in the data
// directory), never shown, and removed with an empty URL.
func TestSetMediator(t *testing.T) {
	m := serveMediator(t)
	dir := t.TempDir()
	log := &logtest.Buffer{}
	cfg := loopbackConfig(t, dir)
	a, stop := startArray(t, cfg, log.Logger())
	h := api.NewServer(a, "", nil)
	if st := a.Info().Mediator.Status; st != mediator.StateNotConfigured {
		t.Fatalf("before: %s", st)
	}
	for _, tc := range []struct {
		set  api.MediatorSetting
		want string
	}{
		{api.MediatorSetting{URL: m.url, AuthKey: mediator.NewKey(), CA: string(m.ca)}, "refused this array's auth key"},
		{api.MediatorSetting{URL: m.url, AuthKey: m.key}, "not trusted"},
		{api.MediatorSetting{URL: "http://" + strings.TrimPrefix(m.url, "https://"), AuthKey: m.key}, "https://"},
		{api.MediatorSetting{URL: m.url, AuthKey: "short", CA: string(m.ca)}, "too weak"},
		{api.MediatorSetting{URL: m.url, AuthKey: m.key, CA: "junk"}, "no PEM"},
		{api.MediatorSetting{URL: "", AuthKey: m.key}, "no auth key"},
	} {
		code, body := patchArray(t, h, tc.set)
		if code != 400 || !strings.Contains(body, tc.want) {
			t.Errorf("%+v: %d %s, want 400 saying %q", tc.set.URL, code, body, tc.want)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, mediatorSettingFile)); err == nil {
		t.Fatal("a refused setting was kept")
	}
	code, body := patchArray(t, h, api.MediatorSetting{URL: m.url, AuthKey: m.key, CA: string(m.ca)})
	var info api.ArrayInfo
	if code != 200 || json.Unmarshal([]byte(body), &info) != nil || info.Mediator.Status != mediator.StateOnline || info.Mediator.Generation == 0 {
		t.Fatalf("set: %d %s", code, body)
	}
	if strings.Contains(body, m.key) || strings.Contains(log.String(), m.key) {
		t.Fatal("the key was shown")
	}
	if got, err := mediator.ReadKeyFile(filepath.Join(dir, mediatorKeyFile)); err != nil || got != m.key {
		t.Fatalf("stored key: %v", err)
	}
	checkModes(t, dir)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	a, stop = startArray(t, cfg, nil)
	if st := a.Mediator().Heartbeat(context.Background()); st.State != mediator.StateOnline || st.URL != m.url {
		t.Fatalf("after a restart: %+v", st)
	}
	h = api.NewServer(a, "", nil)
	if code, body := patchArray(t, h, api.MediatorSetting{}); code != 200 || !strings.Contains(body, mediator.StateNotConfigured) {
		t.Fatalf("remove: %d %s", code, body)
	}
	if _, err := os.Stat(filepath.Join(dir, mediatorKeyFile)); err == nil {
		t.Fatal("the key stayed after the mediator was removed")
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	// Removed stays removed, even with a mediator in the configuration file.
	cfg.Mediator = MediatorConfig{URL: m.url, AuthKeyFile: writeKey(t, m.key), CAFile: m.caFile}
	if err := cfg.setDefaults(); err != nil {
		t.Fatal(err)
	}
	a, stop = startArray(t, cfg, nil)
	if st := a.Mediator().Status(); st.State != mediator.StateNotConfigured {
		t.Fatalf("removed, then restarted: %+v", st)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
}

func writeKey(t *testing.T, key string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "mediator.key")
	if err := os.WriteFile(p, []byte(key+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestMediatorFromConfig: the configuration file's mediator section is
// used at start; its paths are relative to the file; what is wrong in it
// is said at load.
func TestMediatorFromConfig(t *testing.T) {
	m := serveMediator(t)
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "med.key"), []byte(m.key+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "med.crt"), m.ca, 0o600); err != nil {
		t.Fatal(err)
	}
	write := func(mediatorYAML string) string {
		p := filepath.Join(dir, "array.yaml")
		y := "name: array-a\ndata_dir: data\napi:\n  listen: 127.0.0.1:0\niscsi:\n  listen: [127.0.0.1:0]\n" + mediatorYAML
		if err := os.WriteFile(p, []byte(y), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	cfg, err := LoadConfig(write("mediator:\n  url: " + m.url + "\n  authkey_file: med.key\n  ca_file: med.crt\n  heartbeat: 1s\n"))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Mediator.AuthKeyFile != filepath.Join(dir, "med.key") || cfg.Mediator.Timeout.Duration != mediator.DefaultTimeout {
		t.Fatalf("%+v", cfg.Mediator)
	}
	a, stop := startArray(t, cfg, nil)
	if st := a.Mediator().Heartbeat(context.Background()); st.State != mediator.StateOnline {
		t.Fatalf("%+v", st)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	for yaml, want := range map[string]string{
		"mediator:\n  url: " + m.url + "\n":                                    "needs authkey_file",
		"mediator:\n  url: http://10.0.0.1:9095\n  authkey_file: med.key\n":    "https://",
		"mediator:\n  authkey_file: med.key\n":                                 "need url",
		"mediator:\n  url: " + m.url + "\n  authkey_file: k\n  heartbeat: -1s": "positive",
		"mediator:\n  urll: x\n":                                               "urll",
	} {
		if _, err := LoadConfig(write(yaml)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want %q", yaml, err, want)
		}
	}
}
