package mediator_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/metro-storage/metro/internal/logtest"
	"github.com/metro-storage/metro/internal/mediator"
	"github.com/metro-storage/metro/internal/mediator/backendtest"
)

// Two keys of 128 bits, as a rotation has them.
const (
	key1 = "0123456789abcdef0123456789abcdef"
	key2 = "fedcba9876543210fedcba9876543210"
)

type testServer struct {
	*mediator.Server
	log *logtest.Buffer
}

func newTestServer(t *testing.T, b mediator.Backend, keys ...string) testServer {
	t.Helper()
	if b == nil {
		var err error
		if b, err = backendtest.NewMemory(0).Open(); err != nil {
			t.Fatal(err)
		}
	}
	if len(keys) == 0 {
		keys = []string{key1}
	}
	log := &logtest.Buffer{}
	s, err := mediator.NewServer(mediator.ServerConfig{Backend: b, Keys: keys, Logger: log.Logger()})
	if err != nil {
		t.Fatal(err)
	}
	return testServer{s, log}
}

// do sends a request to h and returns the status and body.
func do(h http.Handler, method, path, key, body string) (int, string) {
	req := httptest.NewRequest(method, path, strings.NewReader(body))
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec.Code, rec.Body.String()
}

// TestServerAuth: a missing or wrong key gets 401 with a message, and a
// log line that does not show the key offered; either of two keys works;
// SetKeys rotates them.
func TestServerAuth(t *testing.T) {
	s := newTestServer(t, nil, key1, key2)
	hb := `{"array":"array-a"}`
	wrong := "wrong-key-0123456789abcdef0123456789"
	for _, key := range []string{"", wrong, key1[:31], key1 + "0"} {
		code, body := do(s, "POST", mediator.PathHeartbeat, key, hb)
		if code != 401 || !strings.Contains(body, "auth key") {
			t.Errorf("key %q: %d %s", key, code, body)
		}
	}
	if log := s.log.String(); !strings.Contains(log, "refused a request") || strings.Contains(log, wrong) || strings.Contains(log, key1) {
		t.Errorf("log of refused requests:\n%s", log)
	}
	for _, key := range []string{key1, key2} {
		if code, body := do(s, "POST", mediator.PathHeartbeat, key, hb); code != 200 {
			t.Errorf("key %s...: %d %s", key[:4], code, body)
		}
	}
	if err := s.SetKeys([]string{key2}); err != nil {
		t.Fatal(err)
	}
	if code, _ := do(s, "POST", mediator.PathHeartbeat, key1, hb); code != 401 {
		t.Errorf("old key after rotation: %d", code)
	}
	if code, _ := do(s, "POST", mediator.PathHeartbeat, key2, hb); code != 200 {
		t.Errorf("new key after rotation: %d", code)
	}
	for _, keys := range [][]string{nil, {key1, key2, key1}, {"short"}} {
		if err := s.SetKeys(keys); err == nil {
			t.Errorf("SetKeys(%d keys) accepted", len(keys))
		}
	}
}

// TestServerRefusalLogBounded: a flood of wrong keys writes a bounded
// number of log lines, which count what they left out.
func TestServerRefusalLogBounded(t *testing.T) {
	s := newTestServer(t, nil)
	for range 1000 {
		do(s, "POST", mediator.PathHeartbeat, "nope", `{"array":"a"}`)
	}
	if n := s.log.Count("refused a request"); n < 1 || n > 10 {
		t.Fatalf("%d log lines for 1000 refused requests", n)
	}
}

