package main

import (
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
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
			a, err := array.Open(array.Options{Config: cfg, Logger: log})
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
