// Package array is the array daemon: it opens the local store and the
// configuration, builds a SCSI logical unit for every volume, serves them
// over iSCSI with LUN masking by host, and serves the management API.
package array

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/metro-storage/metro/internal/api"
	"github.com/metro-storage/metro/internal/catalog"
	"github.com/metro-storage/metro/internal/iscsi"
	"github.com/metro-storage/metro/internal/mediator"
	"github.com/metro-storage/metro/internal/replication"
	"github.com/metro-storage/metro/internal/scsi"
	"github.com/metro-storage/metro/internal/store"
)

// Version is the metro version the array reports.
const Version = "0.1.0"

// Options configure an array.
type Options struct {
	Config *Config
	Logger *slog.Logger
	// Now is the clock (time.Now when nil); tests inject one.
	Now func() time.Time
	// FS is the store's filesystem (the real disk when nil).
	FS vfs.FS
	// Fatal is called once if the array cannot continue safely: its store
	// could not make a change durable. It should stop the process at once
	// (metro array run logs and exits), so that the peer sees the link
	// drop and takes over; no panic recovery stands in the way. Whether or
	// not it returns, Run then stops and returns the failure.
	Fatal func(error)
	// StoreFaultTrigger is the store's test-only fault-injection hook
	// (store.Options.FaultTrigger); empty in production.
	StoreFaultTrigger string
}

// Array is one running metro array.
type Array struct {
	cfg    *Config
	log    *slog.Logger
	now    func() time.Time
	id     Identity
	store  *store.Store
	cat    *catalog.Catalog
	target *scsi.Target
	iscsi  *iscsi.Server
	token  string
	caFile string
	cert   *tls.Certificate

	// luMu guards lus, the logical units by volume data id; the lookup
	// table hosts use is rebuilt from it after each configuration change.
	luMu   sync.Mutex
	lus    map[uint64]*scsi.LogicalUnit
	byUUID map[string]*scsi.LogicalUnit
	// known maps the data ids of the volumes in the configuration to
	// their UUIDs, to notice eradications.
	known map[uint64]string
	view  luView

	// tpg and rtpi are the array's ALUA numbers (derived from its id).
	tpg, rtpi uint16

	repl     *replication.Replicator
	linkCert tls.Certificate
	// med is the mediator client; medMu serializes changes of its setting.
	med      *mediator.Client
	medMu    sync.Mutex
	linkLn   net.Listener
	fsIsReal bool

	// fatal is Options.Fatal; failed receives the store's failure, which
	// stops Run.
	fatal  func(error)
	failed chan error

	// check runs `metro array check` (check.go).
	check checker

	// holdReplication, when set (tests), is called by Run before the
	// replicator starts, while the iSCSI server already serves: it holds
	// the start, to open the window in which no pod has a runtime yet.
	holdReplication func(context.Context)
}

