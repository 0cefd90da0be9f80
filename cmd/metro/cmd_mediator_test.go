package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/metro-storage/metro/internal/mediator"
)

// TestMediatorBadFlags: every bad flag of the mediator's verbs is refused
// with what is wrong, before anything is made.
func TestMediatorBadFlags(t *testing.T) {
	c := newCLI(t)
	dir := t.TempDir()
	weak := filepath.Join(dir, "weak.key")
	open := filepath.Join(dir, "open.key")
	good := filepath.Join(dir, "good.key")
	if err := os.WriteFile(weak, []byte("secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(open, []byte(mediator.NewKey()+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(good, []byte(mediator.NewKey()+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	data := filepath.Join(dir, "med")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"mediator", "run"}, "--data-dir is required"},
		{[]string{"mediator", "run", "--data-dir", data, "--listen", "9095"}, "give HOST:PORT"},
		{[]string{"mediator", "run", "--data-dir", data, "--authkey-file", good, "--authkey-file", good, "--authkey-file", good}, "given 3 times"},
		{[]string{"mediator", "run", "--data-dir", data, "--cert", good}, "both --cert and --key"},
		{[]string{"mediator", "run", "--data-dir", data, "--max-pods", "-1"}, "must be positive"},
		{[]string{"mediator", "run", "--data-dir", data, "--log-level", "loud"}, "--log-level"},
		{[]string{"mediator", "run", "--data-dir", data, "--nope"}, "unknown flag"},
		{[]string{"mediator", "run", "extra"}, "takes no arguments"},
		{[]string{"mediator", "run", "--data-dir", data, "--listen", "127.0.0.1:0", "--authkey-file", weak}, "too weak"},
		{[]string{"mediator", "run", "--data-dir", data, "--listen", "127.0.0.1:0", "--authkey-file", open}, "chmod 600"},
		{[]string{"mediator", "run", "--data-dir", data, "--listen", "127.0.0.1:0", "--authkey-file", filepath.Join(dir, "none")}, "no such file"},
		{[]string{"mediator", "reset-generation", "--above", "3"}, "--data-dir is required"},
		{[]string{"mediator", "reset-generation", "--data-dir", data}, "--above is required"},
		{[]string{"mediator", "reset-generation", "--data-dir", data, "--above", "-3"}, "invalid argument"},
		{[]string{"mediator", "reset-generation", "--data-dir", t.TempDir(), "--above", "3"}, "no mediator state"},
		{[]string{"mediator", "status"}, "give --url"},
		{[]string{"mediator", "status", "--url", "https://127.0.0.1:1"}, "auth key is required"},
		{[]string{"mediator", "status", "--url", "http://127.0.0.1:1", "--authkey-file", good}, "https://"},
		{[]string{"mediator", "frobnicate"}, "unknown command"},
	} {
		_, err := c.run(tc.args...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("metro %s: %v, want an error saying %q", strings.Join(tc.args, " "), err, tc.want)
		}
	}
	if _, err := os.Stat(filepath.Join(data, mediator.StateFile)); err == nil {
		t.Error("a refused run made a state")
	}
}

// TestMediatorResetAndStatus: status --data-dir shows the state;
// reset-generation raises the generation of a stopped mediator and says
// what it did, and is refused while it runs.
func TestMediatorResetAndStatus(t *testing.T) {
	c := newCLI(t)
	dir := t.TempDir()
	b, err := mediator.OpenFile(dir, mediator.FileOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.run("mediator", "reset-generation", "--data-dir", dir, "--above", "50"); err == nil || !strings.Contains(err.Error(), "stop it first") {
		t.Fatalf("reset of a running mediator: %v", err)
	}
	b.Close()
	out, err := c.run("mediator", "reset-generation", "--data-dir", dir, "--above", "50")
	if err != nil {
		t.Fatal(err)
	}
	mustContain(t, out, "was 1 and is now 51", "up to 50")
	out, err = c.run("mediator", "status", "--data-dir", dir)
	if err != nil {
		t.Fatal(err)
	}
	mustContain(t, out, "Generation", " 51 ")
	out, err = c.run("--json", "mediator", "status", "--data-dir", dir)
	if err != nil || !strings.Contains(out, `"reset_generation": 51`) {
		t.Fatalf("%s %v", out, err)
	}
}
