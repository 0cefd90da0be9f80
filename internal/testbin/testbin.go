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
	"time"
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

// Eventually polls check until it reports true, failing the test with
// the last thing check said if that takes longer than timeout. It is for
// waiting on an effect in another process (a link that goes down, a
// process that answers), never for measuring how long one took.
func Eventually(t testing.TB, timeout time.Duration, what string, check func() (ok bool, last string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, last := check()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v; last: %s", what, timeout, last)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
