package e2e

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/metro-storage/metro/internal/initiator"
	"github.com/metro-storage/metro/internal/lab"
	"github.com/metro-storage/metro/internal/netproxy"
)

// The hosts of the failure scenarios. Each plays a server with
// multipath software: one iSCSI session per path, a path checker per
// path that asks REPORT TARGET PORT GROUPS every checkEvery (as Linux's
// ALUA handler does), and a writer that writes 4 KiB blocks of known
// patterns into the host's own region of the volume, one at a time,
// through the best usable path (Active/Optimized before Active/
// Non-optimized, its own site's array first). A path is usable while its
// checker last saw it active and no write failed on it since. A write
// that fails on a path (NOT READY unavailable, standby or offline; no
// answer within pathTimeout; the connection lost) is sent again through
// another path; a unit attention or a transitioning path is retried on
// the same one, as hosts do. A write is retried until it is acknowledged
// (queue_if_no_path), so every write the host issued is acknowledged
// once it stops, except one in flight when the host itself fails.
//
// The host sees an error when its multipath device has no usable path
// left for a write: every path failed it or its checker finds it down
// or not active. That is what an application sees as an I/O error on a
// host that does not queue, and what makes a cluster restart the
// application elsewhere.

const (
	// pathTimeout is how long a host waits for an answer on a path
	// before it fails the path: about what open-iscsi's NOP-Out ping
	// takes to notice a dead connection at its defaults (5 s interval,
	// 5 s timeout).
	pathTimeout = 10 * time.Second
	// checkEvery is the path checker's interval; checkTimeout bounds
	// one check, its login included.
	checkEvery   = 300 * time.Millisecond
	checkTimeout = 3 * time.Second
	// unitBlocks is one write: 8 blocks of 512 bytes.
	unitBlocks = 8
)

// ALUA states as a host's path checker reports them; pathDown is a path
// that does not answer (cut, or the array gone).
const (
	pathAO       = "AO"
	pathANO      = "ANO"
	pathStandby  = "S"
	pathUnavail  = "U"
	pathOffline  = "O"
	pathTransit  = "T"
	pathDown     = "down"
	pathUnknown  = "?"
	hostFailed   = "failed"
	pathNotFound = "no group"
)

func aluaName(state byte) string {
	switch state {
	case 0x0:
		return pathAO
	case 0x1:
		return pathANO
	case 0x2:
		return pathStandby
	case 0x3:
		return pathUnavail
	case 0xe:
		return pathOffline
	case 0xf:
		return pathTransit
	}
	return fmt.Sprintf("state %#x", state)
}

// mpath is one path of a host: to one array, through the lab's host
// portal of the host's site and the host's own cable (nic), which the
// host isolation scenario cuts.
type mpath struct {
	array  int
	name   string // the array's name
	target string
	nic    *netproxy.Proxy
	tpg    uint16 // the array's target port group id

	mu struct {
		sync.Mutex
		state   string    // as the checker last saw it
		checked time.Time // when the checker last saw it active
		failed  time.Time // when a write last failed on it
		lastErr string
	}
}

// usable reports whether the writer may use p, and its rank (lower is
// better: optimized, then non-optimized).
func (p *mpath) usable() (bool, int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.mu.state != pathAO && p.mu.state != pathANO {
		return false, 0
	}
	if !p.mu.failed.IsZero() && !p.mu.checked.After(p.mu.failed) {
		return false, 0
	}
	if p.mu.state == pathAO {
		return true, 0
	}
	return true, 1
}

func (p *mpath) fail(err error) {
	p.mu.Lock()
	p.mu.failed = time.Now()
	p.mu.lastErr = fmt.Sprintf("%s: %s", p.name, describeIOError(err))
	p.mu.Unlock()
}

func (p *mpath) state() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.mu.state
}

