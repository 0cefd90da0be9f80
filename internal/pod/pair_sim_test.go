package pod

import (
	"flag"
	"fmt"
	"maps"
	"math/rand"
	"slices"
	"strings"
	"testing"
	"time"
)

// The randomized pair simulation drives two arrays' machines and a
// mediator, as the replication package and the mediator service would,
// through seeded random schedules: link cuts in one or both directions,
// heartbeats, time passing, mediator outages (for one array or both at
// once), elect requests and answers delivered late or lost, records
// persisted late or failing, kills and restarts, host writes and reads,
// copies and checkpoints, handovers, removals and restretches, and
// preference changes. Messages are delivered in order within a link
// session (or, in the stale mode, answers also after it ended and out of
// order). A request the machine decides (resync, grant, pre-election,
// removal, handover) may wait in the driver's outbox until it sends it,
// on the session it was decided on (the call fails if that one has
// ended; the planted bug "stale-request" sends it on whichever session
// is up then). A peer's write is checked at its epoch when it arrives and
// applied to the copy in a later step; the driver's per-pod barrier
// holds the peer's requests that change the pod's epoch or state, and
// the array's own records that change its epoch, until the writes
// checked before them are applied. After every step it
// checks the invariants below; at the end it heals everything and
// checks that the pod gets back in sync (or stays with one array, after
// a removal) with identical copies.
//
// The model of the world around the machines:
//   - The link is two directions; a session needs both. A ping renews
//     the sender's lease (send time plus Timeout, less a fifth) only
//     when its answer comes back; the receiver hears the sender. A side
//     declares the session dead after Timeout without hearing the other,
//     or when its lease ends while it serves under it (LeaseExpired);
//     closing is seen at once by the other side if the direction to it
//     works.
//   - Host writes go to the sequencer (or an array serving alone), one at
//     a time per block (the SCSI range lock); a write acknowledged is on
//     every array that serves the pod. Values grow, so a stale read is
//     one older than the block's latest acknowledged write.
//   - Each array has its data and its durable data: the receiver of a
//     copy writes without syncing until a checkpoint or the grant; every
//     other write is durable. A restart loses what was not durable, and
//     the change tracking (in memory).
//   - The owner's tracking says the peer's durable copy as of a tag
//     (the epoch it was last identical, or a checkpoint) plus the dirty
//     blocks equals its own data; the peer tracks its own writes that
//     the owner may lack (as the loser of a race). A copy resumes from
//     both sets when both trackings are of the peer's durable copy, else
//     it is complete.
//
// The invariants:
//   - unique-owner: every epoch has at most one array that durably
//     recorded itself as its owner;
//   - grantor: each such record had its grantor (the mediator's grant to
//     it, the peer's durable pre-election of it, the peer's durable
//     agreement, the peer known behind, the peer's handover);
//   - alone: an array serving alone (unmirrored writes) is the only one
//     serving reads;
//   - both-serve: two arrays serving are in sync at one epoch;
//   - acked: an array serving holds every acknowledged write (so no read
//     returns data older than an acknowledged write);
//   - tracking: the owner's tracking covers what the peer's durable copy
//     lacks;
//   - barrier: a peer's write is applied only at the receiver's current
//     epoch, in a state that takes it (as when it was checked);
//   - epochs never go back; at the end the pod heals;
//   - offline: in three schedules of four, before the heal, the link is
//     cut for good with both arrays running and the mediator reachable
//     by both, one or neither, and the pod must be served within a bound
//     wherever the product promises it (see partition).

type simMode int

const (
	// modeSessions: messages and answers die with the link session.
	modeSessions simMode = iota
	// modeStale: answers may also arrive after the session that carried
	// the request ended, and out of order.
	modeStale
)

func (m simMode) String() string { return [...]string{"sessions", "stale"}[m] }

type opKind int

const (
	opHeartbeat opKind = iota
	opAdvance
	opCut
	opMend
	opMediator
	opMediatorAll
	opPersist
	opDeliver
	opLose
	opElectReq
	opElectAns
	opBaseline
	opCheckpoint
	opWrite
	opRead
	opKill
	opRestart
	opHandover
	opRemove
	opRestretch
	opPreference
	opHello
	opFlush
	opApply
	opHold
	numOps
)

var opNames = [...]string{"heartbeat", "advance", "cut", "mend", "mediator", "mediator-all", "persist",
	"deliver", "lose", "elect-req", "elect-ans", "baseline", "checkpoint", "write", "read", "kill",
	"restart", "handover", "remove", "restretch", "preference", "hello", "flush", "apply", "hold"}

var opWeights = [numOps]int{
	opHeartbeat: 14, opAdvance: 8, opCut: 2, opMend: 4, opMediator: 2, opMediatorAll: 1, opPersist: 16,
	opDeliver: 30, opLose: 1, opElectReq: 8, opElectAns: 8, opBaseline: 8, opCheckpoint: 3,
	opWrite: 12, opRead: 6, opKill: 1, opRestart: 3, opHandover: 1, opRemove: 1, opRestretch: 2,
	opPreference: 2, opHello: 2, opFlush: 6, opApply: 4, opHold: 4,
}

// op is one step; a parametrises it. A step that does not apply does
// nothing, so a schedule stays valid when shrunk.
type op struct {
	kind opKind
	a    int
}

func randomOps(rng *rand.Rand, n int) []op {
	total := 0
	for _, w := range opWeights {
		total += w
	}
	ops := make([]op, n)
	for i := range ops {
		r := rng.Intn(total)
		k := opKind(0)
		for r >= opWeights[k] {
			r -= opWeights[k]
			k++
		}
		ops[i] = op{kind: k, a: rng.Intn(1 << 20)}
	}
	return ops
}

const (
	simTimeout = time.Second
	simBlocks  = 4
)

// simMsg is a message on the link (request or answer).
type simMsg struct {
	kind  string
	sess  int
	epoch uint64
	pre   string
	// write
	block   int
	val     uint64
	wid     uint64
	durable bool
	// resync: the owner's tracking tag; answer: resumed, the peer's dirty
	from   uint64
	resume bool
	dirty  []int
	// hello / refusal
	rec       Record
	ok        bool
	peerEpoch uint64
	up        bool
}

func (m simMsg) String() string {
	s := fmt.Sprintf("%s@%d", m.kind, m.epoch)
	switch m.kind {
	case "write":
		s += fmt.Sprintf(" b%d=%d", m.block, m.val)
	case "grant", "pre":
		s += fmt.Sprintf(" pre=%q", m.pre)
	}
	return s
}

type electReq struct {
	from  int
	epoch uint64
}

type electAns struct {
	to    int
	epoch uint64
	res   ElectResult
}

type simArray struct {
	id    string
	alive bool
	m     *Machine
	dur   Record
	// persists are the Persist actions in flight (the machine's own).
	persists []Action
	// session
	up        bool
	sess      int
	lastHeard time.Time
	lease     time.Time
	// outstanding requests of this array on the link, by kind
	outstanding map[string]uint64
	reach       bool
	// data
	data, durData map[int]uint64
	baseTag       uint64
	from          uint64
	dirty         map[int]bool
	inflight      map[uint64]int // write id -> block, mirrored and not answered
	waiting       map[uint64]int // write id -> block, waiting for the pod's state
	vals          map[uint64]uint64
	// copy under way (owner): the peer's dirty blocks, a complete copy,
	// the epoch of the copy done (for checkpoints)
	peerDirty []int
	full      bool
	copied    uint64
	single    bool
	maxEpoch  uint64
	// outbox: requests the machine decided that the driver has not
	// sent yet; the driver sends each on the session that is up when
	// it gets to it, which may be a later one than the session the
	// machine decided on (or fails it when none is up).
	outbox []simMsg
	// hold: the next request decided waits in the outbox (the driver's
	// call is slow to run) rather than being sent at once.
	hold bool
	// applying: the peer's writes accepted at their epoch (the check)
	// and not yet applied to the copy (the apply); the driver's barrier
	// holds every change of the pod's epoch or state a peer's request
	// makes until they are applied.
	applying []simMsg
}

