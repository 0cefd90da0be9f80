package iscsi

import (
	"sync"
	"sync/atomic"
)

// budget bounds the command data the server holds, for all sessions and
// per session: one budget for write data (Config.MaxWriteBytes and
// MaxSessionWriteBytes), one for read data (MaxReadBytes and
// MaxSessionReadBytes).
//
// Write data is held from its arrival until the command finishes or is
// aborted. What the initiator sends unasked (immediate and unsolicited
// data, at most FirstBurstLength per command) is admitted when the
// command arrives or the command is refused with TASK SET FULL and its
// data dropped (admitUnsolicited). The solicited rest of a write is
// counted whole before its first R2T (reserve), so a write that was
// admitted never waits for budget again and two writes of a session can
// never each hold half of what both need; buffers are made per burst
// within what was counted, as the bursts are solicited.
//
// Read data is counted whole (the Expected Data Transfer Length) before
// the command starts (reserve) and held until its last Data-In has been
// written to the socket.
//
// Both pools, the unsolicited and the reserved, follow the same rules
// (see admitLocked): a session stays within its budget unless it holds
// nothing of that pool yet (one command larger than the session's budget
// still runs); the server within its budget, or the session within its
// fair share of it (the budget divided by the sessions holding data of
// that pool) as long as the pool stays under twice the budget. So each
// pool holds at most twice the server's budget, and when no session
// holds anything of a pool the next command is admitted: progress is
// never blocked by data nobody holds. Reserved write data is reclaimed
// from a host that does not send it by the data-out timeout, read data
// from a host that does not read it by the write deadline.
//
// Lock order: a session's mu before the budget's mu. wake, which admits
// waiting commands of other sessions, is called holding neither.
type budget struct {
	arrayCap, sessionCap uint64
	// of returns a session's part of this budget; admit retries a
	// session's commands waiting for it.
	of    func(*session) *sessionBudget
	admit func(*session)
	// nwaiting mirrors len(mu.waiting), so that wake costs an atomic
	// load when nobody waits.
	nwaiting atomic.Int32
	mu       struct {
		sync.Mutex
		// unsol and reserved are the bytes of each pool counted for
		// all sessions; unsolHolders and reservers the sessions with
		// bytes of that pool counted.
		unsol, reserved         uint64
		unsolHolders, reservers int
		// waiting lists the sessions with a command waiting for
		// budget, each once (sessionBudget.queued), in the order they
		// began to wait.
		waiting []*session
	}
}

// sessionBudget is a session's part of a budget, guarded by the budget's
// mu; used mirrors unsol+reserved for readers without the lock.
type sessionBudget struct {
	unsol, reserved uint64
	queued          bool
	used            atomic.Uint64
}

func (b *budget) init(arrayCap, sessionCap uint64, of func(*session) *sessionBudget, admit func(*session)) {
	b.arrayCap, b.sessionCap = arrayCap, sessionCap
	b.of, b.admit = of, admit
}

// admitLocked says whether a session holding sess bytes of a pool (and
// all bytes of both pools) may add n bytes to that pool, which holds
// total bytes for holders sessions (the session among them or not,
// mine).
func (b *budget) admitLocked(all, sess, n, total uint64, holders int) bool {
	if sess == 0 {
		holders++
	}
	sessionOK := all+n <= b.sessionCap || sess == 0
	arrayOK := total+n <= b.arrayCap ||
		sess+n <= b.arrayCap/uint64(holders) && total+n <= 2*b.arrayCap
	return sessionOK && arrayOK
}

// admitUnsolicited counts n bytes of data the initiator sends unasked,
// if the rules allow; the caller refuses the command when they do not.
func (b *budget) admitUnsolicited(s *session, n uint64) bool {
	if n == 0 {
		return true
	}
	sb := b.of(s)
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.admitLocked(sb.unsol+sb.reserved, sb.unsol, n, b.mu.unsol, b.mu.unsolHolders) {
		return false
	}
	if sb.unsol == 0 {
		b.mu.unsolHolders++
	}
	sb.unsol += n
	b.mu.unsol += n
	sb.used.Add(n)
	return true
}

// reserve counts n bytes a command of s will hold, if the rules allow.
// When they do not, s is queued, and wake retries it once bytes are
// released.
func (b *budget) reserve(s *session, n uint64) bool {
	sb := b.of(s)
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.admitLocked(sb.unsol+sb.reserved, sb.reserved, n, b.mu.reserved, b.mu.reservers) {
		if sb.reserved == 0 {
			b.mu.reservers++
		}
		sb.reserved += n
		b.mu.reserved += n
		sb.used.Add(n)
		return true
	}
	if !sb.queued {
		sb.queued = true
		b.mu.waiting = append(b.mu.waiting, s)
		b.nwaiting.Store(int32(len(b.mu.waiting)))
	}
	return false
}

// release uncounts unsol and reserved bytes of s. The caller calls wake
// once it holds no session lock.
func (b *budget) release(s *session, unsol, reserved uint64) {
	if unsol == 0 && reserved == 0 {
		return
	}
	sb := b.of(s)
	b.mu.Lock()
	defer b.mu.Unlock()
	if unsol > 0 {
		sb.unsol -= unsol
		b.mu.unsol -= unsol
		if sb.unsol == 0 {
			b.mu.unsolHolders--
		}
	}
	if reserved > 0 {
		sb.reserved -= reserved
		b.mu.reserved -= reserved
		if sb.reserved == 0 {
			b.mu.reservers--
		}
	}
	sb.used.Add(^(unsol + reserved - 1))
}

// wake lets every session with a command waiting for budget try again,
// in the order they began to wait. The caller holds no session lock.
func (b *budget) wake() {
	if b.nwaiting.Load() == 0 {
		return
	}
	b.mu.Lock()
	ws := b.mu.waiting
	b.mu.waiting = nil
	b.nwaiting.Store(0)
	for _, s := range ws {
		b.of(s).queued = false
	}
	b.mu.Unlock()
	for _, s := range ws {
		b.admit(s)
	}
}

// usage returns the bytes counted in all and for s (tests).
func (b *budget) usage(s *session) (all, sess uint64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if s != nil {
		sb := b.of(s)
		sess = sb.unsol + sb.reserved
	}
	return b.mu.unsol + b.mu.reserved, sess
}

// over reports whether s holds its session's budget or more: its command
// window then stops opening (session.grantLocked). Lock-free.
func (b *budget) over(s *session) bool {
	return b.of(s).used.Load() >= b.sessionCap
}
