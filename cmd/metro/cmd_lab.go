package main

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/metro-storage/metro/internal/lab"
	"github.com/metro-storage/metro/internal/units"
)

func newLabCmd(g *globals) *cobra.Command {
	cmd := noun(&cobra.Command{
		Use:   "lab",
		Short: "Run metro arrays on this machine for trying it out and for tests, and inject faults into them",
	})
	cmd.AddCommand(newLabUpCmd(g), newLabMediatorCmd(g), newLabHostPathCmd(g), newLabSiteCmd(g))
	for _, lc := range labControls() {
		cmd.AddCommand(lc.command(g))
	}
	return cmd
}

func newLabUpCmd(g *globals) *cobra.Command {
	var (
		dir, size  string
		arrays     int
		initiators []string
		rtt        time.Duration
		bandwidth  string
		mediator   bool
	)
	cmd := &cobra.Command{
		Use:   "up",
		Short: "Start arrays on loopback with a pod, a volume and a host, and run until interrupted",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			n, err := units.ParseSize(size)
			if err != nil {
				return fmt.Errorf("--size: %w", err)
			}
			if dir == "" {
				if dir, err = os.MkdirTemp("", "metro-lab-"); err != nil {
					return err
				}
			}
			if dir, err = filepath.Abs(dir); err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "Starting %d array(s) in %s ...\n", arrays, dir)
			var bw uint64
			if bandwidth != "" {
				if bw, err = units.ParseSize(bandwidth); err != nil {
					return fmt.Errorf("--link-bandwidth: %w", err)
				}
			}
			if arrays == 2 {
				fmt.Fprintf(out, "Pairing the arrays and copying pod1 to the second one ...\n")
			}
			l, err := lab.Up(cmd.Context(), lab.Options{Dir: dir, Arrays: arrays, Initiators: initiators, Size: n,
				LinkRTT: rtt, LinkBandwidth: int64(bw), NoMediator: !mediator,
				Logger: slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), &slog.HandlerOptions{Level: slog.LevelWarn}))})
			if err != nil {
				return err
			}
			defer l.Stop()
			printLab(out, l, dir)
			for {
				select {
				case <-cmd.Context().Done():
					fmt.Fprintln(out, "\nStopping the lab ...")
					return nil
				case e := <-l.Exits():
					again := "metro lab start " + e.Name
					if e.Name == "mediator" {
						again = "metro lab mediator start"
					}
					fmt.Fprintf(out, "\n%s exited on its own (%v); see %s. The lab runs on: %s%s starts it again.\n",
						e.Name, e.Err, e.Log, again, labDirHint(dir))
				}
			}
		},
	}
	f := cmd.Flags()
	f.StringVar(&dir, "dir", "", "directory for the arrays' data, configs, logs and lab.json (default: a new temporary directory)")
	f.IntVar(&arrays, "arrays", 2, "number of arrays: 2 is a stretched pair, 1 a single array")
	f.DurationVar(&rtt, "link-rtt", 0, "round trip added on the link between the arrays (half each way), e.g. 1ms")
	f.StringVar(&bandwidth, "link-bandwidth", "", "bandwidth of the link, per second and direction (binary units, e.g. 100M); default unlimited")
	f.StringArrayVar(&initiators, "initiator", nil, "initiator IQN allowed to see the volume (repeatable; default "+lab.DefaultInitiator+")")
	f.StringVar(&size, "size", "1G", "size of the lab volume (binary units: 1G = 1 GiB)")
	f.BoolVar(&mediator, "mediator", true, "run a mediator for the pair, each array reaching it through its own route of the lab's proxy")
	return cmd
}

func printLab(w io.Writer, l *lab.Lab, dir string) {
	info := l.Info
	fmt.Fprintf(w, "\nThe lab is up. Everything is in %s/lab.json.\n\n", dir)
	for _, a := range info.Arrays {
		fmt.Fprintf(w, "Array %s\n  API     %s (token in %s, certificate %s)\n  portal  %s (its own, never cut)\n", a.Name, a.API, a.TokenFile, a.CA, a.Portal)
		for _, hp := range a.HostPortals {
			fmt.Fprintf(w, "          %s for hosts of site %s (metro lab hostpath cuts it)\n", hp.Portal, hp.Site)
		}
		fmt.Fprintf(w, "  target  %s\n", a.Target)
	}
	fmt.Fprintf(w, "\nVolume %s is LUN %d for host %s (initiators: %v).\n\n", info.Volume, info.LUN, info.Host, info.Initiators)
	a := info.Arrays[0]
	fmt.Fprintf(w, "Manage it:\n  export METRO_API=%s METRO_TOKEN_FILE=%s METRO_CA=%s\n  metro pod list; metro vol list; metro host list\n\n", a.API, a.TokenFile, a.CA)
	fmt.Fprintf(w, "Connect an initiator:\n")
	fmt.Fprintf(w, "  iscsiadm -m discovery -t sendtargets -p %s && iscsiadm -m node -T %s -p %s --login   (initiator name %s)\n", a.Portal, a.Target, a.Portal, info.Initiators[0])
	fmt.Fprintf(w, "  qemu-img info --image-opts driver=iscsi,transport=tcp,portal=%s,target=%s,lun=%d,initiator-name=%s\n", a.Portal, a.Target, info.LUN, info.Initiators[0])
	for _, u := range info.URLs {
		fmt.Fprintf(w, "  iscsi-inq %s   (libiscsi URL; initiator via --initiator-name)\n", u)
	}
	fmt.Fprintf(w, "As a host of a site, through the host paths the lab can cut (a uniform host uses both, a non-uniform one its own site's array):\n")
	for s, site := range info.Sites {
		for _, a := range info.Arrays {
			fmt.Fprintf(w, "  site %s -> %s  %s\n", site.Name, a.Name, a.HostPortals[s].URL)
		}
	}
	if m := info.Mediator; m != nil {
		fmt.Fprintf(w, "\nMediator %s (certificate %s); each array reaches it through its own route.\n", m.URL, m.CA)
	}
	if info.LinkProxy != "" {
		fmt.Fprintf(w, "\nBreak it on purpose, from another terminal:\n  export %s=%s\n", labDirEnv, dir)
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		lines := [][2]string{
			{"metro lab partition", "cut the link (--one-way ARRAY: one way; --and-mediator: the mediator paths too)"},
			{"metro lab heal", "mend it"},
			{"metro lab kill array-a", "kill -9 an array (metro lab start array-a starts it again)"},
			{"metro lab isolate array-a", "cut it from the link and the mediator at once (metro lab rejoin array-a)"},
			{"metro lab mediator stop", "stop the mediator (start; cut array-a and restore array-a: one array's path)"},
			{"metro lab hostpath cut array-a", "cut the hosts' paths to an array (--site B: one site's hosts; restore mends)"},
			{"metro lab partition --sites", "cut the link and the host paths across sites (heal --sites)"},
			{"metro lab site down A", "lose site A: its cables, then array-a (metro lab site up A)"},
			{"metro lab rtt 5ms", "slow the link (0 clears it)"},
			{"metro lab status", "what runs and what is cut"},
		}
		if info.Mediator == nil {
			lines = slices.Delete(lines, 4, 5)
		}
		for _, l := range lines {
			fmt.Fprintf(tw, "  %s\t%s\n", l[0], l[1])
		}
		_ = tw.Flush()
	}
	fmt.Fprintf(w, "\nPress Ctrl-C to stop.\n")
}