// describeIOError is an I/O error as a host administrator reads it.
func describeIOError(err error) string {
	var se *initiator.SCSIError
	if errors.As(err, &se) {
		key, asc, ascq := se.SenseKey()
		switch {
		case key == 0x2 && asc == 0x04 && ascq == 0x0c:
			return "NOT READY, unavailable (04/0C)"
		case key == 0x2 && asc == 0x04 && ascq == 0x0a:
			return "NOT READY, transitioning (04/0A)"
		case key == 0x2 && asc == 0x04 && ascq == 0x0b:
			return "NOT READY, standby (04/0B)"
		case key == 0x2 && asc == 0x04 && ascq == 0x12:
			return "NOT READY, offline (04/12)"
		}
		return fmt.Sprintf("sense %x/%02X/%02X", key, asc, ascq)
	}
	var ne interface{ Timeout() bool }
	if errors.As(err, &ne) && ne.Timeout() {
		return "no answer (path timeout)"
	}
	s := err.Error()
	if i := strings.LastIndex(s, ": "); i >= 0 && len(s)-i < 60 {
		s = s[i+2:]
	}
	return "path lost (" + s + ")"
}

// writeSample is one acknowledged write: when it was first sent and how
// long it took to be acknowledged, retries on other paths included.
type writeSample struct {
	start time.Time
	took  time.Duration
}

// mpHost is a host of the scenarios.
type mpHost struct {
	name    string // "uniform-A"
	iqn     string
	site    int
	uniform bool
	paths   []*mpath // in the host's order: its own site's array first
	// first is the region's first LBA; units the number of 4 KiB units.
	first, units uint64
	rng          *rand.Rand

	// The writer's knowledge of the region, kept across scenarios in
	// the same lab: acked[u] is the seq of the last acknowledged write
	// of unit u (0: never written, reads as zeros), maybe[u] that of a
	// write in flight when the host failed (either content is right).
	acked []uint64
	maybe map[uint64]uint64
	seq   uint64

	mu struct {
		sync.Mutex
		// conns are the writer's sessions by path (nil: none).
		conns []*initiator.Conn
		// samples, errors of this run of the writer.
		samples  []writeSample
		errors   []time.Time
		firstErr string
		outage   bool
		// pending is the first attempt of the write in progress (zero
		// when none).
		pending time.Time
	}
	// dead is set while the host is failed (single host failure).
	dead     atomic.Bool
	stop     chan struct{}
	done     chan struct{}
	checkers sync.WaitGroup
	checkEnd chan struct{}
	// stuck is set when the writer stopped with a write that was never
	// acknowledged though the host did not fail.
	stuck string
}

// newHost makes a host of site site with paths to arrays (each through
// the lab's host portal of its site, behind a cable of its own).
func newHost(info lab.Info, name, iqn string, site int, arrays []int, tpgs []uint16, first, units uint64) (*mpHost, error) {
	h := &mpHost{name: name, iqn: iqn, site: site, uniform: len(arrays) > 1, first: first, units: units,
		acked: make([]uint64, units), maybe: map[uint64]uint64{}, rng: rand.New(rand.NewPCG(uint64(site), first))}
	for _, a := range arrays {
		ai := info.Arrays[a]
		nic, err := netproxy.New("127.0.0.1:0", ai.HostPortals[site].Portal, netproxy.Settings{}, nil)
		if err != nil {
			h.close()
			return nil, err
		}
		p := &mpath{array: a, name: ai.Name, target: ai.Target, nic: nic, tpg: tpgs[a]}
		p.mu.state = pathUnknown
		h.paths = append(h.paths, p)
	}
	h.mu.conns = make([]*initiator.Conn, len(h.paths))
	h.startCheckers()
	return h, nil
}

// close stops the checkers and closes the host's cables.
func (h *mpHost) close() {
	h.stopCheckers()
	for _, p := range h.paths {
		_ = p.nic.Close()
	}
}

func (h *mpHost) dial(ctx context.Context, p *mpath, timeout time.Duration) (*initiator.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	return initiator.Dial(ctx, p.nic.Addr(), initiator.Options{InitiatorName: h.iqn, TargetName: p.target, Timeout: timeout})
}

// startCheckers starts one path checker per path.
func (h *mpHost) startCheckers() {
	h.checkEnd = make(chan struct{})
	for _, p := range h.paths {
		h.checkers.Add(1)
		go func() {
			defer h.checkers.Done()
			h.check(p)
		}()
	}
}

