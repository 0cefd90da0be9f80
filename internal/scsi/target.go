package scsi

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"weak"

	"github.com/metro-storage/metro/internal/store"
)

// TargetConfig configures a Target.
type TargetConfig struct {
	// Vendor, Product and Revision are the standard INQUIRY identification
	// (defaults "METRO", "metro", "0.1"; padded with spaces as SPC
	// requires, truncated to 8, 16 and 4 characters).
	Vendor, Product, Revision string
	Resolver                  Resolver
	Logger                    *slog.Logger
}

// Target is the SCSI target device: it executes commands for every logical
// unit the Resolver maps and keeps track of running tasks for task
// management. It is safe for concurrent use.
type Target struct {
	vendor, product, revision string
	resolver                  Resolver
	log                       *slog.Logger
	table                     *commandTable

	// mu guards the running tasks and the logical units seen so far.
	mu struct {
		sync.Mutex
		tasks map[taskKey]*task
		// lus are the logical units that have executed commands, for
		// target resets (weak: a deleted volume's unit goes away).
		lus map[weak.Pointer[LogicalUnit]]struct{}
	}
}

// taskKey names a task: its I_T nexus and tag.
type taskKey struct {
	nexus string
	tag   uint32
}

// task is one running command.
type task struct {
	nexus   Nexus
	key     string // nexus.Key()
	lun     uint64
	lu      *LogicalUnit
	cancel  context.CancelFunc
	aborted atomic.Bool
	done    chan struct{}
	// remote is closed once the command has been sent to the pod's
	// sequencer (Command.Forwarded): it runs there from then on.
	remote    chan struct{}
	forwarded atomic.Bool
}

// NewTarget returns a Target.
func NewTarget(cfg TargetConfig) *Target {
	t := &Target{
		vendor:   pad(cfg.Vendor, "METRO", 8),
		product:  pad(cfg.Product, "metro", 16),
		revision: pad(cfg.Revision, "0.1", 4),
		resolver: cfg.Resolver,
		log:      cfg.Logger,
		table:    newCommandTable(),
	}
	if t.log == nil {
		t.log = slog.New(slog.DiscardHandler)
	}
	t.mu.tasks = make(map[taskKey]*task)
	t.mu.lus = make(map[weak.Pointer[LogicalUnit]]struct{})
	return t
}

// pad returns s (or def when s is empty) as n printable ASCII characters,
// padded with spaces.
func pad(s, def string, n int) string {
	if s == "" {
		s = def
	}
	b := []byte(s)
	for i, c := range b {
		if c < 0x20 || c > 0x7e {
			b[i] = '_'
		}
	}
	if len(b) > n {
		b = b[:n]
	}
	return string(b) + strings.Repeat(" ", n-len(b))
}

// exec is the context of one command being executed.
type exec struct {
	ctx context.Context
	t   *Target
	lu  *LogicalUnit
	cmd *Command
	cdb []byte
	// key is cmd.Nexus.Key().
	key string
}

// Execute runs one command and returns its outcome. It never returns nil.
// A command aborted by task management returns a Result with Aborted set.
func (t *Target) Execute(ctx context.Context, cmd *Command) *Result {
	if len(cmd.CDB) == 0 {
		return checkCondition(SenseInvalidOpcode())
	}
	lu := t.lun(cmd.Nexus, cmd.LUN)
	if lu == nil {
		return t.executeNoLU(cmd)
	}
	key := cmd.Nexus.Key()
	ctx, tk := t.startTask(ctx, cmd, key, lu)
	defer t.endTask(cmd, key, tk)
	cmd.task = tk
	res := t.dispatch(&exec{ctx: ctx, t: t, lu: lu, cmd: cmd, cdb: cmd.CDB, key: key})
	if tk.aborted.Load() {
		return &Result{Aborted: true}
	}
	return res
}

