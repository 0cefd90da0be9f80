package main

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/metro-storage/metro/internal/api"
)

// newPodCmd is `metro pod`: pods are the namespaces and consistency
// groups volumes live in, and (from the stretched-pod issue on) the unit
// that is stretched across two arrays.
func newPodCmd(g *globals) *cobra.Command {
	cmd := noun(&cobra.Command{
		Use:   "pod",
		Short: "Create, list, change and destroy pods",
	})
	cmd.AddCommand(newPodCreateCmd(g), newPodListCmd(g), newPodDestroyCmd(g), newPodSetattrCmd(g),
		newPodAddCmd(g), newPodRemoveCmd(g), newPodEradicateCmd(g))
	return cmd
}

func newPodCreateCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "create POD",
		Short:   "Create a pod on the array",
		Example: "metro pod create pod1",
		Args:    argsN(1, "the name of the pod to create"),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			p, err := c.CreatePod(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			return g.newOutput(cmd).one(p, podTable([]api.Pod{p}))
		},
	}
}

func newPodListCmd(g *globals) *cobra.Command {
	var pending bool
	cmd := &cobra.Command{
		Use:   "list [POD...]",
		Short: "List pods (all, or the ones named) with their arrays and status",
		Long: "List pods with, for each array of the pod, its status there as the array asked sees it:\n" +
			"online (serving I/O), paused (holding I/O while a failover is decided),\n" +
			"resyncing (catching up, not serving), offline (not serving) or unknown.",
		Example: "metro pod list\nmetro pod list --json pod1",
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			var pods []api.Pod
			if len(args) == 0 {
				if pods, err = c.PodsPending(cmd.Context(), pending); err != nil {
					return err
				}
			}
			for _, name := range args {
				p, err := c.Pod(cmd.Context(), name)
				if err != nil {
					return err
				}
				pods = append(pods, p)
			}
			if pods == nil {
				pods = []api.Pod{}
			}
			return g.newOutput(cmd).list(pods, podTable(pods))
		},
	}
	cmd.Flags().BoolVar(&pending, "pending", false, "list the pod copies pending eradication instead")
	return cmd
}

func newPodDestroyCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "destroy POD",
		Short:   "Destroy an empty pod",
		Long:    "Destroy a pod. The pod must hold no volumes, not even destroyed ones waiting for eradication.",
		Example: "metro pod destroy pod1",
		Args:    argsN(1, "the name of the pod to destroy"),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			if err := c.DestroyPod(cmd.Context(), args[0]); err != nil {
				return err
			}
			return g.newOutput(cmd).done("Destroyed pod %s", args[0])
		},
	}
}

func newPodSetattrCmd(g *globals) *cobra.Command {
	var (
		pref, autoRecover string
	)
	cmd := &cobra.Command{
		Use:   "setattr [--failover-preference ARRAY] [--auto-recover true|false] POD",
		Short: "Change a pod's failover preference or auto-recover setting",
		Long: "Change a pod's attributes; flags not given leave theirs as they are. Both are part of the\n" +
			"pod's replicated configuration: either array of a stretched pod takes the change.\n" +
			"--failover-preference names the array (one of the pod's) that should keep the pod online when\n" +
			"the link between its arrays fails: it races for the pod at once, the other array only after a\n" +
			"head start, so the preferred array wins while it is alive and the other when it is gone.\n" +
			"--failover-preference \"\" clears it (both arrays race at once).\n" +
			"--auto-recover (true by default): after a failover, once the link is back, the array that\n" +
			"stopped serving resyncs from the other and returns to in sync by itself; false holds it\n" +
			"offline until an operator sets it back to true.",
		Example: "metro pod setattr --failover-preference array-a pod1\n" +
			"metro pod setattr --failover-preference \"\" pod1\n" +
			"metro pod setattr --auto-recover false pod1",
		Args: argsN(1, "the name of the pod to change"),
		RunE: func(cmd *cobra.Command, args []string) error {
			fl := cmd.Flags()
			var u api.PodUpdate
			if fl.Changed("failover-preference") {
				u.FailoverPreference = &pref
			}
			if fl.Changed("auto-recover") {
				on, err := strconv.ParseBool(autoRecover)
				if err != nil {
					return fmt.Errorf("%s: --auto-recover %q: say true or false%s", verb(cmd), autoRecover, usageHint(cmd))
				}
				u.AutoRecover = &on
			}
			if u.FailoverPreference == nil && u.AutoRecover == nil {
				return fmt.Errorf("%s: nothing to change: give --failover-preference or --auto-recover%s", verb(cmd), usageHint(cmd))
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			p, err := c.UpdatePod(cmd.Context(), args[0], u)
			if err != nil {
				return err
			}
			return g.newOutput(cmd).one(p, podTable([]api.Pod{p}))
		},
	}
	cmd.Flags().StringVar(&pref, "failover-preference", "", `the array preferred to keep the pod online when the link fails; "" clears`)
	cmd.Flags().StringVar(&autoRecover, "auto-recover", "", "true: after a failover, resync and return to in sync by itself (the default); false: wait for the operator")
	return cmd
}

// podTable shows pods: each array of the pod as name:status, the
// sequencer, the epoch, and the volumes with their space.
func podTable(pods []api.Pod) *table {
	t := newTable("Name", "Arrays", "Sequencer", "Epoch", "Copy", "Failover Preference", "Auto Recover", "Volumes", "Provisioned", "Used")
	for _, p := range pods {
		pref := p.FailoverPreference
		if pref == "" {
			pref = "-"
		}
		arrays := make([]string, 0, len(p.Arrays))
		for _, a := range p.Arrays {
			arrays = append(arrays, fmt.Sprintf("%s:%s", a.Name, a.Status))
		}
		t.row(p.Name, strings.Join(arrays, ", "), p.Sequencer, strconv.FormatUint(p.Epoch, 10), fmtCopy(p.Replication),
			pref, strconv.FormatBool(p.AutoRecover), strconv.Itoa(p.Volumes), fmtSize(p.Provisioned), fmtSize(p.Used))
	}
	return t
}
