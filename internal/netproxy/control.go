package netproxy

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/metro-storage/metro/internal/units"
)

// settingsJSON is the JSON form of Settings.
type settingsJSON struct {
	RTT         string `json:"rtt"`
	Bandwidth   string `json:"bandwidth"`
	Partitioned bool   `json:"partitioned"`
	CutAToB     bool   `json:"cut_a_to_b"`
	CutBToA     bool   `json:"cut_b_to_a"`
}

func (s Settings) toJSON() settingsJSON {
	return settingsJSON{RTT: s.RTT.String(), Bandwidth: formatBandwidth(s.Bandwidth), Partitioned: s.Partitioned,
		CutAToB: s.CutAToB, CutBToA: s.CutBToA}
}

// MarshalJSON renders s as {"rtt":"20ms","bandwidth":"100M",
// "partitioned":false,"cut_a_to_b":false,"cut_b_to_a":false}; an
// unlimited bandwidth is "".
func (s Settings) MarshalJSON() ([]byte, error) { return json.Marshal(s.toJSON()) }

// UnmarshalJSON sets the fields present in data and keeps the others, so a
// partial object such as {"rtt":"5ms"} changes only the RTT. RTT is a Go
// duration; bandwidth is a size in binary units per second ("100M" is 100
// MiB/s, "" or "0" unlimited) or a number of bytes per second.
func (s *Settings) UnmarshalJSON(data []byte) error {
	var c change
	if err := decodeStrict(bytes.NewReader(data), &c); err != nil {
		return err
	}
	return c.apply(s)
}

// change is a partial Settings: absent (or null) fields stay as they are.
type change struct {
	RTT         *string    `json:"rtt"`
	Bandwidth   *bandwidth `json:"bandwidth"`
	Partitioned *bool      `json:"partitioned"`
	CutAToB     *bool      `json:"cut_a_to_b"`
	CutBToA     *bool      `json:"cut_b_to_a"`

	// The read-only counters of a GET are accepted and ignored, so that a
	// GET's answer can be edited and sent back.
	Connections  json.RawMessage `json:"connections"`
	Accepted     json.RawMessage `json:"accepted"`
	BytesAToB    json.RawMessage `json:"bytes_a_to_b"`
	BytesBToA    json.RawMessage `json:"bytes_b_to_a"`
	BytesDropped json.RawMessage `json:"bytes_dropped"`
}

// apply checks c and sets its fields in s; on error s is unchanged.
func (c *change) apply(s *Settings) error {
	next := *s
	if c.RTT != nil {
		rtt, err := parseRTT(*c.RTT)
		if err != nil {
			return err
		}
		next.RTT = rtt
	}
	if c.Bandwidth != nil {
		next.Bandwidth = int64(*c.Bandwidth)
	}
	if c.Partitioned != nil {
		next.Partitioned = *c.Partitioned
	}
	if c.CutAToB != nil {
		next.CutAToB = *c.CutAToB
	}
	if c.CutBToA != nil {
		next.CutBToA = *c.CutBToA
	}
	*s = next
	return nil
}

func parseRTT(v string) (time.Duration, error) {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		return 0, fmt.Errorf("link settings: rtt %q: not a duration; use e.g. \"20ms\" or \"0\"", v)
	}
	if d < 0 {
		return 0, fmt.Errorf("link settings: rtt %q: negative; use 0 or more", v)
	}
	return d, nil
}

// bandwidth is bytes per second, read from a size string or a number.
type bandwidth int64

func (b *bandwidth) UnmarshalJSON(data []byte) error {
	var v any
	if err := json.Unmarshal(data, &v); err != nil {
		return err
	}
	switch v := v.(type) {
	case string:
		n, err := parseBandwidth(v)
		if err != nil {
			return err
		}
		*b = bandwidth(n)
		return nil
	case float64:
		if v < 0 || v != math.Trunc(v) || v >= math.MaxInt64 {
			return fmt.Errorf("bandwidth %v: want whole bytes per second, or a size such as \"100M\"", v)
		}
		*b = bandwidth(v)
		return nil
	}
	return fmt.Errorf("bandwidth %s: want a size such as \"100M\" (MiB/s) or \"\" for unlimited", data)
}

