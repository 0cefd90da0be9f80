package array

import (
	"bytes"
	"context"
	"os"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"

	"github.com/metro-storage/metro/internal/catalog"
	"github.com/metro-storage/metro/internal/scsi"
)

// TestPairBasics checks the stretched pod's data path and ordered state
// through both arrays of an in-process pair: writes and COMPARE AND
// WRITE through either array, persistent and SCSI-2 reservations decided
// at the sequencer and enforced on both, a LUN reset on one array seen on
// the other, and ALUA port groups with and without a preferred array.
func TestPairBasics(t *testing.T) {
	h := newPair(t)
	a, b := h.arrays[0], h.arrays[1]
	inA := newInitiator(a, pairIQN, 0x100)
	inB := newInitiator(b, pairIQN, 0x200)
	for _, in := range []*initiator{inA, inB} {
		if _, r := in.drainUAs(); r.Status != scsi.StatusGood {
			t.Fatalf("TEST UNIT READY through %s: %s", in.arr.cfg.Name, describe(r))
		}
	}
	mustGood := func(in *initiator, what string, cdb, out []byte, dataIn uint32) *scsi.Result {
		t.Helper()
		r, _ := in.doPastUA(cdb, out, dataIn)
		if r.Status != scsi.StatusGood {
			t.Fatalf("%s through %s: %s", what, in.arr.cfg.Name, describe(r))
		}
		return r
	}
	readUnit := func(in *initiator, lba uint64) uint64 {
		t.Helper()
		r := mustGood(in, "READ(16)", read16(lba, 8), nil, 4096)
		return unitValue(lba, r.Data)
	}

	// Writes through either array are read back through the other.
	for i, pair := range [][2]*initiator{{inB, inA}, {inA, inB}} {
		w, rd := pair[0], pair[1]
		lba, v := uint64(1000+8*i), uint64(0xabc0+i)
		mustGood(w, "WRITE(16)", write16(lba, unitData(lba, v)), unitData(lba, v), 0)
		if got := readUnit(rd, lba); got != v {
			t.Fatalf("wrote %#x through %s, read %#x through %s", v, w.arr.cfg.Name, got, rd.arr.cfg.Name)
		}
		if got := readUnit(w, lba); got != v {
			t.Fatalf("wrote %#x through %s, read %#x back there", v, w.arr.cfg.Name, got)
		}
	}

	// COMPARE AND WRITE through each array: it writes when the data
	// matches and answers MISCOMPARE (0E/1D/00) when not.
	for i, in := range []*initiator{inA, inB} {
		lba := uint64(2000 + 8*i)
		mustGood(in, "WRITE(16)", write16(lba, unitData(lba, 1)), unitData(lba, 1), 0)
		cawOut := func(expect, next uint64) []byte {
			return append(append([]byte{}, unitData(lba, expect)[:512]...), unitData(lba, next)[:512]...)
		}
		// The first block of the unit only: compare (lba, 1), write (lba, 2).
		mustGood(in, "COMPARE AND WRITE", compareAndWrite16(lba, 1), cawOut(1, 2), 0)
		for _, other := range []*initiator{inA, inB} {
			r := mustGood(other, "READ(16)", read16(lba, 1), nil, 512)
			if !bytes.Equal(r.Data, unitData(lba, 2)[:512]) {
				t.Fatalf("COMPARE AND WRITE through %s: %s reads %x", in.arr.cfg.Name, other.arr.cfg.Name, r.Data[:16])
			}
		}
		r, _ := in.doPastUA(compareAndWrite16(lba, 1), cawOut(1, 3), 0)
		s, ok := senseOf(r)
		if !ok || !s.Is(scsi.SenseMiscompare(0)) {
			t.Fatalf("COMPARE AND WRITE with stale data through %s: %s, want MISCOMPARE 0e/1d/00", in.arr.cfg.Name, describe(r))
		}
		for _, other := range []*initiator{inA, inB} {
			r := mustGood(other, "READ(16)", read16(lba, 1), nil, 512)
			if !bytes.Equal(r.Data, unitData(lba, 2)[:512]) {
				t.Fatalf("a miscompared COMPARE AND WRITE through %s changed the data on %s", in.arr.cfg.Name, other.arr.cfg.Name)
			}
		}
	}

	// A registration made through A is listed through B.
	cdb, param := prRegister(0x1234, false)
	mustGood(inA, "PR OUT REGISTER", cdb, param, 0)
	for _, in := range []*initiator{inA, inB} {
		r := mustGood(in, "PR IN READ KEYS", prInReadKeys(), nil, 1024)
		keys, err := parseKeys(r.Data)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(keys, []uint64{0x1234}) {
			t.Fatalf("READ KEYS through %s after REGISTER through %s: %x", in.arr.cfg.Name, a.cfg.Name, keys)
		}
	}
	cdb, param = prRegisterIgnore(0)
	mustGood(inA, "PR OUT unregister", cdb, param, 0)

	// A SCSI-2 reservation through A makes B's writes conflict.
	mustGood(inA, "RESERVE(6)", reserve6(), nil, 0)
	lba := uint64(3000)
	r, _ := inB.doPastUA(write16(lba, unitData(lba, 7)), unitData(lba, 7), 0)
	if r.Status != scsi.StatusReservationConflict {
		t.Fatalf("WRITE through %s while %s holds a SCSI-2 reservation: %s, want RESERVATION CONFLICT", b.cfg.Name, a.cfg.Name, describe(r))
	}
	r, _ = inB.doPastUA(read16(lba, 8), nil, 4096)
	if r.Status != scsi.StatusReservationConflict {
		t.Fatalf("READ through %s while %s holds a SCSI-2 reservation: %s, want RESERVATION CONFLICT", b.cfg.Name, a.cfg.Name, describe(r))
	}
	mustGood(inA, "WRITE(16) by the holder", write16(lba, unitData(lba, 8)), unitData(lba, 8), 0)
	mustGood(inA, "RELEASE(6)", release6(), nil, 0)
	mustGood(inB, "WRITE(16) after RELEASE", write16(lba, unitData(lba, 9)), unitData(lba, 9), 0)

	// A LUN reset through B reaches A's nexuses as a unit attention.
	if resp := b.Target().TaskManagement(context.Background(), inB.nexus, scsi.LogicalUnitReset, 0, 0); resp != scsi.TMFComplete {
		t.Fatalf("LUN RESET through %s: response %d", b.cfg.Name, resp)
	}
	for _, in := range []*initiator{inA, inB} {
		uas, r := in.drainUAs()
		if !slices.ContainsFunc(uas, func(s scsi.Sense) bool { return s.Is(scsi.SenseLUNReset()) }) {
			t.Fatalf("after a LUN RESET through %s, %s's nexus has unit attentions %v, want 06/29/03", b.cfg.Name, in.arr.cfg.Name, uas)
		}
		if r.Status != scsi.StatusGood {
			t.Fatalf("TEST UNIT READY through %s after the reset: %s", in.arr.cfg.Name, describe(r))
		}
	}

	// ALUA: both arrays report both groups; with no preference both are
	// active/optimized.
	groupOf := func(x *Array) uint16 { return x.id.TargetPortGroup() }
	checkTPG := func(when string, want map[uint16]scsi.AccessState, pref uint16) {
		t.Helper()
		for _, in := range []*initiator{inA, inB} {
			r := mustGood(in, "REPORT TARGET PORT GROUPS", reportTPG(), nil, 4096)
			groups, err := parseTPG(r.Data)
			if err != nil {
				t.Fatal(err)
			}
			if len(groups) != 2 {
				t.Fatalf("%s: REPORT TARGET PORT GROUPS through %s: %d groups, want 2: %+v", when, in.arr.cfg.Name, len(groups), groups)
			}
			for _, g := range groups {
				st, ok := want[g.id]
				if !ok {
					t.Fatalf("%s: through %s: unknown group %#x (want %#x and %#x)", when, in.arr.cfg.Name, g.id, groupOf(a), groupOf(b))
				}
				if g.state != st || g.preferred != (g.id == pref) {
					t.Fatalf("%s: through %s: group %#x state %#x preferred %v, want state %#x preferred %v",
						when, in.arr.cfg.Name, g.id, g.state, g.preferred, st, g.id == pref)
				}
				owner := a
				if g.id == groupOf(b) {
					owner = b
				}
				if !slices.Equal(g.ports, []uint16{owner.id.RelativePortID()}) {
					t.Fatalf("%s: through %s: group %#x ports %v, want [%d]", when, in.arr.cfg.Name, g.id, g.ports, owner.id.RelativePortID())
				}
			}
		}
	}
	checkTPG("no preference", map[uint16]scsi.AccessState{groupOf(a): scsi.ActiveOptimized, groupOf(b): scsi.ActiveOptimized}, 0)

	// The host prefers array-a (changed through the sequencer, which
	// installs the change on the follower; TestPairConfigThroughFollower
	// makes it through the follower): A is optimized and preferred, B
	// non-optimized, and both arrays' nexuses hear of the change.
	pref := []string{a.cfg.Name}
	if err := a.Apply(context.Background(), catalog.SetHostAttr{Name: pairHost, PreferredArrays: &pref}); err != nil {
		t.Fatalf("set the host's preferred array through %s: %v", a.cfg.Name, err)
	}
	for _, x := range []*Array{a, b} {
		if got := x.cat.View().Hosts[pairHost].PreferredArrays; !slices.Equal(got, pref) {
			t.Fatalf("%s: host's preferred arrays %v, want %v", x.cfg.Name, got, pref)
		}
	}
	for _, in := range []*initiator{inA, inB} {
		uas, r := in.drainUAs()
		if !slices.ContainsFunc(uas, func(s scsi.Sense) bool { return s.Is(scsi.SenseAsymmetricAccessChanged()) }) {
			t.Fatalf("after the preference changed, %s's nexus has unit attentions %v, want 06/2a/06", in.arr.cfg.Name, uas)
		}
		if r.Status != scsi.StatusGood {
			t.Fatalf("TEST UNIT READY through %s: %s", in.arr.cfg.Name, describe(r))
		}
	}
	checkTPG("array-a preferred", map[uint16]scsi.AccessState{groupOf(a): scsi.ActiveOptimized, groupOf(b): scsi.ActiveNonOptimized}, groupOf(a))

	if ok, why := h.inSync(); !ok {
		t.Fatalf("the pod left sync: %s", why)
	}
}

