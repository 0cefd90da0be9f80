package netproxy

import (
	"bytes"
	"errors"
	"io"
	"math"
	"net"
	"runtime"
	"sync"
	"syscall"
	"time"
)

// conn is one proxied connection: a is the side that dialled the proxy, b
// the proxy's connection to the target (nil while hold keeps a).
type conn struct {
	p    *Proxy
	a, b net.Conn
	dirs [2]*direction
	// done is closed by shut; every goroutine of the connection watches it.
	done     chan struct{}
	shutOnce sync.Once
	// broken is guarded by p.mu: bytes were lost to a cut, by direction.
	broken [2]bool
}

func newConn(p *Proxy, a, b net.Conn) *conn {
	return &conn{
		p: p, a: a, b: b,
		dirs: [2]*direction{newDirection(aToB, a, b), newDirection(bToA, b, a)},
		done: make(chan struct{}),
	}
}

// shut closes both sides once. With rst it resets TCP connections (linger
// 0) so the endpoints see a broken stream, not an orderly end.
func (c *conn) shut(rst bool) {
	c.shutOnce.Do(func() {
		close(c.done)
		for _, nc := range []net.Conn{c.a, c.b} {
			switch {
			case nc == nil:
			case rst:
				reset(nc)
			default:
				_ = nc.Close()
			}
		}
	})
}

// reset closes nc, with a TCP RST where it can.
func reset(nc net.Conn) {
	if tc, ok := nc.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	_ = nc.Close()
}

// chunk is what a reader read at one time.
type chunk struct {
	data []byte
	at   time.Time // when the proxy read it
	// err, if set, ends the stream after data: io.EOF for a FIN, anything
	// else for a reset.
	err error
}

// direction is half a connection: bytes from src to dst. One reader and
// one writer goroutine use it.
type direction struct {
	i        int // aToB or bToA
	src, dst net.Conn
	// ready (capacity 1) is signalled when a chunk is queued, room when
	// bytes are taken off the queue.
	ready, room chan struct{}
	// wmu (capacity 1, a lock) is held by whoever writes to dst: the
	// writer, from taking a chunk until the queue is empty, or the reader
	// passing bytes straight through.
	wmu chan struct{}
	// mu guards the queue between the reader and the writer.
	mu struct {
		sync.Mutex
		q     []chunk
		bytes int // sum of len(data) in q
	}
}

func newDirection(i int, src, dst net.Conn) *direction {
	return &direction{i: i, src: src, dst: dst, ready: make(chan struct{}, 1), room: make(chan struct{}, 1), wmu: make(chan struct{}, 1)}
}

func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

func (d *direction) push(ch chunk) {
	d.mu.Lock()
	d.mu.q = append(d.mu.q, ch)
	d.mu.bytes += len(ch.data)
	d.mu.Unlock()
	signal(d.ready)
}

// pop takes the oldest chunk; false when none is queued.
func (d *direction) pop() (chunk, bool) {
	d.mu.Lock()
	if len(d.mu.q) == 0 {
		d.mu.Unlock()
		return chunk{}, false
	}
	ch := d.mu.q[0]
	d.mu.q[0] = chunk{}
	d.mu.q = d.mu.q[1:]
	d.mu.bytes -= len(ch.data)
	d.mu.Unlock()
	signal(d.room)
	return ch, true
}

// waitRoom waits until fewer than limit bytes are queued; false once done
// is closed.
func (d *direction) waitRoom(limit int, done <-chan struct{}) bool {
	for {
		d.mu.Lock()
		ok := d.mu.bytes < limit
		d.mu.Unlock()
		if ok {
			return true
		}
		select {
		case <-d.room:
		case <-done:
			return false
		}
	}
}

// read moves bytes from the socket to the queue, stamped with their arrival
// time, until the stream ends. While the link is cut the bytes are lost.
func (c *conn) read(d *direction) {
	buf := make([]byte, chunkSize)
	for {
		if !d.waitRoom(c.p.maxQueued, c.done) {
			return
		}
		n, err := d.src.Read(buf)
		now := time.Now()
		if n > 0 && !c.p.lose(c, d.i, n) && !c.through(d, buf[:n]) {
			d.push(chunk{data: bytes.Clone(buf[:n]), at: now})
		}
		if err != nil {
			if !c.p.lose(c, d.i, 0) {
				d.push(chunk{at: now, err: err})
			}
			return
		}
	}
}

// through passes data straight to dst when the link adds neither delay nor
// a bandwidth limit and nothing is queued or being written in that
// direction, so the writer goroutine is not woken at all: at zero delay
// the proxy then costs one read and one write per chunk. It reports
// whether it took data (a failed write shuts the connection).
func (c *conn) through(d *direction, data []byte) bool {
	select {
	case d.wmu <- struct{}{}:
	default:
		return false
	}
	defer func() { <-d.wmu }()
	d.mu.Lock()
	queued := len(d.mu.q) > 0
	d.mu.Unlock()
	c.p.mu.Lock()
	s := c.p.mu.s
	c.p.mu.Unlock()
	if queued || s.RTT > 0 || s.Bandwidth > 0 {
		return false
	}
	if _, err := d.dst.Write(data); err != nil {
		c.shut(true)
		return true
	}
	c.p.sent[d.i].Add(int64(len(data)))
	return true
}