// TestServerBadRequests: malformed requests get 400 with a message that
// says what is wrong; wrong methods 405, unknown paths 404.
func TestServerBadRequests(t *testing.T) {
	s := newTestServer(t, nil)
	for _, tc := range []struct {
		method, path, body string
		code               int
		want               string
	}{
		{"POST", mediator.PathElect, `{"pod":"p","epoch":1}`, 400, "array id is missing"},
		{"POST", mediator.PathElect, `{"pod":"p","epoch":0,"array":"a"}`, 400, "epoch is missing or 0"},
		{"POST", mediator.PathElect, `{"pod":"p","epoch":1,"array":"a","x":1}`, 400, "unknown field"},
		{"POST", mediator.PathElect, `{"pod":"p","epoch":1,"array":"a"`, 400, "request body"},
		{"POST", mediator.PathElect, ``, 400, "JSON object"},
		{"POST", mediator.PathElect, `{"pod":"` + strings.Repeat("p", mediator.MaxBody) + `","epoch":1,"array":"a"}`, 400, "over 64 KiB"},
		{"POST", mediator.PathHeartbeat, `{"array":""}`, 400, "array id"},
		{"GET", mediator.PathElect, ``, 405, "takes POST"},
		{"POST", mediator.PathStatus, ``, 405, "takes GET"},
		{"POST", "/v1/nothing", `{}`, 404, "no such endpoint"},
	} {
		code, body := do(s, tc.method, tc.path, key1, tc.body)
		var e mediator.ErrorResponse
		if code != tc.code || json.Unmarshal([]byte(body), &e) != nil || !strings.Contains(e.Error, tc.want) {
			t.Errorf("%s %s %.40q: %d %.200s; want %d saying %q", tc.method, tc.path, tc.body, code, body, tc.code, tc.want)
		}
	}
	// Nothing of that changed the state.
	_, body := do(s, "GET", mediator.PathStatus, key1, "")
	var st mediator.StatusResponse
	if err := json.Unmarshal([]byte(body), &st); err != nil || st.Pods != 0 {
		t.Fatalf("status after bad requests: %s %v", body, err)
	}
}

// TestServerElect: the race through HTTP, and the heartbeat and status
// answers.
func TestServerElect(t *testing.T) {
	s := newTestServer(t, nil)
	elect := func(pod string, epoch uint64, array string) mediator.ElectResponse {
		t.Helper()
		code, body := do(s, "POST", mediator.PathElect, key1, fmt.Sprintf(`{"pod":%q,"epoch":%d,"array":%q}`, pod, epoch, array))
		var r mediator.ElectResponse
		if code != 200 || json.Unmarshal([]byte(body), &r) != nil {
			t.Fatalf("elect: %d %s", code, body)
		}
		return r
	}
	a := elect("p", 3, "array-a")
	b := elect("p", 3, "array-b")
	retry := elect("p", 3, "array-a")
	if !a.Won || a.Epoch != 4 || b.Won || b.Winner != "array-a" || b.Epoch != 4 || !retry.Won || retry.Generation != a.Generation || b.Generation != a.Generation {
		t.Fatalf("race: %+v, %+v, retry %+v", a, b, retry)
	}
	code, body := do(s, "POST", mediator.PathHeartbeat, key1, `{"array":"array-b"}`)
	var hb mediator.HeartbeatResponse
	if code != 200 || json.Unmarshal([]byte(body), &hb) != nil || hb.Generation != a.Generation || len(hb.Mediator) != 32 {
		t.Fatalf("heartbeat: %d %s", code, body)
	}
	_, body = do(s, "GET", mediator.PathStatus, key1, "")
	var st mediator.StatusResponse
	if err := json.Unmarshal([]byte(body), &st); err != nil || st.Pods != 1 || len(st.Arrays) != 1 || st.Arrays[0].Array != "array-b" || st.Mediator != hb.Mediator {
		t.Fatalf("status: %s %v", body, err)
	}
	if !strings.Contains(s.log.String(), "msg=elect") {
		t.Errorf("elections are not logged:\n%s", s.log.String())
	}
}

// failingBackend fails every call as a disk that cannot write does.
type failingBackend struct{ mediator.Backend }

func (failingBackend) Elect(context.Context, mediator.ElectRequest) (mediator.ElectResult, uint64, error) {
	return mediator.ElectResult{}, 0, fmt.Errorf("%w: write state.json: input/output error", mediator.ErrFailed)
}

// stalledBackend waits for its context, as a stalled disk makes it.
type stalledBackend struct{ mediator.Backend }

func (stalledBackend) Elect(ctx context.Context, _ mediator.ElectRequest) (mediator.ElectResult, uint64, error) {
	<-ctx.Done()
	return mediator.ElectResult{}, 0, ctx.Err()
}

