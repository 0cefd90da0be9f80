package e2e

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/metro-storage/metro/internal/initiator"
)

// TestHostileOutputFlood: 32 sessions each send 2000 NOP-Out pings of
// 8 KiB, which the target must echo, and never read the echoes. The
// target stops reading from a host whose answers pile up, so the array's
// memory does not grow with the pings (each session would otherwise queue
// 16 MiB of echoes), and the good host writes and verifies meanwhile.
//
// Measured on the 2-core development machine: the binary of main at
// 301ac8c read all 64000 pings and peaked at 441 MiB resident (the good
// host verified 339 writes meanwhile); with the output bound the hosts'
// writes stalled after about 1400 pings each (in the kernel's socket
// buffers) and the array peaked at 135 MiB, most of it the garbage of the
// echoes it did answer (4935 writes verified).
func TestHostileOutputFlood(t *testing.T) {
	_, a := hostileLab(t)
	_, base := procMemory(t, a.PID)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	const sessions, pings, size = 32, 2000, 8 << 10
	stop := make(chan struct{})
	good := startGoodHost(t, a.Portal, a.Target, stop)
	var (
		wg        sync.WaitGroup
		conns     []*initiator.Conn
		loginFail atomic.Int64
		sent      atomic.Int64
	)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	// The sessions log in one after the other (logins in progress from
	// one address are limited), then all flood at once.
	for range sessions {
		c, err := initiator.Dial(ctx, a.Portal, initiator.Options{InitiatorName: hostileInitiator, TargetName: a.Target,
			LocalAddr: "127.0.0.4", Timeout: 10 * time.Second})
		if err != nil {
			loginFail.Add(1)
			continue
		}
		conns = append(conns, c)
	}
	payload := make([]byte, size)
	for i, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			nc := c.RawConn()
			// Writes stop once the target stops reading and the
			// socket buffers are full: give up then.
			_ = nc.SetWriteDeadline(time.Now().Add(5 * time.Second))
			for p := range pings {
				ping := bhs(0x00|0x40, 0x80, size, uint32(i<<16|p), 0xffffffff) // immediate NOP-Out ping
				if _, err := nc.Write(append(ping, payload...)); err != nil {
					return
				}
				sent.Add(1)
			}
		}()
	}
	wg.Wait()
	time.Sleep(time.Second)
	rss, hwm := procMemory(t, a.PID)
	good.finish(t, stop, 10)
	t.Logf("%d sessions sent %d pings of 8 KiB (%d MiB) without reading; %d logins failed; array resident %d MiB (peak %d MiB, %d MiB before the attack)",
		sessions, sent.Load(), sent.Load()*size>>20, loginFail.Load(), rss>>20, hwm>>20, base>>20)
	alive(t, a.PID)
	if loginFail.Load() > 0 {
		t.Fatalf("%d hostile logins failed: the attack did not run in full", loginFail.Load())
	}
	if hwm > rssBound {
		t.Fatalf("the array's resident memory peaked at %d MiB under unread pings, over the %d MiB bound", hwm>>20, rssBound>>20)
	}
}