// Open opens the array's store and configuration and builds its logical
// units. Run serves them.
func Open(opts Options) (*Array, error) {
	cfg := opts.Config
	a := &Array{cfg: cfg, log: opts.Logger, now: opts.Now, lus: map[uint64]*scsi.LogicalUnit{},
		byUUID: map[string]*scsi.LogicalUnit{}, known: map[uint64]string{}, fsIsReal: opts.FS == nil,
		fatal: opts.Fatal, failed: make(chan error, 1)}
	if a.log == nil {
		a.log = slog.New(slog.DiscardHandler)
	}
	if a.now == nil {
		a.now = time.Now
	}
	if opts.FS == nil {
		if err := secureDataDir(cfg.DataDir, a.log); err != nil {
			return nil, err
		}
	}
	st, err := store.Open(filepath.Join(cfg.DataDir, "store"), store.Options{FS: opts.FS, Capacity: cfg.CapacityBytes(),
		FilesystemShare: cfg.FilesystemShare, MaxDiskStall: cfg.MaxDiskStall.Duration, Logger: a.log,
		OnFatal: a.storeFailed, FaultTrigger: opts.StoreFaultTrigger})
	if err != nil {
		return nil, fmt.Errorf("open store: %w", err)
	}
	a.store = st
	if a.id, err = loadIdentity(st, cfg.Name, a.now()); err != nil {
		st.Close()
		return nil, err
	}
	a.tpg, a.rtpi = a.id.TargetPortGroup(), a.id.RelativePortID()
	if a.cat, err = catalog.Open(metaPersister{st: st, key: "cfg/catalog"}); err != nil {
		st.Close()
		return nil, err
	}
	a.target = scsi.NewTarget(scsi.TargetConfig{Resolver: &a.view, Logger: a.log})
	a.view.array = a
	if err := a.setupReplication(); err != nil {
		st.Close()
		return nil, err
	}
	if err := a.setupMediator(); err != nil {
		st.Close()
		return nil, err
	}
	a.cat.Watch(a.configChanged)
	icfg := iscsi.Config{
		Backend:        a,
		Executor:       a.target,
		TPGT:           a.id.PortalGroupTag(),
		RelativePortID: a.id.RelativePortID(),
		Logger:         a.log.With("component", "iscsi"),
	}
	a.cfg.ISCSI.Limits.apply(&icfg)
	a.iscsi = iscsi.NewServer(icfg)
	return a, nil
}

// storeFailed is the store's OnFatal: the array cannot go on serving (what
// it would serve may never have been durable), so it stops.
func (a *Array) storeFailed(err error) {
	a.log.Error("the store cannot make changes durable; stopping the array so that its peer takes over; restart it once the disk is fixed",
		"err", err)
	if a.fatal != nil {
		a.fatal(err)
	}
	select {
	case a.failed <- fmt.Errorf("store failed: %w", err):
	default:
	}
}

// metaPersister keeps the catalog document in the store's metadata.
type metaPersister struct {
	st  *store.Store
	key string
}

func (p metaPersister) Load() ([]byte, bool, error) { return p.st.GetMeta(p.key) }
func (p metaPersister) Save(data []byte) error {
	b := p.st.NewBatch()
	b.SetMeta(p.key, data)
	return b.Commit()
}

// Identity returns the array's identity.
func (a *Array) Identity() Identity { return a.id }

// Catalog returns the array's configuration.
func (a *Array) Catalog() *catalog.Catalog { return a.cat }

// Store returns the array's store.
func (a *Array) Store() *store.Store { return a.store }

// Token returns the API token in force.
func (a *Array) Token() string { return a.token }

// CAFile returns the PEM file clients should trust, when TLS is on.
func (a *Array) CAFile() string { return a.caFile }

