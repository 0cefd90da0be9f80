package main

// This file holds the lab's fault controls: verbs that ask a running
// `metro lab up` (through the control socket in its directory) to change
// its world, and `metro lab status`.

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/metro-storage/metro/internal/lab"
)

// labAskTimeout bounds a fault control: starting an array or the
// mediator waits for it to answer, a minute at most.
const labAskTimeout = 3 * time.Minute

// labDirEnv names the lab a control acts on when --dir is not given.
const labDirEnv = "METRO_LAB_DIR"

// labControl is a verb that sends the request build makes to the lab.
type labControl struct {
	use, short, long, example string
	args                      cobra.PositionalArgs
	// flags adds the verb's own flags; build makes its request.
	flags func(cmd *cobra.Command)
	build func(cmd *cobra.Command, args []string) (lab.Request, error)
}

func (lc labControl) command(g *globals) *cobra.Command {
	var dir string
	cmd := &cobra.Command{
		Use: lc.use, Short: lc.short, Long: lc.long, Example: lc.example, Args: lc.args,
		RunE: func(cmd *cobra.Command, args []string) error {
			d, err := labDir(dir)
			if err != nil {
				return err
			}
			req, err := lc.build(cmd, args)
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), labAskTimeout)
			defer cancel()
			resp, err := lab.Ask(ctx, d, req)
			if err != nil {
				return err
			}
			out := g.newOutput(cmd)
			switch {
			case out.json && resp.Status != nil:
				return writeJSON(out.w, resp.Status)
			case req.Verb == lab.VerbStatus && resp.Status != nil:
				return printLabStatus(out.w, *resp.Status)
			}
			return out.done("%s", resp.Message)
		},
	}
	cmd.Flags().StringVar(&dir, "dir", "", "the directory of the running lab (the --dir of metro lab up; env "+labDirEnv+")")
	if lc.flags != nil {
		lc.flags(cmd)
	}
	return cmd
}

// labDir is the lab a control acts on: --dir, else $METRO_LAB_DIR.
func labDir(dir string) (string, error) {
	dir = flagOrEnv(dir, labDirEnv)
	if dir == "" {
		return "", fmt.Errorf("which lab? pass --dir D (the directory metro lab up --dir D runs in; it prints it) or set %s", labDirEnv)
	}
	return filepath.Abs(dir)
}

func labPartition() labControl {
	var oneWay string
	var andMediator, sites bool
	return labControl{
		use:   "partition [--one-way ARRAY] [--and-mediator] [--sites]",
		short: "Cut the replication link between the arrays, both ways (or one way)",
		long: "Cut the replication link: the arrays' bytes to each other are lost silently, as at a cable cut, " +
			"until metro lab heal. --one-way ARRAY loses only that array's traffic to its peer (its peer's still " +
			"arrives). --and-mediator also cuts both arrays' paths to the mediator, in the same instant. " +
			"--sites partitions the data centers: the link and every host path across sites (site A's hosts " +
			"to array-b, site B's to array-a), in the same instant; each site keeps its own host paths.",
		example: "metro lab partition --dir /tmp/lab\nmetro lab partition --one-way array-a --dir /tmp/lab\n" +
			"metro lab partition --sites --dir /tmp/lab",
		args: argsN(0, ""),
		flags: func(cmd *cobra.Command) {
			cmd.Flags().StringVar(&oneWay, "one-way", "", "cut only this array's traffic to its peer")
			cmd.Flags().BoolVar(&andMediator, "and-mediator", false, "cut both arrays' paths to the mediator in the same instant")
			cmd.Flags().BoolVar(&sites, "sites", false, "cut the host paths across sites in the same instant (a data-center partition)")
		},
		build: func(*cobra.Command, []string) (lab.Request, error) {
			if oneWay != "" && (andMediator || sites) {
				return lab.Request{}, fmt.Errorf("lab partition: --one-way and --and-mediator or --sites do not go together: a one-way cut is of the link only (cut a mediator path with metro lab mediator cut ARRAY, host paths with metro lab hostpath cut)")
			}
			return lab.Request{Verb: lab.VerbPartition, Array: oneWay, AndMediator: andMediator, Sites: sites}, nil
		},
	}
}

func labHeal() labControl {
	var andMediator, sites bool
	return labControl{
		use:   "heal [--and-mediator] [--sites]",
		short: "Mend the replication link (both ways, one-way cuts too)",
		long: "Mend the replication link. Connections that lost bytes are reset, so the arrays reconnect. " +
			"--and-mediator also mends both arrays' paths to the mediator, --sites the host paths across sites, " +
			"in the same instant.",
		example: "metro lab heal --dir /tmp/lab\nmetro lab heal --sites --dir /tmp/lab",
		args:    argsN(0, ""),
		flags: func(cmd *cobra.Command) {
			cmd.Flags().BoolVar(&andMediator, "and-mediator", false, "mend both arrays' paths to the mediator too")
			cmd.Flags().BoolVar(&sites, "sites", false, "mend the host paths across sites too")
		},
		build: func(*cobra.Command, []string) (lab.Request, error) {
			return lab.Request{Verb: lab.VerbHeal, AndMediator: andMediator, Sites: sites}, nil
		},
	}
}

