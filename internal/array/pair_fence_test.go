package array

import (
	"encoding/binary"
	"fmt"
	"reflect"
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
	prSAClear  = 0x03
	prTypeWERO = 0x05
)

// preemptAbortCDB is PERSISTENT RESERVE OUT PREEMPT AND ABORT by the
// holder of key of the registrations with victim, reserving typ.
func preemptAbortCDB(key, victim uint64, typ byte) (cdb, param []byte) {
	cdb, param = prOutCDB(prPreemptAndAbort, key, typ)
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
						cdb, p := preemptAbortCDB(f.key, f.victim, prTypeWERO)
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

// cutFrom cuts the link in the direction from array i to the other only.
func (h *pairHarness) cutFrom(i int) {
	if h.accepter == i {
		h.proxy.Set(netproxy.Settings{CutBToA: true})
	} else {
		h.proxy.Set(netproxy.Settings{CutAToB: true})
	}
}

// fenceSetup registers node1 (through the sequencer) with key 0x1 and
// node2 (through the follower) with 0x2, node1 reserving Write
// Exclusive, Registrants Only; it returns the nodes past their unit
// attentions.
func fenceSetup(t *testing.T, h *pairHarness) (node1, node2 *initiator) {
	node1 = newInitiator(h.arrays[0], pairIQN, 0x11)
	node2 = newInitiator(h.arrays[1], pairIQN, 0x22)
	cdb, p := prRegisterIgnore(0x1)
	prMust(t, node1, "register node1", cdb, p)
	cdb, p = prRegisterIgnore(0x2)
	prMust(t, node2, "register node2", cdb, p)
	cdb, p = prOutCDB(0x01, 0x1, prTypeWERO)
	prMust(t, node1, "reserve", cdb, p)
	node1.drainUAs()
	node2.drainUAs()
	return node1, node2
}

// TestPairPreemptRacingFailover (issue 10, item 8): a PREEMPT AND ABORT
// through the sequencer while the link fails and the pod fails over at
// the mediator: the share is lost on its way (the follower never gets the
// change) or its answer is (the follower installed it). The PREEMPT is
// either on the winner or failed; a sequencer that lost the race keeps
// nothing of a PREEMPT it failed (its state and saved state as before, no
// unit attention of it); once the pair is in sync again both arrays hold
// the winner's state. Before, the loser answered NOT READY but kept the
// change, its saved state and its unit attentions.
func TestPairPreemptRacingFailover(t *testing.T) {
	for _, tc := range []struct {
		name   string
		from   int // the link is cut from this array to the other
		winner int
	}{
		{"share lost, the sequencer loses", 0, 1},
		{"answer lost, the sequencer loses", 1, 1},
		{"answer lost, the sequencer wins", 1, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newMediatedPair(t, tc.winner)
			node1, node2 := fenceSetup(t, h)
			before := h.lu(0).Reservations()
			// The loser cannot reach the mediator: it loses the race
			// whatever the machine's load.
			loser := 1 - tc.winner
			h.medProxy[loser].Partition(true)
			h.cutFrom(tc.from)
			cdb, p := preemptAbortCDB(0x1, 0x2, prTypeWERO)
			var r *scsi.Result
			bounded(t, "the PREEMPT racing the failover", 60*time.Second, func() { r, _ = node1.doPastUA(cdb, p, 0) })
			h.waitWinner(tc.winner, "the failover")
			winner := h.lu(tc.winner).Reservations()
			onWinner := len(winner.Registrations) == 1 && winner.Registrations[0].Key == 0x1
			t.Logf("the PREEMPT: %s; on the winner: %v", describe(r), onWinner)
			if r.Status == scsi.StatusGood && !onWinner {
				t.Fatalf("the PREEMPT was acknowledged and the winner lacks it: %+v", winner)
			}
			if r.Status != scsi.StatusGood && loser == 0 {
				if got := h.lu(0).Reservations(); !reflect.DeepEqual(got, before) {
					t.Fatalf("the loser's reservations after its PREEMPT failed: %+v, want as before %+v", got, before)
				}
			}
			h.medProxy[loser].Partition(false)
			h.proxy.Set(netproxy.Settings{})
			h.waitInSync(60 * time.Second)
			want := []uint64{0x1, 0x2}
			if onWinner {
				want = []uint64{0x1}
			}
			for _, in := range []*initiator{node1, node2} {
				if got := keysThrough(t, in); !slices.Equal(got, want) {
					t.Fatalf("keys through %s once in sync again: %x, want the winner's %x", in.arr.cfg.Name, got, want)
				}
			}
			if !onWinner {
				uas, _ := node2.drainUAs()
				for _, s := range uas {
					if s.Is(scsi.SenseRegistrationsPreempted()) {
						t.Fatalf("node2 got REGISTRATIONS PREEMPTED of a PREEMPT that failed (unit attentions %v)", uas)
					}
				}
			}
		})
	}
}