// Run serves iSCSI and the API until ctx is done, then stops everything
// and closes the store. ready, when non-nil, is called once every
// listener is up.
func (a *Array) Run(ctx context.Context, ready func()) (err error) {
	defer func() {
		if cerr := a.store.Close(); err == nil && cerr != nil {
			err = cerr
		}
	}()
	if err := a.setupAPIAuth(); err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	a.setCheckContext(ctx)

	var listeners []net.Listener
	closeAll := func() {
		for _, l := range listeners {
			l.Close()
		}
	}
	for _, addr := range a.cfg.ISCSI.Listen {
		l, err := net.Listen("tcp", addr)
		if err != nil {
			closeAll()
			return fmt.Errorf("iscsi listen %s: %w", addr, err)
		}
		listeners = append(listeners, l)
	}
	apiL, err := net.Listen("tcp", a.cfg.API.Listen)
	if err != nil {
		closeAll()
		return fmt.Errorf("api listen %s: %w", a.cfg.API.Listen, err)
	}
	if err := a.listenLink(); err != nil {
		apiL.Close()
		closeAll()
		return err
	}

	srv := api.NewHTTPServer(api.NewServer(a, a.token, a.log.With("component", "api")), a.cfg.apiTimeouts())
	if a.cert != nil {
		srv.TLSConfig = &tls.Config{Certificates: []tls.Certificate{*a.cert}, MinVersion: tls.VersionTLS12}
		apiL = tls.NewListener(apiL, srv.TLSConfig)
	}

	var wg sync.WaitGroup
	errs := make(chan error, len(listeners)+2)
	wg.Add(1)
	go func() {
		defer wg.Done()
		if a.holdReplication != nil {
			a.holdReplication(ctx)
		}
		if err := a.repl.Run(ctx, a.linkLn); err != nil && ctx.Err() == nil {
			errs <- fmt.Errorf("replication: %w", err)
		}
	}()
	for _, l := range listeners {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := a.iscsi.Serve(ctx, l); err != nil && ctx.Err() == nil {
				errs <- fmt.Errorf("iscsi: %w", err)
			}
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := srv.Serve(apiL); err != nil && !errors.Is(err, http.ErrServerClosed) {
			errs <- fmt.Errorf("api: %w", err)
		}
	}()
	wg.Add(1)
	go func() {
		defer wg.Done()
		a.eradicator(ctx)
	}()
	wg.Go(func() { _ = a.med.Run(ctx) })
	a.log.Info("array running", "name", a.cfg.Name, "id", a.id.ID, "target", a.cfg.ISCSI.Target,
		"portals", strings.Join(a.cfg.ISCSI.Listen, ","), "api", a.cfg.API.Listen)
	if ready != nil {
		ready()
	}
	select {
	case <-ctx.Done():
	case err = <-errs:
	case err = <-a.failed:
	}
	cancel()
	shutCtx, shutCancel := context.WithTimeout(context.Background(), 5*time.Second)
	_ = srv.Shutdown(shutCtx)
	shutCancel()
	a.iscsi.Close()
	closeAll()
	wg.Wait()
	a.log.Info("array stopped")
	return err
}

// setupAPIAuth loads or makes the API token and certificate.
func (a *Array) setupAPIAuth() error {
	a.token = a.cfg.API.Token
	if a.token == "" {
		path := filepath.Join(a.cfg.DataDir, "api-token")
		data, err := os.ReadFile(path)
		switch {
		case err == nil:
			a.token = strings.TrimSpace(string(data))
			if err := checkToken(a.token); err != nil {
				return fmt.Errorf("%s: %w", path, err)
			}
		case errors.Is(err, os.ErrNotExist):
			a.token = newID()
			if err := writeFileSync(path, []byte(a.token+"\n"), fileMode); err != nil {
				return fmt.Errorf("api token: %w", err)
			}
		default:
			return fmt.Errorf("api token: %w", err)
		}
	}
	if *a.cfg.API.TLS {
		cert, caFile, err := loadOrMakeCert(a.cfg, a.now())
		if err != nil {
			return err
		}
		a.cert, a.caFile = &cert, caFile
	}
	return nil
}

// eradicator eradicates destroyed volumes whose window has passed.
func (a *Array) eradicator(ctx context.Context) {
	t := time.NewTicker(time.Minute)
	defer t.Stop()
	for {
		a.EradicateExpired(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// EradicateExpired eradicates every destroyed volume whose eradication
// window has passed by the array's clock.
func (a *Array) EradicateExpired(ctx context.Context) {
	for _, v := range a.cat.View().Expired(a.cfg.EradicationWindow.Duration, a.now()) {
		if err := a.Eradicate(ctx, v.Name); err != nil {
			a.log.Warn("eradicate", "volume", v.Name, "err", err)
		}
	}
	for _, p := range a.cat.View().SortedPods() {
		if p.Pending != nil && !a.now().Before(p.Pending.Add(a.cfg.EradicationWindow.Duration)) {
			if err := a.EradicatePod(ctx, p.Name); err != nil {
				a.log.Warn("eradicate pod copy", "pod", p.Name, "err", err)
			}
		}
	}
}

// Close closes an array that was opened but never run (Run closes the
// store itself when it returns).
func (a *Array) Close() error { return a.store.Close() }

// Target returns the array's SCSI target (tests drive it directly).
func (a *Array) Target() *scsi.Target { return a.target }