// hostPathControl is `metro lab hostpath cut|restore [ARRAY] [--site S]`.
func hostPathControl(word, reqVerb, short string) labControl {
	var site string
	return labControl{
		use: word + " [ARRAY] [--site SITE]", short: short,
		long: short + ". Hosts of each site reach each array through a route of the lab's proxy (lab.json: " +
			"host_portals of each array). ARRAY alone: every site's path to that array; --site alone: that site's " +
			"hosts' paths to every array; both: the one path. A cut path loses its bytes silently both ways, as at " +
			"a cable cut, and the hosts notice by their own timeouts; once mended, the connections that lost bytes " +
			"are reset so that the hosts log in again. The arrays' own portals (lab.json: portal) are never cut.",
		example: "metro lab hostpath " + word + " array-a --dir /tmp/lab\nmetro lab hostpath " + word + " --site B --dir /tmp/lab\n" +
			"metro lab hostpath " + word + " array-a --site B --dir /tmp/lab",
		args: cobra.MaximumNArgs(1),
		flags: func(cmd *cobra.Command) {
			cmd.Flags().StringVar(&site, "site", "", "the site whose hosts' paths change (A or B)")
		},
		build: func(cmd *cobra.Command, args []string) (lab.Request, error) {
			req := lab.Request{Verb: reqVerb, Site: site}
			if len(args) == 1 {
				req.Array = args[0]
			}
			if req.Array == "" && req.Site == "" {
				return req, fmt.Errorf("%s: name an array (every site's path to it), --site (that site's hosts' paths to every array), or both (the one path)%s",
					verb(cmd), usageHint(cmd))
			}
			return req, nil
		},
	}
}

// siteControl is `metro lab site down|up SITE`.
func siteControl(word, verb, short, long string) labControl {
	return labControl{
		use: word + " SITE", short: short, long: long,
		example: "metro lab site " + word + " A --dir /tmp/lab",
		args:    argsN(1, "a site (A or B: the site of array-a is A)"),
		build: func(_ *cobra.Command, args []string) (lab.Request, error) {
			return lab.Request{Verb: verb, Site: args[0]}, nil
		},
	}
}

func newLabHostPathCmd(g *globals) *cobra.Command {
	cmd := noun(&cobra.Command{Use: "hostpath", Short: "Cut or restore the paths from the lab's hosts (by site) to the arrays"})
	for _, lc := range []labControl{
		hostPathControl("cut", lab.VerbHostPathCut, "Cut host paths to the arrays"),
		hostPathControl("restore", lab.VerbHostPathRestore, "Mend host paths to the arrays"),
	} {
		cmd.AddCommand(lc.command(g))
	}
	return cmd
}

func newLabSiteCmd(g *globals) *cobra.Command {
	cmd := noun(&cobra.Command{Use: "site", Short: "Lose a whole site of the lab (its array, its cables) or bring it back"})
	for _, lc := range []labControl{
		siteControl("down", lab.VerbSiteDown, "Lose a whole site: cut its cables in one instant, then kill its array",
			"Lose a whole site, as at a power cut: in one instant the link (both ways), its array's path to the "+
				"mediator and every host path into or out of the site are cut, then its array is killed (kill -9). "+
				"Nothing of the site is heard again, not even a reset: the other array and the hosts notice by their "+
				"own timeouts. metro lab site up brings it back."),
		siteControl("up", lab.VerbSiteUp, "Bring a site back: mend its cables in one instant, then start its array",
			"Bring a site back: the link (every cut), its array's path to the mediator and every host path into or "+
				"out of the site are mended in one instant, then its array is started with its configuration and "+
				"data, and waited for until it answers."),
	} {
		cmd.AddCommand(lc.command(g))
	}
	return cmd
}

// arrayControl is `metro lab <path> ARRAY`, the request verb about the
// array named.
func arrayControl(path, verb, short string) labControl {
	words := strings.Fields(path)
	return labControl{
		use: words[len(words)-1] + " ARRAY", short: short,
		example: "metro lab " + path + " array-a --dir /tmp/lab",
		args:    argsN(1, "an array (array-a, or a)"),
		build: func(_ *cobra.Command, args []string) (lab.Request, error) {
			return lab.Request{Verb: verb, Array: args[0]}, nil
		},
	}
}

