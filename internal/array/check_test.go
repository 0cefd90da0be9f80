package array

import (
	"strings"
	"testing"
	"time"

	"github.com/metro-storage/metro/internal/scsi"
)

// TestArrayCheck runs the check `metro array check` starts: it finishes
// in the background, names the damaged blocks by volume and LBA, and
// says "no damage" for an intact store.
func TestArrayCheck(t *testing.T) {
	h, inA, _ := newPairHosts(t)
	d := unitRun(0, 64, 3)
	if r, _ := inA.doPastUA(write16(0, d), d, 0); r.Status != scsi.StatusGood {
		t.Fatalf("write: %s", describe(r))
	}
	b := h.arrays[1]
	wait := func() (run checkResult) {
		t.Helper()
		h.waitFor("the check to end", 30*time.Second, func() (bool, string) {
			got, ok := b.LastCheck()
			if !ok {
				t.Fatal("LastCheck: no check after StartCheck")
			}
			run = checkResult{state: got.State, damaged: len(got.Damaged), problems: got.Problems}
			if len(got.Damaged) > 0 {
				run.first = got.Damaged[0].Volume
				run.lba, run.blocks = got.Damaged[0].LBA, got.Damaged[0].Blocks
			}
			return got.State != "running", got.State
		})
		return run
	}
	if _, ok := b.LastCheck(); ok {
		t.Fatal("LastCheck reports a check before any ran")
	}
	b.StartCheck()
	if run := wait(); run.state != "done" || run.damaged != 0 || len(run.problems) != 0 {
		t.Fatalf("check of an intact store: %+v", run)
	}
	h.damage(1, 21, 3)
	b.StartCheck()
	run := wait()
	if run.state != "done" || run.damaged != 1 || run.first != pairVolume || run.lba != 21 || run.blocks != 3 {
		t.Fatalf("check after damaging LBA 21+3 of %s: %+v", pairVolume, run)
	}
	if !strings.Contains(h.logs.String(), "store check done: damage found") {
		t.Error("the array did not log what the check found")
	}
}

type checkResult struct {
	state       string
	damaged     int
	problems    []string
	first       string
	lba, blocks uint64
}
