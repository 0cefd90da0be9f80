package e2e

import (
	"encoding/json"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/metro-storage/metro/internal/lab"
)

// cliTry runs the metro CLI against array i of the lab and returns its
// output and error: the command may fail.
func cliTry(t *testing.T, l *lab.Lab, i int, args ...string) (string, error) {
	t.Helper()
	a := l.Info.Arrays[i]
	cmd := exec.Command(metroBin, args...)
	cmd.Env = append(os.Environ(), "METRO_API="+a.API, "METRO_TOKEN="+a.Token, "METRO_CA="+a.CA)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// cliRefused runs a CLI command that must fail, saying each of says.
func cliRefused(t *testing.T, l *lab.Lab, i int, says []string, args ...string) {
	t.Helper()
	out, err := cliTry(t, l, i, args...)
	if err == nil {
		t.Fatalf("metro %s on %s succeeded; want it refused:\n%s", strings.Join(args, " "), l.Info.Arrays[i].Name, out)
	}
	for _, s := range says {
		if !strings.Contains(out, s) {
			t.Errorf("metro %s on %s: the refusal does not say %q:\n%s", strings.Join(args, " "), l.Info.Arrays[i].Name, s, out)
		}
	}
}

// hostIQNs returns the initiators of a host as array i lists them.
func hostIQNs(t *testing.T, l *lab.Lab, i int, host string) []string {
	t.Helper()
	var hosts []struct{ IQNs []string }
	if err := json.Unmarshal([]byte(cliOn(t, l, i, "host", "list", "--json", host)), &hosts); err != nil || len(hosts) != 1 {
		t.Fatalf("host list %s on %s: %v", host, l.Info.Arrays[i].Name, err)
	}
	return hosts[0].IQNs
}

// linkTeardowns counts the link sessions array i has seen end so far.
func linkTeardowns(t *testing.T, l *lab.Lab, i int) int {
	t.Helper()
	log, err := os.ReadFile(l.Info.Arrays[i].Log)
	if err != nil {
		t.Fatal(err)
	}
	return strings.Count(string(log), `msg="link session closed`) + strings.Count(string(log), `msg="link session lost"`)
}

// stretchedSteady is what must not move while configuration changes: the
// pod online on both arrays as each sees it, at the epochs of before,
// and no link session ended.
type stretchedSteady struct {
	epochs, teardowns [2]int
}

func steadyNow(t *testing.T, l *lab.Lab) stretchedSteady {
	t.Helper()
	var s stretchedSteady
	for i := range 2 {
		p := podsOn(t, l, i)[lab.PodName]
		for _, a := range l.Info.Arrays {
			if st := statusOf(p, a.Name); st != "online" {
				t.Fatalf("%s sees %s %s, want online", l.Info.Arrays[i].Name, a.Name, st)
			}
		}
		s.epochs[i] = int(p.Epoch)
		s.teardowns[i] = linkTeardowns(t, l, i)
	}
	return s
}

func checkSteady(t *testing.T, l *lab.Lab, before stretchedSteady, what string) {
	t.Helper()
	if now := steadyNow(t, l); now != before {
		t.Fatalf("%s: the link was torn down or the pod moved: epochs %v, link sessions ended %v; before %v, %v",
			what, now.epochs, now.teardowns, before.epochs, before.teardowns)
	}
}

// TestStretchedConfigThroughCLI is issue 9's defects 8 and 9 as a new
// user meets them, with the CLI against a lab pair: a change of the host
// a stretched pod uses, and of the pod's attributes, made on either
// array reaches both, or, when the other array cannot take it (an
// initiator of a host of its own), is refused on both and made once that
// is fixed; `metro array connect` to the peer says "already paired";
// none of it ends the link. Connecting the pair's array to a third array
// is refused before the third array is touched.
func TestStretchedConfigThroughCLI(t *testing.T) {
	l := startLab(t, lab.Options{Size: 64 << 20})
	const (
		host = lab.HostName
		iqn9 = "iqn.1993-08.org.debian:01:array-b-own"
	)
	steady := steadyNow(t, l)
	cliOn(t, l, 1, "host", "create", "--iqn", iqn9, "h9")
	for i := range 2 {
		cliRefused(t, l, i, []string{"array-b cannot take this change", "host h9", "neither array made it"},
			"host", "setattr", "--addiqn", iqn9, host)
	}
	for i := range 2 {
		if got := hostIQNs(t, l, i, host); slices.Contains(got, iqn9) {
			t.Fatalf("%s: the refused initiator is on %s: %v", l.Info.Arrays[i].Name, host, got)
		}
	}
	checkSteady(t, l, steady, "the refused change")
	// The fix the refusal names: h9 on array-b gives up the initiator.
	cliOn(t, l, 1, "host", "delete", "h9")
	cliOn(t, l, 0, "host", "setattr", "--addiqn", iqn9, host)
	if got := hostIQNs(t, l, 1, host); !slices.Contains(got, iqn9) {
		t.Fatalf("an initiator added on array-a: array-b has %v", got)
	}
	cliOn(t, l, 1, "host", "setattr", "--remiqn", iqn9, "--preferred-array", "array-b", host)
	if got := hostIQNs(t, l, 0, host); slices.Contains(got, iqn9) {
		t.Fatalf("an initiator removed on array-b: array-a has %v", got)
	}
	checkSteady(t, l, steady, "host changes from either array")

	// A host of array-b's own joins a host group the pod uses, on array-b.
	cliOn(t, l, 0, "hgroup", "create", "g1")
	cliOn(t, l, 1, "hgroup", "connect", "--vol", lab.VolName, "--lun", "7", "g1")
	cliOn(t, l, 1, "host", "create", "--iqn", "iqn.1993-08.org.debian:01:h3", "h3")
	cliOn(t, l, 1, "hgroup", "setattr", "--addhost", "h3", "g1")
	var groups []struct {
		Name  string
		Hosts []string
	}
	if err := json.Unmarshal([]byte(cliOn(t, l, 0, "hgroup", "list", "--json")), &groups); err != nil ||
		len(groups) != 1 || groups[0].Name != "g1" || !slices.Equal(groups[0].Hosts, []string{"h3"}) {
		t.Fatalf("the host groups on array-a after array-b added h3 to g1: %+v %v", groups, err)
	}
	checkSteady(t, l, steady, "host group changes")

	// The pod's attributes, from either array.
	type podAttrs struct {
		FailoverPreference string `json:"failover_preference"`
		AutoRecover        bool   `json:"auto_recover"`
	}
	attrs := func(i int) podAttrs {
		var pods []podAttrs
		if err := json.Unmarshal([]byte(cliOn(t, l, i, "pod", "list", "--json", lab.PodName)), &pods); err != nil || len(pods) != 1 {
			t.Fatalf("pod list on %s: %v", l.Info.Arrays[i].Name, err)
		}
		return pods[0]
	}
	if got := attrs(0); got != (podAttrs{AutoRecover: true}) {
		t.Fatalf("the lab pod's attributes: %+v, want no preference and auto-recover", got)
	}
	cliOn(t, l, 1, "pod", "setattr", "--failover-preference", "array-b", lab.PodName)
	cliOn(t, l, 0, "pod", "setattr", "--auto-recover", "false", lab.PodName)
	for i := range 2 {
		if got := attrs(i); got != (podAttrs{FailoverPreference: "array-b"}) {
			t.Fatalf("%s: the pod's attributes %+v, want array-b preferred and no auto-recover", l.Info.Arrays[i].Name, got)
		}
	}
	if out := cliOn(t, l, 0, "pod", "list", lab.PodName); !strings.Contains(out, "Auto Recover") || !strings.Contains(out, "array-b") {
		t.Fatalf("pod list does not show the attributes:\n%s", out)
	}
	cliRefused(t, l, 1, []string{"array-z", "array-a, array-b"}, "pod", "setattr", "--failover-preference", "array-z", lab.PodName)
	checkSteady(t, l, steady, "pod attributes")

	// Pairing again, from either array.
	for i := range 2 {
		peer := l.Info.Arrays[1-i]
		out := cliOn(t, l, i, "array", "connect", "--peer", peer.API, "--token-file", peer.TokenFile, "--ca", peer.CA)
		if !strings.Contains(out, "Already paired with "+peer.Name) {
			t.Fatalf("array connect on %s to its peer:\n%s", l.Info.Arrays[i].Name, out)
		}
	}
	checkSteady(t, l, steady, "array connect to the peer")

	// A third array (a lab of one, named array-a too) is refused by
	// array-b, which is paired with the pair's array-a, and left unpaired.
	c := startLab(t, lab.Options{Arrays: 1})
	third := c.Info.Arrays[0]
	cliRefused(t, l, 1, []string{"already paired with array array-a"},
		"array", "connect", "--peer", third.API, "--token-file", third.TokenFile, "--ca", third.CA)
	var arrays []struct{ Name, Peer string }
	if err := json.Unmarshal([]byte(cliOn(t, c, 0, "array", "list", "--json")), &arrays); err != nil || len(arrays) != 1 || arrays[0].Peer != "" {
		t.Fatalf("the third array after array-b refused it: %+v %v, want it alone and unpaired", arrays, err)
	}
	checkSteady(t, l, steady, "a third array refused")
}
