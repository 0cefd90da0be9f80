package array

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/metro-storage/metro/internal/scsi"
)

// Damaged blocks and the pod's copies: a baseline or resync that meets
// blocks the sequencer's store knows damaged must complete, carry the
// damage over (the follower's copy of those blocks answers MEDIUM ERROR
// too, never zeros or stale data) and say so in the log.

// damage records blocks [lba, lba+blocks) of the pod's volume on array i
// as damaged, the store's representation of blocks that fail their
// checksums (what a partial write over a damaged chunk leaves).
func (h *pairHarness) damage(i int, lba, blocks uint64) {
	h.t.Helper()
	a := h.arrays[i]
	vol := a.cat.View().Volumes[pairVolume]
	b := a.store.NewBatch()
	if err := b.MarkDamaged(a.store.Volume(vol.DataID), int64(lba*512), int64(blocks*512)); err != nil {
		h.t.Fatal(err)
	}
	if err := b.Commit(); err != nil {
		h.t.Fatalf("%s: damage LBA %d+%d: %v", a.cfg.Name, lba, blocks, err)
	}
}

// salvage reads blocks [from, to) of the pod's volume from array i's
// store, past the SCSI layer: the good data (zeros for damaged blocks)
// and the damaged runs as "lba+blocks".
func (h *pairHarness) salvage(i int, from, to uint64) ([]byte, []string) {
	h.t.Helper()
	a := h.arrays[i]
	vol := a.cat.View().Volumes[pairVolume]
	buf := make([]byte, (to-from)*512)
	bad, err := a.store.Volume(vol.DataID).ReadSalvage(context.Background(), buf, int64(from*512))
	if err != nil {
		h.t.Fatalf("%s: read the store: %v", a.cfg.Name, err)
	}
	var runs []string
	for _, d := range bad {
		runs = append(runs, fmt.Sprintf("%d+%d", d.Offset/512, d.Length/512))
	}
	return buf, runs
}

// checkDamageCopied checks that blocks [from, to) are the same on both
// arrays' stores, damaged ones included (want lists them as
// "lba+blocks"), that every damaged block reads as MEDIUM ERROR with its
// LBA through either array, and that the log has an error line naming
// the pod, the volume and the first LBA of each damaged run.
func (h *pairHarness) checkDamageCopied(from, to uint64, want []string) {
	t := h.t
	t.Helper()
	da, badA := h.salvage(0, from, to)
	db, badB := h.salvage(1, from, to)
	if fmt.Sprint(badA) != fmt.Sprint(want) {
		t.Fatalf("%s: damaged blocks %v, the test damaged %v", h.arrays[0].cfg.Name, badA, want)
	}
	if fmt.Sprint(badB) != fmt.Sprint(want) {
		t.Fatalf("%s (the copy): damaged blocks %v, want %v as on %s", h.arrays[1].cfg.Name, badB, want, h.arrays[0].cfg.Name)
	}
	if !bytes.Equal(da, db) {
		t.Fatal("the good blocks of the copies differ")
	}
	for i, a := range h.arrays {
		in := newInitiator(a, pairIQN, 0x700+uint64(i))
		h.ready(in)
		for _, run := range want {
			var lba, n uint64
			fmt.Sscanf(run, "%d+%d", &lba, &n)
			for _, at := range []uint64{lba, lba + n - 1} {
				r := in.do(read16(at, 1), nil, 512)
				s, ok := senseOf(r)
				if !ok || s.Key != scsi.KeyMediumError || !s.InfoValid || uint64(s.Info) != at {
					t.Fatalf("read of damaged LBA %d through %s: %s, want MEDIUM ERROR at that LBA", at, a.cfg.Name, describe(r))
				}
			}
		}
	}
	logs := h.logs.String()
	for _, run := range want {
		lba := run[:strings.IndexByte(run, '+')]
		found := false
		for _, line := range strings.Split(logs, "\n") {
			if strings.Contains(line, "level=ERROR") && strings.Contains(line, "array=array-a") &&
				strings.Contains(line, "pod="+pairPod) && strings.Contains(line, "volume="+pairVolume) &&
				strings.Contains(line, " lba="+lba+" ") && strings.Contains(line, "rewrite them") {
				found = true
			}
		}
		if !found {
			t.Errorf("no error line on the sequencer naming pod %s, volume %s and LBA %s", pairPod, pairVolume, lba)
		}
	}
}

