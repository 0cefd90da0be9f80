package iscsi

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/metro-storage/metro/internal/pipenet"
	"github.com/metro-storage/metro/internal/scsi"
	"github.com/metro-storage/metro/internal/store"
)

// FuzzSession is a stateful fuzz target: an initiator that negotiates
// random parameters (InitialR2T, ImmediateData, burst lengths, data
// segment lengths, digests; the target's offers and command window too)
// and then sends a sequence of PDUs decoded from the input (SCSI commands
// with any flags, lengths, CDBs, LUNs and attributes; Data-Out with any
// tag, offset, DataSN and length, or answering the target's R2Ts; NOP-Out;
// task management of every function; text; logout; SNACK; opcodes the
// target does not know; raw bytes) to a real Server whose Executor is a
// real scsi.Target on logical units in an in-memory store, over one or two
// sessions that share a logical unit at different LUNs.
//
// The target must never panic, never log an error, never stop answering
// an immediate ping on a connection whose framing the initiator kept (a
// wedge, detected by deadlines) and, once the input is spent, shut down:
// Server.Close returns and every goroutine the server started exits.
func FuzzSession(f *testing.F) {
	for _, s := range fuzzSessionSeeds() {
		f.Add([]byte(s.in))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		runFuzzSession(t, fuzzVolumes(t), in)
	})
}

// fuzzVolumes returns the volumes of the fuzzed logical units. Every input
// reuses them: their blocks do not change how the target handles PDUs,
// and new volumes would grow the store.
func fuzzVolumes(t testing.TB) [3]*store.Volume {
	st, err := memStore()
	if err != nil {
		t.Fatal(err)
	}
	fuzzVolsOnce.Do(func() {
		for i := range fuzzVols {
			fuzzVols[i] = st.Volume(lastVolumeID.Add(1))
		}
	})
	return fuzzVols
}

var (
	fuzzVolsOnce sync.Once
	fuzzVols     [3]*store.Volume
)

// Fuzzed initiators: the first sees logical units A at LUN 0 and B at LUN
// 1, the second C at LUN 0 and A at LUN 3.
const (
	fuzzInitiator1 = "iqn.2024-01.test.host:fuzz1"
	fuzzInitiator2 = "iqn.2024-01.test.host:fuzz2"
	fuzzLUSize     = 1 << 20
	// fuzzWait bounds every wait for the target (a ping's answer, a
	// write the target must read, Close): missing it is a wedge.
	fuzzWait = 10 * time.Second
	// fuzzSlack is how long a session waits in all for what may never
	// come and is no failure: an answer once raw bytes may have broken
	// the framing, the command window to open (tasks waiting for data
	// may keep it shut).
	fuzzSlack = 50 * time.Millisecond
)

// fuzzLengths are the lengths the input chooses among for negotiated
// values (all legal for the keys they go in).
var fuzzLengths = [8]uint32{512, 1024, 4096, 8192, 65536, 262144, 1<<24 - 1, 777}

// fuzzDigests are the digest offers the input chooses among.
var fuzzDigests = [4]string{"None", "CRC32C", "CRC32C,None", "None,CRC32C"}

// fuzzInput hands out the input's bytes; an exhausted input reads zeros.
type fuzzInput struct{ b []byte }

func (r *fuzzInput) more() bool { return len(r.b) > 0 }

func (r *fuzzInput) byte() byte {
	if len(r.b) == 0 {
		return 0
	}
	c := r.b[0]
	r.b = r.b[1:]
	return c
}

func (r *fuzzInput) u32() uint32 {
	return uint32(r.byte())<<24 | uint32(r.byte())<<16 | uint32(r.byte())<<8 | uint32(r.byte())
}

func (r *fuzzInput) bytes(n int) []byte {
	n = min(n, len(r.b))
	p := r.b[:n]
	r.b = r.b[n:]
	return p
}

// The input starts with three header bytes:
//
//	0: bit 0 InitialR2T=Yes, bit 1 ImmediateData=Yes, bits 2-3
//	   HeaderDigest and 4-5 DataDigest offers (fuzzDigests), bit 6 a
//	   second session, bit 7 target pings every millisecond
//	1: bits 0-2 MaxBurstLength, 3-5 FirstBurstLength (fuzzLengths), 6-7
//	   the target's command window (128, 1, 2, 8)
//	2: bits 0-2 the initiator's and 3-5 the target's
//	   MaxRecvDataSegmentLength (fuzzLengths), 6-7 the target's
//	   MaxBurstLength offer (default, 512, 4096, 65536)
//
// then operations, each an opcode byte (bits 0-3 the operation, bit 4 the
// session when there are two) and its arguments; see fuzzSess.step.
const (
	fopCommand = iota
	fopDataOut
	fopAnswerR2T
	fopNop
	fopTMF
	fopText
	fopLogout
	fopSNACK
	fopGarbage
	fopRaw
	fopSync
	fopBadDigest
)

// fuzzStats counts what the target answered during one input.
type fuzzStats struct {
	good, check, tmf, r2t, reject, logout atomic.Int32
}

