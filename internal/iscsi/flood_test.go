package iscsi

import (
	"bytes"
	"fmt"
	"runtime"
	"testing"
	"testing/synctest"
	"time"

	"github.com/metro-storage/metro/internal/scsi"
)

// Tests of floods from hosts that send and do not read, or hold what
// they were given: the target's memory stays bounded and the host that
// does it is the one that waits.

// heapInUse returns the live heap after a collection.
func heapInUse() int64 {
	var m runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&m)
	return int64(m.HeapAlloc)
}

// nopPing is a NOP-Out ping (immediate, so it needs no command slot)
// carrying data the target echoes.
func nopPing(itt uint32) bhs {
	var nop bhs
	nop.setOpcode(opNopOut, true)
	nop[1] = flagFinal
	nop.setITT(itt)
	nop.setField20(reservedTag)
	return nop
}

// TestOutputBackpressure: a host sends 2000 pings of 8 KiB and reads no
// answer. The target stops reading from it once its answers pile up, so
// its memory does not grow with the pings; the host is dropped when its
// answers stay unread for NopTimeout; another session works meanwhile.
func TestOutputBackpressure(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newHarness(t, nil)
		good := h.dial()
		good.isid[5] = 9
		good.mustLogin(loginOpts{})
		in := h.dial()
		in.mustLogin(loginOpts{})
		base := heapInUse()

		const pings, size = 2000, 8 << 10
		data := pattern(size, 1)
		sent := 0
		var sendErr error
		done := make(chan struct{})
		go func() {
			defer close(done)
			for i := range pings {
				nop := nopPing(uint32(i + 1))
				nop.setField24(in.cmdSN)
				if sendErr = in.send(&nop, data); sendErr != nil {
					return
				}
				sent++
			}
		}()
		synctest.Wait()
		grew := heapInUse() - base
		t.Logf("the target took %d pings of %d, heap grew by %d KiB", sent, pings, grew>>10)
		if grew > 4<<20 {
			t.Fatalf("heap grew by %d MiB for pings whose answers are not read", grew>>20)
		}
		if r := good.do(tur, cmdOpts{}); r.status != 0 {
			t.Fatalf("the other session: status %d", r.status)
		}
		// The answers stay unread: the connection is dropped at the
		// write deadline.
		time.Sleep(DefaultNopTimeout)
		<-done
		if sendErr == nil {
			t.Fatalf("all %d pings were taken from a host that reads nothing", sent)
		}
		if r := good.do(tur, cmdOpts{}); r.status != 0 {
			t.Fatalf("the other session: status %d", r.status)
		}
	})
}

// TestReadBudget: a host queues 32 reads of 1 MiB and does not read the
// data. The target runs its reads only as far as the read budget allows,
// so its memory does not grow with them; once the host reads, every read
// completes with the right data; another session reads meanwhile. The
// same with reads that expect 512 bytes of the MiB their CDB reads (the
// Executor still reads, and the Data-In keeps, all of it).
func TestReadBudget(t *testing.T) {
	const size, reads = 1 << 20, 32
	for _, edtl := range []uint32{size, 512} {
		t.Run(fmt.Sprintf("expected length %d", edtl), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) { testReadBudget(t, size, reads, edtl) })
		})
	}
}

func testReadBudget(t *testing.T, size, reads int, edtl uint32) {
	h := newHarness(t, func(c *Config) {
		c.MaxTransferLength = uint32(size)
		c.MaxReadBytes = int64(2 * size)
		c.MaxSessionReadBytes = int64(size)
	})
	copy(h.exec.disk, pattern(len(h.exec.disk), 4))
	good := h.dial()
	good.isid[5] = 9
	good.mustLogin(loginOpts{})
	in := h.dial()
	in.mustLogin(loginOpts{})
	base := heapInUse()

	var itts []uint32
	for i := range reads {
		lba := uint32(i%4) * uint32(size/512)
		itts = append(itts, in.sendCommand(read10(lba, uint16(size/512)), cmdOpts{read: true, edtl: edtl}))
	}
	synctest.Wait()
	grew := heapInUse() - base
	t.Logf("%d reads of 1 MiB not read by the host: heap grew by %d KiB", reads, grew>>10)
	if grew > 8<<20 {
		t.Fatalf("heap grew by %d MiB for reads whose data is not read", grew>>20)
	}
	if r := good.do(read10(0, 8), cmdOpts{read: true, edtl: 4096}); r.status != 0 || !bytes.Equal(r.data, h.exec.disk[:4096]) {
		t.Fatalf("the other session's read: status %d", r.status)
	}
	// The host reads: every read completes, in order of arrival.
	for i, itt := range itts {
		r, err := in.waitResult(itt, cmdOpts{})
		lba := (i % 4) * size
		if err != nil || r.status != 0 || !bytes.Equal(r.data, h.exec.disk[lba:lba+int(edtl)]) {
			t.Fatalf("read %d: %v, status %d, %d bytes", i, err, r.status, len(r.data))
		}
	}
	synctest.Wait() // the writer is done with the last PDU
	if all, _ := h.srv.reads.usage(nil); all != 0 {
		t.Fatalf("%d bytes still counted in the read budget after every read completed", all)
	}
}

