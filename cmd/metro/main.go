// Command metro is the metro binary: the array daemon (metro array run),
// the mediator (metro mediator run), the lab (metro lab up) and the
// administrator's CLI (metro pod|vol|host|hgroup|array ...), a thin client
// of an array's REST API.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/metro-storage/metro/internal/api"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "0.1.0-dev"

// globals are the flags every client verb takes. Environment variables
// stand in for flags not given, but are never shown as flag defaults:
// help output must not print METRO_TOKEN.
type globals struct {
	api   string
	token secret
	ca    string
	json  bool
	con   *console
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := newRoot().ExecuteContext(ctx)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "metro:", err)
		var se *api.StatusError
		if errors.As(err, &se) && se.Code == 401 {
			os.Exit(3)
		}
		os.Exit(1)
	}
}

func newRoot() *cobra.Command { return newRootOn(stdConsole()) }

// newRootOn is the metro command reading secrets from con.
func newRootOn(con *console) *cobra.Command {
	g := &globals{con: con, token: secret{name: "token", what: "the API bearer token", env: "METRO_TOKEN"}}
	root := &cobra.Command{
		Use:           "metro",
		Short:         "metro: active/active stretched block storage",
		Version:       version,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	pf := root.PersistentFlags()
	pf.StringVar(&g.api, "api", "", "array API URL, e.g. https://127.0.0.1:8443 (env METRO_API)")
	g.token.add(pf)
	pf.StringVar(&g.ca, "ca", "", "PEM certificate the array's API certificate must chain to (env METRO_CA)")
	pf.BoolVar(&g.json, "json", false, "print JSON for scripts instead of tables")
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return fmt.Errorf("%w\nrun '%s --help' for usage", err, c.CommandPath())
	})
	root.AddCommand(newArrayCmd(g), newPodCmd(g), newVolCmd(g), newHostCmd(g), newHostGroupCmd(g), newLabCmd(g), newMediatorCmd(g))
	return root
}

// client returns an API client from the global flags or, for those not
// given, the environment. Without a token from either, it asks for one
// on a terminal.
func (g *globals) client() (*api.Client, error) {
	base := flagOrEnv(g.api, "METRO_API")
	if base == "" {
		return nil, errors.New("no array named: pass --api URL (and --token-file, --ca) or set METRO_API, " +
			"METRO_TOKEN_FILE (or METRO_TOKEN), METRO_CA; 'metro lab up' prints them")
	}
	token, _, err := g.token.get(g.con, false)
	if err != nil {
		return nil, err
	}
	return api.NewClient(base, token, flagOrEnv(g.ca, "METRO_CA"))
}

// flagOrEnv returns a flag's value, or the environment variable env when
// the flag is empty.
func flagOrEnv(v, env string) string {
	if v != "" {
		return v
	}
	return os.Getenv(env)
}
