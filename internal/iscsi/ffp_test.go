package iscsi

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"net"
	"sync"
	"testing"

	"github.com/metro-storage/metro/internal/scsi"
)

var tur = []byte{0, 0, 0, 0, 0, 0}

func TestReadDataIn(t *testing.T) {
	h := newHarness(t, nil)
	copy(h.exec.disk, pattern(65536, 9))
	in := h.dial()
	in.mustLogin(loginOpts{keys: []kv{{"MaxRecvDataSegmentLength", "8192"}}})
	r := in.do(read10(0, 128), cmdOpts{read: true, edtl: 65536})
	if r.status != 0 || !bytes.Equal(r.data, h.exec.disk[:65536]) {
		t.Fatalf("status %d, %d bytes", r.status, len(r.data))
	}
	if r.dataIns != 8 || !r.statusInDI || r.flags&(flagOverflow|flagUnderflw) != 0 {
		t.Fatalf("%d Data-In, status in Data-In %v, flags 0x%02x", r.dataIns, r.statusInDI, r.flags)
	}
	if got := h.exec.commands()[0].ExpectedDataIn; got != 65536 {
		t.Errorf("ExpectedDataIn = %d", got)
	}
	// An error carries sense in a SCSI Response.
	r = in.do(read10(1<<30, 1), cmdOpts{read: true, edtl: 512})
	if r.status != scsi.StatusCheckCondition || len(r.sense) != 18 || r.sense[2] != 5 || r.sense[12] != 0x21 || len(r.data) != 0 {
		t.Fatalf("status %d sense % x data %d", r.status, r.sense, len(r.data))
	}
}

func TestDataInSequences(t *testing.T) {
	h := newHarness(t, nil)
	in := h.dial()
	in.mustLogin(loginOpts{keys: []kv{{"MaxBurstLength", "4096"}, {"FirstBurstLength", "4096"}}})
	itt := in.sendCommand(read10(0, 32), cmdOpts{read: true, edtl: 16384})
	for i := range 4 {
		r, d := in.mustRecv()
		if r.opcode() != opDataIn || r.itt() != itt || len(d) != 4096 || !r.final() || r.field36() != uint32(i) {
			t.Fatalf("Data-In %d: %s len %d flags 0x%02x DataSN %d", i, r.opcode(), len(d), r[1], r.field36())
		}
		if (i == 3) != (r.flags()&flagStatus != 0) {
			t.Fatalf("Data-In %d status bit 0x%02x", i, r[1])
		}
	}
}

func TestReadResiduals(t *testing.T) {
	h := newHarness(t, nil)
	in := h.dial()
	in.mustLogin(loginOpts{})
	cases := []struct {
		blocks uint16
		edtl   uint32
		data   int
		flag   byte
		resid  uint32
	}{
		{1, 0, 0, flagOverflow, 512},
		{1, 10000, 512, flagUnderflw, 10000 - 512},
		{1, 200, 200, flagOverflow, 312},
		{2, 512, 512, flagOverflow, 512},
		{1, 512, 512, 0, 0},
	}
	for _, c := range cases {
		r := in.do(read10(0, c.blocks), cmdOpts{read: true, edtl: c.edtl})
		if r.status != 0 || len(r.data) != c.data || r.flags&(flagOverflow|flagUnderflw) != c.flag || r.residual != c.resid {
			t.Errorf("read %d blocks edtl %d: status %d, %d bytes, flags 0x%02x, residual %d", c.blocks, c.edtl, r.status, len(r.data), r.flags, r.residual)
		}
	}
}

