package iscsi

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/metro-storage/metro/internal/pipenet"
	"github.com/metro-storage/metro/internal/scsi"
)

// sendTMF sends a Task Management Function Request.
func (in *initiator) sendTMF(fn byte, lun uint64, ref, refCmdSN uint32, immediate bool) uint32 {
	in.t.Helper()
	var h bhs
	h.setOpcode(opTMFReq, immediate)
	h[1] = flagFinal | fn
	h.setLUNRaw(encodeLUN(lun))
	itt := in.nextITT()
	h.setITT(itt)
	h.setField20(ref)
	h.setField24(in.cmdSN)
	if !immediate {
		in.cmdSN++
	}
	h.setField28(in.expStatSN)
	h.setField32(refCmdSN)
	in.mustSend(&h, nil)
	return itt
}

// until reads PDUs until one matches, returning it and what came before.
func (in *initiator) until(match func(*bhs) bool) (bhs, []bhs) {
	in.t.Helper()
	var before []bhs
	for {
		h, _ := in.mustRecv()
		if match(&h) {
			return h, before
		}
		before = append(before, h)
	}
}

func isTMFResp(h *bhs) bool { return h.opcode() == opTMFResp }

func TestAbortTaskWaitingForData(t *testing.T) {
	h := newHarness(t, nil)
	in := h.dial()
	in.mustLogin(loginOpts{keys: []kv{{"InitialR2T", "Yes"}, {"ImmediateData", "No"}}})
	sn := in.cmdSN
	itt := in.sendCommand(write10(0, 8), cmdOpts{dataOut: make([]byte, 4096)})
	r, _ := in.mustRecv()
	if r.opcode() != opR2T {
		t.Fatalf("got %s, want R2T", r.opcode())
	}
	in.sendTMF(byte(scsi.AbortTask), 0, itt, sn, true)
	resp, before := in.until(isTMFResp)
	if resp[2] != byte(scsi.TMFComplete) || len(before) != 0 {
		t.Fatalf("TMF response %d after %d PDUs", resp[2], len(before))
	}
	// Data for the aborted task is discarded.
	in.sendDataOut(itt, cmdOpts{dataOut: make([]byte, 4096)}, 0, 4096, r.ttt(), 1)
	if res := in.do(tur, cmdOpts{}); res.status != 0 {
		t.Fatal("session broken after abort")
	}
	for _, c := range h.exec.commands() {
		if c.CDB[0] == 0x2a {
			t.Fatal("aborted write reached the executor")
		}
	}
	if len(h.exec.tmfs) != 0 {
		t.Errorf("executor asked about a task it never had: %+v", h.exec.tmfs)
	}
}

func TestAbortTaskRunning(t *testing.T) {
	h := newHarness(t, nil)
	started := make(chan struct{})
	abort := make(chan struct{})
	h.exec.setHook(func(ctx context.Context, cmd *scsi.Command) *scsi.Result {
		if cmd.CDB[0] == 0x2a {
			close(started)
			<-abort
			return &scsi.Result{Aborted: true}
		}
		return nil
	})
	h.exec.tmfFn = func(fn scsi.TMF, lun uint64, tag uint32) scsi.TMFResponse {
		close(abort)
		return scsi.TMFComplete
	}
	in := h.dial()
	in.mustLogin(loginOpts{})
	sn := in.cmdSN
	itt := in.sendCommand(write10(0, 8), cmdOpts{dataOut: make([]byte, 4096)})
	<-started
	in.sendTMF(byte(scsi.AbortTask), 0, itt, sn, true)
	resp, before := in.until(isTMFResp)
	if resp[2] != byte(scsi.TMFComplete) || len(before) != 0 {
		t.Fatalf("TMF response %d after %v", resp[2], before)
	}
	if res := in.do(tur, cmdOpts{}); res.status != 0 {
		t.Fatal("session broken after abort")
	}
	if len(h.exec.tmfs) != 1 || h.exec.tmfs[0].fn != scsi.AbortTask || h.exec.tmfs[0].tag != itt {
		t.Fatalf("executor TMF calls %+v", h.exec.tmfs)
	}
}