type violation struct{ key, detail string }

type sim struct {
	mode  simMode
	plant string
	now   time.Time
	arr   [2]*simArray
	dir   [2]bool // dir[i]: i -> 1-i works
	q     [2][]simMsg
	sess  int
	// mediator
	medEpoch  uint64
	medWinner string
	medHist   map[uint64]string
	reqs      []electReq
	answers   []electAns
	// baselines in flight: owner index and epoch
	jobs    []electReq
	late    []electReq // BaselineDone events delivered late (stale mode)
	pref    string
	nextVal uint64
	nextWID uint64
	acked   [simBlocks]uint64
	owners  map[uint64]string
	trace   []string
	err     *violation
	// unsettled: an array accepted a resync while it might hold the
	// mediator's grant of that epoch and could not ask (the case the
	// package doc leaves: both records may end behind, each naming the
	// other, until the link returns).
	unsettled bool
	// handlerCut: a peer's request may lose the link while its handler
	// writes the record the machine decided (schedule.handlerCut);
	// cutNow: the request being delivered does.
	handlerCut, cutNow bool
}

func newSim(mode simMode, plant string, inSync bool) *sim {
	s := &sim{mode: mode, plant: plant, now: start, medHist: map[uint64]string{}, owners: map[uint64]string{}}
	s.dir = [2]bool{true, true}
	for i, id := range []string{"a", "b"} {
		x := &simArray{id: id, alive: true, reach: true, outstanding: map[string]uint64{}}
		x.data, x.durData, x.dirty = map[int]uint64{}, map[int]uint64{}, map[int]bool{}
		x.inflight, x.waiting, x.vals = map[uint64]int{}, map[uint64]int{}, map[uint64]uint64{}
		s.arr[i] = x
	}
	a, b := s.arr[0], s.arr[1]
	if inSync {
		// In sync at epoch 3, ordered by a, both copies alike, started
		// (as after a restart of both): they race or resync.
		a.dur = Record{Epoch: 3, Sequencer: "a", Synced: 3}
		b.dur = a.dur
		s.owners[3] = "a"
		for _, x := range s.arr {
			x.baseTag, x.from = 3, 3
		}
	} else {
		// A fresh stretch: a had the pod alone at epoch 1 and stretched
		// it at epoch 2; b has no copy.
		a.dur = Stretched("a", 2)
		s.owners[2] = "a"
		b.dur = Record{Sequencer: "a", Left: true}
	}
	a.m = New(s.cfg(0), a.dur, s.now)
	b.m = New(s.cfg(1), b.dur, s.now)
	for _, x := range s.arr {
		x.m.MediatorUp(true, s.now)
	}
	s.logf("start: a %s, b %s", s.describe(0), s.describe(1))
	return s
}

func (s *sim) cfg(i int) Config {
	return Config{Self: s.arr[i].id, Peer: s.arr[1-i].id, Timeout: simTimeout, HeadStart: simTimeout,
		Preference: s.pref, plant: s.plant}
}

func (s *sim) describe(i int) string {
	x := s.arr[i]
	if !x.alive {
		return "dead"
	}
	d := fmt.Sprintf("%s{%s}", x.m.State(), x.m.Record())
	if x.single {
		d += " single"
	}
	if x.up {
		d += fmt.Sprintf(" sess%d", x.sess)
	}
	if !x.reach {
		d += " no-mediator"
	}
	return d
}

func (s *sim) logf(format string, args ...any) {
	s.trace = append(s.trace, fmt.Sprintf("t=%-8s ", s.now.Sub(start))+fmt.Sprintf(format, args...))
}

func (s *sim) fail(key, format string, args ...any) {
	if s.err == nil {
		s.err = &violation{key: key, detail: fmt.Sprintf(format, args...)}
		s.logf("VIOLATION %s: %s", key, s.err.detail)
	}
}

// feed applies an event to array i's machine and performs the actions.
func (s *sim) feed(i int, name string, f func(m *Machine) []Action) {
	x := s.arr[i]
	if !x.alive || x.single {
		return // a local pod has no machine running
	}
	acts := f(x.m)
	if len(acts) > 0 || name != "tick" {
		s.logf("%s %-26s -> [%s] %s", x.id, name, formatActions(acts), s.describe(i))
	}
	s.perform(i, acts)
}

// perform does what the driver does with the actions of array i.
func (s *sim) perform(i int, acts []Action) {
	x, peer := s.arr[i], s.arr[1-i]
	for _, a := range acts {
		switch a.Kind {
		case Persist:
			x.persists = append(x.persists, a)
		case Elect:
			if x.reach {
				s.reqs = append(s.reqs, electReq{from: i, epoch: a.Epoch})
			} else {
				s.feed(i, fmt.Sprintf("elect-unsent %d (no mediator)", a.Epoch), func(m *Machine) []Action { return m.ElectUnsent(a.Epoch, s.now) })
			}
		case StartResync:
			s.decide(i, simMsg{kind: "resync", epoch: a.Epoch, from: x.from})
		case CopyBaseline:
			if x.up {
				s.jobs = append(s.jobs, electReq{from: i, epoch: a.Epoch})
			}
		case GrantInSync:
			s.decide(i, simMsg{kind: "grant", epoch: a.Epoch, pre: a.Pre})
		case SendPreElect:
			s.decide(i, simMsg{kind: "pre", epoch: a.Epoch, pre: a.Pre})
		case SendHandover:
			s.decide(i, simMsg{kind: "handover", epoch: a.Epoch})
		case AskRemove:
			s.decide(i, simMsg{kind: "remove", epoch: a.Epoch})
		case Unstretched:
			x.single = true
			s.logf("%s: the pod is local here from epoch %d", x.id, a.Epoch)
			// The driver tells the peer, which may still think
			// otherwise: the pod is this array's alone (its record,
			// single).
			s.hello(i)
		case ClearTracking:
			x.dirty = map[int]bool{}
			x.from, x.baseTag = a.Epoch, a.Epoch
		case EndLink:
			s.closeSession(i, "end-link")
		case ReleaseWrites:
			s.resolveWrites(i)
		}
	}
	_ = peer
}

// decide hands a request the machine decided to array i's driver, which
// sends it at once, or (held) later from its outbox, bound to the session
// it was decided on (0: none up).
func (s *sim) decide(i int, m simMsg) {
	x := s.arr[i]
	m.sess = 0
	if x.up {
		m.sess = x.sess
	}
	x.outbox = append(x.outbox, m)
	if x.hold {
		x.hold = false
		s.logf("%s holds %s", x.id, m)
		return
	}
	s.flush(i, len(x.outbox)-1)
}

// flush sends the request k of array i's outbox, as the driver's call
// does once it runs: only on the session the machine decided it on (the
// driver binds it when it takes the action); if that session is gone,
// the call fails, even though a later one may be up. (The planted bug
// "stale-request" sends it on whichever session is up then.)
func (s *sim) flush(i, k int) {
	x := s.arr[i]
	if !x.alive {
		return
	}
	m, ok := takeAt(&x.outbox, k)
	if !ok {
		return
	}
	if s.plant == "stale-request" && x.up {
		m.sess = x.sess
	}
	if m.kind == "handover" {
		s.send(i, m) // no answer: the peer learns it from the hello too
		return
	}
	if !x.up || x.sess != m.sess {
		s.logf("%s: %s decided on session %d fails (session %d up: %t)", x.id, m, m.sess, x.sess, x.up)
		s.requestFailed(i, m.kind, m.epoch)
		return
	}
	s.request(i, m)
}

// send queues a message from array i on its session.
func (s *sim) send(i int, m simMsg) {
	x := s.arr[i]
	if !x.up {
		return
	}
	m.sess = x.sess
	s.q[i] = append(s.q[i], m)
}

// request sends a request whose failure (the session ends, the message is
// lost) the driver feeds to the machine.
func (s *sim) request(i int, m simMsg) {
	x := s.arr[i]
	if !x.up {
		s.requestFailed(i, m.kind, m.epoch)
		return
	}
	x.outstanding[m.kind] = m.epoch
	s.send(i, m)
}