// TestPairLinearizable drives the stretched pod through both arrays with
// concurrent clients doing overlapping writes, reads, COMPARE AND WRITE
// and reservation registrations while the replication link is cut and
// healed at random (and sometimes slowed), records the history and checks
// that it is linearizable against a sequential model of the units and
// keys (porcupine). An operation that failed has an unknown outcome: it
// may have taken effect at any time after its call, or never. At the end
// the link is healed, the pod must return to sync, both arrays' copies
// must be identical block by block, and writes to blocks written once
// must be there if acknowledged.
func TestPairLinearizable(t *testing.T) {
	cfg := linConfig{ioPhase: 15 * time.Second, seed: uint64(time.Now().UnixNano())}
	if testing.Short() {
		cfg.ioPhase = 6 * time.Second
	}
	cfg.seed = seedFromEnv(t, cfg.seed)
	if s := os.Getenv("METRO_PAIR_DURATION"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil {
			t.Fatalf("METRO_PAIR_DURATION: %v", err)
		}
		cfg.ioPhase = d
	}
	t.Logf("seed %d (METRO_PAIR_SEED=%d replays the schedule and choices, not the interleaving)", cfg.seed, cfg.seed)
	runLinearizable(t, cfg)
}

// seedFromEnv returns METRO_PAIR_SEED's seed if set, else seed.
func seedFromEnv(t *testing.T, seed uint64) uint64 {
	if s := os.Getenv("METRO_PAIR_SEED"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("METRO_PAIR_SEED: %v", err)
		}
		return v
	}
	return seed
}

