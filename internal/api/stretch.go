package api

import (
	"context"
	"fmt"
	"net/http"

	"github.com/metro-storage/metro/internal/catalog"
)

// Replication is implemented by a Backend that can pair with a peer array
// and stretch pods.
type Replication interface {
	// ConnectPeer pairs this array with the array whose API is given.
	ConnectPeer(ctx context.Context, req ArrayConnect) (PeerConnected, error)
	// Pair is the peer's half of ConnectPeer: it records the peer and
	// returns this array's pairing details.
	Pair(ctx context.Context, req Pairing) (Pairing, error)
	// StretchPod adds an array to a pod; UnstretchPod removes one.
	StretchPod(ctx context.Context, pod, array string) error
	UnstretchPod(ctx context.Context, pod, array string) error
	// EradicatePod deletes a pod copy pending eradication.
	EradicatePod(ctx context.Context, pod string) error
	// PodReplication reports a stretched pod's copy progress and last
	// replication error (nil for a local pod).
	PodReplication(p *catalog.Pod) *PodReplication
}

// ArrayConnect is the body of POST /array/connect.
type ArrayConnect struct {
	// PeerURL is the peer's management API, e.g. https://10.0.0.2:8443;
	// it must be HTTPS (RequireHTTPS).
	PeerURL string `json:"peer_url"`
	// Token is the peer's API token, used once to pair.
	Token string `json:"token"`
	// CA is the PEM certificate that signs the peer's API (optional).
	CA string `json:"ca,omitempty"`
}

// PeerConnected is the answer to POST /array/connect: the peer, and
// whether this array was already paired with it as it is (then nothing
// changed, and the link stayed up).
type PeerConnected struct {
	ArrayInfo
	AlreadyPaired bool `json:"already_paired"`
}

// Pairing is what two arrays exchange to pair (POST /array/pair).
type Pairing struct {
	Name string `json:"name"`
	ID   string `json:"id"`
	API  string `json:"api"`
	// LinkAddress is where the array's replication link listens.
	LinkAddress string `json:"link_address"`
	// LinkCert is the DER certificate the array's link presents.
	LinkCert []byte `json:"link_cert"`
	// LinkVersion is the replication protocol version it speaks.
	LinkVersion int    `json:"link_version"`
	Version     string `json:"version"`
}

// PodStretch is the body of POST /pods/{name}/arrays.
type PodStretch struct {
	Array string `json:"array"`
}

// PodReplication is a stretched pod's copy progress.
type PodReplication struct {
	// Copy progress while a baseline or resync runs.
	Percent    float64 `json:"percent"`
	BytesDone  int64   `json:"bytes_done"`
	BytesTotal int64   `json:"bytes_total"`
	// Rate is bytes per second; ETASeconds the estimated time left.
	Rate       int64   `json:"rate"`
	ETASeconds float64 `json:"eta_seconds"`
	Copying    bool    `json:"copying"`
	Error      string  `json:"error,omitempty"`
}

func (s *Server) replication() (Replication, error) {
	r, ok := s.b.(Replication)
	if !ok {
		return nil, &httpError{code: http.StatusNotImplemented, msg: "this array does not replicate"}
	}
	return r, nil
}

func (s *Server) connectPeer(w http.ResponseWriter, r *http.Request) error {
	rep, err := s.replication()
	if err != nil {
		return err
	}
	var req ArrayConnect
	if err := s.decode(r, &req); err != nil {
		return err
	}
	if req.PeerURL == "" || req.Token == "" {
		return badRequest("peer_url and token are required: the peer's API URL and token")
	}
	if err := RequireHTTPS(req.PeerURL); err != nil {
		return badRequest("%v", err)
	}
	info, err := rep.ConnectPeer(r.Context(), req)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, info)
	return nil
}

func (s *Server) pair(w http.ResponseWriter, r *http.Request) error {
	rep, err := s.replication()
	if err != nil {
		return err
	}
	var req Pairing
	if err := s.decode(r, &req); err != nil {
		return err
	}
	if req.Name == "" || req.ID == "" || req.LinkAddress == "" || len(req.LinkCert) == 0 {
		return badRequest("name, id, link_address and link_cert are required")
	}
	out, err := rep.Pair(r.Context(), req)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

func (s *Server) stretchPod(w http.ResponseWriter, r *http.Request) error {
	rep, err := s.replication()
	if err != nil {
		return err
	}
	var req PodStretch
	if err := s.decode(r, &req); err != nil {
		return err
	}
	if req.Array == "" {
		return badRequest("array is required: the array to stretch the pod to")
	}
	name := r.PathValue("name")
	if err := rep.StretchPod(r.Context(), name, req.Array); err != nil {
		return err
	}
	return s.writePod(w, name)
}

func (s *Server) unstretchPod(w http.ResponseWriter, r *http.Request) error {
	rep, err := s.replication()
	if err != nil {
		return err
	}
	name := r.PathValue("name")
	if err := rep.UnstretchPod(r.Context(), name, r.PathValue("array")); err != nil {
		return err
	}
	return s.writePod(w, name)
}

func (s *Server) eradicatePod(w http.ResponseWriter, r *http.Request) error {
	rep, err := s.replication()
	if err != nil {
		return err
	}
	if err := rep.EradicatePod(r.Context(), r.PathValue("name")); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (s *Server) writePod(w http.ResponseWriter, name string) error {
	st := s.b.State()
	p, ok := st.Pods[name]
	if !ok {
		return fmt.Errorf("pod %s: %w", name, catalog.ErrNotFound)
	}
	writeJSON(w, http.StatusOK, s.podInfo(st, p))
	return nil
}

// ConnectPeer pairs the array with a peer (metro array connect).
func (c *Client) ConnectPeer(ctx context.Context, req ArrayConnect) (PeerConnected, error) {
	var out PeerConnected
	err := c.Do(ctx, http.MethodPost, "/array/connect", req, &out)
	return out, err
}

// Pair sends this array's pairing details to a peer.
func (c *Client) Pair(ctx context.Context, req Pairing) (Pairing, error) {
	var out Pairing
	err := c.Do(ctx, http.MethodPost, "/array/pair", req, &out)
	return out, err
}

// StretchPod adds an array to a pod (metro pod add).
func (c *Client) StretchPod(ctx context.Context, pod, array string) (Pod, error) {
	var out Pod
	err := c.Do(ctx, http.MethodPost, "/pods/"+esc(pod)+"/arrays", PodStretch{Array: array}, &out)
	return out, err
}

// UnstretchPod removes an array from a pod (metro pod remove).
func (c *Client) UnstretchPod(ctx context.Context, pod, array string) (Pod, error) {
	var out Pod
	err := c.Do(ctx, http.MethodDelete, "/pods/"+esc(pod)+"/arrays/"+esc(array), nil, &out)
	return out, err
}

// EradicatePod deletes a pod copy pending eradication.
func (c *Client) EradicatePod(ctx context.Context, pod string) error {
	return c.Do(ctx, http.MethodPost, "/pods/"+esc(pod)+"/eradicate", nil, nil)
}

// PodsPending lists pods, with pending (eradication) copies when pending.
func (c *Client) PodsPending(ctx context.Context, pending bool) ([]Pod, error) {
	var out []Pod
	p := "/pods"
	if pending {
		p += "?pending=true"
	}
	err := c.Do(ctx, http.MethodGet, p, nil, &out)
	return out, err
}
