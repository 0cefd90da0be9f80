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
// tgtd and metro in the same run: metro must have zero failures and at
// least as many passes as tgtd.
func TestLibiscsiConformance(t *testing.T) {
	needTool(t, "iscsi-test-cu")
	ref := startTgtd(t, 1<<30, "")
	refLog, _ := runTool(t, 10*time.Minute, "iscsi-test-cu", "-d", "-t", "ALL", ref.url)
	refSum := summarize(refLog)

	l := startLab(t, lab.Options{Initiators: []string{testInitiator, testInitiator2}, Size: 1 << 30})
	log, _ := runTool(t, 15*time.Minute, "iscsi-test-cu", "-d", "-t", "ALL", l.Info.URLs[0])
	sum := summarize(log)
	_ = os.WriteFile(filepath.Join(t.TempDir(), "metro-cu.log"), []byte(log), 0o644)

	t.Logf("tgtd:  %d passed, %d skipped, %d failed (%s)", refSum.pass, refSum.skip, refSum.fail, strings.Join(refSum.failed, ","))
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
