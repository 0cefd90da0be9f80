package mediator

import "testing"

// TestJudgeOrder: an answer below a generation received while its request
// was under way is not a rollback (answers to requests sent at once
// arrive in any order); below one received before it was sent, it is, and
// that stays so until a reset above what was seen.
func TestJudgeOrder(t *testing.T) {
	const url, id = "https://m:9095", "0123456789abcdef0123456789abcdef"
	st := newSeenState()
	if v := st.judge(url, id, 10, 0, st.floors()); !v.ok || !v.changed {
		t.Fatalf("first answer: %+v", v)
	}
	floors := st.floors() // a request sent now, at 10
	if v := st.judge(url, id, 14, 0, st.floors()); !v.ok {
		t.Fatalf("a newer answer: %+v", v)
	}
	if v := st.judge(url, id, 12, 0, floors); !v.ok || v.changed {
		t.Fatalf("an answer overtaken by a newer one: %+v", v)
	}
	if v := st.judge(url, id, 12, 0, st.floors()); v.ok || !v.changed {
		t.Fatalf("an answer below what was seen before its request: %+v", v)
	}
	for _, gen := range []uint64{14, 15, 100} {
		if v := st.judge(url, id, gen, 0, st.floors()); v.ok {
			t.Fatalf("rolled back, then %d without a reset: %+v", gen, v)
		}
	}
	if v := st.judge(url, id, 16, 14, st.floors()); v.ok {
		t.Fatalf("a reset below what was seen: %+v", v)
	}
	if v := st.judge(url, id, 16, 15, st.floors()); !v.ok || st.Mediators[id].Generation != 16 || st.Mediators[id].RolledBack {
		t.Fatalf("a reset above what was seen: %+v %+v", v, st.Mediators[id])
	}
	if v := st.judge(url, "ffffffffffffffffffffffffffffffff", 100, 0, st.floors()); v.ok {
		t.Fatalf("another mediator at a bound URL: %+v", v)
	}
}
