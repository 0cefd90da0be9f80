package iscsi

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"

	"github.com/metro-storage/metro/internal/scsi"
)

// session is one iSCSI session (one connection at ErrorRecoveryLevel 0).
//
// Command numbering: ExpCmdSN advances as non-immediate PDUs arrive in
// CmdSN order (ones that arrive early wait in pending); MaxCmdSN starts at
// ExpCmdSN+window-1 and grows by one each time a numbered PDU is done
// with (a SCSI task finishes or is aborted, a control PDU is handled), so
// at most window numbered PDUs are ever held and MaxCmdSN never shrinks.
//
// Task flow: a SCSI command is registered by ITT when it arrives and
// collects its data-out; in CmdSN order it enters fifo, from whose head
// tasks whose data is complete are delivered to the task set (active),
// where the SAM rules for SIMPLE, ORDERED and HEAD OF QUEUE decide when
// each starts (one goroutine per running task).
type session struct {
	srv       *Server
	key       sessionKey
	tsih      uint16
	isid      [6]byte
	initiator string
	target    string
	discovery bool
	nexus     scsi.Nexus
	p         params
	window    uint32
	remote    string
	// log is the connection's logger, with the session's identity once
	// the login is done.
	log *slog.Logger

	// ctx is cancelled when the session ends; commands run under it.
	ctx    context.Context
	cancel context.CancelFunc
	// ended is closed once the session is fully torn down (tasks
	// returned, NexusLost called, unregistered).
	ended   chan struct{}
	endOnce sync.Once
	// wg counts tasks, task-management goroutines and workers.
	wg sync.WaitGroup
	// tmfs counts the task management functions not answered yet.
	tmfs tmfTracker
	// work hands a started task to an idle worker; when none is idle a
	// new worker is started. Workers live until the session ends, so
	// their stacks are grown once rather than for every command.
	work chan *task

	// ttt hands out Target Transfer Tags (R2T, text continuation, NOP-In).
	ttt atomic.Uint32
	// expPub and maxPub publish ExpCmdSN and MaxCmdSN to the writer,
	// which stamps them into every PDU.
	expPub, maxPub atomic.Uint32
	// wb and rb are the session's parts of the server's write and read
	// budgets (guarded by the budgets' locks).
	wb, rb sessionBudget

	mu struct {
		sync.Mutex
		// conn is the session's connection.
		conn *conn
		// expCmdSN and maxCmdSN are the command window (authoritative;
		// expPub/maxPub mirror them).
		expCmdSN, maxCmdSN uint32
		// pending holds numbered PDUs that arrived ahead of ExpCmdSN.
		pending map[uint32]*pendingEntry
		// tasks are the SCSI tasks not yet finished, by ITT.
		tasks map[uint32]*task
		// fifo holds non-immediate tasks in CmdSN order until delivery.
		fifo taskQueue
		// active is the task set: delivered tasks in delivery order.
		active taskList
		// numOrdered counts ORDERED tasks in active; blocked counts
		// tasks in active that have not started.
		numOrdered, blocked int
		// immediate counts unfinished immediate tasks.
		immediate uint32
		// r2tWait holds the writes waiting for write budget before
		// their next R2T, in the order they began to wait; readWait the
		// commands with data-in waiting for read budget to start.
		r2tWait, readWait []*task
		// owed counts the command slots freed while the session held
		// its write budget or more: MaxCmdSN advances by them once it
		// holds less (payLocked).
		owed uint32
		// ending is set once the session is being torn down;
		// loggingOut once a logout was requested (no new tasks).
		ending, loggingOut bool
	}
}

// pendingEntry is a numbered PDU received ahead of ExpCmdSN: a SCSI task,
// a control PDU (header and data copy), or an empty placeholder for a
// command slot that is already done with (an aborted task, a RefCmdSN an
// ABORT TASK declared received).
type pendingEntry struct {
	task    *task
	control bool
	hdr     bhs
	data    []byte
}

