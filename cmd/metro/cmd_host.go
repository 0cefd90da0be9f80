package main

import (
	"context"
	"fmt"
	"net/url"
	"strconv"

	"github.com/spf13/cobra"

	"github.com/metro-storage/metro/internal/api"
	"github.com/metro-storage/metro/internal/catalog"
)

// newHostCmd is `metro host`: a host is an initiator identity (its iSCSI
// names and CHAP credentials) that volumes are connected to.
func newHostCmd(g *globals) *cobra.Command {
	cmd := noun(&cobra.Command{
		Use:   "host",
		Short: "Create, list, change and delete hosts; connect volumes to them",
	})
	cmd.AddCommand(newHostCreateCmd(g), newHostListCmd(g), newHostSetattrCmd(g), newHostDeleteCmd(g),
		newConnectCmd(g, "host"), newDisconnectCmd(g, "host"))
	return cmd
}

// chapFlags are the CHAP credentials of a host on the command line.
// Secrets are sent to the array and never printed; each can come from
// its flag, a file, or a prompt on a terminal (typed twice).
type chapFlags struct {
	user, targetUser     string
	secret, targetSecret secret
}

func newCHAPFlags() *chapFlags {
	return &chapFlags{
		secret:       secret{name: "chap-secret", what: "the CHAP secret the host logs in with (12-255 characters)"},
		targetSecret: secret{name: "target-chap-secret", what: "the CHAP secret the array answers with (mutual CHAP; differs from the host's)"},
	}
}

func (f *chapFlags) add(cmd *cobra.Command) {
	fl := cmd.Flags()
	fl.StringVar(&f.user, "chap-user", "", "CHAP user name the host logs in with")
	f.secret.add(fl)
	fl.StringVar(&f.targetUser, "target-chap-user", "", "CHAP user name the array answers with (mutual CHAP)")
	f.targetSecret.add(fl)
}

// credentials are one CHAP user and secret from the command line; set is
// false when neither was given.
type credentials struct {
	set          bool
	user, secret string
}

// read returns the host's and the array's CHAP credentials. A user comes
// with its secret: from its flags, or typed at the prompt; a user of ""
// turns CHAP off and needs no secret.
func (f *chapFlags) read(cmd *cobra.Command, con *console) (host, target credentials, err error) {
	if host, err = readCredentials(cmd, con, "chap-user", f.user, &f.secret); err != nil {
		return
	}
	target, err = readCredentials(cmd, con, "target-chap-user", f.targetUser, &f.targetSecret)
	return
}

func readCredentials(cmd *cobra.Command, con *console, userFlag, user string, s *secret) (credentials, error) {
	if !cmd.Flags().Changed(userFlag) {
		if s.given() {
			return credentials{}, fmt.Errorf("%s: --%s needs --%s: give the user with its secret", verb(cmd), s.name, userFlag)
		}
		return credentials{}, nil
	}
	if user == "" && !s.given() {
		return credentials{set: true}, nil // CHAP off
	}
	v, ok, err := s.get(con, true)
	if err != nil {
		return credentials{}, fmt.Errorf("%s: %w", verb(cmd), err)
	}
	if !ok {
		return credentials{}, fmt.Errorf("%s: --%s needs its secret: --%s-file FILE (- for standard input), or run it "+
			"on a terminal to be asked for it (--%s SECRET works too, but other local users can see it)",
			verb(cmd), userFlag, s.name, s.name)
	}
	return credentials{set: true, user: user, secret: v}, nil
}

func newHostCreateCmd(g *globals) *cobra.Command {
	var (
		iqns      []string
		chap      = newCHAPFlags()
		preferred string
	)
	cmd := &cobra.Command{
		Use:   "create [--iqn IQN]... [--chap-user U [--chap-secret-file F]] [--target-chap-user U [--target-chap-secret-file F]] [--preferred-array A[,B]] HOST",
		Short: "Create a host from its initiator names",
		Long: "Create a host. --iqn (repeatable) names its initiators. With --chap-user the host must log in\n" +
			"with CHAP; with --target-chap-user too, the array answers the host's challenge (mutual CHAP).\n" +
			"Each user's secret is read from --chap-secret-file/--target-chap-secret-file (- for standard\n" +
			"input) or, on a terminal, asked for twice without echo; --chap-secret S also works, for\n" +
			"scripts, but shows S to other local users. --preferred-array names the arrays whose paths the\n" +
			"host should prefer (ALUA active/optimized) once pods are stretched.",
		Example: "metro host create --iqn iqn.1993-08.org.debian:01:abcdef h1\n" +
			"metro host create --iqn iqn.1993-08.org.debian:01:abcdef --chap-user h1 h1   (asks for the secret)",
		Args: argsN(1, "the name of the host to create"),
		RunE: func(cmd *cobra.Command, args []string) error {
			host, target, err := chap.read(cmd, g.con)
			if err != nil {
				return err
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			req := api.HostCreate{Name: args[0], IQNs: iqns, CHAPUser: host.user, CHAPSecret: host.secret,
				TargetCHAPUser: target.user, TargetCHAPSecret: target.secret}
			if req.IQNs == nil {
				req.IQNs = []string{}
			}
			if preferred != "" {
				req.PreferredArrays = splitList(preferred)
			}
			h, err := c.CreateHost(cmd.Context(), req)
			if err != nil {
				return err
			}
			return g.newOutput(cmd).one(h, hostTable([]api.Host{h}))
		},
	}
	cmd.Flags().StringArrayVar(&iqns, "iqn", nil, "initiator name (iqn.*, eui.* or naa.*) of the host; repeat for more")
	chap.add(cmd)
	cmd.Flags().StringVar(&preferred, "preferred-array", "", "arrays (comma-separated) whose paths the host should prefer")
	return cmd
}

func newHostListCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "list [HOST...]",
		Short:   "List hosts with their initiators, groups and connected volumes (VOLUME@LUN)",
		Example: "metro host list\nmetro host list --json h1",
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			hosts, err := listHosts(cmd.Context(), c, args)
			if err != nil {
				return err
			}
			return g.newOutput(cmd).list(hosts, hostTable(hosts))
		},
	}
}

