package link

import (
	"bufio"
	"crypto/tls"
	"net"
	"sync"
	"sync/atomic"
)

// Buffer sizes of a connection.
const (
	readBufSize  = 256 << 10
	writeBufSize = 256 << 10
)

// conn is one of a session's two connections. The session runs a reader
// goroutine (fr) and a writer goroutine (bw, fed by out) for it; a
// goroutine sending a request or a response writes what is queued itself
// when no one else is writing (see Session.send).
type conn struct {
	kind connKind
	// raw is the connection under tls; closing it stops both goroutines
	// at once, without the close_notify exchange a tls.Conn.Close may
	// block on.
	raw net.Conn
	tls *tls.Conn
	fr  frameReader
	// wmu is held by whoever writes to bw: the writer goroutine or a
	// sender.
	wmu writeLock
	bw  *bufio.Writer
	out outQueue
}

func newConn(kind connKind, raw net.Conn, tc *tls.Conn) *conn {
	return &conn{
		kind: kind,
		raw:  raw,
		tls:  tc,
		fr:   frameReader{r: bufio.NewReaderSize(tc, readBufSize), max: MaxPayload},
		bw:   bufio.NewWriterSize(tc, writeBufSize),
		out:  outQueue{notify: make(chan struct{}, 1)},
		wmu:  make(writeLock, 1),
	}
}

// writeLock is a mutex made of a channel, so that a goroutine waiting for
// it counts as durably blocked in tests run under testing/synctest.
type writeLock chan struct{}

func (l writeLock) Lock() { l <- struct{}{} }

func (l writeLock) TryLock() bool {
	select {
	case l <- struct{}{}:
		return true
	default:
		return false
	}
}

func (l writeLock) Unlock() { <-l }

// outFrame is a frame queued for a writer.
type outFrame struct {
	h       header
	payload []byte
	// call is set on requests: the writer claims the frame from it before
	// writing and tells it when the payload is no longer referenced.
	call *call
}

// outQueue is a writer's queue: urgent frames (pings, pongs, goodbye) are
// written before normal ones (requests, responses). It is unbounded;
// budgets bound what requests and responses hold.
type outQueue struct {
	mu struct {
		sync.Mutex
		urgent, normal []outFrame
		// closed is set when the writer has stopped; push then fails.
		closed bool
	}
	// hasUrgent is set while urgent frames are queued, so the writer can
	// put them ahead of the rest of a batch.
	hasUrgent atomic.Bool
	// notify wakes the writer.
	notify chan struct{}
}

// push queues f without waking the writer. It reports false when the
// writer has stopped.
func (q *outQueue) push(f outFrame, urgent bool) bool {
	q.mu.Lock()
	if q.mu.closed {
		q.mu.Unlock()
		return false
	}
	if urgent {
		q.mu.urgent = append(q.mu.urgent, f)
		q.hasUrgent.Store(true)
	} else {
		q.mu.normal = append(q.mu.normal, f)
	}
	q.mu.Unlock()
	return true
}

// queue queues f and wakes the writer. It reports false when the writer
// has stopped.
func (q *outQueue) queue(f outFrame, urgent bool) bool {
	if !q.push(f, urgent) {
		return false
	}
	q.wake()
	return true
}

// wake tells the writer there is something to write.
func (q *outQueue) wake() {
	select {
	case q.notify <- struct{}{}:
	default:
	}
}

// take returns what is queued, swapping in the given slices (emptied) as
// the new queue.
func (q *outQueue) take(urgent, normal []outFrame) ([]outFrame, []outFrame) {
	clear(urgent)
	clear(normal)
	q.mu.Lock()
	defer q.mu.Unlock()
	u, n := q.mu.urgent, q.mu.normal
	q.mu.urgent, q.mu.normal = urgent[:0], normal[:0]
	q.hasUrgent.Store(false)
	return u, n
}

// takeUrgent returns the urgent frames queued.
func (q *outQueue) takeUrgent() []outFrame {
	q.mu.Lock()
	defer q.mu.Unlock()
	u := q.mu.urgent
	q.mu.urgent = nil
	q.hasUrgent.Store(false)
	return u
}

// close stops the queue and returns what was still in it.
func (q *outQueue) close() []outFrame {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.mu.closed = true
	rest := append(q.mu.urgent, q.mu.normal...)
	q.mu.urgent, q.mu.normal = nil, nil
	return rest
}

