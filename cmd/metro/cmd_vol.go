package main

import (
	"context"
	"fmt"
	"math"
	"net/url"
	"strings"

	"github.com/spf13/cobra"

	"github.com/metro-storage/metro/internal/api"
	"github.com/metro-storage/metro/internal/catalog"
	"github.com/metro-storage/metro/internal/units"
)

// newVolCmd is `metro vol`: thin volumes named POD::NAME. A destroyed
// volume stays recoverable until it is eradicated (after the array's
// eradication window, 24 h by default, or at once with `vol eradicate`).
func newVolCmd(g *globals) *cobra.Command {
	cmd := noun(&cobra.Command{
		Use:   "vol",
		Short: "Create, list, resize, destroy, recover and eradicate volumes",
	})
	cmd.AddCommand(newVolCreateCmd(g), newVolListCmd(g), newVolResizeCmd(g),
		newVolDestroyCmd(g), newVolRecoverCmd(g), newVolEradicateCmd(g))
	return cmd
}

// volArg checks the one positional argument of a volume verb: a volume
// name POD::NAME.
func volArg(cmd *cobra.Command, args []string) error {
	if err := argsN(1, "the volume name POD::NAME")(cmd, args); err != nil {
		return err
	}
	if _, _, err := catalog.SplitVolumeName(args[0]); err != nil {
		return fmt.Errorf("%s: %w", verb(cmd), err)
	}
	return nil
}

// sizeFlag parses the --size flag of a command.
func sizeFlag(cmd *cobra.Command, s string) (uint64, error) {
	if err := requireFlag(cmd, "size", "the volume size in binary units, e.g. 10G"); err != nil {
		return 0, err
	}
	n, err := units.ParseSize(s)
	if err != nil {
		return 0, fmt.Errorf("--size: %w", err)
	}
	if n == 0 {
		return 0, fmt.Errorf("--size %s: a volume needs a size above zero, e.g. 10G", s)
	}
	return n, nil
}

