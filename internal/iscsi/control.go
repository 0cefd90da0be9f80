package iscsi

import (
	"slices"
	"strconv"
	"sync"

	"github.com/metro-storage/metro/internal/scsi"
)

// handleNopOut answers an initiator ping (echoing its data) or records the
// answer to a target ping.
func (c *conn) handleNopOut(h *bhs, data []byte) error {
	if h.itt() == reservedTag {
		// An answer to the target's NOP-In (TTT) or a ping that wants no
		// answer (TTT reserved).
		if ttt := h.ttt(); ttt != reservedTag && ttt == c.pingTTT.Load() {
			c.pingTTT.Store(0)
		}
		return nil
	}
	if h.ttt() != reservedTag {
		return protoErr("NOP-Out ping with TTT 0x%x", h.ttt())
	}
	p := c.srv.getOut()
	p.h.setOpcode(opNopIn, false)
	p.h[1] = flagFinal
	p.h.setLUNRaw(h.lunRaw())
	p.h.setITT(h.itt())
	p.h.setField20(reservedTag)
	if len(data) > 0 {
		n := min(uint32(len(data)), c.sess.p.MaxXmitDataSegment)
		p.data = append([]byte(nil), data[:n]...)
	}
	p.stat = statAdvance
	c.out.push(p)
	return nil
}

// textExchange is a Text request/response exchange that spans PDUs.
type textExchange struct {
	active bool
	itt    uint32
	ttt    uint32
	req    []byte
	resp   []byte
}

// handleText serves Text requests: SendTargets, request text continued
// over several PDUs (C bit) and long answers fetched with the TTT.
func (c *conn) handleText(h *bhs, data []byte) error {
	x := &c.text
	if ttt := h.ttt(); ttt != reservedTag {
		if !x.active || ttt != x.ttt || h.itt() != x.itt {
			c.reject(h, rejectInvalidField)
			return nil
		}
	} else {
		*x = textExchange{active: true, itt: h.itt()}
	}
	if len(x.resp) > 0 {
		return c.sendTextChunk(h)
	}
	if len(x.req)+len(data) > maxTextLen {
		*x = textExchange{}
		return protoErr("text request longer than %d bytes", maxTextLen)
	}
	x.req = append(x.req, data...)
	if h.cont() {
		x.ttt = c.sess.newTTT()
		c.queueText(h, nil, false, x.ttt)
		return nil
	}
	kvs, err := parseText(x.req)
	x.req = nil
	if err != nil {
		*x = textExchange{}
		c.log.Debug("iscsi malformed text request rejected", "err", err)
		c.reject(h, rejectProtocolError)
		return nil
	}
	var tb textBuilder
	for _, p := range kvs {
		switch {
		case p.Key == "SendTargets":
			c.sendTargets(p.Value, &tb)
		case isSecurityKey(p.Key) || isDeclarativeNameKey(p.Key):
			tb.add(p.Key, valReject)
		case p.Value == valNotUnderstood || p.Value == valIrrelevant || p.Value == valReject:
		default:
			tb.add(p.Key, valNotUnderstood)
		}
	}
	x.resp = tb.bytes()
	return c.sendTextChunk(h)
}

// sendTextChunk sends the next part of a text answer: with the C bit and
// a TTT when more follows, final otherwise.
func (c *conn) sendTextChunk(h *bhs) error {
	x := &c.text
	n := min(uint32(len(x.resp)), c.sess.p.MaxXmitDataSegment)
	chunk := x.resp[:n]
	x.resp = x.resp[n:]
	if len(x.resp) > 0 {
		x.ttt = c.sess.newTTT()
		c.queueText(h, chunk, true, x.ttt)
		return nil
	}
	c.queueText(h, chunk, false, reservedTag)
	*x = textExchange{}
	return nil
}

// queueText queues a Text Response; more means C=1 (else F=1 when the
// TTT is reserved).
func (c *conn) queueText(h *bhs, data []byte, more bool, ttt uint32) {
	p := c.srv.getOut()
	p.h.setOpcode(opTextResp, false)
	switch {
	case more:
		p.h[1] = flagContinue
	case ttt == reservedTag:
		p.h[1] = flagFinal
	}
	p.h.setLUNRaw(h.lunRaw())
	p.h.setITT(h.itt())
	p.h.setField20(ttt)
	p.data = data
	p.stat = statAdvance
	c.out.push(p)
}