func (h *mpHost) stopCheckers() {
	if h.checkEnd == nil {
		return
	}
	close(h.checkEnd)
	h.checkers.Wait()
	h.checkEnd = nil
}

// check is p's path checker: REPORT TARGET PORT GROUPS through its own
// session every checkEvery, the state of p's array's group recorded.
func (h *mpHost) check(p *mpath) {
	var c *initiator.Conn
	defer func() {
		if c != nil {
			c.Close()
		}
	}()
	tick := time.NewTicker(checkEvery)
	defer tick.Stop()
	for {
		state := pathDown
		var err error
		if c == nil {
			c, err = h.dial(context.Background(), p, checkTimeout)
		}
		if err == nil {
			state, err = groupState(c, p.tpg)
			if err != nil {
				state = pathDown
				c.Close()
				c = nil
			}
		}
		p.mu.Lock()
		p.mu.state = state
		if state == pathAO || state == pathANO {
			p.mu.checked = time.Now()
		}
		p.mu.Unlock()
		select {
		case <-h.checkEnd:
			return
		case <-tick.C:
		}
	}
}

// groupState asks REPORT TARGET PORT GROUPS and returns the state of
// group tpg; unit attentions are consumed on the way.
func groupState(c *initiator.Conn, tpg uint16) (string, error) {
	var d []byte
	var err error
	for range 4 {
		d, err = c.ReportTargetPortGroups(0)
		var se *initiator.SCSIError
		if errors.As(err, &se) {
			if key, _, _ := se.SenseKey(); key == 0x6 {
				continue
			}
			return describeIOError(err), nil
		}
		break
	}
	if err != nil {
		return "", err
	}
	for p := 8; p+8 <= len(d); {
		if uint16(d[p+2])<<8|uint16(d[p+3]) == tpg {
			return aluaName(d[p] & 0x0f), nil
		}
		p += 8 + 4*int(d[p+7])
	}
	return pathNotFound, nil
}

// pathStates is what the host's checkers see now, e.g. "a AO, b U".
func (h *mpHost) pathStates() string {
	if h.dead.Load() {
		return hostFailed
	}
	parts := make([]string, len(h.paths))
	for i, p := range h.paths {
		parts[i] = p.name[len(p.name)-1:] + " " + p.state()
	}
	return strings.Join(parts, ", ")
}

// pattern is unit u's content at seq.
func (h *mpHost) pattern(u, seq uint64) []byte {
	lba := h.first + u*unitBlocks
	buf := make([]byte, 0, unitBlocks*512)
	for i := range uint64(unitBlocks) {
		buf = append(buf, blockPattern(lba+i, seq)...)
	}
	return buf
}

// startWriter starts the host's writer, with fresh statistics.
func (h *mpHost) startWriter() {
	h.mu.Lock()
	h.mu.samples, h.mu.errors, h.mu.firstErr, h.mu.outage = nil, nil, "", false
	h.mu.Unlock()
	h.dead.Store(false)
	h.stuck = ""
	h.stop, h.done = make(chan struct{}), make(chan struct{})
	go func() {
		defer close(h.done)
		h.write()
	}()
}

// stopWriter asks the writer to stop once its write in progress is
// acknowledged, and waits for it (a write that is not acknowledged
// within a minute is given up: h.stuck says so).
func (h *mpHost) stopWriter() {
	if h.stop == nil {
		return
	}
	close(h.stop)
	<-h.done
	h.stop = nil
}

// fail is the host's crash: its sessions drop at once, mid-write, and
// its writer ends; the write in flight may or may not be on the volume.
func (h *mpHost) fail() {
	h.dead.Store(true)
	h.mu.Lock()
	for _, c := range h.mu.conns {
		if c != nil {
			c.Close()
		}
	}
	h.mu.Unlock()
	h.stopWriter()
}

func (h *mpHost) stopping() bool {
	select {
	case <-h.stop:
		return true
	default:
		return false
	}
}

