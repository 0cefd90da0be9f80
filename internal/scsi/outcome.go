package scsi

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
)

// Outcomes of forwarded commands whose answers may be lost.
//
// At the array that did not run it, a command of a stretched pod that
// changes the medium or the reservations is forwarded to the pod's
// sequencer (Replica.Forward). When the link fails after the sequencer
// ran it and before its answer came back, the forwarding array answers a
// retryable NOT READY although the command took effect, and the host
// retries the same command: run again, a COMPARE AND WRITE miscompares
// against its own write and a PERSISTENT RESERVE OUT conflicts with its
// own registration (for an ESXi ATS heartbeat, a miscompare means the
// datastore is lost). So the logical unit remembers the effect of such a
// command while its answer may be lost, and answers the host's retry
// with the first run's outcome:
//
//   - COMPARE AND WRITE: the retry is the same command from the same host
//     (initiator name; a multipath host retries through another path,
//     with another task tag and I_T nexus): the same blocks, verify data
//     and write data. It is answered GOOD, without writing, when its
//     compare fails only because the blocks hold its own write data, the
//     remembered command was the last to write them, and the answer to it
//     may have been lost. The array that orders the writes remembers the
//     write of a command a host sent to it too (an Own), whose answer is
//     lost when it ended without GOOD (aborted while its mirror waited
//     for the pod to be decided, and the array kept the pod): such a
//     retry writes the same data again, so that it is on every array
//     that serves the pod, before its GOOD.
//   - PERSISTENT RESERVE OUT: the retry is the same service action with
//     the same parameters on the same I_T nexus (reservations are kept
//     per I_T nexus: the same command through another path is another
//     nexus's command and runs). It is answered GOOD, changing nothing,
//     when the reservation state is still exactly what the remembered
//     command left and the answer to it may have been lost. The array
//     that decides the reservations remembers the change of a command a
//     host sent to it too (an Own), whose answer is lost when it ended
//     without GOOD: aborted, or failed after its change was kept because
//     the peer may hold it (ErrMayBeShared). Such a retry is GOOD only
//     once the state is shared again, for the first run's share was not
//     confirmed.
//
// Whether an answer may have been lost is the AnswerFate the replication
// layer gives a forwarded command (WithForwarded): at the sequencer, the
// command's answer was not GOOD, or the forwarding array reported that
// the host did not get GOOD (the command ended aborted there, by the
// host's ABORT TASK or another node's PREEMPT AND ABORT, after the
// sequencer ran it), or the link session that carried the command ended
// before the forwarding array confirmed that the host got GOOD; at the
// forwarding array, which applies the sequencer's write or reservation
// state for its own command as the command runs, its forward failed or
// the command ended otherwise than GOOD. The forwarding array reports
// only once the command has ended (Own.OnEnd), and a retry that arrives
// before the fate is known (the host retried through another path at
// once) waits for it, which the link bounds (AnswerFate.Settled). Both arrays thus remember the
// command's effect with the effect itself, and the memory crosses a
// failover with the copy that has the effect: the winner answers the
// retry whether it was the sequencer (which ran the command) or the
// forwarding array (which received its write before the link failed). A
// winner whose copy lacks the effect runs the retry afresh, which is
// then right; the loser's remembered effects go with its copy when it
// receives the winner's (ForgetOutcomes).
//
// An answer that was delivered is never replayed: a host that repeats a
// command whose GOOD it received gets what one array would answer (a
// MISCOMPARE, a RESERVATION CONFLICT), as libiscsi's multipath COMPARE
// AND WRITE test checks. A remembered outcome answers one retry: the
// retry's own answer is remembered in its stead, under the retry's fate.
//
// The memory is bounded: at most LUConfig.RememberedOutcomes COMPARE AND
// WRITE outcomes per logical unit, of which one host (initiator name) may
// hold an eighth, the oldest going first, so a host that floods the unit
// with forwarded commands evicts its own outcomes before others'; a full
// memory evicts the oldest outcome of the name that holds the most, so
// that hosts under many names (eight fill it) evict each other's before
// those of a host that holds fewer; and one PERSISTENT RESERVE OUT
// outcome, the latest change of the reservations. An outcome evicted is a
// retry run afresh, as before this memory: a host whose retry of an
// evicted outcome miscompares held k outcomes in a memory shared among
// RememberedOutcomes/k names or more.

