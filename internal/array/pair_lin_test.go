package array

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"

	"github.com/metro-storage/metro/internal/catalog"
	"github.com/metro-storage/metro/internal/netproxy"
	"github.com/metro-storage/metro/internal/replication"
	"github.com/metro-storage/metro/internal/scsi"
)

// linConfig parameterises a randomized run.
type linConfig struct {
	// ioPhase is how long clients run while faults are injected.
	ioPhase time.Duration
	seed    uint64
	// mediator: a mediator serves the pair, the faults include cutting
	// an array from it and changing the pod's failover preference, and
	// link cuts move the pod between the arrays (failovers).
	mediator bool
}

const (
	// linBaseLBA is the first block of the checked region; unit u is the
	// 8 blocks from linBaseLBA + 8u.
	linBaseLBA = 0
	// freshBaseLBA is where write-once units start: each fresh write goes
	// to a unit never written before.
	freshBaseLBA = 1 << 12
	// freshMax bounds the write-once units.
	freshMax = 4096
)

func linLBA(unit int) uint64 { return linBaseLBA + 8*uint64(unit) }

// prPreemptAndAbort is the PERSISTENT RESERVE OUT service action.
const prPreemptAndAbort = 0x05

// linStats counts what happened, for the log.
type linStats struct {
	mu sync.Mutex
	// byKind counts recorded operations by kind and outcome.
	byKind map[string]int
	// senses counts failures by sense.
	senses map[string]int
	// unexpected lists failures no fault explains.
	unexpected []string
	// droppedReads counts reads that failed (not recorded).
	droppedReads int
	partitions   int
	partitioned  time.Duration
	slowed       int
	// mediatorCuts counts an array's route to the mediator cut;
	// failovers the times the pod's sequencer changed.
	mediatorCuts, failovers int
}

func (s *linStats) count(kind, outcome string) {
	s.mu.Lock()
	s.byKind[kind+" "+outcome]++
	s.mu.Unlock()
}

// failure records a failed command's result, and lists it as unexpected
// unless a fault of the link explains it (NOT READY: unavailable or
// transitioning).
func (s *linStats) failure(what string, r *scsi.Result) {
	d := describe(r)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.senses[d]++
	sense, _ := senseOf(r)
	// A PREEMPT AND ABORT of another client aborts this one's tasks.
	expected := r.Aborted || sense.Is(scsi.SenseNotReadyUnavailable()) || sense.Is(scsi.SenseNotReadyTransitioning())
	if !expected && len(s.unexpected) < 20 {
		s.unexpected = append(s.unexpected, what+": "+d)
	}
}

// freshWrite is a write to a write-once unit.
type freshWrite struct {
	value uint64
	acked bool
	// through is the array the write was sent to, call and ret its
	// history times, answer what the host got, and state the pod as that
	// array saw it just after the answer (for the failure message).
	through   string
	call, ret int64
	answer    string
	state     string
}

// acknowledged reports whether a host got GOOD for a command. A task
// aborted by task management (a PREEMPT AND ABORT of another client, an
// ABORT TASK) is a Result with Aborted set and a zero Status, which is
// GOOD's value: the host got no status for it, and its write may or may
// not have been made.
func acknowledged(r *scsi.Result) bool { return r.Status == scsi.StatusGood && !r.Aborted }

// linClient is one simulated host port doing random operations.
type linClient struct {
	id    int
	in    *initiator
	rng   *rand.Rand
	rec   *linRecorder
	stats *linStats
	// reader: the client only reads.
	reader bool
	// known is the value this client last saw (or wrote) in each unit:
	// what its COMPARE AND WRITE expects.
	known [linUnits]uint64
	seq   uint64
	// key is the key the client last registered (0: none); seen the keys
	// its last READ KEYS listed, which PREEMPT AND ABORT picks from.
	key  uint64
	seen []uint64
	// unsure is the client's last command when its outcome was unknown.
	unsure *linInput
	// fresh hands out write-once units; freshMu guards freshes.
	fresh   *atomic.Int64
	freshMu *sync.Mutex
	freshes map[int64]freshWrite
}

// value returns a value no one else writes.
func (c *linClient) value() uint64 {
	c.seq++
	return uint64(c.id+1)<<40 | c.seq
}

