package backendtest

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/metro-storage/metro/internal/mediator"
)

// Opener opens the backend under test on one store. Each call opens the
// same store again (a restart); the suite closes one before it opens the
// next.
type Opener func() (mediator.Backend, error)

// NewStore makes an empty store for one test, keeping at most maxPods
// records (0: the backend's default), and returns its Opener.
type NewStore func(t *testing.T, maxPods int) Opener

// Run runs the conformance suite against the backend newStore makes.
func Run(t *testing.T, newStore NewStore) {
	tests := []struct {
		name string
		fn   func(t *testing.T, newStore NewStore)
	}{
		{"Start", testStart},
		{"Race", testRace},
		{"Durable", testDurable},
		{"Invalid", testInvalid},
		{"Full", testFull},
		{"Closed", testClosed},
		{"Concurrent", testConcurrent},
		{"Model", testModel},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, newStore) })
	}
}

// open opens a backend and closes it at the end of the test.
func open(t *testing.T, o Opener) mediator.Backend {
	t.Helper()
	b, err := o()
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	t.Cleanup(func() { _ = b.Close() })
	return b
}

func info(t *testing.T, b mediator.Backend) mediator.Info {
	t.Helper()
	in, err := b.Info(context.Background())
	if err != nil {
		t.Fatalf("info: %v", err)
	}
	return in
}

func elect(t *testing.T, b mediator.Backend, pod string, epoch uint64, array string) (mediator.ElectResult, uint64) {
	t.Helper()
	res, gen, err := b.Elect(context.Background(), mediator.ElectRequest{Pod: pod, Epoch: epoch, Array: array})
	if err != nil {
		t.Fatalf("elect(%s, %d, %s): %v", pod, epoch, array, err)
	}
	return res, gen
}

// testStart: a first start chooses an id and generation StartStep; every
// restart keeps the id and adds StartStep.
func testStart(t *testing.T, newStore NewStore) {
	o := newStore(t, 0)
	b := open(t, o)
	first := info(t, b)
	if len(first.ID) != 32 || strings.Trim(first.ID, "0123456789abcdef") != "" {
		t.Errorf("id %q: want 32 lower-case hex digits", first.ID)
	}
	if first.Generation != mediator.StartStep || first.Pods != 0 || first.ResetGeneration != 0 {
		t.Errorf("first start: %+v, want generation %d and no pods", first, mediator.StartStep)
	}
	prev := first
	for range 3 {
		if err := b.Close(); err != nil {
			t.Fatal(err)
		}
		b = open(t, o)
		in := info(t, b)
		if in.ID != first.ID || in.Generation != prev.Generation+mediator.StartStep {
			t.Fatalf("restart: %+v after %+v: want the same id and the generation %d higher", in, prev, mediator.StartStep)
		}
		prev = in
	}
}

// step is one elect of a script and the answer it must get.
type step struct {
	pod    string
	epoch  uint64
	array  string
	won    bool
	answer uint64 // the answer's epoch
	winner string
	change bool // the generation grows by ChangeStep
}

// raceScript exercises every branch of the rule: first caller wins, a
// retry wins again without a change, the other array at the same epoch
// loses, stale epochs lose (also the winner's own), a newer epoch wins,
// skipping epochs wins, pods are independent.
var raceScript = []step{
	{"p1", 5, "a", true, 6, "a", true},
	{"p1", 5, "b", false, 6, "a", false},
	{"p1", 5, "a", true, 6, "a", false},
	{"p1", 4, "b", false, 6, "a", false},
	{"p1", 4, "a", false, 6, "a", false},
	{"p1", 3, "a", false, 6, "a", false},
	{"p2", 1, "b", true, 2, "b", true},
	{"p1", 6, "b", true, 7, "b", true},
	{"p1", 6, "a", false, 7, "b", false},
	{"p1", 5, "a", false, 7, "b", false},
	{"p1", 6, "b", true, 7, "b", false},
	{"p1", 20, "a", true, 21, "a", true},
	{"p1", 7, "b", false, 21, "a", false},
	{"p2", 1, "a", false, 2, "b", false},
	{"p2", 2, "a", true, 3, "a", true},
	{"p3", math.MaxUint64 - 1, "c", true, math.MaxUint64, "c", true},
	{"p3", math.MaxUint64 - 1, "a", false, math.MaxUint64, "c", false},
}

func runScript(t *testing.T, b mediator.Backend, script []step) {
	t.Helper()
	gen := info(t, b).Generation
	for i, s := range script {
		res, g := elect(t, b, s.pod, s.epoch, s.array)
		want := mediator.ElectResult{Won: s.won, Epoch: s.answer, Winner: s.winner}
		if res != want {
			t.Fatalf("step %d: elect(%s, %d, %s) = %+v, want %+v", i, s.pod, s.epoch, s.array, res, want)
		}
		wantGen := gen
		if s.change {
			wantGen += mediator.ChangeStep
		}
		if g != wantGen {
			t.Fatalf("step %d: elect(%s, %d, %s): generation %d, want %d (was %d; changed: %v)", i, s.pod, s.epoch, s.array, g, wantGen, gen, s.change)
		}
		gen = g
	}
	if in := info(t, b); in.Generation != gen {
		t.Fatalf("info generation %d after answers at %d", in.Generation, gen)
	}
}

