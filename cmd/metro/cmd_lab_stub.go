package main

// Temporary stand-ins until the lead's cmd_lab.go and cmd_array_run.go
// land; delete this file then.

import "github.com/spf13/cobra"

func newLabCmd(g *globals) *cobra.Command { return &cobra.Command{Use: "lab"} }

func newArrayRunCmd() *cobra.Command { return &cobra.Command{Use: "run"} }
