package array

import (
	"bytes"
	"context"
	"slices"
	"testing"
	"time"

	"github.com/metro-storage/metro/internal/catalog"
	"github.com/metro-storage/metro/internal/netproxy"
	"github.com/metro-storage/metro/internal/scsi"
)

// Issue 10, item 3: a COMPARE AND WRITE or PERSISTENT RESERVE OUT that
// the follower forwarded ran at the sequencer, and the link died before
// the answer came back. The follower answers NOT READY, which the host
// retries with the same command; the retry must get the answer the first
// run had (GOOD), not a MISCOMPARE or a RESERVATION CONFLICT caused by
// the first run's own effect. The link is slowed to 200 ms each way so
// that the forwarded command is applied long before its answer could
// come back, and the cut is made once it is applied (observed on the
// stores or the reservation state), well inside that window.

// slowLink is the round trip the tests of lost answers give the link.
const slowLink = 400 * time.Millisecond

// localBlock reads one 512-byte block straight from array i's store.
func (h *pairHarness) localBlock(i int, lba uint64) []byte {
	a := h.arrays[i]
	vol := a.cat.View().Volumes[pairVolume]
	buf := make([]byte, 512)
	if err := a.store.Volume(vol.DataID).ReadAt(context.Background(), buf, int64(lba*512)); err != nil {
		h.t.Fatalf("%s: read the store: %v", a.cfg.Name, err)
	}
	return buf
}

// lu returns array i's logical unit of the pod's volume.
func (h *pairHarness) lu(i int) *scsi.LogicalUnit {
	a := h.arrays[i]
	return replEnv{a}.LU(a.cat.View().Volumes[pairVolume].UUID)
}

// cawBlock is the data-out of a one-block COMPARE AND WRITE at lba that
// expects value expect and writes value next (blocks of unitData).
func cawBlock(lba, expect, next uint64) []byte {
	return append(append([]byte{}, unitData(lba, expect)[:512]...), unitData(lba, next)[:512]...)
}

// answerLost runs cmd through each of ins at once over the slow link,
// cuts the link once applied() holds, and checks that every command
// ended without GOOD: its answer was lost with the link. The link stays
// cut, without its delay.
func (h *pairHarness) answerLost(what string, ins []*initiator, cdbs, outs [][]byte, applied func() (bool, string)) {
	h.t.Helper()
	h.proxy.Set(netproxy.Settings{RTT: slowLink})
	res := make(chan *scsi.Result, len(ins))
	for i, in := range ins {
		go func() {
			r, _ := in.doPastUA(cdbs[i], outs[i], 0)
			res <- r
		}()
	}
	h.waitFor(what+" to be applied", 30*time.Second, applied)
	h.proxy.Partition(true)
	h.log.Info("link cut with the answers in flight", "what", what)
	for range ins {
		var r *scsi.Result
		bounded(h.t.(*testing.T), what+" through the follower", 30*time.Second, func() { r = <-res })
		if r.Status == scsi.StatusGood {
			h.t.Fatalf("%s through the follower: GOOD, so its answer came back before the cut; the test did not lose it", what)
		}
		h.t.Logf("%s through the follower, answer lost: %s", what, describe(r))
	}
	h.proxy.Set(netproxy.Settings{Partitioned: true})
}

// waitAlone waits until array i serves the pod alone and the other array
// does not serve it.
func (h *pairHarness) waitAlone(i int) {
	h.t.Helper()
	me, other := h.arrays[i].cfg.Name, h.arrays[1-i].cfg.Name
	h.waitFor(me+" to serve the pod alone", 30*time.Second, func() (bool, string) {
		ok := h.sees(i, me) == catalog.StatusOnline && h.sees(i, other) != catalog.StatusOnline && h.sees(1-i, other) == catalog.StatusOffline
		return ok, h.podStatus(0) + " / " + h.podStatus(1)
	})
}

