package e2e

import (
	"fmt"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// The failure-scenario document: docs/failure-scenarios.md, written by
// the run of TestFailureScenarios and TestFailoverAcceptance when
// METRO_SCENARIO_DOC names the file. Each test fills its part and
// rewrites the whole file when it ends, so a run of both writes both.

// accItem is one step of the acceptance script, as expected and as
// observed.
type accItem struct {
	step, want, got string
	ok              bool
}

var scenDoc struct {
	sync.Mutex
	scenarios  []*scenResult
	acceptance []accItem
	accRan     bool
}

// writeScenarioDoc records a test's part (scenarios, or the acceptance
// steps when acc is not nil) and writes the document if asked to.
func writeScenarioDoc(t *testing.T, scenarios []*scenResult, acc []accItem) {
	scenDoc.Lock()
	defer scenDoc.Unlock()
	if scenarios != nil {
		scenDoc.scenarios = scenarios
	}
	if acc != nil {
		scenDoc.acceptance, scenDoc.accRan = acc, true
	}
	path := os.Getenv("METRO_SCENARIO_DOC")
	if path == "" {
		return
	}
	if err := os.WriteFile(path, []byte(renderScenarioDoc()), 0o644); err != nil {
		t.Errorf("write %s: %v", path, err)
		return
	}
	t.Logf("wrote %s", path)
}

// cell makes text safe in a table cell.
func cell(s string) string {
	return strings.NewReplacer("|", "\\|", "\n", "<br>").Replace(s)
}

func yesNo(b bool, yes, no string) string {
	if b {
		return yes
	}
	return no
}

// renderScenarioDoc is the document, from scenDoc.
func renderScenarioDoc() string {
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	w("# Failure scenarios\n\n")
	w("This file is written by the failure-scenario suite (`test/e2e/scenarios_test.go`, `acceptance_test.go`) from\n")
	w("one run, on %s with %d CPUs (%s); `make scenarios` runs it again and rewrites it. Do not edit it by hand:\n",
		time.Now().UTC().Format("2006-01-02"), runtime.NumCPU(), runtime.Version())
	w("the *expected* column is what the seeds promise (paraphrased, cited by document), the *observed* column what\n")
	w("the run measured.\n\n")
	w("## How the scenarios run\n\n")
	w("One lab (`metro lab`): array-a at site A, array-b at site B, each a process, the mediator a third process\n")
	w("reached by each array through a route of its own; the link, the mediator routes and every host path are\n")
	w("cables the lab can cut. Timers are the defaults (link timeout 1 s, head start 1 s) except the arrays'\n")
	w("mediator heartbeat, 1 s instead of 5 s, so that a lost mediator is noticed sooner. pod1 (one 64 MiB volume)\n")
	w("prefers array-a (`metro pod setattr --failover-preference array-a pod1`). Four hosts write 4 KiB blocks of\n")
	w("known patterns, each into its own region, one write at a time, from before the fault until the pod is in\n")
	w("sync again after the repair:\n\n")
	w("| host | site | paths | preferred array |\n|---|---|---|---|\n")
	w("| uniform-A | A | array-a, array-b (uniform access) | array-a |\n")
	w("| uniform-B | B | array-b, array-a (uniform access) | array-b |\n")
	w("| local-A | A | array-a only (non-uniform access) | array-a |\n")
	w("| local-B | B | array-b only (non-uniform access) | array-b |\n\n")
	w("Each host behaves like a server with multipath software: a path checker per path asks REPORT TARGET PORT\n")
	w("GROUPS every %s, and writes go to the best usable path (Active/Optimized, then Active/Non-optimized); a write\n", checkEvery)
	w("that fails on a path (NOT READY unavailable, no answer within %s, the session lost) is sent through another,\n", pathTimeout)
	w("and is retried until acknowledged. **Paths** are the ALUA state each path's array reports for itself through\n")
	w("that path (AO, ANO, U = unavailable, `down` = no answer), in the host's order. A host **sees an I/O error** when\n")
	w("its multipath device has no usable path left for a write (what an application sees as an error on a host that\n")
	w("does not queue, and what makes a cluster restart it elsewhere). The **longest write pause** is the longest any\n")
	w("write took from first sending to acknowledgement (it includes a host's own path timeout where a path was cut);\n")
	w("it is measured, never asserted. **Data**: after the repair and back in sync, every host's region is read through\n")
	w("each array's own portal and every acknowledged write must be there; then the two copies are compared whole.\n")
	w("**Arrays** are the status each array reports for itself in `metro pod list --json` (what it reports of the\n")
	w("other in brackets); `down` is an array whose process is not running.\n\n")
	if len(scenDoc.scenarios) > 0 {
		renderSummary(w)
		for i, r := range scenDoc.scenarios {
			renderScenario(w, i+1, r)
		}
	} else {
		w("The scenario suite did not run in this generation.\n\n")
	}
	w("## The acceptance script of issue 9\n\n")
	if !scenDoc.accRan {
		w("The acceptance test did not run in this generation.\n")
		return b.String()
	}
	w("`TestFailoverAcceptance` runs the steps of the issue's acceptance that the scenarios above do not already\n")
	w("cover, as a user would: `metro lab up` as its own process at default settings, the `metro lab` verbs and the\n")
	w("`metro` CLI from other processes, a host writing 4 KiB blocks of known patterns through the lab's host portals.\n\n")
	w("| step | expected | observed | result |\n|---|---|---|---|\n")
	for _, it := range scenDoc.acceptance {
		w("| %s | %s | %s | %s |\n", cell(it.step), cell(it.want), cell(it.got), yesNo(it.ok, "as expected", "**NOT as expected**"))
	}
	return b.String()
}

// arraysText is a phase's expected or observed array states.
func arraysText(v [2]string) string {
	return fmt.Sprintf("a %s, b %s", v[0], v[1])
}

// errorsText lists the hosts that saw an error (expected or observed).
func errorsText(r *scenResult, observed bool) string {
	var hs []string
	for _, h := range hostNames {
		if h == r.failed {
			continue
		}
		if (observed && r.runs[h].errors > 0) || (!observed && r.wantErrors[h]) {
			hs = append(hs, h)
		}
	}
	return orNone(hs)
}

func orNone(hosts []string) string {
	if len(hosts) == 0 {
		return "none"
	}
	return strings.Join(hosts, ", ")
}

func longest(r *scenResult) (string, time.Duration) {
	var name string
	var d time.Duration
	for _, h := range hostNames {
		if h == r.failed {
			continue
		}
		if run := r.runs[h]; run.errors == 0 && run.longest > d {
			name, d = h, run.longest
		}
	}
	return name, d
}

func renderSummary(w func(string, ...any)) {
	w("## Summary\n\n")
	w("| # | scenario | expected | observed | result |\n|---|---|---|---|---|\n")
	for i, r := range scenDoc.scenarios {
		var want, got []string
		for _, ph := range r.phases {
			want = append(want, arraysText(ph.want.arrays))
			got = append(got, arraysText([2]string{ph.got[0].self, ph.got[1].self}))
		}
		exp := strings.Join(want, ", then ") + "; I/O errors: " + errorsText(r, false) + "; no data lost (" + r.cite + ")"
		obs := strings.Join(got, ", then ") + "; I/O errors: " + errorsText(r, true)
		if name, d := longest(r); name != "" {
			obs += fmt.Sprintf("; longest pause without error %s (%s)", ms(d), name)
		}
		obs += "; data: " + strings.SplitN(r.data, ":", 2)[0]
		w("| %d | [%s](#%d-%s) | %s | %s | %s |\n", i+1, r.name, i+1, anchor(r.name), cell(exp), cell(obs),
			yesNo(len(r.problems) == 0, "as expected", "**NOT as expected**"))
	}
	w("\n")
}

// anchor is the heading's anchor as GitHub makes it (after the number).
func anchor(name string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(name) {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9', r == '-':
			b.WriteRune(r)
		case r == ' ':
			b.WriteRune('-')
		}
	}
	return b.String()
}