func TestAbortTaskCompletedFirst(t *testing.T) {
	// The executor finished the task before the abort took effect: the
	// response goes out and the abort answers "task does not exist".
	h := newHarness(t, nil)
	started := make(chan struct{})
	finish := make(chan struct{})
	h.exec.setHook(func(ctx context.Context, cmd *scsi.Command) *scsi.Result {
		if cmd.CDB[0] == 0x2a {
			close(started)
			<-finish
		}
		return nil
	})
	h.exec.tmfFn = func(fn scsi.TMF, lun uint64, tag uint32) scsi.TMFResponse {
		close(finish)
		return scsi.TMFTaskNotFound
	}
	in := h.dial()
	in.mustLogin(loginOpts{})
	sn := in.cmdSN
	itt := in.sendCommand(write10(0, 8), cmdOpts{dataOut: make([]byte, 4096)})
	<-started
	in.sendTMF(byte(scsi.AbortTask), 0, itt, sn, true)
	resp, before := in.until(isTMFResp)
	if resp[2] != byte(scsi.TMFTaskNotFound) || len(before) != 1 || before[0].opcode() != opSCSIResp {
		t.Fatalf("TMF response %d after %d PDUs", resp[2], len(before))
	}
}

func TestAbortTaskNeverReceived(t *testing.T) {
	h := newHarness(t, nil)
	in := h.dial()
	in.mustLogin(loginOpts{})
	// RefCmdSN is ExpCmdSN: the command never arrived; it counts as
	// received and the window moves past it.
	sn := in.cmdSN
	in.cmdSN++
	in.sendTMF(byte(scsi.AbortTask), 0, 0xabc, sn, true)
	resp, _ := in.until(isTMFResp)
	if resp[2] != byte(scsi.TMFComplete) {
		t.Fatalf("TMF response %d", resp[2])
	}
	if res := in.do(tur, cmdOpts{}); res.status != 0 {
		t.Fatal("command after the skipped CmdSN failed")
	}
	// A RefCmdSN below the window: the task does not exist.
	in.sendTMF(byte(scsi.AbortTask), 0, 0xabd, sn, true)
	resp, _ = in.until(isTMFResp)
	if resp[2] != byte(scsi.TMFTaskNotFound) {
		t.Fatalf("TMF response %d", resp[2])
	}
	// A RefCmdSN ahead of ExpCmdSN that never arrived fills its slot when
	// ExpCmdSN reaches it.
	x := in.cmdSN
	in.cmdSN = x + 2 // the immediate TMF carries the next CmdSN
	in.sendTMF(byte(scsi.AbortTask), 0, 0xabe, x+1, true)
	resp, _ = in.until(isTMFResp)
	if resp[2] != byte(scsi.TMFComplete) {
		t.Fatalf("TMF response %d", resp[2])
	}
	in.cmdSN = x
	if res := in.do(tur, cmdOpts{}); res.status != 0 {
		t.Fatal("command before the skipped slot failed")
	}
	in.cmdSN = x + 2
	if res := in.do(tur, cmdOpts{}); res.status != 0 || in.lastExpCmdSN != x+3 {
		t.Fatalf("command after the skipped slot: status %d ExpCmdSN %d want %d", res.status, in.lastExpCmdSN, x+3)
	}
}