func testRace(t *testing.T, newStore NewStore) {
	b := open(t, newStore(t, 0))
	runScript(t, b, raceScript)
	if n := info(t, b).Pods; n != 3 {
		t.Errorf("%d pods, want 3", n)
	}
}

// testDurable: every answer's record and generation survive a restart
// that follows it at once; a retry after a restart is still answered won,
// a stale request still loses.
func testDurable(t *testing.T, newStore NewStore) {
	o := newStore(t, 0)
	b := open(t, o)
	id := info(t, b).ID
	for i, s := range raceScript {
		res, gen := elect(t, b, s.pod, s.epoch, s.array)
		if want := (mediator.ElectResult{Won: s.won, Epoch: s.answer, Winner: s.winner}); res != want {
			t.Fatalf("step %d: elect(%s, %d, %s) = %+v, want %+v", i, s.pod, s.epoch, s.array, res, want)
		}
		if err := b.Close(); err != nil {
			t.Fatal(err)
		}
		b = open(t, o)
		if in := info(t, b); in.ID != id || in.Generation != gen+mediator.StartStep {
			t.Fatalf("step %d: restart after an answer at generation %d: %+v", i, gen, in)
		}
	}
	// Every pod's last record is still there: a stale request names it,
	// the last winner's retry wins again.
	for _, last := range []step{raceScript[12], raceScript[14], raceScript[16]} {
		if res, _ := elect(t, b, last.pod, 1, "z"); res.Won || res.Epoch != last.answer || res.Winner != last.winner {
			t.Fatalf("%s after restarts: %+v, want lost to %s at %d", last.pod, res, last.winner, last.answer)
		}
	}
	if res, _ := elect(t, b, "p1", 20, "a"); !res.Won || res.Epoch != 21 {
		t.Fatalf("p1's last winner's retry after restarts: %+v", res)
	}
}

func testInvalid(t *testing.T, newStore NewStore) {
	b := open(t, newStore(t, 0))
	before := info(t, b)
	for _, req := range []mediator.ElectRequest{
		{Pod: "", Epoch: 1, Array: "a"},
		{Pod: "p", Epoch: 1, Array: ""},
		{Pod: "p", Epoch: 0, Array: "a"},
		{Pod: "p", Epoch: math.MaxUint64, Array: "a"},
		{Pod: "p p", Epoch: 1, Array: "a"},
		{Pod: "p", Epoch: 1, Array: strings.Repeat("a", mediator.MaxIDLen+1)},
	} {
		if _, _, err := b.Elect(context.Background(), req); !errors.Is(err, mediator.ErrInvalid) {
			t.Errorf("elect %+v: %v, want ErrInvalid", req, err)
		}
	}
	if after := info(t, b); after != before {
		t.Errorf("invalid requests changed the state: %+v, was %+v", after, before)
	}
}

// testFull: a new pod beyond the limit is refused and changes nothing;
// the pods already known still race.
func testFull(t *testing.T, newStore NewStore) {
	const limit = 3
	b := open(t, newStore(t, limit))
	for i := range limit {
		elect(t, b, fmt.Sprintf("p%d", i), 1, "a")
	}
	before := info(t, b)
	if _, _, err := b.Elect(context.Background(), mediator.ElectRequest{Pod: "p9", Epoch: 1, Array: "a"}); !errors.Is(err, mediator.ErrFull) {
		t.Fatalf("pod %d of %d: %v, want ErrFull", limit+1, limit, err)
	}
	if after := info(t, b); after != before {
		t.Fatalf("a refused pod changed the state: %+v, was %+v", after, before)
	}
	if res, _ := elect(t, b, "p0", 2, "b"); !res.Won {
		t.Fatalf("a known pod no longer races when full: %+v", res)
	}
}

func testClosed(t *testing.T, newStore NewStore) {
	o := newStore(t, 0)
	b := open(t, o)
	elect(t, b, "p", 1, "a")
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if err := b.Close(); err != nil {
		t.Fatalf("second close: %v", err)
	}
	if _, _, err := b.Elect(context.Background(), mediator.ElectRequest{Pod: "p", Epoch: 2, Array: "a"}); !errors.Is(err, mediator.ErrClosed) {
		t.Errorf("elect after close: %v, want ErrClosed", err)
	}
	if _, err := b.Info(context.Background()); !errors.Is(err, mediator.ErrClosed) {
		t.Errorf("info after close: %v, want ErrClosed", err)
	}
	b2 := open(t, o)
	if res, _ := elect(t, b2, "p", 1, "b"); res.Won || res.Winner != "a" {
		t.Errorf("after reopen: %+v, want lost to a", res)
	}
}

