package e2e

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/metro-storage/metro/internal/initiator"
	"github.com/metro-storage/metro/internal/lab"
)

const (
	hostileGood = "iqn.2026-12.io.metro:e2e-good"
	hostileBad  = "iqn.2026-12.io.metro:e2e-bad"
)

// TestHostileHost runs a well-behaved host and a hostile one against both
// arrays of a stretched pair at once. The good host writes known patterns
// through each array and reads every write back through the other; the
// hostile host, which sees a volume of its own at the same LUN number,
// sends the two-PDU crash sequence, every task management function,
// malformed and random PDUs, half-sent logins, floods of large writes
// whose data never comes and pings it never reads the answers to. The
// good host must see no error and no lost or torn write, both arrays must
// stay up, and the copies must be identical at the end.
func TestHostileHost(t *testing.T) {
	l := startLab(t, lab.Options{Initiators: []string{hostileGood}, Size: 32 << 20})
	cliOn(t, l, 0, "vol", "create", "--size", "16M", "pod1::hostile")
	cliOn(t, l, 0, "host", "create", "--iqn", hostileBad, "h-bad")
	cliOn(t, l, 0, "host", "connect", "--vol", "pod1::hostile", "h-bad")
	for i := range l.Info.Arrays {
		waitLUN(t, l, i, hostileBad)
	}

	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// The good host: one writer per array, each verifying through the
	// other array.
	var wg sync.WaitGroup
	var goodOps [2]int
	goodErr := make(chan error, 2)
	for i := range 2 {
		w := dialArray(t, l, i, hostileGood)
		r := dialArray(t, l, 1-i, hostileGood)
		defer w.Close()
		defer r.Close()
		wg.Add(1)
		go func() {
			defer wg.Done()
			n, err := verifiedWrites(ctx, w, r, uint64(i)*4096, 4096, rand.New(rand.NewPCG(seed, uint64(i))))
			goodOps[i] = n
			if err != nil {
				goodErr <- fmt.Errorf("good host writing through %s: %w", l.Info.Arrays[i].Name, err)
			}
		}()
	}

	// The hostile host, against both arrays.
	attacks := hostileAttacks()
	var counts, reached [len(hostileAttackNames)]atomic.Int64
	for i, a := range l.Info.Arrays {
		for k := range 2 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				rng := rand.New(rand.NewPCG(seed, uint64(100+i*10+k)))
				for ctx.Err() == nil {
					j := rng.IntN(len(attacks))
					actx, acancel := context.WithTimeout(ctx, 5*time.Second)
					if attacks[j](actx, a.Portal, a.Target, rng) {
						reached[j].Add(1)
					}
					acancel()
					counts[j].Add(1)
				}
			}()
		}
	}
	wg.Wait()
	close(goodErr)
	for err := range goodErr {
		t.Error(err)
	}
	for i, name := range hostileAttackNames {
		t.Logf("attack %-22s %d times, %d reached the target", name, counts[i].Load(), reached[i].Load())
		if reached[i].Load() < 3 {
			t.Errorf("attack %s reached the target only %d times: the test did not do what it claims", name, reached[i].Load())
		}
	}
	t.Logf("good host: %d and %d verified writes through array-a and array-b", goodOps[0], goodOps[1])
	for i, n := range goodOps {
		if n < 100 {
			t.Errorf("good host completed only %d verified writes through %s", n, l.Info.Arrays[i].Name)
		}
	}
	for _, a := range l.Info.Arrays {
		if err := syscall.Kill(a.PID, 0); err != nil {
			t.Fatalf("%s (pid %d) is gone: %v", a.Name, a.PID, err)
		}
		_, hwm := procMemory(t, a.PID)
		t.Logf("%s: peak resident memory %d MiB", a.Name, hwm>>20)
	}
	if t.Failed() {
		return
	}
	compareCopies(t, l, hostileGood)
}