func TestTaskSetTMFs(t *testing.T) {
	for _, fn := range []scsi.TMF{scsi.AbortTaskSet, scsi.ClearTaskSet, scsi.LogicalUnitReset, scsi.TargetWarmReset} {
		t.Run(fmt.Sprint("tmf", uint8(fn)), func(t *testing.T) {
			h := newHarness(t, nil)
			var once sync.Once
			started := make(chan struct{})
			abort := make(chan struct{})
			h.exec.setHook(func(ctx context.Context, cmd *scsi.Command) *scsi.Result {
				first := false
				once.Do(func() { first = true })
				if cmd.CDB[0] == 0x00 && first {
					close(started)
					<-abort
					return &scsi.Result{Aborted: true}
				}
				return nil
			})
			h.exec.tmfFn = func(scsi.TMF, uint64, uint32) scsi.TMFResponse {
				close(abort)
				return scsi.TMFComplete
			}
			in := h.dial()
			in.mustLogin(loginOpts{keys: []kv{{"InitialR2T", "Yes"}, {"ImmediateData", "No"}}})
			in.sendCommand(tur, cmdOpts{})
			<-started
			in.sendCommand(write10(0, 1), cmdOpts{dataOut: make([]byte, 512)}) // waits for data
			if r, _ := in.mustRecv(); r.opcode() != opR2T {
				t.Fatalf("got %s", r.opcode())
			}
			in.sendTMF(byte(fn), 0, reservedTag, 0, true)
			resp, before := in.until(isTMFResp)
			if resp[2] != byte(scsi.TMFComplete) || len(before) != 0 {
				t.Fatalf("response %d after %d PDUs", resp[2], len(before))
			}
			if res := in.do(tur, cmdOpts{}); res.status != 0 {
				t.Fatal("session broken")
			}
			c := h.exec.tmfs[0]
			if c.fn != fn || c.lun != 0 || c.nexus.InitiatorName != testInitiator {
				t.Errorf("executor call %+v", c)
			}
		})
	}
}

func TestTMFUnsupported(t *testing.T) {
	h := newHarness(t, nil)
	in := h.dial()
	in.mustLogin(loginOpts{})
	for fn, want := range map[byte]scsi.TMFResponse{
		byte(scsi.ClearACA): scsi.TMFNotSupported,
		tmfTaskReassign:     scsi.TMFReassignUnsupported,
		42:                  scsi.TMFRejected,
	} {
		in.sendTMF(fn, 0, reservedTag, 0, true)
		resp, _ := in.until(isTMFResp)
		if resp[2] != byte(want) {
			t.Errorf("function %d: response %d, want %d", fn, resp[2], want)
		}
	}
}

func TestTargetColdReset(t *testing.T) {
	// The cold reset ends the caller's session only (see taskSetTMF).
	h := newHarness(t, nil)
	other := h.dial()
	other.isid[5] = 0x21
	other.mustLogin(loginOpts{})
	in := h.dial()
	in.mustLogin(loginOpts{})
	in.sendTMF(byte(scsi.TargetColdReset), 0, reservedTag, 0, true)
	resp, _ := in.until(isTMFResp)
	if resp[2] != byte(scsi.TMFComplete) {
		t.Fatalf("response %d", resp[2])
	}
	in.expectClosed()
	if res := other.do(tur, cmdOpts{}); res.status != 0 {
		t.Fatalf("the other session after a cold reset: status %d", res.status)
	}
}

func TestTargetNopPing(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newHarness(t, func(c *Config) {
			c.NopInterval = time.Second
			c.NopTimeout = 5 * time.Second
		})
		in := h.dial()
		in.mustLogin(loginOpts{})
		start := time.Now()
		r, _ := in.mustRecv()
		if r.opcode() != opNopIn || r.itt() != reservedTag || r.ttt() == reservedTag {
			t.Fatalf("got %s itt 0x%x ttt 0x%x", r.opcode(), r.itt(), r.ttt())
		}
		if d := time.Since(start); d < time.Second || d > 2*time.Second {
			t.Errorf("first ping after %v", d)
		}
		in.answerNop(&r)
		// Idle again: another ping; this one goes unanswered.
		r, _ = in.mustRecv()
		if r.opcode() != opNopIn {
			t.Fatalf("got %s", r.opcode())
		}
		pinged := time.Now()
		in.expectClosed()
		if d := time.Since(pinged); d < 5*time.Second || d > 7*time.Second {
			t.Errorf("dropped %v after the unanswered ping", d)
		}
		h.stop()
	})
}