// TestPairLinearizableFailover is TestPairLinearizable with a mediator:
// link cuts move the pod between the arrays (the failover preference is
// set to the follower before most cuts), some cut an array from the
// mediator too, and the history must stay linearizable through the
// failovers and the resyncs that follow (floors: successful operations,
// partitions and at least one failover).
func TestPairLinearizableFailover(t *testing.T) {
	cfg := linConfig{ioPhase: 15 * time.Second, seed: uint64(time.Now().UnixNano()), mediator: true}
	if testing.Short() {
		cfg.ioPhase = 8 * time.Second
	}
	cfg.seed = seedFromEnv(t, cfg.seed)
	t.Logf("seed %d (METRO_PAIR_SEED=%d replays the schedule and choices, not the interleaving)", cfg.seed, cfg.seed)
	runLinearizable(t, cfg)
}

// TestPairModel checks the checker: the model accepts a history in which
// an operation of unknown outcome did or did not take effect, and refuses
// a stale read after an acknowledged write and a lost acknowledged write.
func TestPairModel(t *testing.T) {
	w := func(client int, v uint64) linInput {
		in := linInput{Kind: linWrite, Client: client, Unit: 2, N: 2}
		in.Values[0], in.Values[1] = v, v+1
		return in
	}
	rd := linInput{Kind: linRead, Unit: 2, N: 2, Client: 1}
	read := func(v uint64) linOutput {
		if v == 0 {
			return linOutput{}
		}
		return linOutput{Values: [linUnits]uint64{v, v + 1}}
	}
	unknown := linOutput{Unknown: true}
	op := func(in linInput, out linOutput, call, ret int64) porcupine.Operation {
		return porcupine.Operation{ClientId: in.Client, Input: in, Output: out, Call: call, Return: ret}
	}
	caw := linInput{Kind: linCAW, Client: 2, Unit: 2, N: 1}
	caw.Values[0], caw.Values[1] = 10, 20
	for _, tc := range []struct {
		name    string
		history []porcupine.Operation
		ok      bool
	}{
		{"read after write", []porcupine.Operation{op(w(0, 10), linOutput{}, 0, 10), op(rd, read(10), 11, 12)}, true},
		{"stale read after write", []porcupine.Operation{op(w(0, 10), linOutput{}, 0, 10), op(rd, read(0), 11, 12)}, false},
		{"concurrent read sees either", []porcupine.Operation{op(w(0, 10), linOutput{}, 0, 10), op(rd, read(0), 5, 12)}, true},
		{"unknown write taken", []porcupine.Operation{op(w(0, 10), unknown, 0, 100), op(rd, read(10), 11, 12)}, true},
		{"unknown write not taken", []porcupine.Operation{op(w(0, 10), unknown, 0, 100), op(rd, read(0), 11, 12), op(rd, read(0), 13, 14)}, true},
		{"unknown write taken late", []porcupine.Operation{op(w(0, 10), unknown, 0, 100), op(rd, read(0), 11, 12), op(rd, read(10), 13, 14)}, true},
		{"unknown write undone", []porcupine.Operation{op(w(0, 10), unknown, 0, 100), op(rd, read(10), 11, 12), op(rd, read(0), 13, 14)}, false},
		{"lost write", []porcupine.Operation{op(w(0, 10), linOutput{}, 0, 10), op(w(3, 30), linOutput{}, 20, 30), op(rd, read(10), 40, 50)}, false},
		{"caw matches", []porcupine.Operation{op(w(0, 10), linOutput{}, 0, 10), op(caw, linOutput{}, 20, 30)}, true},
		{"caw miscompares wrongly", []porcupine.Operation{op(w(0, 10), linOutput{}, 0, 10), op(caw, linOutput{Miscompare: true}, 20, 30)}, false},
		{"caw writes without a match", []porcupine.Operation{op(caw, linOutput{}, 20, 30)}, false},
	} {
		if got := porcupine.CheckOperations(linModel(), tc.history); got != tc.ok {
			t.Errorf("%s: linearizable %v, want %v", tc.name, got, tc.ok)
		}
	}
	reg := func(client int, key uint64) linInput {
		in := linInput{Kind: linRegister, Client: client}
		in.Values[0] = key
		return in
	}
	keys := linInput{Kind: linReadKeys, Client: 4}
	if !porcupine.CheckOperations(linModel(), []porcupine.Operation{op(reg(0, 7), linOutput{}, 0, 1), op(reg(1, 5), unknown, 2, 100),
		op(keys, linOutput{Keys: []uint64{5, 7}}, 3, 4), op(reg(0, 0), linOutput{}, 5, 6), op(keys, linOutput{Keys: []uint64{5}}, 7, 8)}) {
		t.Error("registrations: a valid history refused")
	}
	if porcupine.CheckOperations(linModel(), []porcupine.Operation{op(reg(0, 7), linOutput{}, 0, 1), op(keys, linOutput{}, 3, 4)}) {
		t.Error("registrations: a lost registration accepted")
	}
	preempt := func(client int, own, victim uint64) linInput {
		in := linInput{Kind: linPreempt, Client: client}
		in.Values[0], in.Values[1] = own, victim
		return in
	}
	conflict := linOutput{Conflict: true}
	retry := func(in linInput) linInput { in.Retry = true; return in }
	registered := []porcupine.Operation{op(reg(0, 7), linOutput{}, 0, 1), op(reg(1, 5), linOutput{}, 2, 3)}
	for _, tc := range []struct {
		name string
		ops  []porcupine.Operation
		ok   bool
	}{
		{"preempt removes the key", []porcupine.Operation{op(preempt(0, 7, 5), linOutput{}, 4, 5), op(keys, linOutput{Keys: []uint64{7}}, 6, 7)}, true},
		{"preempted key still listed", []porcupine.Operation{op(preempt(0, 7, 5), linOutput{}, 4, 5), op(keys, linOutput{Keys: []uint64{5, 7}}, 6, 7)}, false},
		{"preempt by a stale key succeeds", []porcupine.Operation{op(preempt(0, 8, 5), linOutput{}, 4, 5)}, false},
		{"preempt by a stale key conflicts", []porcupine.Operation{op(preempt(0, 8, 5), conflict, 4, 5), op(keys, linOutput{Keys: []uint64{5, 7}}, 6, 7)}, true},
		{"preempt of a registered key conflicts", []porcupine.Operation{op(preempt(0, 7, 5), conflict, 4, 5)}, false},
		{"preempt of unknown outcome taken", []porcupine.Operation{op(preempt(0, 7, 5), unknown, 4, 100), op(keys, linOutput{Keys: []uint64{7}}, 6, 7)}, true},
		{"retry of a preempt that took effect answered GOOD", []porcupine.Operation{op(preempt(0, 7, 5), unknown, 4, 100), op(keys, linOutput{Keys: []uint64{7}}, 6, 7), op(retry(preempt(0, 7, 5)), linOutput{}, 8, 9)}, true},
		{"new preempt of a removed key answered GOOD", []porcupine.Operation{op(preempt(0, 7, 5), unknown, 4, 100), op(keys, linOutput{Keys: []uint64{7}}, 6, 7), op(preempt(0, 7, 5), linOutput{}, 8, 9)}, false},
		{"preempted client registers again", []porcupine.Operation{op(preempt(0, 7, 5), linOutput{}, 4, 5), op(reg(1, 6), linOutput{}, 6, 7), op(keys, linOutput{Keys: []uint64{6, 7}}, 8, 9)}, true},
	} {
		if got := porcupine.CheckOperations(linModel(), append(slices.Clone(registered), tc.ops...)); got != tc.ok {
			t.Errorf("%s: linearizable %v, want %v", tc.name, got, tc.ok)
		}
	}
}