func TestWriteResiduals(t *testing.T) {
	h := newHarness(t, nil)
	in := h.dial()
	in.mustLogin(loginOpts{})
	cases := []struct {
		blocks uint16
		sent   int
		flag   byte
		resid  uint32
	}{
		{1, 0, flagOverflow, 512},
		{1, 10000, flagUnderflw, 10000 - 512},
		{1, 200, flagOverflow, 312},
		{2, 512, flagOverflow, 512},
		{1, 512, 0, 0},
	}
	for _, c := range cases {
		o := cmdOpts{dataOut: make([]byte, c.sent), write: true}
		r := in.do(write10(0, c.blocks), o)
		if r.status != 0 || r.flags&(flagOverflow|flagUnderflw) != c.flag || r.residual != c.resid {
			t.Errorf("write %d blocks with %d bytes: status %d flags 0x%02x residual %d", c.blocks, c.sent, r.status, r.flags, r.residual)
		}
		// What the CDB transfers and one block more are kept of an
		// overflow; the rest is dropped.
		cmds := h.exec.commands()
		if got, want := len(cmds[len(cmds)-1].DataOut), min(c.sent, int(c.blocks)*512+overflowKept); got != want {
			t.Errorf("write %d blocks with %d bytes: executor got %d bytes of data-out, want %d", c.blocks, c.sent, got, want)
		}
	}
	// A READ flagged as a write on the iSCSI layer: data-out delivered, no data-in.
	r := in.do(read10(0, 1), cmdOpts{dataOut: make([]byte, 512)})
	if r.status != 0 || len(r.data) != 0 || r.dataIns != 0 {
		t.Errorf("READ with W bit: status %d, %d bytes in", r.status, len(r.data))
	}
}

func TestWriteDataPaths(t *testing.T) {
	cases := []struct {
		name string
		keys []kv
		size int
		o    cmdOpts
		r2ts int
	}{
		{"immediate", nil, 4096, cmdOpts{}, 0},
		{"immediate+unsolicited", []kv{{"MaxRecvDataSegmentLength", "8192"}}, 64 << 10, cmdOpts{}, 0},
		{"unsolicited only", nil, 32 << 10, cmdOpts{noImmData: true}, 0},
		{"immediate+unsolicited+R2T", []kv{{"MaxBurstLength", "65536"}}, 1 << 20, cmdOpts{}, 15},
		{"R2T only", []kv{{"InitialR2T", "Yes"}, {"ImmediateData", "No"}, {"MaxBurstLength", "131072"}}, 512 << 10, cmdOpts{}, 4},
		{"R2T small segments", []kv{{"InitialR2T", "Yes"}, {"ImmediateData", "No"}}, 300 << 10, cmdOpts{segment: 4096}, 2},
		{"immediate then R2T", []kv{{"InitialR2T", "Yes"}}, 200 << 10, cmdOpts{}, 1},
		{"no unsolicited Data-Out", nil, 128 << 10, cmdOpts{noUnsol: true}, 1},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h := newHarness(t, nil)
			in := h.dial()
			in.mustLogin(loginOpts{keys: c.keys})
			data := pattern(c.size, byte(i))
			o := c.o
			o.dataOut = data
			r := in.do(write10(8, uint16(c.size/512)), o)
			if r.status != 0 || r.r2ts != c.r2ts || r.flags&(flagOverflow|flagUnderflw) != 0 {
				t.Fatalf("status %d, %d R2Ts (want %d), flags 0x%02x", r.status, r.r2ts, c.r2ts, r.flags)
			}
			if !bytes.Equal(h.exec.disk[8*512:8*512+c.size], data) {
				t.Fatal("data on disk differs")
			}
		})
	}
}

func TestDataOutSequenceErrorsFailTheTask(t *testing.T) {
	cases := map[string]func(seq, i uint32) uint32{
		"all zero": func(seq, i uint32) uint32 { return 0 },
		"27":       func(seq, i uint32) uint32 { return 27 },
		"-1":       func(seq, i uint32) uint32 { return 0xffffffff },
		"reversed": func(seq, i uint32) uint32 { return 1 - i },
	}
	for name, f := range cases {
		t.Run(name, func(t *testing.T) {
			h := newHarness(t, nil)
			in := h.dial()
			in.mustLogin(loginOpts{keys: []kv{{"ImmediateData", "No"}}})
			in.maxXmit = 512
			o := cmdOpts{dataOut: make([]byte, 1024), dataSNFunc: f}
			r := in.do(write10(100, 2), o)
			if r.status != scsi.StatusCheckCondition || len(r.sense) < 14 || r.sense[2] != 0x0b || r.sense[12] != 0x4b {
				t.Fatalf("status %d sense % x", r.status, r.sense)
			}
			// The connection survives; later Data-Out for the failed task
			// is discarded.
			in.maxXmit = 262144
			if r := in.do(write10(0, 8), cmdOpts{dataOut: pattern(4096, 1)}); r.status != 0 {
				t.Fatal("next write failed")
			}
			for _, c := range h.exec.commands() {
				if c.CDB[0] == 0x2a && c.CDB[5] == 100 {
					t.Fatal("the failed write reached the executor")
				}
			}
		})
	}
}