// TestServerBackendFailure: a state that cannot be made durable is
// answered 503 with why, and the fatal handler (the process exits) is
// called once; a stalled disk is answered 503 at the request timeout.
func TestServerBackendFailure(t *testing.T) {
	mem, _ := backendtest.NewMemory(0).Open()
	var fatal atomic.Int32
	s, err := mediator.NewServer(mediator.ServerConfig{Backend: failingBackend{mem}, Keys: []string{key1},
		Fatal: func(error) { fatal.Add(1) }})
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		code, body := do(s, "POST", mediator.PathElect, key1, `{"pod":"p","epoch":1,"array":"a"}`)
		if code != 503 || !strings.Contains(body, "cannot make its state durable") {
			t.Fatalf("%d %s", code, body)
		}
	}
	if n := fatal.Load(); n != 1 {
		t.Fatalf("fatal handler called %d times", n)
	}
	s, err = mediator.NewServer(mediator.ServerConfig{Backend: stalledBackend{mem}, Keys: []string{key1}, RequestTimeout: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if code, body := do(s, "POST", mediator.PathElect, key1, `{"pod":"p","epoch":1,"array":"a"}`); code != 503 || !strings.Contains(body, "within 1ms") {
		t.Fatalf("stalled: %d %s", code, body)
	}
}

// FuzzServer sends arbitrary requests to the server: no answer is a 5xx,
// every error has a message, and a 200 is valid JSON of the endpoint's
// answer.
func FuzzServer(f *testing.F) {
	for _, s := range []string{`{"pod":"p","epoch":1,"array":"a"}`, `{"array":"a"}`, `{"pod":"p","epoch":18446744073709551614,"array":"b"}`, `{}`, `[]`, "\x00", `{"pod":"p","epoch":1,"array":"a"}{}`} {
		for which := range 4 {
			f.Add(uint8(which), s)
		}
	}
	paths := []struct{ method, path string }{{"POST", mediator.PathElect}, {"POST", mediator.PathHeartbeat}, {"GET", mediator.PathStatus}, {"PUT", mediator.PathElect}}
	f.Fuzz(func(t *testing.T, which uint8, body string) {
		s := newTestServer(t, nil)
		p := paths[int(which)%len(paths)]
		code, out := do(s, p.method, p.path, key1, body)
		if code >= 500 {
			t.Fatalf("%s %s %q: %d %s", p.method, p.path, body, code, out)
		}
		if code != 200 {
			var e mediator.ErrorResponse
			if json.Unmarshal([]byte(out), &e) != nil || e.Error == "" {
				t.Fatalf("%d without a message: %s", code, out)
			}
			return
		}
		var v map[string]any
		if err := json.Unmarshal([]byte(out), &v); err != nil || v["generation"] == nil {
			t.Fatalf("200 with %q: %v", out, err)
		}
	})
}

// TestKeys: key strength and key files.
func TestKeys(t *testing.T) {
	for key, ok := range map[string]bool{
		key1:                     true,
		key1[:31]:                false,
		"AAECAwQFBgcICQoLDA0ODw": true,
		"AAECAwQFBgcICQoLDA0OD":  false,
		"012345678901234567890123456789012345678": true,
		"01234567890123456789012345678901234567":  false,
		"0123456789abcdef 0123456789abcdef":       false,
	} {
		if err := mediator.CheckKey(key); (err == nil) != ok {
			t.Errorf("%q: %v", key, err)
		} else if err != nil && strings.Contains(err.Error(), key) {
			t.Errorf("the error shows the key: %v", err)
		}
	}
	dir := t.TempDir()
	path := dir + "/key"
	k, err := mediator.MakeKeyFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := mediator.ReadKeyFile(path); err != nil || got != k {
		t.Fatalf("read back: %v", err)
	}
	if err := os.Chmod(path, 0o640); err != nil {
		t.Fatal(err)
	}
	if _, err := mediator.ReadKeyFile(path); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Fatalf("a key file open to others: %v", err)
	}
	if _, err := mediator.ReadKeyFile(dir + "/none"); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing key file: %v", err)
	}
}