// TestPairLostCAWAnswerRetried: two COMPARE AND WRITEs through the
// follower run at the sequencer and the link dies before their answers
// reach the follower; the sequencer, pre-elected (no mediator), serves
// alone. The host retries one through the sequencer at once (its
// multipath moved it) and the other through the follower once the link
// is back and the pod in sync: each retry must be GOOD, as the first run
// was, and the blocks hold the written data on both arrays. A third,
// deliberate repeat of a CAW whose GOOD reached the host is a
// MISCOMPARE, as on one array. Before the fix both retries were
// MISCOMPARE.
func TestPairLostCAWAnswerRetried(t *testing.T) {
	h := newPair(t)
	inA, inB := h.hostPorts()
	inB2 := newInitiator(h.arrays[1], pairIQN, 0x201)
	inB2.drainUAs()
	const lba1, lba2 = 64, 128
	for _, lba := range []uint64{lba1, lba2} {
		if r, ok := writeValue(inA, lba, 1); !ok {
			t.Fatalf("initial write: %s", describe(r))
		}
	}
	caw1, caw2 := cawBlock(lba1, 1, 2), cawBlock(lba2, 1, 2)
	h.answerLost("two COMPARE AND WRITEs", []*initiator{inB, inB2},
		[][]byte{compareAndWrite16(lba1, 1), compareAndWrite16(lba2, 1)}, [][]byte{caw1, caw2},
		func() (bool, string) {
			return bytes.Equal(h.localBlock(0, lba1), caw1[512:]) && bytes.Equal(h.localBlock(0, lba2), caw2[512:]), "not on the sequencer's store yet"
		})
	h.waitAlone(0)
	// The retry of the first through the sequencer, at once.
	if r, _ := inA.doPastUA(compareAndWrite16(lba1, 1), caw1, 0); r.Status != scsi.StatusGood {
		t.Errorf("the retry through %s of a COMPARE AND WRITE whose answer was lost: %s, want GOOD (the first run wrote)", inA.arr.cfg.Name, describe(r))
	}
	h.proxy.Partition(false)
	h.log.Info("link healed")
	h.waitInSync(60 * time.Second)
	// The retry of the second through the follower, once in sync.
	if r, _ := inB2.doPastUA(compareAndWrite16(lba2, 1), caw2, 0); r.Status != scsi.StatusGood {
		t.Errorf("the retry through %s of a COMPARE AND WRITE whose answer was lost: %s, want GOOD (the first run wrote)", inB2.arr.cfg.Name, describe(r))
	}
	// Its GOOD reached the host: the same command again is a new one,
	// and miscompares as on one array.
	r, _ := inB2.doPastUA(compareAndWrite16(lba2, 1), caw2, 0)
	if s, ok := senseOf(r); !ok || !s.Is(scsi.SenseMiscompare(0)) {
		t.Errorf("a repeat of a COMPARE AND WRITE whose GOOD was delivered: %s, want MISCOMPARE", describe(r))
	}
	for _, in := range []*initiator{inA, inB} {
		for _, c := range []struct {
			lba  uint64
			data []byte
		}{{lba1, caw1[512:]}, {lba2, caw2[512:]}} {
			r, _ := in.doPastUA(read16(c.lba, 1), nil, 512)
			if r.Status != scsi.StatusGood || !bytes.Equal(r.Data, c.data) {
				t.Errorf("%s reads lba %d: %s, not the data the COMPARE AND WRITE wrote", in.arr.cfg.Name, c.lba, describe(r))
			}
		}
	}
}

// TestPairLostCAWAnswerFailover: a COMPARE AND WRITE through the
// follower ran at the sequencer, whose mirrored write reached the
// follower, and the link dies before the answer does; the follower, the
// pod's failover preference, wins the mediator's race and serves alone.
// The host's retry through it must be GOOD: what the sequencer knew of
// the command's outcome crossed the failover with its write. Before the
// fix the retry was MISCOMPARE.
func TestPairLostCAWAnswerFailover(t *testing.T) { lostCAWAnswerFailover(t, 1) }