// listHosts fetches the named hosts, or all of them.
func listHosts(ctx context.Context, c *api.Client, names []string) ([]api.Host, error) {
	out := []api.Host{}
	if len(names) == 0 {
		if err := c.Do(ctx, "GET", "/hosts", nil, &out); err != nil {
			return nil, err
		}
		if out == nil {
			out = []api.Host{}
		}
		return out, nil
	}
	for _, n := range names {
		var h api.Host
		if err := c.Do(ctx, "GET", "/hosts/"+url.PathEscape(n), nil, &h); err != nil {
			return nil, err
		}
		out = append(out, h)
	}
	return out, nil
}

func newHostSetattrCmd(g *globals) *cobra.Command {
	var (
		add, rem  []string
		chap      = newCHAPFlags()
		preferred string
	)
	cmd := &cobra.Command{
		Use: "setattr [--addiqn IQN]... [--remiqn IQN]... [--chap-user U [--chap-secret-file F]] " +
			"[--target-chap-user U [--target-chap-secret-file F]] [--preferred-array A[,B]] HOST",
		Short: "Change a host's initiators, CHAP credentials or preferred arrays",
		Long: "Change a host. Flags not given leave their attribute as it is. CHAP credentials are set in\n" +
			"pairs: a user with its secret, read as for 'metro host create' (a file, standard input or the\n" +
			"prompt); --chap-user \"\" (or --target-chap-user \"\") turns CHAP off.\n" +
			"--preferred-array \"\" clears the preferred arrays.",
		Example: "metro host setattr --addiqn iqn.1993-08.org.debian:01:fedcba h1\n" +
			"metro host setattr --chap-user h1 --chap-secret-file h1.secret h1\n" +
			"metro host setattr --preferred-array \"\" h1",
		Args: argsN(1, "the name of the host to change"),
		RunE: func(cmd *cobra.Command, args []string) error {
			host, target, err := chap.read(cmd, g.con)
			if err != nil {
				return err
			}
			fl := cmd.Flags()
			u := api.HostUpdate{AddIQNs: add, RemoveIQNs: rem}
			if host.set {
				u.CHAPUser, u.CHAPSecret = &host.user, &host.secret
			}
			if target.set {
				u.TargetCHAPUser, u.TargetCHAPSecret = &target.user, &target.secret
			}
			if fl.Changed("preferred-array") {
				arrays := splitList(preferred)
				u.PreferredArrays = &arrays
			}
			if len(add) == 0 && len(rem) == 0 && u.CHAPUser == nil && u.TargetCHAPUser == nil && u.PreferredArrays == nil {
				return fmt.Errorf("%s: nothing to change: give --addiqn, --remiqn, --chap-user, "+
					"--target-chap-user or --preferred-array%s", verb(cmd), usageHint(cmd))
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			h, err := c.UpdateHost(cmd.Context(), args[0], u)
			if err != nil {
				return err
			}
			return g.newOutput(cmd).one(h, hostTable([]api.Host{h}))
		},
	}
	cmd.Flags().StringArrayVar(&add, "addiqn", nil, "initiator name to add; repeat for more")
	cmd.Flags().StringArrayVar(&rem, "remiqn", nil, "initiator name to remove; repeat for more")
	chap.add(cmd)
	cmd.Flags().StringVar(&preferred, "preferred-array", "", `arrays (comma-separated) whose paths the host should prefer; "" clears`)
	return cmd
}

func newHostDeleteCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "delete HOST",
		Short:   "Delete a host that has no connections",
		Example: "metro host delete h1",
		Args:    argsN(1, "the name of the host to delete"),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			if err := c.DeleteHost(cmd.Context(), args[0]); err != nil {
				return err
			}
			return g.newOutput(cmd).done("Deleted host %s", args[0])
		},
	}
}