func TestBadBufferOffsetFailsTheTask(t *testing.T) {
	h := newHarness(t, nil)
	in := h.dial()
	in.mustLogin(loginOpts{keys: []kv{{"ImmediateData", "No"}}})
	itt := in.nextITT()
	var c bhs
	c.setOpcode(opSCSICmd, false)
	c[1] = flagWrite
	c.setITT(itt)
	c.setField20(1024)
	c.setField24(in.cmdSN)
	in.cmdSN++
	copy(c[32:], write10(0, 2))
	in.mustSend(&c, nil)
	var d bhs
	d.setOpcode(opDataOut, false)
	d[1] = flagFinal
	d.setITT(itt)
	d.setField20(reservedTag)
	d.setField40(512) // should be 0
	in.mustSend(&d, make([]byte, 512))
	r, err := in.waitResult(itt, cmdOpts{})
	if err != nil || r.status != scsi.StatusCheckCondition || r.sense[12] != 0x4b || r.sense[13] != 0x05 {
		t.Fatalf("%v: status %d sense % x", err, r.status, r.sense)
	}
	if r := in.do(tur, cmdOpts{}); r.status != 0 {
		t.Fatal("session broken")
	}
}

func TestDataOutDigestErrorFailsTheTask(t *testing.T) {
	h := newHarness(t, nil)
	in := h.dial()
	in.mustLogin(loginOpts{keys: []kv{{"ImmediateData", "No"}, {"DataDigest", "CRC32C"}}})
	itt := in.nextITT()
	var c bhs
	c.setOpcode(opSCSICmd, false)
	c[1] = flagWrite
	c.setITT(itt)
	c.setField20(512)
	c.setField24(in.cmdSN)
	in.cmdSN++
	copy(c[32:], write10(0, 1))
	in.mustSend(&c, nil)
	var d bhs
	d.setOpcode(opDataOut, false)
	d[1] = flagFinal
	d.setITT(itt)
	d.setField20(reservedTag)
	d.setDataLen(512)
	raw := append(d[:], make([]byte, 512+4)...) // zero digest: wrong
	if _, err := in.nc.Write(raw); err != nil {
		t.Fatal(err)
	}
	r, err := in.waitResult(itt, cmdOpts{})
	if err != nil || r.status != scsi.StatusCheckCondition || r.sense[12] != 0x47 || r.sense[13] != 0x05 {
		t.Fatalf("%v: status %d sense % x", err, r.status, r.sense)
	}
	if r := in.do(tur, cmdOpts{}); r.status != 0 {
		t.Fatal("session broken")
	}
}

func TestCmdSNWindow(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.CmdWindow = 4 })
	in := h.dial()
	in.mustLogin(loginOpts{})
	r := in.do(tur, cmdOpts{})
	if r.status != 0 || in.lastMaxCmdSN != in.lastExpCmdSN+3 {
		t.Fatalf("ExpCmdSN %d MaxCmdSN %d", in.lastExpCmdSN, in.lastMaxCmdSN)
	}
	exp, maxSN := in.lastExpCmdSN, in.lastMaxCmdSN
	if exp != in.cmdSN {
		t.Fatalf("ExpCmdSN %d, initiator at %d", exp, in.cmdSN)
	}
	// Too high and too low: silently ignored.
	high, low := maxSN+1, exp-1
	in.sendCommand(tur, cmdOpts{cmdSN: &high})
	in.sendCommand(tur, cmdOpts{cmdSN: &low})
	in.sendNop(0x900, nil, true, in.cmdSN)
	if r, _ := in.mustRecv(); r.opcode() != opNopIn {
		t.Fatalf("got %s, want the ping's answer first", r.opcode())
	}
	// The window still starts at exp: a command there works.
	if r := in.do(tur, cmdOpts{}); r.status != 0 {
		t.Fatal("command at ExpCmdSN failed")
	}
	if n := len(h.exec.commands()); n != 2 {
		t.Fatalf("executor ran %d commands, want 2", n)
	}
}

