package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/metro-storage/metro/internal/lab"
)

// TestLibiscsiConformance runs libiscsi's iscsi-test-cu ALL family against
// tgtd and against each array of a stretched pair in the same run: metro
// must have zero failures and at least as many passes as tgtd through
// either array. Then the MultipathIO family runs with one path to each
// array, and both arrays' copies must be identical.
func TestLibiscsiConformance(t *testing.T) {
	needTool(t, "iscsi-test-cu")
	ref := startTgtd(t, 1<<30, "")
	refLog, _ := runTool(t, 10*time.Minute, "iscsi-test-cu", "-d", "-t", "ALL", ref.url)
	refSum := summarize(refLog)
	t.Logf("tgtd:  %d passed, %d skipped, %d failed (%s)", refSum.pass, refSum.skip, refSum.fail, strings.Join(refSum.failed, ","))

	l := startLab(t, lab.Options{Initiators: []string{testInitiator, testInitiator2}, Size: 1 << 30})
	for i, a := range l.Info.Arrays {
		t.Run(a.Name, func(t *testing.T) {
			log, _ := runTool(t, 15*time.Minute, "iscsi-test-cu", "-d", "-t", "ALL", l.Info.URLs[i])
			checkCU(t, log, refSum)
		})
	}
	t.Run("MultipathIO", func(t *testing.T) {
		log, _ := runTool(t, 5*time.Minute, "iscsi-test-cu", "-d", "-t", "ALL.MultipathIO", l.Info.URLs[0], l.Info.URLs[1])
		sum := summarize(log)
		t.Logf("MultipathIO across the pair: %d passed, %d skipped, %d failed", sum.pass, sum.skip, sum.fail)
		if sum.pass != 4 || sum.fail != 0 {
			t.Fatalf("MultipathIO: want 4 passed; log:\n%s", tailString(log, 4000))
		}
	})
	compareCopies(t, l, testInitiator)
}

// checkCU checks one iscsi-test-cu ALL log against tgtd's summary.
func checkCU(t *testing.T, log string, refSum cuSummary) {
	t.Helper()
	sum := summarize(log)
	_ = os.WriteFile(filepath.Join(t.TempDir(), "metro-cu.log"), []byte(log), 0o644)

	t.Logf("metro: %d passed, %d skipped, %d failed", sum.pass, sum.skip, sum.fail)
	t.Logf("metro skips: %s", strings.Join(sum.skipped, ", "))
	if total := sum.pass + sum.skip + sum.fail; total < 200 {
		t.Fatalf("only %d tests ran; log tail:\n%s", total, tailString(log, 3000))
	}
	if sum.fail != 0 {
		t.Errorf("metro failed %d tests: %s", sum.fail, strings.Join(sum.failed, ", "))
		for _, name := range sum.failed {
			t.Logf("%s", testOutput(log, name))
		}
	}
	if sum.pass < refSum.pass {
		t.Errorf("metro passed %d tests, fewer than tgtd's %d", sum.pass, refSum.pass)
	}
}

// testOutput returns the log lines of one test.
func testOutput(log, name string) string {
	_, short, _ := strings.Cut(name, ".")
	i := strings.Index(log, "  Test: "+short+" ...")
	if i < 0 {
		return name + ": no output"
	}
	rest := log[i:]
	if j := strings.Index(rest[8:], "  Test: "); j >= 0 {
		rest = rest[:j+8]
	}
	return tailString(rest, 2000)
}
