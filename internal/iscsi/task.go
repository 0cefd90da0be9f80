package iscsi

import (
	"errors"
	"fmt"
	"time"

	"github.com/metro-storage/metro/internal/scsi"
)

// task is one SCSI command of a session.
type task struct {
	sess      *session
	conn      *conn
	itt       uint32
	cmdSN     uint32
	immediate bool
	attr      scsi.TaskAttr
	lunRaw    uint64
	cmd       scsi.Command
	cdbBuf    [16]byte

	read, write bool
	// writeLen is the Expected Data Transfer Length of the data-out;
	// readLen the expected data-in length.
	writeLen, readLen uint32
	// need is how much of the data-out is kept: writeLen, or less when
	// the CDB transfers less (overflowKept more than the CDB's length;
	// the rest is received and dropped).
	need     uint32
	unsolEnd uint32 // limit of unsolicited data: min(FirstBurstLength, writeLen)

	// Data-out progress, guarded by sess.mu: the reader receives the
	// data, and the next burst may be solicited from another goroutine
	// when budget frees up (session.admitWaiting).
	received  uint32 // contiguous bytes received
	unsolOpen bool   // unsolicited Data-Out PDUs still to come
	dataSN    uint32 // next DataSN expected in the current sequence
	r2tActive bool
	r2tTTT    uint32
	r2tEnd    uint32 // offset the current R2T's data ends at
	r2tSN     uint32 // R2Ts sent so far
	// dataSince is when the data-out now awaited was asked for (the
	// command with an unsolicited burst, or the last R2T; UnixNano).
	dataSince int64
	// chunks hold the data kept so far, one buffer per burst in order
	// (the last one starting at chunkAt) until the last burst, which
	// goes into one buffer of need bytes with the earlier ones copied
	// in, so that the Executor gets the data in one piece.
	chunks  []*[]byte
	chunkAt uint32
	// charged is the unsolicited data the task counts in the write
	// budget, resv its solicited data; reserved is set once that is
	// counted, waiting while it waits for that in sess.mu.r2tWait.
	charged, resv     uint64
	reserved, waiting bool
	// refused is set when its unsolicited data did not fit the write
	// budget: the data is dropped and the command answered TASK SET
	// FULL.
	refused bool
	// readCharged is the data-in the task counts in the read budget,
	// readWaiting set while it waits for that in sess.mu.readWait.
	readCharged uint64
	readWaiting bool

	// Guarded by sess.mu.
	ready          bool // data-out complete
	where          location
	listed         bool
	started        bool
	finished       bool
	aborted        bool // dropped before it started
	abortRequested bool // aborted while running: no response
	responded      bool
	prev, next     *task
	doneCh         chan struct{}
}

// doneChLocked returns a channel closed when the task finishes or is
// aborted (sess.mu held).
func (t *task) doneChLocked() chan struct{} {
	if t.doneCh == nil {
		t.doneCh = make(chan struct{})
		if t.finished || t.aborted {
			close(t.doneCh)
		}
	}
	return t.doneCh
}

// taskAttr maps the ATTR field of a SCSI Command PDU.
func taskAttr(b byte) scsi.TaskAttr {
	switch b & 7 {
	case 2:
		return scsi.TaskOrdered
	case 3:
		return scsi.TaskHeadOfQueue
	case 4:
		return scsi.TaskACA
	}
	// 0 untagged and 1 simple
	return scsi.TaskSimple
}

// overflowKept is how many bytes beyond what its CDB transfers a write's
// data-out keeps when the initiator sends more: enough for the Executor to
// see that it did (see Executor), not enough for a 48-byte command to
// claim megabytes.
const overflowKept = 512