func runFuzzSession(t *testing.T, vols [3]*store.Volume, input []byte) *fuzzStats {
	watchdog := time.AfterFunc(6*fuzzWait, func() {
		panic("FuzzSession wedged:\n" + allStacks())
	})
	defer watchdog.Stop()
	baseline := runtime.NumGoroutine()

	r := &fuzzInput{b: input}
	h0, h1, h2 := r.byte(), r.byte(), r.byte()
	lus := make([]*scsi.LogicalUnit, len(vols))
	for i, v := range vols {
		lus[i] = scsi.NewLogicalUnit(scsi.LUConfig{UUID: [16]byte{0xf0, byte(i)}, Size: fuzzLUSize, Backend: v})
	}
	tgt := scsi.NewTarget(scsi.TargetConfig{Resolver: maskedLUNs{
		fuzzInitiator1: {0: lus[0], 1: lus[1]},
		fuzzInitiator2: {0: lus[2], 3: lus[0]},
	}})
	logs := &fuzzLog{}
	if os.Getenv("ISCSI_TEST_LOG") != "" {
		logs.next = slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})
	}
	cfg := Config{
		Backend:                  newFakeBackend(),
		Executor:                 tgt,
		TPGT:                     1,
		RelativePortID:           7,
		Logger:                   slog.New(logs),
		NopInterval:              -1,
		MaxRecvDataSegmentLength: fuzzLengths[h2>>3&7],
		MaxBurstLength:           [4]uint32{0, 512, 4096, 65536}[h2>>6],
		CmdWindow:                [4]uint32{0, 1, 2, 8}[h1>>6],
		MaxTransferLength:        1 << 20,
	}
	if h0&0x80 != 0 {
		cfg.NopInterval = time.Millisecond
	}
	srv := NewServer(cfg)
	l := pipenet.Listen("pipe:3260")
	served := make(chan error, 1)
	go func() { served <- srv.Serve(context.Background(), l) }()

	keys := []kv{
		{"InitialR2T", yesNo(h0&1 != 0)},
		{"ImmediateData", yesNo(h0&2 != 0)},
		{"HeaderDigest", fuzzDigests[h0>>2&3]},
		{"DataDigest", fuzzDigests[h0>>4&3]},
		{"MaxBurstLength", fmt.Sprint(fuzzLengths[h1&7])},
		{"FirstBurstLength", fmt.Sprint(fuzzLengths[h1>>3&7])},
		{"MaxRecvDataSegmentLength", fmt.Sprint(fuzzLengths[h2&7])},
	}
	stats := &fuzzStats{}
	sessions := []*fuzzSess{newFuzzSess(t, l, fuzzInitiator1, keys, stats)}
	if h0&0x40 != 0 {
		sessions = append(sessions, newFuzzSess(t, l, fuzzInitiator2, keys, stats))
	}
	last := sessions[0]
	for r.more() {
		op := r.byte()
		s := sessions[int(op>>4&1)%len(sessions)]
		if s != last {
			last.flush() // the target sees the sessions' PDUs in turn
			last = s
		}
		s.step(op&0x0f, r)
	}

	for _, s := range sessions {
		s.logout()
	}
	for _, s := range sessions {
		_ = s.nc.Close()
	}
	closed := make(chan struct{})
	go func() {
		_ = srv.Close()
		close(closed)
	}()
	select {
	case <-closed:
	case <-time.After(fuzzWait):
		t.Fatalf("Server.Close did not return within %v:\n%s", fuzzWait, allStacks())
	}
	if err := <-served; !errors.Is(err, ErrServerClosed) {
		t.Fatalf("Serve returned %v", err)
	}
	for _, s := range sessions {
		<-s.done
	}
	if bad := logs.failures(); len(bad) > 0 {
		t.Fatalf("the target logged:\n%s", strings.Join(bad, "\n"))
	}
	waitServerGoroutines(t, baseline)
	return stats
}

// fuzzSess is one session of the fuzzed initiator: the sender is the fuzz
// goroutine; a reader goroutine drains the target's PDUs and records what
// later operations answer (R2Ts, pings, text continuations).
type fuzzSess struct {
	t     *testing.T
	stats *fuzzStats
	nc    net.Conn
	wr    pduWriter
	// Negotiated.
	maxXmit, firstBurst uint32
	immediateData       bool
	initialR2T          bool
	digests             bool

	cmdSN  uint32
	itt    uint32
	recent [8]uint32 // ITTs of the last commands, a ring
	nrec   uint32    // commands sent
	// broken is set once a write failed: the target closed the
	// connection (or, when framed, stopped reading: a failure).
	broken bool
	// framed is cleared once raw bytes may have broken the PDU framing:
	// the target may then wait for bytes that never come.
	framed bool
	// slack is what is left of fuzzSlack.
	slack time.Duration

	expStatSN atomic.Uint32
	maxCmdSN  atomic.Uint32
	done      chan struct{} // the reader ended
	notify    chan struct{} // the reader received a PDU

	mu struct {
		sync.Mutex
		r2ts []fuzzR2T
		// answered holds the ITTs of the NOP-In and Logout Response
		// PDUs received and not yet waited for.
		answered map[uint32]bool
		pingTTT  uint32 // the target's last ping
		textTTT  uint32 // the last continued text response's TTT and ITT
		textITT  uint32
	}
}

// fuzzR2T is an R2T the target sent.
type fuzzR2T struct{ itt, ttt, off, n, sn uint32 }