// TestPairBaselineCarriesDamage stretches a pod whose volume has damaged
// blocks on its array: the baseline copy must complete (before, it
// stopped at the first piece it could not read and the pod stayed
// resyncing for good) and leave the same blocks damaged on the new copy.
func TestPairBaselineCarriesDamage(t *testing.T) {
	h := newPairUnstretched(t)
	a := h.arrays[0]
	in := newInitiator(a, pairIQN, 0x100)
	h.ready(in)
	const blocks = 6 << 20 / 512 // several 1 MiB pieces
	d := unitRun(0, blocks, 1)
	for lba := uint64(0); lba < blocks; lba += 4096 { // 2 MiB a command
		if r, _ := in.doPastUA(write16(lba, d[lba*512:(lba+4096)*512]), d[lba*512:(lba+4096)*512], 0); r.Status != scsi.StatusGood {
			t.Fatalf("write: %s", describe(r))
		}
	}
	// One block inside a chunk, two whole chunks, a run across a piece
	// boundary (1 MiB), and the last block written.
	h.damage(0, 9, 1)
	h.damage(0, 1024, 16)
	h.damage(0, 2046, 4)
	h.damage(0, blocks-1, 1)
	want := []string{"9+1", "1024+16", "2046+4", fmt.Sprintf("%d+1", blocks-1)}
	if err := a.StretchPod(h.ctx, pairPod, h.arrays[1].cfg.Name); err != nil {
		t.Fatalf("stretch: %v", err)
	}
	h.waitInSync(30 * time.Second)
	h.checkDamageCopied(0, blocks, want)
}

// TestPairResyncCarriesDamage damages blocks the sequencer wrote while it
// served alone: the resync (which copies the changed regions) must
// complete and carry the damage over. Blocks damaged on the follower that
// the resync rewrites are mended.
func TestPairResyncCarriesDamage(t *testing.T) {
	h := newPair(t)
	a := h.arrays[0]
	in := newInitiator(a, pairIQN, 0x100)
	h.ready(in)
	h.split()
	const base, blocks = 8192, 4096 // 2 MiB from 4 MiB on: two regions
	d := unitRun(base, base+blocks, 2)
	if r, _ := in.doPastUA(write16(base, d), d, 0); r.Status != scsi.StatusGood {
		t.Fatalf("write while alone: %s", describe(r))
	}
	h.damage(0, base+3, 2)
	h.damage(0, base+2048, 8)
	// The follower's own damage in a region the resync copies.
	h.damage(1, base+100, 4)
	h.proxy.Partition(false)
	h.waitInSync(30 * time.Second)
	h.checkDamageCopied(base, base+blocks, []string{fmt.Sprint(base+3, "+2"), fmt.Sprint(base+2048, "+8")})
	if !strings.Contains(h.logs.String(), "copy resumed") {
		t.Error("the resync was not a resumed copy of the changed regions: the test did not exercise it")
	}
}

// A full disk and the pod's copies: a write that one array cannot store
// for lack of space must leave the copies identical and say so to the
// host, and the array that is full is the one that pays.

// newPairHosts is newPair with a host ready on each array.
func newPairHosts(t *testing.T) (h *pairHarness, inA, inB *initiator) {
	h = newPair(t)
	inA, inB = newInitiator(h.arrays[0], pairIQN, 0x100), newInitiator(h.arrays[1], pairIQN, 0x200)
	h.ready(inA, inB)
	return h, inA, inB
}

