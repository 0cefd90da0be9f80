package api

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/metro-storage/metro/internal/catalog"
	"github.com/metro-storage/metro/internal/store"
)

// Backend is what the API needs from an array.
type Backend interface {
	// Info describes the array answering.
	Info() ArrayInfo
	// Peers describes the arrays this one is paired with.
	Peers() []ArrayInfo
	// State returns the current configuration (read-only).
	State() *catalog.State
	// Apply makes a configuration change; it is durable and in effect
	// when Apply returns.
	Apply(ctx context.Context, op catalog.Op) error
	// Eradicate forgets a destroyed volume and deletes its blocks.
	Eradicate(ctx context.Context, volume string) error
	// PodArrays reports a pod's arrays with their status.
	PodArrays(p *catalog.Pod) []PodArray
	// VolumeUsed reports the bytes a volume has allocated.
	VolumeUsed(v *catalog.Volume) uint64
	// Sessions lists logged-in iSCSI sessions.
	Sessions() []Session
	// EradicationWindow is how long destroyed volumes stay recoverable.
	EradicationWindow() time.Duration
	// Now is the array's clock.
	Now() time.Time
	// NewID returns a fresh random 128-bit id in hex.
	NewID() string
}

// Server serves the REST API.
type Server struct {
	b      Backend
	token  string
	log    *slog.Logger
	mux    *http.ServeMux
	maxReq int64
}

// NewServer returns the API handler. An empty token disables
// authentication (only for tests).
func NewServer(b Backend, token string, log *slog.Logger) *Server {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Server{b: b, token: token, log: log, mux: http.NewServeMux(), maxReq: 1 << 20}
	s.routes()
	return s
}

func (s *Server) routes() {
	h := func(pattern string, fn func(w http.ResponseWriter, r *http.Request) error) {
		s.mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
			if err := fn(w, r); err != nil {
				s.fail(w, r, err)
			}
		})
	}
	h("GET "+Version+"/openapi.json", s.openAPI)
	h("GET "+Version+"/array", s.getArray)
	h("PATCH "+Version+"/array", s.updateArray)
	h("GET "+Version+"/arrays", s.listArrays)
	h("GET "+Version+"/pods", s.listPods)
	h("POST "+Version+"/pods", s.createPod)
	h("GET "+Version+"/pods/{name}", s.getPod)
	h("PATCH "+Version+"/pods/{name}", s.updatePod)
	h("DELETE "+Version+"/pods/{name}", s.destroyPod)
	h("GET "+Version+"/volumes", s.listVolumes)
	h("POST "+Version+"/volumes", s.createVolume)
	h("GET "+Version+"/volumes/{name}", s.getVolume)
	h("PATCH "+Version+"/volumes/{name}", s.updateVolume)
	h("DELETE "+Version+"/volumes/{name}", s.destroyVolume)
	h("POST "+Version+"/volumes/{name}/recover", s.recoverVolume)
	h("POST "+Version+"/volumes/{name}/eradicate", s.eradicateVolume)
	h("GET "+Version+"/hosts", s.listHosts)
	h("POST "+Version+"/hosts", s.createHost)
	h("GET "+Version+"/hosts/{name}", s.getHost)
	h("PATCH "+Version+"/hosts/{name}", s.updateHost)
	h("DELETE "+Version+"/hosts/{name}", s.deleteHost)
	h("GET "+Version+"/hgroups", s.listHostGroups)
	h("POST "+Version+"/hgroups", s.createHostGroup)
	h("GET "+Version+"/hgroups/{name}", s.getHostGroup)
	h("PATCH "+Version+"/hgroups/{name}", s.updateHostGroup)
	h("DELETE "+Version+"/hgroups/{name}", s.deleteHostGroup)
	h("GET "+Version+"/connections", s.listConnections)
	h("POST "+Version+"/connections", s.connect)
	h("DELETE "+Version+"/connections", s.disconnect)
	h("GET "+Version+"/sessions", s.listSessions)
	h("POST "+Version+"/array/connect", s.connectPeer)
	h("POST "+Version+"/array/pair", s.pair)
	h("POST "+Version+"/array/check", s.startCheck)
	h("GET "+Version+"/array/check", s.getCheck)
	h("POST "+Version+"/pods/{name}/arrays", s.stretchPod)
	h("DELETE "+Version+"/pods/{name}/arrays/{array}", s.unstretchPod)
	h("POST "+Version+"/pods/{name}/eradicate", s.eradicatePod)
	s.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusNotFound, Error{Error: fmt.Sprintf("no such endpoint %s %s; see %s/openapi.json", r.Method, r.URL.Path, Version)})
	})
}