func newFuzzSess(t *testing.T, l *pipenet.Listener, name string, keys []kv, stats *fuzzStats) *fuzzSess {
	nc, err := l.Dial(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	in := newInitiator(t, nc)
	in.name = name
	_ = nc.SetDeadline(time.Now().Add(fuzzWait))
	if _, err := in.login(loginOpts{keys: keys}); err != nil {
		t.Fatalf("login with %v: %v", keys, err)
	}
	_ = nc.SetDeadline(time.Time{})
	s := &fuzzSess{
		t:             t,
		stats:         stats,
		nc:            nc,
		wr:            in.wr,
		maxXmit:       in.maxXmit,
		firstBurst:    in.firstBurst,
		immediateData: in.immediateData,
		initialR2T:    in.initialR2T,
		digests:       in.wr.hdrDigest || in.wr.dataDigest,
		cmdSN:         in.cmdSN,
		itt:           0x1000,
		framed:        true,
		slack:         fuzzSlack,
		done:          make(chan struct{}),
		notify:        make(chan struct{}, 1),
	}
	s.expStatSN.Store(in.expStatSN)
	s.maxCmdSN.Store(in.lastMaxCmdSN)
	s.mu.answered = make(map[uint32]bool)
	rd := in.rd
	rd.maxData = 1 << 24
	go s.read(rd)
	return s
}

// read drains the target's PDUs until the connection ends.
func (s *fuzzSess) read(rd pduReader) {
	defer close(s.done)
	for {
		var h bhs
		if _, err := rd.readHeader(&h); err != nil {
			return
		}
		if _, err := rd.readDataScratch(&h); err != nil {
			return
		}
		statSN := binary.BigEndian.Uint32(h[24:28])
		s.count(&h)
		if max := h.field32(); snLess(s.maxCmdSN.Load(), max) {
			s.maxCmdSN.Store(max)
		}
		switch h.opcode() {
		case opR2T:
			s.mu.Lock()
			if len(s.mu.r2ts) < 64 {
				s.mu.r2ts = append(s.mu.r2ts, fuzzR2T{itt: h.itt(), ttt: h.ttt(), off: h.field40(), n: h.field44(), sn: h.field36()})
			}
			s.mu.Unlock()
		case opNopIn, opLogoutResp:
			s.mu.Lock()
			if h.itt() == reservedTag {
				s.mu.pingTTT = h.ttt()
			} else {
				s.expStatSN.Store(statSN + 1)
				if len(s.mu.answered) < 1024 {
					s.mu.answered[h.itt()] = true
				}
			}
			s.mu.Unlock()
		case opDataIn:
			if h.flags()&flagStatus != 0 {
				s.expStatSN.Store(statSN + 1)
			}
		case opTextResp:
			s.expStatSN.Store(statSN + 1)
			s.mu.Lock()
			s.mu.textTTT, s.mu.textITT = h.ttt(), h.itt()
			s.mu.Unlock()
		default:
			s.expStatSN.Store(statSN + 1)
		}
		select {
		case s.notify <- struct{}{}:
		default:
		}
	}
}

// waitWindow waits, as an initiator does, until the target's command
// window admits CmdSN sn, out of the session's slack.
func (s *fuzzSess) waitWindow(sn uint32) {
	if !snLess(s.maxCmdSN.Load(), sn) || s.slack <= 0 {
		return
	}
	s.flush()
	start := time.Now()
	defer func() { s.slack -= time.Since(start) }()
	timeout := time.NewTimer(s.slack)
	defer timeout.Stop()
	for snLess(s.maxCmdSN.Load(), sn) && !s.broken {
		select {
		case <-s.notify:
		case <-s.done:
			return
		case <-timeout.C:
			return
		}
	}
}

// count adds a PDU from the target to the statistics.
func (s *fuzzSess) count(h *bhs) {
	st := s.stats
	switch op := h.opcode(); {
	case op == opSCSIResp, op == opDataIn && h.flags()&flagStatus != 0:
		if scsi.Status(h[3]) == scsi.StatusGood && (op == opDataIn || h[2] == 0) {
			st.good.Add(1)
		} else {
			st.check.Add(1)
		}
	case op == opTMFResp:
		st.tmf.Add(1)
	case op == opR2T:
		st.r2t.Add(1)
	case op == opReject:
		st.reject.Add(1)
	case op == opLogoutResp:
		st.logout.Add(1)
	}
}

// send queues one PDU; flush writes what is queued.
func (s *fuzzSess) send(h *bhs, data []byte) {
	if s.broken {
		return
	}
	h.setField28(s.expStatSN.Load())
	if err := s.wr.write(h, data); err != nil {
		s.writeFailed(err)
	}
}

func (s *fuzzSess) flush() {
	if s.broken {
		return
	}
	_ = s.nc.SetWriteDeadline(time.Now().Add(fuzzWait))
	if err := s.wr.w.Flush(); err != nil {
		s.writeFailed(err)
	}
}

// writeFailed stops the sender. A target that closed the connection is
// fine; one that stopped reading a well-framed stream is wedged.
func (s *fuzzSess) writeFailed(err error) {
	s.broken = true
	var ne net.Error
	if s.framed && errors.As(err, &ne) && ne.Timeout() {
		s.t.Fatalf("the target read nothing for %v: %v\n%s", fuzzWait, err, allStacks())
	}
}

// header starts a PDU with the session's current CmdSN.
func (s *fuzzSess) header(op opcode, immediate bool, flags byte, itt, field20 uint32) bhs {
	var h bhs
	h.setOpcode(op, immediate)
	h[1] = flags
	h.setITT(itt)
	h.setField20(field20)
	h.setField24(s.cmdSN)
	return h
}

// sync pings the target (an immediate NOP-Out) and waits for the answer,
// so that everything sent before has been read and the answers to it
// (R2Ts among them) have arrived. It reports whether the session is
// still up.
func (s *fuzzSess) sync() bool {
	itt := s.nextITT()
	h := s.header(opNopOut, true, flagFinal, itt, reservedTag)
	s.send(&h, nil)
	return s.await(itt, "an immediate ping")
}

// logout ends the session as an initiator does (an immediate Logout
// Request): the target answers once the running tasks have, and closes
// the connection.
func (s *fuzzSess) logout() {
	if s.broken || !s.framed {
		return
	}
	itt := s.nextITT()
	h := s.header(opLogoutReq, true, flagFinal, itt, 0)
	s.send(&h, nil)
	if s.await(itt, "a logout") {
		<-s.done
	}
}

// await flushes and waits for the answer to the NOP-Out or Logout Request
// sent with itt; it reports whether it came (false: the connection
// ended, or the framing is lost and no answer came soon). No answer
// within fuzzWait on a connection whose framing is intact is a wedge.
func (s *fuzzSess) await(itt uint32, what string) bool {
	s.flush()
	if s.broken {
		return false
	}
	wait := fuzzWait
	if !s.framed {
		// The target may be waiting for the rest of a PDU the raw bytes
		// began: give up soon and stop sending.
		wait = max(s.slack, 0)
		start := time.Now()
		defer func() { s.slack -= time.Since(start) }()
	}
	timeout := time.NewTimer(wait)
	defer timeout.Stop()
	for {
		s.mu.Lock()
		got := s.mu.answered[itt]
		delete(s.mu.answered, itt)
		s.mu.Unlock()
		if got {
			return true
		}
		select {
		case <-s.notify:
		case <-s.done:
			s.broken = true
			return false
		case <-timeout.C:
			if s.framed {
				s.t.Fatalf("no answer to %s within %v on an open connection:\n%s", what, fuzzWait, allStacks())
			}
			s.broken = true
			return false
		}
	}
}

func (s *fuzzSess) nextITT() uint32 {
	s.itt++
	if s.itt == reservedTag {
		s.itt = 0x1000
	}
	return s.itt
}

// pickITT returns a recent command's ITT (sel 0-6, 0 the latest) or an
// arbitrary one from the input (sel 7).
func (s *fuzzSess) pickITT(sel byte, r *fuzzInput) uint32 {
	if sel&7 == 7 {
		return r.u32()
	}
	return s.recent[(s.nrec-1-uint32(sel&7))%8]
}

// pickLUN returns a LUN field: 0, 1, 3 (mapped for one initiator or the
// other), 2 (mapped for neither), one from the input, or a raw field.
func pickLUN(sel byte, r *fuzzInput) uint64 {
	switch sel % 6 {
	case 0:
		return encodeLUN(0)
	case 1:
		return encodeLUN(1)
	case 2:
		return encodeLUN(3)
	case 3:
		return encodeLUN(2)
	case 4:
		return encodeLUN(uint64(r.byte()))
	}
	return uint64(r.u32())<<32 | uint64(r.u32())
}

// zeros is the data the fuzzed initiator sends.
var zeros = make([]byte, 1<<20)

// step performs one operation.
func (s *fuzzSess) step(op byte, r *fuzzInput) {
	switch op {
	case fopDataOut:
		s.dataOut(r)
	case fopAnswerR2T:
		s.answerR2T(r)
	case fopNop:
		s.nop(r)
	case fopTMF:
		s.tmf(r)
	case fopText:
		s.text(r)
	case fopLogout:
		sel := r.byte()
		h := s.header(opLogoutReq, sel&0x80 != 0, flagFinal|sel&0x7f, s.nextITT(), uint32(r.byte()&1)<<16)
		if sel&0x80 == 0 {
			s.cmdSN++
		}
		s.send(&h, nil)
	case fopSNACK:
		var h bhs
		h.setOpcode(opSNACKReq, false)
		h[1] = flagFinal | r.byte()&0x0f
		h.setITT(s.pickITT(r.byte(), r))
		h.setField20(r.u32())
		h.setField40(uint32(r.byte()))
		h.setField44(uint32(r.byte()))
		s.send(&h, nil)
	case fopGarbage:
		var h bhs
		sel := r.byte()
		h.setOpcode(opcode(sel&0x3f), sel&0x40 != 0)
		copy(h[1:4], r.bytes(3))
		copy(h[8:48], r.bytes(int(r.byte()%41)))
		s.send(&h, zeros[:r.byte()])
	case fopRaw:
		s.flush()
		raw := r.bytes(int(r.byte()) << int(r.byte()%9))
		s.framed = false
		if !s.broken {
			_ = s.nc.SetWriteDeadline(time.Now().Add(fuzzWait))
			if _, err := s.nc.Write(raw); err != nil {
				s.writeFailed(err)
			}
		}
	case fopSync:
		s.sync()
	case fopBadDigest:
		s.badDigest(r)
	default:
		s.command(r)
	}
}

// cdbShapes are the opcodes commands choose among; service actions go in
// byte 1.
var cdbShapes = [...]struct{ op, sa byte }{
	{0x00, 0}, {0x12, 0}, {0x03, 0}, {0xa0, 0}, {0x25, 0}, {0x9e, 0x10},
	{0x1a, 0}, {0x15, 0x10}, {0x08, 0}, {0x0a, 0}, {0x28, 0}, {0x2a, 0},
	{0x88, 0}, {0x8a, 0}, {0x2f, 0}, {0x2e, 0}, {0x41, 0}, {0x93, 0},
	{0x42, 0}, {0x89, 0}, {0x35, 0}, {0x16, 0}, {0x17, 0}, {0x5e, 0},
	{0x5f, 0}, {0xa3, 0x0a}, {0x9e, 0x12}, {0x1b, 0}, {0x5a, 0}, {0x55, 0x10},
	{0x91, 0}, {0xa3, 0x0c},
}

// isWrite reports whether an opcode transfers data-out.
func isWrite(op byte) bool {
	switch op {
	case 0x0a, 0x2a, 0x8a, 0xaa, 0x2e, 0x8e, 0x41, 0x93, 0x89, 0x42, 0x15, 0x55, 0x5f:
		return true
	}
	return false
}

// buildCDB makes a CDB of the shape's size with LBA and length fields.
func buildCDB(r *fuzzInput) ([16]byte, uint32) {
	sh := cdbShapes[int(r.byte())%len(cdbShapes)]
	lba, n := uint64(r.byte())*8, uint32(r.byte())
	var c [16]byte
	c[0], c[1] = sh.op, sh.sa
	switch {
	case sh.op < 0x20:
		c[1] |= byte(lba>>16) & 0x1f
		c[2], c[3], c[4] = byte(lba>>8), byte(lba), byte(n)
	case sh.op < 0x60:
		binary.BigEndian.PutUint32(c[2:], uint32(lba))
		binary.BigEndian.PutUint16(c[7:], uint16(n))
	case sh.op >= 0xa0:
		binary.BigEndian.PutUint32(c[2:], uint32(lba))
		binary.BigEndian.PutUint32(c[6:], n)
	default:
		binary.BigEndian.PutUint64(c[2:], lba)
		binary.BigEndian.PutUint32(c[10:], n)
	}
	if m := r.byte(); m != 0 {
		c[m%16] ^= r.byte()
	}
	return c, n
}

// command sends a SCSI Command. Argument bytes: flags (bit 0 raw mode,
// bits 1-3 F/R/W in raw mode, 4-6 the task attribute, bit 7 reuse a
// recent ITT), immediate+CmdSN, LUN, CDB (shape, LBA, length, mutation),
// expected length, immediate data.
func (s *fuzzSess) command(r *fuzzInput) {
	fl, snSel, lunSel := r.byte(), r.byte(), r.byte()
	cdb, n := buildCDB(r)
	edtlSel, immSel := r.byte(), r.byte()
	lun := pickLUN(lunSel, r)

	raw := fl&1 != 0
	write := isWrite(cdb[0])
	blocks := n * 512
	if cdb[0] == 0x89 {
		blocks *= 2
	}
	edtl := [8]uint32{blocks, 0, 512, 4096, 65536, blocks + 1, 1 << 20, 1 << 31}[edtlSel&7]
	var flags byte
	var imm, unsol uint32
	if raw {
		flags = fl << 4 & (flagFinal | flagRead | flagWrite)
		imm = [8]uint32{0, min(edtl, s.firstBurst, s.maxXmit), edtl, 1, uint32(immSel) * 64, min(edtl, s.firstBurst, s.maxXmit) + 1, s.maxXmit, s.firstBurst}[immSel&7]
	} else {
		flags = flagRead
		if write {
			flags = flagWrite
			if s.immediateData {
				imm = min(edtl, s.firstBurst, s.maxXmit)
			}
			if !s.initialR2T {
				unsol = min(edtl, s.firstBurst)
			}
		}
		if imm >= unsol {
			flags |= flagFinal
		}
	}
	imm = min(imm, uint32(len(zeros)))
	flags |= fl >> 4 & 7

	var h bhs
	immediate := snSel&0x80 != 0
	h.setOpcode(opSCSICmd, immediate)
	h[1] = flags
	h.setLUNRaw(lun)
	itt := s.nextITT()
	if fl&0x80 != 0 {
		itt = s.recent[(s.nrec-1)%8]
	}
	s.recent[s.nrec%8] = itt
	s.nrec++
	h.setITT(itt)
	h.setField20(edtl)
	sn := s.cmdSN
	switch d := snSel & 0x7f; {
	case d >= 0x70:
		sn += uint32(d) - 0x78
	case !immediate:
		if !raw {
			s.waitWindow(sn)
		}
		s.cmdSN++
	}
	h.setField24(sn)
	copy(h[32:48], cdb[:])
	s.send(&h, zeros[:imm])
	for off, dsn := imm, uint32(0); off < unsol; dsn++ {
		m := min(unsol-off, s.maxXmit)
		var d bhs
		d.setOpcode(opDataOut, false)
		if off+m == unsol {
			d[1] = flagFinal
		}
		d.setLUNRaw(lun)
		d.setITT(itt)
		d.setField20(reservedTag)
		d.setField36(dsn)
		d.setField40(off)
		s.send(&d, zeros[:m])
		off += m
	}
}

// dataOut sends one Data-Out PDU with fields from the input: selector (bits
// 0-2 the ITT, 3-4 the TTT: reserved, the ITT's last R2T's, arbitrary, 0;
// bit 5 F), offset, length, DataSN.
func (s *fuzzSess) dataOut(r *fuzzInput) {
	sel, offSel, lenSel, dsn := r.byte(), r.byte(), r.byte(), r.byte()
	itt := s.pickITT(sel, r)
	ttt := uint32(reservedTag)
	switch sel >> 3 & 3 {
	case 1:
		s.mu.Lock()
		for _, x := range s.mu.r2ts {
			if x.itt == itt {
				ttt = x.ttt
			}
		}
		s.mu.Unlock()
	case 2:
		ttt = r.u32()
	case 3:
		ttt = 0
	}
	off := uint32(offSel) * 512
	if offSel >= 0xf0 {
		off = r.u32()
	}
	n := [8]uint32{0, 1, 512, 4096, s.maxXmit, s.maxXmit + 1, s.firstBurst, uint32(lenSel) * 4}[lenSel&7]
	n = min(n, uint32(len(zeros)))
	var h bhs
	h.setOpcode(opDataOut, false)
	if sel&0x20 != 0 {
		h[1] = flagFinal
	}
	h.setLUNRaw(encodeLUN(0))
	h.setITT(itt)
	h.setField20(ttt)
	h.setField36(uint32(dsn))
	h.setField40(off)
	s.send(&h, zeros[:n])
}

// answerR2T waits for the target's R2Ts and answers the oldest one as an
// initiator would, or with one flaw (argument: bit 0 no F on the last
// PDU, bit 1 only the first PDU, bit 2 one byte too many).
func (s *fuzzSess) answerR2T(r *fuzzInput) {
	flaw := r.byte()
	if !s.sync() {
		return
	}
	s.mu.Lock()
	if len(s.mu.r2ts) == 0 {
		s.mu.Unlock()
		return
	}
	x := s.mu.r2ts[0]
	s.mu.r2ts = s.mu.r2ts[1:]
	s.mu.Unlock()
	n := min(x.n, uint32(len(zeros)))
	if flaw&4 != 0 {
		n++
	}
	for sent, dsn := uint32(0), uint32(0); sent < n; dsn++ {
		m := min(n-sent, s.maxXmit)
		last := sent+m == n
		var h bhs
		h.setOpcode(opDataOut, false)
		if last && flaw&1 == 0 {
			h[1] = flagFinal
		}
		h.setLUNRaw(encodeLUN(0))
		h.setITT(x.itt)
		h.setField20(x.ttt)
		h.setField36(dsn)
		h.setField40(x.off + sent)
		s.send(&h, zeros[:m])
		sent += m
		if flaw&2 != 0 {
			return
		}
	}
}

// nop sends a NOP-Out: a ping (immediate or numbered), the answer to the
// target's last ping, or one with arbitrary tags.
func (s *fuzzSess) nop(r *fuzzInput) {
	sel := r.byte()
	h := s.header(opNopOut, sel&4 == 0, flagFinal, s.nextITT(), reservedTag)
	switch sel & 3 {
	case 0:
	case 1:
		h.setOpcode(opNopOut, false)
		s.cmdSN++
	case 2:
		s.mu.Lock()
		ttt := s.mu.pingTTT
		s.mu.Unlock()
		h.setITT(reservedTag)
		h.setField20(ttt)
	default:
		h.setITT(r.u32())
		h.setField20(r.u32())
	}
	s.send(&h, zeros[:sel>>3])
}

// tmf sends a Task Management Function Request: function (any, bit 7
// immediate), LUN, referenced task, RefCmdSN distance.
func (s *fuzzSess) tmf(r *fuzzInput) {
	fn, lunSel, refSel, back := r.byte(), r.byte(), r.byte(), r.byte()
	h := s.header(opTMFReq, fn&0x80 != 0, flagFinal|fn&0x7f, s.nextITT(), s.pickITT(refSel, r))
	h.setLUNRaw(pickLUN(lunSel, r))
	if fn&0x80 == 0 {
		s.cmdSN++
	}
	h.setField32(s.cmdSN - uint32(back))
	s.send(&h, nil)
}

// text sends a Text Request: SendTargets, a continued request, the
// continuation of the target's last answer, or arbitrary text.
func (s *fuzzSess) text(r *fuzzInput) {
	sel := r.byte()
	h := s.header(opTextReq, sel&0x80 != 0, flagFinal, s.nextITT(), reservedTag)
	if sel&0x80 == 0 {
		s.cmdSN++
	}
	data := []byte("SendTargets=All\x00")
	switch sel & 3 {
	case 1:
		h[1] = flagContinue
		data = []byte("SendTarg")
	case 2:
		s.sync()
		s.mu.Lock()
		h.setITT(s.mu.textITT)
		h.setField20(s.mu.textTTT)
		s.mu.Unlock()
		data = nil
	case 3:
		data = r.bytes(int(r.byte()))
	}
	s.send(&h, data)
}

// badDigest sends a NOP-Out ping whose header (or data) digest is wrong
// when digests are in use; the target must drop the connection.
func (s *fuzzSess) badDigest(r *fuzzInput) {
	if !s.digests {
		return
	}
	s.flush()
	var buf strings.Builder
	w := pduWriter{w: bufio.NewWriter(&buf), hdrDigest: s.wr.hdrDigest, dataDigest: s.wr.dataDigest}
	h := s.header(opNopOut, true, flagFinal, s.nextITT(), reservedTag)
	h.setField28(s.expStatSN.Load())
	_ = w.write(&h, []byte("ping"))
	_ = w.w.Flush()
	b := []byte(buf.String())
	b[len(b)-1-int(r.byte()%4)] ^= 0xff // inside the last digest
	if !s.broken {
		_ = s.nc.SetWriteDeadline(time.Now().Add(fuzzWait))
		if _, err := s.nc.Write(b); err != nil {
			s.writeFailed(err)
		}
	}
}

// fuzzLog fails the input on any error logged and on any mention of a
// panic (a recovered one included).
type fuzzLog struct {
	next slog.Handler
	mu   sync.Mutex
	bad  []string
}

func (l *fuzzLog) Enabled(ctx context.Context, lv slog.Level) bool {
	return lv >= slog.LevelWarn || l.next != nil && l.next.Enabled(ctx, lv)
}

func (l *fuzzLog) Handle(ctx context.Context, rec slog.Record) error {
	line := rec.Level.String() + " " + rec.Message
	rec.Attrs(func(a slog.Attr) bool {
		line += " " + a.String()
		return true
	})
	if rec.Level >= slog.LevelError || strings.Contains(strings.ToLower(line), "panic") {
		l.mu.Lock()
		l.bad = append(l.bad, line)
		l.mu.Unlock()
	}
	if l.next != nil {
		return l.next.Handle(ctx, rec)
	}
	return nil
}

func (l *fuzzLog) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *fuzzLog) WithGroup(string) slog.Handler      { return l }

