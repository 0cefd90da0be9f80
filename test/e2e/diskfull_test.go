package e2e

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/metro-storage/metro/internal/initiator"
	"github.com/metro-storage/metro/internal/lab"
)

// mountTmpfs mounts a tmpfs of size bytes on dir for the test. Tests run as
// root (as CI does); a mount that is refused fails the test, it never
// skips it.
func mountTmpfs(t *testing.T, dir string, size int64) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+strconv.FormatInt(size, 10), "tmpfs", dir).CombinedOutput(); err != nil {
		t.Fatalf("mount a %d-byte tmpfs on %s (the test needs root, as CI has): %v\n%s", size, dir, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v\n%s", dir, err, out)
		}
	})
}

// isSpaceAllocFailed reports whether err is CHECK CONDITION with DATA
// PROTECT, SPACE ALLOCATION FAILED WRITE PROTECT (7/27/07), the
// thin-provisioning sense.
func isSpaceAllocFailed(err error) bool {
	var se *initiator.SCSIError
	if !errors.As(err, &se) {
		return false
	}
	key, asc, ascq := se.SenseKey()
	return key == 0x7 && asc == 0x27 && ascq == 0x07
}

// fillFile writes zeros into path until the filesystem has only keep
// bytes free (or refuses a write) and returns how much it wrote.
func fillFile(t *testing.T, path string, keep int64) int64 {
	t.Helper()
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zeros := make([]byte, 64<<10)
	var n int64
	for {
		var st syscall.Statfs_t
		if err := syscall.Statfs(filepath.Dir(path), &st); err != nil {
			t.Fatal(err)
		}
		if int64(st.Bavail)*st.Bsize <= keep {
			return n
		}
		k, err := f.Write(zeros)
		n += int64(k)
		if errors.Is(err, syscall.ENOSPC) {
			return n
		}
		if err != nil {
			t.Fatalf("fill %s: %v", path, err)
		}
	}
}

