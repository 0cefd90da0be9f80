package array

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/metro-storage/metro/internal/api"
	"github.com/metro-storage/metro/internal/catalog"
	"github.com/metro-storage/metro/internal/mediator"
	"github.com/metro-storage/metro/internal/pod"
	"github.com/metro-storage/metro/internal/replication"
)

// The files of the data directory that hold the mediator set with `metro
// array setattr --mediator`, and the array's memory of mediators.
const (
	mediatorSettingFile = "mediator.json"
	mediatorKeyFile     = "mediator-authkey"
	mediatorSeenFile    = "mediator-seen.json"
)

// setDefaults checks the mediator section and fills in its defaults.
func (m *MediatorConfig) setDefaults() error {
	if m.Heartbeat.Duration < 0 || m.Timeout.Duration < 0 {
		return fmt.Errorf("mediator: heartbeat and timeout must be positive durations (none: the defaults, %v and %v)",
			mediator.DefaultHeartbeat, mediator.DefaultTimeout)
	}
	if m.Heartbeat.Duration == 0 {
		m.Heartbeat.Duration = mediator.DefaultHeartbeat
	}
	if m.Timeout.Duration == 0 {
		m.Timeout.Duration = mediator.DefaultTimeout
	}
	if m.URL == "" {
		if m.AuthKeyFile != "" || m.CAFile != "" {
			return fmt.Errorf("mediator: authkey_file and ca_file need url, the mediator's https:// address")
		}
		return nil
	}
	if m.AuthKeyFile == "" {
		return fmt.Errorf("mediator: url %s needs authkey_file, the file holding the mediator's auth key", m.URL)
	}
	// The key and certificate are read at start; here only the URL.
	return mediator.CheckConfig(mediator.ClientConfig{URL: m.URL, AuthKey: mediator.NewKey()})
}

// mediatorSetting is a mediator set with `metro array setattr`, kept in
// mediatorSettingFile (its key in mediatorKeyFile). URL "" records that
// the mediator was removed.
type mediatorSetting struct {
	URL string `json:"url"`
	CA  string `json:"ca,omitempty"`
}

// mediatorClientConfig returns the mediator to use: the one set with
// setattr if any, else the configuration file's.
func (a *Array) mediatorClientConfig() (mediator.ClientConfig, error) {
	mc := a.cfg.Mediator
	cfg := mediator.ClientConfig{Heartbeat: mc.Heartbeat.Duration, Timeout: mc.Timeout.Duration}
	data, err := os.ReadFile(filepath.Join(a.cfg.DataDir, mediatorSettingFile))
	switch {
	case err == nil:
		var s mediatorSetting
		if err := json.Unmarshal(data, &s); err != nil {
			return cfg, fmt.Errorf("mediator setting %s: %w: set the mediator again with metro array setattr --mediator",
				mediatorSettingFile, err)
		}
		if mc.URL != "" {
			a.log.Info("using the mediator set with metro array setattr, not the one of the configuration file", "url", s.URL)
		}
		if s.URL == "" {
			return cfg, nil
		}
		cfg.URL, cfg.CA = s.URL, []byte(s.CA)
		cfg.AuthKey, err = mediator.ReadKeyFile(filepath.Join(a.cfg.DataDir, mediatorKeyFile))
		return cfg, err
	case !errors.Is(err, os.ErrNotExist):
		return cfg, fmt.Errorf("mediator setting: %w", err)
	case mc.URL == "":
		return cfg, nil
	}
	cfg.URL = mc.URL
	if cfg.AuthKey, err = mediator.ReadKeyFile(mc.AuthKeyFile); err != nil {
		return cfg, fmt.Errorf("mediator: authkey_file: %w", err)
	}
	if mc.CAFile != "" {
		if cfg.CA, err = os.ReadFile(mc.CAFile); err != nil {
			return cfg, fmt.Errorf("mediator: ca_file: %w", err)
		}
	}
	return cfg, nil
}

// setupMediator makes the mediator client (not configured when there is
// no mediator); Run runs its heartbeats.
func (a *Array) setupMediator() error {
	cfg, err := a.mediatorClientConfig()
	if err != nil {
		return err
	}
	seen := ""
	if a.fsIsReal {
		seen = filepath.Join(a.cfg.DataDir, mediatorSeenFile)
	}
	a.med, err = mediator.NewClient(mediator.ClientOptions{ArrayID: a.id.ID, SeenFile: seen,
		Logger: a.log.With("component", "mediator"), Now: a.now}, cfg)
	return err
}

// Mediator returns the array's mediator client (never nil; its status is
// "not configured" without a mediator).
func (a *Array) Mediator() *mediator.Client { return a.med }

var _ api.MediatorAdmin = (*Array)(nil)