func newSession(srv *Server, l *login, p params) *session {
	s := &session{
		srv:       srv,
		key:       sessionKey{initiator: l.initiator, isid: l.isid, target: l.target},
		isid:      l.isid,
		initiator: l.initiator,
		target:    l.target,
		discovery: l.discovery,
		p:         p,
		window:    srv.cfg.CmdWindow,
		remote:    l.c.remote,
		log:       l.c.log,
		ended:     make(chan struct{}),
	}
	s.nexus = scsi.Nexus{
		InitiatorName:  l.initiator,
		InitiatorPort:  fmt.Sprintf("%s,i,0x%s", l.initiator, isidString(l.isid)),
		TargetPort:     fmt.Sprintf("%s,t,0x%04x", l.target, srv.cfg.TPGT),
		RelativePortID: srv.cfg.RelativePortID,
	}
	ctx, cancel := context.WithCancel(context.Background())
	s.ctx, s.cancel = context.WithValue(ctx, sessionCtxKey{}, s), cancel
	s.work = make(chan *task)
	s.mu.conn = l.c
	s.mu.expCmdSN = l.cmdSN
	s.mu.maxCmdSN = l.cmdSN + s.window - 1
	s.mu.pending = make(map[uint32]*pendingEntry)
	s.mu.tasks = make(map[uint32]*task)
	s.publishLocked()
	s.ttt.Store(uint32(l.tsih) << 16)
	return s
}

func (s *session) info() SessionInfo {
	s.mu.Lock()
	defer s.mu.Unlock()
	return SessionInfo{
		InitiatorName: s.initiator,
		ISID:          isidString(s.isid),
		TSIH:          s.tsih,
		Target:        s.target,
		Discovery:     s.discovery,
		RemoteAddr:    s.remote,
		HeaderDigest:  digestName(s.p.HeaderDigest),
		DataDigest:    digestName(s.p.DataDigest),
	}
}

// newTTT returns a fresh Target Transfer Tag (never the reserved value).
func (s *session) newTTT() uint32 {
	for {
		if t := s.ttt.Add(1); t != reservedTag {
			return t
		}
	}
}

func (s *session) publishLocked() {
	s.expPub.Store(s.mu.expCmdSN)
	s.maxPub.Store(s.mu.maxCmdSN)
}

// grantLocked frees one command slot: MaxCmdSN advances, unless the
// session holds its write budget or more. The window then stops opening,
// so the host cannot send more commands with data it does not ask for,
// until the session's writes give budget back (payLocked).
func (s *session) grantLocked() {
	if s.srv.budget.over(s) {
		s.mu.owed++
		return
	}
	s.mu.maxCmdSN++
	s.maxPub.Store(s.mu.maxCmdSN)
}

// payLocked opens the slots withheld while the session was over its
// write budget, once it no longer is. It is called wherever the session
// gives write budget back, before the PDU that tells the initiator (the
// task's response) can be written.
func (s *session) payLocked() {
	if s.mu.owed == 0 || s.srv.budget.over(s) {
		return
	}
	s.mu.maxCmdSN += s.mu.owed
	s.mu.owed = 0
	s.maxPub.Store(s.mu.maxCmdSN)
}

// snVerdict is where a numbered PDU stands against the window.
type snVerdict int

const (
	snInOrder snVerdict = iota // CmdSN == ExpCmdSN
	snAhead                    // in the window, waiting for earlier ones
	snDrop                     // outside the window or a duplicate: ignore
)

// check classifies a non-immediate PDU's CmdSN. Only the reader goroutine
// moves ExpCmdSN and fills pending, so the verdict stays valid until the
// reader acts on it.
func (s *session) check(sn uint32) snVerdict {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.mu.ending || !snInWindow(sn, s.mu.expCmdSN, s.mu.maxCmdSN) {
		return snDrop
	}
	if sn == s.mu.expCmdSN {
		return snInOrder
	}
	if _, dup := s.mu.pending[sn]; dup {
		return snDrop
	}
	return snAhead
}

// accept records an in-order PDU: ExpCmdSN advances and, for a task, it
// joins the delivery queue.
func (s *session) accept(t *task) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.mu.expCmdSN++
	s.publishLocked()
	if t != nil {
		s.enqueueLocked(t)
	}
}

// hold stores a PDU that arrived ahead of ExpCmdSN.
func (s *session) hold(sn uint32, e *pendingEntry) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if e.task != nil && e.task.aborted {
		e.task = nil
	}
	s.mu.pending[sn] = e
	if e.task != nil {
		e.task.where = inPending
	}
}

// nextPending pops the entry for ExpCmdSN, if it has arrived, advancing
// ExpCmdSN. Tasks go to the delivery queue and placeholders free their
// slot here; control entries are returned for the caller to run.
func (s *session) nextPending() (*pendingEntry, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.mu.pending[s.mu.expCmdSN]
	if !ok {
		return nil, false
	}
	delete(s.mu.pending, s.mu.expCmdSN)
	s.mu.expCmdSN++
	s.publishLocked()
	switch {
	case e.task != nil:
		s.enqueueLocked(e.task)
	case !e.control:
		s.grantLocked()
	}
	return e, true
}

