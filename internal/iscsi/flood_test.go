package iscsi

import (
	"bytes"
	"runtime"
	"testing"
	"testing/synctest"
	"time"
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
// completes with the right data; another session reads meanwhile.
func TestReadBudget(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const size, reads = 1 << 20, 32
		h := newHarness(t, func(c *Config) {
			c.MaxTransferLength = size
			c.MaxReadBytes = 2 * size
			c.MaxSessionReadBytes = size
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
			lba := uint32(i%4) * (size / 512)
			itts = append(itts, in.sendCommand(read10(lba, size/512), cmdOpts{read: true, edtl: size}))
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
			if err != nil || r.status != 0 || !bytes.Equal(r.data, h.exec.disk[lba:lba+size]) {
				t.Fatalf("read %d: %v, status %d, %d bytes", i, err, r.status, len(r.data))
			}
		}
		synctest.Wait() // the writer is done with the last PDU
		if all, _ := h.srv.reads.usage(nil); all != 0 {
			t.Fatalf("%d bytes still counted in the read budget after every read completed", all)
		}
	})
}