// handleSCSICommand receives a SCSI Command PDU and its immediate data.
func (c *conn) handleSCSICommand(h *bhs, ahs []byte) error {
	s := c.sess
	cfg := &c.srv.cfg
	if s.discovery {
		if err := c.rd.discardData(h); err != nil {
			return err
		}
		c.reject(h, rejectProtocolError)
		return nil
	}
	extCDB, bidiLen, hasBidi, err := parseAHS(ahs)
	if err != nil {
		return protoErr("SCSI command AHS: %v", err)
	}
	flags := h.flags()
	t := &task{
		sess:      s,
		conn:      c,
		itt:       h.itt(),
		cmdSN:     h.cmdSN(),
		immediate: h.immediate(),
		attr:      taskAttr(flags),
		lunRaw:    h.lunRaw(),
		read:      flags&flagRead != 0,
		write:     flags&flagWrite != 0,
	}
	edtl := h.edtl()
	switch {
	case t.write && t.read:
		t.writeLen = edtl
		if hasBidi {
			t.readLen = bidiLen
		}
	case t.write:
		t.writeLen = edtl
	case t.read:
		t.readLen = edtl
	}
	if t.writeLen > cfg.MaxTransferLength || t.readLen > cfg.MaxTransferLength {
		return protoErr("expected data transfer length %d exceeds the limit of %d", max(t.writeLen, t.readLen), cfg.MaxTransferLength)
	}
	imm := h.dataLen()
	if imm > 0 {
		switch {
		case !t.write:
			return protoErr("immediate data on a command without the W bit")
		case !s.p.ImmediateData:
			return protoErr("immediate data while ImmediateData=No")
		case imm > t.writeLen:
			return protoErr("immediate data of %d bytes beyond the expected transfer length %d", imm, t.writeLen)
		case imm > s.p.FirstBurstLength:
			return protoErr("immediate data of %d bytes beyond FirstBurstLength %d", imm, s.p.FirstBurstLength)
		}
	}
	if !h.final() {
		if !t.write {
			return protoErr("SCSI command without F bit and without W bit")
		}
		if s.p.InitialR2T {
			return protoErr("unsolicited data announced while InitialR2T=Yes")
		}
	}

	// CmdSN window.
	verdict := snInOrder
	if !t.immediate {
		verdict = s.check(t.cmdSN)
		if verdict == snDrop {
			c.log.Debug("iscsi command outside the CmdSN window dropped", "cmdsn", t.cmdSN, "itt", t.itt)
			return c.rd.discardData(h)
		}
	}

	cdb := t.cdbBuf[:]
	copy(cdb, h.cdb())
	if len(extCDB) > 0 {
		cdb = append(append(make([]byte, 0, 16+len(extCDB)), t.cdbBuf[:]...), extCDB...)
	}
	t.cmd = scsi.Command{
		Nexus:          s.nexus,
		LUN:            decodeLUN(t.lunRaw),
		Tag:            t.itt,
		Attr:           t.attr,
		CDB:            cdb,
		ExpectedDataIn: t.readLen,
	}

	if ok, reason := s.register(t); !ok {
		if err := c.rd.discardData(h); err != nil {
			return err
		}
		c.reject(h, reason)
		if !t.immediate {
			c.consumeSlot(t.cmdSN, verdict)
			return c.drainPending()
		}
		return nil
	}

	t.need = t.writeLen
	if t.write && t.need > 0 {
		if n, ok := c.srv.dataOutLength(s.nexus, t.cmd.LUN, cdb); ok {
			t.need = uint32(min(uint64(t.need), uint64(n)+overflowKept))
		}
	}
	t.unsolEnd = min(s.p.FirstBurstLength, t.writeLen)
	// F=0 announces unsolicited Data-Out; when the immediate data already
	// holds every byte the command transfers (an Expected Data Transfer
	// Length of 0 among them) there is none to come and the data is
	// complete: a Data-Out that follows finds no burst and is discarded.
	unsolOpen := t.write && !h.final() && imm < t.unsolEnd
	// Immediate and unsolicited data come unasked: their buffer (that
	// burst, no more) is made and counted now, if the write budget
	// admits it; if not, the data is dropped as it comes and the command
	// answered TASK SET FULL (advanceLocked).
	first := imm
	if unsolOpen {
		first = t.unsolEnd
	}
	keep := min(first, t.need)
	if !s.srv.budget.admitUnsolicited(s, uint64(keep)) {
		t.refused, t.need, keep = true, 0, 0
	}
	s.mu.Lock()
	t.received = imm
	t.unsolOpen = unsolOpen
	if unsolOpen {
		t.dataSince = time.Now().UnixNano()
	}
	t.charged = uint64(keep)
	dst := t.addChunkLocked(0, keep)
	s.mu.Unlock()
	if err := c.rd.readData(h, dst[:min(imm, uint32(len(dst)))]); err != nil {
		return err
	}

	switch {
	case t.immediate:
		// Immediate commands bypass CmdSN ordering.
	case verdict == snInOrder:
		s.accept(t)
	default:
		s.hold(t.cmdSN, &pendingEntry{task: t})
	}
	c.advanceData(t)
	if verdict == snInOrder && !t.immediate {
		return c.drainPending()
	}
	return nil
}