func TestCmdSNWindowFull(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.CmdWindow = 4 })
	release := make(chan struct{})
	h.exec.setHook(func(ctx context.Context, cmd *scsi.Command) *scsi.Result {
		if cmd.CDB[0] == 0x00 {
			<-release
		}
		return nil
	})
	in := h.dial()
	in.mustLogin(loginOpts{})
	first := in.cmdSN
	var itts []uint32
	for range 4 {
		itts = append(itts, in.sendCommand(tur, cmdOpts{}))
	}
	// The fifth is beyond MaxCmdSN while the four are outstanding.
	fifth := in.cmdSN
	in.sendCommand(tur, cmdOpts{cmdSN: &fifth})
	// A ping answered means the reader has dealt with the fifth command.
	in.sendNop(0x900, nil, true, in.cmdSN)
	if r, _ := in.mustRecv(); r.opcode() != opNopIn || r.itt() != 0x900 {
		t.Fatalf("got %s", r.opcode())
	}
	close(release)
	got := map[uint32]bool{}
	for len(got) < 4 {
		r, _ := in.mustRecv()
		if r.opcode() != opSCSIResp || r[3] != 0 {
			t.Fatalf("got %s status %d", r.opcode(), r[3])
		}
		got[r.itt()] = true
	}
	for _, itt := range itts {
		if !got[itt] {
			t.Fatalf("no response for 0x%x", itt)
		}
	}
	if in.lastExpCmdSN != first+4 || in.lastMaxCmdSN != first+7 {
		t.Fatalf("ExpCmdSN %d MaxCmdSN %d, want %d %d", in.lastExpCmdSN, in.lastMaxCmdSN, first+4, first+7)
	}
	// Resent now, it is in the window.
	in.cmdSN = fifth
	if r := in.do(tur, cmdOpts{}); r.status != 0 {
		t.Fatal("resent command failed")
	}
	if n := len(h.exec.commands()); n != 5 {
		t.Fatalf("%d commands executed, want 5", n)
	}
}

func TestCmdSNOutOfOrder(t *testing.T) {
	h := newHarness(t, nil)
	var mu sync.Mutex
	var order []uint32
	h.exec.setHook(func(ctx context.Context, cmd *scsi.Command) *scsi.Result {
		mu.Lock()
		order = append(order, cmd.Tag)
		mu.Unlock()
		return nil
	})
	in := h.dial()
	in.mustLogin(loginOpts{})
	sn := in.cmdSN
	sn1, sn2, sn3 := sn+1, sn+2, sn
	// ORDERED tasks run one at a time, so execution order shows delivery order.
	a := in.sendCommand(tur, cmdOpts{cmdSN: &sn2, attr: 2})
	b := in.sendCommand(tur, cmdOpts{cmdSN: &sn1, attr: 2})
	// A NOP-Out ping numbered ahead of the gap waits too; an immediate one does not.
	in.sendNop(0x5000, []byte("x"), false, sn+3)
	in.sendNop(0x5001, []byte("imm"), true, sn+4)
	r, d := in.mustRecv()
	if r.opcode() != opNopIn || r.itt() != 0x5001 || string(d) != "imm" {
		t.Fatalf("immediate ping: %s itt 0x%x", r.opcode(), r.itt())
	}
	c := in.sendCommand(tur, cmdOpts{cmdSN: &sn3, attr: 2})
	in.cmdSN = sn + 4
	got := map[uint32]bool{}
	for len(got) < 4 {
		r, _ := in.mustRecv()
		got[r.itt()] = true
	}
	if !got[a] || !got[b] || !got[c] || !got[0x5000] {
		t.Fatalf("responses %v", got)
	}
	mu.Lock()
	defer mu.Unlock()
	if fmt.Sprint(order) != fmt.Sprint([]uint32{c, b, a}) {
		t.Fatalf("execution order %v, want %v", order, []uint32{c, b, a})
	}
}