// unitRun returns the data of the 4 KiB units of blocks [from, to), each
// holding value v (unitData).
func unitRun(from, to, v uint64) []byte {
	d := make([]byte, 0, (to-from)*512)
	for lba := from; lba < to; lba += 8 {
		d = append(d, unitData(lba, v)...)
	}
	return d
}

// isSpaceAllocFailed reports whether r is SPACE ALLOCATION FAILED.
func isSpaceAllocFailed(r *scsi.Result) bool {
	s, ok := senseOf(r)
	want := scsi.SenseSpaceAllocFailed()
	return ok && s.Key == want.Key && s.ASC == want.ASC && s.ASCQ == want.ASCQ
}

// fill sets array i's capacity to what it uses now (0 is unlimited: at
// least a byte): a write that needs a new chunk fails there with
// ErrNoSpace.
func (h *pairHarness) fill(i int) {
	used, _ := h.arrays[i].store.Usage()
	h.arrays[i].store.SetCapacity(max(used, 1))
}

// TestPairSequencerFullFailsBeforeMirror fills the sequencer's disk and
// writes new blocks through either array: the host gets SPACE
// ALLOCATION FAILED, and the follower must not hold the write either
// (before, the sequencer mirrored it first, the follower stored it, and
// the sequencer then suspended the follower for the sequencer's own full
// disk). Overwrites go on, and so does the pod, in sync.
func TestPairSequencerFullFailsBeforeMirror(t *testing.T) {
	h, inA, inB := newPairHosts(t)
	a := h.arrays[0]
	const old = 0
	if r, _ := inA.doPastUA(write16(old, unitData(old, 1)), unitData(old, 1), 0); r.Status != scsi.StatusGood {
		t.Fatalf("write: %s", describe(r))
	}
	h.fill(0)
	for i, in := range []*initiator{inA, inB} {
		lba := uint64(4096 + 8*i)
		d := unitData(lba, 2)
		if r, _ := in.doPastUA(write16(lba, d), d, 0); !isSpaceAllocFailed(r) {
			t.Fatalf("write of new blocks through %s with the sequencer full: %s, want SPACE ALLOCATION FAILED", in.arr.cfg.Name, describe(r))
		}
		for j := range h.arrays {
			if v := h.localUnit(j, lba); v != 0 {
				t.Fatalf("write through %s refused for lack of space on %s, yet %s holds it (value %#x)", in.arr.cfg.Name, a.cfg.Name, h.arrays[j].cfg.Name, v)
			}
		}
	}
	if strings.Contains(h.logs.String(), "local write failed after the peer's succeeded") {
		t.Fatal("the sequencer suspended the follower for its own full disk")
	}
	for _, in := range []*initiator{inA, inB} {
		d := unitData(old, 3)
		if r, _ := in.doPastUA(write16(old, d), d, 0); r.Status != scsi.StatusGood {
			t.Fatalf("overwrite through %s with the sequencer full: %s", in.arr.cfg.Name, describe(r))
		}
	}
	if ok, why := h.inSync(); !ok {
		t.Fatalf("the pod left sync: %s", why)
	}
	a.store.SetCapacity(0)
	d := unitData(4096, 4)
	if r, _ := inB.doPastUA(write16(4096, d), d, 0); r.Status != scsi.StatusGood {
		t.Fatalf("write after space came back: %s", describe(r))
	}
	compareCopies(t, inA, inB, 0, 8192)
}

