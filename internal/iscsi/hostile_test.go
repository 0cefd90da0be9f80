package iscsi

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"maps"

	"net"
	"runtime"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/metro-storage/metro/internal/scsi"
)

// Tests of a target facing hostile or broken hosts: panics contained,
// connections and logins limited, memory following the data that came,
// one answer for every refused login, odd PDU sequences survived.

// sourceConn is a pipe connection that says it comes from a given address.
type sourceConn struct {
	net.Conn
	remote net.Addr
}

func (c sourceConn) RemoteAddr() net.Addr { return c.remote }

// dialFrom connects to the harness as if from ip.
func (h *harness) dialFrom(ip string) *initiator {
	h.t.Helper()
	client, server := net.Pipe()
	addr := &net.TCPAddr{IP: net.ParseIP(ip), Port: 40000}
	if err := h.l.Offer(context.Background(), sourceConn{Conn: server, remote: addr}); err != nil {
		h.t.Fatalf("offer: %v", err)
	}
	return newInitiator(h.t, client)
}

// isClosedNow reports whether the target closed the connection without a
// word (a refused connection), reading with a deadline.
func isClosedNow(in *initiator) bool {
	// A refused connection is closed at once; one that is not is closed
	// only by the login start timeout (5s).
	_ = in.nc.SetReadDeadline(time.Now().Add(2 * time.Second))
	defer in.nc.SetReadDeadline(time.Time{})
	var b [1]byte
	_, err := in.nc.Read(b[:])
	var ne net.Error
	return err != nil && !(errors.As(err, &ne) && ne.Timeout())
}

// halfLogin sends a Login Request header announcing data that never
// comes.
func (in *initiator) halfLogin() {
	in.t.Helper()
	var h bhs
	h.setOpcode(opLoginReq, true)
	h[1] = flagTransit | stageSecurity<<2 | stageOperational
	copy(h[8:14], in.isid[:])
	h.setDataLen(4096)
	if _, err := in.nc.Write(h[:]); err != nil {
		in.t.Fatalf("write: %v", err)
	}
}

func TestPanicContained(t *testing.T) {
	h := newHarness(t, nil)
	var lockMu sync.Mutex // stands for a range lock the executor holds
	h.exec.setHook(func(ctx context.Context, cmd *scsi.Command) *scsi.Result {
		if cmd.CDB[0] == 0x2a && binary.BigEndian.Uint32(cmd.CDB[2:]) == 666 {
			lockMu.Lock()
			defer lockMu.Unlock()
			panic("a bug in the executor")
		}
		if cmd.CDB[0] == 0x2a {
			lockMu.Lock()
			defer lockMu.Unlock()
		}
		return nil
	})
	good := h.dial()
	good.isid[5] = 7
	good.mustLogin(loginOpts{})
	bad := h.dial()
	bad.tolerant = true
	bad.mustLogin(loginOpts{})
	// More work queued behind the panicking write on the same session.
	bad.sendCommand(write10(666, 1), cmdOpts{dataOut: make([]byte, 512)})
	bad.sendCommand(write10(10, 1), cmdOpts{dataOut: make([]byte, 512)})
	bad.expectClosed()

	// The other session goes on, through the same lock.
	if r := good.do(write10(10, 1), cmdOpts{dataOut: pattern(512, 3)}); r.status != 0 {
		t.Fatalf("good session after the panic: status %d", r.status)
	}
	if n := h.srv.Panics(); n != 1 {
		t.Fatalf("Panics() = %d, want 1", n)
	}
	// The panicking session was torn down: NexusLost told, a new login
	// with the same ISID works.
	waitFor(t, func() bool { return h.exec.lostCount() == 1 })
	again := h.dial()
	again.mustLogin(loginOpts{})
	if r := again.do(tur, cmdOpts{}); r.status != 0 {
		t.Fatalf("new session: status %d", r.status)
	}

	// Panics in task management and in NexusLost are contained too.
	h.exec.tmfFn = func(scsi.TMF, uint64, uint32) scsi.TMFResponse { panic("tmf bug") }
	again.tolerant = true
	again.sendTMF(byte(scsi.LogicalUnitReset), 0, 0, 0, true)
	again.expectClosed()
	if n := h.srv.Panics(); n < 2 {
		t.Fatalf("Panics() = %d after a panicking task management function", n)
	}
	if r := good.do(tur, cmdOpts{}); r.status != 0 {
		t.Fatalf("good session after the second panic: status %d", r.status)
	}
}