// lun resolves the logical unit of a LUN for the nexus and remembers it.
func (t *Target) lun(n Nexus, lun uint64) *LogicalUnit {
	if t.resolver == nil {
		return nil
	}
	lu := t.resolver.LUN(n.InitiatorName, lun)
	if lu == nil {
		return nil
	}
	t.register(lu)
	return lu
}

// register remembers lu among the units that have executed commands. It
// does so once, not on every command: the target-wide lock would otherwise
// serialise every command of the array.
func (t *Target) register(lu *LogicalUnit) {
	if lu.target.Load() != t {
		t.mu.Lock()
		t.mu.lus[weak.Make(lu)] = struct{}{}
		t.mu.Unlock()
		lu.target.Store(t)
	}
}

// knownLUs returns the live logical units that have executed commands.
func (t *Target) knownLUs() []*LogicalUnit {
	t.mu.Lock()
	defer t.mu.Unlock()
	var lus []*LogicalUnit
	for wp := range t.mu.lus {
		if lu := wp.Value(); lu != nil {
			lus = append(lus, lu)
		} else {
			delete(t.mu.lus, wp)
		}
	}
	return lus
}

// executeNoLU answers a command addressed to a LUN the initiator does not
// see: INQUIRY reports no device, REPORT LUNS and REQUEST SENSE work, the
// rest get LOGICAL UNIT NOT SUPPORTED.
func (t *Target) executeNoLU(cmd *Command) *Result {
	c, _ := t.table.lookup(cmd.CDB)
	if c == nil || len(cmd.CDB) < len(c.usage) {
		return checkCondition(SenseLUNNotSupported())
	}
	x := &exec{ctx: context.Background(), t: t, cmd: cmd, cdb: cmd.CDB[:len(c.usage)]}
	switch c.op {
	case opInquiry:
		if s := c.checkReserved(x.cdb); s != nil {
			return checkCondition(*s)
		}
		if x.cdb[1]&0x01 != 0 {
			return checkCondition(SenseLUNNotSupported())
		}
		return runInquiry(x)
	case opReportLUNs:
		if s := c.checkReserved(x.cdb); s != nil {
			return checkCondition(*s)
		}
		return runReportLUNs(x)
	case opRequestSense:
		return x.senseData(SenseLUNNotSupported())
	}
	return checkCondition(SenseLUNNotSupported())
}

// dispatch checks a command against unit attentions, ALUA state and
// reservations, then runs it.
func (t *Target) dispatch(x *exec) (res *Result) {
	c, bad := t.table.lookup(x.cdb)
	// The unit's port groups as the initiator sees them now, for the
	// unit attention of a change and the command's ALUA check. The
	// commands that keep unit attentions run in every state.
	var groups []PortGroup
	if c != nil && c.keepsUA {
		x.lu.touch(x.cmd.Nexus, x.key)
	} else {
		groups = t.portGroups(x.lu, x.cmd.Nexus)
		if s, ok := x.lu.takeUA(x.cmd.Nexus, x.key, groups); ok {
			return checkCondition(s)
		}
	}
	if bad != nil {
		return checkCondition(*bad)
	}
	if len(x.cdb) < len(c.usage) {
		return checkCondition(SenseInvalidFieldInCDB(len(x.cdb)))
	}
	x.cdb = x.cdb[:len(c.usage)]
	if s := c.checkReserved(x.cdb); s != nil {
		return checkCondition(*s)
	}
	if s := aluaBlocks(groups, x.cmd.Nexus, c.alua); s != nil {
		return checkCondition(*s)
	}
	if c.ordered {
		if RemembersOutcome(x.cdb) {
			// Run here, the follower remembers its outcome with its
			// effect; forwarded, the sequencer does. Either is told
			// once the command ends whether the host got GOOD
			// (outcome.go).
			var own *Own
			x.ctx, own = withOwn(x.ctx, x.cmd)
			defer func() { own.end(res, x.cmd.task != nil && x.cmd.task.aborted.Load()) }()
		}
		if res, ok := x.lu.replica.Forward(x.ctx, x.cmd); ok {
			return res
		}
	}
	if res := x.reservationsAllow(c.access); res != nil {
		return res
	}
	return c.run(x)
}