// TestPairFollowerFullIsSuspended fills the follower's disk and writes
// new blocks through the sequencer: DESIGN.md wants a write acknowledged
// only when it is durable on every array serving the pod, and a follower
// that cannot take writes suspended and resynced. So the host gets GOOD
// (from the sequencer serving alone), the follower stops serving (a read
// there gets NOT READY, never the old data), and once it has room again
// the pod returns to sync with identical copies. Meanwhile the resync
// waits for room, with an error in the log and the pod's status, keeping
// the link and the epoch (before, the follower refused each copied piece,
// so the sequencer ended the link session and started a resync at a new
// epoch again and again: some 60 a second).
func TestPairFollowerFullIsSuspended(t *testing.T) {
	h, inA, inB := newPairHosts(t)
	a, b := h.arrays[0], h.arrays[1]
	h.fill(1)
	const lba = 4096
	d := unitData(lba, 5)
	if r, _ := inA.doPastUA(write16(lba, d), d, 0); r.Status != scsi.StatusGood {
		t.Fatalf("write through %s with the follower full: %s, want GOOD from the sequencer alone", a.cfg.Name, describe(r))
	}
	if v := h.localUnit(0, lba); v != 5 {
		t.Fatalf("%s holds value %#x, want the acknowledged 5", a.cfg.Name, v)
	}
	r, _ := inB.doPastUA(read16(lba, 8), nil, 4096)
	if s, ok := senseOf(r); !ok || s.Key != scsi.KeyNotReady {
		t.Fatalf("read through the full follower after the write was acknowledged: %s, want NOT READY", describe(r))
	}
	const waiting = "the peer has no room for the copy"
	h.waitFor("the resync to wait for room on the follower", 30*time.Second, func() (bool, string) {
		return strings.Count(h.logs.String(), waiting) >= 1, h.podStatus(0)
	})
	sessions := func() int { return strings.Count(h.logs.String(), `msg="link session established" array=array-a`) }
	s0, e0 := sessions(), a.cat.View().Pods[pairPod].Epoch
	h.waitFor("the resync to try again", 30*time.Second, func() (bool, string) {
		return strings.Count(h.logs.String(), waiting) >= 4, h.podStatus(0)
	})
	if s, e := sessions(), a.cat.View().Pods[pairPod].Epoch; s != s0 || e != e0 {
		t.Fatalf("while the resync waited for room: %d new link sessions, epoch %d to %d", s-s0, e0, e)
	}
	if st := a.repl.Status(a.cat.View().Pods[pairPod]); st == nil || !strings.Contains(st.Error, "no room") {
		t.Fatalf("the pod's status does not say why the resync waits: %+v", st)
	}
	b.store.SetCapacity(0)
	h.waitInSync(30 * time.Second)
	compareCopies(t, inA, inB, 0, 8192)
}

// TestPairFollowerFullHostWrites is TestPairFollowerFullIsSuspended
// with a host writing new blocks through the sequencer while the
// follower's resync waits for room: every write is GOOD (the follower,
// receiving a copy, serves nothing), and the link and the epoch stay
// (before, the follower refused each mirrored write it had no room for,
// and the sequencer ended the link session, for every pod, and began a
// resync at a new epoch: 2 new sessions for these 50 writes, 15 when
// they came 20 ms apart). Once the follower has room the pod returns to
// sync and the copies are identical: the writes the follower could not
// store are copied again before the grant.
func TestPairFollowerFullHostWrites(t *testing.T) {
	h, inA, inB := newPairHosts(t)
	a, b := h.arrays[0], h.arrays[1]
	h.fill(1)
	d := unitData(4096, 5)
	if r, _ := inA.doPastUA(write16(4096, d), d, 0); r.Status != scsi.StatusGood {
		t.Fatalf("write through %s with the follower full: %s", a.cfg.Name, describe(r))
	}
	h.waitFor("the resync to wait for room on the follower", 30*time.Second, func() (bool, string) {
		return strings.Contains(h.logs.String(), "the peer has no room for the copy"), h.podStatus(0)
	})
	sessions := func() int { return strings.Count(h.logs.String(), `msg="link session established" array=array-a`) }
	s0, e0 := sessions(), a.cat.View().Pods[pairPod].Epoch
	const writes = 50
	for i := range uint64(writes) {
		lba := 8192 + 8*i
		d := unitData(lba, 6)
		if r, _ := inA.doPastUA(write16(lba, d), d, 0); r.Status != scsi.StatusGood {
			t.Fatalf("write %d through %s while the follower waits for room: %s", i, a.cfg.Name, describe(r))
		}
	}
	if s, e := sessions(), a.cat.View().Pods[pairPod].Epoch; s != s0 || e != e0 {
		t.Fatalf("%d writes while the resync waited for room: %d new link sessions, epoch %d to %d", writes, s-s0, e0, e)
	}
	b.store.SetCapacity(0)
	h.waitInSync(30 * time.Second)
	compareCopies(t, inA, inB, 0, 8192+8*writes)
	if !strings.Contains(h.logs.String(), "sending again the writes the peer had no room for") {
		t.Error("the copy did not send the writes the follower had no room for: the test did not exercise it")
	}
}