// run does operations until stop is set.
func (c *linClient) run(stop *atomic.Bool) {
	for !stop.Load() {
		if !c.step() {
			c.waitServing(stop)
		}
		// A little think time keeps the history small enough to check.
		think := 1500
		if c.reader {
			think = 4000
		}
		time.Sleep(time.Duration(c.rng.IntN(think)) * time.Microsecond)
	}
}

// waitServing polls TEST UNIT READY until the client's array serves the
// pod again (or stop): a host whose path failed waits for it too, and
// this bounds the operations of unknown outcome.
func (c *linClient) waitServing(stop *atomic.Bool) {
	for !stop.Load() {
		if r, _ := c.in.doPastUA(testUnitReady(), nil, 0); r.Status == scsi.StatusGood {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// step does one random operation and reports whether it succeeded.
func (c *linClient) step() bool {
	in := linInput{Client: c.id, Array: c.in.arr.cfg.Name}
	p := c.rng.IntN(100)
	if c.reader {
		// Only reads, never blocked by a write held up by a partition, so
		// that some run on the follower just as its read lease runs out.
		p = []int{40, 40, 40, 40, 86}[c.rng.IntN(5)]
	}
	switch {
	case p < 35:
		in.Kind = linWrite
	case p < 70:
		in.Kind = linRead
	case p < 80:
		in.Kind = linCAW
	case p < 84:
		in.Kind = linRegister
	case p < 90:
		in.Kind = linReadKeys
	case p < 94:
		in.Kind = linPreempt
	default:
		return c.writeOnce()
	}
	in.N = 1 + c.rng.IntN(linMaxSpan)
	if in.Kind == linCAW {
		in.N = 1
	}
	in.Unit = c.rng.IntN(linUnits - in.N + 1)
	lba := linLBA(in.Unit)
	var cdb, out []byte
	var dataIn uint32
	switch in.Kind {
	case linWrite:
		for i := 0; i < in.N; i++ {
			in.Values[i] = c.value()
			out = append(out, unitData(linLBA(in.Unit+i), in.Values[i])...)
		}
		cdb = write16(lba, out)
	case linRead:
		cdb, dataIn = read16(lba, uint32(8*in.N)), uint32(4096*in.N)
	case linCAW:
		in.Values[0], in.Values[1] = c.known[in.Unit], c.value()
		out = append(unitData(lba, in.Values[0]), unitData(lba, in.Values[1])...)
		cdb = compareAndWrite16(lba, 8)
	case linRegister:
		if c.rng.IntN(5) > 0 {
			in.Values[0] = c.value()
		}
		cdb, out = prRegisterIgnore(in.Values[0])
	case linReadKeys:
		cdb, dataIn = prInReadKeys(), 1024
	case linPreempt:
		// Fence another client: a key of its last READ KEYS that is not
		// its own (registering instead when it has none).
		victims := slices.DeleteFunc(slices.Clone(c.seen), func(k uint64) bool { return k == c.key })
		if c.key == 0 || len(victims) == 0 {
			in.Kind = linRegister
			in.Values[0] = c.value()
			cdb, out = prRegisterIgnore(in.Values[0])
			break
		}
		in.Values[0], in.Values[1] = c.key, victims[c.rng.IntN(len(victims))]
		if u := c.unsure; u != nil && u.Kind == linPreempt && u.Values == in.Values {
			in.Retry = true
		}
		cdb, out = preemptAbortCDB(in.Values[0], in.Values[1], 5)
	}
	if in.Kind == linRegister {
		// Its outcome unknown, the client acts as if it took.
		c.key = in.Values[0]
	}
	call := c.rec.now()
	r, _ := c.in.doPastUA(cdb, out, dataIn)
	ret := c.rec.now()
	var o linOutput
	c.unsure = nil
	switch {
	case r.Status == scsi.StatusGood && !r.Aborted:
		switch in.Kind {
		case linWrite:
			copy(c.known[in.Unit:], in.Values[:in.N])
		case linRead:
			for i := 0; i < in.N; i++ {
				o.Values[i] = unitValue(linLBA(in.Unit+i), r.Data[4096*i:4096*(i+1)])
			}
			copy(c.known[in.Unit:], o.Values[:in.N])
		case linCAW:
			c.known[in.Unit] = in.Values[1]
		case linReadKeys:
			keys, err := parseKeys(r.Data)
			if err != nil {
				c.stats.failure("READ KEYS data: "+err.Error(), r)
				return false
			}
			slices.Sort(keys)
			o.Keys = keys
			c.seen = keys
			if !slices.Contains(keys, c.key) {
				c.key = 0 // preempted
			}
		}
		c.stats.count(in.Kind.String(), "ok")
	case in.Kind == linPreempt && r.Status == scsi.StatusReservationConflict:
		o.Conflict = true
		c.stats.count(in.Kind.String(), "conflict")
	case in.Kind == linCAW && isMiscompare(r):
		o.Miscompare = true
		c.stats.count(in.Kind.String(), "miscompare")
	default:
		c.stats.failure(fmt.Sprintf("%s through %s", in.Kind, in.Array), r)
		if in.Kind == linRead || in.Kind == linReadKeys {
			// A failed read changed nothing: it is left out.
			c.stats.mu.Lock()
			c.stats.droppedReads++
			c.stats.mu.Unlock()
			return false
		}
		o.Unknown, o.Sense = true, describe(r)
		c.unsure = &in
		c.stats.count(in.Kind.String(), "unknown")
		c.rec.add(c.id, in, o, call, ret)
		return false
	}
	c.rec.add(c.id, in, o, call, ret)
	return true
}

func isMiscompare(r *scsi.Result) bool {
	s, ok := senseOf(r)
	return ok && s.Is(scsi.SenseMiscompare(0))
}

// writeOnce writes a unit no one wrote before and remembers whether it
// was acknowledged.
func (c *linClient) writeOnce() bool {
	k := c.fresh.Add(1) - 1
	if k >= freshMax {
		return true
	}
	lba := freshBaseLBA + 8*uint64(k)
	v := c.value()
	d := unitData(lba, v)
	call := c.rec.now()
	r, _ := c.in.doPastUA(write16(lba, d), d, 0)
	fw := freshWrite{value: v, acked: acknowledged(r), through: c.in.arr.cfg.Name, call: call, ret: c.rec.now(), answer: describe(r)}
	if cp := c.in.arr.cat.View().Pods[pairPod]; cp != nil {
		if s := c.in.arr.repl.Status(cp); s != nil {
			fw.state = fmt.Sprintf("%s %s at epoch %d (sequencer %s)", c.in.arr.cfg.Name, s.State, s.Epoch, s.Sequencer)
		}
	}
	c.freshMu.Lock()
	c.freshes[k] = fw
	c.freshMu.Unlock()
	if !fw.acked {
		c.stats.failure("fresh write through "+c.in.arr.cfg.Name, r)
		outcome := "unknown"
		if r.Aborted {
			outcome = "aborted"
		}
		c.stats.count("fresh-write", outcome)
		return false
	}
	c.stats.count("fresh-write", "ok")
	return true
}

// faults cuts and heals the link at random until stop, sometimes with
// a round trip added.
func faults(px *netproxy.Proxy, rng *rand.Rand, stats *linStats, stop *atomic.Bool, until time.Time, mark func(msg string, args ...any)) {
	sleep := func(d time.Duration) bool { return sleepUnless(stop, d) }
	for {
		if !sleep(500*time.Millisecond + time.Duration(rng.Int64N(int64(2*time.Second)))) {
			return
		}
		s := px.Settings()
		s.RTT = 0
		if rng.IntN(3) == 0 {
			s.RTT = []time.Duration{time.Millisecond, 5 * time.Millisecond, 11 * time.Millisecond}[rng.IntN(3)]
			stats.mu.Lock()
			stats.slowed++
			stats.mu.Unlock()
		}
		px.Set(s)
		mark("link round trip set", "rtt", s.RTT)
		if time.Until(until) < time.Second {
			return
		}
		d := 500*time.Millisecond + time.Duration(rng.Int64N(int64(2500*time.Millisecond)))
		px.Partition(true)
		mark("link cut", "for", d)
		stats.mu.Lock()
		stats.partitions++
		stats.partitioned += d
		stats.mu.Unlock()
		ok := sleep(d)
		px.Partition(false)
		mark("link healed")
		if !ok {
			return
		}
	}
}

// sleepUnless sleeps d, or less if stop is set meanwhile; it reports
// whether it slept all of d.
func sleepUnless(stop *atomic.Bool, d time.Duration) bool {
	end := time.Now().Add(d)
	for time.Now().Before(end) {
		if stop.Load() {
			return false
		}
		time.Sleep(min(20*time.Millisecond, time.Until(end)))
	}
	return true
}

// mediatedFaults is faults with a mediator: before each link cut the
// pod's failover preference is set (to the array that is not the
// sequencer two times in three, and always the first time, so that
// failovers happen), and some cuts come with one array's route to the
// mediator cut too (an isolated array). It counts the sequencer's
// changes.
func mediatedFaults(h *pairHarness, rng *rand.Rand, stats *linStats, stop *atomic.Bool, until time.Time, mark func(msg string, args ...any)) {
	sleep := func(d time.Duration) bool { return sleepUnless(stop, d) }
	seq := func() string {
		if v := h.podView(0); v != nil {
			return v.Sequencer
		}
		return ""
	}
	last := seq()
	for first := true; ; first = false {
		if !sleep(500*time.Millisecond + time.Duration(rng.Int64N(int64(time.Second)))) {
			return
		}
		if time.Until(until) < 3*time.Second {
			return
		}
		cur := seq()
		pref := ""
		switch {
		case first || rng.IntN(3) < 2:
			for _, a := range h.arrays {
				if a.cfg.Name != cur {
					pref = a.cfg.Name
				}
			}
		case rng.IntN(2) == 0:
			pref = cur
		}
		for i := range h.arrays {
			// Through whichever array takes the change now.
			if err := h.arrays[i].Apply(context.Background(), catalog.SetPodAttr{Name: pairPod, FailoverPreference: &pref}); err == nil {
				break
			}
		}
		cutMed := -1
		if !first && rng.IntN(4) == 0 {
			cutMed = rng.IntN(2)
			h.medProxy[cutMed].Partition(true)
			stats.mu.Lock()
			stats.mediatorCuts++
			stats.mu.Unlock()
		}
		d := 2500*time.Millisecond + time.Duration(rng.Int64N(int64(1500*time.Millisecond)))
		h.proxy.Partition(true)
		mark("link cut", "for", d, "preference", pref, "mediator_cut", cutMed)
		stats.mu.Lock()
		stats.partitions++
		stats.partitioned += d
		stats.mu.Unlock()
		ok := sleep(d)
		h.proxy.Partition(false)
		if cutMed >= 0 {
			h.medProxy[cutMed].Partition(false)
		}
		mark("link healed")
		if now := seq(); now != last && now != "" {
			stats.mu.Lock()
			stats.failovers++
			stats.mu.Unlock()
			mark("the pod moved", "from", last, "to", now)
			last = now
		}
		if !ok {
			return
		}
	}
}

func runLinearizable(t *testing.T, cfg linConfig) {
	began := time.Now()
	h := newPairWith(t, pairOptions{mediator: cfg.mediator})
	h.stretch()
	if cfg.mediator {
		h.waitMediator(replication.MediatorOnline)
	}
	setupTook := time.Since(began)
	rng := rand.New(rand.NewPCG(cfg.seed, 0))
	rec := newLinRecorder()
	mark := func(msg string, args ...any) { h.log.Info(msg, append(args, "history_ms", ms(rec.now()))...) }
	mark("history starts")
	stats := &linStats{byKind: map[string]int{}, senses: map[string]int{}}
	var fresh atomic.Int64
	var freshMu sync.Mutex
	freshes := map[int64]freshWrite{}

	clients := make([]*linClient, linClients)
	for i := range clients {
		arr := h.arrays[i%2]
		c := &linClient{id: i, in: newInitiator(arr, pairIQN, 0x1000+uint64(i)), rng: rand.New(rand.NewPCG(cfg.seed, uint64(i+1))),
			rec: rec, stats: stats, fresh: &fresh, freshMu: &freshMu, freshes: freshes, reader: i >= linClients-2}
		if _, r := c.in.drainUAs(); r.Status != scsi.StatusGood {
			t.Fatalf("client %d: TEST UNIT READY through %s: %s", i, arr.cfg.Name, describe(r))
		}
		clients[i] = c
	}

	var stop, stopFaults atomic.Bool
	var wg sync.WaitGroup
	for _, c := range clients {
		wg.Go(func() { c.run(&stop) })
	}
	until := time.Now().Add(cfg.ioPhase)
	if cfg.mediator {
		wg.Go(func() { mediatedFaults(h, rng, stats, &stopFaults, until, mark) })
	} else {
		wg.Go(func() { faults(h.proxy, rng, stats, &stopFaults, until, mark) })
	}
	time.Sleep(cfg.ioPhase)
	stopFaults.Store(true)
	stop.Store(true)
	finished := make(chan struct{})
	go func() { wg.Wait(); close(finished) }()
	select {
	case <-finished:
	case <-time.After(30 * time.Second):
		t.Fatalf("clients still running 30s after the I/O phase ended (a command hangs?):\n%s", allStacks())
	}
	ioTook := time.Since(began) - setupTook

	// Heal, wait for the pod to be in sync, then read everything through
	// both arrays (recorded: the final values must agree with the model).
	h.proxy.Set(netproxy.Settings{})
	for _, px := range h.medProxy {
		if px != nil {
			px.Partition(false)
		}
	}
	mark("I/O phase over; link healed")
	healed := time.Now()
	h.waitInSync(60 * time.Second)
	resyncTook := time.Since(healed)
	for _, c := range []*linClient{clients[0], clients[1]} {
		if _, r := c.in.drainUAs(); r.Status != scsi.StatusGood {
			t.Fatalf("TEST UNIT READY through %s once in sync: %s", c.in.arr.cfg.Name, describe(r))
		}
	}
	for _, c := range []*linClient{clients[0], clients[1], clients[0]} {
		in := linInput{Kind: linRead, Client: c.id, Array: c.in.arr.cfg.Name, Unit: 0, N: linUnits}
		call := rec.now()
		r, _ := c.in.doPastUA(read16(linLBA(0), 8*linUnits), nil, 4096*linUnits)
		if r.Status != scsi.StatusGood {
			t.Fatalf("final READ through %s: %s", c.in.arr.cfg.Name, describe(r))
		}
		var o linOutput
		for i := 0; i < linUnits; i++ {
			o.Values[i] = unitValue(linLBA(i), r.Data[4096*i:4096*(i+1)])
		}
		rec.add(c.id, in, o, call, rec.now())
		call = rec.now()
		r, _ = c.in.doPastUA(prInReadKeys(), nil, 1024)
		if r.Status != scsi.StatusGood {
			t.Fatalf("final READ KEYS through %s: %s", c.in.arr.cfg.Name, describe(r))
		}
		keys, err := parseKeys(r.Data)
		if err != nil {
			t.Fatal(err)
		}
		slices.Sort(keys)
		rec.add(c.id, linInput{Kind: linReadKeys, Client: c.id, Array: c.in.arr.cfg.Name}, linOutput{Keys: keys}, call, rec.now())
	}

	// Both copies identical, block by block, over the whole volume.
	compareCopies(t, clients[0].in, clients[1].in, 0, pairVolSize/512)

	// Write-once units: an acknowledged write is there; one of unknown
	// outcome left its value or nothing.
	// freshLost counts the reads of units of unknown outcome that hold
	// nothing, abortedLost those of aborted writes among them.
	freshLost, abortedLost := 0, 0
	for k, fw := range freshes {
		lba := freshBaseLBA + 8*uint64(k)
		for _, c := range []*linClient{clients[0], clients[1]} {
			r, _ := c.in.doPastUA(read16(lba, 8), nil, 4096)
			if r.Status != scsi.StatusGood {
				t.Fatalf("read write-once unit %d through %s: %s", k, c.in.arr.cfg.Name, describe(r))
			}
			got := unitValue(lba, r.Data)
			switch {
			case got == fw.value:
			case !fw.acked && got == 0:
				freshLost++
				if fw.answer == "aborted" {
					abortedLost++
				}
			default:
				t.Errorf("write-once unit %d (lba %d) through %s: read %#x, wrote %#x through %s at history %.1f-%.1f ms (answer %s, acknowledged: %v; just after: %s)",
					k, lba, c.in.arr.cfg.Name, got, fw.value, fw.through, ms(fw.call), ms(fw.ret), fw.answer, fw.acked, fw.state)
			}
		}
	}

	history := rec.finish()
	checkStart := time.Now()
	model := linModel()
	res, info := porcupine.CheckOperationsVerbose(model, history, 60*time.Second)
	checkTook := time.Since(checkStart)

	stats.mu.Lock()
	var kinds []string
	for k, n := range stats.byKind {
		kinds = append(kinds, fmt.Sprintf("%s=%d", k, n))
	}
	sort.Strings(kinds)
	var senses []string
	for k, n := range stats.senses {
		senses = append(senses, fmt.Sprintf("%s=%d", k, n))
	}
	sort.Strings(senses)
	t.Logf("history: %d operations checked (%s); failed reads left out: %d; write-once units: %d (%d of unknown outcome not applied, %d of them aborted)",
		len(history), strings.Join(kinds, " "), stats.droppedReads, len(freshes), freshLost/2, abortedLost/2)
	t.Logf("faults: %d partitions (%s in all), %d link slowdowns, %d mediator cuts, %d failovers; failures seen: %s",
		stats.partitions, stats.partitioned.Round(time.Millisecond), stats.slowed, stats.mediatorCuts, stats.failovers, strings.Join(senses, " "))
	// Floors: a run where most commands failed, or no fault (or, with
	// the mediator, no failover) happened, proves nothing.
	ok := 0
	for k, n := range stats.byKind {
		if strings.HasSuffix(k, " ok") {
			ok += n
		}
	}
	fenced := stats.byKind["preempt ok"]
	if min := 20 * int(cfg.ioPhase/time.Second); ok < min || fenced < 1 || stats.partitions < 1 || (cfg.mediator && stats.failovers < 1) {
		t.Errorf("below the floors: %d successful operations (at least %d), %d successful PREEMPT AND ABORTs (at least 1), %d partitions (at least 1), %d failovers (at least 1 with the mediator)",
			ok, min, fenced, stats.partitions, stats.failovers)
	}
	t.Logf("time: setup %s, I/O %s, final resync %s, check %s (%s)",
		setupTook.Round(time.Millisecond), ioTook.Round(time.Millisecond), resyncTook.Round(time.Millisecond), checkTook.Round(time.Millisecond), res)
	unexpected := slices.Clone(stats.unexpected)
	stats.mu.Unlock()
	for _, u := range unexpected {
		t.Errorf("failure no link fault explains: %s", u)
	}
	switch res {
	case porcupine.Ok:
	case porcupine.Illegal:
		t.Errorf("the history is not linearizable; %s\n%s", writeVisualization(t, model, info), linExplain(model, history))
	default:
		t.Errorf("the linearizability check did not finish in time (%s); %s", res, writeVisualization(t, model, info))
	}
}

// writeVisualization writes porcupine's visualization to a directory that
// outlives the test and says where.
func writeVisualization(t *testing.T, model porcupine.Model, info porcupine.LinearizationInfo) string {
	dir := os.Getenv("METRO_PAIR_ARTIFACTS")
	if dir == "" {
		var err error
		if dir, err = os.MkdirTemp("", "metro-pair-"); err != nil {
			return "no visualization: " + err.Error()
		}
	}
	path := filepath.Join(dir, t.Name()+".html")
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return "no visualization: " + err.Error()
	}
	if err := porcupine.VisualizePath(model, info, path); err != nil {
		return "no visualization: " + err.Error()
	}
	return "visualization: " + path
}

// compareCopies reads blocks [from, to) through both initiators (each
// array serves reads from its own copy) and fails at the first block
// that differs. from and to are multiples of 2048.
func compareCopies(t *testing.T, a, b *initiator, from, to uint64) {
	t.Helper()
	const chunk = 2048 // blocks
	for lba := from; lba < to; lba += chunk {
		ra, _ := a.doPastUA(read16(lba, chunk), nil, chunk*512)
		rb, _ := b.doPastUA(read16(lba, chunk), nil, chunk*512)
		if ra.Status != scsi.StatusGood || rb.Status != scsi.StatusGood {
			t.Fatalf("compare copies at lba %d: %s: %s, %s: %s", lba, a.arr.cfg.Name, describe(ra), b.arr.cfg.Name, describe(rb))
		}
		if bytes.Equal(ra.Data, rb.Data) {
			continue
		}
		for i := 0; i < chunk; i++ {
			da, db := ra.Data[512*i:512*(i+1)], rb.Data[512*i:512*(i+1)]
			if !bytes.Equal(da, db) {
				at := lba + uint64(i)
				unit := at &^ 7
				t.Fatalf("the copies differ at lba %d: %s has %x…, %s has %x… (4 KiB unit at lba %d: values %#x and %#x)",
					at, a.arr.cfg.Name, da[:16], b.arr.cfg.Name, db[:16], unit,
					unitValue(unit, ra.Data[512*(unit-lba):512*(unit-lba+8)]), unitValue(unit, rb.Data[512*(unit-lba):512*(unit-lba+8)]))
			}
		}
	}
}