func (in *initiator) sendNop(itt uint32, data []byte, immediate bool, cmdSN uint32) {
	in.t.Helper()
	var h bhs
	h.setOpcode(opNopOut, immediate)
	h[1] = flagFinal
	h.setITT(itt)
	h.setField20(reservedTag)
	h.setField24(cmdSN)
	h.setField28(in.expStatSN)
	in.mustSend(&h, data)
}

func TestTaskAttributes(t *testing.T) {
	h := newHarness(t, nil)
	started := make(chan uint32, 10)
	release := map[uint32]chan struct{}{}
	var mu sync.Mutex
	gate := func(tag uint32) chan struct{} {
		mu.Lock()
		defer mu.Unlock()
		if release[tag] == nil {
			release[tag] = make(chan struct{})
		}
		return release[tag]
	}
	h.exec.setHook(func(ctx context.Context, cmd *scsi.Command) *scsi.Result {
		started <- cmd.Tag
		<-gate(cmd.Tag)
		return &scsi.Result{Status: scsi.StatusGood}
	})
	in := h.dial()
	in.mustLogin(loginOpts{})
	a := in.sendCommand(tur, cmdOpts{attr: 1}) // SIMPLE
	if got := <-started; got != a {
		t.Fatalf("started 0x%x", got)
	}
	b := in.sendCommand(tur, cmdOpts{attr: 2}) // ORDERED: waits for a
	c := in.sendCommand(tur, cmdOpts{attr: 1}) // SIMPLE: waits for b
	d := in.sendCommand(tur, cmdOpts{attr: 3}) // HEAD OF QUEUE: at once
	if got := <-started; got != d {
		t.Fatalf("started 0x%x, want head-of-queue 0x%x", got, d)
	}
	close(gate(d))
	close(gate(a))
	if got := <-started; got != b {
		t.Fatalf("started 0x%x, want ordered 0x%x", got, b)
	}
	select {
	case got := <-started:
		t.Fatalf("0x%x started while the ordered task runs", got)
	default:
	}
	close(gate(b))
	if got := <-started; got != c {
		t.Fatalf("started 0x%x, want 0x%x", got, c)
	}
	close(gate(c))
	seen := map[uint32]bool{}
	for len(seen) < 4 {
		r, _ := in.mustRecv()
		if r.opcode() != opSCSIResp {
			t.Fatalf("got %s", r.opcode())
		}
		seen[r.itt()] = true
	}
}

func TestNopOutEcho(t *testing.T) {
	h := newHarness(t, nil)
	in := h.dial()
	in.mustLogin(loginOpts{})
	in.sendNop(0x77, []byte("ping data"), true, in.cmdSN)
	r, d := in.mustRecv()
	if r.opcode() != opNopIn || r.itt() != 0x77 || r.ttt() != reservedTag || string(d) != "ping data" {
		t.Fatalf("%s itt 0x%x ttt 0x%x data %q", r.opcode(), r.itt(), r.ttt(), d)
	}
	// Non-immediate: consumes a CmdSN.
	in.sendNop(0x78, nil, false, in.cmdSN)
	in.cmdSN++
	r, _ = in.mustRecv()
	if r.opcode() != opNopIn || r.itt() != 0x78 || in.lastExpCmdSN != in.cmdSN {
		t.Fatalf("%s itt 0x%x ExpCmdSN %d want %d", r.opcode(), r.itt(), in.lastExpCmdSN, in.cmdSN)
	}
	// No-reply ping.
	in.sendNop(reservedTag, nil, true, in.cmdSN)
	if r := in.do(tur, cmdOpts{}); r.status != 0 {
		t.Fatal("TUR after no-reply ping")
	}
}

