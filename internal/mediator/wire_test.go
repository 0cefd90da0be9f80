package mediator

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

func TestParseElect(t *testing.T) {
	good := `{"pod":"0123abcd","epoch":7,"array":"array-a"}`
	if req, err := ParseElect([]byte(good)); err != nil || req != (ElectRequest{Pod: "0123abcd", Epoch: 7, Array: "array-a"}) {
		t.Fatalf("%s: %+v %v", good, req, err)
	}
	for _, tc := range []struct{ body, want string }{
		{``, "JSON object"},
		{`null`, "JSON object"},
		{`[]`, "JSON object"},
		{`{`, "request body"},
		{`{"pod":"p","epoch":1}`, "array id is missing"},
		{`{"pod":"","epoch":1,"array":"a"}`, "pod id is missing"},
		{`{"pod":"p","epoch":0,"array":"a"}`, "epoch is missing or 0"},
		{`{"pod":"p","array":"a"}`, "epoch is missing or 0"},
		{`{"pod":"p","epoch":-1,"array":"a"}`, "request body"},
		{`{"pod":"p","epoch":1.5,"array":"a"}`, "request body"},
		{`{"pod":"p","epoch":18446744073709551615,"array":"a"}`, "no successor"},
		{`{"pod":"p","epoch":18446744073709551616,"array":"a"}`, "request body"},
		{`{"pod":"p","epoch":1,"array":"a","extra":1}`, "unknown field"},
		{`{"pod":"p","epoch":1,"array":"a"} {}`, "after the JSON object"},
		{`{"pod":"p","epoch":1,"array":"a"}x`, "after the JSON object"},
		{`{"pod":"p q","epoch":1,"array":"a"}`, "only letters"},
		{`{"pod":"p","epoch":1,"array":"` + strings.Repeat("a", 129) + `"}`, "at most 128"},
		{`{"pod":"p","epoch":"1","array":"a"}`, "request body"},
		{`{"pod":"p","epoch":1,"array":"a"` + strings.Repeat(" ", MaxBody) + `}`, "over 64 KiB"},
	} {
		_, err := ParseElect([]byte(tc.body))
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%.60q: %v, want ErrInvalid saying %q", tc.body, err, tc.want)
		}
	}
}

func TestParseHeartbeat(t *testing.T) {
	if req, err := ParseHeartbeat([]byte(` {"array":"x"}` + "\n")); err != nil || req.Array != "x" {
		t.Fatalf("%+v %v", req, err)
	}
	for _, body := range []string{`{}`, `{"array":""}`, `{"array":"x","pod":"p"}`, `"x"`, `{"array":7}`} {
		if _, err := ParseHeartbeat([]byte(body)); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: %v", body, err)
		}
	}
}

// FuzzParseElect: the elect parser never panics; what it accepts is a
// valid request that survives a round trip through JSON; what it refuses
// it refuses as ErrInvalid with a message.
func FuzzParseElect(f *testing.F) {
	for _, s := range []string{`{"pod":"p","epoch":1,"array":"a"}`, `{"pod":"0123456789abcdef0123456789abcdef","epoch":18446744073709551614,"array":"a"}`,
		`{"pod":"p","epoch":0,"array":"a"}`, `{"POD":"p","Epoch":1,"array":"a"}`, `{"pod":"p","epoch":1e2,"array":"a"}`, `{"pod":"p","pod":"q","epoch":1,"array":"a"}`,
		`{"pod":"\u0070","epoch":1,"array":"a"}`, "{\"pod\":\"p\xff\",\"epoch\":1,\"array\":\"a\"}", `{} {}`, `nul`, ``} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		req, err := ParseElect(body)
		if err != nil {
			if !errors.Is(err, ErrInvalid) || err.Error() == "" {
				t.Fatalf("%q: %v", body, err)
			}
			return
		}
		if err := req.Validate(); err != nil {
			t.Fatalf("%q accepted but invalid: %v", body, err)
		}
		again, _ := json.Marshal(req)
		if req2, err := ParseElect(again); err != nil || req2 != req {
			t.Fatalf("%q: %+v does not survive a round trip: %+v %v", body, req, req2, err)
		}
	})
}

// FuzzParseHeartbeat: as FuzzParseElect, for heartbeats.
func FuzzParseHeartbeat(f *testing.F) {
	for _, s := range []string{`{"array":"a"}`, `{"array":""}`, `{"Array":"a"}`, `{"array":"a"}]`, "{\"array\":\"\xc3\x28\"}", `[{"array":"a"}]`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		req, err := ParseHeartbeat(body)
		if err != nil {
			if !errors.Is(err, ErrInvalid) || err.Error() == "" {
				t.Fatalf("%q: %v", body, err)
			}
			return
		}
		if checkID("array", req.Array) != nil {
			t.Fatalf("%q accepted with array id %q", body, req.Array)
		}
		again, _ := json.Marshal(req)
		if req2, err := ParseHeartbeat(again); err != nil || req2 != req {
			t.Fatalf("%q: %+v does not survive a round trip: %+v %v", body, req, req2, err)
		}
	})
}
