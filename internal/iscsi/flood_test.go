package iscsi

import (
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