// DefaultRememberedOutcomes is the default of LUConfig.RememberedOutcomes.
const DefaultRememberedOutcomes = 256

// AnswerFate tells whether the answer to a forwarded command may not
// have reached the host (see WithForwarded).
type AnswerFate interface {
	// Lost reports whether the answer may have been lost; it may change
	// from false to true once (the link failed) and is never true for
	// an answer the host got.
	Lost() bool
	// Delivered reports whether the answer surely reached the array the
	// host sent the command to, and that array gave it to the host as
	// GOOD: what is remembered under the fate is then of no more use.
	Delivered() bool
	// Settled is closed once the fate is known: Lost or Delivered
	// reports true, or neither will change any more. Until then the
	// command's answer is on its way (the array the host sent it to has
	// not reported what it did with it, and the link session that
	// carried it lives), and a retry waits for the fate rather than
	// guess it.
	Settled() <-chan struct{}
}

// forwardedKey marks the context of a forwarded command.
type forwardedKey struct{}

// forwarded is the value of forwardedKey.
type forwarded struct {
	cmd  *Command
	fate AnswerFate
	// key, when set, is the COMPARE AND WRITE's identity (cawKey),
	// which the sequencer computed: this array has its write data only.
	key *[sha256.Size]byte
}

// WithForwarded returns ctx for running, at the pod's sequencer, the
// command cmd that the other array forwarded (Target.ExecuteForwarded),
// or for applying, at the array that forwarded cmd, the sequencer's
// write or reservation state that cmd made (NoteWrite,
// InstallReservations); fate tells whether cmd's answer may have been
// lost. A COMPARE AND WRITE or PERSISTENT RESERVE OUT remembers its
// effect under it, for the host's retry.
func WithForwarded(ctx context.Context, cmd *Command, fate AnswerFate) context.Context {
	return context.WithValue(ctx, forwardedKey{}, &forwarded{cmd: cmd, fate: fate})
}

// forwardedOf returns the forwarded command ctx runs or applies, or nil.
func forwardedOf(ctx context.Context) *forwarded {
	f, _ := ctx.Value(forwardedKey{}).(*forwarded)
	if f == nil || f.cmd == nil || f.fate == nil {
		return nil
	}
	return f
}

// RemembersOutcome reports whether a forwarded command with this CDB
// remembers its effect for a retry when it ends GOOD (COMPARE AND WRITE,
// PERSISTENT RESERVE OUT): the forwarding array then confirms that it got
// the answer, after which the sequencer forgets it.
func RemembersOutcome(cdb []byte) bool {
	return len(cdb) > 0 && (cdb[0] == opCompareAndWrite || cdb[0] == opPROut)
}

// cawOutcome is a COMPARE AND WRITE's write, remembered.
type cawOutcome struct {
	lba, n    uint64
	initiator string
	// key identifies the command: its initiator, blocks and data-out.
	key  [sha256.Size]byte
	fate AnswerFate
	seq  uint64
}

// prOutcome is the latest change of the reservation state, made by a
// forwarded PERSISTENT RESERVE OUT.
type prOutcome struct {
	nexus PRNexus
	op    PROut
	// state is the reservation state the command left (Marshal, and the
	// SCSI-2 holder).
	state []byte
	scsi2 *PRNexus
	fate  AnswerFate
}

// outcomes is a logical unit's memory of forwarded commands' effects.
type outcomes struct {
	max int
	// n counts the COMPARE AND WRITE outcomes, for writes to skip the
	// lock when there are none.
	n  atomic.Int32
	mu struct {
		sync.Mutex
		caw []cawOutcome
		seq uint64
		pr  *prOutcome
	}
}

// cawKey identifies a COMPARE AND WRITE of n blocks at lba with data-out
// data from initiator.
func cawKey(initiator string, lba, n uint64, data []byte) [sha256.Size]byte {
	h := sha256.New()
	h.Write([]byte(strings.ToLower(initiator)))
	var b [17]byte
	binary.BigEndian.PutUint64(b[1:], lba)
	binary.BigEndian.PutUint64(b[9:], n)
	h.Write(b[:])
	h.Write(data)
	var k [sha256.Size]byte
	h.Sum(k[:0])
	return k
}