// TestPairRepairFromPeer damages blocks on one array of an in-sync pod:
// a host read through that array gets the other array's good copy, not
// MEDIUM ERROR, and the damaged copy is rewritten with it through the
// ordered write path (at once for the follower, in the background for
// the sequencer). Blocks damaged on both arrays stay a MEDIUM ERROR.
func TestPairRepairFromPeer(t *testing.T) {
	h, inA, inB := newPairHosts(t)
	b := h.arrays[1]
	const blocks = 64
	d := unitRun(0, blocks, 7)
	if r, _ := inA.doPastUA(write16(0, d), d, 0); r.Status != scsi.StatusGood {
		t.Fatalf("write: %s", describe(r))
	}
	readBack := func(in *initiator, lba uint64) {
		t.Helper()
		r, _ := in.doPastUA(read16(lba, 8), nil, 4096)
		if r.Status != scsi.StatusGood || !bytes.Equal(r.Data, d[lba*512:(lba+8)*512]) {
			t.Fatalf("read of LBA %d+8 through %s with blocks damaged there: %s", lba, in.arr.cfg.Name, describe(r))
		}
	}
	// Damaged on the follower: repaired before the read is answered.
	h.damage(1, 17, 2)
	readBack(inB, 16)
	if _, bad := h.salvage(1, 0, blocks); len(bad) != 0 {
		t.Fatalf("%s still has damaged blocks %v after the read repaired them", b.cfg.Name, bad)
	}
	// Damaged on the sequencer: answered from the follower's copy,
	// repaired in the background.
	h.damage(0, 9, 3)
	readBack(inA, 8)
	h.waitFor("the sequencer's copy to be repaired", 30*time.Second, func() (bool, string) {
		_, bad := h.salvage(0, 0, blocks)
		return len(bad) == 0, fmt.Sprintf("damaged: %v", bad)
	})
	compareCopies(t, inA, inB, 0, 2048)
	if n := strings.Count(h.logs.String(), "damaged blocks repaired from the other array's copy"); n != 2 {
		t.Errorf("%d repairs logged, want 2", n)
	}
	// Damaged on both: a MEDIUM ERROR through either array.
	h.damage(0, 33, 1)
	h.damage(1, 33, 1)
	readsMediumError(t, []*initiator{inA, inB}, 32, 33)
}

