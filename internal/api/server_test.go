package api

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/metro-storage/metro/internal/catalog"
	"github.com/metro-storage/metro/internal/store"
)

// memPersist keeps the catalog in memory.
type memPersist struct{ data []byte }

func (m *memPersist) Load() ([]byte, bool, error) { return m.data, m.data != nil, nil }
func (m *memPersist) Save(d []byte) error         { m.data = d; return nil }

// fakeBackend is an array with a real catalog and no data path.
type fakeBackend struct {
	cat *catalog.Catalog
	ids int
}

func newFake(t testing.TB) *fakeBackend {
	c, err := catalog.Open(&memPersist{})
	if err != nil {
		t.Fatal(err)
	}
	return &fakeBackend{cat: c}
}

func (f *fakeBackend) Info() ArrayInfo {
	return ArrayInfo{Name: "array-a", ID: "ida", Status: "connected"}
}
func (f *fakeBackend) Peers() []ArrayInfo                           { return nil }
func (f *fakeBackend) State() *catalog.State                        { return f.cat.View() }
func (f *fakeBackend) Apply(_ context.Context, op catalog.Op) error { return f.cat.Apply(op) }
func (f *fakeBackend) Eradicate(_ context.Context, v string) error {
	return f.cat.Apply(catalog.EradicateVolume{Name: v})
}
func (f *fakeBackend) PodArrays(p *catalog.Pod) []PodArray {
	return []PodArray{{Name: p.Arrays[0].Name, ID: p.Arrays[0].ID, Status: catalog.StatusOnline}}
}
func (f *fakeBackend) VolumeUsed(*catalog.Volume) uint64 { return 0 }
func (f *fakeBackend) Sessions() []Session               { return nil }
func (f *fakeBackend) EradicationWindow() time.Duration  { return 24 * time.Hour }
func (f *fakeBackend) Now() time.Time                    { return time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC) }
func (f *fakeBackend) NewID() string {
	f.ids++
	return strings.Repeat("0", 30) + string(rune('a'+f.ids%26)) + "0"
}

func do(t testing.TB, h http.Handler, method, path, token, body string) *httptest.ResponseRecorder {
	req := httptest.NewRequest(method, path, strings.NewReader(body))
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec
}

func TestAPIFlow(t *testing.T) {
	h := NewServer(newFake(t), "tok", nil)
	steps := []struct {
		method, path, body string
		code               int
		contains           string
	}{
		{"GET", "/api/v1/pods", "", 200, "[]"},
		{"POST", "/api/v1/pods", `{"name":"pod1"}`, 201, `"status": "online"`},
		{"POST", "/api/v1/pods", `{"name":"pod1"}`, 409, "already exists"},
		{"PATCH", "/api/v1/pods/pod1", `{}`, 400, "nothing to change"},
		{"PATCH", "/api/v1/pods/pod1", `{"failover_preference":["array-a"]}`, 400, "failover_preference"},
		{"PATCH", "/api/v1/pods/pod1", `{"failover_preference":"array-z"}`, 400, "pod's arrays (array-a)"},
		{"PATCH", "/api/v1/pods/pod1", `{"failover_preference":"array-a","auto_recover":false}`, 200, `"auto_recover": false`},
		{"PATCH", "/api/v1/pods/pod1", `{"failover_preference":"","auto_recover":true}`, 200, `"failover_preference": ""`},
		{"POST", "/api/v1/volumes", `{"name":"pod1::v","size":1073741824}`, 201, `"size": 1073741824`},
		{"POST", "/api/v1/volumes", `{"name":"pod1::w","size":"1G"}`, 400, "size"},
		{"POST", "/api/v1/volumes", `{"name":"pod1::w","size":4096,"x":1}`, 400, `unknown field`},
		{"POST", "/api/v1/volumes", ``, 400, "empty"},
		{"POST", "/api/v1/volumes", `{"name":"pod1::w","size":4096} {}`, 400, "trailing"},
		{"POST", "/api/v1/hosts", `{"name":"h1","iqns":["iqn.2020-01.org.example:h1"]}`, 201, "h1"},
		{"POST", "/api/v1/hosts", `{"name":"h2","iqns":["iqn.2020-01.org.example:h2"],"preferred_arrays":["array-z"]}`, 400, "no such array"},
		{"POST", "/api/v1/connections", `{"volume":"pod1::v","host":"h1"}`, 201, `"lun": 0`},
		{"DELETE", "/api/v1/volumes/pod1::v", "", 409, "--force"},
		{"PATCH", "/api/v1/volumes/pod1::v", `{"size":2147483648}`, 200, "2147483648"},
		{"GET", "/api/v1/volumes/pod1::nope", "", 404, "not found"},
		{"DELETE", "/api/v1/volumes/pod1::v?force=true", "", 200, "eradicate_at"},
		{"GET", "/api/v1/volumes?pending=true", "", 200, "pod1::v"},
		{"POST", "/api/v1/volumes/pod1::v/recover", "", 200, "pod1::v"},
		{"GET", "/api/v1/nothing", "", 404, "openapi"},
	}
	for _, s := range steps {
		rec := do(t, h, s.method, s.path, "tok", s.body)
		if rec.Code != s.code || !strings.Contains(rec.Body.String(), s.contains) {
			t.Fatalf("%s %s %s: %d %s; want %d containing %q", s.method, s.path, s.body, rec.Code, rec.Body.String(), s.code, s.contains)
		}
	}
	if rec := do(t, h, "GET", "/api/v1/pods", "wrong", ""); rec.Code != 401 || !strings.Contains(rec.Body.String(), "token") {
		t.Fatalf("wrong token: %d %s", rec.Code, rec.Body.String())
	}
	if rec := do(t, h, "GET", "/api/v1/pods", "", ""); rec.Code != 401 {
		t.Fatalf("no token: %d", rec.Code)
	}
	rec := do(t, h, "GET", "/api/v1/openapi.json", "", "")
	var doc map[string]any
	if rec.Code != 200 || json.Unmarshal(rec.Body.Bytes(), &doc) != nil || doc["openapi"] == nil {
		t.Fatalf("openapi: %d", rec.Code)
	}
}