// considerReceived implements ABORT TASK for a task that never arrived
// (RFC 7143 11.5.1): if refSN is in the window (and before the TMF's own
// CmdSN) the slot counts as received and done. It reports whether it did.
func (s *session) considerReceived(refSN, tmfSN uint32) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !snInWindow(refSN, s.mu.expCmdSN, s.mu.maxCmdSN) || !snLess(refSN, tmfSN) {
		return false
	}
	if refSN == s.mu.expCmdSN {
		s.mu.expCmdSN++
		s.publishLocked()
		s.grantLocked()
		return true
	}
	if _, ok := s.mu.pending[refSN]; !ok {
		s.mu.pending[refSN] = &pendingEntry{}
	}
	return true
}

// register adds a task by ITT. It fails, with the reason for the Reject,
// when the ITT is in use, too many immediate commands are outstanding or
// the session is logging out.
func (s *session) register(t *task) (ok bool, reason byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.mu.ending || s.mu.loggingOut:
		return false, rejectWaitingLogout
	case s.mu.tasks[t.itt] != nil:
		return false, rejectTaskInProgress
	case t.immediate && s.mu.immediate >= s.window:
		return false, rejectImmediate
	}
	if t.immediate {
		s.mu.immediate++
	}
	s.mu.tasks[t.itt] = t
	return true, 0
}

// lookup returns the unfinished task with the ITT.
func (s *session) lookup(itt uint32) *task {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.mu.tasks[itt]
}

// enqueueLocked puts a task that arrived in CmdSN order on the delivery
// queue.
func (s *session) enqueueLocked(t *task) {
	if t.aborted {
		s.grantLocked()
		return
	}
	t.where = inFIFO
	s.mu.fifo.push(t)
	s.pumpLocked()
}

// dataCompleteLocked marks a task's data-out complete and delivers what
// can be.
func (s *session) dataCompleteLocked(t *task) {
	if t.aborted || s.mu.ending {
		return
	}
	t.ready = true
	switch t.where {
	case inFIFO:
		s.pumpLocked()
	case inNone: // immediate: bypasses CmdSN ordering
		s.activateLocked(t)
	}
}

// pumpLocked delivers tasks from the head of the queue whose data is
// complete.
func (s *session) pumpLocked() {
	for {
		t := s.mu.fifo.peek()
		if t == nil || !(t.ready || t.aborted) {
			return
		}
		s.mu.fifo.pop()
		if !t.aborted {
			s.activateLocked(t)
		}
	}
}

// activateLocked adds a task to the task set and starts it if the SAM
// task attribute rules allow.
func (s *session) activateLocked(t *task) {
	t.where = inActive
	s.mu.active.push(t)
	s.mu.blocked++
	switch t.attr {
	case scsi.TaskHeadOfQueue:
		s.startLocked(t)
	case scsi.TaskOrdered:
		s.mu.numOrdered++
		if s.mu.active.head == t {
			s.startLocked(t)
		}
	default:
		if s.mu.numOrdered == 0 {
			s.startLocked(t)
		}
	}
}

// rescanLocked starts the tasks an ORDERED task was holding back.
func (s *session) rescanLocked() {
	if s.mu.blocked == 0 || s.mu.ending {
		return
	}
	for t := s.mu.active.head; t != nil; t = t.next {
		if t.attr == scsi.TaskOrdered {
			if t == s.mu.active.head && !t.started {
				s.startLocked(t)
			}
			return
		}
		if !t.started {
			s.startLocked(t)
		}
	}
}

// startLocked starts a task that the task set rules let start, once its
// data-in fits in the read budget.
func (s *session) startLocked(t *task) {
	if !s.readAdmittedLocked(t) {
		return
	}
	t.started = true
	s.mu.blocked--
	s.wg.Add(1)
	select {
	case s.work <- t:
	default:
		s.wg.Add(1)
		go s.worker(t)
	}
}

// readAdmittedLocked counts a task's expected data-in in the read budget
// before it starts. When it does not fit the task waits in readWait,
// behind the session's tasks that wait already, still blocked in the task
// set, and admitReads starts it later.
func (s *session) readAdmittedLocked(t *task) bool {
	if t.readCharged > 0 {
		return true
	}
	n := t.readCharge()
	if n == 0 {
		return true
	}
	if t.readWaiting {
		return false
	}
	if len(s.mu.readWait) == 0 && s.srv.reads.reserve(s, n) {
		t.readCharged = n
		return true
	}
	t.readWaiting = true
	s.mu.readWait = append(s.mu.readWait, t)
	return false
}