// ServeHTTP authenticates and dispatches a request.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	defer func() {
		if v := recover(); v != nil {
			// A store failure is never handled here: the store has already
			// stopped the array (store.Options.OnFatal) before any panic.
			if err, ok := v.(error); ok && errors.Is(err, store.ErrFailed) {
				s.log.Error("api: the store failed during the request", "method", r.Method, "path", r.URL.Path, "err", err)
				writeJSON(w, http.StatusServiceUnavailable, Error{Error: storeFailedMessage})
				return
			}
			s.log.Error("api: panic", "method", r.Method, "path", r.URL.Path, "panic", v)
			writeJSON(w, http.StatusInternalServerError, Error{Error: "internal error"})
		}
	}()
	if r.URL.Path != Version+"/openapi.json" && s.token != "" {
		got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok || subtle.ConstantTimeCompare([]byte(got), []byte(s.token)) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="metro"`)
			writeJSON(w, http.StatusUnauthorized, Error{Error: "missing or wrong API token: pass --token or set METRO_TOKEN"})
			return
		}
	}
	s.mux.ServeHTTP(w, r)
}

// storeFailedMessage answers a request that met a failed store.
const storeFailedMessage = "this array's store failed (a change could not be made durable) and the array is stopping: use the other array of the pair, and restart this one once its disk is fixed"

// httpError carries a status for errors that are not catalog sentinels.
type httpError struct {
	code int
	msg  string
}

func (e *httpError) Error() string { return e.msg }

func badRequest(format string, args ...any) error {
	return &httpError{code: http.StatusBadRequest, msg: fmt.Sprintf(format, args...)}
}

func (s *Server) fail(w http.ResponseWriter, r *http.Request, err error) {
	code := http.StatusInternalServerError
	var he *httpError
	switch {
	case errors.As(err, &he):
		code = he.code
	case errors.Is(err, catalog.ErrNotFound):
		code = http.StatusNotFound
	case errors.Is(err, catalog.ErrExists), errors.Is(err, catalog.ErrConflict):
		code = http.StatusConflict
	case errors.Is(err, catalog.ErrInvalid):
		code = http.StatusBadRequest
	case errors.Is(err, store.ErrFailed):
		s.log.Error("api: request failed: the store failed", "method", r.Method, "path", r.URL.Path, "err", err)
		writeJSON(w, http.StatusServiceUnavailable, Error{Error: storeFailedMessage})
		return
	}
	if code >= 500 {
		s.log.Error("api: request failed", "method", r.Method, "path", r.URL.Path, "err", err)
	}
	writeJSON(w, code, Error{Error: err.Error()})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// decode reads a JSON body strictly: unknown fields, trailing data and
// oversized bodies are 400s.
func (s *Server) decode(r *http.Request, v any) error {
	body := http.MaxBytesReader(nil, r.Body, s.maxReq)
	dec := json.NewDecoder(body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		if errors.Is(err, io.EOF) {
			return badRequest("request body is empty: send a JSON object")
		}
		return badRequest("request body: %v", err)
	}
	if dec.More() {
		return badRequest("request body: trailing data after the JSON object")
	}
	return nil
}

func (s *Server) apply(r *http.Request, op catalog.Op) error {
	return s.b.Apply(r.Context(), op)
}

func (s *Server) openAPI(w http.ResponseWriter, r *http.Request) error {
	w.Header().Set("Content-Type", "application/json")
	_, err := w.Write(openAPIDoc)
	return err
}

func (s *Server) getArray(w http.ResponseWriter, r *http.Request) error {
	writeJSON(w, http.StatusOK, s.b.Info())
	return nil
}

func (s *Server) listArrays(w http.ResponseWriter, r *http.Request) error {
	writeJSON(w, http.StatusOK, append([]ArrayInfo{s.b.Info()}, s.b.Peers()...))
	return nil
}

func (s *Server) podInfo(st *catalog.State, p *catalog.Pod) Pod {
	out := Pod{Name: p.Name, ID: p.ID, Created: p.Created, Arrays: s.b.PodArrays(p),
		Sequencer: p.Sequencer, Epoch: p.Epoch, FailoverPreference: p.FailoverPreference, AutoRecover: p.AutoRecover}
	out.Pending = p.Pending
	if rep, ok := s.b.(Replication); ok {
		out.Replication = rep.PodReplication(p)
	}
	for _, v := range st.PodVolumes(p.Name) {
		if v.Destroyed == nil {
			out.Volumes++
			out.Provisioned += v.Size
		}
		out.Used += s.b.VolumeUsed(v)
	}
	return out
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

func (s *Server) listPods(w http.ResponseWriter, r *http.Request) error {
	st := s.b.State()
	pending, err := boolParam(r, "pending")
	if err != nil {
		return err
	}
	out := []Pod{}
	for _, p := range st.SortedPods() {
		if (p.Pending != nil) != pending {
			continue
		}
		out = append(out, s.podInfo(st, p))
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

func (s *Server) getPod(w http.ResponseWriter, r *http.Request) error {
	st := s.b.State()
	p, ok := st.Pods[r.PathValue("name")]
	if !ok {
		return fmt.Errorf("pod %s: %w", r.PathValue("name"), catalog.ErrNotFound)
	}
	writeJSON(w, http.StatusOK, s.podInfo(st, p))
	return nil
}

func (s *Server) createPod(w http.ResponseWriter, r *http.Request) error {
	var req PodCreate
	if err := s.decode(r, &req); err != nil {
		return err
	}
	info := s.b.Info()
	if err := s.apply(r, catalog.CreatePod{Name: req.Name, ID: s.b.NewID(), Created: s.b.Now(),
		Array: catalog.PodArray{Name: info.Name, ID: info.ID}}); err != nil {
		return err
	}
	st := s.b.State()
	writeJSON(w, http.StatusCreated, s.podInfo(st, st.Pods[req.Name]))
	return nil
}

func (s *Server) updatePod(w http.ResponseWriter, r *http.Request) error {
	var req PodUpdate
	if err := s.decode(r, &req); err != nil {
		return err
	}
	if req.FailoverPreference == nil && req.AutoRecover == nil {
		return badRequest("nothing to change: give failover_preference or auto_recover")
	}
	name := r.PathValue("name")
	if err := s.apply(r, catalog.SetPodAttr{Name: name, FailoverPreference: req.FailoverPreference, AutoRecover: req.AutoRecover}); err != nil {
		return err
	}
	st := s.b.State()
	writeJSON(w, http.StatusOK, s.podInfo(st, st.Pods[name]))
	return nil
}

func (s *Server) destroyPod(w http.ResponseWriter, r *http.Request) error {
	if err := s.apply(r, catalog.DestroyPod{Name: r.PathValue("name")}); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (s *Server) volumeInfo(st *catalog.State, v *catalog.Volume) Volume {
	out := Volume{Name: v.Name, Pod: v.Pod, UUID: v.UUID, Serial: v.UUID, Size: v.Size,
		Used: s.b.VolumeUsed(v), Created: v.Created, Destroyed: v.Destroyed, Connections: []VolumeConnection{}}
	if v.Destroyed != nil {
		at := v.Destroyed.Add(s.b.EradicationWindow())
		out.EradicateAt = &at
	}
	for _, c := range st.ConnectionsOf(v.Name) {
		out.Connections = append(out.Connections, VolumeConnection{Host: c.Host, HostGroup: c.HostGroup, LUN: c.LUN})
	}
	return out
}

func boolParam(r *http.Request, name string) (bool, error) {
	v := r.URL.Query().Get(name)
	if v == "" {
		return false, nil
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		return false, badRequest("query parameter %s=%q: want true or false", name, v)
	}
	return b, nil
}

func (s *Server) listVolumes(w http.ResponseWriter, r *http.Request) error {
	pending, err := boolParam(r, "pending")
	if err != nil {
		return err
	}
	pod := r.URL.Query().Get("pod")
	st := s.b.State()
	if pod != "" {
		if _, ok := st.Pods[pod]; !ok {
			return fmt.Errorf("pod %s: %w", pod, catalog.ErrNotFound)
		}
	}
	out := []Volume{}
	for _, v := range st.SortedVolumes() {
		if (v.Destroyed != nil) != pending || (pod != "" && v.Pod != pod) {
			continue
		}
		out = append(out, s.volumeInfo(st, v))
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

func (s *Server) getVolume(w http.ResponseWriter, r *http.Request) error {
	st := s.b.State()
	v, ok := st.Volumes[r.PathValue("name")]
	if !ok {
		return fmt.Errorf("volume %s: %w", r.PathValue("name"), catalog.ErrNotFound)
	}
	writeJSON(w, http.StatusOK, s.volumeInfo(st, v))
	return nil
}

func (s *Server) createVolume(w http.ResponseWriter, r *http.Request) error {
	var req VolumeCreate
	if err := s.decode(r, &req); err != nil {
		return err
	}
	if err := s.apply(r, catalog.CreateVolume{Name: req.Name, UUID: s.b.NewID(), Size: req.Size, Created: s.b.Now()}); err != nil {
		return err
	}
	st := s.b.State()
	writeJSON(w, http.StatusCreated, s.volumeInfo(st, st.Volumes[req.Name]))
	return nil
}

func (s *Server) updateVolume(w http.ResponseWriter, r *http.Request) error {
	var req VolumeUpdate
	if err := s.decode(r, &req); err != nil {
		return err
	}
	name := r.PathValue("name")
	if err := s.apply(r, catalog.ResizeVolume{Name: name, Size: req.Size}); err != nil {
		return err
	}
	st := s.b.State()
	writeJSON(w, http.StatusOK, s.volumeInfo(st, st.Volumes[name]))
	return nil
}

func (s *Server) destroyVolume(w http.ResponseWriter, r *http.Request) error {
	force, err := boolParam(r, "force")
	if err != nil {
		return err
	}
	name := r.PathValue("name")
	if err := s.apply(r, catalog.DestroyVolume{Name: name, At: s.b.Now(), Force: force}); err != nil {
		return err
	}
	st := s.b.State()
	writeJSON(w, http.StatusOK, s.volumeInfo(st, st.Volumes[name]))
	return nil
}

func (s *Server) recoverVolume(w http.ResponseWriter, r *http.Request) error {
	name := r.PathValue("name")
	if err := s.apply(r, catalog.RecoverVolume{Name: name}); err != nil {
		return err
	}
	st := s.b.State()
	writeJSON(w, http.StatusOK, s.volumeInfo(st, st.Volumes[name]))
	return nil
}

func (s *Server) eradicateVolume(w http.ResponseWriter, r *http.Request) error {
	if err := s.b.Eradicate(r.Context(), r.PathValue("name")); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (s *Server) hostInfo(st *catalog.State, h *catalog.Host, sessions []Session) Host {
	out := Host{Name: h.Name, IQNs: nonNil(h.IQNs), CHAPUser: h.CHAPUser, TargetCHAPUser: h.TargetCHAPUser,
		PreferredArrays: nonNil(h.PreferredArrays), HostGroups: nonNil(st.HostGroupsOf(h.Name)), Connections: []HostConnection{}}
	groups := st.HostGroupsOf(h.Name)
	for _, c := range st.Connections {
		if c.Host == h.Name || (c.HostGroup != "" && slices.Contains(groups, c.HostGroup)) {
			out.Connections = append(out.Connections, HostConnection{Volume: c.Volume, LUN: c.LUN, HostGroup: c.HostGroup})
		}
	}
	for _, se := range sessions {
		if se.Host == h.Name {
			out.Sessions++
		}
	}
	return out
}

func (s *Server) listHosts(w http.ResponseWriter, r *http.Request) error {
	st := s.b.State()
	sessions := s.b.Sessions()
	out := []Host{}
	for _, h := range st.SortedHosts() {
		out = append(out, s.hostInfo(st, h, sessions))
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

func (s *Server) getHost(w http.ResponseWriter, r *http.Request) error {
	st := s.b.State()
	h, ok := st.Hosts[r.PathValue("name")]
	if !ok {
		return fmt.Errorf("host %s: %w", r.PathValue("name"), catalog.ErrNotFound)
	}
	writeJSON(w, http.StatusOK, s.hostInfo(st, h, s.b.Sessions()))
	return nil
}

func (s *Server) createHost(w http.ResponseWriter, r *http.Request) error {
	var req HostCreate
	if err := s.decode(r, &req); err != nil {
		return err
	}
	if err := s.checkArrays(req.PreferredArrays); err != nil {
		return err
	}
	h := catalog.Host{Name: req.Name, IQNs: req.IQNs, CHAPUser: req.CHAPUser, CHAPSecret: req.CHAPSecret,
		TargetCHAPUser: req.TargetCHAPUser, TargetCHAPSecret: req.TargetCHAPSecret, PreferredArrays: req.PreferredArrays}
	if err := s.apply(r, catalog.CreateHost{Host: h}); err != nil {
		return err
	}
	st := s.b.State()
	writeJSON(w, http.StatusCreated, s.hostInfo(st, st.Hosts[req.Name], s.b.Sessions()))
	return nil
}

// checkArrays checks that preferred arrays name this array or a peer.
func (s *Server) checkArrays(names []string) error {
	known := []string{s.b.Info().Name}
	for _, p := range s.b.Peers() {
		known = append(known, p.Name)
	}
	for _, n := range names {
		if !slices.Contains(known, n) {
			return badRequest("preferred array %q: no such array (known: %s)", n, strings.Join(known, ", "))
		}
	}
	return nil
}

func (s *Server) updateHost(w http.ResponseWriter, r *http.Request) error {
	var req HostUpdate
	if err := s.decode(r, &req); err != nil {
		return err
	}
	if req.PreferredArrays != nil {
		if err := s.checkArrays(*req.PreferredArrays); err != nil {
			return err
		}
	}
	name := r.PathValue("name")
	if err := s.apply(r, catalog.SetHostAttr{Name: name, AddIQNs: req.AddIQNs, RemoveIQNs: req.RemoveIQNs,
		CHAPUser: req.CHAPUser, CHAPSecret: req.CHAPSecret, TargetCHAPUser: req.TargetCHAPUser,
		TargetCHAPSecret: req.TargetCHAPSecret, PreferredArrays: req.PreferredArrays}); err != nil {
		return err
	}
	st := s.b.State()
	writeJSON(w, http.StatusOK, s.hostInfo(st, st.Hosts[name], s.b.Sessions()))
	return nil
}

func (s *Server) deleteHost(w http.ResponseWriter, r *http.Request) error {
	if err := s.apply(r, catalog.DeleteHost{Name: r.PathValue("name")}); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (s *Server) groupInfo(st *catalog.State, g *catalog.HostGroup) HostGroup {
	out := HostGroup{Name: g.Name, Hosts: nonNil(g.Hosts), Connections: []HostConnection{}}
	for _, c := range st.Connections {
		if c.HostGroup == g.Name {
			out.Connections = append(out.Connections, HostConnection{Volume: c.Volume, LUN: c.LUN})
		}
	}
	return out
}

func (s *Server) listHostGroups(w http.ResponseWriter, r *http.Request) error {
	st := s.b.State()
	out := []HostGroup{}
	for _, g := range st.SortedHostGroups() {
		out = append(out, s.groupInfo(st, g))
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

func (s *Server) getHostGroup(w http.ResponseWriter, r *http.Request) error {
	st := s.b.State()
	g, ok := st.HostGroups[r.PathValue("name")]
	if !ok {
		return fmt.Errorf("host group %s: %w", r.PathValue("name"), catalog.ErrNotFound)
	}
	writeJSON(w, http.StatusOK, s.groupInfo(st, g))
	return nil
}

func (s *Server) createHostGroup(w http.ResponseWriter, r *http.Request) error {
	var req HostGroupCreate
	if err := s.decode(r, &req); err != nil {
		return err
	}
	if err := s.apply(r, catalog.CreateHostGroup{Name: req.Name, Hosts: req.Hosts}); err != nil {
		return err
	}
	st := s.b.State()
	writeJSON(w, http.StatusCreated, s.groupInfo(st, st.HostGroups[req.Name]))
	return nil
}

func (s *Server) updateHostGroup(w http.ResponseWriter, r *http.Request) error {
	var req HostGroupUpdate
	if err := s.decode(r, &req); err != nil {
		return err
	}
	name := r.PathValue("name")
	if err := s.apply(r, catalog.SetHostGroupAttr{Name: name, AddHosts: req.AddHosts, RemoveHosts: req.RemoveHosts}); err != nil {
		return err
	}
	st := s.b.State()
	writeJSON(w, http.StatusOK, s.groupInfo(st, st.HostGroups[name]))
	return nil
}

func (s *Server) deleteHostGroup(w http.ResponseWriter, r *http.Request) error {
	if err := s.apply(r, catalog.DeleteHostGroup{Name: r.PathValue("name")}); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (s *Server) listConnections(w http.ResponseWriter, r *http.Request) error {
	out := []Connection{}
	for _, c := range s.b.State().Connections {
		lun := c.LUN
		out = append(out, Connection{Volume: c.Volume, Host: c.Host, HostGroup: c.HostGroup, LUN: &lun})
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

func (s *Server) connect(w http.ResponseWriter, r *http.Request) error {
	var req Connection
	if err := s.decode(r, &req); err != nil {
		return err
	}
	if err := s.apply(r, catalog.Connect{Volume: req.Volume, Host: req.Host, HostGroup: req.HostGroup, LUN: req.LUN}); err != nil {
		return err
	}
	for _, c := range s.b.State().ConnectionsOf(req.Volume) {
		if c.Host == req.Host && c.HostGroup == req.HostGroup {
			lun := c.LUN
			req.LUN = &lun
		}
	}
	writeJSON(w, http.StatusCreated, req)
	return nil
}

func (s *Server) disconnect(w http.ResponseWriter, r *http.Request) error {
	q := r.URL.Query()
	if q.Get("volume") == "" {
		return badRequest("query parameter volume is required")
	}
	if err := s.apply(r, catalog.Disconnect{Volume: q.Get("volume"), Host: q.Get("host"), HostGroup: q.Get("host_group")}); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (s *Server) listSessions(w http.ResponseWriter, r *http.Request) error {
	out := s.b.Sessions()
	if out == nil {
		out = []Session{}
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}