// SetMediator implements api.MediatorAdmin: it checks the setting, asks
// the mediator once (refusing a key it refuses or a certificate this
// array cannot verify; a mediator that does not answer is accepted and
// shown unreachable), keeps the setting in the data directory (the key
// 0600) and uses it at once.
func (a *Array) SetMediator(ctx context.Context, s api.MediatorSetting) error {
	a.medMu.Lock()
	defer a.medMu.Unlock()
	cfg := mediator.ClientConfig{URL: s.URL, AuthKey: s.AuthKey, CA: []byte(s.CA),
		Heartbeat: a.cfg.Mediator.Heartbeat.Duration, Timeout: a.cfg.Mediator.Timeout.Duration}
	if s.URL == "" {
		if s.AuthKey != "" || s.CA != "" {
			return fmt.Errorf("mediator: %w: no auth key or certificate goes with removing the mediator", catalog.ErrInvalid)
		}
	} else {
		if err := mediator.CheckConfig(cfg); err != nil {
			return fmt.Errorf("%w: %v", catalog.ErrInvalid, err)
		}
		if err := a.probeMediator(ctx, cfg); err != nil {
			return err
		}
	}
	if a.fsIsReal {
		if err := a.saveMediatorSetting(cfg); err != nil {
			return fmt.Errorf("mediator setting: %w", err)
		}
	}
	if err := a.med.Reconfigure(cfg); err != nil {
		return err
	}
	a.med.Heartbeat(ctx) // so that the answer shows the mediator's state
	if s.URL == "" {
		a.log.Info("mediator removed")
	} else {
		a.log.Info("mediator set", "url", a.med.URL())
	}
	return nil
}

// probeMediator heartbeats the mediator of cfg once: an answer refusing
// the key, or a certificate that does not verify, is an error that says
// what to fix; silence is not.
func (a *Array) probeMediator(ctx context.Context, cfg mediator.ClientConfig) error {
	c, err := mediator.NewClient(mediator.ClientOptions{ArrayID: a.id.ID}, cfg)
	if err != nil {
		return fmt.Errorf("%w: %v", catalog.ErrInvalid, err)
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	st := c.Heartbeat(ctx)
	if st.State == mediator.StateUnreachable && (strings.Contains(st.Err, "auth key") || strings.Contains(st.Err, "certificate")) {
		return fmt.Errorf("mediator %s: %w: %s; nothing was changed", cfg.URL, catalog.ErrInvalid, st.Err)
	}
	if st.State != mediator.StateOnline {
		a.log.Warn("mediator set, but it does not answer yet", "url", cfg.URL, "err", st.Err)
	}
	return nil
}

// saveMediatorSetting keeps the setting in the data directory: the key
// first (0600), then the setting that names it.
func (a *Array) saveMediatorSetting(cfg mediator.ClientConfig) error {
	keyPath := filepath.Join(a.cfg.DataDir, mediatorKeyFile)
	if cfg.URL == "" {
		if err := os.Remove(keyPath); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	} else if err := writeFileSync(keyPath, []byte(cfg.AuthKey+"\n"), fileMode); err != nil {
		return err
	}
	data, _ := json.Marshal(mediatorSetting{URL: cfg.URL, CA: string(cfg.CA)})
	return writeFileSync(filepath.Join(a.cfg.DataDir, mediatorSettingFile), data, fileMode)
}

// mediatorInfo is the API's view of a mediator status.
func mediatorInfo(st mediator.Status) *api.MediatorInfo {
	out := &api.MediatorInfo{Status: st.State, RTTMillis: float64(st.RTT.Microseconds()) / 1000, Generation: st.Generation,
		Error: st.Err, URL: st.URL, ID: st.ID}
	if !st.Since.IsZero() {
		since := st.Since.UTC()
		out.Since = &since
	}
	return out
}

// peerMediatorInfo returns the peer's view of its mediator, as the peer
// last told it over the link; "unknown" while the link is down.
func (a *Array) peerMediatorInfo() *api.MediatorInfo {
	if a.repl == nil {
		return &api.MediatorInfo{Status: catalog.StatusUnknown}
	}
	st, ok := a.repl.PeerMediator()
	if !ok {
		return &api.MediatorInfo{Status: catalog.StatusUnknown}
	}
	return mediatorInfo(mediator.Status{State: st.State, RTT: st.RTT, Generation: st.Generation, Err: st.Err})
}

// arrayMediator is the array's mediator client as the replicator uses it
// (replication.Mediator); it reads the client when called, so that the
// replicator, made first, sees the client the array sets up after it.
type arrayMediator struct{ a *Array }

func (m arrayMediator) Elect(ctx context.Context, podID string, epoch uint64) (pod.ElectResult, error) {
	res, err := m.a.med.Elect(ctx, podID, epoch)
	if err != nil {
		return pod.ElectResult{}, err
	}
	return pod.ElectResult{Won: res.Won, Epoch: res.Epoch, Winner: res.Winner}, nil
}

func (m arrayMediator) Status() replication.MediatorStatus {
	st := m.a.med.Status()
	return replication.MediatorStatus{State: st.State, RTT: st.RTT, Generation: st.Generation, Err: st.Err, Since: st.Since}
}

func (m arrayMediator) Changed() <-chan struct{} { return m.a.med.Changed() }