func TestRejects(t *testing.T) {
	h := newHarness(t, nil)
	in := h.dial()
	in.mustLogin(loginOpts{})
	var s bhs
	s.setOpcode(opSNACKReq, false)
	s[1] = flagFinal
	s.setITT(0x99)
	in.mustSend(&s, nil)
	r, d := in.mustRecv()
	if r.opcode() != opReject || r[2] != rejectNotSupported || !bytes.Equal(d, s[:]) || r.itt() != reservedTag {
		t.Fatalf("SNACK: %s reason 0x%02x", r.opcode(), r[2])
	}
	var u bhs
	u.setOpcode(0x1c, false)
	in.mustSend(&u, []byte("junk"))
	r, _ = in.mustRecv()
	if r.opcode() != opReject || r[2] != rejectNotSupported {
		t.Fatalf("unknown opcode: %s reason 0x%02x", r.opcode(), r[2])
	}
	// Duplicate ITT of a running task.
	release := make(chan struct{})
	h.exec.setHook(func(ctx context.Context, cmd *scsi.Command) *scsi.Result {
		if cmd.Tag == 0x4444 {
			<-release
		}
		return nil
	})
	in.sendCommand(tur, cmdOpts{itt: 0x4444})
	in.sendCommand(tur, cmdOpts{itt: 0x4444})
	r, _ = in.mustRecv()
	if r.opcode() != opReject || r[2] != rejectTaskInProgress {
		t.Fatalf("duplicate ITT: %s reason 0x%02x", r.opcode(), r[2])
	}
	close(release)
	if res, err := in.waitResult(0x4444, cmdOpts{}); err != nil || res.status != 0 {
		t.Fatal(err)
	}
	// The rejected command's CmdSN was consumed: the window moves on.
	if r := in.do(tur, cmdOpts{}); r.status != 0 {
		t.Fatal("TUR after reject")
	}
}

func TestMalformedPDUDropsOnlyThatConnection(t *testing.T) {
	bad := map[string]func(in *initiator){
		"oversized data segment": func(in *initiator) {
			var h bhs
			h.setOpcode(opNopOut, true)
			h.setDataLen(1 << 23)
			in.rawHeader(&h, nil)
		},
		"bad AHS": func(in *initiator) {
			var h bhs
			h.setOpcode(opSCSICmd, true)
			h[1] = flagFinal
			h[4] = 1
			in.rawHeader(&h, []byte{0, 9, 9, 9})
		},
		"login in full feature phase": func(in *initiator) {
			in.loginReq(1, 3, true, nil)
		},
		"unsolicited data with InitialR2T=No but no W bit": func(in *initiator) {
			var h bhs
			h.setOpcode(opSCSICmd, true)
			h[1] = flagFinal | flagRead
			h.setField20(512)
			in.mustSend(&h, make([]byte, 16))
		},
		"header digest error": func(in *initiator) {
			var h bhs
			h.setOpcode(opNopOut, true)
			h[1] = flagFinal
			in.nc.Write(append(h[:], 1, 2, 3, 4))
		},
		"huge transfer length": func(in *initiator) {
			var h bhs
			h.setOpcode(opSCSICmd, true)
			h[1] = flagFinal | flagWrite
			h.setField20(0xffffffff)
			in.mustSend(&h, nil)
		},
	}
	for name, f := range bad {
		t.Run(name, func(t *testing.T) {
			h := newHarness(t, nil)
			good := h.dial()
			good.isid[5] = 0x33
			good.mustLogin(loginOpts{})
			in := h.dial()
			in.mustLogin(loginOpts{keys: []kv{{"HeaderDigest", "CRC32C"}}})
			in.tolerant = true
			f(in)
			in.expectClosed()
			if r := good.do(tur, cmdOpts{}); r.status != 0 {
				t.Fatal("good session broken")
			}
			good2 := h.dial()
			good2.isid[5] = 0x34
			good2.mustLogin(loginOpts{})
		})
	}
}

