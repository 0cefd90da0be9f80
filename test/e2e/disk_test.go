package e2e

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/metro-storage/metro/internal/initiator"
	"github.com/metro-storage/metro/internal/lab"
)

// walFaultTrigger is the file, in an array's data directory, whose
// existence makes that array's WAL writes and syncs fail (the arrays run
// with METRO_TEST_STORE_FAULTS set to it: a test-only hook of metro array
// run).
const walFaultTrigger = "fail-wal"

// block is a 4 KiB block filled with v.
func block(v byte) []byte { return bytes.Repeat([]byte{v}, 4096) }

// startPairWithHosts starts a stretched pair with a 2 s link timeout, logs
// a host in to each array, and writes block(1) at LBA 0 through array-b.
func startPairWithHosts(t *testing.T) (l *lab.Lab, a, b *initiator.Conn) {
	t.Helper()
	l = startLab(t, lab.Options{Initiators: []string{crashInitiator}, Size: 64 << 20, LinkTimeout: 2 * time.Second})
	a = dialArray(t, l, 0, crashInitiator)
	t.Cleanup(func() { a.Close() })
	b = dialArray(t, l, 1, crashInitiator)
	t.Cleanup(func() { b.Close() })
	if err := writeRetry(b, 0, block(1)); err != nil {
		t.Fatalf("write through array-b: %v", err)
	}
	return l, a, b
}

// TestWALSyncFailureStopsArray makes the store of one array of a stretched
// pair fail to sync its WAL under a host's writes. That array's process
// exits with a clear log line (it must not keep serving with a store that
// cannot write, nor keep the link up); the other array sees the link drop,
// goes through the link-loss path and serves the pod alone; the failed
// array, restarted on a healthy disk, recovers what it acknowledged and
// resyncs.
func TestWALSyncFailureStopsArray(t *testing.T) {
	t.Setenv("METRO_TEST_STORE_FAULTS", walFaultTrigger)
	l, a, _ := startPairWithHosts(t)

	trigger := filepath.Join(l.Info.Arrays[1].DataDir, walFaultTrigger)
	if err := os.WriteFile(trigger, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	// A configuration change on array-b commits to its store from inside
	// an API handler (whose panic recovery used to keep the array running
	// with a store that could not write).
	cmd := exec.Command(metroBin, "pod", "create", "pod-b")
	ab := l.Info.Arrays[1]
	cmd.Env = append(os.Environ(), "METRO_API="+ab.API, "METRO_TOKEN="+ab.Token, "METRO_CA="+ab.CA)
	if out, err := cmd.CombinedOutput(); err == nil {
		t.Fatalf("a configuration change on array-b succeeded although its WAL cannot be synced:\n%s", out)
	}
	select {
	case e := <-l.Exits():
		if e.Name != "array-b" {
			t.Fatalf("%s exited, want array-b", e.Name)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("array-b is still running 30 s after its WAL failed")
	}
	logB, err := os.ReadFile(l.Info.Arrays[1].Log)
	if err != nil {
		t.Fatal(err)
	}
	i := strings.Index(string(logB), "exiting: the store failed")
	if i < 0 || !strings.Contains(string(logB[i:]), "exit_status=4") {
		t.Fatalf("array-b's log does not say why it stopped:\n%s", tailString(string(logB), 3000))
	}
	t.Logf("array-b: %s", strings.SplitN(string(logB[i:]), "\n", 2)[0])

	// array-a: the link is down, and after the link-loss pause it serves
	// the pod alone (it is the sequencer).
	if err := writeRetry(a, 16, block(3)); err != nil {
		t.Fatalf("write through array-a after array-b stopped: %v", err)
	}
	if got := statusOf(podsOn(t, l, 0)["pod1"], "array-a"); got != "online" {
		t.Errorf("array-a sees itself %q after array-b stopped, want online", got)
	}
	logA, err := os.ReadFile(l.Info.Arrays[0].Log)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(logA), "link down") {
		t.Errorf("array-a's log shows no link loss:\n%s", tailString(string(logA), 3000))
	}

	// On a healthy disk array-b restarts, recovers and resyncs; both
	// copies then hold every acknowledged write.
	if err := os.Remove(trigger); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := l.Start(ctx, 1); err != nil {
		t.Fatalf("restart array-b: %v", err)
	}
	compareCopies(t, l, crashInitiator)
	for i := 0; i < 4 && a.TestUnitReady(0) != nil; i++ {
	}
	d, err := a.Read(0, 0, 24)
	if err != nil || !bytes.Equal(d[:4096], block(1)) || !bytes.Equal(d[8192:], block(3)) {
		t.Fatalf("acknowledged writes after the recovery: %v", err)
	}
}
