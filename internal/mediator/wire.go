package mediator

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"time"
)

// The mediator's endpoints.
const (
	PathHeartbeat = "/v1/heartbeat"
	PathElect     = "/v1/elect"
	PathStatus    = "/v1/status"
)

// DefaultPort is the mediator's default TCP port.
const DefaultPort = 9095

// MaxBody is the largest request body the mediator reads: 64 KiB. A
// larger one is refused (400) without being read further.
const MaxBody = 64 << 10

// MaxIDLen is the longest pod or array id accepted, in bytes.
const MaxIDLen = 128

// ErrInvalid marks a request the mediator refuses as malformed (HTTP 400).
var ErrInvalid = errors.New("invalid request")

// HeartbeatRequest is the body of POST /v1/heartbeat.
type HeartbeatRequest struct {
	Array string `json:"array"`
}

// HeartbeatResponse answers a heartbeat: who the mediator is and its
// (durable) generation.
type HeartbeatResponse struct {
	Mediator   string `json:"mediator"`
	Generation uint64 `json:"generation"`
	// ResetGeneration is the generation `metro mediator reset-generation`
	// last set (0: never).
	ResetGeneration uint64 `json:"reset_generation,omitempty"`
}

// ElectRequest is the body of POST /v1/elect: array asks to win pod at
// epoch Epoch.
type ElectRequest struct {
	Pod   string `json:"pod"`
	Epoch uint64 `json:"epoch"`
	Array string `json:"array"`
}

// ElectResponse answers an elect. Mediator is the mediator's id, as in a
// heartbeat's answer.
type ElectResponse struct {
	Mediator        string `json:"mediator"`
	Won             bool   `json:"won"`
	Epoch           uint64 `json:"epoch"`
	Winner          string `json:"winner"`
	Generation      uint64 `json:"generation"`
	ResetGeneration uint64 `json:"reset_generation,omitempty"`
}

// ErrorResponse is the body of every error answer.
type ErrorResponse struct {
	Error string `json:"error"`
}

// StatusResponse answers GET /v1/status: the mediator and the arrays that
// heartbeated it since it started.
type StatusResponse struct {
	Mediator        string      `json:"mediator"`
	Generation      uint64      `json:"generation"`
	ResetGeneration uint64      `json:"reset_generation,omitempty"`
	Started         time.Time   `json:"started"`
	Pods            int         `json:"pods"`
	Arrays          []ArraySeen `json:"arrays"`
}

// ArraySeen is an array that heartbeated the mediator.
type ArraySeen struct {
	Array  string    `json:"array"`
	Last   time.Time `json:"last_heartbeat"`
	Remote string    `json:"remote"`
}

// ParseHeartbeat reads a heartbeat request body strictly: one JSON object,
// no unknown fields, nothing after it, a valid array id.
func ParseHeartbeat(body []byte) (HeartbeatRequest, error) {
	var req HeartbeatRequest
	if err := decodeStrict(body, &req); err != nil {
		return req, err
	}
	if err := checkID("array", req.Array); err != nil {
		return req, err
	}
	return req, nil
}

// ParseElect reads an elect request body strictly (as ParseHeartbeat) and
// checks it (Validate).
func ParseElect(body []byte) (ElectRequest, error) {
	var req ElectRequest
	if err := decodeStrict(body, &req); err != nil {
		return req, err
	}
	return req, req.Validate()
}

// Validate checks an elect request: pod and array ids present and well
// formed, epoch from 1 to 2^64-2 (the answer's epoch is one more).
func (r ElectRequest) Validate() error {
	if err := checkID("pod", r.Pod); err != nil {
		return err
	}
	if err := checkID("array", r.Array); err != nil {
		return err
	}
	switch r.Epoch {
	case 0:
		return fmt.Errorf("%w: epoch is missing or 0: epochs start at 1", ErrInvalid)
	case math.MaxUint64:
		return fmt.Errorf("%w: epoch %d has no successor", ErrInvalid, r.Epoch)
	}
	return nil
}

// decodeStrict decodes body as exactly one JSON object into v.
func decodeStrict(body []byte, v any) error {
	if len(body) > MaxBody {
		return fmt.Errorf("%w: request body over %d KiB", ErrInvalid, MaxBody>>10)
	}
	if t := bytes.TrimLeft(body, " \t\r\n"); len(t) == 0 || t[0] != '{' {
		return fmt.Errorf("%w: request body must be a JSON object", ErrInvalid)
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%w: request body: %v", ErrInvalid, err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return fmt.Errorf("%w: request body: data after the JSON object", ErrInvalid)
	}
	return nil
}

// checkID checks a pod or array id: 1 to MaxIDLen bytes of letters,
// digits, '-', '_', '.' and ':'.
func checkID(what, id string) error {
	if id == "" {
		return fmt.Errorf("%w: %s id is missing or empty", ErrInvalid, what)
	}
	if len(id) > MaxIDLen {
		return fmt.Errorf("%w: %s id of %d bytes: at most %d", ErrInvalid, what, len(id), MaxIDLen)
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_' || c == '.' || c == ':') {
			return fmt.Errorf("%w: %s id %q: only letters, digits, '-', '_', '.' and ':' are allowed", ErrInvalid, what, id)
		}
	}
	return nil
}