// reservationsAllow returns nil when the reservations let the command
// run (a command of class c), else its answer: RESERVATION CONFLICT, or
// a retryable NOT READY when it ended while a change it depends on was
// being shared (LogicalUnit.decided).
func (x *exec) reservationsAllow(c AccessClass) *Result {
	ok, err := x.lu.allows(x.ctx, x.cmd.Nexus, c)
	switch {
	case err != nil:
		return checkCondition(SenseNotReadyTransitioning())
	case !ok:
		return reservationConflict()
	}
	return nil
}

// swp returns the SWP bit as the command must see it; res is a
// retryable NOT READY when the command ended while a change of the bit
// was being shared (LogicalUnit.decided).
func (x *exec) swp() (swp bool, res *Result) {
	wp, err := x.lu.writeProtected(x.ctx)
	if err != nil {
		return false, checkCondition(SenseNotReadyTransitioning())
	}
	return wp, nil
}

// writable returns nil when the command may write the medium, else its
// answer: WRITE PROTECTED when the SWP bit is set (or swp's).
func (x *exec) writable() *Result {
	wp, res := x.swp()
	if res == nil && wp {
		res = checkCondition(SenseWriteProtected())
	}
	return res
}

// startTask registers a running command for task management and returns
// the context it runs under.
func (t *Target) startTask(ctx context.Context, cmd *Command, key string, lu *LogicalUnit) (context.Context, *task) {
	ctx, cancel := context.WithCancel(ctx)
	tk := &task{nexus: cmd.Nexus, key: key, lun: cmd.LUN, lu: lu, cancel: cancel, done: make(chan struct{}), remote: make(chan struct{})}
	t.mu.Lock()
	t.mu.tasks[taskKey{key, cmd.Tag}] = tk
	t.mu.Unlock()
	return ctx, tk
}

func (t *Target) endTask(cmd *Command, key string, tk *task) {
	k := taskKey{key, cmd.Tag}
	t.mu.Lock()
	if t.mu.tasks[k] == tk {
		delete(t.mu.tasks, k)
	}
	t.mu.Unlock()
	tk.cancel()
	close(tk.done)
}

// abortTasks aborts every running task for which match is true and waits
// (until ctx ends) for them to return. It reports the nexuses whose tasks
// were aborted.
func (t *Target) abortTasks(ctx context.Context, match func(*task) bool) []Nexus {
	return t.abort(ctx, match, false)
}

// abortHere is abortTasks for an abort the pod's sequencer decided and
// performs itself (a PREEMPT AND ABORT, a logical unit reset): the tasks
// this array forwarded to the sequencer are aborted here (none reports
// status) but not waited for, for they run there, and the sequencer's
// own abort settles them before its command completes. Waiting for them
// here, while the sequencer waits for this array, could wait for ever: a
// forwarded command may be waiting at the sequencer for the very lock the
// sequencer holds while it waits (issue 10, the fencing race).
func (t *Target) abortHere(ctx context.Context, match func(*task) bool) []Nexus {
	return t.abort(ctx, match, true)
}

// abort aborts the tasks match selects and waits for each to end, or,
// when untilForwarded is set, to end or be forwarded to the sequencer.
func (t *Target) abort(ctx context.Context, match func(*task) bool, untilForwarded bool) []Nexus {
	t.mu.Lock()
	var hit []*task
	for _, tk := range t.mu.tasks {
		if match(tk) {
			hit = append(hit, tk)
		}
	}
	t.mu.Unlock()
	nexuses := make([]Nexus, 0, len(hit))
	for _, tk := range hit {
		tk.aborted.Store(true)
		tk.cancel()
		nexuses = append(nexuses, tk.nexus)
	}
	for _, tk := range hit {
		var remote <-chan struct{}
		if untilForwarded {
			remote = tk.remote
		}
		select {
		case <-tk.done:
		case <-remote:
		case <-ctx.Done():
			return nexuses
		}
	}
	return nexuses
}