// panicLost panics in NexusLost.
type panicLost struct{ *fakeExec }

func (panicLost) NexusLost(scsi.Nexus) { panic("nexus lost bug") }

func TestPanicInNexusLost(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.Executor = panicLost{newFakeExec()} })
	in := h.dial()
	in.mustLogin(loginOpts{})
	in.logout(logoutCloseSession)
	waitFor(t, func() bool { return h.srv.Panics() == 1 })
	in = h.dial()
	in.mustLogin(loginOpts{})
	if r := in.do(tur, cmdOpts{}); r.status != 0 {
		t.Fatalf("status %d", r.status)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached in 10s")
		}
		time.Sleep(time.Millisecond)
	}
}

func TestConnectionLimits(t *testing.T) {
	h := newHarness(t, func(c *Config) {
		c.MaxConnections = 8
		c.MaxConnectionsPerSource = 3
		c.MaxLogins = 4
		c.MaxLoginsPerSource = 2
	})
	// Two logins in progress from one source; a third is closed at once.
	a1, a2 := h.dialFrom("192.0.2.1"), h.dialFrom("192.0.2.1")
	a1.halfLogin()
	a2.halfLogin()
	if a3 := h.dialFrom("192.0.2.1"); !isClosedNow(a3) {
		t.Fatal("a third login in progress from one source was accepted")
	}
	// Another source logs in three times (a finished login no longer
	// counts as in progress); a fourth connection from it is refused.
	var bs []*initiator
	for i := range 3 {
		b := h.dialFrom("192.0.2.2")
		b.isid[5] = byte(10 + i)
		b.mustLogin(loginOpts{})
		bs = append(bs, b)
	}
	if b4 := h.dialFrom("192.0.2.2"); !isClosedNow(b4) {
		t.Fatal("a fourth connection from one source was accepted")
	}
	// Four logins in progress in all (a1, a2, c1, c2): a fifth, from a
	// source with none, pushes out the oldest login of the busiest
	// source (a1).
	c1, c2 := h.dialFrom("192.0.2.3"), h.dialFrom("192.0.2.4")
	c1.halfLogin()
	c2.halfLogin()
	c3 := h.dialFrom("192.0.2.5")
	if !isClosedNow(a1) {
		t.Fatal("a fifth login in progress did not push out the oldest of the busiest source")
	}
	if isClosedNow(c3) || isClosedNow(a2) {
		t.Fatal("a login in progress other than the oldest of the busiest source was dropped")
	}
	// Eight connections in all: with c3 gone, two more log in; a ninth
	// is refused.
	c3.nc.Close()
	waitFor(t, func() bool {
		h.srv.mu.Lock()
		defer h.srv.mu.Unlock()
		return h.srv.mu.nconns == 6
	})
	for i := range 2 {
		e := h.dialFrom("192.0.2.6")
		e.isid[5] = byte(20 + i)
		e.mustLogin(loginOpts{})
	}
	if e3 := h.dialFrom("192.0.2.7"); !isClosedNow(e3) {
		t.Fatal("a ninth connection was accepted")
	}
	if r := bs[0].do(tur, cmdOpts{}); r.status != 0 {
		t.Fatal("a logged-in session was harmed by the refusals")
	}
	if h.srv.Refused() != 3 {
		t.Errorf("Refused() = %d, want 3", h.srv.Refused())
	}
}