func (s *sim) requestFailed(i int, kind string, epoch uint64) {
	name := fmt.Sprintf("%s failed %d", kind, epoch)
	switch kind {
	case "resync":
		s.feed(i, name, func(m *Machine) []Action { return m.ResyncFailed(epoch, 0, s.now) })
	case "grant":
		s.feed(i, name, func(m *Machine) []Action { return m.GrantFailed(epoch) })
	case "pre":
		s.feed(i, name, func(m *Machine) []Action { return m.PreElectFailed(epoch) })
	case "remove":
		s.feed(i, name, func(m *Machine) []Action { return m.RemoveFailed(epoch) })
	}
}

// durable makes rec array i's durable record, checking the ownership
// invariants.
func (s *sim) durable(i int, a Action) {
	x, y := s.arr[i], s.arr[1-i]
	rec, prev := a.Record, x.dur
	if rec.Epoch < prev.Epoch {
		s.fail("epoch-back", "%s persists epoch %d after %d", x.id, rec.Epoch, prev.Epoch)
	}
	if rec.Sequencer == x.id && !rec.Left && (rec.Epoch != prev.Epoch || prev.Sequencer != x.id || prev.Left) {
		if o, ok := s.owners[rec.Epoch]; ok && o != x.id {
			s.fail("unique-owner", "%s takes epoch %d, owned by %s", x.id, rec.Epoch, o)
		}
		s.owners[rec.Epoch] = x.id
		s.checkGrantor(i, a, prev)
	}
	if a.SyncData {
		x.durData = maps.Clone(x.data)
		x.baseTag = rec.Epoch
		x.from = rec.Epoch
		x.dirty = map[int]bool{}
	}
	x.dur = rec
	x.maxEpoch = max(x.maxEpoch, rec.Epoch)
	_ = y
}

// checkGrantor checks that array i's new ownership of an epoch had a
// grantor (see the package doc).
func (s *sim) checkGrantor(i int, a Action, prev Record) {
	x, y := s.arr[i], s.arr[1-i]
	e, yr := a.Record.Epoch, y.dur
	ok := false
	switch a.Reason {
	case "mediator":
		ok = s.medHist[e] == x.id
	case "pre-elected":
		ok = prev.Pre == x.id && (yr.Epoch != e-1 || yr.Pre == x.id || !yr.Current())
	case "agreed":
		ok = (yr.Epoch >= e && yr.Sequencer == x.id) || yr.Left
	case "alone":
		ok = prev.Alone && prev.Sequencer == x.id
	case "handover":
		ok = yr.Left && yr.Sequencer == x.id && yr.Epoch == e
	}
	if !ok {
		s.fail("grantor", "%s takes epoch %d (%s) with %s's record {%s}, its own was {%s}", x.id, e, a.Reason, y.id, yr, prev)
	}
}

// inline performs the persists of a request's handling at once (the
// driver answers only after them), failing when fail is set, and returns
// the actions that followed and whether all were durable.
func (s *sim) inline(i int, acts []Action, fail bool) ([]Action, bool) {
	x := s.arr[i]
	var rest []Action
	for _, a := range acts {
		if a.Kind != Persist {
			rest = append(rest, a)
			continue
		}
		if fail {
			s.logf("%s persist#%d fails", x.id, a.ID)
			// The driver performs what the machine does next (a
			// retry after RetryAfter, a decision on its durable
			// record).
			s.perform(i, x.m.PersistFailed(a.ID, s.now))
			return nil, false
		}
		s.durable(i, a)
		more := x.m.Persisted(a.ID, s.now)
		s.logf("%s persisted#%d {%s} -> [%s] %s", x.id, a.ID, a.Record, formatActions(more), s.describe(i))
		r, ok := s.inline(i, more, false)
		rest = append(rest, r...)
		if !ok {
			return rest, false
		}
	}
	return rest, true
}

// writes

func (s *sim) servesWrites(i int) bool {
	x := s.arr[i]
	if !x.alive {
		return false
	}
	if x.single {
		return true
	}
	m := x.m
	if m.Role() != Sequencer || !m.Serves(s.now, x.lease) {
		return false
	}
	switch m.State() {
	case Alone, Syncing, InSync:
		return true
	}
	return false
}

func (s *sim) servesReads(i int) bool {
	x := s.arr[i]
	return x.alive && (x.single || x.m.Serves(s.now, x.lease))
}

func (s *sim) busy(x *simArray, b int) bool {
	return slices.Contains(slices.Collect(maps.Values(x.inflight)), b) ||
		slices.Contains(slices.Collect(maps.Values(x.waiting)), b)
}

func (s *sim) ack(x *simArray, wid uint64, b int) {
	v := x.vals[wid]
	delete(x.vals, wid)
	if v > s.acked[b] {
		s.acked[b] = v
	}
	s.logf("%s acknowledges b%d=%d", x.id, b, v)
}

func (s *sim) write(i, b int) {
	x := s.arr[i]
	if !s.servesWrites(i) || s.busy(x, b) {
		return
	}
	s.nextVal++
	s.nextWID++
	v, wid := s.nextVal, s.nextWID
	x.data[b], x.durData[b] = v, v
	x.vals[wid] = v
	if x.single || !x.m.Mirroring() {
		x.dirty[b] = true
		s.ack(x, wid, b)
		return
	}
	x.inflight[wid] = b
	s.send(i, simMsg{kind: "write", epoch: x.m.Epoch(), block: b, val: v, wid: wid})
}

// resolveWrites settles array i's writes that wait for the pod's state.
func (s *sim) resolveWrites(i int) {
	x := s.arr[i]
	if !x.alive {
		return
	}
	for wid, b := range x.waiting {
		switch st := x.m.State(); {
		case x.single || st == Alone:
			delete(x.waiting, wid)
			s.ack(x, wid, b)
		case (st == Syncing || st == InSync) && x.up && x.m.Role() == Sequencer:
			delete(x.waiting, wid)
			x.inflight[wid] = b
			s.send(i, simMsg{kind: "write", epoch: x.m.Epoch(), block: b, val: x.vals[wid], wid: wid})
		case st == Paused:
		default:
			delete(x.waiting, wid)
			delete(x.vals, wid)
			s.logf("%s: write to b%d failed (never acknowledged)", x.id, b)
		}
	}
}

// session

func (s *sim) closeSession(i int, why string) {
	x := s.arr[i]
	if !x.up {
		return
	}
	x.up = false
	for wid, b := range x.inflight {
		x.waiting[wid] = b
		x.dirty[b] = true
		delete(x.inflight, wid)
	}
	heard, lease := x.lastHeard, x.lease
	s.feed(i, fmt.Sprintf("link-down (%s) heard=%s", why, heard.Sub(start)), func(m *Machine) []Action { return m.LinkDown(s.now, heard, lease) })
	out := x.outstanding
	x.outstanding = map[string]uint64{}
	for k, e := range out {
		s.requestFailed(i, k, e)
	}
	if s.mode == modeSessions {
		s.q[i] = nil
	}
	y := s.arr[1-i]
	if y.up && y.sess == x.sess && s.dir[i] {
		s.closeSession(1-i, "closed by the peer")
	}
}

func (s *sim) connect(order int) {
	a, b := s.arr[0], s.arr[1]
	if a.up || b.up || !a.alive || !b.alive || !s.dir[0] || !s.dir[1] {
		return
	}
	s.sess++
	if s.mode == modeSessions {
		s.q = [2][]simMsg{}
	}
	for _, x := range s.arr {
		x.up, x.sess, x.lastHeard, x.lease = true, s.sess, s.now, time.Time{}
	}
	first := order % 2
	for _, i := range []int{first, 1 - first} {
		s.feed(i, "link-up", func(m *Machine) []Action { return m.LinkUp(s.now) })
	}
	for _, i := range []int{first, 1 - first} {
		s.hello(i)
		s.send(i, simMsg{kind: "status", up: s.arr[i].reach})
	}
}