// sendTargets answers SendTargets=All, =<name> or = (the session's own
// target).
func (c *conn) sendTargets(value string, tb *textBuilder) {
	s := c.sess
	targets := c.srv.cfg.Backend.Targets(s.initiator)
	for _, t := range targets {
		switch {
		case value == "All":
		case value == "" && !s.discovery && t.Name == s.target:
		case value != "" && t.Name == value:
		default:
			continue
		}
		tb.add("TargetName", t.Name)
		addrs := t.Addresses
		if len(addrs) == 0 {
			addrs = []string{c.nc.LocalAddr().String() + "," + strconv.Itoa(int(c.srv.cfg.TPGT))}
		}
		for _, a := range addrs {
			tb.add("TargetAddress", a)
		}
	}
}

// Logout reasons and responses (RFC 7143 11.14, 11.15).
const (
	logoutCloseSession    = 0
	logoutCloseConnection = 1
	logoutRecovery        = 2
	logoutOK              = 0
	logoutCIDNotFound     = 1
	logoutNoRecovery      = 2
)

// handleLogout ends the session: tasks not yet started are dropped, the
// running ones and the task management functions received before waited
// for (their responses precede it), then the Logout Response is sent and
// the connection closed.
func (c *conn) handleLogout(h *bhs) error {
	s := c.sess
	reason := h.flags() & 0x7f
	switch {
	case reason == logoutRecovery:
		c.queueLogout(h, logoutNoRecovery, false)
		return nil
	case reason == logoutCloseConnection && h.cid() != c.cid:
		c.queueLogout(h, logoutCIDNotFound, false)
		return nil
	case reason != logoutCloseSession && reason != logoutCloseConnection:
		c.reject(h, rejectInvalidField)
		return nil
	}
	s.mu.Lock()
	s.mu.loggingOut = true
	s.mu.Unlock()
	s.abortWhere(func(*task) bool { return true })
	waits := s.waitRunning()
	waits = append(waits, s.tmfs.idle())
	hdr := *h
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer c.srv.recoverPanic(c.log, "a logout", c.close)
		if waitAll(s, waits) {
			c.queueLogout(&hdr, logoutOK, true)
		}
	}()
	return nil
}

func (c *conn) queueLogout(h *bhs, response byte, closeAfter bool) {
	p := c.srv.getOut()
	p.h.setOpcode(opLogoutResp, false)
	p.h[1] = flagFinal
	p.h[2] = response
	p.h.setITT(h.itt())
	if response == logoutOK {
		p.h[40], p.h[41] = byte(c.sess.p.DefaultTime2Wait>>8), byte(c.sess.p.DefaultTime2Wait)
		p.h[42], p.h[43] = byte(c.sess.p.DefaultTime2Retain>>8), byte(c.sess.p.DefaultTime2Retain)
	}
	p.stat = statAdvance
	p.closeAfter = closeAfter
	c.out.push(p)
}

// tmfTaskReassign is TASK REASSIGN (ErrorRecoveryLevel 2 only).
const tmfTaskReassign = 8

// handleTMF runs a Task Management Function Request.
func (c *conn) handleTMF(h *bhs) error {
	s := c.sess
	fn := scsi.TMF(h.flags() & 0x7f)
	lun := decodeLUN(h.lunRaw())
	hdr := *h
	if s.discovery {
		c.queueTMF(&hdr, scsi.TMFNotSupported, false)
		return nil
	}
	switch fn {
	case scsi.AbortTask:
		return c.abortTask(&hdr, lun)
	case scsi.AbortTaskSet, scsi.ClearTaskSet, scsi.LogicalUnitReset, scsi.TargetWarmReset, scsi.TargetColdReset:
		c.taskSetTMF(&hdr, fn, lun)
	case scsi.ClearACA:
		c.queueTMF(&hdr, scsi.TMFNotSupported, false)
	case tmfTaskReassign:
		c.queueTMF(&hdr, scsi.TMFReassignUnsupported, false)
	default:
		c.queueTMF(&hdr, scsi.TMFRejected, false)
	}
	return nil
}

