package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/metro-storage/metro/internal/api"
)

// newArrayCmd is `metro array`: the array daemon (run) and the arrays an
// array knows (list).
func newArrayCmd(g *globals) *cobra.Command {
	cmd := noun(&cobra.Command{
		Use:   "array",
		Short: "Run an array, list the arrays one knows, pair them, check a store",
	})
	cmd.AddCommand(newArrayListCmd(g), newArrayRunCmd(), newArrayConnectCmd(g), newArrayCheckCmd(g), newArraySetattrCmd(g))
	return cmd
}

func newArrayListCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List the array answering and its peers",
		Long: "List the array answering and its peers: the link's status and round trip, and the mediator's\n" +
			"status (online, unreachable, rolled back, not configured) and round trip as each array sees it.",
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
			o := g.newOutput(cmd)
			if err := o.list(arrays, arrayTable(arrays)); err != nil || o.json {
				return err
			}
			for _, a := range arrays {
				if m := a.Mediator; m != nil && m.Error != "" && m.Status != "not configured" {
					fmt.Fprintf(o.w, "\n%s: mediator %s: %s\n", a.Name, m.Status, m.Error)
				}
			}
			return nil
		},
	}
}

// arrayTable shows arrays: name, id, status, iSCSI target and portals,
// capacity and space used, the mediator's status and round trip.
func arrayTable(arrays []api.ArrayInfo) *table {
	t := newTable("Name", "ID", "Status", "Peer", "Link RTT", "Target", "Portals", "Capacity", "Used", "Mediator", "Mediator RTT")
	for _, a := range arrays {
		capacity := fmtSize(a.Capacity)
		if a.Capacity == 0 {
			capacity = "unlimited"
		}
		if a.Target == "" { // a peer: only what the link knows
			capacity = "-"
		}
		rtt := "-"
		if a.RTTMillis > 0 {
			rtt = fmt.Sprintf("%.2f ms", a.RTTMillis)
		}
		peer := a.Peer
		if peer == "" {
			peer = "-"
		}
		med, medRTT := "-", "-"
		if m := a.Mediator; m != nil {
			med = m.Status
			if m.Status == "online" {
				medRTT = fmt.Sprintf("%.2f ms", m.RTTMillis)
			}
		}
		t.row(a.Name, a.ID, a.Status, peer, rtt, a.Target, joinList(a.Portals), capacity, fmtUsed(a.Used, a.Capacity), med, medRTT)
	}
	return t
}

func newArrayConnectCmd(g *globals) *cobra.Command {
	var peer, ca string
	token := secret{name: "token", what: "the peer array's API token"}
	cmd := &cobra.Command{
		Use:   "connect --peer URL [--token-file FILE] [--ca FILE]",
		Short: "Pair this array with another one (the peer) for stretched pods",
		Long: "Pair the array answering with the array whose management API is at --peer, an https:// URL.\n" +
			"The peer's API token is used once, to exchange the arrays' link certificates; the replication\n" +
			"link then authenticates both ends with them. Either array of the pair may run it.\n" +
			"An array pairs with one peer only. Connecting again to the array it is paired with says\n" +
			"\"already paired\" and changes nothing (the link stays up), unless that array's pairing details\n" +
			"(link address, certificate, API URL) changed: then they are updated and the link restarts.\n" +
			"Here --token, --token-file and --ca are the peer's (without either token flag, metro asks for\n" +
			"it on a terminal); the array answering is reached through METRO_API, METRO_TOKEN_FILE (or\n" +
			"METRO_TOKEN) and METRO_CA.",
		Example: "metro array connect --peer https://10.0.1.5:8443 --token-file peer-token --ca peer-ca.pem",
		Args:    argsN(0, ""),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := requireFlag(cmd, "peer", "the peer array's API URL"); err != nil {
				return err
			}
			if err := api.RequireHTTPS(peer); err != nil {
				return fmt.Errorf("%s: --peer: %w", verb(cmd), err)
			}
			tok, ok, err := token.get(g.con, false)
			if err != nil {
				return fmt.Errorf("%s: %w", verb(cmd), err)
			}
			if !ok {
				return fmt.Errorf("%s: the peer array's API token is required: --token-file FILE (or run it on a terminal "+
					"to be asked for it)%s", verb(cmd), usageHint(cmd))
			}
			req := api.ArrayConnect{PeerURL: peer, Token: tok}
			if req.CA, err = readFileFlag("ca", ca); err != nil {
				return err
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			info, err := c.ConnectPeer(cmd.Context(), req)
			if err != nil {
				return err
			}
			out := g.newOutput(cmd)
			if info.AlreadyPaired {
				if err := out.done("Already paired with %s; nothing changed.", info.Name); err != nil {
					return err
				}
			}
			return out.one(info, arrayTable([]api.ArrayInfo{info.ArrayInfo}))
		},
	}
	cmd.Flags().StringVar(&peer, "peer", "", "the peer array's management API URL (https://)")
	token.add(cmd.Flags())
	cmd.Flags().StringVar(&ca, "ca", "", "PEM file of the certificate the peer's API presents")
	return cmd
}

// readFileFlag reads the file a flag names ("" for none), for errors
// naming the flag.
func readFileFlag(flag, path string) (string, error) {
	if path == "" {
		return "", nil
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("--%s: %w", flag, err)
	}
	return string(data), nil
}

// fmtUsed prints space used, with its share of the capacity when known.
func fmtUsed(used, capacity uint64) string {
	if capacity == 0 {
		return fmtSize(used)
	}
	return fmt.Sprintf("%s (%.0f%%)", fmtSize(used), float64(used)/float64(capacity)*100)
}