// lostCAWAnswerFailover sends a COMPARE AND WRITE through array via (0:
// the sequencer, 1: the follower, the pod's failover preference) whose
// answer is lost with the link once the write is on the follower's
// store; the follower wins, and the host's retry through it must be
// GOOD; after the heal both copies hold the data written.
func lostCAWAnswerFailover(t *testing.T, via int) {
	h := newMediatedPair(t, 1)
	inA, inB := h.hostPorts()
	const lba = 64
	if r, ok := writeValue(inA, lba, 1); !ok {
		t.Fatalf("initial write: %s", describe(r))
	}
	caw := cawBlock(lba, 1, 2)
	h.answerLost("a COMPARE AND WRITE through "+h.arrays[via].cfg.Name, []*initiator{[]*initiator{inA, inB}[via]}, [][]byte{compareAndWrite16(lba, 1)}, [][]byte{caw},
		func() (bool, string) {
			return bytes.Equal(h.localBlock(1, lba), caw[512:]), "the sequencer's mirrored write is not on the follower's store yet"
		})
	h.waitWinner(1, "array-b to win and serve alone")
	if r, _ := inB.doPastUA(compareAndWrite16(lba, 1), caw, 0); r.Status != scsi.StatusGood {
		t.Errorf("the retry through the winner %s of a COMPARE AND WRITE through %s whose answer was lost after its write reached %s: %s, want GOOD (the first run wrote)",
			inB.arr.cfg.Name, h.arrays[via].cfg.Name, inB.arr.cfg.Name, describe(r))
	}
	h.proxy.Partition(false)
	h.waitInSync(60 * time.Second)
	for _, in := range []*initiator{newInitiator(h.arrays[0], pairIQN, 0x101), newInitiator(h.arrays[1], pairIQN, 0x202)} {
		r, _ := in.doPastUA(read16(lba, 1), nil, 512)
		if r.Status != scsi.StatusGood || !bytes.Equal(r.Data, caw[512:]) {
			t.Errorf("%s reads lba %d: %s, not the data the COMPARE AND WRITE wrote", in.arr.cfg.Name, lba, describe(r))
		}
	}
}

// registeredOnFollower is answerLost's condition for a REGISTER of key:
// the follower holds the registration.
func (h *pairHarness) registeredOnFollower(key uint64) func() (bool, string) {
	return func() (bool, string) {
		regs := h.lu(1).Reservations().Registrations
		return len(regs) == 1 && regs[0].Key == key, "the registration is not on the follower yet"
	}
}

// prPreempt is PERSISTENT RESERVE OUT PREEMPT of the registrations of
// victim by the holder of key, taking a reservation of type typ.
func prPreempt(key, victim uint64, typ byte) (cdb, param []byte) {
	cdb, param = preemptAbortCDB(key, victim, typ)
	cdb[1] = 0x04
	return cdb, param
}

// prReserve is PERSISTENT RESERVE OUT RESERVE of type typ by key.
func prReserve(key uint64, typ byte) (cdb, param []byte) {
	cdb, param = prPreempt(key, 0, typ)
	cdb[1] = 0x01
	return cdb, param
}

