package array

import (
	"encoding/binary"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/metro-storage/metro/internal/netproxy"
	"github.com/metro-storage/metro/internal/scsi"
)

// Persistent reservations across the pair while two cluster nodes fence
// each other (issue 10).

// PERSISTENT RESERVE OUT service actions and types the tests use.
const (
	prSAClear           = 0x03
	prSAPreemptAndAbort = 0x05
	prTypeWERO          = 0x05
)

// prPreemptAndAbort is PERSISTENT RESERVE OUT PREEMPT AND ABORT by the
// holder of key of the registrations with victim, reserving typ.
func prPreemptAndAbort(key, victim uint64, typ byte) (cdb, param []byte) {
	cdb, param = prOutCDB(prSAPreemptAndAbort, key, typ)
	binary.BigEndian.PutUint64(param[8:16], victim)
	return cdb, param
}

// keysThrough reads the registered keys through in.
func keysThrough(t *testing.T, in *initiator) []uint64 {
	t.Helper()
	r, _ := in.doPastUA(prInReadKeys(), nil, 1024)
	if r.Status != scsi.StatusGood {
		t.Fatalf("READ KEYS through %s: %s", in.arr.cfg.Name, describe(r))
	}
	keys, err := parseKeys(r.Data)
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(keys)
	return keys
}

// prMust runs a PERSISTENT RESERVE OUT through in past unit attentions
// and fails the test unless it is GOOD.
func prMust(t *testing.T, in *initiator, what string, cdb, param []byte) {
	t.Helper()
	if r, _ := in.doPastUA(cdb, param, 0); r.Status != scsi.StatusGood {
		t.Fatalf("%s through %s: %s", what, in.arr.cfg.Name, describe(r))
	}
}

// TestPairFenceRace (issue 10, item 1): two cluster nodes, node1 through
// the sequencer and node2 through the follower, fence each other with
// PREEMPT AND ABORT at the same moment, as fence_scsi does when the
// cluster splits. Before, the sequencer held the unit's reservation lock
// while it shared node1's preemption with the follower, the follower's
// install waited for node2's tasks there to end, and one of them was
// node2's own PREEMPT, forwarded to the sequencer and waiting for that
// lock: both fences hung until the share's deadline ended the link (the
// pod then went through a failover and a resync). Now each round ends
// with exactly one node fenced, the same keys on both arrays, and the
// link and the pod's epoch untouched. It runs over a 5 ms and a 40 ms
// round trip, 20 rounds each; every command must end within a bound
// (a liveness check, not a timing assertion), and the fenced node's
// writes are refused.
func TestPairFenceRace(t *testing.T) {
	for _, rtt := range []time.Duration{5 * time.Millisecond, 40 * time.Millisecond} {
		t.Run(fmt.Sprintf("rtt=%v", rtt), func(t *testing.T) {
			h := newPair(t)
			node1 := newInitiator(h.arrays[0], pairIQN, 0x11)
			node2 := newInitiator(h.arrays[1], pairIQN, 0x22)
			node1.drainUAs()
			node2.drainUAs()
			h.proxy.Set(netproxy.Settings{RTT: rtt})
			steady := h.steadyLink()
			const rounds = 20
			wins := [2]int{}
			for round := range rounds {
				k1, k2 := uint64(0x1000+round), uint64(0x2000+round)
				// A clean slate: node1 registers and clears everything,
				// both register, node1 reserves (the cluster's state
				// before the split).
				cdb, p := prRegisterIgnore(k1)
				prMust(t, node1, "register node1", cdb, p)
				cdb, p = prOutCDB(prSAClear, k1, 0)
				prMust(t, node1, "clear", cdb, p)
				cdb, p = prRegisterIgnore(k1)
				prMust(t, node1, "register node1", cdb, p)
				cdb, p = prRegisterIgnore(k2)
				prMust(t, node2, "register node2", cdb, p)
				cdb, p = prOutCDB(0x01, k1, prTypeWERO)
				prMust(t, node1, "reserve", cdb, p)
				node1.drainUAs()
				node2.drainUAs()

				var res [2]*scsi.Result
				bounded(t, fmt.Sprintf("round %d: the fences", round), 30*time.Second, func() {
					start := make(chan struct{})
					done := make(chan struct{}, 2)
					for i, f := range []struct {
						in          *initiator
						key, victim uint64
					}{{node1, k1, k2}, {node2, k2, k1}} {
						cdb, p := prPreemptAndAbort(f.key, f.victim, prTypeWERO)
						go func() {
							defer func() { done <- struct{}{} }()
							<-start
							if i == 0 && round%2 == 1 {
								// Odd rounds give node2's fence, which
								// has the link to cross, a head start.
								time.Sleep(rtt / 2)
							}
							res[i], _ = f.in.doPastUA(cdb, p, 0)
						}()
					}
					close(start)
					<-done
					<-done
				})
				h.checkSteady(steady, fmt.Sprintf("round %d: node1's fence %s, node2's %s", round, describe(res[0]), describe(res[1])))
				good := -1
				for i, r := range res {
					switch {
					case r.Aborted, r.Status == scsi.StatusReservationConflict:
					case r.Status == scsi.StatusGood:
						if good >= 0 {
							t.Fatalf("round %d: both fences GOOD; keys through A %x, through B %x", round, keysThrough(t, node1), keysThrough(t, node2))
						}
						good = i
					default:
						t.Fatalf("round %d: node%d's fence: %s, want GOOD, RESERVATION CONFLICT or aborted", round, i+1, describe(r))
					}
				}
				if good < 0 {
					t.Fatalf("round %d: neither fence GOOD: %s, %s", round, describe(res[0]), describe(res[1]))
				}
				wins[good]++
				want := []uint64{k1}
				if good == 1 {
					want = []uint64{k2}
				}
				for _, in := range []*initiator{node1, node2} {
					if got := keysThrough(t, in); !slices.Equal(got, want) {
						t.Fatalf("round %d: node%d fenced; keys through %s %x, want %x", round, 2-good, in.arr.cfg.Name, got, want)
					}
				}
				// The fenced node can no longer write.
				fenced := []*initiator{node2, node1}[good]
				d := unitData(0, uint64(round+1))
				if r, _ := fenced.doPastUA(write16(0, d), d, 0); r.Status != scsi.StatusReservationConflict {
					t.Fatalf("round %d: a write by fenced node%d through %s: %s, want RESERVATION CONFLICT", round, 2-good, fenced.arr.cfg.Name, describe(r))
				}
			}
			t.Logf("fences won: node1 (sequencer) %d, node2 (follower) %d", wins[0], wins[1])
		})
	}
}
