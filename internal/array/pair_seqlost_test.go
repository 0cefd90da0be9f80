package array

import (
	"slices"
	"testing"
	"time"

	"github.com/metro-storage/metro/internal/scsi"
)

// Issue 10, item 3, the other direction: a COMPARE AND WRITE or
// PERSISTENT RESERVE OUT sent to the sequencer itself (not forwarded)
// changes both copies; the follower applies the mirrored write or the
// new reservation state, and the link dies before its answer reaches the
// sequencer. The follower, the pod's failover preference, wins the race:
// the sequencer, having lost the pod, answers a retryable NOT READY, and
// the host retries through the winner, whose copy holds the first run's
// effect. The retry must be GOOD, as it is when the command came through
// the follower (TestPairLostCAWAnswerFailover): a MISCOMPARE makes ESXi
// declare the datastore lost, a RESERVATION CONFLICT fails the fence.

// TestPairLostSequencerCAWAnswerFailover: a COMPARE AND WRITE through the
// sequencer, its mirrored write on the follower, the follower's answer
// lost with the link, the follower wins; the host's retry through the
// winner must be GOOD.
func TestPairLostSequencerCAWAnswerFailover(t *testing.T) { lostCAWAnswerFailover(t, 0) }

// TestPairLostSequencerPROutAnswerFailover: a PERSISTENT RESERVE OUT
// REGISTER through the sequencer, its new state installed on the
// follower, the follower's answer lost with the link, the follower wins.
// Once the loser has rejoined, the host retries on the same I_T nexus:
// the retry must be GOOD (the first run registered), not RESERVATION
// CONFLICT.
func TestPairLostSequencerPROutAnswerFailover(t *testing.T) {
	h := newMediatedPair(t, 1)
	inA, _ := h.hostPorts()
	const key = 0xaaaa
	cdb, param := prRegister(key, false)
	h.answerLost("REGISTER through the sequencer", []*initiator{inA}, [][]byte{cdb}, [][]byte{param}, h.registeredOnFollower(key))
	h.waitWinner(1, "array-b to win and serve alone")
	h.proxy.Partition(false)
	h.waitInSync(60 * time.Second)
	if r, _ := inA.doPastUA(cdb, param, 0); r.Status != scsi.StatusGood {
		t.Errorf("the retry through %s of a REGISTER that it answered NOT READY after the winner installed it: %s, want GOOD (the first run took effect)",
			inA.arr.cfg.Name, describe(r))
	}
	r, _ := inA.doPastUA(prInReadKeys(), nil, 1024)
	if keys, err := parseKeys(r.Data); r.Status != scsi.StatusGood || err != nil || !slices.Equal(keys, []uint64{key}) {
		t.Errorf("READ KEYS through %s: %s %x (%v), want [%x]", inA.arr.cfg.Name, describe(r), keys, err, key)
	}
}