// testConcurrent races two arrays for several pods, round after round,
// each array sending its request twice at once (a retry racing the
// original), in a random order: exactly one array wins each pod's round,
// all four answers agree on it, the winner's retry wins too, and every
// answer's generation includes the round's change.
func testConcurrent(t *testing.T, newStore NewStore) {
	rounds := 200
	if testing.Short() {
		rounds = 40
	}
	const pods = 4
	arrays := []string{"array-a", "array-b"}
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 1))
	b := open(t, newStore(t, 0))
	wins := map[string]int{}
	for round := range rounds {
		epoch := uint64(round + 1)
		type answer struct {
			pod   int
			array string
			res   mediator.ElectResult
			gen   uint64
			err   error
		}
		type call struct {
			pod   int
			array string
		}
		var calls []call
		for p := range pods {
			for _, a := range arrays {
				calls = append(calls, call{p, a}, call{p, a})
			}
		}
		rng.Shuffle(len(calls), func(i, j int) { calls[i], calls[j] = calls[j], calls[i] })
		answers := make(chan answer, len(calls))
		before := info(t, b).Generation
		var wg sync.WaitGroup
		for _, c := range calls {
			wg.Go(func() {
				res, gen, err := b.Elect(context.Background(), mediator.ElectRequest{Pod: fmt.Sprintf("pod%d", c.pod), Epoch: epoch, Array: c.array})
				answers <- answer{c.pod, c.array, res, gen, err}
			})
		}
		wg.Wait()
		close(answers)
		perPod := make([][]answer, pods)
		for an := range answers {
			if an.err != nil {
				t.Fatalf("round %d: %v", round, an.err)
			}
			if an.gen < before+mediator.ChangeStep {
				t.Fatalf("round %d: answer at generation %d: does not include the round's change (before: %d)", round, an.gen, before)
			}
			perPod[an.pod] = append(perPod[an.pod], an)
		}
		for p, ans := range perPod {
			winner := ans[0].res.Winner
			winners := map[string]bool{}
			for _, an := range ans {
				if an.res.Winner != winner || an.res.Epoch != epoch+1 || an.res.Won != (an.array == winner) {
					t.Fatalf("round %d pod%d: answers disagree: %+v", round, p, ans)
				}
				if an.res.Won {
					winners[an.array] = true
				}
			}
			if len(winners) != 1 {
				t.Fatalf("round %d pod%d: %d winners: %+v", round, p, len(winners), ans)
			}
			wins[winner]++
		}
		if after := info(t, b).Generation; after != before+pods*mediator.ChangeStep {
			t.Fatalf("round %d: generation %d after %d changes from %d", round, after, pods, before)
		}
	}
	for _, a := range arrays {
		if wins[a] < rounds*pods/10 {
			t.Fatalf("array %s won %d of %d races: the schedule does not race the arrays", a, wins[a], rounds*pods)
		}
	}
}

// testModel applies random requests and restarts to the backend and to
// Memory, the reference, and compares every answer.
func testModel(t *testing.T, newStore NewStore) {
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 0))
	o := newStore(t, 0)
	b := open(t, o)
	ref := NewMemory(0)
	rb, _ := ref.Open()
	steps := 2000
	if testing.Short() {
		steps = 300
	}
	var epochs [4]uint64
	changes, restarts := 0, 0
	for i := range steps {
		if rng.IntN(100) == 0 {
			_ = b.Close()
			_ = rb.Close()
			b = open(t, o)
			rb, _ = ref.Open()
			restarts++
		}
		p := rng.IntN(len(epochs))
		epoch := uint64(max(1, int64(epochs[p])+int64(rng.IntN(4))-1))
		req := mediator.ElectRequest{Pod: fmt.Sprintf("pod%d", p), Epoch: epoch, Array: fmt.Sprintf("array-%c", 'a'+rng.IntN(3))}
		got, ggen, err := b.Elect(context.Background(), req)
		if err != nil {
			t.Fatalf("step %d: %+v: %v", i, req, err)
		}
		want, wgen, _ := rb.Elect(context.Background(), req)
		if got != want || ggen != wgen {
			t.Fatalf("step %d (seed %d): %+v: %+v at %d, the reference %+v at %d", i, seed, req, got, ggen, want, wgen)
		}
		if want.Won && want.Epoch > epochs[p] {
			epochs[p] = want.Epoch
			changes++
		}
	}
	if changes < steps/10 || restarts < steps/200 {
		t.Fatalf("only %d changes and %d restarts in %d steps: the random schedule is not exercising the backend", changes, restarts, steps)
	}
}
