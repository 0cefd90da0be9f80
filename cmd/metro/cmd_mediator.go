package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/metro-storage/metro/internal/mediator"
)

// newMediatorCmd is `metro mediator`: the service that decides which
// array keeps a stretched pod when the link between them fails.
func newMediatorCmd(g *globals) *cobra.Command {
	cmd := noun(&cobra.Command{
		Use:   "mediator",
		Short: "Run the mediator that decides failovers between arrays, or look after one",
		Long: "The mediator runs at a third site and decides, when the link between two arrays fails, which\n" +
			"array keeps each stretched pod online. Arrays heartbeat it and race through it; it contacts nobody.\n" +
			"One mediator serves many array pairs and pods. See README, \"The mediator\".",
	})
	cmd.AddCommand(newMediatorRunCmd(), newMediatorResetCmd(), newMediatorStatusCmd(g))
	return cmd
}

// exitMediatorFailed is the exit status of a mediator whose state could
// not be made durable.
const exitMediatorFailed = 4

func newMediatorRunCmd() *cobra.Command {
	var (
		listen, dataDir, certFile, keyFile, logLevel string
		keyFiles                                     []string
		maxPods, maxConns                            int
	)
	cmd := &cobra.Command{
		Use:   "run --data-dir DIR [--listen ADDR] [--authkey-file FILE [--authkey-file FILE]] [--cert FILE --key FILE]",
		Short: "Run the mediator service (HTTPS, port 9095)",
		Long: "Run the mediator: HTTP/JSON over TLS 1.3 on --listen (default :9095), its state in --data-dir\n" +
			"(made 0700; the state is synced to disk before every answer that depends on it).\n\n" +
			"Arrays authenticate with an auth key. Without --authkey-file the mediator makes one on first start\n" +
			"in DIR/authkey (0600) and keeps it. --authkey-file may be given twice: both keys are accepted, so a\n" +
			"key can be rotated without stopping the arrays' access (see README); SIGHUP reads the files again.\n\n" +
			"Without --cert/--key the mediator makes a self-signed certificate on first start, DIR/mediator.crt\n" +
			"(give it to the arrays with --mediator-ca) and DIR/mediator.key, for localhost, this machine's name\n" +
			"and its addresses.",
		Example: "metro mediator run --data-dir /var/lib/metro-mediator\n" +
			"metro mediator run --data-dir /var/lib/metro-mediator --authkey-file old.key --authkey-file new.key",
		Args: argsN(0, ""),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := requireFlag(cmd, "data-dir", "the directory of the mediator's state"); err != nil {
				return err
			}
			if _, _, err := net.SplitHostPort(listen); err != nil {
				return fmt.Errorf("%s: --listen %q: %v: give HOST:PORT or :PORT, e.g. :%d", verb(cmd), listen, err, mediator.DefaultPort)
			}
			if len(keyFiles) > 2 {
				return fmt.Errorf("%s: --authkey-file given %d times: give one, or two while rotating a key", verb(cmd), len(keyFiles))
			}
			if (certFile == "") != (keyFile == "") {
				return fmt.Errorf("%s: give both --cert and --key, or neither (a self-signed certificate is made in the data directory)", verb(cmd))
			}
			if maxPods < 0 || maxConns < 0 {
				return fmt.Errorf("%s: --max-pods and --max-connections must be positive (0: the default)", verb(cmd))
			}
			var level slog.Level
			if err := level.UnmarshalText([]byte(logLevel)); err != nil {
				return fmt.Errorf("%s: --log-level %q: use debug, info, warn or error", verb(cmd), logLevel)
			}
			log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
			return runMediator(cmd.Context(), log, mediatorRun{listen: listen, dataDir: dataDir, keyFiles: keyFiles,
				certFile: certFile, keyFile: keyFile, maxPods: maxPods, maxConns: maxConns})
		},
	}
	f := cmd.Flags()
	f.StringVar(&listen, "listen", ":"+strconv.Itoa(mediator.DefaultPort), "address to serve on")
	f.StringVar(&dataDir, "data-dir", "", "directory of the mediator's state, key and certificate")
	f.StringArrayVar(&keyFiles, "authkey-file", nil, "file holding an auth key the arrays use (repeat once to accept two while rotating; default DIR/authkey, made on first start)")
	f.StringVar(&certFile, "cert", "", "PEM certificate to serve (default: DIR/mediator.crt, self-signed on first start)")
	f.StringVar(&keyFile, "key", "", "PEM private key of --cert")
	f.IntVar(&maxPods, "max-pods", mediator.DefaultMaxPods, "most pods the mediator keeps a race record for")
	f.IntVar(&maxConns, "max-connections", mediator.DefaultLimits.MaxConns, "most client connections open at once")
	f.StringVar(&logLevel, "log-level", "info", "log level: debug, info, warn, error")
	return cmd
}