// write delivers each queued chunk RTT/2 after it arrived, within the
// direction's bandwidth, until the stream ends or the connection is shut.
func (c *conn) write(d *direction) {
	t := time.NewTimer(time.Hour)
	t.Stop()
	defer t.Stop()
	for {
		select {
		case <-d.ready:
		case <-c.done:
			return
		}
		select {
		case d.wmu <- struct{}{}:
		case <-c.done:
			return
		}
		ok := true
		for ok {
			ch, queued := d.pop()
			if !queued {
				break
			}
			ok = c.deliver(t, d, ch)
		}
		<-d.wmu
		if !ok {
			return
		}
	}
}

// deliver writes one chunk when it is due; false when the stream ended or
// the connection is shut.
func (c *conn) deliver(t *time.Timer, d *direction, ch chunk) bool {
	due := func(s Settings, now time.Time) time.Duration { return ch.at.Add(s.RTT / 2).Sub(now) }
	if !c.wait(t, due) {
		return false
	}
	for data := ch.data; len(data) > 0; {
		n, lost := c.pace(t, d.i, len(data))
		if n == 0 {
			return false
		}
		piece := data[:n]
		data = data[n:]
		if lost {
			continue
		}
		if _, err := d.dst.Write(piece); err != nil {
			c.shut(true)
			return false
		}
		c.p.sent[d.i].Add(int64(n))
	}
	if ch.err == nil {
		return true
	}
	if c.p.lose(c, d.i, 0) {
		return false
	}
	if errors.Is(ch.err, io.EOF) {
		if cw, ok := d.dst.(interface{ CloseWrite() error }); ok && cw.CloseWrite() == nil {
			return false
		}
	}
	// A reset, or a FIN the target side cannot pass on by itself.
	c.shut(true)
	return false
}

// wait blocks until ready, asked with the current settings under p.mu,
// returns a delay ≤ 0. It asks again whenever the timer t fires or the
// settings change. False once the connection is shut.
func (c *conn) wait(t *time.Timer, ready func(s Settings, now time.Time) time.Duration) bool {
	for {
		c.p.mu.Lock()
		delay := ready(c.p.mu.s, time.Now())
		changed := c.p.mu.changed
		c.p.mu.Unlock()
		if delay <= 0 {
			return true
		}
		if c.p.precise {
			if delay <= preciseBelow {
				preciseSleep(delay)
				continue
			}
			// The runtime's timers may fire up to a millisecond late,
			// which would add to every delay: wake early, finish
			// precisely.
			delay -= preciseBelow / 2
		}
		t.Reset(delay)
		select {
		case <-t.C:
		case <-changed:
			t.Stop()
		case <-c.done:
			t.Stop()
			return false
		}
	}
}

// pace waits for the direction's bucket to allow the next piece of at most
// want bytes and returns its size, or 0 once the connection is shut. If
// the bytes are lost to a partition (see lose), they are all lost at once,
// without waiting, and lost is true.
func (c *conn) pace(t *time.Timer, dir, want int) (n int, lost bool) {
	ok := c.wait(t, func(s Settings, now time.Time) time.Duration {
		if lost = c.p.loseLocked(c, dir, want); lost || s.Bandwidth <= 0 {
			n = want
			return 0
		}
		n = min(want, quantum(s.Bandwidth))
		return c.p.mu.buckets[dir].take(now, n, s.Bandwidth)
	})
	if !ok {
		return 0, false
	}
	return n, lost
}

// quantum is the largest piece a writer sends at once at rate bytes/s:
// 10 ms worth, between 1 KiB and a chunk, so that connections sharing the
// link take turns at a fine grain.
func quantum(rate int64) int {
	return int(min(max(rate/100, 1<<10), chunkSize))
}

// bucket is a token bucket holding up to 10 ms worth of bytes (at least a
// quantum). The rate comes with each call so that changes apply at once.
type bucket struct {
	tokens float64
	last   time.Time
}

// take takes n tokens and returns 0, or returns how long to wait before
// asking again. Tokens may go negative when n exceeds the bucket, which
// only happens for a piece sized before the rate went down.
func (b *bucket) take(now time.Time, n int, rate int64) time.Duration {
	r := float64(rate)
	burst := max(r/100, float64(quantum(rate)))
	if b.last.IsZero() {
		b.tokens = burst
	} else if now.After(b.last) {
		b.tokens = min(burst, b.tokens+now.Sub(b.last).Seconds()*r)
	}
	b.last = now
	need := min(float64(n), burst)
	if b.tokens >= need {
		b.tokens -= float64(n)
		return 0
	}
	return max(time.Duration(math.Ceil((need-b.tokens)/r*float64(time.Second))), 1)
}

// prSetTimerSlack is prctl's PR_SET_TIMERSLACK.
const prSetTimerSlack = 29

// preciseBelow is the delay below which the proxy sleeps in the kernel
// (nanosleep, accurate to tens of microseconds) rather than on a runtime
// timer (accurate to about a millisecond on some hosts).
const preciseBelow = 2 * time.Millisecond

// preciseSleep sleeps for d in the kernel, blocking the OS thread, whose
// timer slack it sets to 1 ns first (the default, 50 µs, would be added to
// every delay).
func preciseSleep(d time.Duration) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	_, _, _ = syscall.RawSyscall(syscall.SYS_PRCTL, prSetTimerSlack, 1, 0)
	ts := syscall.NsecToTimespec(d.Nanoseconds())
	for {
		var left syscall.Timespec
		if err := syscall.Nanosleep(&ts, &left); err != syscall.EINTR {
			return
		}
		ts = left
	}
}