// abortTask implements ABORT TASK (RFC 7143 11.5.1): a task not started
// yet is dropped here; a running one is aborted by the executor; a task
// never received whose RefCmdSN is in the window counts as received.
func (c *conn) abortTask(h *bhs, lun uint64) error {
	s := c.sess
	ref := h.refTag()
	t := s.lookup(ref)
	if t == nil || t.cmd.LUN != lun {
		resp := scsi.TMFTaskNotFound
		if t == nil && s.considerReceived(h.refCmdSN(), h.cmdSN()) {
			resp = scsi.TMFComplete
		}
		c.queueTMF(h, resp, false)
		return c.drainPending()
	}
	running := s.abortWhere(func(x *task) bool { return x == t })
	if len(running) == 0 {
		c.queueTMF(h, scsi.TMFComplete, false)
		return nil
	}
	s.goTMF(func() {
		resp := c.srv.cfg.Executor.TaskManagement(s.ctx, s.nexus, scsi.AbortTask, lun, ref)
		var waits []chan struct{}
		s.mu.Lock()
		switch {
		case t.finished && t.responded:
			// It completed (and answered) first.
			if resp == scsi.TMFComplete {
				resp = scsi.TMFTaskNotFound
			}
		case resp == scsi.TMFComplete:
			t.abortRequested = true
			waits = append(waits, t.doneChLocked())
		default:
			// Let it finish so its response precedes ours.
			waits = append(waits, t.doneChLocked())
		}
		s.mu.Unlock()
		if !waitAll(s, waits) {
			return
		}
		c.queueTMF(h, resp, false)
	})
	return nil
}

// taskSetTMF implements the functions that act on a task set, each
// confined to what the caller can see, because every host of the array
// may send them and none may disturb another's volumes:
//   - ABORT TASK SET: the caller's own tasks for the LUN;
//   - CLEAR TASK SET and LOGICAL UNIT RESET: the logical unit behind the
//     caller's LUN, in every session that reaches it, at whatever LUN
//     number that session uses (SAM-5), and no other unit, even where
//     another host's LUN has the same number;
//   - TARGET WARM RESET: every logical unit the caller sees, in every
//     session that reaches one (a logical unit reset of each);
//   - TARGET COLD RESET: the same, after which the caller's own
//     connection is closed. RFC 7143 has a cold reset close every
//     session of every initiator; on an array shared by many hosts that
//     would let any host cut all the others off, so it is confined to
//     the caller's view like the warm reset: the caller sees the whole
//     reset (its units reset, its session ended), other hosts see only
//     the unit attention of units they share with it. Refusing it, as
//     LIO does by default (it refuses both target resets), would have
//     been the other safe choice; this one keeps what initiators and
//     conformance suites expect of a target reset (tasks aborted, SCSI-2
//     reservations released) on the caller's units.
//
// Tasks not started yet are dropped here; the executor aborts the running
// ones and resets the units.
func (c *conn) taskSetTMF(h *bhs, fn scsi.TMF, lun uint64) {
	s := c.sess
	scope := c.tmfScope(fn, lun)
	var running []*task
	if match := scope(s); match != nil {
		running, _ = s.abortScoped(match)
	}
	if fn != scsi.AbortTaskSet {
		lus := c.srv.units
		for _, o := range c.srv.allSessions() {
			if o == s || o.discovery {
				continue
			}
			match := scope(o)
			if match == nil {
				continue
			}
			if _, dropped := o.abortScoped(match); fn == scsi.ClearTaskSet && lus != nil {
				for _, l := range dropped {
					lus.TasksCleared(o.nexus, l)
				}
			}
		}
	}
	ref := h.refTag()
	s.goTMF(func() {
		resp := c.srv.cfg.Executor.TaskManagement(s.ctx, s.nexus, fn, lun, ref)
		var waits []chan struct{}
		if resp == scsi.TMFComplete {
			waits = s.markAborted(running)
		} else {
			s.mu.Lock()
			for _, t := range running {
				waits = append(waits, t.doneChLocked())
			}
			s.mu.Unlock()
		}
		if !waitAll(s, waits) {
			return
		}
		c.queueTMF(h, resp, fn == scsi.TargetColdReset && resp == scsi.TMFComplete)
	})
}