// mediatorRun is what `metro mediator run` was asked to do.
type mediatorRun struct {
	listen, dataDir, certFile, keyFile string
	keyFiles                           []string
	maxPods, maxConns                  int
}

// runMediator serves the mediator until ctx is done.
func runMediator(ctx context.Context, log *slog.Logger, o mediatorRun) error {
	if restricted, err := mediator.SecureDir(o.dataDir); err != nil {
		return fmt.Errorf("--data-dir: %w", err)
	} else if restricted {
		log.Warn("the data directory was open to other users; restricted it to the mediator's user", "dir", o.dataDir)
	}
	defaultKey := filepath.Join(o.dataDir, "authkey")
	if len(o.keyFiles) == 0 {
		o.keyFiles = []string{defaultKey}
	}
	loadKeys := func() ([]string, error) {
		var keys []string
		for _, p := range o.keyFiles {
			k, err := mediator.ReadKeyFile(p)
			if errors.Is(err, os.ErrNotExist) && filepath.Clean(p) == defaultKey {
				if k, err = mediator.MakeKeyFile(p); err == nil {
					log.Info("made a new auth key: give it to the arrays (metro array setattr --mediator-authkey-file)", "file", p)
				}
			}
			if err != nil {
				return nil, fmt.Errorf("--authkey-file: %w", err)
			}
			keys = append(keys, k)
		}
		return keys, nil
	}
	// The certificate first: whoever waits for the auth key file to give
	// it to the arrays finds the certificate there too.
	cert, caFile, err := mediator.LoadOrMakeCert(o.dataDir, o.certFile, o.keyFile, o.listen, time.Now())
	if err != nil {
		return err
	}
	keys, err := loadKeys()
	if err != nil {
		return err
	}
	b, err := mediator.OpenFile(o.dataDir, mediator.FileOptions{MaxPods: o.maxPods})
	if err != nil {
		return err
	}
	defer b.Close()
	srv, err := mediator.NewServer(mediator.ServerConfig{Backend: b, Keys: keys, Logger: log, Fatal: func(err error) {
		log.Error("metro mediator run: exiting: its state cannot be made durable; restart it once the disk is fixed",
			"err", err, "exit_status", exitMediatorFailed)
		os.Exit(exitMediatorFailed)
	}})
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", o.listen)
	if err != nil {
		return fmt.Errorf("--listen: %w", err)
	}
	info, err := b.Info(ctx)
	if err != nil {
		ln.Close()
		return err
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	go func() {
		for range hup {
			keys, err := loadKeys()
			if err == nil {
				err = srv.SetKeys(keys)
			}
			if err != nil {
				log.Error("SIGHUP: auth keys not reloaded; the ones in use stay", "err", err)
				continue
			}
			log.Info("SIGHUP: auth keys reloaded", "keys", len(keys))
		}
	}()
	log.Info("mediator running", "listen", ln.Addr().String(), "id", info.ID, "generation", info.Generation, "pods", info.Pods,
		"certificate", caFile, "authkey_files", o.keyFiles)
	err = mediator.Serve(ctx, ln, srv, cert, mediator.Limits{MaxConns: o.maxConns}, log)
	log.Info("mediator stopped")
	return err
}

func newMediatorResetCmd() *cobra.Command {
	var dataDir string
	var above uint64
	cmd := &cobra.Command{
		Use:   "reset-generation --data-dir DIR --above N",
		Short: "Make arrays accept a mediator restored from an older copy of its state (dangerous)",
		Long: "A mediator's generation grows at every start and every race it records, and arrays remember the\n" +
			"highest generation they saw. A mediator started from an older copy of its data directory (a restored\n" +
			"backup, a disk rolled back) reports a lower one: the arrays show it \"rolled back\" and no longer race\n" +
			"through it, because it may have forgotten races it decided. reset-generation raises the generation of\n" +
			"the stopped mediator in DIR above N, so that arrays which saw at most N accept it at its next start.\n" +
			"Give as N the highest generation the arrays report (metro array list shows it in their mediator error).\n\n" +
			"Why it is dangerous: the races the copy lost are lost for good. If a pod is served by one array alone\n" +
			"after winning a race that the copy forgot, the other array could win the same race again through the\n" +
			"reset mediator, and both would serve the pod apart (split brain). Run it only when every stretched\n" +
			"pod is in sync on both arrays (metro pod list: both arrays online), or restore the mediator's latest\n" +
			"state instead. The mediator must be stopped; its records and id stay as they are.",
		Example: "metro mediator reset-generation --data-dir /var/lib/metro-mediator --above 1234",
		Args:    argsN(0, ""),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := requireFlag(cmd, "data-dir", "the stopped mediator's data directory"); err != nil {
				return err
			}
			if err := requireFlag(cmd, "above", "the highest generation the arrays saw"); err != nil {
				return err
			}
			before, after, err := mediator.ResetGeneration(dataDir, above)
			if err != nil {
				return fmt.Errorf("%s: %w", verb(cmd), err)
			}
			out := cmd.OutOrStdout()
			if after == before {
				fmt.Fprintf(out, "The generation of the mediator in %s is %d, already above %d; recorded it as reset.\n", dataDir, before, above)
			} else {
				fmt.Fprintf(out, "The generation of the mediator in %s was %d and is now %d.\n", dataDir, before, after)
			}
			fmt.Fprintf(out, "Start the mediator: arrays that saw generations up to %d accept it again.\n", above)
			return nil
		},
	}
	cmd.Flags().StringVar(&dataDir, "data-dir", "", "data directory of the stopped mediator")
	cmd.Flags().Uint64Var(&above, "above", 0, "the highest generation the arrays saw")
	return cmd
}