// fixedControl is `metro lab <path>`, whose request is the verb alone.
func fixedControl(path, verb, short string) labControl {
	words := strings.Fields(path)
	return labControl{
		use: words[len(words)-1], short: short, example: "metro lab " + path + " --dir /tmp/lab", args: argsN(0, ""),
		build: func(*cobra.Command, []string) (lab.Request, error) { return lab.Request{Verb: verb}, nil },
	}
}

func labControls() []labControl {
	return []labControl{labPartition(), labHeal(),
		arrayControl("kill", lab.VerbKill, "Kill an array (kill -9) and wait until it has died"),
		arrayControl("start", lab.VerbStart, "Start a stopped array again, with its configuration and data, and wait until it answers"),
		arrayControl("isolate", lab.VerbIsolate, "Cut an array off: the link, both ways, and its path to the mediator, in one instant"),
		arrayControl("rejoin", lab.VerbRejoin, "Mend the link and an array's path to the mediator, in one instant"),
		{
			use: "rtt DURATION", short: "Set the round trip the link adds (half each way; 0 clears it)",
			example: "metro lab rtt 5ms --dir /tmp/lab", args: argsN(1, "a round trip such as 5ms, or 0"),
			build: func(_ *cobra.Command, args []string) (lab.Request, error) {
				return lab.Request{Verb: lab.VerbRTT, RTT: args[0]}, nil
			},
		},
		fixedControl("status", lab.VerbStatus, "Show what runs and what is cut in a running lab"),
	}
}

func mediatorControls() []labControl {
	return []labControl{
		fixedControl("mediator stop", lab.VerbMediatorStop, "Stop the mediator (kill -9)"),
		fixedControl("mediator start", lab.VerbMediatorStart, "Start the mediator again, with its data, and wait until it answers"),
		arrayControl("mediator cut", lab.VerbMediatorCut, "Cut an array's path to the mediator (the mediator and the other array's path stay up)"),
		arrayControl("mediator restore", lab.VerbMediatorRestore, "Mend an array's path to the mediator"),
	}
}

func newLabMediatorCmd(g *globals) *cobra.Command {
	cmd := noun(&cobra.Command{Use: "mediator", Short: "Stop, start, cut or restore the lab's mediator"})
	for _, lc := range mediatorControls() {
		cmd.AddCommand(lc.command(g))
	}
	return cmd
}

// printLabStatus prints a lab's status for people.
func printLabStatus(w io.Writer, st lab.Status) error {
	fmt.Fprintf(w, "Lab in %s (metro lab up, pid %d)\n\n", st.Dir, st.PID)
	t := newTable("Array", "Process", "Mediator path")
	for _, a := range st.Arrays {
		path := "whole"
		switch {
		case st.Mediator == nil:
			path = "-"
		case a.MediatorCut:
			path = "cut"
		}
		t.row(a.Name, procState(a.Running, a.PID), path)
	}
	if err := t.write(w); err != nil {
		return err
	}
	if l := st.Link; l != nil {
		var dirs []string
		for i, a := range st.Arrays {
			peer := st.Arrays[1-i].Name
			state := "whole"
			for _, c := range l.Cut {
				if c == a.Name {
					state = "cut"
				}
			}
			dirs = append(dirs, fmt.Sprintf("%s -> %s %s", a.Name, peer, state))
		}
		bw := l.Bandwidth
		if bw == "" {
			bw = "unlimited"
		} else {
			bw += "/s"
		}
		fmt.Fprintf(w, "\nLink      %s; round trip added %s, bandwidth %s\n", strings.Join(dirs, ", "), l.RTT, bw)
	}
	if m := st.Mediator; m != nil {
		fmt.Fprintf(w, "Mediator  %s, %s\n", procState(m.Running, m.PID), m.URL)
	} else if st.Link != nil {
		fmt.Fprintf(w, "Mediator  none\n")
	}
	if len(st.Sites) == 0 {
		return nil
	}
	fmt.Fprintln(w)
	t = newTable("Host path", "Portal", "State")
	for _, site := range st.Sites {
		for _, hp := range site.HostPaths {
			state := "whole"
			if hp.Cut {
				state = "cut"
			}
			t.row("site "+site.Name+" -> "+hp.Array, hp.Portal, state)
		}
	}
	return t.write(w)
}

func procState(running bool, pid int) string {
	if running {
		return fmt.Sprintf("running (pid %d)", pid)
	}
	return "stopped"
}

// labDirHint is the --dir a printed control of the lab in dir needs: none
// when $METRO_LAB_DIR names it.
func labDirHint(dir string) string {
	if os.Getenv(labDirEnv) == dir {
		return ""
	}
	return " --dir " + dir
}
