package array

import (
	"bytes"
	"context"
	"encoding/binary"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/metro-storage/metro/internal/scsi"
)

// prKeyChange is PERSISTENT RESERVE OUT REGISTER by the holder of key
// old, changing it to key next.
func prKeyChange(old, next uint64) (cdb, param []byte) {
	cdb, param = prRegister(next, false)
	binary.BigEndian.PutUint64(param[0:8], old)
	return cdb, param
}

// abortedOnSequencer runs cdb through in, an I_T nexus of the sequencer,
// with the link cut just before: the sequencer makes the change and
// shares it with the follower, which never answers; the host gives up
// and aborts the task (ABORT TASK) while the share is unconfirmed. It
// returns what the host got for the command.
func (h *pairHarness) abortedOnSequencer(in *initiator, cdb, param []byte) *scsi.Result {
	h.t.Helper()
	t := h.t.(*testing.T)
	in.drainUAs()
	h.proxy.Partition(true)
	h.log.Info("link cut; a reservation change through the sequencer")
	in.tag++
	tag := in.tag
	res := make(chan *scsi.Result, 1)
	go func() {
		res <- in.arr.target.Execute(context.Background(), &scsi.Command{Nexus: in.nexus, LUN: 0, Tag: tag, CDB: cdb, DataOut: param})
	}()
	var r *scsi.Result
	bounded(t, "the aborted reservation change", 60*time.Second, func() {
		for {
			if in.arr.target.TaskManagement(context.Background(), in.nexus, scsi.AbortTask, 0, tag) == scsi.TMFComplete {
				r = <-res
				return
			}
			select {
			case r = <-res:
				return
			case <-time.After(time.Millisecond):
			}
		}
	})
	if r.Status == scsi.StatusGood && !r.Aborted {
		t.Fatalf("the change through the sequencer was GOOD before its abort: the test did not abort it")
	}
	return r
}

// TestPairAbortedSequencerPROutRetried (issue 10, leftovers): a
// PERSISTENT RESERVE OUT sent to the sequencer itself (not forwarded)
// changes the reservations there, and the link fails before the
// follower confirms the change; the host times out and aborts the task
// while the sequencer waits for the pod to be decided (its share may
// have reached the follower: scsi.ErrMayBeShared). The sequencer keeps
// the pod, so the change stands, although the host saw the command fail
// (aborted). The host's identical retry on the same I_T nexus must be
// GOOD, as the first run would have been, not RESERVATION CONFLICT
// against its own change: a REGISTER that changed the key (the old key
// is gone), then a PREEMPT (the preempted key is gone). Before the fix
// both retries were RESERVATION CONFLICT.
func TestPairAbortedSequencerPROutRetried(t *testing.T) {
	h := newPair(t)
	inA, inB := h.hostPorts()
	const keyA, keyA2, keyB = 0xaaaa, 0xa2a2, 0xbbbb
	cdb, param := prRegister(keyA, false)
	prMust(t, inA, "REGISTER through the sequencer", cdb, param)
	cdb, param = prRegister(keyB, false)
	prMust(t, inB, "REGISTER through the follower", cdb, param)
	holds := func(want ...uint64) bool {
		var keys []uint64
		for _, r := range h.lu(0).Reservations().Registrations {
			keys = append(keys, r.Key)
		}
		slices.Sort(keys)
		slices.Sort(want)
		return slices.Equal(keys, want)
	}
	for _, tc := range []struct {
		what       string
		cdb, param []byte
		after      []uint64
	}{
		{"a REGISTER that changes the key", nil, nil, []uint64{keyA2, keyB}},
		{"a PREEMPT", nil, nil, []uint64{keyA2}},
	} {
		switch tc.what {
		case "a PREEMPT":
			tc.cdb, tc.param = prPreempt(keyA2, keyB, prTypeWERO)
		default:
			tc.cdb, tc.param = prKeyChange(keyA, keyA2)
		}
		mayBe := strings.Count(h.logs.String(), "may hold the reservation change")
		r := h.abortedOnSequencer(inA, tc.cdb, tc.param)
		h.waitAlone(0)
		if !holds(tc.after...) {
			t.Fatalf("%s through the sequencer, aborted: the sequencer, which kept the pod, holds %+v, want keys %x: the test did not make a change that stands", tc.what, h.lu(0).Reservations().Registrations, tc.after)
		}
		shared := strings.Count(h.logs.String(), "may hold the reservation change") > mayBe
		t.Logf("%s through the sequencer: the host got %s; the change stands on the sequencer (unconfirmed share: %v)", tc.what, describe(r), shared)
		if rr, _ := inA.doPastUA(tc.cdb, tc.param, 0); rr.Status != scsi.StatusGood {
			t.Errorf("the retry through %s of %s that the host saw fail but that stands: %s, want GOOD", inA.arr.cfg.Name, tc.what, describe(rr))
		}
		h.proxy.Partition(false)
		h.log.Info("link healed")
		h.waitInSync(60 * time.Second)
		for _, in := range []*initiator{inA, inB} {
			if got := keysThrough(t, in); !slices.Equal(got, tc.after) {
				t.Fatalf("keys through %s once in sync again: %x, want %x", in.arr.cfg.Name, got, tc.after)
			}
		}
	}
}

// TestPairAbortedSequencerCAWRetried (issue 10, leftovers): the COMPARE
// AND WRITE of TestPairAbortedSequencerPROutRetried: sent to the
// sequencer itself, its write is made there and mirrored, the link fails
// before the follower confirms it, and the host aborts the task while
// the sequencer waits for the pod to be decided. The sequencer keeps the
// pod, with the write. The host's identical retry through it must be
// GOOD, not a MISCOMPARE against its own write (an ESXi ATS heartbeat
// that miscompares declares the datastore lost), and both copies hold
// the write once the pair is in sync again.
func TestPairAbortedSequencerCAWRetried(t *testing.T) {
	h := newPair(t)
	inA, inB := h.hostPorts()
	const lba = 64
	if r, ok := writeValue(inA, lba, 1); !ok {
		t.Fatalf("initial write: %s", describe(r))
	}
	caw := cawBlock(lba, 1, 2)
	r := h.abortedOnSequencer(inA, compareAndWrite16(lba, 1), caw)
	h.waitAlone(0)
	if !bytes.Equal(h.localBlock(0, lba), caw[512:]) {
		t.Fatal("the aborted COMPARE AND WRITE did not write the sequencer's copy: the test did not make a write that stands")
	}
	t.Logf("COMPARE AND WRITE through the sequencer: the host got %s; its write stands on the sequencer", describe(r))
	if rr, _ := inA.doPastUA(compareAndWrite16(lba, 1), caw, 0); rr.Status != scsi.StatusGood {
		t.Errorf("the retry through %s of a COMPARE AND WRITE that the host saw fail but whose write stands: %s, want GOOD", inA.arr.cfg.Name, describe(rr))
	}
	h.proxy.Partition(false)
	h.log.Info("link healed")
	h.waitInSync(60 * time.Second)
	for i := range h.arrays {
		if !bytes.Equal(h.localBlock(i, lba), caw[512:]) {
			t.Errorf("%s's copy of the block once in sync again does not hold the write", h.arrays[i].cfg.Name)
		}
	}
	if rr, _ := inB.doPastUA(compareAndWrite16(lba, 1), caw, 0); !isMiscompare(rr) {
		t.Errorf("a repeat through %s of the COMPARE AND WRITE whose retry got GOOD: %s, want MISCOMPARE as on one array", inB.arr.cfg.Name, describe(rr))
	}
}
