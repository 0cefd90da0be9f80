package iscsi

import (
	"errors"
	"fmt"

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
	buf               *[]byte

	// Data-out progress, touched only by the reader goroutine.
	received  uint32 // contiguous bytes received
	unsolOpen bool   // unsolicited Data-Out PDUs still to come
	unsolEnd  uint32 // limit of unsolicited data: min(FirstBurstLength, writeLen)
	dataSN    uint32 // next DataSN expected in the current sequence
	r2tActive bool
	r2tTTT    uint32
	r2tEnd    uint32 // offset the current R2T's data ends at
	r2tSN     uint32 // R2Ts sent so far

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

	if t.write && t.writeLen > 0 {
		t.buf = c.srv.bufs.get(int(t.writeLen))
		if err := c.rd.readData(h, (*t.buf)[:imm]); err != nil {
			return err
		}
	} else if err := c.rd.discardData(h); err != nil {
		return err
	}
	t.received = imm
	t.unsolEnd = min(s.p.FirstBurstLength, t.writeLen)
	// F=0 announces unsolicited Data-Out; when the immediate data already
	// holds every byte the command transfers (an Expected Data Transfer
	// Length of 0 among them) there is none to come and the data is
	// complete: a Data-Out that follows finds no burst and is discarded.
	t.unsolOpen = t.write && !h.final() && t.received < t.unsolEnd

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
	if t.unsolOpen || t.r2tActive {
		return
	}
	if t.received < t.writeLen {
		c.sendR2T(t)
		return
	}
	t.cmd.DataOut = nil
	if t.buf != nil {
		t.cmd.DataOut = (*t.buf)[:t.received]
	}
	t.sess.dataComplete(t)
}

// sendR2T asks for the next burst of a write.
func (c *conn) sendR2T(t *task) {
	s := t.sess
	length := min(t.writeLen-t.received, s.p.MaxBurstLength)
	t.r2tActive = true
	t.r2tTTT = s.newTTT()
	t.r2tEnd = t.received + length
	t.dataSN = 0
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
	t := s.lookup(h.itt())
	if t == nil || !t.write {
		// The task was aborted, dropped outside the window, or never
		// existed: the data has nowhere to go.
		c.log.Debug("iscsi Data-Out for no pending task discarded", "itt", h.itt())
		return c.rd.discardData(h)
	}
	s.mu.Lock()
	gone := t.aborted || t.ready
	s.mu.Unlock()
	if gone {
		return c.rd.discardData(h)
	}
	n := h.dataLen()
	off := h.bufOffset()
	ttt := h.ttt()
	var limit uint32
	if ttt == reservedTag {
		if !t.unsolOpen {
			return c.failDataOut(t, h, senseUnexpectedUnsolicited(), "unsolicited Data-Out outside the unsolicited burst")
		}
		limit = t.unsolEnd
	} else {
		if !t.r2tActive || ttt != t.r2tTTT {
			return c.failDataOut(t, h, senseInvalidTTT(), fmt.Sprintf("unknown TTT 0x%x", ttt))
		}
		limit = t.r2tEnd
	}
	if t.buf == nil {
		return c.failDataOut(t, h, senseTooMuchWriteData(), "Data-Out for a command with no data to transfer")
	}
	if h.dataSN() != t.dataSN {
		return c.failDataOut(t, h, senseDataPhaseError(), fmt.Sprintf("DataSN %d, expected %d", h.dataSN(), t.dataSN))
	}
	if off != t.received {
		return c.failDataOut(t, h, senseDataOffsetError(), fmt.Sprintf("buffer offset %d, expected %d", off, t.received))
	}
	if uint64(off)+uint64(n) > uint64(limit) {
		return c.failDataOut(t, h, senseTooMuchWriteData(), fmt.Sprintf("%d bytes at %d overrun the burst ending at %d", n, off, limit))
	}
	if err := c.rd.readData(h, (*t.buf)[off:off+n]); err != nil {
		if errors.Is(err, errDigest) {
			c.failTask(t, senseProtocolCRCError(), err.Error())
			return nil
		}
		return err
	}
	t.received += n
	t.dataSN++
	if h.final() {
		if ttt == reservedTag {
			t.unsolOpen = false
		} else {
			if t.received != t.r2tEnd {
				c.failTask(t, senseIncorrectAmountOfData(), fmt.Sprintf("sequence ended at %d, R2T asked up to %d", t.received, t.r2tEnd))
				return nil
			}
			t.r2tActive = false
		}
		t.dataSN = 0
		c.advanceData(t)
	}
	return nil
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
	c.log.Warn("iscsi write terminated: bad Data-Out", "itt", t.itt, "cmdsn", t.cmdSN, "why", why, "sense", sense.String())
	s := t.sess
	s.mu.Lock()
	defer s.mu.Unlock()
	if t.aborted || t.started {
		return
	}
	s.abortLocalLocked(t)
	s.pumpLocked()
	s.rescanLocked()
	if s.mu.ending {
		return
	}
	c.queueResponse(t, &scsi.Result{Status: scsi.StatusCheckCondition, Sense: sense.Bytes()})
	c.out.wake()
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

func senseProtocolCRCError() scsi.Sense {
	return scsi.Sense{Key: scsi.KeyAbortedCommand, ASC: 0x47, ASCQ: 0x05}
}