func renderScenario(w func(string, ...any), n int, r *scenResult) {
	w("## %d. %s\n\n", n, r.name)
	w("**Expected (seeds).** %s\n\n", r.seeds)
	w("| | expected | observed |\n|---|---|---|\n")
	w("| before the fault | pod1 in sync, both arrays online | %s |\n", cell(r.before))
	for k, ph := range r.phases {
		w("| **%s** | | |\n", cell(ph.what))
		w("| arrays | %s | %s |\n", arraysText(ph.want.arrays),
			cell(fmt.Sprintf("a %s [sees b %s], b %s [sees a %s], %s after the fault", ph.got[0].self, ph.got[0].peer,
				ph.got[1].self, ph.got[1].peer, ms(ph.settled))))
		for _, h := range hostNames {
			w("| %s paths | %s | %s |\n", h, ph.want.paths[h], cell(ph.gotPaths[h]))
		}
		if ph.want.errors != nil {
			var want, got []string
			for _, h := range hostNames {
				if ph.want.errors[h] {
					want = append(want, h)
				}
				if r.phaseErrors(k, h) > 0 {
					got = append(got, h)
				}
			}
			w("| I/O errors in this step | %s | %s |\n", orNone(want), orNone(got))
		}
	}
	if r.repair != "" {
		w("| **repair: %s** | | |\n", cell(r.repair))
	}
	w("| recovery | in sync again by itself | %s |\n", cell(r.recovery))
	for _, h := range hostNames {
		if h == r.failed {
			w("| %s | failed on purpose | failed, then restarted |\n", h)
			continue
		}
		run := r.runs[h]
		got := "no error"
		if run.errors > 0 {
			got = fmt.Sprintf("I/O error (%d outage(s); the first %s after the fault: %s)", run.errors,
				ms(run.firstAt.Sub(r.start)), run.first)
		}
		got += fmt.Sprintf("; %d writes, longest pause %s", run.writes, ms(run.longest))
		w("| %s I/O | %s | %s |\n", h, yesNo(r.wantErrors[h], "I/O error", "no error"), cell(got))
	}
	if r.note != "" {
		w("| measured | | %s |\n", cell(r.note))
	}
	w("| data | no acknowledged write lost | %s |\n", cell(r.data))
	res := "as expected"
	if len(r.problems) > 0 {
		res = "**NOT as expected:** " + strings.Join(r.problems, "; ")
	}
	w("| result | | %s |\n\n", cell(res))
}