func (l *fuzzLog) failures() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.bad
}

// waitServerGoroutines waits until the goroutines are back to baseline
// or, as other goroutines of the process (the store's) come and go, until
// none is running the package's code; it fails after fuzzWait.
func waitServerGoroutines(t *testing.T, baseline int) {
	deadline := time.Now().Add(fuzzWait)
	for i := 0; ; i++ {
		if runtime.NumGoroutine() <= baseline {
			return
		}
		if i >= 100 {
			left := serverGoroutines()
			if left == "" {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("goroutines of the server still running %v after Close:\n%s", fuzzWait, left)
			}
			time.Sleep(10 * time.Millisecond)
			continue
		}
		runtime.Gosched()
	}
}

// serverGoroutines returns the stacks of the goroutines running code of
// the package outside its tests.
func serverGoroutines() string {
	var out []string
	for _, g := range strings.Split(allStacks(), "\n\n") {
		for _, line := range strings.Split(g, "\n") {
			if strings.Contains(line, "/internal/iscsi/") && !strings.Contains(line, "_test.go:") {
				out = append(out, g)
				break
			}
		}
	}
	return strings.Join(out, "\n\n")
}

func allStacks() string {
	buf := make([]byte, 1<<20)
	return string(buf[:runtime.Stack(buf, true)])
}