// TestUnsolicitedBudget: eight hosts each send 128 writes of 1 MiB with
// 64 KiB of immediate data, and send no more. The write budget admits
// the immediate data of a few; the others are answered TASK SET FULL
// with their data dropped, so the target's memory does not grow with the
// command windows; a session over its budget gets no new command slots
// until its admitted write is done.
func TestUnsolicitedBudget(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const burst, size, cmds = 64 << 10, 1 << 20, 128
		h := newHarness(t, func(c *Config) {
			c.MaxTransferLength = size
			c.MaxWriteBytes = size
			c.MaxSessionWriteBytes = 256 << 10
		})
		keys := []kv{{"InitialR2T", "Yes"}, {"ImmediateData", "Yes"}, {"FirstBurstLength", "65536"}}
		var ins []*initiator
		for i := range 8 {
			in := h.dial()
			in.isid[5] = byte(i + 1)
			in.mustLogin(loginOpts{keys: keys})
			ins = append(ins, in)
		}
		base := heapInUse()
		full := pattern(size, 7)
		var first uint32
		for i, in := range ins {
			for c := range cmds {
				itt := in.sendCommand(write10(0, size/512), cmdOpts{dataOut: full[:burst], edtl: size})
				if i == 0 && c == 0 {
					first = itt
				}
			}
		}
		synctest.Wait()
		grew := heapInUse() - base
		t.Logf("%d sessions sent %d writes with 64 KiB of immediate data: heap grew by %d KiB", len(ins), cmds, grew>>10)
		if grew > 8<<20 {
			t.Fatalf("heap grew by %d MiB for immediate data of writes that wait for budget", grew>>20)
		}

		// The first session: its first write is solicited, the others
		// refused; its window stays where it was.
		in := ins[0]
		maxSN := in.lastMaxCmdSN
		var r2t bhs
		refused := 0
		for range cmds {
			r, _ := in.mustRecv()
			switch {
			case r.opcode() == opR2T && r.itt() == first:
				r2t = r
			case r.opcode() == opSCSIResp && scsi.Status(r[3]) == scsi.StatusTaskSetFull:
				refused++
			default:
				t.Fatalf("unexpected %s status 0x%02x for 0x%x", r.opcode(), r[3], r.itt())
			}
		}
		if refused != cmds-1 || r2t.opcode() != opR2T {
			t.Fatalf("%d TASK SET FULL and R2T %v, want %d and an R2T", refused, r2t.opcode() == opR2T, cmds-1)
		}
		if in.lastMaxCmdSN != maxSN {
			t.Fatalf("MaxCmdSN moved from %d to %d while the session was over its write budget", maxSN, in.lastMaxCmdSN)
		}
		// The admitted write completes: the slots open again.
		o := cmdOpts{dataOut: full}
		in.sendDataOut(first, o, r2t.field40(), r2t.field40()+r2t.field44(), r2t.ttt(), 0)
		if r, err := in.waitResult(first, o); err != nil || r.status != 0 {
			t.Fatalf("the admitted write: %v, status %d", err, r.status)
		}
		if in.lastMaxCmdSN != maxSN+cmds {
			t.Fatalf("MaxCmdSN %d once the session's write is done, want %d", in.lastMaxCmdSN, maxSN+cmds)
		}
		if !bytes.Equal(h.exec.disk[:size], full) {
			t.Fatal("the admitted write's data differs on disk")
		}
	})
}

// TestDataOutTimeout: a host is granted the whole write budget (an R2T)
// and sends nothing. Its write is terminated after DataOutTimeout, with
// INITIATOR RESPONSE TIMEOUT, and the write of another host that waited
// for the budget goes through.
func TestDataOutTimeout(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const size = 1 << 20
		h := newHarness(t, func(c *Config) {
			c.MaxTransferLength = size
			c.MaxWriteBytes = size
			c.MaxSessionWriteBytes = size
		})
		keys := []kv{{"InitialR2T", "Yes"}, {"ImmediateData", "No"}}
		silent := h.dial()
		silent.isid[5] = 1
		silent.mustLogin(loginOpts{keys: keys})
		good := h.dial()
		good.isid[5] = 2
		good.mustLogin(loginOpts{keys: keys})

		held := silent.sendCommand(write10(0, size/512), cmdOpts{write: true, edtl: size})
		silent.r2tFor()
		start := time.Now()
		data := pattern(size, 3)
		_ = good.nc.SetReadDeadline(start.Add(3 * DefaultDataOutTimeout))
		itt := good.sendCommand(write10(2048, size/512), cmdOpts{write: true, edtl: size})
		if r, err := good.waitResult(itt, cmdOpts{dataOut: data}); err != nil || r.status != 0 {
			t.Fatalf("the write waiting for the silent host's budget: %v, status %d", err, r.status)
		}
		if d := time.Since(start); d < DefaultDataOutTimeout || d > DefaultDataOutTimeout*5/4 {
			t.Errorf("the waiting write went through after %v, want between %v and %v", d, DefaultDataOutTimeout, DefaultDataOutTimeout*5/4)
		}
		if !bytes.Equal(h.exec.disk[size:2*size], data) {
			t.Fatal("data on disk differs")
		}
		r, err := silent.waitResult(held, cmdOpts{})
		if err != nil || r.status != scsi.StatusCheckCondition || len(r.sense) < 14 ||
			r.sense[2]&0x0f != byte(scsi.KeyAbortedCommand) || r.sense[12] != 0x4b || r.sense[13] != 0x06 {
			t.Fatalf("the silent host's write: %v, status %d, sense % x", err, r.status, r.sense)
		}
		// Its late data is dropped; the session goes on.
		silent.sendDataOut(held, cmdOpts{dataOut: make([]byte, 4096)}, 0, 4096, 0x1234, 0)
		if r := silent.do(tur, cmdOpts{}); r.status != 0 {
			t.Fatalf("the silent host's session: status %d", r.status)
		}
	})
}