func TestServerCloseNoLeaks(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		exec := newFakeExec()
		release := make(chan struct{})
		exec.setHook(func(ctx context.Context, cmd *scsi.Command) *scsi.Result {
			select {
			case <-release:
			case <-ctx.Done():
			}
			return &scsi.Result{Status: scsi.StatusGood}
		})
		srv := NewServer(Config{Backend: newFakeBackend(), Executor: exec, Logger: testLogger(t)})
		l := pipenet.Listen("pipe:3260")
		done := make(chan error, 1)
		go func() { done <- srv.Serve(context.Background(), l) }()
		var ins []*initiator
		for i := range 3 {
			nc, err := l.Dial(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			in := newInitiator(t, nc)
			in.isid[5] = byte(i)
			in.mustLogin(loginOpts{})
			in.sendCommand(tur, cmdOpts{}) // stuck in the executor
			ins = append(ins, in)
		}
		// A connection that never logs in.
		if _, err := l.Dial(context.Background()); err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		if n := len(srv.Sessions()); n != 3 {
			t.Fatalf("%d sessions", n)
		}
		srv.Close()
		if err := <-done; err != ErrServerClosed {
			t.Fatalf("Serve returned %v", err)
		}
		for _, in := range ins {
			in.expectClosed()
		}
		if n := exec.lostCount(); n != 3 {
			t.Errorf("NexusLost %d times", n)
		}
		if err := srv.Serve(context.Background(), pipenet.Listen("pipe:3260")); err != ErrServerClosed {
			t.Errorf("Serve after Close: %v", err)
		}
		close(release)
	})
}

func TestLoginTimeout(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newHarness(t, func(c *Config) { c.LoginTimeout = 3 * time.Second })
		in := h.dial()
		start := time.Now()
		in.expectClosed()
		if d := time.Since(start); d != 3*time.Second {
			t.Errorf("idle login dropped after %v", d)
		}
		h.stop()
	})
}

func TestServeContextCancel(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		srv := NewServer(Config{Backend: newFakeBackend(), Executor: newFakeExec()})
		l := pipenet.Listen("pipe:3260")
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- srv.Serve(ctx, l) }()
		nc, _ := l.Dial(context.Background())
		in := newInitiator(t, nc)
		in.mustLogin(loginOpts{})
		cancel()
		if err := <-done; err != context.Canceled {
			t.Fatalf("Serve returned %v", err)
		}
		in.expectClosed()
	})
}

func TestLogoutAnswersAfterTMF(t *testing.T) {
	// A logout received while a task management function is still with
	// the executor is answered after it: the TMF response is not lost to
	// the connection's close.
	h := newHarness(t, nil)
	release := make(chan struct{})
	var once sync.Once
	unblock := func() { once.Do(func() { close(release) }) }
	t.Cleanup(unblock) // before the harness stops (cleanups run last first)
	h.exec.tmfFn = func(scsi.TMF, uint64, uint32) scsi.TMFResponse {
		<-release
		return scsi.TMFComplete
	}
	in := h.dial()
	in.mustLogin(loginOpts{})
	tmf := in.sendTMF(byte(scsi.LogicalUnitReset), 0, reservedTag, 0, true)
	var lo bhs
	lo.setOpcode(opLogoutReq, true)
	lo[1] = flagFinal
	lo.setITT(in.nextITT())
	lo.setField24(in.cmdSN)
	in.mustSend(&lo, nil)
	ping := in.nextITT()
	in.sendNop(ping, nil, true, in.cmdSN)
	// The ping's answer shows the logout was read; nothing may answer
	// the logout before the TMF.
	if r, _ := in.until(func(h *bhs) bool { return h.opcode() == opNopIn || h.opcode() == opLogoutResp }); r.opcode() != opNopIn {
		t.Fatalf("got %s before the answer to the ping and to the TMF", r.opcode())
	}
	unblock()
	r, _ := in.mustRecv()
	if r.opcode() != opTMFResp || r.itt() != tmf {
		t.Fatalf("got %s (ITT 0x%x), want the TMF response", r.opcode(), r.itt())
	}
	if r, _ := in.mustRecv(); r.opcode() != opLogoutResp {
		t.Fatalf("got %s, want the Logout Response", r.opcode())
	}
	in.expectClosed()
}
