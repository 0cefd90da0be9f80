// Package testbin gives tests that run metro as a process (the lab, the
// end-to-end tests) a metro binary: the one METRO_BIN names, or one built
// from this module for the test run.
package testbin

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// Run sets *bin to a metro binary (METRO_BIN, or cmd/metro built into a
// temporary directory), runs the tests and removes what it built. Call it
// from TestMain: os.Exit(testbin.Run(m, &bin)).
func Run(m *testing.M, bin *string) int {
	*bin = os.Getenv("METRO_BIN")
	if *bin == "" {
		dir, err := os.MkdirTemp("", "metro-test-bin-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		*bin = filepath.Join(dir, "metro")
		cmd := exec.Command("go", "build", "-o", *bin, "github.com/metro-storage/metro/cmd/metro")
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			fmt.Fprintln(os.Stderr, "build metro:", err)
			return 1
		}
	}
	return m.Run()
}
