// Package e2e tests metro end to end with real initiators: libiscsi's
// iscsi-test-cu and QEMU's iscsi driver against arrays started as separate
// processes by the lab, and tgtd as the reference target in the same run.
// The test command (make test) installs the tools; a missing tool is a
// failure, never a skip.
package e2e

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/metro-storage/metro/internal/lab"
	"github.com/metro-storage/metro/internal/testbin"
)

// The libiscsi test tool's two initiator names.
const (
	testInitiator  = "iqn.2007-10.com.github:sahlberg:libiscsi:iscsi-test"
	testInitiator2 = "iqn.2007-10.com.github:sahlberg:libiscsi:iscsi-test-2"
)

var metroBin string

func TestMain(m *testing.M) {
	os.Exit(testbin.Run(m, &metroBin))
}

// needTool fails the test when a tool the test command installs is absent.
func needTool(t *testing.T, name string) {
	t.Helper()
	if _, err := exec.LookPath(name); err != nil {
		t.Fatalf("%s is not installed: run the test command (make test), which installs it", name)
	}
}

// startLab starts a one-array lab in a temporary directory.
func startLab(t *testing.T, opts lab.Options) *lab.Lab {
	t.Helper()
	if opts.Dir == "" {
		opts.Dir = t.TempDir()
	}
	opts.Binary = metroBin
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	l, err := lab.Up(ctx, opts)
	if err != nil {
		t.Fatalf("lab up: %v", err)
	}
	t.Cleanup(func() {
		l.Stop()
		if t.Failed() {
			for _, a := range l.Info.Arrays {
				log, _ := os.ReadFile(a.Log)
				t.Logf("%s log (tail):\n%s", a.Name, tailString(string(log), 4000))
			}
		}
	})
	return l
}

func tailString(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// runTool runs a command with a timeout and returns its combined output.
func runTool(t *testing.T, timeout time.Duration, name string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if ctx.Err() != nil {
		err = fmt.Errorf("%s timed out after %v", name, timeout)
	}
	return out.String(), err
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// tgtd is a reference target: Debian's userspace iSCSI target with one
// file-backed LUN 1.
type tgtd struct {
	portal, target string
	url            string
}

// startTgtd starts a private tgtd instance with a size-byte backing file.
func startTgtd(t *testing.T, size int64, bsoflags string) *tgtd {
	t.Helper()
	needTool(t, "tgtd")
	dir := t.TempDir()
	file := filepath.Join(dir, "lun.img")
	f, err := os.Create(file)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	f.Close()
	port := freePort(t)
	ctl := strconv.Itoa(port % 10000)
	portal := fmt.Sprintf("127.0.0.1:%d", port)
	cmd := exec.Command("tgtd", "-f", "-C", ctl, "--iscsi", "portal="+portal)
	var log bytes.Buffer
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	target := "iqn.2026-11.io.metro:tgtd-ref"
	adm := func(args ...string) error {
		out, err := runTool(t, 10*time.Second, "tgtadm", append([]string{"-C", ctl, "--lld", "iscsi"}, args...)...)
		if err != nil {
			return fmt.Errorf("tgtadm %v: %v: %s", args, err, out)
		}
		return nil
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := adm("--op", "new", "--mode", "target", "--tid", "1", "-T", target)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("tgtd did not start: %v\n%s", err, log.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	lu := []string{"--op", "new", "--mode", "logicalunit", "--tid", "1", "--lun", "1", "-b", file}
	if bsoflags != "" {
		lu = append(lu, "--bsoflags", bsoflags)
	}
	for _, args := range [][]string{lu, {"--op", "bind", "--mode", "target", "--tid", "1", "-I", "ALL"}} {
		if err := adm(args...); err != nil {
			t.Fatal(err)
		}
	}
	return &tgtd{portal: portal, target: target, url: fmt.Sprintf("iscsi://%s/%s/1", portal, target)}
}

// cuSummary counts an iscsi-test-cu log the way the project's acceptance
// counts it: a test's verdict is the first bare "passed" or "FAILED" after
// its "Test:" line; a passed test that printed [SKIPPED] is a skip.
type cuSummary struct {
	pass, skip, fail int
	failed, skipped  []string
}

func summarize(log string) cuSummary {
	var s cuSummary
	suite := ""
	type test struct{ name, text string }
	var tests []test
	for _, line := range strings.Split(log, "\n") {
		if rest, ok := strings.CutPrefix(line, "Suite: "); ok {
			suite = strings.Fields(rest + " ")[0]
			continue
		}
		if rest, ok := strings.CutPrefix(line, "  Test: "); ok {
			name, text, _ := strings.Cut(rest, " ...")
			tests = append(tests, test{name: suite + "." + name, text: text})
			continue
		}
		if len(tests) > 0 {
			tests[len(tests)-1].text += "\n" + line
		}
	}
	for _, x := range tests {
		clean := strings.NewReplacer("[FAILED]", "", "[SKIPPED]", "").Replace(x.text)
		verdict := "FAILED"
		for _, w := range strings.FieldsFunc(clean, func(r rune) bool {
			return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z')
		}) {
			if w == "passed" || w == "FAILED" {
				verdict = w
				break
			}
		}
		switch {
		case verdict == "FAILED":
			s.fail++
			s.failed = append(s.failed, x.name)
		case strings.Contains(x.text, "[SKIPPED]"):
			s.skip++
			s.skipped = append(s.skipped, x.name)
		default:
			s.pass++
		}
	}
	return s
}
