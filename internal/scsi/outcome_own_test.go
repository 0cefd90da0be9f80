package scsi

import (
	"context"
	"encoding/json"
	"errors"
	"sync"
	"testing"
)

// ownBackend is a MemBackend that records the Own each write runs under
// and how it ended, and fails writes while fail is set.
type ownBackend struct {
	*MemBackend
	mu    sync.Mutex
	fail  bool
	ended []bool
	owns  int
}

func (b *ownBackend) WriteAt(ctx context.Context, p []byte, off int64) error {
	b.mu.Lock()
	fail := b.fail
	if o := OwnOf(ctx); o != nil {
		b.owns++
		o.OnEnd(func(delivered bool) {
			b.mu.Lock()
			defer b.mu.Unlock()
			b.ended = append(b.ended, delivered)
		})
	}
	b.mu.Unlock()
	if fail {
		return errors.New("injected write failure")
	}
	return b.MemBackend.WriteAt(ctx, p, off)
}

// TestOwnEndsWithAnswer: a COMPARE AND WRITE run here (not forwarded)
// writes under an Own, which tells its hooks whether the answer was
// GOOD; a plain write runs under none.
func TestOwnEndsWithAnswer(t *testing.T) {
	b := &ownBackend{MemBackend: NewMemBackend()}
	e := newEnv(t)
	e.lu = NewLogicalUnit(LUConfig{UUID: testUUID, Size: testSize, Backend: b, PersistPR: e.persist})
	e.res = NewStaticResolver(map[uint64]*LogicalUnit{0: e.lu})
	e.tgt = NewTarget(TargetConfig{Resolver: e.res})
	n := nx(1)
	e.ready(n)
	e.good(n, cdbRW16(opWrite16, 10, 1), pattern('X', 1))
	e.good(n, cdbCAW(10, 1), append(pattern('X', 1), pattern('Y', 1)...))
	b.mu.Lock()
	b.fail = true
	b.mu.Unlock()
	if r := e.do(n, cdbCAW(10, 1), append(pattern('Y', 1), pattern('Z', 1)...)); isGood(r) {
		t.Fatal("a COMPARE AND WRITE whose write failed: GOOD")
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.owns != 2 || len(b.ended) != 2 || !b.ended[0] || b.ended[1] {
		t.Fatalf("writes under an Own: %d, ended (delivered) %v; want 2, [true false]", b.owns, b.ended)
	}
}

// ownIdentityOf returns the identity of cmd run as an Own, through JSON
// as on the link.
func ownIdentityOf(t *testing.T, cmd *Command) Identity {
	t.Helper()
	_, own := withOwn(context.Background(), cmd)
	p, err := json.Marshal(own.Identity())
	if err != nil {
		t.Fatal(err)
	}
	var id Identity
	if err := json.Unmarshal(p, &id); err != nil {
		t.Fatal(err)
	}
	return id
}

// TestOutcomeCAWFromSequencer: at the follower, the sequencer's write of
// a COMPARE AND WRITE it ran for a host of its own, applied under its
// identity (WithMirrored), remembers the outcome: the host's retry here
// is GOOD once the answer may be lost, a MISCOMPARE before (the GOOD may
// have been delivered). A malformed identity remembers nothing.
func TestOutcomeCAWFromSequencer(t *testing.T) {
	caw := append(pattern('X', 1), pattern('Y', 1)...)
	n := nx(1)
	id := ownIdentityOf(t, &Command{Nexus: n, CDB: cdbCAW(10, 1), DataOut: caw})
	if len(id.Key) == 0 || len(id.Param) != 0 {
		t.Fatalf("identity of a COMPARE AND WRITE: %+v", id)
	}
	bad := id
	bad.Key = bad.Key[:5]
	short := id
	short.CDB = short.CDB[:3]
	for _, tc := range []struct {
		name string
		id   Identity
		want bool
	}{{"the identity", id, true}, {"a short key", bad, false}, {"a short CDB", short, false}} {
		e := newEnv(t)
		e.ready(n)
		e.good(n, cdbRW16(opWrite16, 10, 1), pattern('Y', 1)) // the mirrored write's data
		fate := &testFate{}
		e.lu.NoteWrite(WithMirrored(context.Background(), tc.id, fate), 10*BlockSize, BlockSize)
		e.check(n, cdbCAW(10, 1), caw, SenseMiscompare(0)) // not known lost
		fate.lost.Store(true)
		if r := e.do(n, cdbCAW(10, 1), caw); isGood(r) != tc.want {
			t.Fatalf("%s: the retry once the answer is lost: GOOD %v, want %v (%v)", tc.name, isGood(r), tc.want, senseOf(r))
		}
	}
}

// TestOutcomePROutFromSequencer: at the follower, the state installed
// for a PERSISTENT RESERVE OUT the sequencer ran for a host of its own,
// under its identity, remembers the outcome for the retry on the same
// nexus, here (forwarded to it, or run once it serves alone).
func TestOutcomePROutFromSequencer(t *testing.T) {
	e, n, reg, param := newPREnv(t)
	id := ownIdentityOf(t, &Command{Nexus: n, CDB: reg, DataOut: param(0, 0xd, 0)})
	st := ReservationState{Generation: 1, Registrations: []Registration{{Key: 0xd, Nexus: NexusID(n)}}}
	fate := &testFate{}
	if err := e.lu.InstallReservations(WithMirrored(context.Background(), id, fate), ReservationUpdate{State: st}); err != nil {
		t.Fatal(err)
	}
	e.conflict(n, "the same REGISTER while its GOOD may have been delivered", reg, param(0, 0xd, 0))
	fate.lost.Store(true)
	if r := e.forwardedRun(n, reg, param(0, 0xd, 0), &testFate{}); !isGood(r) {
		t.Fatalf("the retry forwarded here once the answer is lost: %v, want GOOD", senseOf(r))
	}
}