// TestLoginEviction: hosts at several addresses fill the logins in
// progress with half-done logins; a host at another address still logs
// in, pushing out the oldest login of the busiest address, and a host at
// an address as busy as the busiest is refused instead.
func TestLoginEviction(t *testing.T) {
	h := newHarness(t, func(c *Config) {
		c.MaxLogins = 6
		c.MaxLoginsPerSource = 3
	})
	var held []*initiator
	for _, ip := range []string{"192.0.2.1", "192.0.2.1", "192.0.2.2", "192.0.2.2", "192.0.2.2", "192.0.2.3"} {
		in := h.dialFrom(ip)
		in.halfLogin()
		held = append(held, in)
	}
	good := h.dialFrom("198.51.100.7")
	good.mustLogin(loginOpts{})
	if r := good.do(tur, cmdOpts{}); r.status != 0 {
		t.Fatalf("status %d", r.status)
	}
	// 192.0.2.2 had the most: its oldest (held[2]) made room.
	if !isClosedNow(held[2]) {
		t.Fatal("the oldest login in progress of the busiest source is still open")
	}
	h.srv.mu.Lock()
	counts := map[string]int{}
	for src, l := range h.srv.mu.logins {
		counts[src] = len(l)
	}
	h.srv.mu.Unlock()
	if want := map[string]int{"192.0.2.1": 2, "192.0.2.2": 2, "192.0.2.3": 1}; !maps.Equal(counts, want) {
		t.Fatalf("logins in progress by source: %v, want %v", counts, want)
	}
	// With one more from 192.0.2.3 every source holds two: one more
	// from 192.0.2.1 would not be pushing out a busier source's.
	h.dialFrom("192.0.2.3").halfLogin()
	if in := h.dialFrom("192.0.2.1"); !isClosedNow(in) {
		t.Fatal("a login from a source as busy as the busiest pushed another out")
	}
	if h.srv.Refused() != 1 {
		t.Errorf("Refused() = %d, want 1", h.srv.Refused())
	}
}

func TestLoginStartTimeout(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const loginTimeout = 8 * time.Second
		h := newHarness(t, func(c *Config) { c.LoginTimeout = loginTimeout })
		// Nothing sent: closed after the start timeout.
		idle := h.dial()
		start := time.Now()
		idle.expectClosed()
		if d := time.Since(start); d != DefaultLoginStartTimeout {
			t.Errorf("idle connection dropped after %v, want %v", d, DefaultLoginStartTimeout)
		}
		// Half a login PDU: the same.
		half := h.dial()
		start = time.Now()
		half.halfLogin()
		half.expectClosed()
		if d := time.Since(start); d != DefaultLoginStartTimeout {
			t.Errorf("half login dropped after %v, want %v", d, DefaultLoginStartTimeout)
		}
		// A first request, then nothing: the whole login's timeout.
		slow := h.dial()
		start = time.Now()
		if _, _, err := slow.loginExchange(stageSecurity, stageOperational, false, []kv{{"InitiatorName", slow.name}, {"TargetName", testTarget}, {"AuthMethod", "None"}}); err != nil {
			t.Fatal(err)
		}
		slow.expectClosed()
		if d := time.Since(start); d != loginTimeout {
			t.Errorf("stalled login dropped after %v, want %v", d, loginTimeout)
		}
		h.stop()
	})
}

// TestLoginDataLimit: during login a data segment may not exceed the
// login's MaxRecvDataSegmentLength of 8192, so a connection cannot make
// the target wait for (and hold a buffer for) a larger one.
func TestLoginDataLimit(t *testing.T) {
	h := newHarness(t, nil)
	in := h.dial()
	var hdr bhs
	hdr.setOpcode(opLoginReq, true)
	hdr[1] = flagTransit | stageSecurity<<2 | stageOperational
	hdr.setDataLen(loginMaxData + 4)
	if _, err := in.nc.Write(hdr[:]); err != nil {
		t.Fatal(err)
	}
	if !isClosedNow(in) {
		t.Fatal("a login PDU announcing more than 8192 bytes was not refused")
	}
}