// hello sends array i's record of the pod, as the driver's hello does.
func (s *sim) hello(i int) {
	x := s.arr[i]
	// A local pod's record is single (the driver answers with it for
	// as long as the pod is local there).
	s.send(i, simMsg{kind: "hello", ok: true, rec: x.dur})
}

func (s *sim) heartbeat(i int) {
	x, y := s.arr[i], s.arr[1-i]
	if !x.alive || !y.alive || !x.up || !y.up || x.sess != y.sess {
		return
	}
	if s.dir[i] {
		y.lastHeard = s.now
		if s.dir[1-i] {
			x.lastHeard = s.now
			x.lease = s.now.Add(simTimeout - simTimeout/5)
		}
	}
}

// settle lets the timers fire: link timeouts, leases, ticks.
func (s *sim) settle() {
	for i, x := range s.arr {
		if !x.alive || !x.up {
			continue
		}
		if !s.now.Before(x.lastHeard.Add(simTimeout)) {
			s.closeSession(i, "timeout")
		}
	}
	for i, x := range s.arr {
		if x.alive && x.up && x.m.leased() && !x.m.Serves(s.now, x.lease) && x.m.State() != Paused {
			s.feed(i, "lease-expired", func(m *Machine) []Action { return m.LeaseExpired() })
		}
	}
	for i := range s.arr {
		s.feed(i, "tick", func(m *Machine) []Action { return m.Tick(s.now) })
		s.resolveWrites(i)
	}
}

// delivery

func (s *sim) deliver(i int, a int) {
	if len(s.q[i]) == 0 || !s.dir[i] {
		return
	}
	k := 0
	if s.mode == modeStale {
		k = a % len(s.q[i])
	}
	m := s.q[i][k]
	s.q[i] = slices.Delete(s.q[i], k, k+1)
	j := 1 - i
	x, y := s.arr[i], s.arr[j]
	answer := strings.Contains(m.kind, "-") || m.kind == "ack" || m.kind == "nack"
	if !y.alive {
		return
	}
	if y.single && (answer || m.kind == "hello" || m.kind == "status") {
		return // no runtime for the pod there
	}
	if !answer && (!y.up || y.sess != m.sess) {
		return // the receiving session is gone
	}
	if answer && s.mode == modeSessions && (!y.up || y.sess != m.sess) {
		return
	}
	_ = x
	if barred(m.kind) && len(y.applying) > 0 && s.plant != "no-barrier" {
		// The barrier: the request waits (in its place) until the
		// writes checked before it are applied.
		s.q[i] = slices.Insert(s.q[i], k, m)
		return
	}
	s.logf("deliver %s -> %s: %s", x.id, y.id, m)
	fail := a%11 == 0
	s.cutNow = s.handlerCut && a%3 == 1
	switch m.kind {
	case "hello":
		s.feed(j, "peer-record", func(mm *Machine) []Action { return mm.PeerRecord(m.rec, m.ok, s.now) })
	case "status":
		s.feed(j, fmt.Sprintf("peer-mediator %t", m.up), func(mm *Machine) []Action { return mm.PeerMediatorUp(m.up) })
	case "write":
		if s.takesWrite(j, m) {
			// Checked at its epoch: applied in a later step.
			y.applying = append(y.applying, m)
		} else {
			s.send(j, simMsg{kind: "nack", sess: m.sess, wid: m.wid, block: m.block})
		}
	case "ack", "nack":
		b, ok := y.inflight[m.wid]
		if !ok {
			return
		}
		delete(y.inflight, m.wid)
		if m.kind == "ack" {
			if !m.durable {
				y.dirty[b] = true
			}
			s.ack(y, m.wid, b)
			return
		}
		y.dirty[b] = true
		y.waiting[m.wid] = b
		s.closeSession(j, "write refused")
	case "resync":
		s.handleResync(j, m, fail)
	case "resync-ok":
		if y.outstanding["resync"] == m.epoch {
			delete(y.outstanding, "resync")
		}
		s.feed(j, fmt.Sprintf("resync-started %d", m.epoch), func(mm *Machine) []Action {
			acts := mm.ResyncStarted(m.epoch, s.now)
			if len(acts) > 0 {
				// The driver takes the answer's resume point only for
				// the resync the machine accepted (a stale answer, of
				// another proposal, changes nothing).
				y.peerDirty, y.full = m.dirty, !m.resume
			}
			return acts
		})
	case "resync-no":
		if y.outstanding["resync"] == m.epoch {
			delete(y.outstanding, "resync")
		}
		s.feed(j, fmt.Sprintf("resync-failed %d peer=%d", m.epoch, m.peerEpoch), func(mm *Machine) []Action { return mm.ResyncFailed(m.epoch, m.peerEpoch, s.now) })
	case "grant":
		s.serve(j, m, fail, func(mm *Machine) ([]Action, error) { return mm.GrantRequested(m.epoch, m.pre) })
	case "grant-ok":
		delete(y.outstanding, "grant")
		s.feed(j, fmt.Sprintf("peer-in-sync %d", m.epoch), func(mm *Machine) []Action { return mm.PeerInSync(m.epoch, s.now) })
	case "grant-no":
		delete(y.outstanding, "grant")
		s.feed(j, fmt.Sprintf("grant-failed %d", m.epoch), func(mm *Machine) []Action { return mm.GrantFailed(m.epoch) })
	case "pre":
		s.serve(j, m, fail, func(mm *Machine) ([]Action, error) { return mm.PreElectRequested(m.epoch, m.pre) })
	case "pre-ok":
		delete(y.outstanding, "pre")
		s.feed(j, fmt.Sprintf("pre-elected %d %q", m.epoch, m.pre), func(mm *Machine) []Action { return mm.PeerPreElected(m.epoch, m.pre) })
	case "pre-no":
		delete(y.outstanding, "pre")
		s.feed(j, fmt.Sprintf("pre-elect-failed %d", m.epoch), func(mm *Machine) []Action { return mm.PreElectFailed(m.epoch) })
	case "handover":
		if y.single {
			return
		}
		acts, err := y.m.HandoverRequested(m.epoch)
		s.logf("%s handover-requested %d: [%s] %v", y.id, m.epoch, formatActions(acts), err)
		s.cutInHandler(j)
		rest, _ := s.inline(j, acts, fail)
		s.perform(j, rest)
	case "remove":
		s.serve(j, m, fail, func(mm *Machine) ([]Action, error) { return mm.RemoveRequested(m.epoch) })
	case "remove-ok":
		delete(y.outstanding, "remove")
		s.feed(j, fmt.Sprintf("peer-left %d", m.epoch), func(mm *Machine) []Action { return mm.PeerLeft(m.epoch) })
	case "remove-no":
		delete(y.outstanding, "remove")
		s.feed(j, fmt.Sprintf("remove-failed %d", m.epoch), func(mm *Machine) []Action { return mm.RemoveFailed(m.epoch) })
	}
}

// barrierHolds reports whether array i's own record a waits for the
// barrier: it changes the pod's epoch (a race won or lost, a handover,
// a removal) while the peer's writes checked at the old one are still
// being applied; the driver takes the barrier exclusively to write it.
func (s *sim) barrierHolds(i int, a Action) bool {
	x := s.arr[i]
	return a.Record.Epoch != x.m.Epoch() && len(x.applying) > 0 && s.plant != "no-barrier"
}

// barred reports whether a peer's request of kind changes the pod's
// epoch or state, so that the barrier holds it behind the writes being
// applied.
func barred(kind string) bool {
	switch kind {
	case "resync", "grant", "pre", "handover", "remove":
		return true
	}
	return false
}

// takesWrite reports whether array j takes the peer's write m now: at
// its current epoch, as a follower that receives or is in sync.
func (s *sim) takesWrite(j int, m simMsg) bool {
	y := s.arr[j]
	return !y.single && y.m.AcceptsEpoch(m.epoch) && (y.m.State() == Receiving || y.m.State() == InSync) && y.m.Role() == Follower
}