// TaskManagement performs a task management function received on nexus n
// for LUN lun (refTag names the task for ABORT TASK). It returns when the
// affected tasks have ended (or ctx is done).
//
// Every function is confined to what nexus n can reach, because an array
// is shared by hosts that must not disturb one another:
//   - ABORT TASK and ABORT TASK SET act on n's own tasks for the unit;
//   - CLEAR TASK SET and LOGICAL UNIT RESET act on the logical unit behind
//     lun, for every nexus that reaches it, whatever LUN number it uses
//     (SAM-5): their tasks are aborted and they get the unit attention;
//   - TARGET WARM RESET and TARGET COLD RESET reset every logical unit n
//     can see (LUN masking) and nothing else: tasks on other volumes run
//     on, their reservations stay and their nexuses get no unit
//     attention. A host is given the target as it sees it; resetting the
//     whole array would let any host abort every other host's I/O and
//     release their reservations. The transport closes only the caller's
//     own connection after a cold reset (see package iscsi).
func (t *Target) TaskManagement(ctx context.Context, n Nexus, fn TMF, lun uint64, refTag uint32) TMFResponse {
	switch fn {
	case AbortTask:
		t.mu.Lock()
		tk := t.mu.tasks[taskKey{n.Key(), refTag}]
		t.mu.Unlock()
		if tk == nil || tk.lun != lun {
			return TMFTaskNotFound
		}
		t.abortTasks(ctx, func(o *task) bool { return o == tk })
		return TMFComplete
	case AbortTaskSet, ClearTaskSet, LogicalUnitReset:
		lu := t.lun(n, lun)
		if lu == nil {
			return TMFLUNNotFound
		}
		key := n.Key()
		switch fn {
		case AbortTaskSet:
			t.abortTasks(ctx, func(o *task) bool { return o.lu == lu && o.key == key })
		case ClearTaskSet:
			for _, other := range t.abortTasks(ctx, func(o *task) bool { return o.lu == lu }) {
				if other.Key() != key {
					lu.raiseNexus(other, SenseCommandsCleared())
				}
			}
		default:
			t.abortTasks(ctx, func(o *task) bool { return o.lu == lu })
			lu.reset(SenseLUNReset())
			lu.resetShared(ctx, true)
		}
		return TMFComplete
	case TargetWarmReset, TargetColdReset:
		lus := t.visibleLUs(n)
		t.abortTasks(ctx, func(o *task) bool { return slices.Contains(lus, o.lu) })
		for _, lu := range lus {
			lu.reset(SensePowerOnReset())
			lu.resetShared(ctx, false)
		}
		return TMFComplete
	case ClearACA:
		return TMFNotSupported
	}
	return TMFNotSupported
}

// visibleLUs returns the logical units nexus n sees, each once.
func (t *Target) visibleLUs(n Nexus) []*LogicalUnit {
	if t.resolver == nil {
		return nil
	}
	var lus []*LogicalUnit
	for _, lun := range t.resolver.LUNs(n.InitiatorName) {
		if lu := t.lun(n, lun); lu != nil && !slices.Contains(lus, lu) {
			lus = append(lus, lu)
		}
	}
	return lus
}

// LogicalUnitOf names the logical unit nexus n reaches at lun: its unit
// serial number, the same for every nexus and LUN number that reach the
// unit. It reports false when n reaches no unit there. A transport that
// holds tasks of its own before they reach Execute (queued in command
// order, waiting for data) uses it to scope task management to the
// logical unit rather than to a LUN number, which names different units
// for different hosts.
func (t *Target) LogicalUnitOf(n Nexus, lun uint64) (string, bool) {
	if t.resolver == nil {
		return "", false
	}
	lu := t.resolver.LUN(n.InitiatorName, lun)
	if lu == nil {
		return "", false
	}
	return lu.serial, true
}