// TestWriteMemoryFollowsData is finding 4: write commands announcing 64
// MiB each, with no data, must not make the target allocate 64 MiB each.
func TestWriteMemoryFollowsData(t *testing.T) {
	h := newHarness(t, nil)
	in := h.dial()
	in.mustLogin(loginOpts{keys: []kv{{"InitialR2T", "Yes"}, {"ImmediateData", "No"}}})
	var before runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	const cmds, size = 8, 64 << 20
	for i := range cmds {
		in.sendCommand(write16(uint64(i)*size/512, size/512), cmdOpts{write: true, edtl: size})
	}
	// Then ask something else, to know the commands were all read. The
	// first write is solicited (it alone holds data in its session), the
	// others wait for budget.
	itt := in.sendCommand(tur, cmdOpts{immediate: true})
	r2ts := 0
	for {
		r, _ := in.mustRecv()
		if r.opcode() == opR2T {
			r2ts++
			continue
		}
		if r.opcode() == opSCSIResp && r.itt() == itt {
			break
		}
		t.Fatalf("unexpected %s", r.opcode())
	}
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	if grew := int64(after.HeapAlloc) - int64(before.HeapAlloc); grew > 16<<20 {
		t.Fatalf("heap grew by %d MiB for %d commands without data", grew>>20, cmds)
	}
	if r2ts != 1 {
		t.Fatalf("%d R2Ts, want 1 (the other writes wait for budget)", r2ts)
	}
}

func write16(lba uint64, blocks uint32) []byte {
	cdb := make([]byte, 16)
	cdb[0] = 0x8a
	binary.BigEndian.PutUint64(cdb[2:], lba)
	binary.BigEndian.PutUint32(cdb[10:], blocks)
	return cdb
}

// r2tFor reads until an R2T arrives and returns it.
func (in *initiator) r2tFor() bhs {
	in.t.Helper()
	r, _ := in.until(func(h *bhs) bool { return h.opcode() == opR2T })
	return r
}