// readCharge is what a command with data-in counts in the read budget:
// its Expected Data Transfer Length, or what its CDB reads if that is
// more (a READ whose expected length is short still makes the Executor
// read, and hold, every block it names), up to MaxTransferLength.
func (t *task) readCharge() uint64 {
	n := t.readLen
	if m, ok := cdbDataInLength(t.cmd.CDB, scsi.BlockSize); ok {
		n = max(n, min(m, t.sess.srv.cfg.MaxTransferLength))
	}
	return uint64(n)
}

// admitReads starts the tasks waiting for read budget, in order, as far
// as the budget now allows. The caller holds no session lock.
func (s *session) admitReads() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for len(s.mu.readWait) > 0 && !s.mu.ending {
		t := s.mu.readWait[0]
		if !t.aborted {
			if !s.srv.reads.reserve(s, t.readCharge()) {
				return
			}
			t.readCharged = t.readCharge()
		}
		s.mu.readWait[0] = nil
		s.mu.readWait = s.mu.readWait[1:]
		t.readWaiting = false
		if !t.aborted {
			s.startLocked(t)
		}
	}
	if len(s.mu.readWait) == 0 {
		s.mu.readWait = nil
	}
}

// worker runs tasks until the session ends.
func (s *session) worker(t *task) {
	defer s.wg.Done()
	defer s.srv.recoverPanic(s.log, "a task worker", s.terminate)
	for {
		s.run(t)
		select {
		case t = <-s.work:
		case <-s.ctx.Done():
			return
		}
	}
}

// run executes one task and sends its response.
func (s *session) run(t *task) {
	defer s.wg.Done()
	res := s.srv.cfg.Executor.Execute(s.ctx, &t.cmd)
	s.finish(t, res)
}

// finish retires a task that ran: its slot and write budget are freed
// and, unless it was aborted, its response queued.
func (s *session) finish(t *task, res *scsi.Result) {
	chunks := s.finishLocked(t, res)
	if t.responded {
		t.conn.kick()
	}
	s.srv.budget.wake()
	s.srv.reads.wake()
	for _, b := range chunks {
		s.srv.bufs.put(b)
	}
}

func (s *session) finishLocked(t *task, res *scsi.Result) (chunks []*[]byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.mu.active.remove(t)
	if t.attr == scsi.TaskOrdered {
		s.mu.numOrdered--
	}
	if s.mu.tasks[t.itt] == t {
		delete(s.mu.tasks, t.itt)
	}
	t.finished = true
	// The write budget is given back, and the slots it withheld opened,
	// before the response that carries the new MaxCmdSN is queued.
	chunks = t.chunks
	t.dropDataLocked()
	if t.immediate {
		s.mu.immediate--
	} else {
		s.grantLocked()
	}
	if res != nil && !res.Aborted && !t.abortRequested && !s.mu.ending {
		t.responded = true
		// The read budget goes with the response, given back once it
		// is written.
		t.conn.queueResponse(t, res)
	}
	t.releaseReadLocked()
	if t.doneCh != nil {
		close(t.doneCh)
	}
	s.rescanLocked()
	return chunks
}

// dropDataLocked forgets a task's data-out buffers and uncounts them from
// the write budget (the caller wakes the budget's waiters once it released
// sess.mu). The buffers go back to the pool only from a task that ran:
// the reader may still be receiving into those of an aborted one.
func (t *task) dropDataLocked() {
	t.sess.srv.budget.release(t.sess, t.charged, t.resv)
	t.charged, t.resv = 0, 0
	t.chunks = nil
	t.cmd.DataOut = nil
	t.sess.payLocked()
}

// releaseReadLocked gives back the read budget a task still holds (its
// response did not take it: there was none, or it had no data-in).
func (t *task) releaseReadLocked() {
	if t.readCharged > 0 {
		t.sess.srv.reads.release(t.sess, 0, t.readCharged)
		t.readCharged = 0
	}
}

// abortLocalLocked aborts a task that has not started: it is forgotten
// without a response and its command slot is freed.
func (s *session) abortLocalLocked(t *task) {
	if t.started || t.finished || t.aborted {
		return
	}
	t.aborted = true
	t.dropDataLocked()
	t.releaseReadLocked()
	if s.mu.tasks[t.itt] == t {
		delete(s.mu.tasks, t.itt)
	}
	switch t.where {
	case inPending:
		if e := s.mu.pending[t.cmdSN]; e != nil && e.task == t {
			e.task = nil // placeholder: the slot is freed when reached
		}
	case inFIFO:
		s.grantLocked() // pumpLocked skips it
	case inActive:
		s.mu.active.remove(t)
		s.mu.blocked--
		if t.attr == scsi.TaskOrdered {
			s.mu.numOrdered--
		}
		if !t.immediate {
			s.grantLocked()
		}
	}
	if t.immediate {
		s.mu.immediate--
	}
	if t.doneCh != nil {
		close(t.doneCh)
	}
}