// consumeSlot marks a numbered PDU that will not become a task (rejected)
// as received and done.
func (c *conn) consumeSlot(sn uint32, v snVerdict) {
	s := c.sess
	switch v {
	case snInOrder:
		s.accept(nil)
		s.mu.Lock()
		s.grantLocked()
		s.mu.Unlock()
	case snAhead:
		s.hold(sn, &pendingEntry{})
	}
}

// advanceData decides what a write task needs next: more unsolicited data,
// an R2T, or nothing (data complete).
func (c *conn) advanceData(t *task) {
	s := t.sess
	s.mu.Lock()
	defer s.mu.Unlock()
	s.advanceLocked(t)
}

func (s *session) advanceLocked(t *task) {
	if t.unsolOpen || t.r2tActive || t.aborted || s.mu.ending {
		return
	}
	if t.refused {
		t.conn.log.Debug("iscsi write refused: its unsolicited data does not fit the write budget", "itt", t.itt, "cmdsn", t.cmdSN)
		t.conn.endTaskLocked(t, &scsi.Result{Status: scsi.StatusTaskSetFull})
		return
	}
	if t.received < t.writeLen {
		s.solicitLocked(t)
		return
	}
	t.cmd.DataOut = t.dataLocked(&s.srv.bufs)
	s.dataCompleteLocked(t)
}

// addChunkLocked makes the buffer for the data kept of a burst starting
// at off, n bytes long (counted in the write budget already), and returns
// it. An aborted task gets none: its data is dropped.
func (t *task) addChunkLocked(off, n uint32) []byte {
	s := t.sess
	if n == 0 || t.aborted || s.mu.ending {
		return nil
	}
	b := s.srv.bufs.get(int(n))
	t.chunks = append(t.chunks, b)
	t.chunkAt = off
	return *b
}

// stored is how many bytes of the data received are kept.
func (t *task) stored() uint32 { return min(t.received, t.need) }

// dataLocked returns the data kept, in one buffer.
func (t *task) dataLocked(pool *bufferPool) []byte {
	switch len(t.chunks) {
	case 0:
		return nil
	case 1:
		return (*t.chunks[0])[:t.stored()]
	}
	t.mergeLocked(pool, t.stored())
	return *t.chunks[0]
}

// mergeLocked replaces the chunks by one buffer of size bytes holding
// their data. No Data-Out is being read into them (no burst is active).
func (t *task) mergeLocked(pool *bufferPool, size uint32) {
	b := pool.get(int(size))
	off := 0
	for _, c := range t.chunks {
		off += copy((*b)[off:], *c)
		pool.put(c)
	}
	t.chunks = append(t.chunks[:0], b)
	t.chunkAt = 0
}

// trimLocked ends the last chunk at the data received (an unsolicited
// burst that ended before FirstBurstLength), uncounting the rest.
func (t *task) trimLocked() {
	if len(t.chunks) == 0 {
		return
	}
	last := t.chunks[len(t.chunks)-1]
	keep := int(t.stored() - t.chunkAt)
	if extra := len(*last) - keep; extra > 0 && !t.reserved {
		*last = (*last)[:keep]
		t.charged -= uint64(extra)
		t.sess.srv.budget.release(t.sess, uint64(extra), 0)
		t.sess.payLocked()
	}
}