// parseBandwidth reads "100M", "100M/s", "512K", "1000000", "" or
// "unlimited" (0).
func parseBandwidth(v string) (int64, error) {
	s := strings.TrimSpace(v)
	s = strings.TrimSuffix(s, "/s")
	if s == "" || strings.EqualFold(s, "unlimited") {
		return 0, nil
	}
	n, err := units.ParseSize(s)
	if err != nil {
		return 0, fmt.Errorf("bandwidth %q: not a size per second; use e.g. \"100M\" (100 MiB/s) or \"\" for unlimited", v)
	}
	if n > math.MaxInt64 {
		return 0, fmt.Errorf("bandwidth %q: too large", v)
	}
	return int64(n), nil
}

// FormatBandwidth renders n bytes per second as the control API does
// ("100M" is 100 MiB/s, "" unlimited).
func FormatBandwidth(n int64) string { return formatBandwidth(n) }

// formatBandwidth renders n bytes/s in binary units when that is exact,
// else in bytes, so that the JSON reads back to the same value; "" is
// unlimited.
func formatBandwidth(n int64) string {
	if n <= 0 {
		return ""
	}
	if f := units.FormatSize(uint64(n)); mustParse(f) == uint64(n) {
		return f
	}
	return strconv.FormatInt(n, 10)
}

func mustParse(s string) uint64 {
	n, err := units.ParseSize(s)
	if err != nil {
		return 0
	}
	return n
}

// status is the control API's answer: the settings and the counters.
type status struct {
	settingsJSON
	Stats
}

// maxBody bounds a control request's body.
const maxBody = 64 << 10

// Handler serves the control API:
//
//	GET /link              the settings and counters, as JSON
//	PUT or POST /link      change the fields given, e.g. {"rtt":"20ms"}
//	POST /link/partition   cut the link both ways
//	POST /link/heal        heal it, one-way cuts too
//
// Every call answers with the state after it; bad input is a 400 with
// {"error": "..."} and changes nothing.
func (p *Proxy) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /link", func(w http.ResponseWriter, r *http.Request) {
		p.writeStatus(w, p.Settings())
	})
	set := func(w http.ResponseWriter, r *http.Request) {
		var c change
		if err := decodeStrict(http.MaxBytesReader(w, r.Body, maxBody), &c); err != nil {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": err.Error()})
			return
		}
		s, err := p.update(c.apply)
		if err != nil {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": err.Error()})
			return
		}
		p.writeStatus(w, s)
	}
	mux.HandleFunc("PUT /link", set)
	mux.HandleFunc("POST /link", set)
	mux.HandleFunc("POST /link/partition", func(w http.ResponseWriter, r *http.Request) {
		s, _ := p.update(func(s *Settings) error { s.Partitioned = true; return nil })
		p.writeStatus(w, s)
	})
	mux.HandleFunc("POST /link/heal", func(w http.ResponseWriter, r *http.Request) {
		s, _ := p.update(func(s *Settings) error { s.Heal(); return nil })
		p.writeStatus(w, s)
	})
	return mux
}

func (p *Proxy) writeStatus(w http.ResponseWriter, s Settings) {
	writeJSON(w, http.StatusOK, status{settingsJSON: s.toJSON(), Stats: p.Stats()})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// decodeStrict reads one JSON object: unknown fields, trailing data and an
// empty body are errors.
func decodeStrict(r io.Reader, v any) error {
	dec := json.NewDecoder(r)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		if errors.Is(err, io.EOF) {
			return errors.New("link settings: empty body; send a JSON object such as {\"rtt\":\"20ms\"}")
		}
		if te, ok := errors.AsType[*json.UnmarshalTypeError](err); ok && te.Field == "" {
			return fmt.Errorf("link settings: got a JSON %s; send an object such as {\"rtt\":\"20ms\"}", te.Value)
		}
		return fmt.Errorf("link settings: %w", err)
	}
	if dec.More() {
		return errors.New("link settings: trailing data after the JSON object")
	}
	return nil
}