func newVolCreateCmd(g *globals) *cobra.Command {
	var size string
	cmd := &cobra.Command{
		Use:     "create --size SIZE POD::NAME",
		Short:   "Create a thin volume in a pod",
		Long:    "Create a thin volume. Sizes are in binary units (1G = 1 GiB) and a multiple of 4K.",
		Example: "metro vol create --size 10G pod1::vol1",
		Args:    volArg,
		RunE: func(cmd *cobra.Command, args []string) error {
			n, err := sizeFlag(cmd, size)
			if err != nil {
				return err
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			v, err := c.CreateVolume(cmd.Context(), args[0], n)
			if err != nil {
				return err
			}
			return g.newOutput(cmd).one(v, volTable([]api.Volume{v}, false))
		},
	}
	cmd.Flags().StringVar(&size, "size", "", "volume size in binary units (1G = 1 GiB), e.g. 10G")
	return cmd
}

func newVolListCmd(g *globals) *cobra.Command {
	var (
		pending bool
		pod     string
	)
	cmd := &cobra.Command{
		Use:   "list [--pending] [--pod POD] [POD::NAME...]",
		Short: "List volumes (live ones, or with --pending the destroyed ones awaiting eradication)",
		Example: "metro vol list\nmetro vol list --pod pod1\n" +
			"metro vol list --pending\nmetro vol list pod1::vol1",
		RunE: func(cmd *cobra.Command, args []string) error {
			for _, a := range args {
				if _, _, err := catalog.SplitVolumeName(a); err != nil {
					return fmt.Errorf("%s: %w", verb(cmd), err)
				}
			}
			if len(args) > 0 && cmd.Flags().Changed("pod") {
				return fmt.Errorf("%s: give either --pod or volume names, not both", verb(cmd))
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			vols, err := listVolumes(cmd.Context(), c, pending, pod, args)
			if err != nil {
				return err
			}
			return g.newOutput(cmd).list(vols, volTable(vols, pending))
		},
	}
	cmd.Flags().BoolVar(&pending, "pending", false, "list destroyed volumes that can still be recovered")
	cmd.Flags().StringVar(&pod, "pod", "", "list only the volumes of this pod")
	return cmd
}

// listVolumes fetches the volumes a list asks for: the named ones (live
// or destroyed as pending says), or all in pod (all pods if empty).
func listVolumes(ctx context.Context, c *api.Client, pending bool, pod string, names []string) ([]api.Volume, error) {
	out := []api.Volume{}
	if len(names) == 0 {
		q := url.Values{"pending": {fmt.Sprint(pending)}}
		if pod != "" {
			q.Set("pod", pod)
		}
		if err := c.Do(ctx, "GET", "/volumes?"+q.Encode(), nil, &out); err != nil {
			return nil, err
		}
		if out == nil {
			out = []api.Volume{}
		}
		return out, nil
	}
	for _, name := range names {
		v, err := c.Volume(ctx, name)
		if err != nil {
			return nil, err
		}
		switch {
		case pending && v.Destroyed == nil:
			return nil, fmt.Errorf("volume %s is not destroyed; list it without --pending", name)
		case !pending && v.Destroyed != nil:
			return nil, fmt.Errorf("volume %s is destroyed; list it with --pending, or recover it with 'metro vol recover %s'", name, name)
		}
		out = append(out, v)
	}
	return out, nil
}

// parseResize works out a volume's new size from --size: an absolute
// size ("20G") or, with a leading plus, growth ("+10G").
func parseResize(s string, cur uint64) (uint64, error) {
	grow, isGrow := strings.CutPrefix(strings.TrimSpace(s), "+")
	n, err := units.ParseSize(grow)
	if err != nil {
		return 0, fmt.Errorf("--size: %w", err)
	}
	if !isGrow {
		if n < cur {
			return 0, fmt.Errorf("--size %s: smaller than the volume (%s); volumes only grow", s, fmtSize(cur))
		}
		return n, nil
	}
	if n == 0 {
		return 0, fmt.Errorf("--size %s: grows by nothing; give an amount, e.g. +10G", s)
	}
	if n > math.MaxUint64-cur {
		return 0, fmt.Errorf("--size %s: too large", s)
	}
	return cur + n, nil
}

func newVolResizeCmd(g *globals) *cobra.Command {
	var size string
	cmd := &cobra.Command{
		Use:   "resize --size SIZE|+SIZE POD::NAME",
		Short: "Grow a volume, online",
		Long: "Grow a volume to --size, or by the amount after a plus (--size +10G).\n" +
			"Volumes never shrink. Hosts see the new capacity after a capacity-changed unit attention.",
		Example: "metro vol resize --size 20G pod1::vol1\nmetro vol resize --size +10G pod1::vol1",
		Args:    volArg,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := requireFlag(cmd, "size", "the new size, or +SIZE to grow by"); err != nil {
				return err
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			cur, err := c.Volume(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			n, err := parseResize(size, cur.Size)
			if err != nil {
				return err
			}
			v, err := c.ResizeVolume(cmd.Context(), args[0], n)
			if err != nil {
				return err
			}
			return g.newOutput(cmd).one(v, volTable([]api.Volume{v}, false))
		},
	}
	cmd.Flags().StringVar(&size, "size", "", "new size (20G), or +SIZE to grow by (+10G)")
	return cmd
}

func newVolDestroyCmd(g *globals) *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use:   "destroy [--force] POD::NAME",
		Short: "Destroy a volume (recoverable until eradicated)",
		Long: "Destroy a volume. It stays recoverable with 'metro vol recover' until it is eradicated.\n" +
			"A connected volume needs --force, which also disconnects it from every host and host group.",
		Example: "metro vol destroy pod1::vol1",
		Args:    volArg,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			v, err := c.DestroyVolume(cmd.Context(), args[0], force)
			if err != nil {
				return err
			}
			o := g.newOutput(cmd)
			if o.json {
				return writeJSON(o.w, v)
			}
			return o.done("Destroyed volume %s; recoverable with 'metro vol recover %s' until %s",
				v.Name, v.Name, fmtTimePtr(v.EradicateAt))
		},
	}
	cmd.Flags().BoolVar(&force, "force", false, "destroy even if connected (disconnects it everywhere)")
	return cmd
}

func newVolRecoverCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "recover POD::NAME",
		Short:   "Recover a destroyed volume",
		Long:    "Recover a destroyed volume that is not yet eradicated. Its connections are not restored.",
		Example: "metro vol recover pod1::vol1",
		Args:    volArg,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			v, err := c.RecoverVolume(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			return g.newOutput(cmd).one(v, volTable([]api.Volume{v}, false))
		},
	}
}

func newVolEradicateCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "eradicate POD::NAME",
		Short:   "Eradicate a destroyed volume now (its data is gone for good)",
		Example: "metro vol eradicate pod1::vol1",
		Args:    volArg,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			if err := c.EradicateVolume(cmd.Context(), args[0]); err != nil {
				return err
			}
			return g.newOutput(cmd).done("Eradicated volume %s", args[0])
		},
	}
}

// volTable shows volumes; pending adds when each was destroyed and when it
// will be eradicated.
func volTable(vols []api.Volume, pending bool) *table {
	header := []string{"Name", "Size", "Used", "Serial", "Created"}
	if pending {
		header = append(header, "Destroyed", "Eradicate-at")
	}
	t := newTable(header...)
	for _, v := range vols {
		t.row(v.Name, fmtSize(v.Size), fmtSize(v.Used), v.Serial, fmtTime(v.Created),
			fmtTimePtr(v.Destroyed), fmtTimePtr(v.EradicateAt))
	}
	return t
}