// dstLocked returns where the data of a Data-Out at off (the data
// received so far), n bytes long, goes: the part below need, in the last
// chunk. The rest of the segment is dropped.
func (t *task) dstLocked(off, n uint32) ([]byte, error) {
	end := min(off+n, t.need)
	if off >= end {
		return nil, nil
	}
	if len(t.chunks) == 0 {
		return nil, fmt.Errorf("internal: no buffer for data-out at %d", off)
	}
	last := *t.chunks[len(t.chunks)-1]
	if off < t.chunkAt || end-t.chunkAt > uint32(len(last)) {
		return nil, fmt.Errorf("internal: data-out [%d, %d) outside the buffer at %d of %d bytes", off, end, t.chunkAt, len(last))
	}
	return last[off-t.chunkAt : end-t.chunkAt], nil
}

// solicitLocked asks for the next burst of a write once its data fits in
// the write budget; until then it waits in r2tWait, behind the writes of
// the session that wait already.
func (s *session) solicitLocked(t *task) {
	if t.reserved {
		s.sendR2TLocked(t)
		return
	}
	if t.waiting {
		return
	}
	if len(s.mu.r2tWait) == 0 && s.reserveLocked(t) {
		s.sendR2TLocked(t)
		return
	}
	t.waiting = true
	s.mu.r2tWait = append(s.mu.r2tWait, t)
}

// reserveLocked counts the rest of a write's data in the budget.
func (s *session) reserveLocked(t *task) bool {
	rest := uint64(t.need - t.stored())
	if rest > 0 && !s.srv.budget.reserve(s, rest) {
		return false
	}
	t.resv = rest
	t.reserved = true
	return true
}

// admitWaiting solicits the writes waiting for budget, in order, as far
// as the budget now allows. The caller holds no session lock.
func (s *session) admitWaiting() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for len(s.mu.r2tWait) > 0 && !s.mu.ending {
		t := s.mu.r2tWait[0]
		if !t.aborted && !s.reserveLocked(t) {
			return
		}
		s.mu.r2tWait[0] = nil
		s.mu.r2tWait = s.mu.r2tWait[1:]
		t.waiting = false
		if !t.aborted {
			s.sendR2TLocked(t)
		}
	}
	if len(s.mu.r2tWait) == 0 {
		s.mu.r2tWait = nil
	}
}

// sendR2TLocked asks for the next burst of a write, with its buffer ready.
func (s *session) sendR2TLocked(t *task) {
	c := t.conn
	length := min(t.writeLen-t.received, s.p.MaxBurstLength)
	t.r2tActive = true
	t.dataSince = time.Now().UnixNano()
	t.r2tTTT = s.newTTT()
	t.r2tEnd = t.received + length
	t.dataSN = 0
	if from, to := t.stored(), min(t.r2tEnd, t.need); from < to {
		if to == t.need && len(t.chunks) > 0 {
			// The last burst: one buffer for the whole data, the
			// earlier bursts copied in, this one read in place.
			t.mergeLocked(&s.srv.bufs, t.need)
		} else {
			t.addChunkLocked(from, to-from)
		}
	}
	p := c.srv.getOut()
	p.h.setOpcode(opR2T, false)
	p.h[1] = flagFinal
	p.h.setLUNRaw(t.lunRaw)
	p.h.setITT(t.itt)
	p.h.setField20(t.r2tTTT)
	p.h.setField36(t.r2tSN)
	p.h.setField40(t.received)
	p.h.setField44(length)
	p.stat = statPeek
	t.r2tSN++
	c.out.push(p)
}