// rawHeader writes a BHS and AHS as they are (with the header digest when
// it is on).
func (in *initiator) rawHeader(h *bhs, ahs []byte) {
	b := append(append([]byte(nil), h[:]...), ahs...)
	if in.wr.hdrDigest {
		b = binary.LittleEndian.AppendUint32(b, crc32.Checksum(b, crc32cTable()))
	}
	_, _ = in.nc.Write(b)
}

func TestManySessionsOverTCP(t *testing.T) {
	exec := newFakeExec()
	exec.disk = make([]byte, 8<<20)
	srv := NewServer(Config{Backend: newFakeBackend(), Executor: exec, TPGT: 1, Logger: testLogger(t), NopInterval: -1})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(context.Background(), l) }()
	const n = 8
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- func() error {
				nc, err := net.Dial("tcp", l.Addr().String())
				if err != nil {
					return err
				}
				defer nc.Close()
				in := newInitiator(t, nc)
				in.name = fmt.Sprintf("iqn.2024-01.test.host:many%d", i)
				if _, err := in.login(loginOpts{keys: []kv{{"HeaderDigest", "CRC32C"}, {"DataDigest", "CRC32C"}, {"MaxBurstLength", "65536"}}}); err != nil {
					return err
				}
				// Each session owns 1024 blocks of the 4 MiB fake disk:
				// four 256-block writes.
				base := uint32(i) * 1024
				for j := range 4 {
					data := pattern(128<<10, byte(i*8+j))
					lba := base + uint32(j)*256
					itt := in.sendCommand(write10(lba, 256), cmdOpts{dataOut: data})
					if r, err := in.waitResult(itt, cmdOpts{dataOut: data}); err != nil || r.status != 0 {
						return fmt.Errorf("write: %v status %d", err, r.status)
					}
					itt = in.sendCommand(read10(lba, 256), cmdOpts{read: true, edtl: 128 << 10})
					r, err := in.waitResult(itt, cmdOpts{})
					if err != nil || !bytes.Equal(r.data, data) {
						off := -1
						for k := range min(len(r.data), len(data)) {
							if r.data[k] != data[k] {
								off = k
								break
							}
						}
						return fmt.Errorf("read back: %v (got %d bytes, want %d, first difference at %d)", err, len(r.data), len(data), off)
					}
				}
				if lr := in.logout(logoutCloseSession); lr[2] != 0 {
					return fmt.Errorf("logout %d", lr[2])
				}
				return nil
			}()
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	if err := srv.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != ErrServerClosed {
		t.Fatalf("Serve returned %v", err)
	}
	if got := exec.lostCount(); got != n {
		t.Errorf("NexusLost %d times, want %d", got, n)
	}
}

func TestLogout(t *testing.T) {
	h := newHarness(t, nil)
	in := h.dial()
	in.mustLogin(loginOpts{})
	if r := in.logout(logoutRecovery); r[2] != logoutNoRecovery {
		t.Fatalf("recovery logout: %d", r[2])
	}
	var lo bhs
	lo.setOpcode(opLogoutReq, true)
	lo[1] = flagFinal | logoutCloseConnection
	lo.setITT(in.nextITT())
	binary.BigEndian.PutUint16(lo[20:22], 9)
	in.mustSend(&lo, nil)
	if r, _ := in.mustRecv(); r.opcode() != opLogoutResp || r[2] != logoutCIDNotFound {
		t.Fatalf("wrong CID: %s %d", r.opcode(), r[2])
	}

	// Logout waits for a running command; its response comes first.
	release := make(chan struct{})
	started := make(chan struct{})
	h.exec.setHook(func(ctx context.Context, cmd *scsi.Command) *scsi.Result {
		close(started)
		<-release
		return &scsi.Result{Status: scsi.StatusGood}
	})
	itt := in.sendCommand(tur, cmdOpts{})
	<-started
	lo[1] = flagFinal | logoutCloseConnection
	binary.BigEndian.PutUint16(lo[20:22], 0)
	lo.setITT(in.nextITT())
	in.mustSend(&lo, nil)
	close(release)
	r, _ := in.mustRecv()
	if r.opcode() != opSCSIResp || r.itt() != itt {
		t.Fatalf("got %s itt 0x%x first", r.opcode(), r.itt())
	}
	r, _ = in.mustRecv()
	if r.opcode() != opLogoutResp || r[2] != logoutOK || binary.BigEndian.Uint16(r[40:42]) != 2 {
		t.Fatalf("got %s response %d time2wait %d", r.opcode(), r[2], binary.BigEndian.Uint16(r[40:42]))
	}
	in.expectClosed()
}

