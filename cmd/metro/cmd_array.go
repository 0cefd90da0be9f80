package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/metro-storage/metro/internal/api"
)

// newArrayCmd is `metro array`: the array daemon (run) and the arrays an
// array knows (list).
func newArrayCmd(g *globals) *cobra.Command {
	cmd := noun(&cobra.Command{
		Use:   "array",
		Short: "Run an array, or list the arrays one knows",
	})
	cmd.AddCommand(newArrayListCmd(g), newArrayRunCmd())
	return cmd
}

func newArrayListCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "list",
		Short:   "List the array answering and its peers",
		Example: "metro array list",
		Args:    argsN(0, ""),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			arrays, err := c.Arrays(cmd.Context())
			if err != nil {
				return err
			}
			if arrays == nil {
				arrays = []api.ArrayInfo{}
			}
			return g.newOutput(cmd).list(arrays, arrayTable(arrays))
		},
	}
}

// arrayTable shows arrays: name, id, status, iSCSI target and portals,
// capacity and space used.
func arrayTable(arrays []api.ArrayInfo) *table {
	t := newTable("Name", "ID", "Status", "Target", "Portals", "Capacity", "Used")
	for _, a := range arrays {
		capacity := fmtSize(a.Capacity)
		if a.Capacity == 0 {
			capacity = "unlimited"
		}
		t.row(a.Name, a.ID, a.Status, a.Target, joinList(a.Portals), capacity, fmtUsed(a.Used, a.Capacity))
	}
	return t
}

// fmtUsed prints space used, with its share of the capacity when known.
func fmtUsed(used, capacity uint64) string {
	if capacity == 0 {
		return fmtSize(used)
	}
	return fmt.Sprintf("%s (%.0f%%)", fmtSize(used), float64(used)/float64(capacity)*100)
}