// wrote forgets the COMPARE AND WRITE outcomes of blocks that n blocks
// from lba overlap: they were written since.
func (o *outcomes) wrote(lba, n uint64) {
	if o.n.Load() == 0 {
		return
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	o.dropLocked(func(e *cawOutcome) bool { return e.lba < lba+n && lba < e.lba+e.n || e.fate.Delivered() })
}

// dropLocked removes the COMPARE AND WRITE outcomes for which f is true.
func (o *outcomes) dropLocked(f func(*cawOutcome) bool) {
	kept := o.mu.caw[:0]
	for i := range o.mu.caw {
		if !f(&o.mu.caw[i]) {
			kept = append(kept, o.mu.caw[i])
		}
	}
	clear(o.mu.caw[len(kept):])
	o.mu.caw = kept
	o.n.Store(int32(len(kept)))
}

// rememberCAW records that the COMPARE AND WRITE f.cmd wrote its n blocks
// at lba (or tried to: the blocks show whether it did), replacing what
// was remembered of them.
func (o *outcomes) rememberCAW(f *forwarded, lba, n uint64) {
	if o.max <= 0 {
		o.wrote(lba, n)
		return
	}
	e := cawOutcome{lba: lba, n: n, initiator: strings.ToLower(f.cmd.Nexus.InitiatorName), fate: f.fate}
	if f.key != nil {
		e.key = *f.key
	} else {
		e.key = cawKey(f.cmd.Nexus.InitiatorName, lba, n, f.cmd.DataOut)
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	o.dropLocked(func(x *cawOutcome) bool { return x.lba < lba+n && lba < x.lba+x.n || x.fate.Delivered() })
	mine := 0
	for i := range o.mu.caw {
		if o.mu.caw[i].initiator == e.initiator {
			mine++
		}
	}
	if mine >= max(1, o.max/8) {
		o.evictLocked(e.initiator)
	} else if len(o.mu.caw) >= o.max {
		o.evictLocked(o.largestLocked())
	}
	o.mu.seq++
	e.seq = o.mu.seq
	o.mu.caw = append(o.mu.caw, e)
	o.n.Store(int32(len(o.mu.caw)))
}

// largestLocked returns the initiator that holds the most COMPARE AND
// WRITE outcomes (of those that hold as many, the one whose oldest is
// oldest): a full memory makes room at its expense, so that hosts under
// many initiator names evict each other's outcomes before those of a host
// that holds fewer, and one holding k outcomes loses one only once the
// memory is shared among max/k names or more.
func (o *outcomes) largestLocked() string {
	count := map[string]int{}
	oldest := map[string]uint64{}
	for i := range o.mu.caw {
		x := &o.mu.caw[i]
		count[x.initiator]++
		if s, ok := oldest[x.initiator]; !ok || x.seq < s {
			oldest[x.initiator] = x.seq
		}
	}
	best := ""
	for name, k := range count {
		if best == "" || k > count[best] || k == count[best] && oldest[name] < oldest[best] {
			best = name
		}
	}
	return best
}

// evictLocked removes the oldest COMPARE AND WRITE outcome of initiator
// (of any, when empty).
func (o *outcomes) evictLocked(initiator string) {
	old := -1
	for i := range o.mu.caw {
		if (initiator == "" || o.mu.caw[i].initiator == initiator) && (old < 0 || o.mu.caw[i].seq < o.mu.caw[old].seq) {
			old = i
		}
	}
	if old >= 0 {
		seq := o.mu.caw[old].seq
		o.dropLocked(func(x *cawOutcome) bool { return x.seq == seq })
	}
}

// retriedCAW reports whether the COMPARE AND WRITE x runs, whose compare
// failed against cur, is the retry of a remembered one whose answer may
// have been lost: then the remembered outcome passes to this run (its
// own answer may be lost in turn, when it is forwarded too) and the
// answer is GOOD.
func (o *outcomes) retriedCAW(x *exec, lba, n uint64, cur []byte) bool {
	if o.n.Load() == 0 || !bytes.Equal(cur, x.cmd.DataOut[n*BlockSize:]) {
		return false
	}
	key := cawKey(x.cmd.Nexus.InitiatorName, lba, n, x.cmd.DataOut)
	o.mu.Lock()
	defer o.mu.Unlock()
	i := slices.IndexFunc(o.mu.caw, func(e cawOutcome) bool { return e.lba == lba && e.n == n && e.key == key })
	if i < 0 {
		return false
	}
	seq := o.mu.caw[i].seq
	if !o.settledLocked(x.ctx, o.mu.caw[i].fate) {
		return false
	}
	// The entry may have gone or moved while the lock was released.
	i = slices.IndexFunc(o.mu.caw, func(e cawOutcome) bool { return e.seq == seq })
	if i < 0 || !o.mu.caw[i].fate.Lost() {
		return false
	}
	if f := forwardedOf(x.ctx); f != nil {
		o.mu.caw[i].fate = f.fate
	} else {
		o.dropLocked(func(x *cawOutcome) bool { return x.seq == seq })
	}
	return true
}

// answerOf returns, for remembering the outcome of the command ctx runs,
// the forwarded command (WithForwarded) or, for one a host sent to this
// array (an Own), the command under its own fate; nil for neither.
func answerOf(ctx context.Context) *forwarded {
	if f := forwardedOf(ctx); f != nil {
		return f
	}
	if o := OwnOf(ctx); o != nil {
		return &forwarded{cmd: o.cmd, fate: o}
	}
	return nil
}

// rememberPR records, after a change of the reservation state to st made
// by a PERSISTENT RESERVE OUT op of nexus n, that change as the latest
// one, with the command's fate when it was forwarded or run here as an
// Own (f, answerOf). A state equal to the remembered change's keeps that
// change remembered.
func (o *outcomes) rememberPR(f *forwarded, n PRNexus, op PROut, st ReservationState) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if p := o.mu.pr; p != nil && bytes.Equal(p.state, st.Marshal()) && sameHolder(p.scsi2, st.SCSI2) {
		// Nothing changed since the remembered change (another nexus's
		// command that changed nothing, a reset's or a MODE SELECT's
		// share): its retry still finds its own state, and is answered.
		return
	}
	o.mu.pr = nil
	if f != nil && o.max > 0 {
		o.mu.pr = &prOutcome{nexus: n, op: op, state: st.Marshal(), scsi2: st.SCSI2, fate: f.fate}
	}
}

// retriedPR reports whether the PERSISTENT RESERVE OUT op of nexus n,
// with the reservation state st, is the retry of the remembered one
// whose answer may have been lost: then the outcome passes to this run,
// as in retriedCAW, and the answer is GOOD.
func (o *outcomes) retriedPR(ctx context.Context, n PRNexus, op PROut, st ReservationState) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	p := o.mu.pr
	if p == nil || p.nexus != n || p.op != op || !bytes.Equal(p.state, st.Marshal()) || !sameHolder(p.scsi2, st.SCSI2) {
		return false
	}
	if !o.settledLocked(ctx, p.fate) || !p.fate.Lost() || o.mu.pr != p {
		return false
	}
	o.mu.pr = nil
	if f := answerOf(ctx); f != nil {
		q := *p
		q.fate = f.fate
		o.mu.pr = &q
	}
	return true
}