// TestFilesystemFills runs an array whose data directory is a 96 MiB
// tmpfs and fills it: writers get the thin-provisioning sense within
// seconds, before Pebble runs out of room (the array neither wedges nor
// stops); reads and UNMAP keep working; then another file takes the rest of
// the filesystem and even overwrites get the sense, while reads and UNMAP
// still work; once that file is deleted writes succeed again, and every
// acknowledged write reads back.
func TestFilesystemFills(t *testing.T) {
	dir := t.TempDir()
	data := filepath.Join(dir, "array-a", "data")
	mountTmpfs(t, data, 96<<20)
	l := startLab(t, lab.Options{Dir: dir, Arrays: 1, Initiators: []string{crashInitiator}, Size: 256 << 20})
	exited := l.Exits()

	const writers, piece = 4, 128 // blocks: 64 KiB writes
	const span = (256 << 20) / 512 / writers
	type written struct{ lba, seq uint64 }
	acked := make([][]written, writers)
	conns := make([]*initiator.Conn, writers)
	for w := range conns {
		conns[w] = dialArray(t, l, 0, crashInitiator)
		defer conns[w].Close()
	}
	content := func(lba, seq uint64) []byte {
		buf := make([]byte, 0, piece*512)
		for i := uint64(0); i < piece; i++ {
			buf = append(buf, blockPattern(lba+i, seq)...)
		}
		return buf
	}
	start := time.Now()
	var wg sync.WaitGroup
	errs := make([]error, writers)
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for lba := uint64(w) * span; lba < uint64(w+1)*span; lba += piece {
				seq := lba + 1
				if err := conns[w].Write(0, lba, content(lba, seq)); err != nil {
					errs[w] = err
					return
				}
				acked[w] = append(acked[w], written{lba, seq})
			}
		}()
	}
	wg.Wait()
	total := 0
	for w, err := range errs {
		if !isSpaceAllocFailed(err) {
			t.Fatalf("writer %d stopped with %v, want the thin-provisioning sense 7/27/07", w, err)
		}
		total += len(acked[w])
	}
	t.Logf("writers refused after %d acknowledged 64 KiB writes (%d MiB) in %v", total, total/16, time.Since(start).Round(time.Millisecond))
	if total < 160 { // 10 MiB
		t.Fatalf("only %d writes acknowledged on a 96 MiB filesystem", total)
	}
	c := conns[0]
	verify := func(when string, unmapped int) {
		t.Helper()
		for w, as := range acked {
			for _, a := range as {
				got, err := c.Read(0, a.lba, piece)
				if err != nil {
					t.Fatalf("%s: read of acknowledged LBA %d: %v", when, a.lba, err)
				}
				want := content(a.lba, a.seq)
				if w == unmapped {
					want = make([]byte, piece*512)
				}
				if !bytes.Equal(got, want) {
					t.Fatalf("%s: acknowledged write at LBA %d reads back wrong", when, a.lba)
				}
			}
		}
	}
	verify("array full", -1)
	// Overwrites of written blocks still fit while the filesystem has room.
	a := &acked[0][0]
	if err := c.Write(0, a.lba, content(a.lba, a.seq+1)); err != nil {
		t.Fatalf("overwrite on a full array: %v", err)
	}
	a.seq++
	a = &acked[0][1]

	// Another file takes the rest of the filesystem while the writers
	// overwrite what they wrote: every writer gets the sense within
	// seconds.
	filler := filepath.Join(data, "filler")
	stop := time.Now().Add(30 * time.Second)
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i = (i + 1) % len(acked[w]) {
				p := &acked[w][i]
				err := conns[w].Write(0, p.lba, content(p.lba, p.seq+1))
				if err != nil {
					errs[w] = err
					return
				}
				p.seq++
				if time.Now().After(stop) {
					errs[w] = errors.New("still writing 30 s after the filesystem filled up")
					return
				}
			}
		}()
	}
	// It leaves 1 MiB, under the store's floor: a file racing to take
	// every byte could also take the ballast the store frees for Pebble.
	t.Logf("other file took %d MiB", fillFile(t, filler, 1<<20)>>20)
	wg.Wait()
	for w, err := range errs {
		if !isSpaceAllocFailed(err) {
			t.Fatalf("overwriting writer %d stopped with %v, want the thin-provisioning sense 7/27/07", w, err)
		}
	}
	verify("filesystem full", -1)
	for _, w := range acked[3] {
		if err := c.Unmap(0, w.lba, piece); err != nil {
			t.Fatalf("unmap with the filesystem full: %v", err)
		}
	}
	verify("after unmapping", 3)

	// Space comes back: writes succeed again (once Pebble has caught up
	// with the compactions the full filesystem held back).
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	writeWhenSpace := func(what string, lba uint64, data []byte) {
		t.Helper()
		for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
			err := c.Write(0, lba, data)
			if err == nil {
				return
			}
			if !isSpaceAllocFailed(err) || time.Now().After(deadline) {
				t.Fatalf("%s after the space came back: %v", what, err)
			}
		}
	}
	writeWhenSpace("overwrite", a.lba, content(a.lba, a.seq+1))
	a.seq++
	w3 := acked[3][0]
	writeWhenSpace("write into unmapped space", w3.lba, content(w3.lba, 7))
	acked[3] = acked[3][1:]
	verify("space back", 3)
	got, err := c.Read(0, w3.lba, piece)
	if err != nil || !bytes.Equal(got, content(w3.lba, 7)) {
		t.Fatalf("write into unmapped space reads back wrong: %v", err)
	}

	select {
	case <-exited:
		t.Fatal("the array exited")
	default:
	}
	log, err := os.ReadFile(l.Info.Arrays[0].Log)
	if err != nil {
		t.Fatal(err)
	}
	n := strings.Count(string(log), "pebble flush failed") + strings.Count(string(log), "pebble compaction failed") +
		strings.Count(string(log), "pebble background error") + strings.Count(string(log), "pebble error")
	if n > 20 {
		t.Errorf("%d log lines of failed background work: a retry storm", n)
	}
	for _, line := range strings.Split(string(log), "\n") {
		if strings.Contains(line, "ballast") || strings.Contains(line, "nearly full") || strings.Contains(line, "free space back") {
			t.Logf("array log: %s", line)
		}
	}
	if strings.Contains(string(log), "store failed") {
		t.Errorf("the store failed:\n%s", tailString(string(log), 3000))
	}
}