// abortWhere aborts the tasks not yet started for which match is true and
// returns the started, unfinished ones that match (for the executor's task
// management to abort). The reader goroutine of this session calls it
// for its own session; other sessions' readers may call it for
// LUN-wide and target-wide functions.
func (s *session) abortWhere(match func(*task) bool) (running []*task) {
	defer s.srv.reads.wake()
	defer s.srv.budget.wake()
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, t := range s.mu.tasks {
		if !match(t) {
			continue
		}
		if t.started {
			running = append(running, t)
			continue
		}
		s.abortLocalLocked(t)
	}
	s.pumpLocked()
	s.rescanLocked()
	return running
}

// markAborted suppresses the responses of tasks the executor reports
// aborted; it returns a channel per task still running, closed when it
// finishes.
func (s *session) markAborted(ts []*task) []chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	var waits []chan struct{}
	for _, t := range ts {
		if t.finished {
			continue
		}
		t.abortRequested = true
		waits = append(waits, t.doneChLocked())
	}
	return waits
}

// waitRunning returns channels for every started, unfinished task.
func (s *session) waitRunning() []chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	var waits []chan struct{}
	for t := s.mu.active.head; t != nil; t = t.next {
		if t.started && !t.finished {
			waits = append(waits, t.doneChLocked())
		}
	}
	return waits
}

// terminate ends the session from outside (reinstatement): its
// connection is closed and the connection's teardown ends it.
func (s *session) terminate() {
	s.mu.Lock()
	c := s.mu.conn
	s.mu.Unlock()
	if c != nil {
		c.close()
	}
}

// end tears the session down after its connection is gone: commands are
// cancelled, the not-yet-started dropped, the running waited for; then
// the session is unregistered and the SCSI layer told the nexus is lost.
func (s *session) end() {
	s.endOnce.Do(func() {
		s.cancel()
		s.mu.Lock()
		s.mu.ending = true
		for _, t := range s.mu.tasks {
			if !t.started {
				s.abortLocalLocked(t)
			}
		}
		s.mu.pending = make(map[uint32]*pendingEntry)
		s.mu.r2tWait, s.mu.readWait = nil, nil
		s.mu.Unlock()
		s.srv.budget.wake()
		s.srv.reads.wake()
		s.wg.Wait()
		s.srv.unregister(s)
		if !s.discovery {
			s.srv.cfg.Executor.NexusLost(s.nexus)
		}
		close(s.ended)
	})
}

// location is where a task waits.
type location uint8

const (
	inNone    location = iota // collecting data, immediate (not numbered)
	inPending                 // arrived ahead of ExpCmdSN
	inFIFO                    // in CmdSN order, waiting for delivery
	inActive                  // in the task set
)

// taskQueue is a FIFO of tasks.
type taskQueue struct {
	items []*task
	head  int
}

func (q *taskQueue) push(t *task) { q.items = append(q.items, t) }

func (q *taskQueue) peek() *task {
	if q.head == len(q.items) {
		return nil
	}
	return q.items[q.head]
}

func (q *taskQueue) pop() {
	q.items[q.head] = nil
	q.head++
	switch {
	case q.head == len(q.items):
		q.items = q.items[:0]
		q.head = 0
	case q.head > 32 && q.head*2 > len(q.items):
		n := copy(q.items, q.items[q.head:])
		clear(q.items[n:])
		q.items = q.items[:n]
		q.head = 0
	}
}

// taskList is an intrusive doubly linked list of tasks.
type taskList struct {
	head, tail *task
}

func (l *taskList) push(t *task) {
	t.prev, t.next = l.tail, nil
	if l.tail != nil {
		l.tail.next = t
	} else {
		l.head = t
	}
	l.tail = t
	t.listed = true
}

func (l *taskList) remove(t *task) {
	if !t.listed {
		return
	}
	if t.prev != nil {
		t.prev.next = t.next
	} else {
		l.head = t.next
	}
	if t.next != nil {
		t.next.prev = t.prev
	} else {
		l.tail = t.prev
	}
	t.prev, t.next, t.listed = nil, nil, false
}