// pendingPR returns the fate of the remembered PERSISTENT RESERVE OUT
// op of nexus n while it is not settled, nil otherwise.
func (o *outcomes) pendingPR(n PRNexus, op PROut) AnswerFate {
	o.mu.Lock()
	defer o.mu.Unlock()
	p := o.mu.pr
	if p == nil || p.fate == nil || p.nexus != n || p.op != op {
		return nil
	}
	select {
	case <-p.fate.Settled():
		return nil
	default:
		return p.fate
	}
}

// awaitPR waits until the remembered PERSISTENT RESERVE OUT op of nexus n
// (if any) has a settled fate, or ctx ends (lockPR).
func (o *outcomes) awaitPR(ctx context.Context, n PRNexus, op PROut) {
	if fate := o.pendingPR(n, op); fate != nil {
		waitSettled(ctx, fate)
	}
}

// settledLocked waits (o.mu held, released meanwhile) until fate is
// settled: a retry that arrives while the first run's answer is still
// on its way (the host gave up on it, or sent the same command through
// another path, before the array it sent it to reported what became of
// the answer) would otherwise be run afresh against the first run's
// effect. The wait is bounded by the link: the other array reports once
// the command ended there, or the session ends within its timeout. It
// returns false if ctx ended first.
func (o *outcomes) settledLocked(ctx context.Context, fate AnswerFate) bool {
	select {
	case <-fate.Settled():
		return true
	default:
	}
	o.mu.Unlock()
	defer o.mu.Lock()
	return waitSettled(ctx, fate)
}

