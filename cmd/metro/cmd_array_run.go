package main

import (
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/metro-storage/metro/internal/array"
)

func newArrayRunCmd() *cobra.Command {
	var configPath, logLevel, pprofAddr string
	cmd := &cobra.Command{
		Use:   "run --config FILE",
		Short: "Run the array daemon (iSCSI target, store, management API)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if configPath == "" {
				return fmt.Errorf("--config FILE is required (see 'metro array run --help' for the format)")
			}
			var level slog.Level
			if err := level.UnmarshalText([]byte(logLevel)); err != nil {
				return fmt.Errorf("--log-level %q: use debug, info, warn or error", logLevel)
			}
			cfg, err := array.LoadConfig(configPath)
			if err != nil {
				return err
			}
			log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
			a, err := array.Open(array.Options{Config: cfg, Logger: log, Fatal: exitOnStoreFailure(log),
				StoreFaultTrigger: storeFaultTrigger(cfg)})
			if err != nil {
				return err
			}
			if pprofAddr = flagOrEnv(pprofAddr, "METRO_PPROF"); pprofAddr != "" {
				stop, err := servePprof(pprofAddr, log)
				if err != nil {
					return err
				}
				defer stop()
			}
			return a.Run(cmd.Context(), nil)
		},
	}
	cmd.Flags().StringVar(&configPath, "config", "", "array configuration file (YAML)")
	cmd.Flags().StringVar(&logLevel, "log-level", "info", "log level: debug, info, warn, error")
	cmd.Flags().StringVar(&pprofAddr, "pprof", "", "serve Go profiling (net/http/pprof) on this loopback address, e.g. 127.0.0.1:6060 (env METRO_PPROF)")
	return cmd
}

// exitOnStoreFailure is the array's fatal handler: when the store cannot
// make a change durable, the process exits at once, whatever goroutine
// noticed (an iSCSI session, an API request, replication), so that the peer
// sees the link drop and takes over; a restart recovers what was
// acknowledged.
func exitOnStoreFailure(log *slog.Logger) func(error) {
	return func(err error) {
		log.Error("metro array run: exiting: the store failed and the array cannot serve safely", "err", err, "exit_status", exitStoreFailed)
		os.Exit(exitStoreFailed)
	}
}

// exitStoreFailed is the exit status of an array stopped by a store
// failure.
const exitStoreFailed = 4

// storeFaultTrigger returns the store's fault-injection trigger file from
// METRO_TEST_STORE_FAULTS, a hook for end-to-end tests only: when set, once
// the file it names (relative to the data directory) exists, every write
// and sync of the store's WAL fails as on a failing disk. Unset, the hook
// is off.
func storeFaultTrigger(cfg *array.Config) string {
	p := os.Getenv("METRO_TEST_STORE_FAULTS")
	if p == "" || filepath.IsAbs(p) {
		return p
	}
	return filepath.Join(cfg.DataDir, p)
}

// servePprof serves the Go profiler for performance work; it refuses
// non-loopback addresses because profiles expose memory contents.
func servePprof(addr string, log *slog.Logger) (stop func(), err error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("--pprof %q: %w", addr, err)
	}
	if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return nil, fmt.Errorf("--pprof %q: only loopback addresses are allowed", addr)
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("--pprof: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(l)
	}()
	log.Info("profiler listening", "addr", l.Addr().String())
	return func() {
		_ = srv.Close()
		<-done
	}, nil
}
