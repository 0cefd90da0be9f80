// Command metro is the metro binary: the array daemon (metro array run),
// the mediator (later), the lab (metro lab up) and the administrator's CLI
// (metro pod|vol|host|hgroup|array ...), a thin client of an array's REST
// API.
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

// globals are the flags every client verb takes.
type globals struct {
	api   string
	token string
	ca    string
	json  bool
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

func newRoot() *cobra.Command {
	g := &globals{}
	root := &cobra.Command{
		Use:           "metro",
		Short:         "metro: active/active stretched block storage",
		Version:       version,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	pf := root.PersistentFlags()
	pf.StringVar(&g.api, "api", os.Getenv("METRO_API"), "array API URL, e.g. https://127.0.0.1:8443 (env METRO_API)")
	pf.StringVar(&g.token, "token", os.Getenv("METRO_TOKEN"), "API bearer token (env METRO_TOKEN)")
	pf.StringVar(&g.ca, "ca", os.Getenv("METRO_CA"), "PEM certificate the array's API certificate must chain to (env METRO_CA)")
	pf.BoolVar(&g.json, "json", false, "print JSON for scripts instead of tables")
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return fmt.Errorf("%w\nrun '%s --help' for usage", err, c.CommandPath())
	})
	root.AddCommand(newArrayCmd(g), newPodCmd(g), newVolCmd(g), newHostCmd(g), newHostGroupCmd(g), newLabCmd(g))
	return root
}

// client returns an API client from the global flags.
func (g *globals) client() (*api.Client, error) {
	if g.api == "" {
		return nil, errors.New("no array named: pass --api URL (and --token, --ca) or set METRO_API, METRO_TOKEN, METRO_CA; 'metro lab up' prints them")
	}
	return api.NewClient(g.api, g.token, g.ca)
}
