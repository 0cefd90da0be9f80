package e2e

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/metro-storage/metro/internal/lab"
)

const qemuInitiator = "iqn.2026-11.io.metro:e2e-qemu"

// qemuOpts is the --image-opts string for the lab volume on array i.
func qemuOpts(l *lab.Lab, i int) string {
	a := l.Info.Arrays[i]
	return fmt.Sprintf("driver=iscsi,transport=tcp,portal=%s,target=%s,lun=%d,initiator-name=%s", a.Portal, a.Target, l.Info.LUN, qemuInitiator)
}

func sha256File(t *testing.T, path string, limit int64) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, io.LimitReader(f, limit)); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// TestQemuConvertRoundTrip copies a 1 GiB image of random content into a
// 2 GiB volume with qemu-img convert and back out; the first GiB must come
// back bit for bit.
func TestQemuConvertRoundTrip(t *testing.T) {
	needTool(t, "qemu-img")
	l := startLab(t, lab.Options{Arrays: 1, Initiators: []string{qemuInitiator}, Size: 2 << 30})
	dir := t.TempDir()
	src := filepath.Join(dir, "src.raw")
	f, err := os.Create(src)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.CopyN(f, rand.Reader, 1<<30); err != nil {
		t.Fatal(err)
	}
	f.Close()
	want := sha256File(t, src, 1<<30)

	start := time.Now()
	if out, err := runTool(t, 10*time.Minute, "qemu-img", "convert", "-n", "-f", "raw", "--target-image-opts", src, qemuOpts(l, 0)); err != nil {
		t.Fatalf("convert in: %v\n%s", err, out)
	}
	t.Logf("1 GiB in: %v", time.Since(start))
	back := filepath.Join(dir, "back.raw")
	start = time.Now()
	if out, err := runTool(t, 10*time.Minute, "qemu-img", "convert", "-O", "raw", "--image-opts", qemuOpts(l, 0), back); err != nil {
		t.Fatalf("convert out: %v\n%s", err, out)
	}
	t.Logf("2 GiB out: %v", time.Since(start))
	st, err := os.Stat(back)
	if err != nil || st.Size() != 2<<30 {
		t.Fatalf("image out: %v, size %d; want 2 GiB", err, st.Size())
	}
	if got := sha256File(t, back, 1<<30); got != want {
		t.Fatalf("sha256 of the first GiB: got %s, want %s", got, want)
	}
	// The second GiB was never written: it must read as zeros.
	zero := sha256.New()
	_, _ = io.CopyN(zero, zeroReader{}, 1<<30)
	f2, _ := os.Open(back)
	defer f2.Close()
	_, _ = f2.Seek(1<<30, io.SeekStart)
	h := sha256.New()
	_, _ = io.Copy(h, f2)
	if !strings.EqualFold(hex.EncodeToString(h.Sum(nil)), hex.EncodeToString(zero.Sum(nil))) {
		t.Fatal("the unwritten second GiB does not read as zeros")
	}
}

type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

// TestQemuIOPatternTwoSessions writes patterns with qemu-io in one session
// through one array of a stretched pair and reads them back, verified, in
// another session through the other array; then the other way round.
func TestQemuIOPatternTwoSessions(t *testing.T) {
	needTool(t, "qemu-io")
	l := startLab(t, lab.Options{Initiators: []string{qemuInitiator}, Size: 1 << 30})
	out, err := runTool(t, 2*time.Minute, "qemu-io", "--image-opts", qemuOpts(l, 1),
		"-c", "write -P 0x11 100M 1M", "-c", "write -P 0x22 200M 4096")
	if err != nil || strings.Contains(out, "error") || strings.Contains(out, "failed") {
		t.Fatalf("qemu-io write through array-b: %v\n%s", err, out)
	}
	out, err = runTool(t, 2*time.Minute, "qemu-io", "--image-opts", qemuOpts(l, 0),
		"-c", "read -P 0x11 100M 1M", "-c", "read -P 0x22 200M 4096")
	if err != nil || strings.Contains(out, "Pattern verification failed") || strings.Contains(out, "error") {
		t.Fatalf("qemu-io read through array-a of what array-b wrote: %v\n%s", err, out)
	}
	out, err = runTool(t, 2*time.Minute, "qemu-io", "--image-opts", qemuOpts(l, 0),
		"-c", "write -P 0xa5 0 1M", "-c", "write -P 0x3c 512 4096", "-c", "write -P 0x77 1023M 1M")
	if err != nil || strings.Contains(out, "error") || strings.Contains(out, "failed") {
		t.Fatalf("qemu-io write: %v\n%s", err, out)
	}
	out, err = runTool(t, 2*time.Minute, "qemu-io", "--image-opts", qemuOpts(l, 1),
		"-c", "read -P 0xa5 0 512", "-c", "read -P 0x3c 512 4096", "-c", "read -P 0xa5 4608 1043968",
		"-c", "read -P 0x77 1023M 1M", "-c", "read -P 0 1M 1M")
	if err != nil || strings.Contains(out, "Pattern verification failed") || strings.Contains(out, "error") {
		t.Fatalf("qemu-io read back: %v\n%s", err, out)
	}
	if n := strings.Count(out, "read "); n < 5 {
		t.Fatalf("qemu-io ran %d reads, want 5:\n%s", n, out)
	}
}