func TestWriteBudget(t *testing.T) {
	const burst = 64 << 10
	h := newHarness(t, func(c *Config) {
		c.MaxBurstLength = burst
		c.FirstBurstLength = burst
		c.MaxTransferLength = 1 << 20
		c.MaxWriteBytes = 1 << 20
		c.MaxSessionWriteBytes = 256 << 10
	})
	login := func(isid byte) *initiator {
		in := h.dial()
		in.isid[5] = isid
		in.mustLogin(loginOpts{keys: []kv{{"InitialR2T", "Yes"}, {"ImmediateData", "No"}, {"MaxBurstLength", "65536"}}})
		// A write the budget wrongly holds back fails the test instead
		// of hanging it.
		_ = in.nc.SetReadDeadline(time.Now().Add(20 * time.Second))
		return in
	}
	s := func(in *initiator) *session {
		for _, ss := range h.srv.allSessions() {
			if ss.tsih == in.tsih {
				return ss
			}
		}
		t.Fatal("no session")
		return nil
	}

	t.Run("session budget", func(t *testing.T) {
		in := login(1)
		// Three writes of 128 KiB: two fit the session's 256 KiB, the
		// third waits for one of them to finish.
		var itts []uint32
		for i := range 3 {
			itts = append(itts, in.sendCommand(write10(uint32(i)*256, 256), cmdOpts{write: true, edtl: 128 << 10}))
		}
		r1, r2 := in.r2tFor(), in.r2tFor()
		if r1.itt() != itts[0] || r2.itt() != itts[1] {
			t.Fatalf("R2Ts for 0x%x and 0x%x", r1.itt(), r2.itt())
		}
		if _, sess := h.srv.budget.usage(s(in)); sess != 256<<10 {
			t.Fatalf("session counts %d bytes, want %d", sess, 256<<10)
		}
		// Finish the first write: the third is solicited.
		data := pattern(128<<10, 1)
		in.sendDataOut(itts[0], cmdOpts{dataOut: data}, 0, burst, r1.ttt(), 0)
		var third bool
		for !third {
			h, _ := in.mustRecv()
			switch {
			case h.opcode() == opR2T && h.itt() == itts[0]:
				in.sendDataOut(itts[0], cmdOpts{dataOut: data}, burst, 2*burst, h.ttt(), 0)
			case h.opcode() == opR2T && h.itt() == itts[2]:
				third = true
			case h.opcode() == opSCSIResp && h.itt() == itts[0]:
			default:
				t.Fatalf("unexpected %s for 0x%x", h.opcode(), h.itt())
			}
		}
		in.logout(logoutCloseSession)
	})

	t.Run("one command larger than the session budget", func(t *testing.T) {
		in := login(2)
		data := pattern(1<<20, 2)
		if r := in.do(write10(0, 2048), cmdOpts{dataOut: data}); r.status != 0 {
			t.Fatalf("status %d", r.status)
		}
		if !bytes.Equal(h.exec.disk[:1<<20], data) {
			t.Fatal("data on disk differs")
		}
	})

	t.Run("fair share", func(t *testing.T) {
		// Four sessions hold the whole server budget and send no data.
		for i := range 4 {
			hog := login(byte(10 + i))
			hog.sendCommand(write10(0, 512), cmdOpts{write: true, edtl: 256 << 10})
			hog.r2tFor()
		}
		if used, _ := h.srv.budget.usage(nil); used != 1<<20 {
			t.Fatalf("server counts %d bytes, want %d", used, 1<<20)
		}
		// A fifth session still writes within its share (1 MiB / 5).
		in := login(20)
		data := pattern(128<<10, 5)
		if r := in.do(write10(4096, 256), cmdOpts{dataOut: data}); r.status != 0 {
			t.Fatalf("status %d", r.status)
		}
	})
}

// TestLoginRefusalsLookAlike is finding 8: an unknown target, an unknown
// or refused initiator and a CHAP host with a wrong secret get the same
// answers, step by step, so no login tells which names exist.
func TestLoginRefusalsLookAlike(t *testing.T) {
	h := newHarness(t, nil)
	h.backend.denied["iqn.2024-01.test.host:denied"] = true
	h.backend.chap["iqn.2024-01.test.host:chap"] = CHAP{User: "u", Secret: "0123456789abcdef"}
	type attempt struct{ initiator, target string }
	attempts := map[string]attempt{
		"unknown target":          {testInitiator, "iqn.2024-01.test.metro:nope"},
		"refused initiator":       {"iqn.2024-01.test.host:denied", testTarget},
		"CHAP host, wrong secret": {"iqn.2024-01.test.host:chap", testTarget},
	}
	// transcript logs in one way and returns what the target answered.
	transcript := func(a attempt, how string) []string {
		in := h.dial()
		in.name = a.initiator
		var out []string
		note := func(r bhs, keys map[string]string, err error) {
			st := binary.BigEndian.Uint16(r[36:38])
			s := "status " + string(rune('0'+st>>8)) + "/" + string(rune('0'+st&0xff))
			for _, k := range []string{"AuthMethod", "CHAP_A", "TargetPortalGroupTag"} {
				if v, ok := keys[k]; ok {
					s += " " + k + "=" + v
				}
			}
			if _, ok := keys["CHAP_C"]; ok {
				s += " CHAP_C"
			}
			out = append(out, s)
		}
		first := []kv{{"InitiatorName", a.initiator}, {"TargetName", a.target}}
		switch how {
		case "none":
			r, k, err := in.loginExchange(stageSecurity, stageOperational, true, append(first, kv{"AuthMethod", "None"}))
			note(r, k, err)
		case "skip":
			r, k, err := in.loginExchange(stageOperational, stageFullFeature, true, first)
			note(r, k, err)
		case "chap":
			r, k, err := in.loginExchange(stageSecurity, stageOperational, false, append(first, kv{"AuthMethod", "CHAP,None"}))
			note(r, k, err)
			if err != nil {
				return out
			}
			r, k, err = in.loginExchange(stageSecurity, stageOperational, false, []kv{{"CHAP_A", "5"}})
			note(r, k, err)
			if err != nil {
				return out
			}
			r, k, err = in.loginExchange(stageSecurity, stageOperational, true, []kv{{"CHAP_N", "u"}, {"CHAP_R", "0x00112233445566778899aabbccddeeff"}})
			note(r, k, err)
		}
		in.expectClosed()
		return out
	}
	for _, how := range []string{"none", "skip", "chap"} {
		var want []string
		var wantName string
		for name, a := range attempts {
			got := transcript(a, how)
			if want == nil {
				want, wantName = got, name
				continue
			}
			if len(got) != len(want) {
				t.Fatalf("%s login: %s got %q, %s got %q", how, name, got, wantName, want)
			}
			for i := range got {
				if got[i] != want[i] {
					t.Fatalf("%s login: %s got %q, %s got %q", how, name, got, wantName, want)
				}
			}
		}
		last := want[len(want)-1]
		if last[:10] != "status 2/1" {
			t.Errorf("%s login ends with %q, want status 0x0201", how, last)
		}
	}
}