// apply applies the write k checked at array j (the second half of the
// driver's handler), and answers on the session it came on.
func (s *sim) apply(j, k int) {
	y := s.arr[j]
	m, ok := takeAt(&y.applying, k)
	if !ok || !y.alive {
		return
	}
	// The link may have gone meanwhile, or the peer's hello made this
	// array give its copy up (the state moved, not the epoch): the
	// write still lands in the copy it was checked for.
	if y.single || !y.m.AcceptsEpoch(m.epoch) || y.m.Role() != Follower {
		s.fail("barrier", "%s applies a write of epoch %d (b%d=%d) in %s", y.id, m.epoch, m.block, m.val, s.describe(j))
		return
	}
	y.data[m.block] = m.val
	durable := y.m.Record().Current()
	if durable {
		y.durData[m.block] = m.val
	}
	s.logf("%s applies b%d=%d (epoch %d)", y.id, m.block, m.val, m.epoch)
	s.send(j, simMsg{kind: "ack", sess: m.sess, wid: m.wid, block: m.block, durable: durable})
}

// serve handles a request m at array j as the driver does: the machine
// decides, its records are persisted (failing when fail), the rest is
// performed, then the answer goes (kind-ok or kind-no).
func (s *sim) serve(j int, m simMsg, fail bool, f func(*Machine) ([]Action, error)) {
	y := s.arr[j]
	var acts []Action
	var err error
	if !y.single {
		acts, err = f(y.m)
	}
	s.cutInHandler(j)
	rest, ok := s.inline(j, acts, fail)
	if y.single || err != nil || !ok {
		s.logf("%s refuses the %s %d: %v", y.id, m.kind, m.epoch, err)
		s.send(j, simMsg{kind: m.kind + "-no", sess: m.sess, epoch: m.epoch})
		return
	}
	s.perform(j, rest)
	s.send(j, simMsg{kind: m.kind + "-ok", sess: m.sess, epoch: m.epoch, pre: m.pre})
}

// cutInHandler loses the link in both directions while array j's
// handler of a peer's request writes the record its machine decided
// (when the schedule asks for it): the replication package's handler
// writes it holding the pod's barrier, but the link-down event takes
// only the machine's lock, so the machine sees the link go before the
// record lands, and the answer cannot be sent.
func (s *sim) cutInHandler(j int) {
	if !s.cutNow {
		return
	}
	s.cutNow = false
	s.dir = [2]bool{false, false}
	s.logf("link cut while %s's handler writes its record", s.arr[j].id)
	s.closeSession(j, "lost while the handler writes")
}

// handleResync is the receiver's side of a resync request: the machine
// decides, the record is durable, then the copy is kept (resume) or
// cleared, then the answer goes.
func (s *sim) handleResync(j int, m simMsg, fail bool) {
	y := s.arr[j]
	no := simMsg{kind: "resync-no", sess: m.sess, epoch: m.epoch, peerEpoch: y.dur.Epoch}
	if y.single {
		s.send(j, no)
		return
	}
	unsettled := y.m.mayHoldGrant()
	acts, err := y.m.ResyncRequested(m.epoch)
	if err == nil && unsettled {
		s.unsettled = true
		s.logf("%s accepts the resync while it may hold the mediator's grant", y.id)
	}
	if err != nil {
		s.logf("%s refuses the resync %d: %v", y.id, m.epoch, err)
		s.send(j, no)
		return
	}
	s.cutInHandler(j)
	rest, ok := s.inline(j, acts, fail)
	if !ok {
		s.send(j, no)
		return
	}
	resume := m.from != 0 && y.baseTag == m.from && y.from == m.from
	ans := simMsg{kind: "resync-ok", sess: m.sess, epoch: m.epoch, resume: resume}
	if resume {
		ans.dirty = slices.Sorted(maps.Keys(y.dirty))
	} else {
		y.data, y.durData, y.dirty = map[int]uint64{}, map[int]uint64{}, map[int]bool{}
		y.baseTag, y.from = 0, 0
	}
	s.perform(j, rest)
	s.send(j, ans)
}

// baseline completes a copy of owner i at epoch e.
func (s *sim) baseline(k int) {
	job, ok := takeAt(&s.jobs, k)
	if !ok {
		return
	}
	i, e := job.from, job.epoch
	x, y := s.arr[i], s.arr[1-i]
	if !x.alive || x.m.State() != Syncing || x.m.Epoch() != e {
		return // the copy was cancelled
	}
	if !y.alive || !x.up || !y.up || x.sess != y.sess || !s.dir[i] || y.m.State() != Receiving || y.m.Epoch() != e {
		// The peer failed a piece: the driver ends the link, and the
		// pod starts over.
		s.closeSession(i, "copy failed")
		return
	}
	blocks := map[int]bool{}
	if x.full {
		for b := range simBlocks {
			blocks[b] = true
		}
	} else {
		maps.Copy(blocks, x.dirty)
		for _, b := range x.peerDirty {
			blocks[b] = true
		}
		for _, b := range x.inflight {
			blocks[b] = true
		}
	}
	for b := range blocks {
		if v, ok := x.data[b]; ok {
			y.data[b] = v
		} else {
			delete(y.data, b)
		}
		x.dirty[b] = true // on the receiver, not durable yet
	}
	y.dirty = map[int]bool{}
	x.copied = e
	s.logf("%s copies %v to %s at epoch %d (complete: %t)", x.id, slices.Sorted(maps.Keys(blocks)), y.id, e, x.full)
	if s.mode == modeStale && job.epoch%2 == 0 && len(s.late) < 4 {
		s.late = append(s.late, job)
		return
	}
	s.feed(i, fmt.Sprintf("baseline-done %d", e), func(m *Machine) []Action { return m.BaselineDone(e) })
}

// checkpoint makes the receiver's copy durable up to now.
func (s *sim) checkpoint(i int) {
	x, y := s.arr[i], s.arr[1-i]
	if !x.alive || !y.alive || !x.up || !y.up || x.sess != y.sess || !s.dir[0] || !s.dir[1] ||
		x.m.State() != Syncing || x.copied != x.m.Epoch() || y.m.State() != Receiving || y.m.Epoch() != x.m.Epoch() {
		return
	}
	y.durData = maps.Clone(y.data)
	y.baseTag, y.from = x.m.Epoch(), x.m.Epoch()
	x.from = x.m.Epoch()
	x.dirty = map[int]bool{}
	for _, b := range x.inflight {
		x.dirty[b] = true
	}
	s.logf("checkpoint: %s's copy durable at tag %d", y.id, x.from)
}

// takeAt removes and returns the element k (modulo the length) of q.
func takeAt[T any](q *[]T, k int) (T, bool) {
	var zero T
	if len(*q) == 0 {
		return zero, false
	}
	k %= len(*q)
	v := (*q)[k]
	*q = slices.Delete(*q, k, k+1)
	return v, true
}

// mediator

func (s *sim) electReq(k int) {
	r, ok := takeAt(&s.reqs, k)
	if !ok {
		return
	}
	x := s.arr[r.from]
	if !x.reach {
		s.feed(r.from, fmt.Sprintf("elect-unsent %d (unreachable)", r.epoch), func(m *Machine) []Action { return m.ElectUnsent(r.epoch, s.now) })
		return
	}
	var res ElectResult
	switch {
	case s.medEpoch <= r.epoch:
		s.medEpoch, s.medWinner = r.epoch+1, x.id
		s.medHist[r.epoch+1] = x.id
		res = ElectResult{Won: true, Epoch: r.epoch + 1, Winner: x.id}
	case s.medEpoch == r.epoch+1 && s.medWinner == x.id:
		res = ElectResult{Won: true, Epoch: s.medEpoch, Winner: x.id}
	default:
		res = ElectResult{Epoch: s.medEpoch, Winner: s.medWinner}
	}
	s.logf("mediator: elect(%d, %s) -> %+v", r.epoch, x.id, res)
	s.answers = append(s.answers, electAns{to: r.from, epoch: r.epoch, res: res})
}