func TestReinstatement(t *testing.T) {
	h := newHarness(t, nil)
	blocked := make(chan struct{})
	h.exec.setHook(func(ctx context.Context, cmd *scsi.Command) *scsi.Result {
		if cmd.CDB[0] == 0x00 {
			close(blocked)
			<-ctx.Done() // a command stuck until the session ends
			return &scsi.Result{Status: scsi.StatusGood}
		}
		return nil
	})
	old := h.dial()
	old.mustLogin(loginOpts{})
	oldTSIH := old.tsih
	old.sendCommand(tur, cmdOpts{})
	<-blocked

	in := h.dial()
	in.mustLogin(loginOpts{}) // same ISID, TSIH 0
	if in.tsih == oldTSIH {
		t.Errorf("reinstated session kept TSIH %d", in.tsih)
	}
	if h.exec.lostCount() != 1 {
		t.Fatalf("NexusLost called %d times before the new login completed", h.exec.lostCount())
	}
	old.expectClosed()
	if r := in.do(read10(0, 1), cmdOpts{read: true, edtl: 512}); r.status != 0 {
		t.Fatal("new session broken")
	}
	if ss := h.srv.Sessions(); len(ss) != 1 || ss[0].TSIH != in.tsih {
		t.Fatalf("sessions %+v", ss)
	}

	// A login naming the TSIH restarts the session under it.
	again := h.dial()
	again.mustLogin(loginOpts{tsih: in.tsih})
	if again.tsih != in.tsih {
		t.Fatalf("TSIH %d, want %d", again.tsih, in.tsih)
	}
	in.expectClosed()
	if r := again.do(read10(0, 1), cmdOpts{read: true, edtl: 512}); r.status != 0 {
		t.Fatal("restarted session broken")
	}
	// An unknown TSIH is refused.
	bad := h.dial()
	bad.isid[5] = 0x55
	_, err := bad.login(loginOpts{tsih: 0x7777})
	wantStatus(t, err, statusSessionNotFound)
}

// TestZeroLengthWriteWithUnsolicitedData is the two-PDU crash: with
// InitialR2T=No a write command with W set, F=0 and an Expected Data
// Transfer Length of 0 announces unsolicited data that cannot exist, then
// a zero-length Data-Out follows. The command is complete as it stands
// (nothing to transfer); the Data-Out has no burst to belong to. The
// target must answer, not crash.
func TestZeroLengthWriteWithUnsolicitedData(t *testing.T) {
	h := newHarness(t, nil)
	in := h.dial()
	in.mustLogin(loginOpts{keys: []kv{{"InitialR2T", "No"}}})
	itt := in.nextITT()
	var c bhs
	c.setOpcode(opSCSICmd, false)
	c[1] = flagWrite // F=0: unsolicited data to follow
	c.setITT(itt)
	c.setField20(0) // Expected Data Transfer Length
	c.setField24(in.cmdSN)
	in.cmdSN++
	copy(c[32:], write10(0, 0))
	in.mustSend(&c, nil)
	var d bhs
	d.setOpcode(opDataOut, false)
	d[1] = flagFinal
	d.setITT(itt)
	d.setField20(reservedTag)
	in.mustSend(&d, nil)
	if r, err := in.waitResult(itt, cmdOpts{}); err != nil || r.status != 0 {
		t.Fatalf("%v: status %d sense % x", err, r.status, r.sense)
	}
	if r := in.do(tur, cmdOpts{}); r.status != 0 {
		t.Fatal("session broken")
	}
}