// waitSettled waits until fate is settled (true) or ctx ends (false).
func waitSettled(ctx context.Context, fate AnswerFate) bool {
	select {
	case <-fate.Settled():
		return true
	case <-ctx.Done():
		return false
	}
}

// sameHolder reports whether a and b name the same SCSI-2 holder (or none).
func sameHolder(a, b *PRNexus) bool {
	if a == nil || b == nil {
		return a == b
	}
	return *a == *b
}

// forget drops every remembered outcome.
func (o *outcomes) forget() {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.mu.caw, o.mu.pr = nil, nil
	o.n.Store(0)
}

// ForgetOutcomes drops the outcomes the unit remembers for retries: this
// array's copy is being replaced by the other array's (a resync), whose
// writes and reservations are the pod's.
func (lu *LogicalUnit) ForgetOutcomes() { lu.outcomes.forget() }

// NoteWrite tells the unit that length bytes from off changed on this
// array outside its commands (the sequencer's mirrored write, a copied
// piece): what it remembers of those blocks goes. When ctx carries the
// forwarded COMPARE AND WRITE whose write this is (WithForwarded), its
// outcome is remembered instead, for the host's retry.
func (lu *LogicalUnit) NoteWrite(ctx context.Context, off, length int64) {
	lba, n := uint64(off)/BlockSize, uint64(length+BlockSize-1)/BlockSize
	if f := forwardedOf(ctx); f != nil && len(f.cmd.CDB) > 0 && f.cmd.CDB[0] == opCompareAndWrite {
		clba, cn, _ := blockRange(f.cmd.CDB)
		if clba == lba && cn == n && (f.key != nil || uint64(len(f.cmd.DataOut)) == 2*n*BlockSize) {
			lu.outcomes.rememberCAW(f, lba, n)
			return
		}
	}
	lu.outcomes.wrote(lba, n)
}

// rememberInstalled records the reservation state st installed from the
// sequencer as the latest change, made by the PERSISTENT RESERVE OUT
// this array forwarded when ctx carries it (WithForwarded).
func (lu *LogicalUnit) rememberInstalled(ctx context.Context, st ReservationState) {
	f := forwardedOf(ctx)
	if f == nil || len(f.cmd.CDB) < 10 || f.cmd.CDB[0] != opPROut || len(f.cmd.DataOut) < prOutParamLen {
		lu.outcomes.rememberPR(nil, PRNexus{}, PROut{}, st)
		return
	}
	lu.outcomes.rememberPR(f, NexusID(f.cmd.Nexus), prOutOf(f.cmd.CDB, f.cmd.DataOut), st)
}

// writeAt writes p at off through the backend, forgetting first what is
// remembered of those blocks.
func (lu *LogicalUnit) writeAt(ctx context.Context, p []byte, off int64) error {
	lu.outcomes.wrote(uint64(off)/BlockSize, uint64(len(p))/BlockSize)
	return lu.backend.WriteAt(ctx, p, off)
}

// unmap deallocates through the backend, forgetting first what is
// remembered of those blocks.
func (lu *LogicalUnit) unmap(ctx context.Context, off, length int64) error {
	lu.outcomes.wrote(uint64(off)/BlockSize, uint64(length)/BlockSize)
	return lu.backend.Unmap(ctx, off, length)
}

// The sequencer's own commands.
//
// A COMPARE AND WRITE or PERSISTENT RESERVE OUT that a host sends to the
// pod's sequencer runs there, and its write or reservation state is
// applied on the follower as it runs. When the link fails after that and
// before the follower's acknowledgement reaches the sequencer, the
// sequencer may answer a retryable NOT READY and lose the pod to the
// follower, whose copy holds the effect: the host's retry through it
// would miscompare, or conflict, against the first run. So the sequencer
// runs such a command under an Own, whose Identity travels with the write
// or reservation state it mirrors; the follower applies them under
// WithMirrored, remembering the outcome with the effect, under a fate
// that counts as lost when the link session ends before the sequencer
// confirms that the host got GOOD (Own.OnEnd). A retry through the
// follower, or through the sequencer once it follows (it forwards the
// retry), then gets the first run's outcome.