// waitLUN waits until initiator sees LUN 0 through array i (the
// configuration reaches the other array through the pod's order).
func waitLUN(t *testing.T, l *lab.Lab, i int, name string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		c := dialArray(t, l, i, name)
		_, _, err := c.ReadCapacity(0)
		c.Close()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s does not see its LUN through %s: %v", name, l.Info.Arrays[i].Name, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// verifiedWrites writes random runs of patterned blocks into [first,
// first+blocks) through w and reads each back through r, until ctx ends.
// It returns the number of verified writes and the first error.
func verifiedWrites(ctx context.Context, w, r *initiator.Conn, first, blocks uint64, rng *rand.Rand) (int, error) {
	n := 0
	var seq uint64
	for ctx.Err() == nil {
		count := uint64(1 + rng.IntN(64))
		start := first + rng.Uint64N(blocks-count+1)
		seq++
		buf := make([]byte, 0, count*512)
		for b := range count {
			buf = append(buf, blockPattern(start+b, seq)...)
		}
		if err := w.Write(0, start, buf); err != nil {
			return n, fmt.Errorf("write of %d blocks at %d: %w", count, start, err)
		}
		got, err := r.Read(0, start, uint32(count))
		if err != nil {
			return n, fmt.Errorf("read back of %d blocks at %d: %w", count, start, err)
		}
		if !bytes.Equal(got, buf) {
			return n, fmt.Errorf("read back of %d blocks at %d differs from the acknowledged write", count, start)
		}
		n++
	}
	return n, nil
}

// hostileAttackNames names hostileAttacks' entries, in order.
var hostileAttackNames = [...]string{
	"two-PDU crash", "task management", "64 MiB write flood", "unread ping flood",
	"random PDUs", "half-sent logins", "garbage",
}

// hostileAttack runs one attack and reports whether it reached the
// target (logged in, or connected for the attacks before login).
type hostileAttack func(ctx context.Context, portal, target string, rng *rand.Rand) bool

func hostileAttacks() []hostileAttack {
	return []hostileAttack{
		attackTwoPDU, attackTMF, attackWriteFlood, attackPingFlood,
		attackRandomPDUs, attackHalfLogins, attackGarbage,
	}
}

// badSession logs the hostile host in; nil when the target refused it
// (a limit it tripped is the target defending itself).
func badSession(ctx context.Context, portal, target string) *initiator.Conn {
	c, err := initiator.Dial(ctx, portal, initiator.Options{InitiatorName: hostileBad, TargetName: target, Timeout: 3 * time.Second})
	if err != nil {
		return nil
	}
	go func() {
		<-ctx.Done()
		c.Close()
	}()
	return c
}

// cmdHeader is a SCSI Command PDU header on LUN 0.
func cmdHeader(c *initiator.Conn, flags byte, itt, edtl uint32, cdb []byte) *[48]byte {
	var h [48]byte
	h[0] = 0x01
	h[1] = flags
	binary.BigEndian.PutUint32(h[16:20], itt)
	binary.BigEndian.PutUint32(h[20:24], edtl)
	binary.BigEndian.PutUint32(h[24:28], c.NextCmdSN())
	binary.BigEndian.PutUint32(h[28:32], c.ExpStatSN())
	copy(h[32:48], cdb)
	return &h
}

// attackTwoPDU sends a write with W set, F=0 and no data to transfer,
// then a zero-length Data-Out (it crashed the array once).
func attackTwoPDU(ctx context.Context, portal, target string, _ *rand.Rand) bool {
	c := badSession(ctx, portal, target)
	if c == nil {
		return false
	}
	defer c.Close()
	if c.Params["InitialR2T"] != "No" {
		return false
	}
	_ = c.SendPDU(cmdHeader(c, 0x20|0x01, 0x100, 0, []byte{0x2a, 0, 0, 0, 0, 0, 0, 0, 0, 0}), nil)
	var d [48]byte
	d[0] = 0x05
	d[1] = 0x80
	binary.BigEndian.PutUint32(d[16:20], 0x100)
	binary.BigEndian.PutUint32(d[20:24], 0xffffffff)
	_ = c.SendPDU(&d, nil)
	_ = c.TestUnitReady(0)
	return true
}

// attackTMF sends every task management function for LUN 0 and LUN 1,
// with writes in flight.
func attackTMF(ctx context.Context, portal, target string, rng *rand.Rand) bool {
	c := badSession(ctx, portal, target)
	if c == nil {
		return false
	}
	defer c.Close()
	itt := uint32(0x200)
	for _, fn := range rng.Perm(7) {
		// A write whose data the target must ask for.
		itt++
		_ = c.SendPDU(cmdHeader(c, 0x80|0x20|0x01, itt, 1<<20, []byte{0x2a, 0, 0, 0, 0, 0, 0, 0x08, 0, 0}), nil)
		var h [48]byte
		h[0] = 0x02 | 0x40 // immediate TMF
		h[1] = 0x80 | byte(fn+1)
		if rng.IntN(2) == 1 {
			h[9] = 1 // LUN 1
		}
		itt++
		binary.BigEndian.PutUint32(h[16:20], itt)
		binary.BigEndian.PutUint32(h[20:24], itt-1)
		binary.BigEndian.PutUint32(h[24:28], c.CmdSN())
		binary.BigEndian.PutUint32(h[28:32], c.ExpStatSN())
		if c.SendPDU(&h, nil) != nil {
			return true
		}
	}
	drainUntil(ctx, c)
	return true
}

// attackWriteFlood fills the command window with writes that each declare
// 64 MiB and never sends their data.
func attackWriteFlood(ctx context.Context, portal, target string, _ *rand.Rand) bool {
	c := badSession(ctx, portal, target)
	if c == nil {
		return false
	}
	defer c.Close()
	cdb := make([]byte, 16)
	cdb[0] = 0x8a // WRITE(16)
	binary.BigEndian.PutUint32(cdb[10:14], 64<<20/512)
	for i := range 128 {
		if c.SendPDU(cmdHeader(c, 0x80|0x20|0x01, uint32(0x1000+i), 64<<20, cdb), nil) != nil {
			return true
		}
	}
	time.Sleep(2 * time.Second)
	return true
}

// attackPingFlood sends pings with data and never reads the answers.
func attackPingFlood(ctx context.Context, portal, target string, _ *rand.Rand) bool {
	c := badSession(ctx, portal, target)
	if c == nil {
		return false
	}
	defer c.Close()
	data := make([]byte, 8192)
	for i := range 2000 {
		var h [48]byte
		h[0] = 0x00
		h[1] = 0x80
		binary.BigEndian.PutUint32(h[16:20], uint32(0x3000+i))
		binary.BigEndian.PutUint32(h[20:24], 0xffffffff)
		binary.BigEndian.PutUint32(h[24:28], c.NextCmdSN())
		binary.BigEndian.PutUint32(h[28:32], c.ExpStatSN())
		if c.SendPDU(&h, data) != nil {
			return true
		}
	}
	return true
}

// attackRandomPDUs sends PDUs with random opcodes, flags and fields
// (well-framed: data segments within the negotiated limit).
func attackRandomPDUs(ctx context.Context, portal, target string, rng *rand.Rand) bool {
	c := badSession(ctx, portal, target)
	if c == nil {
		return false
	}
	defer c.Close()
	ops := []byte{0x00, 0x01, 0x02, 0x04, 0x05, 0x06, 0x10, 0x1c, 0x3f}
	for range 100 {
		var h [48]byte
		for i := range h {
			h[i] = byte(rng.Uint32())
		}
		h[0] = ops[rng.IntN(len(ops))] | byte(rng.IntN(2))<<6
		h[4] = 0 // no AHS
		if rng.IntN(2) == 0 {
			binary.BigEndian.PutUint32(h[24:28], c.NextCmdSN())
		}
		data := make([]byte, rng.IntN(3)*rng.IntN(4096))
		if c.SendPDU(&h, data) != nil {
			return true
		}
	}
	drainUntil(ctx, c)
	return true
}

// attackHalfLogins opens connections that send half a login PDU and
// wait.
func attackHalfLogins(ctx context.Context, portal, _ string, _ *rand.Rand) bool {
	var conns []net.Conn
	defer func() {
		for _, nc := range conns {
			nc.Close()
		}
	}()
	for range 200 {
		nc, err := (&net.Dialer{Timeout: time.Second}).DialContext(ctx, "tcp", portal)
		if err != nil {
			return len(conns) > 0
		}
		conns = append(conns, nc)
		var h [48]byte
		h[0] = 0x43
		h[1] = 0x81
		h[7] = 0xff // 255 bytes of login data announced
		_, _ = nc.Write(h[:30])
	}
	select {
	case <-ctx.Done():
	case <-time.After(time.Second):
	}
	return true
}

// attackGarbage sends random bytes on fresh connections.
func attackGarbage(ctx context.Context, portal, _ string, rng *rand.Rand) bool {
	for range 10 {
		nc, err := (&net.Dialer{Timeout: time.Second}).DialContext(ctx, "tcp", portal)
		if err != nil {
			return false
		}
		b := make([]byte, 48+rng.IntN(2000))
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		_ = nc.SetDeadline(time.Now().Add(time.Second))
		_, _ = nc.Write(b)
		_, _ = nc.Read(b)
		nc.Close()
	}
	return true
}

// drainUntil reads what the target sends until the connection fails or
// ctx ends (bounded: the hostile host only lingers a moment).
func drainUntil(ctx context.Context, c *initiator.Conn) {
	deadline := time.Now().Add(time.Second)
	for ctx.Err() == nil && time.Now().Before(deadline) {
		if _, _, err := c.RecvPDU(); err != nil {
			var ne net.Error
			if !errors.As(err, &ne) || !ne.Timeout() {
				return
			}
		}
	}
}