// TestPairRepairDamageOnEach damages different blocks of one range on
// each array: every block still has a good copy, so a read of the range
// through either array is GOOD with the data written (before, the
// sequencer gave up as soon as its own copy had a damaged block, and the
// follower's copy any: MEDIUM ERROR through both arrays), and both
// copies end mended; so too for a read of several repair pieces. A
// block damaged on both arrays stays a MEDIUM ERROR
// at its own LBA, while the other blocks of its range are repaired.
func TestPairRepairDamageOnEach(t *testing.T) {
	h, inA, inB := newPairHosts(t)
	const blocks = 4096
	d := unitRun(0, 64, 9)
	if r, _ := inA.doPastUA(write16(0, d), d, 0); r.Status != scsi.StatusGood {
		t.Fatalf("write: %s", describe(r))
	}
	// damagedLeft waits until the arrays' damaged blocks are want (the
	// sequencer's, then the follower's).
	damagedLeft := func(what, want string) {
		t.Helper()
		h.waitFor(what, 30*time.Second, func() (bool, string) {
			_, badA := h.salvage(0, 0, blocks)
			_, badB := h.salvage(1, 0, blocks)
			return fmt.Sprint(badA, badB) == want, fmt.Sprintf("damaged: %v on %s, %v on %s", badA, h.arrays[0].cfg.Name, badB, h.arrays[1].cfg.Name)
		})
	}
	for _, in := range []*initiator{inB, inA} {
		// One unit: block 1 on the sequencer, block 5 on the follower;
		// the next: its first half on one, its second on the other.
		h.damage(0, 1, 1)
		h.damage(1, 5, 1)
		h.damage(0, 8, 4)
		h.damage(1, 12, 4)
		r, _ := in.doPastUA(read16(0, 16), nil, 16*512)
		if r.Status != scsi.StatusGood || !bytes.Equal(r.Data, d[:16*512]) {
			t.Fatalf("read through %s of blocks damaged on one array or the other: %s", in.arr.cfg.Name, describe(r))
		}
		damagedLeft("both copies to be mended after a read through "+in.arr.cfg.Name, "[] []")
	}
	// A read of several repair pieces (128 KiB each), damage across the
	// boundary of two.
	const big, bigN = 1024, 1024
	db := unitRun(big, big+bigN, 10)
	if r, _ := inB.doPastUA(write16(big, db), db, 0); r.Status != scsi.StatusGood {
		t.Fatalf("write: %s", describe(r))
	}
	h.damage(1, big+255, 3)
	h.damage(0, big+600, 1)
	h.damage(0, big+bigN-1, 1)
	for _, in := range []*initiator{inB, inA} {
		r, _ := in.doPastUA(read16(big, bigN), nil, bigN*512)
		if r.Status != scsi.StatusGood || !bytes.Equal(r.Data, db) {
			t.Fatalf("read of %d blocks through %s with blocks damaged in three pieces: %s", bigN, in.arr.cfg.Name, describe(r))
		}
	}
	damagedLeft("both copies to be mended after a long read through each array", "[] []")
	compareCopies(t, inA, inB, 0, 4096)

	// Block 17 on both, block 19 on the sequencer, block 21 on the
	// follower: the read fails at LBA 17 through either array, and
	// blocks 19 and 21 are mended all the same.
	h.damage(0, 17, 1)
	h.damage(1, 17, 1)
	h.damage(0, 19, 1)
	h.damage(1, 21, 1)
	readsMediumError(t, []*initiator{inB, inA}, 16, 17)
	damagedLeft("blocks 19 and 21 to be mended", "[17+1] [17+1]")
}

// readsMediumError checks that a read of the unit at lba, whose block at
// is damaged on both arrays, is a MEDIUM ERROR at that LBA through each
// of ins.
func readsMediumError(t *testing.T, ins []*initiator, lba, at uint64) {
	t.Helper()
	for _, in := range ins {
		r, _ := in.doPastUA(read16(lba, 8), nil, 4096)
		if s, ok := senseOf(r); !ok || s.Key != scsi.KeyMediumError || uint64(s.Info) != at {
			t.Fatalf("read of LBA %d+8 through %s, with LBA %d damaged on both arrays: %s, want MEDIUM ERROR at LBA %d", lba, in.arr.cfg.Name, at, describe(r), at)
		}
	}
}