// goTMF runs the rest of a task management function, which waits for the
// executor and for tasks, on a goroutine of the session.
func (s *session) goTMF(f func()) {
	s.tmfs.add()
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer s.tmfs.done()
		defer s.srv.recoverPanic(s.srv.log, "a task management function", s.terminate)
		f()
	}()
}

// tmfTracker counts a session's task management functions not answered
// yet, for a logout to answer after them.
type tmfTracker struct {
	mu sync.Mutex
	n  int
	// zero is closed when n drops to 0 (nil while n is 0).
	zero chan struct{}
}

func (tr *tmfTracker) add() {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	if tr.n == 0 {
		tr.zero = make(chan struct{})
	}
	tr.n++
}

func (tr *tmfTracker) done() {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	if tr.n--; tr.n == 0 {
		close(tr.zero)
		tr.zero = nil
	}
}

// idle returns a channel closed once the functions counted now are
// answered.
func (tr *tmfTracker) idle() chan struct{} {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	if tr.zero == nil {
		c := make(chan struct{})
		close(c)
		return c
	}
	return tr.zero
}

// tmfScope returns, for a task-set function from this connection's
// session, which tasks of a session o it acts on (nil: none). Sessions
// name logical units by their own LUN numbers, so for the functions that
// reach beyond the caller's session the units are matched by the names
// the executor gives them (LogicalUnits), resolved with each session's
// own nexus. An executor that gives no names confines every function to
// the caller's session.
func (c *conn) tmfScope(fn scsi.TMF, lun uint64) func(o *session) func(*task) bool {
	s := c.sess
	targetReset := fn == scsi.TargetWarmReset || fn == scsi.TargetColdReset
	lus := c.srv.units
	named := lus != nil
	if fn == scsi.AbortTaskSet || !named {
		return func(o *session) func(*task) bool {
			switch {
			case o != s:
				return nil
			case targetReset:
				return func(*task) bool { return true }
			}
			return func(t *task) bool { return t.cmd.LUN == lun }
		}
	}
	var units []string
	if targetReset {
		units = lus.LogicalUnitsOf(s.nexus)
	} else if u, ok := lus.LogicalUnitOf(s.nexus, lun); ok {
		units = []string{u}
	}
	return func(o *session) func(*task) bool {
		var luns []uint64
		for _, l := range o.taskLUNs() {
			if u, ok := lus.LogicalUnitOf(o.nexus, l); ok && slices.Contains(units, u) {
				luns = append(luns, l)
			}
		}
		if len(luns) == 0 {
			return nil
		}
		return func(t *task) bool { return slices.Contains(luns, t.cmd.LUN) }
	}
}

// taskLUNs returns the LUNs the session's unfinished tasks address, each
// once.
func (s *session) taskLUNs() []uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	var luns []uint64
	for _, t := range s.mu.tasks {
		if !slices.Contains(luns, t.cmd.LUN) {
			luns = append(luns, t.cmd.LUN)
		}
	}
	return luns
}

// abortScoped is abortWhere that also returns the LUNs of the tasks it
// dropped (those not started).
func (s *session) abortScoped(match func(*task) bool) (running []*task, dropped []uint64) {
	running = s.abortWhere(func(t *task) bool {
		if !match(t) {
			return false
		}
		if !t.started && !slices.Contains(dropped, t.cmd.LUN) {
			dropped = append(dropped, t.cmd.LUN)
		}
		return true
	})
	return running, dropped
}

// waitAll waits for the channels, giving up when the session ends.
func waitAll(s *session, waits []chan struct{}) bool {
	for _, w := range waits {
		select {
		case <-w:
		case <-s.ctx.Done():
			return false
		}
	}
	return true
}

func (c *conn) queueTMF(h *bhs, resp scsi.TMFResponse, closeAfter bool) {
	p := c.srv.getOut()
	p.h.setOpcode(opTMFResp, false)
	p.h[1] = flagFinal
	p.h[2] = byte(resp)
	p.h.setITT(h.itt())
	p.stat = statAdvance
	p.closeAfter = closeAfter
	c.out.push(p)
}
