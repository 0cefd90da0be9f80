package netproxy

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// call sends one request to h and decodes the JSON answer.
func call(t *testing.T, h http.Handler, method, path, body string) (int, map[string]any) {
	t.Helper()
	w := httptest.NewRecorder()
	h.ServeHTTP(w, httptest.NewRequest(method, path, strings.NewReader(body)))
	var m map[string]any
	if w.Code != http.StatusMethodNotAllowed {
		if err := json.Unmarshal(w.Body.Bytes(), &m); err != nil {
			t.Fatalf("%s %s: answer %q is not JSON: %v", method, path, w.Body, err)
		}
	}
	return w.Code, m
}

func TestControlAPI(t *testing.T) {
	// The target is never dialled: nothing connects.
	p := startProxy(t, "127.0.0.1:1", Settings{RTT: time.Millisecond})
	h := p.Handler()

	code, m := call(t, h, "GET", "/link", "")
	want := map[string]any{"rtt": "1ms", "bandwidth": "", "partitioned": false, "cut_a_to_b": false, "cut_b_to_a": false,
		"connections": 0.0, "accepted": 0.0, "bytes_a_to_b": 0.0, "bytes_b_to_a": 0.0, "bytes_dropped": 0.0}
	if code != 200 || len(m) != len(want) {
		t.Fatalf("GET /link: %d %v; want 200 %v", code, m, want)
	}
	for k, v := range want {
		if m[k] != v {
			t.Errorf("GET /link: %s = %v; want %v", k, m[k], v)
		}
	}

	// Partial changes keep the other fields.
	steps := []struct {
		method, body string
		want         Settings
	}{
		{"PUT", `{"rtt":"20ms"}`, Settings{RTT: 20 * time.Millisecond}},
		{"POST", `{"bandwidth":"100M"}`, Settings{RTT: 20 * time.Millisecond, Bandwidth: 100 << 20}},
		{"PUT", `{"partitioned":true,"bandwidth":1000000}`, Settings{RTT: 20 * time.Millisecond, Bandwidth: 1e6, Partitioned: true}},
		{"PUT", `{"bandwidth":"","rtt":"0"}`, Settings{Partitioned: true}},
		{"PUT", `{"rtt":null}`, Settings{Partitioned: true}},
		// A GET's answer can be edited and sent back: counters are ignored.
		{"PUT", `{"rtt":"1.5ms","bandwidth":"512K/s","partitioned":false,"connections":3,"bytes_a_to_b":9}`,
			Settings{RTT: 1500 * time.Microsecond, Bandwidth: 512 << 10}},
		{"PUT", `{"cut_b_to_a":true}`, Settings{RTT: 1500 * time.Microsecond, Bandwidth: 512 << 10, CutBToA: true}},
		{"PUT", `{"cut_a_to_b":true,"cut_b_to_a":false}`, Settings{RTT: 1500 * time.Microsecond, Bandwidth: 512 << 10, CutAToB: true}},
	}
	for _, st := range steps {
		code, m := call(t, h, st.method, "/link", st.body)
		if code != 200 {
			t.Fatalf("%s /link %s: %d %v", st.method, st.body, code, m)
		}
		if got := p.Settings(); got != st.want {
			t.Errorf("%s /link %s: settings %+v; want %+v", st.method, st.body, got, st.want)
		}
		if m["rtt"] != st.want.RTT.String() || m["bandwidth"] != formatBandwidth(st.want.Bandwidth) || m["partitioned"] != st.want.Partitioned ||
			m["cut_a_to_b"] != st.want.CutAToB || m["cut_b_to_a"] != st.want.CutBToA {
			t.Errorf("%s /link %s: answered %v", st.method, st.body, m)
		}
	}

	// Bad input is a 400 with a message and changes nothing.
	before := p.Settings()
	for _, body := range []string{
		``, `{`, `[]`, `{"rtt":"fast"}`, `{"rtt":"-1ms"}`, `{"rtt":5}`, `{"bandwidth":"lots"}`,
		`{"bandwidth":-1}`, `{"bandwidth":1.5}`, `{"bandwidth":true}`, `{"bandwidth":"99999999P"}`,
		`{"partitioned":"yes"}`, `{"cut_a_to_b":1}`, `{"latency":"1ms"}`, `{"rtt":"1ms"} {"rtt":"2ms"}`,
		`{"rtt":"2ms","bandwidth":"lots"}`,
	} {
		code, m := call(t, h, "PUT", "/link", body)
		msg, _ := m["error"].(string)
		if code != http.StatusBadRequest || msg == "" {
			t.Errorf("PUT /link %s: %d %v; want 400 with an error", body, code, m)
		}
	}
	if got := p.Settings(); got != before {
		t.Errorf("after bad input settings are %+v; want unchanged %+v", got, before)
	}

	if code, m := call(t, h, "POST", "/link/partition", ""); code != 200 || m["partitioned"] != true || !p.Settings().Partitioned {
		t.Errorf("POST /link/partition: %d %v", code, m)
	}
	if code, m := call(t, h, "POST", "/link/heal", ""); code != 200 || m["partitioned"] != false || m["cut_a_to_b"] != false || p.Settings().anyCut() {
		t.Errorf("POST /link/heal: %d %v", code, m)
	}
	if got := p.Settings(); got.RTT != before.RTT || got.Bandwidth != before.Bandwidth {
		t.Errorf("partition and heal changed other settings: %+v", got)
	}
	if code, _ := call(t, h, "DELETE", "/link", ""); code != http.StatusMethodNotAllowed {
		t.Errorf("DELETE /link: %d; want 405", code)
	}
}

