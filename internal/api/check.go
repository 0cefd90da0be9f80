package api

import (
	"context"
	"net/http"
	"time"
)

// Checker is implemented by a backend that can verify its store while it
// runs (metro array check): every block's checksum, every chunk's key and
// the allocation maps, like fsck, without stopping I/O.
type Checker interface {
	// StartCheck starts a check unless one is running, and returns the
	// running one.
	StartCheck() CheckRun
	// LastCheck returns the running or the last check, if any ran since
	// the array started.
	LastCheck() (CheckRun, bool)
}

// CheckRun is a check of the array's store (POST and GET /array/check).
type CheckRun struct {
	// State is "running", "done" (the check ran to its end, whatever it
	// found) or "failed" (it could not run to its end: Error says why).
	State    string     `json:"state"`
	Started  time.Time  `json:"started"`
	Finished *time.Time `json:"finished,omitempty"`
	// CheckedBytes counts the stored bytes checked so far, TotalBytes
	// those the store held when the check began.
	CheckedBytes int64 `json:"checked_bytes"`
	TotalBytes   int64 `json:"total_bytes"`
	// Damaged lists every run of damaged or unreadable blocks found.
	Damaged []DamagedRange `json:"damaged"`
	// Problems are the other inconsistencies found (allocation maps,
	// counters), the first ones; OmittedProblems counts the rest.
	Problems        []string `json:"problems"`
	OmittedProblems int      `json:"omitted_problems,omitempty"`
	Error           string   `json:"error,omitempty"`
}

// DamagedRange is a run of damaged blocks of a volume.
type DamagedRange struct {
	// Volume is the volume's name (pod::name), or "store volume N" for
	// blocks of no volume the array knows.
	Volume string `json:"volume"`
	LBA    uint64 `json:"lba"`
	Blocks uint64 `json:"blocks"`
	Reason string `json:"reason"`
}

func (s *Server) checker() (Checker, error) {
	c, ok := s.b.(Checker)
	if !ok {
		return nil, &httpError{code: http.StatusNotImplemented, msg: "this array cannot check its store"}
	}
	return c, nil
}

func (s *Server) startCheck(w http.ResponseWriter, r *http.Request) error {
	c, err := s.checker()
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusAccepted, c.StartCheck())
	return nil
}

func (s *Server) getCheck(w http.ResponseWriter, r *http.Request) error {
	c, err := s.checker()
	if err != nil {
		return err
	}
	run, ok := c.LastCheck()
	if !ok {
		return &httpError{code: http.StatusNotFound, msg: "no check has run since the array started: start one with metro array check"}
	}
	writeJSON(w, http.StatusOK, run)
	return nil
}

// StartCheck starts a check of the array's store (or joins the running
// one).
func (c *Client) StartCheck(ctx context.Context) (CheckRun, error) {
	var out CheckRun
	return out, c.Do(ctx, http.MethodPost, "/array/check", nil, &out)
}

// Check returns the running or last check of the array's store.
func (c *Client) Check(ctx context.Context) (CheckRun, error) {
	var out CheckRun
	return out, c.Do(ctx, http.MethodGet, "/array/check", nil, &out)
}
