package main

import (
	"fmt"
	"log/slog"
	"os"

	"github.com/spf13/cobra"

	"github.com/metro-storage/metro/internal/array"
)

func newArrayRunCmd() *cobra.Command {
	var configPath, logLevel string
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
			return a.Run(cmd.Context(), nil)
		},
	}
	cmd.Flags().StringVar(&configPath, "config", "", "array configuration file (YAML)")
	cmd.Flags().StringVar(&logLevel, "log-level", "info", "log level: debug, info, warn, error")
	return cmd
}