// doPastNotReady runs a command as a host does through a path that may
// be transitioning: again after unit attentions, and again after NOT
// READY for up to 10 seconds (a follower whose read lease lapsed under
// load stops serving for a moment, and says so), counting the retries.
// Any other result, MEDIUM ERROR included, is returned at once.
func doPastNotReady(in *initiator, cdb, out []byte, dataIn uint32, retries *atomic.Int64) *scsi.Result {
	deadline := time.Now().Add(10 * time.Second)
	for {
		r, _ := in.doPastUA(cdb, out, dataIn)
		if s, ok := senseOf(r); !ok || s.Key != scsi.KeyNotReady || time.Now().After(deadline) {
			return r
		}
		retries.Add(1)
		time.Sleep(10 * time.Millisecond)
	}
}

// TestPairRepairRacesWrites damages one array's copy of a unit again and
// again while a host writes new values to it and another reads it through
// both arrays: every read is GOOD and returns a value no older than the
// last write acknowledged before it began (a repair never writes back an
// old value over a newer write), and the copies end identical. A host
// retries a command that gets NOT READY (doPastNotReady): a follower
// stops serving for a moment when its lease lapses under load.
func TestPairRepairRacesWrites(t *testing.T) {
	h := newPair(t)
	a, b := h.arrays[0], h.arrays[1]
	w := [2]*initiator{newInitiator(a, pairIQN, 0x100), newInitiator(b, pairIQN, 0x200)}
	rd := [2]*initiator{newInitiator(a, pairIQN, 0x300), newInitiator(b, pairIQN, 0x400)}
	h.ready(w[0], w[1], rd[0], rd[1])
	const unit = 64
	var acked, started atomic.Uint64
	var retries atomic.Int64
	write := func(v uint64) {
		started.Store(v)
		d := unitData(unit, v)
		if r := doPastNotReady(w[v%2], write16(unit, d), d, 0, &retries); r.Status != scsi.StatusGood {
			t.Errorf("write of value %d through %s: %s", v, w[v%2].arr.cfg.Name, describe(r))
		}
		acked.Store(v)
	}
	write(1)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var writes, reads atomic.Int64
	wg.Go(func() {
		for v := uint64(2); ; v++ {
			select {
			case <-stop:
				return
			default:
			}
			write(v)
			writes.Add(1)
		}
	})
	wg.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			low := acked.Load()
			r := doPastNotReady(rd[i%2], read16(unit, 8), nil, 4096, &retries)
			high := started.Load()
			if r.Status != scsi.StatusGood {
				t.Errorf("read through %s: %s", rd[i%2].arr.cfg.Name, describe(r))
				return
			}
			if v := unitValue(unit, r.Data); v == tornValue || v < low || v > high {
				t.Errorf("read through %s returned value %#x, want one in [%d, %d]", rd[i%2].arr.cfg.Name, v, low, high)
				return
			}
			reads.Add(1)
		}
	})
	// Damage one copy at a time: the next damage waits until a read or
	// a write has mended the last.
	const rounds = 40
	for i := 0; i < rounds && !t.Failed(); i++ {
		arr := i % 2
		first := uint64(i % 8)
		h.damage(arr, unit+first, min(1+uint64(i%3), 8-first))
		h.waitFor("the damage to be mended", 30*time.Second, func() (bool, string) {
			_, bad := h.salvage(arr, unit, unit+8)
			return len(bad) == 0, fmt.Sprintf("%s: damaged %v", h.arrays[arr].cfg.Name, bad)
		})
	}
	close(stop)
	wg.Wait()
	repaired := strings.Count(h.logs.String(), "damaged blocks repaired from the other array's copy")
	t.Logf("%d damage rounds, %d writes, %d reads, %d repairs, %d commands retried after NOT READY", rounds, writes.Load(), reads.Load(), repaired, retries.Load())
	if writes.Load() < rounds || reads.Load() < rounds || repaired < rounds/8 {
		t.Fatalf("too little to test anything: %d writes, %d reads, %d repairs over %d damage rounds", writes.Load(), reads.Load(), repaired, rounds)
	}
	compareCopies(t, w[0], w[1], 0, 2048)
}
