package iscsi

import "sync"

// writeBudget bounds the write data the server holds for commands: the
// data-out of every write from its arrival until the command finishes or
// is aborted (Config.MaxWriteBytes and MaxSessionWriteBytes say the
// rules). Immediate and unsolicited data come unasked and are only
// counted (charge); the solicited rest of a write is counted whole before
// its first R2T (reserve), so a write that was admitted never waits for
// budget again and two writes of a session can never each hold half of
// what both need. Buffers are allocated per burst within what was
// counted, as the bursts are solicited.
//
// Lock order: a session's mu before the budget's mu. wake, which admits
// waiting writes of other sessions, is called holding neither.
type writeBudget struct {
	arrayCap, sessionCap uint64
	mu                   struct {
		sync.Mutex
		// used is the bytes counted for all sessions; holders the
		// sessions with bytes counted.
		used    uint64
		holders int
		// waiting lists the sessions with a write waiting for budget,
		// each once (session.wb.queued), in the order they began to
		// wait.
		waiting []*session
	}
}

// sessionBudget is a session's part of the write budget, guarded by the
// writeBudget's mu.
type sessionBudget struct {
	used   uint64
	queued bool
}

func (b *writeBudget) init(arrayCap, sessionCap uint64) {
	b.arrayCap, b.sessionCap = arrayCap, sessionCap
}

// charge counts n bytes the session holds whether the budget has room or
// not (data that came unasked).
func (b *writeBudget) charge(s *session, n uint64) {
	if n == 0 {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.addLocked(s, n)
}

func (b *writeBudget) addLocked(s *session, n uint64) {
	if s.wb.used == 0 {
		b.mu.holders++
	}
	s.wb.used += n
	b.mu.used += n
}

// reserve counts n more bytes for a write of s that holds own bytes
// already, if the rules allow:
//   - the session stays within its budget, or the write is the only one
//     of the session holding data (one command larger than the session's
//     budget still runs);
//   - the server stays within its budget, or the session within its fair
//     share of it (the server's budget divided by the sessions holding
//     data, this one included), so that sessions holding the whole budget
//     cannot starve the others.
//
// When they do not, s is queued, and wake retries it once bytes are
// released.
func (b *writeBudget) reserve(s *session, own, n uint64) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	used := s.wb.used
	holders := b.mu.holders
	if used == 0 {
		holders++
	}
	sessionOK := used+n <= b.sessionCap || used == own
	arrayOK := b.mu.used+n <= b.arrayCap || used+n <= b.arrayCap/uint64(holders)
	if sessionOK && arrayOK {
		b.addLocked(s, n)
		return true
	}
	if !s.wb.queued {
		s.wb.queued = true
		b.mu.waiting = append(b.mu.waiting, s)
	}
	return false
}

// release uncounts n bytes of s. The caller calls wake once it holds no
// session lock.
func (b *writeBudget) release(s *session, n uint64) {
	if n == 0 {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	s.wb.used -= n
	b.mu.used -= n
	if s.wb.used == 0 {
		b.mu.holders--
	}
}

// wake lets every session with a write waiting for budget try again, in
// the order they began to wait. The caller holds no session lock.
func (b *writeBudget) wake() {
	b.mu.Lock()
	ws := b.mu.waiting
	b.mu.waiting = nil
	for _, s := range ws {
		s.wb.queued = false
	}
	b.mu.Unlock()
	for _, s := range ws {
		s.admitWaiting()
	}
}

// usage returns the bytes counted in all and for s (tests).
func (b *writeBudget) usage(s *session) (all, sess uint64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if s != nil {
		sess = s.wb.used
	}
	return b.mu.used, sess
}
