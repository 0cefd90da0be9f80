package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/metro-storage/metro/internal/api"
)

func newArraySetattrCmd(g *globals) *cobra.Command {
	var url, ca string
	key := secret{name: "mediator-authkey", what: "the mediator's auth key"}
	cmd := &cobra.Command{
		Use:   "setattr --mediator URL [--mediator-authkey-file FILE] [--mediator-ca FILE]",
		Short: "Change the array answering: its mediator",
		Long: "Set the mediator of the array answering, at once and for good (it is kept in the array's data\n" +
			"directory and replaces the configuration file's mediator section): --mediator is its https:// URL\n" +
			"(port 9095 by default), the auth key comes from --mediator-authkey-file (or a prompt on a terminal)\n" +
			"and is stored 0600 on the array, never shown; --mediator-ca is the mediator's certificate (its\n" +
			"mediator.crt) when it is self-signed. The array asks the mediator once and refuses a key it refuses\n" +
			"or a certificate that does not verify. --mediator \"\" removes the mediator. Run it on each array.\n" +
			"Setting a mediator again also accepts a mediator rebuilt at the same URL (see README).",
		Example: "metro array setattr --mediator https://10.0.2.5:9095 --mediator-authkey-file mediator.key --mediator-ca mediator.crt\n" +
			"metro array setattr --mediator \"\"",
		Args: argsN(0, ""),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := requireFlag(cmd, "mediator", `the mediator's URL, or "" to remove it`); err != nil {
				return err
			}
			set := api.MediatorSetting{URL: url}
			if url == "" {
				if key.given() || ca != "" {
					return fmt.Errorf("%s: --mediator \"\" removes the mediator: give no auth key or certificate with it", verb(cmd))
				}
			} else {
				k, ok, err := key.get(g.con, false)
				if err != nil {
					return fmt.Errorf("%s: %w", verb(cmd), err)
				}
				if !ok {
					return fmt.Errorf("%s: the mediator's auth key is required: --mediator-authkey-file FILE (or run it on a "+
						"terminal to be asked for it)%s", verb(cmd), usageHint(cmd))
				}
				set.AuthKey = k
				if set.CA, err = readFileFlag("mediator-ca", ca); err != nil {
					return err
				}
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			info, err := c.UpdateArray(cmd.Context(), api.ArrayUpdate{Mediator: &set})
			if err != nil {
				return err
			}
			return g.newOutput(cmd).one(info, arrayTable([]api.ArrayInfo{info}))
		},
	}
	cmd.Flags().StringVar(&url, "mediator", "", `the mediator's URL, https://HOST[:PORT]; "" removes it`)
	key.add(cmd.Flags())
	cmd.Flags().StringVar(&ca, "mediator-ca", "", "PEM certificate the mediator's certificate must chain to (its mediator.crt)")
	return cmd
}