func (s *sim) electAns(k int) {
	an, ok := takeAt(&s.answers, k)
	if !ok {
		return
	}
	if !s.arr[an.to].reach {
		s.feed(an.to, fmt.Sprintf("elect-failed %d (answer lost)", an.epoch), func(m *Machine) []Action { return m.ElectFailed(an.epoch, s.now) })
		return
	}
	s.feed(an.to, fmt.Sprintf("elected %d %+v", an.epoch, an.res), func(m *Machine) []Action { return m.Elected(an.epoch, an.res, s.now) })
}

func (s *sim) setReach(i int, up bool) {
	x := s.arr[i]
	if x.reach == up {
		return
	}
	x.reach = up
	s.feed(i, fmt.Sprintf("mediator %t", up), func(m *Machine) []Action { return m.MediatorUp(up, s.now) })
	s.send(i, simMsg{kind: "status", up: up})
}

// kill and restart

func (s *sim) kill(i, a int) {
	x := s.arr[i]
	if !x.alive {
		return
	}
	if len(x.persists) > 0 && a%2 == 0 && !s.barrierHolds(i, x.persists[0]) {
		s.durable(i, x.persists[0]) // durable, never reported
	}
	s.logf("%s killed", x.id)
	s.closeSession(i, "killed")
	x.alive = false
	x.persists = nil
	x.data = maps.Clone(x.durData)
	x.dirty, x.inflight, x.waiting, x.vals = map[int]bool{}, map[uint64]int{}, map[uint64]int{}, map[uint64]uint64{}
	x.from, x.copied, x.peerDirty = 0, 0, nil
	x.outbox, x.applying, x.hold = nil, nil, false
	s.q[i] = nil
	s.jobs = slices.DeleteFunc(s.jobs, func(j electReq) bool { return j.from == i })
	s.late = slices.DeleteFunc(s.late, func(j electReq) bool { return j.from == i })
}

func (s *sim) restart(i int) {
	x := s.arr[i]
	if x.alive {
		return
	}
	x.alive = true
	x.m = New(s.cfg(i), x.dur, s.now)
	x.lease, x.lastHeard = time.Time{}, time.Time{}
	s.logf("%s restarts: %s", x.id, s.describe(i))
	s.feed(i, fmt.Sprintf("mediator %t", x.reach), func(m *Machine) []Action { return m.MediatorUp(x.reach, s.now) })
}

// membership

func (s *sim) restretch(i int) {
	x, y := s.arr[i], s.arr[1-i]
	if !x.alive || !x.single || y.single {
		return
	}
	a := Action{Kind: Persist, Record: Stretched(x.id, x.dur.Epoch+1), Reason: "alone"}
	s.durable(i, a)
	x.single = false
	x.m = New(s.cfg(i), x.dur, s.now)
	x.from, x.dirty = 0, map[int]bool{}
	s.logf("%s stretches the pod again: %s", x.id, s.describe(i))
	s.feed(i, fmt.Sprintf("mediator %t", x.reach), func(m *Machine) []Action { return m.MediatorUp(x.reach, s.now) })
	if x.up {
		s.feed(i, "link-up", func(m *Machine) []Action { return m.LinkUp(s.now) })
		// The runtime asks the peer's record when it starts on a live
		// session.
		yr, ok := y.dur, !y.single
		s.feed(i, "peer-record", func(m *Machine) []Action { return m.PeerRecord(yr, ok, s.now) })
	}
}

// step runs one op.
func (s *sim) step(o op) {
	i := o.a % 2
	x := s.arr[i]
	switch o.kind {
	case opHeartbeat:
		s.heartbeat(i)
	case opAdvance:
		s.now = s.now.Add([]time.Duration{50 * time.Millisecond, 200 * time.Millisecond, 500 * time.Millisecond,
			999 * time.Millisecond, simTimeout, 2 * time.Second}[o.a/2%6])
	case opCut:
		if o.a/2%3 == 0 {
			s.dir = [2]bool{false, false}
		} else {
			s.dir[i] = false
		}
		s.logf("link cut: a->b %t, b->a %t", s.dir[0], s.dir[1])
	case opMend:
		s.dir[i] = true
		if o.a/2%2 == 0 {
			s.dir = [2]bool{true, true}
		}
		s.logf("link mended: a->b %t, b->a %t", s.dir[0], s.dir[1])
		s.connect(o.a / 4)
	case opMediator:
		if x.alive {
			s.setReach(i, !x.reach)
		}
	case opMediatorAll:
		// The link and the mediator lost at the same instant.
		s.dir = [2]bool{false, false}
		s.setReach(0, false)
		s.setReach(1, false)
	case opPersist:
		if !x.alive || len(x.persists) == 0 || s.barrierHolds(i, x.persists[0]) {
			return
		}
		a := x.persists[0]
		x.persists = x.persists[1:]
		if o.a/2%9 == 0 {
			s.feed(i, fmt.Sprintf("persist-failed#%d", a.ID), func(m *Machine) []Action { return m.PersistFailed(a.ID, s.now) })
			return
		}
		s.durable(i, a)
		s.feed(i, fmt.Sprintf("persisted#%d", a.ID), func(m *Machine) []Action { return m.Persisted(a.ID, s.now) })
	case opDeliver:
		s.deliver(i, o.a/2)
	case opLose:
		// A message lost on a session means the session died with it
		// (TCP); the pending calls fail.
		if n := len(s.q[i]); n > 0 {
			k := o.a / 2 % n
			m := s.q[i][k]
			s.q[i] = slices.Delete(s.q[i], k, k+1)
			s.logf("lost %s -> %s: %s", x.id, s.arr[1-i].id, m)
			if x.up && x.sess == m.sess {
				s.closeSession(i, "lost a message")
			}
		}
	case opElectReq:
		s.electReq(o.a)
	case opElectAns:
		s.electAns(o.a)
	case opBaseline:
		s.baseline(o.a)
		if len(s.late) > 0 && o.a%3 == 0 {
			j := s.late[0]
			s.late = s.late[1:]
			s.feed(j.from, fmt.Sprintf("baseline-done %d (late)", j.epoch), func(m *Machine) []Action { return m.BaselineDone(j.epoch) })
		}
	case opCheckpoint:
		s.checkpoint(i)
	case opWrite:
		s.write(i, o.a/2%simBlocks)
	case opRead:
		b := o.a / 2 % simBlocks
		if s.servesReads(i) && !s.busy(x, b) && x.data[b] < s.acked[b] {
			s.fail("stale-read", "%s reads b%d=%d, acknowledged %d", x.id, b, x.data[b], s.acked[b])
		}
	case opKill:
		s.kill(i, o.a/2)
	case opRestart:
		s.restart(i)
		s.connect(o.a / 2)
	case opHandover:
		if x.alive && !x.single {
			acts, err := x.m.Handover()
			s.logf("%s handover: [%s] %v", x.id, formatActions(acts), err)
			s.perform(i, acts)
		}
	case opRemove:
		if x.alive && !x.single {
			acts, err := x.m.RemovePeer()
			s.logf("%s remove-peer: [%s] %v", x.id, formatActions(acts), err)
			s.perform(i, acts)
		}
	case opRestretch:
		s.restretch(i)
	case opHello:
		// The driver's hello is sent again now and then on a live
		// session (and whenever a pod of the pair changes membership).
		if x.alive && x.up {
			s.hello(i)
		}
	case opFlush:
		s.flush(i, o.a/2)
	case opApply:
		s.apply(i, o.a/2)
	case opHold:
		x.hold = true
	case opPreference:
		s.pref = []string{"", "a", "b"}[o.a/2%3]
		s.logf("failover preference %q", s.pref)
		for j := range s.arr {
			s.feed(j, "preference", func(m *Machine) []Action { return m.SetPreference(s.pref) })
		}
	}
}

