package iscsi

import (
	"bufio"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Buffer sizes of a connection. Until its login completes a connection
// has small buffers (a login PDU is at most 48 bytes of header and 8192 of
// data, RFC 7143 12.12), so a host holding many half-done logins holds
// little memory; the buffers grow when the full feature phase starts.
// Data segments longer than a buffer pass it by, read straight into the
// command's buffer or written straight from the result.
const (
	loginBufSize = 4 << 10
	readBufSize  = 64 << 10
	writeBufSize = 64 << 10
	// loginMaxData is the largest data segment of a login PDU: the
	// default MaxRecvDataSegmentLength, in force until the login ends.
	loginMaxData = 8192
)

// conn is one TCP connection: its reader (the goroutine running serve)
// parses PDUs and dispatches them; its writer goroutine drains out.
type conn struct {
	srv    *Server
	nc     net.Conn
	log    *slog.Logger
	remote string
	// source is the remote address without its port (for the limits
	// per source); loggingIn is set until the login has ended (serve's
	// goroutine only).
	source    string
	loggingIn bool
	// loginListed is set while the server counts the connection among
	// the logins in progress, loginSeq numbers it in the order
	// connections came (both guarded by the server's mu).
	loginListed bool
	loginSeq    uint64
	rd          pduReader
	// wmu is held by whoever writes to wr: the writer goroutine or a task
	// goroutine sending its own response (kick); batch is its scratch.
	wmu   sync.Mutex
	wr    pduWriter
	batch []*outPDU

	// statSN is the next StatSN; the login phase owns it, then the writer
	// goroutine, which publishes it in statSNPub for the reader's
	// ExpStatSN check.
	statSN    uint32
	statSNPub atomic.Uint32
	// expStatSNWarned is set once a bad ExpStatSN has been logged (reader
	// only).
	expStatSNWarned bool
	// loginExpCmdSN and loginMaxCmdSN are stamped into login responses.
	loginExpCmdSN, loginMaxCmdSN uint32

	// sess is set when the login completes, before the writer starts;
	// cid is the connection id the login gave.
	sess *session
	cid  uint16

	out outQueue
	// writeDeadline is the socket's write deadline (UnixNano; the wmu
	// holder's).
	writeDeadline int64
	closeOnce     sync.Once
	closed        chan struct{}
	writerDone    chan struct{}

	// lastRecv is when the reader last received a PDU (UnixNano).
	lastRecv atomic.Int64
	// pingTTT is the TTT of the outstanding target NOP-In (0 = none);
	// pingSent when it was sent (UnixNano).
	pingTTT  atomic.Uint32
	pingSent atomic.Int64

	// text is the state of a multi-PDU Text exchange (reader only).
	text textExchange
}

func newConn(srv *Server, nc net.Conn, source string) *conn {
	if tc, ok := nc.(*net.TCPConn); ok {
		_ = tc.SetNoDelay(true)
	}
	c := &conn{
		srv:        srv,
		nc:         nc,
		remote:     nc.RemoteAddr().String(),
		source:     source,
		loggingIn:  true,
		closed:     make(chan struct{}),
		writerDone: make(chan struct{}),
	}
	c.out.notify = make(chan struct{}, 1)
	c.out.drained = make(chan struct{}, 1)
	return c
}

// setup gives an admitted connection its login buffers and logger.
func (c *conn) setup() {
	c.log = c.srv.log.With("remote", c.remote)
	c.rd = pduReader{r: bufio.NewReaderSize(c.nc, loginBufSize), maxData: loginMaxData}
	c.wr = pduWriter{w: bufio.NewWriterSize(c.nc, loginBufSize)}
}

// endLogin takes the connection out of the logins in progress (once):
// before its last login response is written, so that an initiator that
// reads it finds its place free again.
func (c *conn) endLogin() {
	if c.loggingIn {
		c.loggingIn = false
		c.srv.loginDone(c)
	}
}

// growBuffers gives a connection that completed its login its full
// feature phase buffers. The login's writer is flushed; bytes the login's
// reader has buffered already are read first.
func (c *conn) growBuffers() {
	if c.rd.r.Buffered() == 0 {
		c.rd.r = bufio.NewReaderSize(c.nc, readBufSize)
	} else {
		c.rd.r = bufio.NewReaderSize(c.rd.r, readBufSize)
	}
	c.rd.maxData = c.srv.cfg.MaxRecvDataSegmentLength
	c.wr.w = bufio.NewWriterSize(c.nc, writeBufSize)
}

// close closes the connection (idempotent); the reader and writer then
// stop.
func (c *conn) close() {
	c.closeOnce.Do(func() {
		close(c.closed)
		_ = c.nc.Close()
	})
}

// serve runs the connection: login, then the full feature phase until the
// connection ends, then the session teardown.
//
// A panic anywhere in it is contained (recoverPanic): the connection is
// closed and the teardown below still runs, so the session ends and its
// slot, tasks and budget are released.
func (c *conn) serve(ctx context.Context) {
	defer c.srv.removeConn(c)
	c.setup()
	stop := context.AfterFunc(ctx, c.close)
	defer stop()
	l := &login{c: c}
	writerStarted := false
	defer func() {
		c.close()
		sess := c.sess
		if sess == nil {
			sess = l.sess // registered, but the login did not finish
		}
		if sess != nil {
			sess.end()
		}
		if writerStarted {
			<-c.writerDone
		}
		c.dropQueued()
	}()
	defer c.srv.recoverPanic(c.log, "a connection's reader", c.close)

	cfg := &c.srv.cfg
	start := time.Now()
	l.deadline = start.Add(cfg.LoginTimeout)
	_ = c.nc.SetDeadline(start.Add(cfg.LoginStartTimeout))
	sess, err := l.run()
	c.endLogin()
	if err != nil {
		c.logEnd("iscsi login failed", err)
		return
	}
	_ = c.nc.SetDeadline(time.Time{})
	c.growBuffers()
	c.sess = sess
	c.rd.hdrDigest, c.rd.dataDigest = sess.p.HeaderDigest, sess.p.DataDigest
	c.wr.hdrDigest, c.wr.dataDigest = sess.p.HeaderDigest, sess.p.DataDigest
	c.log = c.log.With("initiator", sess.initiator, "isid", isidString(sess.isid), "tsih", sess.tsih)
	sess.log = c.log
	c.log.Info("iscsi login", "target", sess.target, "discovery", sess.discovery,
		"header_digest", digestName(sess.p.HeaderDigest), "data_digest", digestName(sess.p.DataDigest),
		"max_xmit", sess.p.MaxXmitDataSegment, "max_burst", sess.p.MaxBurstLength,
		"first_burst", sess.p.FirstBurstLength, "initial_r2t", sess.p.InitialR2T, "immediate_data", sess.p.ImmediateData)
	c.lastRecv.Store(time.Now().UnixNano())

	writerStarted = true
	go c.writeLoop()
	err = c.readLoop()
	c.close()
	c.logEnd("iscsi connection closed", err)
}

func (c *conn) logEnd(msg string, err error) {
	switch {
	case err == nil, errors.Is(err, io.EOF), errors.Is(err, net.ErrClosed):
		c.log.Debug(msg, "err", err)
	case errors.Is(err, errProtocol), errors.Is(err, errDigest):
		c.log.Warn(msg+": dropping connection", "err", err)
	default:
		select {
		case <-c.closed:
			c.log.Debug(msg, "err", err)
		default:
			c.log.Info(msg, "err", err)
		}
	}
}

// readLoop reads and dispatches PDUs until the connection fails.
//
// While the responses queued for the connection hold more than
// MaxOutputBytes the reader stops reading (waitOutput): a host that sends
// requests and does not read the answers fills its own socket, not the
// target's memory.
func (c *conn) readLoop() error {
	var h bhs
	limit := c.srv.cfg.MaxOutputBytes
	for {
		if c.out.queued.Load() > limit {
			if err := c.waitOutput(limit); err != nil {
				return err
			}
		}
		ahs, err := c.rd.readHeader(&h)
		if err != nil {
			return err
		}
		c.lastRecv.Store(time.Now().UnixNano())
		c.checkExpStatSN(&h)
		if err := c.dispatch(&h, ahs); err != nil {
			return err
		}
	}
}

// waitOutput waits until the queued responses hold no more than limit
// bytes, or the connection closes. The writer goroutine (or a task
// writing its own response) drains the queue; one that cannot, because
// the initiator does not read, fails at its write deadline and closes the
// connection.
func (c *conn) waitOutput(limit int64) error {
	q := &c.out
	for {
		q.readerWaiting.Store(true)
		if q.queued.Load() <= limit {
			q.readerWaiting.Store(false)
			return nil
		}
		select {
		case <-q.drained:
		case <-c.closed:
			q.readerWaiting.Store(false)
			return net.ErrClosed
		}
	}
}

// checkExpStatSN notes an initiator acknowledging a status the target has
// not sent. At ErrorRecoveryLevel 0 nothing depends on ExpStatSN (no
// status is kept for retransmission), so it is only logged, once, at debug
// level: libiscsi counts the StatSN of a target NOP-In ping as a status
// and runs one ahead after each ping.
func (c *conn) checkExpStatSN(h *bhs) {
	if c.expStatSNWarned || h.opcode() == opSNACKReq {
		return
	}
	if next := c.statSNPub.Load(); snLess(next, h.expStatSN()) {
		c.expStatSNWarned = true
		c.log.Debug("iscsi initiator acknowledges statuses not sent yet", "exp_stat_sn", h.expStatSN(), "next_stat_sn", next, "opcode", h.opcode())
	}
}

func (c *conn) dispatch(h *bhs, ahs []byte) error {
	switch h.opcode() {
	case opSCSICmd:
		return c.handleSCSICommand(h, ahs)
	case opDataOut:
		return c.handleDataOut(h)
	case opNopOut, opTextReq, opLogoutReq, opTMFReq:
		if len(ahs) != 0 {
			return protoErr("%s with AHS", h.opcode())
		}
		data, err := c.rd.readDataScratch(h)
		if err != nil {
			return err
		}
		return c.handleNumbered(h, data)
	case opLoginReq:
		return protoErr("login request in full feature phase")
	default:
		// SNACK (ErrorRecoveryLevel 0) and unknown opcodes.
		if err := c.rd.discardData(h); err != nil {
			return err
		}
		c.log.Debug("iscsi PDU rejected", "opcode", h.opcode())
		c.reject(h, rejectNotSupported)
		return nil
	}
}

// handleNumbered puts a control PDU (NOP-Out, Text, Logout, TMF) in CmdSN
// order unless it is immediate, and runs it when its turn comes.
func (c *conn) handleNumbered(h *bhs, data []byte) error {
	if h.immediate() {
		return c.runControl(h, data)
	}
	s := c.sess
	switch s.check(h.cmdSN()) {
	case snDrop:
		c.log.Debug("iscsi PDU outside the CmdSN window dropped", "opcode", h.opcode(), "cmdsn", h.cmdSN())
		return nil
	case snAhead:
		e := &pendingEntry{control: true, hdr: *h}
		e.data = append([]byte(nil), data...)
		s.hold(h.cmdSN(), e)
		return nil
	}
	s.accept(nil)
	err := c.runControl(h, data)
	s.mu.Lock()
	s.grantLocked()
	s.mu.Unlock()
	if err != nil {
		return err
	}
	return c.drainPending()
}

// drainPending runs the PDUs that were waiting for ExpCmdSN to reach them.
func (c *conn) drainPending() error {
	s := c.sess
	for {
		e, ok := s.nextPending()
		if !ok {
			return nil
		}
		if !e.control {
			continue
		}
		err := c.runControl(&e.hdr, e.data)
		s.mu.Lock()
		s.grantLocked()
		s.mu.Unlock()
		if err != nil {
			return err
		}
	}
}

func (c *conn) runControl(h *bhs, data []byte) error {
	switch h.opcode() {
	case opNopOut:
		return c.handleNopOut(h, data)
	case opTextReq:
		return c.handleText(h, data)
	case opLogoutReq:
		return c.handleLogout(h)
	case opTMFReq:
		return c.handleTMF(h)
	}
	return nil
}

// reject sends a Reject PDU carrying the offending header.
func (c *conn) reject(h *bhs, reason byte) {
	p := c.srv.getOut()
	p.h.setOpcode(opReject, false)
	p.h[1] = flagFinal
	p.h[2] = reason
	p.h.setITT(reservedTag)
	hdr := make([]byte, bhsLen)
	copy(hdr, h[:])
	p.data = hdr
	p.stat = statAdvance
	c.out.push(p)
}

// statKind says how the writer sets a PDU's StatSN field.
type statKind uint8

const (
	statNone    statKind = iota // StatSN reserved (Data-In without status)
	statAdvance                 // carries StatSN, which then advances
	statPeek                    // carries the next StatSN without advancing (R2T, NOP-In ping)
)

// outPDU is a PDU queued for the writer.
type outPDU struct {
	h    bhs
	data []byte
	stat statKind
	// closeAfter closes the connection once the PDU is written.
	closeAfter bool
	// dataIn marks data that belongs to a command's result (Data-In),
	// which the read budget counts; the queue counts the rest.
	dataIn bool
	// cost is what the PDU counts in its queue's bytes.
	cost int64
	// readBytes of readSess's read budget are given back once the PDU
	// is written (the last PDU of a command's response).
	readSess  *session
	readBytes uint64
}

// outQueue is the writer's queue. It takes every PDU it is given (a
// running task's response is never held back), and counts the bytes it
// holds that nothing else bounds: every header and the data it owns
// (NOP-In echoes, text, sense, rejects), not the Data-In that the read
// budget counts. The reader stops reading while that count is over
// MaxOutputBytes.
type outQueue struct {
	mu     sync.Mutex
	q      []*outPDU
	notify chan struct{}
	// queued is the bytes counted for PDUs not yet written to the
	// socket; readerWaiting is set while the reader waits for it to
	// fall, and drained wakes it.
	queued        atomic.Int64
	readerWaiting atomic.Bool
	drained       chan struct{}
}

func (q *outQueue) push(ps ...*outPDU) {
	q.pushQuiet(ps...)
	q.wake()
}

// pushQuiet queues without waking the writer.
func (q *outQueue) pushQuiet(ps ...*outPDU) {
	var n int64
	for _, p := range ps {
		p.cost = bhsLen
		if !p.dataIn {
			p.cost += int64(len(p.data))
		}
		n += p.cost
	}
	q.queued.Add(n)
	q.mu.Lock()
	q.q = append(q.q, ps...)
	q.mu.Unlock()
}

// written uncounts a PDU written to the socket (or dropped) and wakes the
// reader if it waits.
func (q *outQueue) written(p *outPDU) {
	q.queued.Add(-p.cost)
	if q.readerWaiting.Load() {
		select {
		case q.drained <- struct{}{}:
		default:
		}
	}
}

// wake tells the writer goroutine there is something to send.
func (q *outQueue) wake() {
	select {
	case q.notify <- struct{}{}:
	default:
	}
}

// take swaps the queue with buf (emptied) and returns what was queued.
func (q *outQueue) take(buf []*outPDU) []*outPDU {
	clear(buf)
	q.mu.Lock()
	out := q.q
	q.q = buf[:0]
	q.mu.Unlock()
	return out
}

// stamp fills StatSN, ExpCmdSN and MaxCmdSN.
func (c *conn) stamp(p *outPDU) {
	switch p.stat {
	case statAdvance:
		p.h.setField24(c.statSN)
		c.statSN++
		c.statSNPub.Store(c.statSN)
	case statPeek:
		p.h.setField24(c.statSN)
	}
	if s := c.sess; s != nil {
		p.h.setField28(s.expPub.Load())
		p.h.setField32(s.maxPub.Load())
	} else {
		p.h.setField28(c.loginExpCmdSN)
		p.h.setField32(c.loginMaxCmdSN)
	}
}

// writeNow writes and flushes a PDU from the reader goroutine (login phase
// only, before the writer goroutine exists).
func (c *conn) writeNow(p *outPDU) error {
	c.stamp(p)
	if err := c.wr.write(&p.h, p.data); err != nil {
		return err
	}
	return c.wr.w.Flush()
}

// writeLoop is the writer goroutine: it writes queued PDUs, flushing when
// the queue runs empty, and pings an idle initiator.
func (c *conn) writeLoop() {
	defer close(c.writerDone)
	defer c.srv.recoverPanic(c.log, "a connection's writer", c.close)
	var tick <-chan time.Time
	if c.srv.cfg.NopInterval > 0 {
		t := time.NewTicker(c.srv.cfg.NopInterval)
		defer t.Stop()
		tick = t.C
	}
	// Writes whose data-out is overdue are looked for four times per
	// DataOutTimeout.
	sweep := time.NewTicker(max(c.srv.cfg.DataOutTimeout/4, 10*time.Millisecond))
	defer sweep.Stop()
	for {
		select {
		case <-c.closed:
			return
		case now := <-tick:
			if !c.nopCheck(now) {
				c.close()
				return
			}
			continue
		case now := <-sweep.C:
			c.sess.expireDataOut(now)
		case <-c.out.notify:
		}
		closeNow, err := c.drain()
		if err != nil || closeNow {
			if err != nil {
				c.log.Debug("iscsi write failed", "err", err)
			}
			c.close()
			return
		}
	}
}

// drain writes what is queued, unless another goroutine is writing: that
// one writes it, or wakes the writer once it stops (unlockWriter), so the
// writer goroutine never waits behind a task blocked on the socket and
// keeps its pings and timeouts going.
func (c *conn) drain() (closeNow bool, err error) {
	if !c.wmu.TryLock() {
		return false, nil
	}
	defer c.unlockWriter()
	return c.drainLocked()
}

// unlockWriter releases c.wmu. PDUs queued meanwhile, whose wakeup found
// c.wmu held, wake the writer now; commands waiting for the read budget
// that the PDUs written gave back are let in.
func (c *conn) unlockWriter() {
	c.wmu.Unlock()
	if c.out.queued.Load() > 0 {
		c.out.wake()
	}
	c.srv.reads.wake()
}

// drainLocked writes every queued PDU and flushes. It reports whether a
// PDU asked for the connection to close after it. c.wmu must be held.
func (c *conn) drainLocked() (closeNow bool, err error) {
	for {
		c.batch = c.out.take(c.batch)
		if len(c.batch) == 0 {
			break
		}
		for i, p := range c.batch {
			c.stamp(p)
			c.armWriteDeadline()
			err := c.wr.write(&p.h, p.data)
			closeAfter := p.closeAfter
			c.retire(p)
			if err != nil || closeAfter {
				c.retireAll(c.batch[i+1:])
				if err == nil {
					err = c.wr.w.Flush()
				}
				return closeAfter, err
			}
		}
	}
	return false, c.wr.w.Flush()
}

// armWriteDeadline keeps a write deadline between NopTimeout/2 and
// NopTimeout ahead, so that a PDU the initiator does not take in that
// time fails the write and drops the connection: a host that never reads
// cannot hold the connection, its queue and its budgets forever. The
// deadline is moved only when half of it has passed, not for every PDU.
// c.wmu must be held.
func (c *conn) armWriteDeadline() {
	timeout := c.srv.cfg.NopTimeout
	now := time.Now()
	if time.Duration(c.writeDeadline-now.UnixNano()) >= timeout/2 {
		return
	}
	d := now.Add(timeout)
	c.writeDeadline = d.UnixNano()
	_ = c.nc.SetWriteDeadline(d)
}

// retire is done with a PDU that was written or will not be: it leaves
// the queue's count and goes back to the pool.
func (c *conn) retire(p *outPDU) {
	c.out.written(p)
	if p.readBytes > 0 {
		c.srv.reads.release(p.readSess, 0, p.readBytes)
	}
	c.srv.putOut(p)
}

func (c *conn) retireAll(ps []*outPDU) {
	for _, p := range ps {
		c.retire(p)
	}
}

// dropQueued retires what is still queued once the connection is closed
// and nothing writes any more.
func (c *conn) dropQueued() {
	c.wmu.Lock()
	c.batch = c.out.take(c.batch)
	c.retireAll(c.batch)
	clear(c.batch)
	c.wmu.Unlock()
	c.srv.reads.wake()
}

// kick sends what is queued. When no goroutine is writing, the caller
// writes it itself: at low queue depth that saves waking the writer
// goroutine, a thread wakeup on every command's critical path. Otherwise
// the writer is woken and sends it with what it has. The caller must hold
// no session lock (a write may block until the initiator reads).
func (c *conn) kick() {
	if !c.wmu.TryLock() {
		c.out.wake()
		return
	}
	closeNow, err := func() (bool, error) {
		defer c.unlockWriter()
		return c.drainLocked()
	}()
	if err != nil || closeNow {
		c.close()
	}
}

// nopCheck sends a NOP-In ping after an idle interval and reports false
// when a ping went unanswered for NopTimeout.
func (c *conn) nopCheck(now time.Time) bool {
	cfg := &c.srv.cfg
	last := time.Unix(0, c.lastRecv.Load())
	if c.pingTTT.Load() != 0 {
		sent := time.Unix(0, c.pingSent.Load())
		if last.Before(sent) && now.Sub(sent) >= cfg.NopTimeout {
			c.log.Warn("iscsi NOP-In ping not answered: dropping connection", "after", now.Sub(sent))
			return false
		}
		if !last.Before(sent) {
			c.pingTTT.Store(0) // the initiator is alive
		}
		return true
	}
	if now.Sub(last) < cfg.NopInterval {
		return true
	}
	ttt := c.sess.newTTT()
	if ttt == 0 {
		ttt = c.sess.newTTT()
	}
	c.pingSent.Store(now.UnixNano())
	c.pingTTT.Store(ttt)
	p := c.srv.getOut()
	p.h.setOpcode(opNopIn, false)
	p.h[1] = flagFinal
	p.h.setITT(reservedTag)
	p.h.setField20(ttt)
	p.stat = statPeek
	c.out.push(p)
	return true
}
