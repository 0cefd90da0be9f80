package api

import (
	"context"
	"net/http"
	"time"
)

// MediatorAdmin is implemented by a Backend whose mediator can be set
// live (metro array setattr --mediator).
type MediatorAdmin interface {
	// SetMediator checks and sets the mediator (none for an empty URL),
	// keeps it across restarts and uses it at once.
	SetMediator(ctx context.Context, s MediatorSetting) error
}

// MediatorInfo is the mediator as one array sees it.
type MediatorInfo struct {
	// Status is online, unreachable, rolled back or not configured (or
	// unknown: the array answering cannot learn a peer's view).
	Status string `json:"status"`
	// RTTMillis is the last heartbeat's round trip.
	RTTMillis float64 `json:"rtt_ms"`
	// Generation is the last generation the mediator reported.
	Generation uint64 `json:"generation"`
	// Error says why the status is not online, and what to do.
	Error string     `json:"error,omitempty"`
	URL   string     `json:"url,omitempty"`
	ID    string     `json:"id,omitempty"`
	Since *time.Time `json:"since,omitempty"`
}

// ArrayUpdate is the body of PATCH /array.
type ArrayUpdate struct {
	Mediator *MediatorSetting `json:"mediator,omitempty"`
}

// MediatorSetting sets an array's mediator. The key is stored 0600 on
// the array and never returned.
type MediatorSetting struct {
	// URL is the mediator's https:// address; "" removes the mediator.
	URL string `json:"url"`
	// AuthKey is the mediator's auth key (with a URL).
	AuthKey string `json:"authkey,omitempty"`
	// CA is the PEM certificate the mediator's chains to (optional).
	CA string `json:"ca,omitempty"`
}

func (s *Server) updateArray(w http.ResponseWriter, r *http.Request) error {
	var req ArrayUpdate
	if err := s.decode(r, &req); err != nil {
		return err
	}
	if req.Mediator == nil {
		return badRequest("nothing to change: give mediator {url, authkey, ca}")
	}
	ma, ok := s.b.(MediatorAdmin)
	if !ok {
		return &httpError{code: http.StatusNotImplemented, msg: "this array has no mediator client"}
	}
	if err := ma.SetMediator(r.Context(), *req.Mediator); err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, s.b.Info())
	return nil
}

// UpdateArray changes the array answering (metro array setattr).
func (c *Client) UpdateArray(ctx context.Context, u ArrayUpdate) (ArrayInfo, error) {
	var out ArrayInfo
	err := c.Do(ctx, http.MethodPatch, "/array", u, &out)
	return out, err
}