// TestPairLostPROutAnswerRetried: a PERSISTENT RESERVE OUT REGISTER, then
// a PREEMPT, through the follower run at the sequencer and the link dies
// each time before the answer reaches the follower; once the link is
// back and the pod in sync, the host retries the same command on the
// same I_T nexus. Each retry must be GOOD, as the first run was, not
// RESERVATION CONFLICT (the registration made by the first run, the
// preempted key gone). Before the fix both retries were RESERVATION
// CONFLICT.
func TestPairLostPROutAnswerRetried(t *testing.T) {
	h := newPair(t)
	inA, inB := h.hostPorts()
	mustGood := func(in *initiator, what string, cdb, out []byte) {
		t.Helper()
		if r, _ := in.doPastUA(cdb, out, 0); r.Status != scsi.StatusGood {
			t.Fatalf("%s through %s: %s", what, in.arr.cfg.Name, describe(r))
		}
	}
	const keyA, keyB = 0xaaaa, 0xbbbb
	cdb, param := prRegister(keyA, false)
	mustGood(inA, "REGISTER", cdb, param)
	cdb, param = prReserve(keyA, 1)
	mustGood(inA, "RESERVE", cdb, param)
	has := func(key uint64) func() (bool, string) {
		return func() (bool, string) {
			return slices.ContainsFunc(h.lu(0).Reservations().Registrations, func(r scsi.Registration) bool { return r.Key == key }), "not registered on the sequencer yet"
		}
	}
	lost := func(what string, cdb, param []byte, applied func() (bool, string)) {
		t.Helper()
		h.answerLost(what, []*initiator{inB}, [][]byte{cdb}, [][]byte{param}, applied)
		h.waitAlone(0)
		h.proxy.Partition(false)
		h.log.Info("link healed")
		h.waitInSync(60 * time.Second)
		if r, _ := inB.doPastUA(cdb, param, 0); r.Status != scsi.StatusGood {
			t.Errorf("the retry through %s of a %s whose answer was lost: %s, want GOOD (the first run took effect)", inB.arr.cfg.Name, what, describe(r))
		}
	}
	cdb, param = prRegister(keyB, false)
	lost("REGISTER", cdb, param, has(keyB))
	cdb, param = prPreempt(keyB, keyA, 1)
	lost("PREEMPT", cdb, param, func() (bool, string) {
		ok, _ := has(keyA)()
		return !ok, "the preempted key is still registered on the sequencer"
	})
	for _, in := range []*initiator{inA, inB} {
		r, _ := in.doPastUA(prInReadKeys(), nil, 1024)
		keys, err := parseKeys(r.Data)
		if r.Status != scsi.StatusGood || err != nil || !slices.Equal(keys, []uint64{keyB}) {
			t.Errorf("READ KEYS through %s: %s %x (%v), want [%x]", in.arr.cfg.Name, describe(r), keys, err, keyB)
		}
	}
	// The REGISTER's GOOD was delivered now: the same command again is a
	// new one, and conflicts as on one array.
	cdb, param = prRegister(keyB, false)
	if r, _ := inB.doPastUA(cdb, param, 0); r.Status != scsi.StatusReservationConflict {
		t.Errorf("a repeat of a REGISTER whose GOOD was delivered: %s, want RESERVATION CONFLICT", describe(r))
	}
}

// TestPairLostPROutAnswerFailover: a PERSISTENT RESERVE OUT REGISTER
// through the follower ran at the sequencer, whose new reservation state
// reached the follower, and the link dies before the answer does; the
// follower, the pod's failover preference, wins the mediator's race and
// serves alone. The host's retry on the same I_T nexus must be GOOD:
// the outcome crossed the failover with the state. Before the fix it was
// RESERVATION CONFLICT.
func TestPairLostPROutAnswerFailover(t *testing.T) {
	h := newMediatedPair(t, 1)
	_, inB := h.hostPorts()
	const key = 0xbbbb
	cdb, param := prRegister(key, false)
	h.answerLost("REGISTER", []*initiator{inB}, [][]byte{cdb}, [][]byte{param}, h.registeredOnFollower(key))
	h.waitWinner(1, "array-b to win and serve alone")
	if r, _ := inB.doPastUA(cdb, param, 0); r.Status != scsi.StatusGood {
		t.Errorf("the retry through the winner %s of a REGISTER whose answer was lost: %s, want GOOD (the first run took effect)", inB.arr.cfg.Name, describe(r))
	}
	h.proxy.Partition(false)
	h.waitInSync(60 * time.Second)
	r, _ := newInitiator(h.arrays[0], pairIQN, 0x101).doPastUA(prInReadKeys(), nil, 1024)
	if keys, err := parseKeys(r.Data); r.Status != scsi.StatusGood || err != nil || !slices.Equal(keys, []uint64{key}) {
		t.Errorf("READ KEYS through %s after the recovery: %s %x (%v), want [%x]", h.arrays[0].cfg.Name, describe(r), keys, err, key)
	}
}