// FuzzAPIBodies sends arbitrary bodies to every endpoint that takes one:
// the answer is never a 5xx, and every error has a message.
func FuzzAPIBodies(f *testing.F) {
	for _, s := range []string{`{"name":"p"}`, `{"name":"p::v","size":4096}`, `{"volume":"p::v","host":"h","lun":3}`,
		`{"name":"h","iqns":["iqn.2020-01.x:y"],"chap_user":"u","chap_secret":"0123456789abcdef"}`, `[]`, `null`, `{"size":-1}`, "\xff"} {
		f.Add(0, s)
		f.Add(3, s)
	}
	endpoints := []struct{ method, path string }{
		{"POST", "/api/v1/pods"}, {"PATCH", "/api/v1/pods/p"}, {"POST", "/api/v1/volumes"},
		{"PATCH", "/api/v1/volumes/p::v"}, {"POST", "/api/v1/hosts"}, {"PATCH", "/api/v1/hosts/h"},
		{"POST", "/api/v1/hgroups"}, {"PATCH", "/api/v1/hgroups/g"}, {"POST", "/api/v1/connections"},
	}
	f.Fuzz(func(t *testing.T, which int, body string) {
		b := newFake(t)
		h := NewServer(b, "", nil)
		_ = b.cat.Apply(catalog.CreatePod{Name: "p", Array: catalog.PodArray{Name: "array-a"}})
		_ = b.cat.Apply(catalog.CreateVolume{Name: "p::v", UUID: strings.Repeat("1", 32), Size: 4096})
		_ = b.cat.Apply(catalog.CreateHost{Host: catalog.Host{Name: "h", IQNs: []string{"iqn.2020-01.x:h"}}})
		_ = b.cat.Apply(catalog.CreateHostGroup{Name: "g"})
		e := endpoints[uint(which)%uint(len(endpoints))]
		rec := do(t, h, e.method, e.path, "", body)
		if rec.Code >= 500 {
			t.Fatalf("%s %s %q: %d %s", e.method, e.path, body, rec.Code, rec.Body.String())
		}
		if rec.Code >= 400 {
			var e Error
			if json.Unmarshal(rec.Body.Bytes(), &e) != nil || e.Error == "" {
				t.Fatalf("error without a message: %d %s", rec.Code, rec.Body.String())
			}
		}
	})
}

// failingBackend is an array whose store has failed: Apply returns the
// failure, or panics with it as a commit inside Pebble does.
type failingBackend struct {
	*fakeBackend
	panics bool
}

func (f failingBackend) Apply(context.Context, catalog.Op) error {
	err := fmt.Errorf("save configuration: %w", fmt.Errorf("%w: WAL sync: input/output error", store.ErrFailed))
	if f.panics {
		panic(err)
	}
	return err
}

// TestStoreFailureAnswers: a request that meets a failed store, whether as
// an error or as a panic, is answered 503 with what to do (the array is
// stopping; its store has already stopped it), not a bare internal error.
func TestStoreFailureAnswers(t *testing.T) {
	for _, panics := range []bool{false, true} {
		h := NewServer(failingBackend{newFake(t), panics}, "", nil)
		rec := do(t, h, "POST", "/api/v1/pods", "", `{"name":"pod1"}`)
		if rec.Code != http.StatusServiceUnavailable || !strings.Contains(rec.Body.String(), "other array") {
			t.Errorf("panics=%v: %d %s; want 503 saying what to do", panics, rec.Code, rec.Body.String())
		}
	}
}