// hostTable shows hosts. CHAP secrets are never shown (the API does not
// return them); the users are.
func hostTable(hosts []api.Host) *table {
	t := newTable("Name", "IQNs", "CHAP User", "Target CHAP User", "Preferred Arrays", "Host Groups", "Connections", "Sessions")
	for _, h := range hosts {
		t.row(h.Name, joinList(h.IQNs), h.CHAPUser, h.TargetCHAPUser, joinList(h.PreferredArrays),
			joinList(h.HostGroups), fmtConnections(h.Connections, true), strconv.Itoa(h.Sessions))
	}
	return t
}

// fmtConnections lists connections as VOLUME@LUN; withGroup marks the
// ones a host has through a host group as VOLUME@LUN(GROUP).
func fmtConnections(conns []api.HostConnection, withGroup bool) string {
	out := make([]string, 0, len(conns))
	for _, c := range conns {
		s := c.Volume + "@" + fmtLUN(c.LUN)
		if withGroup && c.HostGroup != "" {
			s += "(" + c.HostGroup + ")"
		}
		out = append(out, s)
	}
	return joinList(out)
}

// newConnectCmd is `metro host connect` or `metro hgroup connect` (kind
// "host" or "hgroup").
func newConnectCmd(g *globals, kind string) *cobra.Command {
	var (
		vol string
		lun uint64
	)
	what := kindName(kind)
	cmd := &cobra.Command{
		Use:   fmt.Sprintf("connect --vol POD::NAME [--lun N] %s", upperName(kind)),
		Short: fmt.Sprintf("Connect a volume to a %s at a LUN", what),
		Long: fmt.Sprintf("Connect a volume to a %s. Without --lun the lowest LUN free on every host concerned is used.\n"+
			"The %s's initiators see the volume at that LUN from then on.", what, what),
		Example: fmt.Sprintf("metro %s connect --vol pod1::vol1 --lun 0 %s", kind, exampleName(kind)),
		Args:    argsN(1, "the name of the "+what),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := volFlag(cmd, vol); err != nil {
				return err
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			req := api.Connection{Volume: vol}
			if kind == "host" {
				req.Host = args[0]
			} else {
				req.HostGroup = args[0]
			}
			if cmd.Flags().Changed("lun") {
				req.LUN = &lun
			}
			conn, err := c.Connect(cmd.Context(), req)
			if err != nil {
				return err
			}
			t := newTable("Name", "Vol", "LUN")
			l := "-"
			if conn.LUN != nil {
				l = fmtLUN(*conn.LUN)
			}
			t.row(args[0], conn.Volume, l)
			return g.newOutput(cmd).one(conn, t)
		},
	}
	cmd.Flags().StringVar(&vol, "vol", "", "the volume to connect, POD::NAME")
	cmd.Flags().Uint64Var(&lun, "lun", 0, fmt.Sprintf("the LUN (0-%d); default: the lowest free one", catalog.MaxLUN))
	return cmd
}

// newDisconnectCmd is `metro host disconnect` or `metro hgroup
// disconnect`.
func newDisconnectCmd(g *globals, kind string) *cobra.Command {
	var vol string
	what := kindName(kind)
	cmd := &cobra.Command{
		Use:     fmt.Sprintf("disconnect --vol POD::NAME %s", upperName(kind)),
		Short:   fmt.Sprintf("Disconnect a volume from a %s", what),
		Example: fmt.Sprintf("metro %s disconnect --vol pod1::vol1 %s", kind, exampleName(kind)),
		Args:    argsN(1, "the name of the "+what),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := volFlag(cmd, vol); err != nil {
				return err
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			host, group := args[0], ""
			if kind != "host" {
				host, group = "", args[0]
			}
			if err := c.Disconnect(cmd.Context(), vol, host, group); err != nil {
				return err
			}
			return g.newOutput(cmd).done("Disconnected volume %s from %s %s", vol, what, args[0])
		},
	}
	cmd.Flags().StringVar(&vol, "vol", "", "the volume to disconnect, POD::NAME")
	return cmd
}

// volFlag checks the --vol flag of a connection verb.
func volFlag(cmd *cobra.Command, vol string) error {
	if err := requireFlag(cmd, "vol", "the volume, POD::NAME"); err != nil {
		return err
	}
	if _, _, err := catalog.SplitVolumeName(vol); err != nil {
		return fmt.Errorf("--vol: %w", err)
	}
	return nil
}

// kindName names what a connection verb of kind connects to.
func kindName(kind string) string {
	if kind == "host" {
		return "host"
	}
	return "host group"
}

func upperName(kind string) string {
	if kind == "host" {
		return "HOST"
	}
	return "HGROUP"
}

func exampleName(kind string) string {
	if kind == "host" {
		return "h1"
	}
	return "g1"
}