// fuzzSeed builds a FuzzSession input.
type fuzzSeed []byte

// newFuzzSeed starts an input with its three header bytes.
func newFuzzSeed(h0, h1, h2 byte) fuzzSeed { return fuzzSeed{h0, h1, h2} }

func (s fuzzSeed) op(op byte, args ...byte) fuzzSeed { return append(append(s, op), args...) }

// Header bytes of the seeds.
const (
	seedInitialR2T = 0x01
	seedImmData    = 0x02
	seedDigests    = 0x01<<2 | 0x01<<4
	seedTwo        = 0x40
	seedPings      = 0x80
	seedBursts     = 5 | 4<<3 // MaxBurstLength 262144, FirstBurstLength 65536
	seedWindow1    = 1 << 6
	seedSegments   = 5 | 3<<3 // MaxRecvDataSegmentLength: 262144 ours, 8192 the target's
)

// cdbShape returns the index of opcode op in cdbShapes.
func cdbShape(op byte) byte {
	for i, s := range cdbShapes {
		if s.op == op {
			return byte(i)
		}
	}
	panic(fmt.Sprintf("no CDB shape for opcode %#x", op))
}

// well-formed commands: flags, CmdSN, LUN, CDB (shape, LBA/8, blocks, no
// mutation), expected length = blocks, immediate data as negotiated.
func (s fuzzSeed) write(sess, lunSel, lba8, blocks byte) fuzzSeed {
	return s.op(fopCommand|sess<<4, 0, 0, lunSel, cdbShape(0x2a), lba8, blocks, 0, 0, 0)
}

