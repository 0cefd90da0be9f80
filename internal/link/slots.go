package link

import (
	"net"
	"sync/atomic"
)

// Handshake slots. Anyone who can reach the listener can open connections
// to it; until a connection has authenticated (TLS with the pinned
// certificate) it holds a slot. Slots are bounded in total and per source
// address, and a new connection is never refused for want of one: the
// listener drops an older unauthenticated connection instead, so sockets
// held open against the port cannot keep the peer out.
//
// The victim is taken from the new connection's own address when that
// address is at its limit. When all the slots are taken, it comes from
// the address holding the most if that is more than a session's two
// connections, else it is the oldest connection that has sent nothing
// yet, else the oldest; within an address it is the oldest connection
// that has sent nothing yet, else the oldest. The address the peer last
// authenticated from is spared from the latter choices while another
// address holds a slot: the peer's session opens its two connections at
// once and they send their TLS hello at once, so connections from many
// addresses, each holding one slot and renewed as fast as they are
// dropped, cannot push them out. Someone who shares the peer's address
// must open a whole address's worth of connections within the few round
// trips the peer takes to authenticate to push one out.

// sessionConns is how many connections a session opens at once.
const sessionConns = 2

// slot is one unauthenticated connection.
type slot struct {
	// addr is the source address (IP) the connection came from.
	addr string
	conn net.Conn
	// heard is set once the connection has sent a byte.
	heard atomic.Bool
	// gone is set once the slot has left the table (authenticated,
	// failed or evicted).
	gone bool
}

// slots is a listener's table of unauthenticated connections. It is not
// safe for concurrent use (the Listener's mutex guards it).
type slots struct {
	max, perAddr int
	// peer is the address the peer last authenticated from ("" before
	// it first did).
	peer string
	// list holds the slots, oldest first.
	list []*slot
	// byAddr counts the slots of each address.
	byAddr map[string]int
}

func newSlots(max, perAddr int) *slots {
	return &slots{max: max, perAddr: perAddr, byAddr: map[string]int{}}
}

// admit takes s in, first evicting what it must to stay within the
// limits; the caller closes the evicted slots' connections.
func (t *slots) admit(s *slot) (evicted []*slot) {
	if t.byAddr[s.addr] >= t.perAddr {
		evicted = append(evicted, t.evict(s.addr))
	}
	if len(t.list) >= t.max {
		evicted = append(evicted, t.evictAny())
	}
	t.list = append(t.list, s)
	t.byAddr[s.addr]++
	return evicted
}

// leave removes s from the table; it reports false when s had left it
// already.
func (t *slots) leave(s *slot) bool {
	if s.gone {
		return false
	}
	for i, o := range t.list {
		if o == s {
			t.list = append(t.list[:i], t.list[i+1:]...)
			break
		}
	}
	s.gone = true
	if t.byAddr[s.addr]--; t.byAddr[s.addr] <= 0 {
		delete(t.byAddr, s.addr)
	}
	return true
}

// evict removes and returns the victim of addr (which holds a slot): its
// oldest connection that has sent nothing, else its oldest.
func (t *slots) evict(addr string) *slot {
	victim := t.pick(func(s *slot) bool { return s.addr == addr })
	t.leave(victim)
	return victim
}

// pick returns the oldest of the slots matching that has sent nothing,
// else the oldest of them, or nil.
func (t *slots) pick(match func(*slot) bool) *slot {
	var victim *slot
	for _, s := range t.list {
		if !match(s) {
			continue
		}
		if !s.heard.Load() {
			return s
		}
		if victim == nil {
			victim = s
		}
	}
	return victim
}

// evictAny removes and returns the victim when every slot is taken (see
// the rules above). The table must not be empty.
func (t *slots) evictAny() *slot {
	if a, n := t.busiest(); n > sessionConns {
		return t.evict(a)
	}
	victim := t.pick(func(s *slot) bool { return s.addr != t.peer })
	if victim == nil {
		return t.evict(t.list[0].addr) // the peer's address holds every slot
	}
	t.leave(victim)
	return victim
}

// busiest returns the address other than the peer's holding the most
// slots, and how many; of several, the one holding the oldest slot.
func (t *slots) busiest() (string, int) {
	most := 0
	for a, n := range t.byAddr {
		if a != t.peer {
			most = max(most, n)
		}
	}
	for _, s := range t.list {
		if s.addr != t.peer && t.byAddr[s.addr] == most {
			return s.addr, most
		}
	}
	return "", 0
}

// sourceAddr is the address a connection is counted under: the IP of its
// remote address, or the whole address when it has no port (in-memory
// networks).
func sourceAddr(nc net.Conn) string {
	a := nc.RemoteAddr()
	if a == nil {
		return ""
	}
	if host, _, err := net.SplitHostPort(a.String()); err == nil {
		return host
	}
	return a.String()
}

// heardConn records in a slot that the connection has sent something.
type heardConn struct {
	net.Conn
	s *slot
}

func (c heardConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 && !c.s.heard.Load() {
		c.s.heard.Store(true)
	}
	return n, err
}
