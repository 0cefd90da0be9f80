package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/metro-storage/metro/internal/api"
)

func newPodAddCmd(g *globals) *cobra.Command {
	var array string
	var wait bool
	cmd := &cobra.Command{
		Use:   "add --array ARRAY POD",
		Short: "Stretch a pod to another array",
		Long: "Stretch a pod to the paired array: the pod's volumes, connections, reservations and the\n" +
			"hosts they use appear there, then a baseline copy sends every written block while hosts\n" +
			"keep writing. The new array's paths are Unavailable until the pod is in sync there.\n" +
			"--wait shows the copy's progress and returns when the pod is in sync.",
		Example: "metro pod add --array array-b pod1\nmetro pod add --array array-b --wait pod1",
		Args:    argsN(1, "the name of the pod to stretch"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := requireFlag(cmd, "array", "the array to stretch the pod to"); err != nil {
				return err
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			p, err := c.StretchPod(cmd.Context(), args[0], array)
			if err != nil {
				return err
			}
			if wait {
				if p, err = waitInSync(cmd.Context(), c, args[0], g.json); err != nil {
					return err
				}
			}
			return g.newOutput(cmd).one(p, podTable([]api.Pod{p}))
		},
	}
	cmd.Flags().StringVar(&array, "array", "", "the array to stretch the pod to")
	cmd.Flags().BoolVar(&wait, "wait", false, "show progress and wait until the pod is in sync on both arrays")
	return cmd
}

// inSync reports whether a pod lists two arrays, both online.
func inSync(p api.Pod) bool {
	if len(p.Arrays) != 2 {
		return false
	}
	for _, a := range p.Arrays {
		if a.Status != "online" {
			return false
		}
	}
	return true
}

// waitInSync polls the pod until it is in sync, drawing the copy's
// progress on stderr (unless quiet).
func waitInSync(ctx context.Context, c *api.Client, name string, quiet bool) (api.Pod, error) {
	var bar *progress
	if !quiet {
		bar = newProgress(os.Stderr, "baseline "+name, time.Now)
	}
	for {
		p, err := c.Pod(ctx, name)
		if err != nil {
			return p, err
		}
		if r := p.Replication; r != nil && r.Copying && bar != nil {
			if err := bar.update(uint64(max(r.BytesDone, 0)), uint64(max(r.BytesTotal, 0))); err != nil {
				return p, err
			}
		}
		if inSync(p) {
			if bar != nil {
				if err := bar.finish(); err != nil {
					return p, err
				}
			}
			return p, nil
		}
		select {
		case <-ctx.Done():
			return p, ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
}

func newPodRemoveCmd(g *globals) *cobra.Command {
	var array string
	cmd := &cobra.Command{
		Use:   "remove --array ARRAY POD",
		Short: "Unstretch a pod: remove one of its arrays",
		Long: "Remove an array from a stretched pod. Removing the pod's sequencer first hands the pod to\n" +
			"the other array, which must be in sync. The removed array keeps its copy, serving nothing,\n" +
			"pending eradication for the eradication window (see 'metro pod list --pending').",
		Example: "metro pod remove --array array-b pod1",
		Args:    argsN(1, "the name of the pod to unstretch"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := requireFlag(cmd, "array", "the array to remove from the pod"); err != nil {
				return err
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			p, err := c.UnstretchPod(cmd.Context(), args[0], array)
			if err != nil {
				return err
			}
			return g.newOutput(cmd).one(p, podTable([]api.Pod{p}))
		},
	}
	cmd.Flags().StringVar(&array, "array", "", "the array to remove from the pod")
	return cmd
}

func newPodEradicateCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "eradicate POD",
		Short:   "Delete a pod copy pending eradication now",
		Long:    "Delete, with its volumes' blocks, the copy of a pod this array kept after it was removed from the pod.",
		Example: "metro pod list --pending\nmetro pod eradicate pod1",
		Args:    argsN(1, "the name of the pod copy to eradicate"),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			if err := c.EradicatePod(cmd.Context(), args[0]); err != nil {
				return err
			}
			return g.newOutput(cmd).done("Eradicated the copy of pod %s", args[0])
		},
	}
}

// fmtCopy shows a pod's copy progress for tables.
func fmtCopy(r *api.PodReplication) string {
	if r == nil || !r.Copying {
		if r != nil && r.Error != "" {
			return "error: " + r.Error
		}
		return "-"
	}
	if r.BytesTotal <= 0 {
		// The receiving array counts what arrives; the sender knows
		// the total.
		return fmt.Sprintf("%s received", fmtSize(uint64(max(r.BytesDone, 0))))
	}
	s := fmt.Sprintf("%.0f%% of %s", r.Percent, fmtSize(uint64(max(r.BytesTotal, 0))))
	if r.Rate > 0 {
		s += fmt.Sprintf(", %s/s, ETA %s", fmtSize(uint64(r.Rate)), fmtETA(time.Duration(r.ETASeconds*float64(time.Second))))
	}
	return s
}