// handleDataOut receives a Data-Out PDU into its task's buffer.
//
// A Data-Out that breaks the sequence rules (DataSN, buffer offset, burst
// length, TTT) or fails its data digest is still correctly framed, so
// the connection stays up: the task is terminated with CHECK CONDITION
// (ABORTED COMMAND) and its remaining data discarded. That is recovery at
// ErrorRecoveryLevel 0 within the task; the initiator sees the command
// fail, not the session.
func (c *conn) handleDataOut(h *bhs) error {
	s := c.sess
	n := h.dataLen()
	off := h.bufOffset()
	ttt := h.ttt()
	s.mu.Lock()
	t := s.mu.tasks[h.itt()]
	if t == nil || !t.write || t.aborted || t.ready {
		// The task was aborted, dropped outside the window, is complete
		// or never existed: the data has nowhere to go.
		s.mu.Unlock()
		c.log.Debug("iscsi Data-Out for no pending task discarded", "itt", h.itt())
		return c.rd.discardData(h)
	}
	sense, why := t.checkDataOutLocked(h, off, n, ttt)
	var dst []byte
	if why == "" {
		var err error
		if dst, err = t.dstLocked(off, n); err != nil {
			s.mu.Unlock()
			return err
		}
	}
	s.mu.Unlock()
	if why != "" {
		return c.failDataOut(t, h, sense, why)
	}
	if err := c.rd.readData(h, dst); err != nil {
		if errors.Is(err, errDigest) {
			c.failTask(t, senseProtocolCRCError(), err.Error())
			return nil
		}
		return err
	}

	s.mu.Lock()
	failed := c.dataOutDoneLocked(t, h, n, ttt)
	s.mu.Unlock()
	if failed {
		s.srv.budget.wake()
	}
	return nil
}

// dataOutDoneLocked records a Data-Out's data as received and, at the end
// of a burst, moves the write on. It reports whether the task failed.
func (c *conn) dataOutDoneLocked(t *task, h *bhs, n, ttt uint32) (failed bool) {
	if t.aborted {
		return false
	}
	t.received += n
	t.dataSN++
	if !h.final() {
		return false
	}
	if ttt == reservedTag {
		t.unsolOpen = false
		t.trimLocked()
	} else {
		if t.received != t.r2tEnd {
			c.failTaskLocked(t, senseIncorrectAmountOfData(), fmt.Sprintf("sequence ended at %d, R2T asked up to %d", t.received, t.r2tEnd))
			return true
		}
		t.r2tActive = false
	}
	t.dataSN = 0
	t.sess.advanceLocked(t)
	return false
}

// checkDataOutLocked checks a Data-Out against its task's burst; a
// non-empty why is the reason it breaks the rules, with the sense.
func (t *task) checkDataOutLocked(h *bhs, off, n, ttt uint32) (scsi.Sense, string) {
	var limit uint32
	if ttt == reservedTag {
		if !t.unsolOpen {
			return senseUnexpectedUnsolicited(), "unsolicited Data-Out outside the unsolicited burst"
		}
		limit = t.unsolEnd
	} else {
		if !t.r2tActive || ttt != t.r2tTTT {
			return senseInvalidTTT(), fmt.Sprintf("unknown TTT 0x%x", ttt)
		}
		limit = t.r2tEnd
	}
	if h.dataSN() != t.dataSN {
		return senseDataPhaseError(), fmt.Sprintf("DataSN %d, expected %d", h.dataSN(), t.dataSN)
	}
	if off != t.received {
		return senseDataOffsetError(), fmt.Sprintf("buffer offset %d, expected %d", off, t.received)
	}
	if uint64(off)+uint64(n) > uint64(limit) {
		return senseTooMuchWriteData(), fmt.Sprintf("%d bytes at %d overrun the burst ending at %d", n, off, limit)
	}
	return scsi.Sense{}, ""
}

// failDataOut discards a bad Data-Out's data and terminates its task.
func (c *conn) failDataOut(t *task, h *bhs, sense scsi.Sense, why string) error {
	if err := c.rd.discardData(h); err != nil && !errors.Is(err, errDigest) {
		return err
	}
	c.failTask(t, sense, why)
	return nil
}

// failTask terminates a task that has not started with CHECK CONDITION;
// its later Data-Out PDUs are discarded.
func (c *conn) failTask(t *task, sense scsi.Sense, why string) {
	s := t.sess
	s.mu.Lock()
	c.failTaskLocked(t, sense, why)
	s.mu.Unlock()
	s.srv.budget.wake()
}