// TestOddSequences sends PDU sequences at the edges of the data-out rules
// and checks that the target answers each as it should, never panics,
// and keeps the session usable.
func TestOddSequences(t *testing.T) {
	dataOut := func(in *initiator, itt, ttt, dsn, off uint32, final bool, data []byte) {
		var d bhs
		d.setOpcode(opDataOut, false)
		if final {
			d[1] = flagFinal
		}
		d.setITT(itt)
		d.setField20(ttt)
		d.setField36(dsn)
		d.setField40(off)
		in.mustSend(&d, data)
	}
	cmd := func(in *initiator, flags byte, edtl uint32, cdb []byte, imm []byte, immediate bool) uint32 {
		var c bhs
		c.setOpcode(opSCSICmd, immediate)
		c[1] = flags
		itt := in.nextITT()
		c.setITT(itt)
		c.setField20(edtl)
		c.setField24(in.cmdSN)
		if !immediate {
			in.cmdSN++
		}
		copy(c[32:], cdb)
		in.mustSend(&c, imm)
		return itt
	}
	unsol := []kv{{"InitialR2T", "No"}}
	cases := []struct {
		name string
		keys []kv
		run  func(t *testing.T, in *initiator)
	}{
		{"F=0 with all data immediate, then a Data-Out", unsol, func(t *testing.T, in *initiator) {
			itt := cmd(in, flagWrite, 512, write10(0, 1), make([]byte, 512), false)
			dataOut(in, itt, reservedTag, 0, 512, true, make([]byte, 512))
			if r, err := in.waitResult(itt, cmdOpts{}); err != nil || r.status != 0 {
				t.Fatalf("%v status %d", err, r.status)
			}
		}},
		{"zero-length Data-Out closing the unsolicited burst", unsol, func(t *testing.T, in *initiator) {
			itt := cmd(in, flagWrite, 1024, write10(0, 2), make([]byte, 512), false)
			dataOut(in, itt, reservedTag, 0, 512, true, nil)
			if r, err := in.waitResult(itt, cmdOpts{dataOut: make([]byte, 1024)}); err != nil || r.status != 0 || r.r2ts != 1 {
				t.Fatalf("%v status %d, %d R2Ts", err, r.status, r.r2ts)
			}
		}},
		{"Data-Out for an immediate command", unsol, func(t *testing.T, in *initiator) {
			itt := cmd(in, flagWrite, 1024, write10(0, 2), nil, true)
			dataOut(in, itt, reservedTag, 0, 0, true, make([]byte, 1024))
			if r, err := in.waitResult(itt, cmdOpts{}); err != nil || r.status != 0 {
				t.Fatalf("%v status %d", err, r.status)
			}
		}},
		{"bidirectional command", nil, func(t *testing.T, in *initiator) {
			itt := cmd(in, flagFinal|flagWrite|flagRead, 512, write10(0, 1), make([]byte, 512), false)
			if _, err := in.waitResult(itt, cmdOpts{}); err != nil {
				t.Fatal(err)
			}
		}},
		{"write of 0 bytes with F=1 and a stray Data-Out", nil, func(t *testing.T, in *initiator) {
			itt := cmd(in, flagFinal|flagWrite, 0, write10(0, 0), nil, false)
			if r, err := in.waitResult(itt, cmdOpts{}); err != nil || r.status != 0 {
				t.Fatalf("%v status %d", err, r.status)
			}
			dataOut(in, itt, reservedTag, 0, 0, true, make([]byte, 512))
		}},
		{"overflow far beyond the CDB", unsol, func(t *testing.T, in *initiator) {
			in.immediateData, in.initialR2T, in.firstBurst = true, false, 65536
			r := in.do(write10(0, 1), cmdOpts{dataOut: make([]byte, 300<<10)})
			if r.status != 0 || r.flags&flagUnderflw == 0 || r.residual != 300<<10-512 {
				t.Fatalf("status %d flags 0x%02x", r.status, r.flags)
			}
		}},
		{"abort while its data arrives", []kv{{"InitialR2T", "Yes"}, {"ImmediateData", "No"}}, func(t *testing.T, in *initiator) {
			sn := in.cmdSN
			itt := cmd(in, flagFinal|flagWrite, 8192, write10(0, 16), nil, false)
			r := in.r2tFor()
			dataOut(in, itt, r.ttt(), 0, 0, false, make([]byte, 4096))
			in.sendTMF(byte(scsi.AbortTask), 0, itt, sn, true)
			dataOut(in, itt, r.ttt(), 1, 4096, true, make([]byte, 4096))
			in.until(isTMFResp)
		}},
		{"logout while data is awaited", []kv{{"InitialR2T", "Yes"}, {"ImmediateData", "No"}}, func(t *testing.T, in *initiator) {
			itt := cmd(in, flagFinal|flagWrite, 8192, write10(0, 16), nil, false)
			r := in.r2tFor()
			dataOut(in, itt, r.ttt(), 0, 0, false, make([]byte, 4096))
			if resp := in.logout(logoutCloseSession); resp[2] != logoutOK {
				t.Fatalf("logout response %d", resp[2])
			}
		}},
		{"NOP-Out and Text with odd lengths", nil, func(t *testing.T, in *initiator) {
			for _, n := range []int{1, 3, 5, 4095, 8193} {
				var nop bhs
				nop.setOpcode(opNopOut, true)
				nop[1] = flagFinal
				nop.setITT(in.nextITT())
				nop.setField20(reservedTag)
				nop.setField24(in.cmdSN)
				in.mustSend(&nop, pattern(n, byte(n)))
				r, d := in.mustRecv()
				if r.opcode() != opNopIn || !bytes.Equal(d, pattern(n, byte(n))[:min(n, int(in.maxXmitRecv()))]) {
					t.Fatalf("NOP-Out of %d bytes: got %s with %d bytes", n, r.opcode(), len(d))
				}
			}
			if got, _ := in.text("SendTargets=All;X=y"); len(got) == 0 {
				t.Fatal("no text answer")
			}
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h := newHarness(t, nil)
			in := h.dial()
			in.mustLogin(loginOpts{keys: c.keys})
			c.run(t, in)
			if n := h.srv.Panics(); n != 0 {
				t.Fatalf("%d panics", n)
			}
			if c.name != "logout while data is awaited" {
				if r := in.do(tur, cmdOpts{}); r.status != 0 {
					t.Fatalf("session unusable: status %d", r.status)
				}
			}
		})
	}
}
