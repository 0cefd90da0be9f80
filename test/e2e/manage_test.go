package e2e

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/metro-storage/metro/internal/lab"
)

// metroCLI runs the metro binary against array 0 of the lab.
func metroCLI(t *testing.T, l *lab.Lab, args ...string) (string, error) {
	t.Helper()
	a := l.Info.Arrays[0]
	cmd := exec.Command(metroBin, args...)
	cmd.Env = append(os.Environ(), "METRO_API="+a.API, "METRO_TOKEN="+a.Token, "METRO_CA="+a.CA)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func mustCLI(t *testing.T, l *lab.Lab, args ...string) string {
	t.Helper()
	out, err := metroCLI(t, l, args...)
	if err != nil {
		t.Fatalf("metro %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// TestLabJSON checks lab.json has what initiators and scripts need, and
// that pod list --json has the documented shape.
func TestLabJSON(t *testing.T) {
	dir := t.TempDir()
	l := startLab(t, lab.Options{Dir: dir, Initiators: []string{testInitiator, testInitiator2}})
	data, err := os.ReadFile(filepath.Join(dir, "lab.json"))
	if err != nil {
		t.Fatal(err)
	}
	var info struct {
		Arrays []struct {
			Name, API, Token, CA, Portal, Target string
		}
		Pod, Volume string
		LUN         *uint64
		Initiators  []string
		URLs        []string
		LinkProxy   string `json:"link_proxy"`
	}
	if err := json.Unmarshal(data, &info); err != nil {
		t.Fatal(err)
	}
	if len(info.Arrays) != 2 || info.Pod != "pod1" || info.Volume != "pod1::vol1" || info.LUN == nil ||
		len(info.Initiators) != 2 || len(info.URLs) != 2 || !strings.HasPrefix(info.LinkProxy, "http://") {
		t.Fatalf("lab.json lacks fields:\n%s", data)
	}
	for i, a := range info.Arrays {
		if a.Name == "" || a.API == "" || a.Token == "" || a.CA == "" || a.Portal == "" || a.Target == "" ||
			info.URLs[i] != "iscsi://"+a.Portal+"/"+a.Target+"/0" {
			t.Fatalf("lab.json array %d lacks fields:\n%s", i, data)
		}
	}
	if info.Arrays[0].Target == info.Arrays[1].Target || info.Arrays[0].Portal == info.Arrays[1].Portal {
		t.Fatalf("both arrays have the same target or portal:\n%s", data)
	}
	var pods []struct {
		Name      string
		Arrays    []struct{ Name, Status string }
		Sequencer string
		Epoch     uint64
	}
	if err := json.Unmarshal([]byte(mustCLI(t, l, "pod", "list", "--json")), &pods); err != nil {
		t.Fatal(err)
	}
	if len(pods) != 1 || pods[0].Name != "pod1" || len(pods[0].Arrays) != 2 || pods[0].Sequencer != "array-a" || pods[0].Epoch == 0 {
		t.Fatalf("pod list --json: %+v", pods)
	}
	for _, a := range pods[0].Arrays {
		if a.Status != "online" {
			t.Fatalf("pod list --json: the lab pod is not in sync: %+v", pods)
		}
	}
	var arrays []struct {
		Name, Status, Peer string
		RTT                float64 `json:"rtt_ms"`
	}
	if err := json.Unmarshal([]byte(mustCLI(t, l, "array", "list", "--json")), &arrays); err != nil {
		t.Fatal(err)
	}
	if len(arrays) != 2 || arrays[0].Peer != "array-b" || arrays[1].Name != "array-b" || arrays[1].Status != "connected" || arrays[1].RTT <= 0 {
		t.Fatalf("array list --json: %+v", arrays)
	}
	out := mustCLI(t, l, "vol", "list")
	if !strings.Contains(out, "pod1::vol1") || !strings.Contains(out, "1G") {
		t.Fatalf("vol list:\n%s", out)
	}
}

// TestCHAP logs in with libiscsi using one-way and mutual CHAP set up with
// the CLI, and checks that a wrong secret is refused.
func TestCHAP(t *testing.T) {
	needTool(t, "iscsi-inq")
	const ini = "iqn.2026-11.io.metro:e2e-chap"
	l := startLab(t, lab.Options{Arrays: 1, Initiators: []string{testInitiator}})
	a := l.Info.Arrays[0]
	mustCLI(t, l, "host", "create", "--iqn", ini, "--chap-user", "alice", "--chap-secret", "alice-secret-123", "chap-host")
	mustCLI(t, l, "host", "connect", "--vol", "pod1::vol1", "chap-host")
	inq := func(url string) (string, error) {
		return runTool(t, 30*time.Second, "iscsi-inq", "-i", ini, url)
	}
	target := a.Portal + "/" + a.Target + "/0"
	if out, err := inq("iscsi://alice%alice-secret-123@" + target); err != nil || !strings.Contains(out, "METRO") {
		t.Fatalf("one-way CHAP login: %v\n%s", err, out)
	}
	if out, err := inq("iscsi://alice%wrong-secret-123@" + target); err == nil {
		t.Fatalf("login with a wrong CHAP secret succeeded:\n%s", out)
	}
	if out, err := inq("iscsi://" + target); err == nil {
		t.Fatalf("login without CHAP succeeded for a host that requires it:\n%s", out)
	}
	mustCLI(t, l, "host", "setattr", "--target-chap-user", "array", "--target-chap-secret", "array-secret-456", "chap-host")
	if out, err := inq("iscsi://alice%alice-secret-123@" + target + "?target_user=array&target_password=array-secret-456"); err != nil {
		t.Fatalf("mutual CHAP login: %v\n%s", err, out)
	}
	if out, err := inq("iscsi://alice%alice-secret-123@" + target + "?target_user=array&target_password=not-the-secret"); err == nil {
		t.Fatalf("mutual CHAP with a wrong target secret succeeded:\n%s", out)
	}
	// LUN masking: an initiator of another host sees no LUN 0.
	if out, err := runTool(t, 30*time.Second, "iscsi-inq", "-i", testInitiator2, "iscsi://"+target); err == nil && strings.Contains(out, "METRO") {
		t.Fatalf("an unknown initiator saw the volume:\n%s", out)
	}
}

// TestArrayCheckCLI runs `metro array check` against a lab array that a
// host wrote to: it waits for the end, reports no damage and exits 0;
// --last --json shows the same check.
func TestArrayCheckCLI(t *testing.T) {
	l := startLab(t, lab.Options{Arrays: 1, Initiators: []string{goodInitiator}, Size: 64 << 20})
	a := l.Info.Arrays[0]
	stop := make(chan struct{})
	good := startGoodHost(t, a.Portal, a.Target, stop)
	time.Sleep(time.Second) // some writes to check
	good.finish(t, stop, 10)
	out := mustCLI(t, l, "array", "check")
	if !strings.Contains(out, "0 damaged blocks, 0 other problems") {
		t.Fatalf("metro array check:\n%s", out)
	}
	var run struct {
		State        string
		CheckedBytes int64 `json:"checked_bytes"`
		Damaged      []any
	}
	if err := json.Unmarshal([]byte(mustCLI(t, l, "array", "check", "--last", "--json")), &run); err != nil {
		t.Fatal(err)
	}
	if run.State != "done" || run.CheckedBytes == 0 || run.Damaged == nil || len(run.Damaged) != 0 {
		t.Fatalf("metro array check --last --json: %+v", run)
	}
}