// failTaskLocked is failTask with sess.mu held; the caller wakes the
// budget's waiters once it released the lock.
func (c *conn) failTaskLocked(t *task, sense scsi.Sense, why string) {
	c.log.Warn("iscsi write terminated: bad Data-Out", "itt", t.itt, "cmdsn", t.cmdSN, "why", why, "sense", sense.String())
	c.endTaskLocked(t, &scsi.Result{Status: scsi.StatusCheckCondition, Sense: sense.Bytes()})
}

// endTaskLocked ends a task that has not started with res, without
// running it: its slot and budget are freed (the caller wakes the
// budgets' waiters once it released sess.mu) and res queued.
func (c *conn) endTaskLocked(t *task, res *scsi.Result) {
	s := t.sess
	if t.aborted || t.started {
		return
	}
	s.abortLocalLocked(t)
	s.pumpLocked()
	s.rescanLocked()
	if s.mu.ending {
		return
	}
	c.queueResponse(t, res)
	c.out.wake()
}

// expireDataOut terminates the writes whose awaited data-out (an
// unsolicited burst, or the burst of an R2T) has not all come within
// DataOutTimeout, with CHECK CONDITION (ABORTED COMMAND, INITIATOR
// RESPONSE TIMEOUT): the write budget a silent host holds is given back to
// the writes waiting for it. Called by the connection's writer goroutine.
func (s *session) expireDataOut(now time.Time) {
	timeout := s.srv.cfg.DataOutTimeout
	expired := false
	s.mu.Lock()
	for _, t := range s.mu.tasks {
		if t.aborted || t.started || !(t.unsolOpen || t.r2tActive) || now.Sub(time.Unix(0, t.dataSince)) < timeout {
			continue
		}
		t.conn.log.Warn("iscsi write terminated: its data-out did not come in time", "itt", t.itt, "cmdsn", t.cmdSN,
			"timeout", timeout, "received", t.received, "expected", t.writeLen)
		t.conn.endTaskLocked(t, &scsi.Result{Status: scsi.StatusCheckCondition, Sense: senseInitiatorResponseTimeout().Bytes()})
		expired = true
	}
	s.mu.Unlock()
	if expired {
		s.srv.budget.wake()
		s.srv.reads.wake()
	}
}

// Sense data for Data-Out failures (SPC-4 and RFC 7143 11.4.7.2), all
// ABORTED COMMAND.
func senseDataPhaseError() scsi.Sense {
	return scsi.Sense{Key: scsi.KeyAbortedCommand, ASC: 0x4b, ASCQ: 0x00}
}

func senseInvalidTTT() scsi.Sense {
	return scsi.Sense{Key: scsi.KeyAbortedCommand, ASC: 0x4b, ASCQ: 0x01}
}

func senseTooMuchWriteData() scsi.Sense {
	return scsi.Sense{Key: scsi.KeyAbortedCommand, ASC: 0x4b, ASCQ: 0x02}
}

func senseDataOffsetError() scsi.Sense {
	return scsi.Sense{Key: scsi.KeyAbortedCommand, ASC: 0x4b, ASCQ: 0x05}
}

func senseUnexpectedUnsolicited() scsi.Sense {
	return scsi.Sense{Key: scsi.KeyAbortedCommand, ASC: 0x0c, ASCQ: 0x0c}
}

func senseIncorrectAmountOfData() scsi.Sense {
	return scsi.Sense{Key: scsi.KeyAbortedCommand, ASC: 0x0c, ASCQ: 0x0d}
}

func senseInitiatorResponseTimeout() scsi.Sense {
	return scsi.Sense{Key: scsi.KeyAbortedCommand, ASC: 0x4b, ASCQ: 0x06}
}

func senseProtocolCRCError() scsi.Sense {
	return scsi.Sense{Key: scsi.KeyAbortedCommand, ASC: 0x47, ASCQ: 0x05}
}
