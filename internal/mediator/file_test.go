package mediator_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/metro-storage/metro/internal/fileperm"
	"github.com/metro-storage/metro/internal/mediator"
)

func openFile(t *testing.T, dir string) *mediator.FileBackend {
	t.Helper()
	b, err := mediator.OpenFile(dir, mediator.FileOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	return b
}

func electOK(t *testing.T, b mediator.Backend, pod string, epoch uint64, array string) (mediator.ElectResult, uint64) {
	t.Helper()
	res, gen, err := b.Elect(context.Background(), mediator.ElectRequest{Pod: pod, Epoch: epoch, Array: array})
	if err != nil {
		t.Fatal(err)
	}
	return res, gen
}

// TestFilePermissions: the data directory is 0700 (also one made wider
// before) and every file in it 0600.
func TestFilePermissions(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "med")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	b := openFile(t, dir)
	electOK(t, b, "p", 1, "a")
	fi, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != fileperm.Dir {
		t.Errorf("data dir is %v", fi.Mode().Perm())
	}
	open, err := fileperm.Open(dir)
	if err != nil || len(open) > 0 {
		t.Errorf("open to other users: %v %v", open, err)
	}
}

// TestFileLock: a data directory serves one process at a time; a second
// open, and reset-generation, are refused while it is open.
func TestFileLock(t *testing.T) {
	dir := t.TempDir()
	b := openFile(t, dir)
	if _, err := mediator.OpenFile(dir, mediator.FileOptions{}); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("second open: %v", err)
	}
	if _, _, err := mediator.ResetGeneration(dir, 10); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("reset-generation while open: %v", err)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	openFile(t, dir)
}

// TestFileDamaged: a state file that does not parse stops the mediator
// from starting, with what to do; it is never replaced by an empty state.
func TestFileDamaged(t *testing.T) {
	for name, content := range map[string]string{
		"truncated": `{"format":1,"mediator":"0123456789abcdef0123456789abcdef","generation":5,"po`,
		"format":    `{"format":7,"mediator":"0123456789abcdef0123456789abcdef","generation":5,"pods":{}}`,
		"record":    `{"format":1,"mediator":"0123456789abcdef0123456789abcdef","generation":5,"pods":{"p":{"epoch":0,"winner":"a"}}}`,
		"id":        `{"format":1,"mediator":"","generation":5,"pods":{}}`,
		"unknown":   `{"format":1,"mediator":"0123456789abcdef0123456789abcdef","generation":5,"pods":{},"x":1}`,
	} {
		dir := t.TempDir()
		path := filepath.Join(dir, mediator.StateFile)
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := mediator.OpenFile(dir, mediator.FileOptions{}); err == nil || !strings.Contains(err.Error(), "damaged") {
			t.Errorf("%s: %v", name, err)
		}
		if data, _ := os.ReadFile(path); string(data) != content {
			t.Errorf("%s: the damaged state was rewritten", name)
		}
	}
}

// TestFileWriteFailure: when the state cannot be written, the change is
// not answered, and neither is anything after it (fail-stop); a restart
// finds the last durable state.
func TestFileWriteFailure(t *testing.T) {
	dir := t.TempDir()
	b := openFile(t, dir)
	_, gen := electOK(t, b, "p", 1, "a")
	// The temporary file's name taken by a directory: the next write fails.
	if err := os.Mkdir(filepath.Join(dir, mediator.StateFile+".tmp"), 0o700); err != nil {
		t.Fatal(err)
	}
	if _, _, err := b.Elect(context.Background(), mediator.ElectRequest{Pod: "p", Epoch: 2, Array: "b"}); !errors.Is(err, mediator.ErrFailed) {
		t.Fatalf("elect with a failing disk: %v, want ErrFailed", err)
	}
	// A request whose answer would not need a write is refused too: the
	// state in memory holds the change that was not made durable.
	if _, _, err := b.Elect(context.Background(), mediator.ElectRequest{Pod: "p", Epoch: 1, Array: "a"}); !errors.Is(err, mediator.ErrFailed) {
		t.Fatalf("elect after the failure: %v, want ErrFailed", err)
	}
	if _, err := b.Info(context.Background()); !errors.Is(err, mediator.ErrFailed) {
		t.Fatalf("info after the failure: %v, want ErrFailed", err)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(dir, mediator.StateFile+".tmp")); err != nil {
		t.Fatal(err)
	}
	b = openFile(t, dir)
	if res, g := electOK(t, b, "p", 1, "b"); res.Won || res.Winner != "a" || res.Epoch != 2 || g != gen+mediator.StartStep {
		t.Fatalf("after restart: %+v at %d; want the state of generation %d", res, g, gen)
	}
}

// TestResetGeneration: reset-generation raises the generation of a
// stopped mediator above the number given, records it, keeps the records
// and the id; the next start adds StartStep.
func TestResetGeneration(t *testing.T) {
	dir := t.TempDir()
	b := openFile(t, dir)
	electOK(t, b, "p", 1, "a")
	in, _ := b.Info(context.Background())
	b.Close()

	before, after, err := mediator.ResetGeneration(dir, 40)
	if err != nil || before != in.Generation || after != 41 {
		t.Fatalf("reset: %d -> %d, %v; want %d -> 41", before, after, err, in.Generation)
	}
	b = openFile(t, dir)
	got, _ := b.Info(context.Background())
	if got.ID != in.ID || got.Generation != 41+mediator.StartStep || got.ResetGeneration != 41 || got.Pods != 1 {
		t.Fatalf("after reset: %+v", got)
	}
	if res, _ := electOK(t, b, "p", 1, "b"); res.Won {
		t.Fatalf("reset lost the records: %+v", res)
	}
	b.Close()
	// Already above: the generation stays, the reset is recorded.
	before, after, err = mediator.ResetGeneration(dir, 3)
	if err != nil || after != before {
		t.Fatalf("reset below: %d -> %d, %v", before, after, err)
	}
	if _, _, err := mediator.ResetGeneration(t.TempDir(), 3); err == nil || !strings.Contains(err.Error(), "no mediator state") {
		t.Fatalf("reset of an empty directory: %v", err)
	}
}