// Identity is what the follower needs of a command the sequencer ran to
// remember its outcome.
type Identity struct {
	Nexus Nexus  `json:"nexus"`
	CDB   []byte `json:"cdb"`
	// Param is a PERSISTENT RESERVE OUT's parameter list.
	Param []byte `json:"param,omitempty"`
	// Key is a COMPARE AND WRITE's identity (its initiator, blocks,
	// verify and write data, hashed): the follower gets its write data
	// only.
	Key []byte `json:"key,omitempty"`
}

// ownKey marks the context of an Own.
type ownKey struct{}

// Own is a COMPARE AND WRITE or PERSISTENT RESERVE OUT that a host sent
// to this array: it runs here, or is forwarded to the sequencer (which
// ran it under a fate that OnEnd settles: Replica.Forward).
type Own struct {
	cmd *Command
	// ended is closed once the command has ended (end).
	ended chan struct{}
	mu    struct {
		sync.Mutex
		ended, delivered bool
		hooks            []func(delivered bool)
	}
}

// withOwn returns ctx for running cmd as an Own.
func withOwn(ctx context.Context, cmd *Command) (context.Context, *Own) {
	o := &Own{cmd: cmd, ended: make(chan struct{})}
	return context.WithValue(ctx, ownKey{}, o), o
}

// OwnOf returns the Own that ctx runs, or nil.
func OwnOf(ctx context.Context) *Own {
	o, _ := ctx.Value(ownKey{}).(*Own)
	return o
}

// Identity returns what the follower needs to remember the command's
// outcome.
func (o *Own) Identity() Identity {
	c := o.cmd
	id := Identity{Nexus: c.Nexus, CDB: bytes.Clone(c.CDB)}
	switch {
	case len(c.CDB) >= 16 && c.CDB[0] == opCompareAndWrite:
		lba, n, _ := blockRange(c.CDB)
		if uint64(len(c.DataOut)) == 2*n*BlockSize {
			k := cawKey(c.Nexus.InitiatorName, lba, n, c.DataOut)
			id.Key = k[:]
		}
	case len(c.CDB) > 0 && c.CDB[0] == opPROut:
		id.Param = bytes.Clone(c.DataOut)
	}
	return id
}

// OnEnd calls f once the command has ended, with whether its answer was
// GOOD and given to the transport (at once if it has ended).
func (o *Own) OnEnd(f func(delivered bool)) {
	o.mu.Lock()
	if !o.mu.ended {
		o.mu.hooks = append(o.mu.hooks, f)
		o.mu.Unlock()
		return
	}
	d := o.mu.delivered
	o.mu.Unlock()
	f(d)
}

// Lost implements AnswerFate: the command ended without its GOOD given
// to the transport (it failed, or was aborted, after its effect was made
// and kept: a PERSISTENT RESERVE OUT whose share the peer may hold).
func (o *Own) Lost() bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.mu.ended && !o.mu.delivered
}

// Delivered implements AnswerFate: the command ended with its GOOD given
// to the transport.
func (o *Own) Delivered() bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.mu.delivered
}

// Settled implements AnswerFate: the command has ended.
func (o *Own) Settled() <-chan struct{} { return o.ended }

// end records that the command ended with res.
func (o *Own) end(res *Result, aborted bool) {
	o.mu.Lock()
	o.mu.ended = true
	o.mu.delivered = res != nil && res.Status == StatusGood && !aborted
	hooks, d := o.mu.hooks, o.mu.delivered
	o.mu.hooks = nil
	close(o.ended)
	o.mu.Unlock()
	for _, f := range hooks {
		f(d)
	}
}

// WithMirrored returns ctx for applying, at the follower, the write or
// reservation state of the command id that the sequencer ran (NoteWrite,
// InstallReservations); fate tells whether its answer may have been
// lost. An identity that is not a well-formed COMPARE AND WRITE or
// PERSISTENT RESERVE OUT leaves ctx as it is: nothing is remembered.
func WithMirrored(ctx context.Context, id Identity, fate AnswerFate) context.Context {
	f := &forwarded{cmd: &Command{Nexus: id.Nexus, CDB: id.CDB, DataOut: id.Param}, fate: fate}
	switch {
	case len(id.CDB) >= 16 && id.CDB[0] == opCompareAndWrite && len(id.Key) == sha256.Size:
		k := [sha256.Size]byte(id.Key)
		f.key = &k
	case len(id.CDB) >= 10 && id.CDB[0] == opPROut && len(id.Param) >= prOutParamLen:
	default:
		return ctx
	}
	return context.WithValue(ctx, forwardedKey{}, f)
}