// write is the writer: random units of the region, one write at a time,
// each retried until acknowledged.
func (h *mpHost) write() {
	defer func() {
		h.mu.Lock()
		for i, c := range h.mu.conns {
			if c != nil {
				c.Close()
				h.mu.conns[i] = nil
			}
		}
		h.mu.Unlock()
	}()
	for !h.stopping() {
		u := h.rng.Uint64N(h.units)
		h.seq++
		seq := h.seq
		data := h.pattern(u, seq)
		start := time.Now()
		h.mu.Lock()
		h.mu.pending = start
		h.mu.Unlock()
		ok := h.writeOne(u, data)
		h.mu.Lock()
		h.mu.pending = time.Time{}
		if ok {
			h.mu.samples = append(h.mu.samples, writeSample{start: start, took: time.Since(start)})
			h.mu.outage = false
		}
		h.mu.Unlock()
		if !ok {
			h.maybe[u] = seq
			return
		}
		h.acked[u] = seq
		delete(h.maybe, u)
	}
}

// writeOne sends one write until a path acknowledges it; false if the
// host failed first, or a stop found it unacknowledged for a minute.
func (h *mpHost) writeOne(u uint64, data []byte) bool {
	lba := h.first + u*unitBlocks
	var stopAt time.Time
	for {
		if h.dead.Load() {
			return false
		}
		if h.stopping() {
			if stopAt.IsZero() {
				stopAt = time.Now()
			} else if time.Since(stopAt) > time.Minute {
				h.stuck = fmt.Sprintf("a write to LBA %d was never acknowledged: %s", lba, h.reasons())
				return false
			}
		}
		i := h.pick()
		if i < 0 {
			h.noPath()
			time.Sleep(50 * time.Millisecond)
			continue
		}
		p := h.paths[i]
		h.mu.Lock()
		c := h.mu.conns[i]
		h.mu.Unlock()
		if c == nil {
			var err error
			if c, err = h.dial(context.Background(), p, pathTimeout); err != nil {
				p.fail(err)
				continue
			}
			h.mu.Lock()
			h.mu.conns[i] = c
			h.mu.Unlock()
		}
		err := c.Write(0, lba, data)
		if err == nil {
			return true
		}
		if h.dead.Load() {
			return false
		}
		var se *initiator.SCSIError
		if errors.As(err, &se) {
			key, asc, ascq := se.SenseKey()
			if key == 0x6 {
				continue // unit attention: the command was not run
			}
			if key == 0x2 && asc == 0x04 && ascq == 0x0a {
				time.Sleep(50 * time.Millisecond) // transitioning: retry there
				continue
			}
			p.fail(err)
			continue
		}
		// The session is lost: the write may or may not have been
		// made; it is sent again, with the same content.
		p.fail(err)
		c.Close()
		h.mu.Lock()
		h.mu.conns[i] = nil
		h.mu.Unlock()
	}
}

// pick returns the best usable path, -1 if none.
func (h *mpHost) pick() int {
	best, bestRank := -1, 2
	for i, p := range h.paths {
		if ok, rank := p.usable(); ok && rank < bestRank {
			best, bestRank = i, rank
		}
	}
	return best
}

// noPath records that the host's device has no usable path: an I/O
// error for the application, counted once per outage.
func (h *mpHost) noPath() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.mu.outage {
		return
	}
	h.mu.outage = true
	h.mu.errors = append(h.mu.errors, time.Now())
	if h.mu.firstErr == "" {
		h.mu.firstErr = h.reasonsLocked()
	}
}

func (h *mpHost) reasons() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.reasonsLocked()
}

// reasonsLocked says why each path is not usable.
func (h *mpHost) reasonsLocked() string {
	var rs []string
	for _, p := range h.paths {
		p.mu.Lock()
		r := p.mu.lastErr
		if p.mu.state != pathAO && p.mu.state != pathANO {
			r = p.name + ": path " + p.mu.state
		}
		p.mu.Unlock()
		if r != "" {
			rs = append(rs, r)
		}
	}
	return strings.Join(rs, "; ")
}