func TestSettingsJSON(t *testing.T) {
	for _, s := range []Settings{
		{},
		{RTT: 20 * time.Millisecond, Bandwidth: 100 << 20},
		{RTT: 1234567 * time.Nanosecond, Bandwidth: 1e6, Partitioned: true},
		{Bandwidth: 3 << 39},
		{CutAToB: true},
		{RTT: time.Millisecond, CutBToA: true},
	} {
		b, err := json.Marshal(s)
		if err != nil {
			t.Fatal(err)
		}
		var back Settings
		if err := json.Unmarshal(b, &back); err != nil || back != s {
			t.Errorf("%+v → %s → %+v, %v", s, b, back, err)
		}
	}
	if b, _ := json.Marshal(Settings{RTT: time.Millisecond, Bandwidth: 100 << 20}); string(b) != `{"rtt":"1ms","bandwidth":"100M","partitioned":false,"cut_a_to_b":false,"cut_b_to_a":false}` {
		t.Errorf("JSON form %s", b)
	}
	s := Settings{RTT: time.Second, Bandwidth: 5}
	if err := json.Unmarshal([]byte(`{"partitioned":true}`), &s); err != nil || s != (Settings{RTT: time.Second, Bandwidth: 5, Partitioned: true}) {
		t.Errorf("partial unmarshal gave %+v, %v", s, err)
	}
}

// FuzzSettingsJSON feeds the control API's parser arbitrary input: it never
// panics, and whatever it accepts reads back the same.
func FuzzSettingsJSON(f *testing.F) {
	for _, seed := range []string{
		`{"rtt":"20ms","bandwidth":"100M","partitioned":true}`, `{"bandwidth":1e6}`, `{"cut_a_to_b":true}`,
		`{"bandwidth":"1.5G/s"}`, `{"rtt":"-1s"}`, `{"bandwidth":9.3e18}`, `{}`, `null`, ``,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var s Settings
		if err := json.Unmarshal(data, &s); err != nil {
			return
		}
		if s.RTT < 0 || s.Bandwidth < 0 {
			t.Fatalf("%q gave negative settings %+v", data, s)
		}
		b, err := json.Marshal(s)
		if err != nil {
			t.Fatal(err)
		}
		var back Settings
		if err := json.Unmarshal(b, &back); err != nil || back != s {
			t.Fatalf("%q → %+v → %s → %+v, %v", data, s, b, back, err)
		}
	})
}
