package main

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"time"

	"github.com/spf13/cobra"

	"github.com/metro-storage/metro/internal/api"
)

// errCheckFound is returned by `metro array check` when the check found
// damage or other problems (after printing them), so the exit status says
// so to scripts.
var errCheckFound = errors.New("the check found problems")

func newArrayCheckCmd(g *globals) *cobra.Command {
	var noWait, last bool
	cmd := &cobra.Command{
		Use:   "check [--no-wait | --last]",
		Short: "Check the array's store: every block's checksum and the allocation maps",
		Long: "Read and verify everything the array answering has stored (like fsck, while it serves I/O),\n" +
			"and list every run of damaged blocks by volume and LBA, and any other inconsistency.\n" +
			"Without --no-wait it shows the progress and waits for the end; it exits with status 1 when\n" +
			"the check found problems. A damaged block of a stretched pod in sync is repaired from the\n" +
			"other array's copy when a host reads it; elsewhere, rewrite the blocks (from a backup).\n" +
			"--last shows the running or last check without starting one.",
		Example: "metro array check\nmetro array check --no-wait && metro array check --last --json",
		Args:    argsN(0, ""),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			var run api.CheckRun
			if last {
				run, err = c.Check(ctx)
			} else {
				run, err = c.StartCheck(ctx)
			}
			if err != nil {
				return err
			}
			if !noWait && !last {
				var bar *progress
				if !g.json {
					bar = newProgress(os.Stderr, "check", time.Now)
				}
				for run.State == "running" {
					if bar != nil {
						if err := bar.update(uint64(max(run.CheckedBytes, 0)), uint64(max(run.TotalBytes, 0))); err != nil {
							return err
						}
					}
					select {
					case <-ctx.Done():
						return fmt.Errorf("stopped waiting; the check goes on (see metro array check --last): %w", ctx.Err())
					case <-time.After(500 * time.Millisecond):
					}
					if run, err = c.Check(ctx); err != nil {
						return err
					}
				}
				if bar != nil {
					if err := bar.finish(); err != nil {
						return err
					}
				}
			}
			if err := printCheck(g.newOutput(cmd), run); err != nil {
				return err
			}
			switch {
			case run.State == "failed":
				return fmt.Errorf("the check could not finish: %s", run.Error)
			case len(run.Damaged) > 0 || len(run.Problems) > 0:
				return errCheckFound
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&noWait, "no-wait", false, "start the check and return at once")
	cmd.Flags().BoolVar(&last, "last", false, "show the running or last check; start none")
	cmd.MarkFlagsMutuallyExclusive("no-wait", "last")
	return cmd
}

// printCheck shows a check: a summary line, the damaged runs as a table
// and the other problems, or with --json the API object.
func printCheck(o output, run api.CheckRun) error {
	if o.json {
		return writeJSON(o.w, run)
	}
	switch run.State {
	case "running":
		_, err := fmt.Fprintf(o.w, "Check running since %s: %s of %s checked\n",
			run.Started.Format(time.RFC3339), fmtSize(uint64(max(run.CheckedBytes, 0))), fmtSize(uint64(max(run.TotalBytes, 0))))
		return err
	case "failed":
		_, err := fmt.Fprintf(o.w, "Check started %s failed: %s\n", run.Started.Format(time.RFC3339), run.Error)
		return err
	}
	var blocks uint64
	for _, d := range run.Damaged {
		blocks += d.Blocks
	}
	took := ""
	if run.Finished != nil {
		took = " in " + run.Finished.Sub(run.Started).Round(time.Millisecond).String()
	}
	if _, err := fmt.Fprintf(o.w, "Checked %s%s: %d damaged blocks, %d other problems\n",
		fmtSize(uint64(max(run.CheckedBytes, 0))), took, blocks, len(run.Problems)+run.OmittedProblems); err != nil {
		return err
	}
	if len(run.Damaged) > 0 {
		t := newTable("Volume", "LBA", "Blocks", "Reason")
		for _, d := range run.Damaged {
			t.row(d.Volume, strconv.FormatUint(d.LBA, 10), strconv.FormatUint(d.Blocks, 10), d.Reason)
		}
		if err := t.write(o.w); err != nil {
			return err
		}
	}
	for _, p := range run.Problems {
		if _, err := fmt.Fprintln(o.w, "problem:", p); err != nil {
			return err
		}
	}
	if run.OmittedProblems > 0 {
		_, err := fmt.Fprintf(o.w, "(and %d more problems)\n", run.OmittedProblems)
		return err
	}
	return nil
}