// check tests the invariants that hold between any two steps.
func (s *sim) check() {
	for i, x := range s.arr {
		if !x.alive {
			continue
		}
		y := s.arr[1-i]
		if s.servesReads(i) {
			for b := range simBlocks {
				if x.data[b] < s.acked[b] {
					s.fail("acked", "%s serves b%d=%d, acknowledged %d", x.id, b, x.data[b], s.acked[b])
				}
			}
		}
		alone := x.single || x.m.State() == Alone || (x.m.State() == Syncing && x.m.Record().Alone)
		if alone && s.servesReads(1-i) {
			s.fail("alone", "%s serves alone (%s) while %s serves (%s)", x.id, s.describe(i), y.id, s.describe(1-i))
		}
		if s.servesReads(i) && s.servesReads(1-i) && !alone {
			xr, yr := x.m.Record(), y.m.Record()
			if xr.Epoch != yr.Epoch || xr.Sequencer != yr.Sequencer {
				s.fail("both-serve", "both serve: %s, %s", s.describe(i), s.describe(1-i))
			}
		}
		// tracking
		if x.m.Role() == Sequencer && !x.single && y.alive && x.from != 0 && y.baseTag == x.from && y.from == x.from {
			for b := range simBlocks {
				if !x.dirty[b] && !s.busy(x, b) && !y.dirty[b] && y.durData[b] != x.data[b] {
					s.fail("tracking", "%s's tracking (tag %d) misses b%d: %s has %d durably, %s %d", x.id, x.from, b, y.id, y.durData[b], x.id, x.data[b])
				}
			}
		}
	}
}

// heal brings everything back and checks that the pod recovers.
func (s *sim) heal() {
	s.logf("heal")
	for i := range s.arr {
		s.restart(i)
	}
	s.dir = [2]bool{true, true}
	for i := range s.arr {
		s.setReach(i, true)
	}
	for round := 0; round < 3000 && s.err == nil; round++ {
		a, b := s.arr[0], s.arr[1]
		inSync := a.m.State() == InSync && b.m.State() == InSync && a.m.Epoch() == b.m.Epoch()
		oneLeft := (a.single && b.m.State() == Left) || (b.single && a.m.State() == Left)
		if (inSync || oneLeft) && len(s.q[0])+len(s.q[1]) == 0 && len(a.persists)+len(b.persists) == 0 &&
			len(a.outbox)+len(b.outbox)+len(a.applying)+len(b.applying) == 0 {
			if inSync {
				for blk := range simBlocks {
					if a.data[blk] != b.data[blk] {
						s.fail("copies-differ", "in sync, b%d: a %d, b %d", blk, a.data[blk], b.data[blk])
					}
				}
			}
			s.check()
			return
		}
		switch {
		case !a.up || !b.up:
			s.closeSession(0, "heal")
			s.closeSession(1, "heal")
			s.connect(round)
			if !a.up {
				s.now = s.now.Add(200 * time.Millisecond)
			}
		case s.pendingStep(true):
		default:
			if round%20 == 0 {
				s.step(op{kind: opHello, a: round / 20})
			}
			s.now = s.now.Add(100 * time.Millisecond)
		}
		s.heartbeat(0)
		s.heartbeat(1)
		s.settle()
		s.check()
	}
	if s.err == nil {
		s.fail("stuck", "not healed: a %s, b %s; a's machine %s, b's %s", s.describe(0), s.describe(1), s.arr[0].m.debug(), s.arr[1].m.debug())
	}
}

// drainDriver performs one step the drivers have pending (a peer's
// write being applied, a request held in the outbox) and reports
// whether there was one.
func (s *sim) drainDriver() bool {
	for i, x := range s.arr {
		switch {
		case len(x.applying) > 0:
			s.step(op{kind: opApply, a: i})
		case len(x.outbox) > 0:
			s.step(op{kind: opFlush, a: i})
		default:
			continue
		}
		return true
	}
	return false
}

// run runs a schedule and returns the first violation and the trace.
func runSim(mode simMode, plant string, sched schedule, heal bool) (*violation, []string) {
	s := newSim(mode, plant, sched.inSync)
	s.handlerCut = sched.handlerCut
	ops := sched.ops
	s.connect(0)
	for n, o := range ops {
		s.logf("step %d: %s %d", n, opNames[o.kind], o.a)
		s.step(o)
		s.settle()
		s.check()
		if s.err != nil {
			return s.err, s.trace
		}
	}
	// The liveness phase and the heal fail nothing.
	s.handlerCut = false
	if heal && sched.live != liveNone && s.err == nil {
		s.partition(sched.live, sched.liveArray)
	}
	if heal {
		s.heal()
	}
	return s.err, s.trace
}

// Liveness phases: after a schedule's steps, the link is cut for good
// with every array running and the mediator reachable as the phase says;
// the pod must be served by some array within liveRounds (see
// partition).
type livePhase uint8

const (
	liveNone    livePhase = iota // heal at once
	liveBoth                     // both arrays reach the mediator
	liveOne                      // only one array reaches it
	liveNeither                  // neither reaches it
	numLive
)

func (l livePhase) String() string {
	return [...]string{"none", "mediator reachable by both", "mediator reachable by one", "mediator unreachable"}[l]
}

// liveRounds bounds the liveness phase: 100 ms each, after the actions
// pending in each round are performed (10 s: the link timeout, the head
// start and a few retries).
const liveRounds = 100

// partition runs a liveness phase: every array restarts if it was dead,
// the link is cut in both directions for good, the mediator is reachable
// by both arrays, by array one only, or by neither; every persist, elect
// and answer is performed (none fails) and time passes. Then some array
// must serve the pod where the product promises it (the "offline"
// violation):
//   - with the mediator reachable by an array whose copy is current and
//     that has not promised the pod to a peer with a current copy (it
//     does not hold the pre-election of such a peer);
//   - with the mediator reachable by an array that durably holds every
//     acknowledged write while both records are behind (neither array
//     can have served since), unless an array accepted a resync while it
//     might hold the mediator's grant of that epoch and could not ask
//     (the case the package doc leaves);
//   - with a pre-election engaged: both records name the same array,
//     whose copy is current.
func (s *sim) partition(live livePhase, one int) {
	reach := [2]bool{live == liveBoth, live == liveBoth}
	if live == liveOne {
		reach[one] = true
	}
	s.logf("liveness: the link cut for good, the mediator reachable by a %t, b %t", reach[0], reach[1])
	for i := range s.arr {
		s.restart(i)
	}
	s.dir = [2]bool{false, false}
	for i := range s.arr {
		s.setReach(i, reach[i])
	}
	for round := 0; round < liveRounds && s.err == nil; round++ {
		for n := 0; n < 1000 && s.err == nil && s.pendingStep(false); n++ {
			s.settle()
			s.check()
		}
		s.now = s.now.Add(100 * time.Millisecond)
		s.settle()
		s.check()
	}
	if s.err != nil || s.servesWrites(0) || s.servesWrites(1) {
		return
	}
	promised := func(i int) bool {
		x, y := s.arr[i], s.arr[1-i]
		r := x.m.Record()
		return !x.single && r.Current() && (r.Pre != y.id || (!y.single && !y.m.Record().Current()))
	}
	pre := func(i int) bool {
		x, y := s.arr[i], s.arr[1-i]
		return !x.single && !y.single && x.m.Record().Current() && x.m.Record().Pre == x.id && y.m.Record().Pre == x.id
	}
	complete := func(i int) bool {
		x := s.arr[i]
		if x.single || x.m.Record().Left {
			return false
		}
		for b := range simBlocks {
			if x.durData[b] < s.acked[b] {
				return false
			}
		}
		return true
	}
	behind := !s.arr[0].m.Record().Current() && !s.arr[1].m.Record().Current()
	for i := range s.arr {
		if (reach[i] && (promised(i) || (behind && complete(i) && !s.unsettled))) || pre(i) {
			s.fail("offline", "link down for %d rounds (%s): nobody serves the pod: a %s, b %s; a's machine %s, b's %s",
				liveRounds, live, s.describe(0), s.describe(1), s.arr[0].m.debug(), s.arr[1].m.debug())
			return
		}
	}
}