// Request frame states (call.state). The writer claims a queued frame
// before writing it; a Call that gives up withdraws a frame not claimed
// yet, and waits for call.written otherwise.
const (
	callQueued uint32 = iota
	callClaimed
	callWithdrawn
)

// call is a Call waiting for its response.
type call struct {
	size  int
	state atomic.Uint32
	// written is closed by the writer once it no longer references the
	// request payload (written or dropped), if it claimed the frame.
	written chan struct{}
	// done is closed when resp or err is set.
	done chan struct{}
	resp Message
	err  error
}

func (c *call) claim() bool    { return c.state.CompareAndSwap(callQueued, callClaimed) }
func (c *call) withdraw() bool { return c.state.CompareAndSwap(callQueued, callWithdrawn) }

// writeLoop is a connection's writer: it writes queued frames, flushing
// when the queue runs empty. It returns on a write error, or nil when the
// session is dead.
func (s *Session) writeLoop(c *conn) error {
	var urgent, normal []outFrame
	for {
		select {
		case <-c.out.notify:
		case <-s.done:
			return nil
		}
		c.wmu.Lock()
		var err error
		urgent, normal, err = s.drain(c, urgent, normal)
		c.wmu.Unlock()
		if err != nil {
			return err
		}
	}
}

// drain writes what is queued on c until the queue is empty, then
// flushes. The slices are scratch space, returned for reuse. c.wmu must
// be held.
func (s *Session) drain(c *conn, urgent, normal []outFrame) ([]outFrame, []outFrame, error) {
	for {
		urgent, normal = c.out.take(urgent, normal)
		if len(urgent) == 0 && len(normal) == 0 {
			break
		}
		if err := s.writeBatch(c, urgent, normal); err != nil {
			return urgent, normal, err
		}
	}
	return urgent, normal, c.bw.Flush()
}

// send queues f on c and, when no one is writing to c, writes what is
// queued itself: that saves waking the writer goroutine, a thread wakeup
// on the path of every request and response. Otherwise the writer is
// woken and sends f with what it has. The caller may block until the peer
// reads, so readers never use it (they must keep draining their
// connection); they queue. It reports false when the writer has stopped.
func (s *Session) send(c *conn, f outFrame, urgent bool) bool {
	if !c.out.push(f, urgent) {
		return false
	}
	if !c.wmu.TryLock() {
		c.out.wake()
		return true
	}
	_, _, err := s.drain(c, nil, nil)
	c.wmu.Unlock()
	if err != nil {
		s.die(connError(c, "write", err))
	}
	return true
}

// writeBatch writes urgent, then normal, putting urgent frames queued in
// the meantime ahead of the normal ones left. After an error the frames
// not written are dropped.
func (s *Session) writeBatch(c *conn, urgent, normal []outFrame) error {
	var err error
	writeAll := func(fs []outFrame) {
		for i := range fs {
			if err != nil {
				s.drop(&fs[i])
				continue
			}
			err = s.write(c, &fs[i])
		}
	}
	writeAll(urgent)
	for i := range normal {
		if err == nil && c.out.hasUrgent.Load() {
			writeAll(c.out.takeUrgent())
		}
		writeAll(normal[i : i+1])
	}
	return err
}

// write buffers one frame; a request whose Call has withdrawn it is
// skipped.
func (s *Session) write(c *conn, f *outFrame) error {
	if f.call != nil && !f.call.claim() {
		return nil
	}
	defer s.written(f) // even if writing panics: a Call waits for it
	return writeFrame(c.bw, &f.h, f.payload)
}

// drop gives up a frame that will not be written.
func (s *Session) drop(f *outFrame) {
	if f.call != nil && !f.call.claim() {
		return
	}
	s.written(f)
}

// written releases what a claimed frame held.
func (s *Session) written(f *outFrame) {
	switch {
	case f.call != nil:
		close(f.call.written)
	case f.h.kind == kindResponse, f.h.kind == kindError:
		s.respBudget.release(len(f.payload))
	}
}

// runWriter runs c's writer until it stops, then drops what is left.
func (s *Session) runWriter(c *conn) {
	defer func() {
		for _, f := range c.out.close() {
			s.drop(&f)
		}
	}()
	defer s.contain(c.kind.String() + " connection writer")
	if err := s.writeLoop(c); err != nil {
		s.die(connError(c, "write", err))
	}
}