// ackedSince waits (up to timeout) until the host has acknowledged a
// write it sent at or after from.
func (h *mpHost) ackedSince(from time.Time, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for {
		h.mu.Lock()
		n := len(h.mu.samples)
		ok := n > 0 && !h.mu.samples[n-1].start.Before(from)
		h.mu.Unlock()
		if ok {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// hostRun is what a host saw during one run of its writer.
type hostRun struct {
	writes int
	// errors counts the outages (no usable path), first says why the
	// first one happened.
	errors   int
	first    string
	firstAt  time.Time
	errorsAt []time.Time
	// longest is the longest a write took to be acknowledged, longestAt
	// when it was sent.
	longest   time.Duration
	longestAt time.Time
	samples   []writeSample
}

func (h *mpHost) run() hostRun {
	h.mu.Lock()
	defer h.mu.Unlock()
	r := hostRun{writes: len(h.mu.samples), errors: len(h.mu.errors), first: h.mu.firstErr, samples: slices.Clone(h.mu.samples),
		errorsAt: slices.Clone(h.mu.errors)}
	if len(h.mu.errors) > 0 {
		r.firstAt = h.mu.errors[0]
	}
	for _, s := range h.mu.samples {
		if s.took > r.longest {
			r.longest, r.longestAt = s.took, s.start
		}
	}
	if !h.mu.pending.IsZero() {
		if d := time.Since(h.mu.pending); d > r.longest {
			r.longest, r.longestAt = d, h.mu.pending
		}
	}
	return r
}

// errorsBetween counts the outages that began in [from, to) (to zero:
// no end).
func (r hostRun) errorsBetween(from, to time.Time) int {
	n := 0
	for _, at := range r.errorsAt {
		if !at.Before(from) && (to.IsZero() || at.Before(to)) {
			n++
		}
	}
	return n
}

// medianBetween is the median time to acknowledge writes sent in
// [from, to).
func (r hostRun) medianBetween(from, to time.Time) time.Duration {
	var ds []time.Duration
	for _, s := range r.samples {
		if !s.start.Before(from) && s.start.Before(to) {
			ds = append(ds, s.took)
		}
	}
	if len(ds) == 0 {
		return 0
	}
	slices.Sort(ds)
	return ds[len(ds)/2]
}

// verify reads the host's region through c and checks every unit holds
// its last acknowledged write (or, for a unit written when the host
// failed, that write); it returns how many units were checked.
func (h *mpHost) verify(c *initiator.Conn, through string) error {
	const chunk = 2048 // blocks per read: 1 MiB
	zero := make([]byte, unitBlocks*512)
	blocks := h.units * unitBlocks
	for off := uint64(0); off < blocks; off += chunk {
		n := min(chunk, blocks-off)
		data, err := c.Read(0, h.first+off, uint32(n))
		if err != nil {
			return fmt.Errorf("%s's region through %s: read at LBA %d: %v", h.name, through, h.first+off, err)
		}
		for b := uint64(0); b < n; b += unitBlocks {
			u := (off + b) / unitBlocks
			got := data[b*512 : (b+unitBlocks)*512]
			want := zero
			if s := h.acked[u]; s != 0 {
				want = h.pattern(u, s)
			}
			if bytes.Equal(got, want) {
				continue
			}
			if s, ok := h.maybe[u]; ok && bytes.Equal(got, h.pattern(u, s)) {
				continue
			}
			return fmt.Errorf("%s's acknowledged write lost through %s: LBA %d holds lba=%d seq=%d, want seq %d",
				h.name, through, h.first+u*unitBlocks, binary.BigEndian.Uint64(got[0:8]), binary.BigEndian.Uint64(got[8:16]), h.acked[u])
		}
	}
	return nil
}

// settle adopts what verify accepted: a unit written when the host
// failed holds whichever content it read back; call after verify passed
// through every array (both copies agree then).
func (h *mpHost) settle(c *initiator.Conn) error {
	for u, s := range h.maybe {
		data, err := c.Read(0, h.first+u*unitBlocks, unitBlocks)
		if err != nil {
			return err
		}
		if bytes.Equal(data, h.pattern(u, s)) {
			h.acked[u] = s
		}
	}
	clear(h.maybe)
	return nil
}