func (s fuzzSeed) read(sess, lunSel, lba8, blocks byte) fuzzSeed {
	return s.op(fopCommand|sess<<4, 0, 0, lunSel, cdbShape(0x28), lba8, blocks, 0, 0, 0)
}

// tur sends TEST UNIT READY, which takes the nexus's first unit
// attention (POWER ON OCCURRED) so that later commands run.
func (s fuzzSeed) tur(sess, lunSel byte) fuzzSeed {
	return s.op(fopCommand|sess<<4, 0, 0, lunSel, cdbShape(0x00), 0, 0, 0, 1, 0)
}

func (s fuzzSeed) tmf(sess, fn, lunSel byte) fuzzSeed {
	return s.op(fopTMF|sess<<4, 0x80|fn, lunSel, 0, 0)
}

func (s fuzzSeed) sync(sess byte) fuzzSeed { return s.op(fopSync | sess<<4) }

// fuzzSessionSeed is a seed input with what the target must answer to it
// at least (and, for good, at most when exact is set).
type fuzzSessionSeed struct {
	name                string
	in                  fuzzSeed
	good, tmf, r2t, out int32
	exact               bool
}

// fuzzSessionSeeds are the seed inputs: ordinary I/O and the sequences
// that broke targets before. Each session starts with a TEST UNIT READY
// per LUN it uses, answered with the power-on unit attention.
func fuzzSessionSeeds() []fuzzSessionSeed {
	std := byte(seedImmData)
	start := func(h0, h1 byte) fuzzSeed {
		return newFuzzSeed(h0, h1, seedSegments).tur(0, 0).tur(0, 1)
	}
	seeds := []fuzzSessionSeed{
		{name: "write and read", good: 2, out: 1,
			in: start(std, seedBursts).write(0, 0, 0, 8).read(0, 0, 0, 8)},
		{name: "write and read with digests", good: 2, out: 1,
			in: start(std|seedDigests, seedBursts).write(0, 1, 2, 8).read(0, 1, 2, 8)},
		{name: "bad digest",
			in: start(std|seedDigests, seedBursts).sync(0).op(fopBadDigest, 0)},
		// A write with F=0 and an expected length of 0 (raw flags: W
		// only), then a zero-length Data-Out: the two PDUs that crashed
		// the array.
		{name: "zero-length write with F=0 and a Data-Out", good: 1, out: 1,
			in: start(std, seedBursts).
				op(fopCommand, 0x03, 0, 0, cdbShape(0x2a), 0, 0, 0, 1, 0).
				op(fopDataOut, 0x20, 0, 0, 0)},
		{name: "unsolicited data then an R2T", good: 1, r2t: 1, out: 1,
			in: start(0, seedBursts).write(0, 0, 4, 255).op(fopAnswerR2T, 0)},
		// A window of one command: a CmdSN behind the window, then one in
		// order.
		{name: "window of one", good: 1, out: 1,
			in: start(std, seedBursts|seedWindow1).
				op(fopCommand, 0, 0x71, 0, cdbShape(0x00), 0, 0, 0, 1, 0).
				write(0, 0, 0, 1)},
		// Text: SendTargets, a continued request, its continuation; a
		// ping of each kind; target pings; logout.
		{name: "text, pings, logout", out: 1,
			in: start(std|seedPings, seedBursts).
				op(fopText, 0).op(fopText, 1).op(fopText, 2).op(fopText, 0x80).
				op(fopNop, 0).op(fopNop, 1).op(fopNop, 2).sync(0).op(fopLogout, 0, 0)},
		// SNACK, an opcode the target does not know, a NOP-Out with tags
		// the target never gave, raw bytes.
		{name: "SNACK, unknown opcode, bad NOP-Out, raw bytes",
			in: start(std, seedBursts).sync(0).
				op(fopSNACK, 1, 0, 0, 0, 0, 0, 0, 0).op(fopGarbage, 0x1d, 1, 2, 3, 4, 9, 9, 9, 9, 4).sync(0).
				op(fopNop, 0x1b, 1, 2, 3, 4, 5, 6, 7, 8).op(fopRaw, 5, 0, 0xff, 0, 0, 0, 0)},
	}
	// Each task management function while a write waits for its data.
	for fn := range byte(16) {
		seeds = append(seeds, fuzzSessionSeed{name: fmt.Sprintf("TMF %d during Data-Out", fn), tmf: 1, r2t: 1,
			in: start(seedInitialR2T, seedBursts).write(0, 0, 0, 16).sync(0).
				op(fopTMF, 0x80|fn, 0, 0, 0).op(fopAnswerR2T, 0)})
	}
	// Two sessions share logical unit A (LUN 0 of the first, LUN 3 of the
	// second): a reset from the first drops the second's write waiting
	// for data on A and spares its write on C.
	for _, fn := range []scsi.TMF{scsi.ClearTaskSet, scsi.LogicalUnitReset, scsi.TargetWarmReset, scsi.TargetColdReset} {
		seeds = append(seeds, fuzzSessionSeed{name: fmt.Sprintf("TMF %d across sessions", fn), good: 1, exact: true, tmf: 1, r2t: 2,
			in: start(seedInitialR2T|seedTwo, seedBursts).tur(1, 2).tur(1, 0).
				write(1, 2, 0, 4).write(1, 0, 0, 4).sync(1).
				tmf(0, byte(fn), 0).sync(0).op(fopAnswerR2T|1<<4, 0).op(fopAnswerR2T|1<<4, 0)})
	}
	return seeds
}

// TestFuzzSessionSeeds checks that the seeds do what they are meant to:
// the fuzzed initiator's I/O succeeds, every task management function is
// answered, resets reach the sessions they should and only those.
func TestFuzzSessionSeeds(t *testing.T) {
	for _, s := range fuzzSessionSeeds() {
		t.Run(s.name, func(t *testing.T) {
			st := runFuzzSession(t, fuzzVolumes(t), s.in)
			good, tmf, r2t, out := st.good.Load(), st.tmf.Load(), st.r2t.Load(), st.logout.Load()
			if good < s.good || s.exact && good != s.good || tmf < s.tmf || r2t < s.r2t || out < s.out {
				t.Errorf("GOOD %d, TMF responses %d, R2Ts %d, logouts %d; want %d%s, %d, %d, %d at least",
					good, tmf, r2t, out, s.good, map[bool]string{true: " exactly"}[s.exact], s.tmf, s.r2t, s.out)
			}
		})
	}
}