func newMediatorStatusCmd(g *globals) *cobra.Command {
	var dataDir, url, ca string
	key := secret{name: "authkey", what: "the mediator's auth key"}
	cmd := &cobra.Command{
		Use:   "status (--url URL --authkey-file FILE [--ca FILE] | --data-dir DIR)",
		Short: "Show a mediator: its id, generation, pods and the arrays heartbeating it",
		Long: "Ask a running mediator (--url, with its auth key and certificate) for its id, generation, the\n" +
			"number of pods it holds a race record for and the arrays that heartbeated it since it started; or\n" +
			"read the state in a mediator's data directory (--data-dir), running or not.",
		Example: "metro mediator status --url https://10.0.2.5:9095 --authkey-file mediator.key --ca mediator.crt\n" +
			"metro mediator status --data-dir /var/lib/metro-mediator",
		Args: argsN(0, ""),
		RunE: func(cmd *cobra.Command, args []string) error {
			o := g.newOutput(cmd)
			if (dataDir == "") == (url == "") {
				return fmt.Errorf("%s: give --url (a running mediator) or --data-dir (its state on disk)%s", verb(cmd), usageHint(cmd))
			}
			if dataDir != "" {
				info, err := mediator.ReadInfo(dataDir)
				if err != nil {
					return err
				}
				st := mediator.StatusResponse{Mediator: info.ID, Generation: info.Generation, ResetGeneration: info.ResetGeneration,
					Pods: info.Pods, Arrays: []mediator.ArraySeen{}}
				return o.one(st, mediatorTable(st, 0))
			}
			k, ok, err := key.get(g.con, false)
			if err != nil {
				return fmt.Errorf("%s: %w", verb(cmd), err)
			}
			if !ok {
				return fmt.Errorf("%s: the mediator's auth key is required: --authkey-file FILE%s", verb(cmd), usageHint(cmd))
			}
			pem, err := readFileFlag("ca", ca)
			if err != nil {
				return err
			}
			cfg := mediator.ClientConfig{URL: url, AuthKey: k, CA: []byte(pem), Timeout: 10 * time.Second}
			st, rtt, err := mediator.QueryStatus(cmd.Context(), cfg)
			if err != nil {
				return err
			}
			if err := o.one(st, mediatorTable(st, rtt)); err != nil || o.json {
				return err
			}
			t := newTable("Array", "Last Heartbeat", "From")
			for _, a := range st.Arrays {
				t.row(a.Array, fmtTime(a.Last), a.Remote)
			}
			fmt.Fprintln(o.w)
			return t.write(o.w)
		},
	}
	cmd.Flags().StringVar(&url, "url", "", "the mediator's URL, https://HOST[:PORT]")
	key.add(cmd.Flags())
	cmd.Flags().StringVar(&ca, "ca", "", "PEM certificate the mediator's certificate must chain to (its mediator.crt)")
	cmd.Flags().StringVar(&dataDir, "data-dir", "", "read the state of the mediator in this directory instead")
	return cmd
}

// mediatorTable shows a mediator's state.
func mediatorTable(st mediator.StatusResponse, rtt time.Duration) *table {
	t := newTable("ID", "Generation", "Reset Generation", "Pods", "Arrays", "Started", "RTT")
	reset, rt := "-", "-"
	if st.ResetGeneration > 0 {
		reset = strconv.FormatUint(st.ResetGeneration, 10)
	}
	if rtt > 0 {
		rt = fmtRTT(rtt)
	}
	t.row(st.Mediator, strconv.FormatUint(st.Generation, 10), reset, strconv.Itoa(st.Pods), strconv.Itoa(len(st.Arrays)), fmtTime(st.Started), rt)
	return t
}

// fmtRTT prints a round trip in milliseconds.
func fmtRTT(d time.Duration) string { return fmt.Sprintf("%.2f ms", float64(d.Microseconds())/1000) }