// pendingStep performs one pending action, none failing (with deliver,
// the link's messages in order too), and reports whether there was one.
func (s *sim) pendingStep(deliver bool) bool {
	a, b := s.arr[0], s.arr[1]
	switch {
	case s.drainDriver():
	case len(a.persists) > 0:
		s.step(op{kind: opPersist, a: 2})
	case len(b.persists) > 0:
		s.step(op{kind: opPersist, a: 3})
	case deliver && len(s.q[0]) > 0:
		s.step(op{kind: opDeliver, a: 2}) // in order, without injected failures
	case deliver && len(s.q[1]) > 0:
		s.step(op{kind: opDeliver, a: 3})
	case len(s.reqs) > 0:
		s.step(op{kind: opElectReq})
	case len(s.answers) > 0:
		s.step(op{kind: opElectAns})
	case len(s.jobs) > 0 || len(s.late) > 0:
		s.step(op{kind: opBaseline, a: 3})
	default:
		return false
	}
	return true
}

// stats counts what a run did, for the floors.
type simStats struct{ steps, writes, failovers, faults int }

// shrink removes ops one at a time while the same invariant still breaks.
func shrink(mode simMode, plant string, sched schedule, key string) schedule {
	for changed := true; changed; {
		changed = false
		for i := len(sched.ops) - 1; i >= 0; i-- {
			cand := sched
			cand.ops = slices.Delete(slices.Clone(sched.ops), i, i+1)
			if v, _ := runSim(mode, plant, cand, true); v != nil && v.key == key {
				sched, changed = cand, true
			}
		}
	}
	return sched
}

var (
	simRuns = flag.Int("pod.runs", 1500, "schedules per mode in TestRandomPair")
	simSeed = flag.Int64("pod.seed", -1, "run only this seed in TestRandomPair and log its trace")
)

// schedule is a run: where the pod starts (a fresh stretch, or in sync
// as after both arrays restarted) and the steps.
type schedule struct {
	inSync bool
	ops    []op
	// live is the liveness phase run after the steps (liveOne: the
	// mediator reachable by liveArray only).
	live      livePhase
	liveArray int
	// handlerCut: some of the peer's requests lose the link while their
	// handler writes its record (see cutInHandler); off in the
	// schedules of TestRandomPair, so that their seeds stay as found.
	handlerCut bool
}

func scheduleOf(seed int64) schedule {
	rng := rand.New(rand.NewSource(seed))
	inSync := rng.Intn(2) == 0
	sched := schedule{inSync: inSync, ops: randomOps(rng, 60+rng.Intn(240))}
	// Drawn after the steps, so a seed's steps are those it had before
	// the liveness phases existed.
	sched.live, sched.liveArray = livePhase(rng.Intn(int(numLive))), rng.Intn(2)
	return sched
}

// regressionSeeds are schedules that broke an invariant only at run
// counts far above the default (a review's 100000 and 200000 runs):
// 48304 and 107901 (an acknowledged write missing from a serving copy)
// and 103642 (two arrays serving apart), all from a resync and a grant
// sent on a later link session than they were decided on; 219342 (both
// arrays left the pod: a handover accepted while a removal was in
// flight). Of the third review's liveness cases: 16529 and 54549 (the
// unfinished grant, the pre-election record landing after the link
// loss; TestReview3* script them too), and 172175 (an elect answered
// after a resync was accepted left its race marked under way, which
// refused every later resync: stuck, a defect of this fix's first
// version, at 100000 runs). TestRandomPair runs them every time.
var regressionSeeds = []int64{48304, 103642, 107901, 219342, 16529, 54549, 172175}

// TestRandomPair runs random schedules in each mode and reports, for each
// invariant that breaks, the first schedule that breaks it, shrunk.
// Replay one with -pod.seed=N -v (the seed's mode is N%2).
func TestRandomPair(t *testing.T) {
	runs := *simRuns
	if testing.Short() {
		runs /= 5
	}
	modes := []simMode{modeSessions, modeStale}
	var total simStats
	for _, mode := range modes {
		t.Run(mode.String(), func(t *testing.T) {
			seen := map[string]bool{}
			// The seeds that found defects beyond the default count
			// first, then the default count.
			var seeds []int64
			for _, seed := range regressionSeeds {
				if seed%int64(len(modes)) == int64(mode) {
					seeds = append(seeds, seed)
				}
			}
			for i := range runs {
				seeds = append(seeds, int64(i*len(modes))+int64(mode))
			}
			for _, seed := range seeds {
				if *simSeed >= 0 {
					if *simSeed%int64(len(modes)) != int64(mode) {
						return
					}
					seed = *simSeed
				}
				sched := scheduleOf(seed)
				v, trace := runSim(mode, "", sched, true)
				total.add(trace, len(sched.ops))
				if *simSeed >= 0 {
					t.Logf("seed %d (%d steps):\n  %s", seed, len(sched.ops), strings.Join(trace, "\n  "))
				}
				if v != nil && !seen[v.key] {
					seen[v.key] = true
					small := shrink(mode, "", sched, v.key)
					v, trace = runSim(mode, "", small, true)
					t.Errorf("seed %d: %s: %s\nshrunk schedule (%d of %d steps):\n  %s",
						seed, v.key, v.detail, len(small.ops), len(sched.ops), strings.Join(trace, "\n  "))
				}
				if *simSeed >= 0 {
					return
				}
			}
		})
	}
	t.Logf("%d steps, %d writes acknowledged, %d epochs taken alone (failovers), %d faults injected",
		total.steps, total.writes, total.failovers, total.faults)
	if *simSeed < 0 {
		// Floors: a regression that made most steps do nothing (or every
		// write fail, or no failover happen) cannot pass.
		min := runs // per mode, at least one of each per schedule on average
		if total.steps < 100*min || total.writes < 5*min || total.failovers < min/2 || total.faults < 2*min {
			t.Errorf("below the floors: %+v for %d schedules per mode", total, runs)
		}
	}
}

func (st *simStats) add(trace []string, steps int) {
	st.steps += steps
	for _, l := range trace {
		switch {
		case strings.Contains(l, "acknowledges"):
			st.writes++
		case strings.Contains(l, "} (mediator)") || strings.Contains(l, "} (pre-elected)"):
			st.failovers++
		case strings.Contains(l, "link cut") || strings.Contains(l, " killed") || strings.Contains(l, "fails") ||
			strings.Contains(l, "persist-failed") || strings.Contains(l, "lost ") || strings.Contains(l, "mediator false"):
			st.faults++
		}
	}
}

// plantSeeds is how many schedules TestSimCatchesPlantedBugs tries per
// planted bug (the rarest is caught after about 9000).
const plantSeeds = 30000

// TestSimCatchesPlantedBugs plants each bug the simulation must catch in
// the machine and checks that some schedule breaks an invariant (the one
// expected): a simulation that cannot fail proves nothing.
func TestSimCatchesPlantedBugs(t *testing.T) {
	for _, tc := range []struct{ plant string }{{"skip-fence"}, {"stale-race"}, {"early-clear"}, {"no-barrier"}, {"stale-request"}} {
		t.Run(tc.plant, func(t *testing.T) {
			for seed := int64(0); seed < plantSeeds; seed++ {
				mode := simMode(seed % 2)
				// The planted bugs break safety: the schedules run
				// without their liveness phase, as they were written
				// for (the phase changes what the heal starts from).
				sched := scheduleOf(seed)
				sched.live = liveNone
				v, _ := runSim(mode, tc.plant, sched, true)
				if v != nil {
					t.Logf("seed %d (%s): %s: %s", seed, mode, v.key, v.detail)
					return
				}
			}
			t.Errorf("no schedule of %d caught the planted bug %q", plantSeeds, tc.plant)
		})
	}
}

// debug prints the machine's volatile fields.
func (m *Machine) debug() string {
	return fmt.Sprintf("{pending:%v failed:%v resyncing:%d resyncAt:%s peerKnown:%t peerEpoch:%d removing:%t done:%t pre-in-flight:%t electing:%d win:%d}",
		m.pending != nil, m.failed != nil, m.resyncing, m.resyncAt.Sub(start), m.peerKnown, m.peerEpoch, m.removing, m.unstretchDone, m.preInFlight, m.electing, m.win)
}