// LogicalUnitsOf names (as LogicalUnitOf does) every logical unit nexus n
// sees: the scope of a target reset from n.
func (t *Target) LogicalUnitsOf(n Nexus) []string {
	lus := t.visibleLUs(n)
	names := make([]string, len(lus))
	for i, lu := range lus {
		names[i] = lu.serial
	}
	return names
}

// TasksCleared tells the target that the transport dropped tasks of nexus
// n for lun before they reached Execute, because another nexus cleared
// the unit's task set (CLEAR TASK SET): n gets the COMMANDS CLEARED BY
// ANOTHER INITIATOR unit attention, as it would had the tasks been
// running here.
func (t *Target) TasksCleared(n Nexus, lun uint64) {
	if lu := t.lun(n, lun); lu != nil {
		lu.raiseNexus(n, SenseCommandsCleared())
	}
}

// NexusLost forgets an I_T nexus that is gone (its session ended): its
// unit attentions and SCSI-2 reservations are dropped, so a nexus with the
// same name starts afresh with a power on/reset unit attention. Persistent
// reservations are kept.
func (t *Target) NexusLost(n Nexus) {
	key := n.Key()
	t.abortTasks(context.Background(), func(o *task) bool { return o.key == key })
	for _, lu := range t.knownLUs() {
		lu.nexusLost(n)
	}
}

// LUNsChanged raises REPORTED LUNS DATA HAS CHANGED on every I_T nexus of
// the initiator (named case-insensitively, as iSCSI names compare), for
// the array to call when the LUNs the initiator sees changed: a volume
// mapped or unmapped, a LUN renumbered. Each nexus hears of it through
// every logical unit the initiator sees now and the nexus has used (a
// unit attention is reported through a logical unit); a nexus that has
// used none gets POWER ON, RESET on its first command anyway. An empty
// initiator means every nexus of every unit.
func (t *Target) LUNsChanged(initiator string) {
	lus := t.knownLUs()
	if initiator != "" {
		lus = t.visibleLUs(Nexus{InitiatorName: initiator})
	}
	for _, lu := range lus {
		lu.raiseFor(initiator, SenseLUNsChanged())
	}
}

// DataOutLength returns how many bytes of data-out the CDB transfers, for
// the transport to report residuals against the expected transfer length.
func (t *Target) DataOutLength(_ Nexus, _ uint64, cdb []byte) (uint32, bool) {
	return dataOutLength(cdb)
}

// raiseNexus queues unit attention s for nexus n if the unit knows it.
func (lu *LogicalUnit) raiseNexus(n Nexus, s Sense) {
	lu.mu.Lock()
	defer lu.mu.Unlock()
	if ns := lu.mu.nexus[n.Key()]; ns != nil {
		ns.raise(s)
	}
}

// backendError turns a Backend error into sense data: out of space is
// SPACE ALLOCATION FAILED, a unit no longer served here NOT READY
// (transitioning), data that cannot be read back (damaged, or a
// read the disk failed) an unrecovered read error with the LBA of the first
// bad block, anything else an internal target failure (logged).
func (x *exec) backendError(op string, err error) *Result {
	var ce *store.CorruptError
	switch {
	case errors.Is(err, store.ErrNoSpace):
		return checkCondition(SenseSpaceAllocFailed())
	case errors.Is(err, ErrTransitioning):
		return checkCondition(SenseNotReadyTransitioning())
	case errors.As(err, &ce):
		x.t.log.Warn("medium error", "lu", x.lu.serial, "op", op, "lba", ce.Offset/BlockSize, "err", err)
		return checkCondition(SenseMediumErrorAt(uint64(ce.Offset / BlockSize)))
	case errors.Is(err, store.ErrCorrupt):
		x.t.log.Warn("medium error", "lu", x.lu.serial, "op", op, "err", err)
		return checkCondition(SenseMediumError())
	case x.ctx.Err() != nil:
		// Aborted or the session went away: nobody sees this status.
		return checkCondition(SenseHardwareError())
	}
	x.t.log.Error("backend failure", "lu", x.lu.serial, "op", op, "err", err)
	return checkCondition(SenseHardwareError())
}
