package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/metro-storage/metro/internal/api"
)

// newHostGroupCmd is `metro hgroup`: a host group is a set of hosts that
// share connections (a cluster's nodes seeing the same volumes at the same
// LUNs).
func newHostGroupCmd(g *globals) *cobra.Command {
	cmd := noun(&cobra.Command{
		Use:   "hgroup",
		Short: "Create, list, change and delete host groups; connect volumes to them",
	})
	cmd.AddCommand(newHostGroupCreateCmd(g), newHostGroupListCmd(g), newHostGroupSetattrCmd(g),
		newHostGroupDeleteCmd(g), newConnectCmd(g, "hgroup"), newDisconnectCmd(g, "hgroup"))
	return cmd
}

func newHostGroupCreateCmd(g *globals) *cobra.Command {
	var hosts []string
	cmd := &cobra.Command{
		Use:     "create [--hostlist HOST[,HOST]] HGROUP",
		Short:   "Create a host group",
		Example: "metro hgroup create --hostlist h1,h2 g1",
		Args:    argsN(1, "the name of the host group to create"),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			hg, err := c.CreateHostGroup(cmd.Context(), api.HostGroupCreate{Name: args[0], Hosts: cleanList(hosts)})
			if err != nil {
				return err
			}
			return g.newOutput(cmd).one(hg, hostGroupTable([]api.HostGroup{hg}))
		},
	}
	cmd.Flags().StringSliceVar(&hosts, "hostlist", nil, "member hosts (comma-separated or repeated)")
	return cmd
}

func newHostGroupListCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "list",
		Short:   "List host groups with their hosts and connected volumes (VOLUME@LUN)",
		Example: "metro hgroup list",
		Args:    argsN(0, ""),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			groups, err := c.HostGroups(cmd.Context())
			if err != nil {
				return err
			}
			if groups == nil {
				groups = []api.HostGroup{}
			}
			return g.newOutput(cmd).list(groups, hostGroupTable(groups))
		},
	}
}

func newHostGroupSetattrCmd(g *globals) *cobra.Command {
	var add, rem []string
	cmd := &cobra.Command{
		Use:     "setattr [--addhost HOST[,HOST]] [--remhost HOST[,HOST]] HGROUP",
		Short:   "Add hosts to a host group or remove them",
		Example: "metro hgroup setattr --addhost h3 g1\nmetro hgroup setattr --remhost h1 g1",
		Args:    argsN(1, "the name of the host group to change"),
		RunE: func(cmd *cobra.Command, args []string) error {
			u := api.HostGroupUpdate{AddHosts: cleanList(add), RemoveHosts: cleanList(rem)}
			if len(u.AddHosts) == 0 && len(u.RemoveHosts) == 0 {
				return fmt.Errorf("%s: nothing to change: give --addhost or --remhost%s", verb(cmd), usageHint(cmd))
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			hg, err := c.UpdateHostGroup(cmd.Context(), args[0], u)
			if err != nil {
				return err
			}
			return g.newOutput(cmd).one(hg, hostGroupTable([]api.HostGroup{hg}))
		},
	}
	cmd.Flags().StringSliceVar(&add, "addhost", nil, "hosts to add (comma-separated or repeated)")
	cmd.Flags().StringSliceVar(&rem, "remhost", nil, "hosts to remove (comma-separated or repeated)")
	return cmd
}

func newHostGroupDeleteCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "delete HGROUP",
		Short:   "Delete a host group that has no connections (its hosts stay)",
		Example: "metro hgroup delete g1",
		Args:    argsN(1, "the name of the host group to delete"),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			if err := c.DeleteHostGroup(cmd.Context(), args[0]); err != nil {
				return err
			}
			return g.newOutput(cmd).done("Deleted host group %s", args[0])
		},
	}
}

// cleanList drops blanks from a list flag (a trailing comma, spaces).
func cleanList(items []string) []string {
	var out []string
	for _, s := range items {
		out = append(out, splitList(s)...)
	}
	return out
}

// hostGroupTable shows host groups.
func hostGroupTable(groups []api.HostGroup) *table {
	t := newTable("Name", "Hosts", "Connections")
	for _, hg := range groups {
		t.row(hg.Name, joinList(hg.Hosts), fmtConnections(hg.Connections, false))
	}
	return t
}
