package store

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/bloom"
	"github.com/cockroachdb/pebble/v2/sstable"
	"github.com/cockroachdb/pebble/v2/vfs"
)

// pebbleFormat pins Pebble's own on-disk format, so that upgrading the
// Pebble module never ratchets an existing store's format by surprise
// (ratcheting is one-way). Raise it deliberately.
const pebbleFormat = pebble.FormatValueSeparation

// pebbleOptions tunes Pebble for metro's workload: many small synced writes
// of 4 KiB values from up to a few dozen concurrent writers, random reads of
// the same, on a small machine where CPU is scarcer than disk bandwidth.
// ev receives Pebble's events (nil: they are only logged); opts.FS is the
// filesystem Pebble uses as is (nil: the real disk, with the store's
// modes).
func pebbleOptions(opts Options, log *slog.Logger, onFatal func(error) error, ev *events) *pebble.Options {
	cacheSize := opts.CacheSize
	if cacheSize <= 0 {
		cacheSize = defaultCacheSize
	}
	fs := opts.FS
	if fs == nil {
		fs = modeFS{vfs.Default}
	}
	if ev == nil {
		ev = newEvents(log, nil, time.Now)
	}
	memTable := opts.memTable
	if memTable == 0 {
		memTable = maxMemTable
	}
	po := &pebble.Options{
		FS:                 fs,
		CacheSize:          cacheSize,
		FormatMajorVersion: pebbleFormat,
		Merger:             newMerger(),
		Logger:             pebbleLogger{log: log, onFatal: onFatal, limit: ev.limit},
		EventListener:      ev.listener(),

		// Each acknowledged write is one synced batch. Pebble's commit
		// pipeline already groups the WAL syncs of concurrent batches into
		// one fsync, which is what makes durability cheap under concurrency;
		// no extra sync delay (WALMinSyncInterval) is added because it would
		// only lengthen the latency of a lone writer.
		//
		// A 64 MiB memtable (default 4 MiB) absorbs ~16k chunks between
		// flushes, so flushes are fewer and larger and an overwritten chunk
		// often never reaches an sstable at all. Measured on the 2-core
		// development VM (random 4 KiB writes over 1 GiB, 32 writers, 100k
		// writes): 4 MiB gave ~10k writes/s at ~95 CPU-µs per write, 16 MiB
		// 11-14k, 64 MiB ~16k at ~52 CPU-µs (the machine was shared, so
		// compare ratios, not absolutes). Smaller on small filesystems, so
		// that the WAL and flushes fit (see the space guard).
		MemTableSize:                uint64(memTable),
		MemTableStopWritesThreshold: 4,
		// L0 is allowed to grow a little more than the default before writes
		// stall; with 2 cores compactions fall behind briefly under bursts.
		L0CompactionThreshold: 4,
		L0StopWritesThreshold: 24,
		LBaseMaxBytes:         256 << 20,
	}
	// Block data goes to blob files at flush and is not rewritten by every
	// compaction (the sstables keep references): an LSM otherwise writes
	// each 4 KiB chunk again at every level it moves through.
	po.Experimental.ValueSeparationPolicy = func() pebble.ValueSeparationPolicy {
		return pebble.ValueSeparationPolicy{
			Enabled:               true,
			MinimumSize:           1024,
			MaxBlobReferenceDepth: 10,
			RewriteMinimumAge:     5 * time.Minute,
			TargetGarbageRatio:    0.2,
		}
	}
	for i := range po.Levels {
		po.Levels[i] = pebble.LevelOptions{
			// A chunk value is 4100 bytes, so the default 4 KiB block would
			// hold one entry and need one index entry per chunk. 32 KiB
			// blocks cut index size and per-block overhead 8x for scans
			// while a random 4 KiB read still costs one cached block.
			BlockSize: 32 << 10,
			// Writes check whether a chunk exists (for space accounting);
			// most first writes hit chunks that do not, which a bloom filter
			// answers without reading data blocks.
			FilterPolicy: bloom.FilterPolicy(10),
			// No block compression: volume data is often already compressed
			// or encrypted by the host, all-zero chunks are never stored, and
			// compressing every flushed and compacted block costs the CPU the
			// iSCSI target needs. Measured as above: the fastest profile
			// (MinLZ) cost ~20% more CPU per write and 15-25% throughput.
			Compression: func() *sstable.CompressionProfile { return sstable.NoCompression },
		}
	}
	if opts.tune != nil {
		opts.tune(po)
	}
	return po
}

// pebbleLogger adapts Pebble's logger to slog. Pebble's informational
// messages are debug-level for metro; its errors are rate-limited, since
// Pebble retries failed background work at once and would repeat them
// thousands of times a second.
type pebbleLogger struct {
	log     *slog.Logger
	onFatal func(error) error // marks the store failed (Store.fail); may be nil
	limit   *logLimiter
}

func (l pebbleLogger) Infof(format string, args ...any) {
	l.log.Debug(fmt.Sprintf(format, args...), "source", "pebble")
}

func (l pebbleLogger) Errorf(format string, args ...any) {
	if ok, suppressed := l.limit.allow("pebble error"); ok {
		l.log.Error(fmt.Sprintf(format, args...), "source", "pebble", "suppressed_since_last", suppressed)
	}
}

// Fatalf is called by Pebble when it cannot continue safely, notably when a
// WAL write or sync fails during a commit: the batch may be visible but not
// durable, and Pebble's commit pipeline is unusable afterwards. It marks the
// store failed, which refuses every later operation and calls
// Options.OnFatal: that stops the array process (fail-stop), whatever any
// panic recovery up the stack does. Pebble continues as if the commit
// succeeded if Fatalf returns, so if OnFatal returns (tests) it panics with
// the failure (an error wrapping ErrFailed). A restart recovers exactly the
// acknowledged writes, as after a power loss.
func (l pebbleLogger) Fatalf(format string, args ...any) {
	var err error = &pebbleFatal{msg: fmt.Sprintf(format, args...), args: args}
	l.log.Error(err.Error(), "source", "pebble", "fatal", true)
	if l.onFatal != nil {
		err = l.onFatal(err)
	}
	panic(err)
}

// pebbleFatal is a message Pebble gave Fatalf. It wraps the errors among
// the message's arguments, so that the cause (a disk error) stays testable.
type pebbleFatal struct {
	msg  string
	args []any
}

func (e *pebbleFatal) Error() string { return e.msg }

func (e *pebbleFatal) Unwrap() []error {
	var errs []error
	for _, a := range e.args {
		if err, ok := a.(error); ok {
			errs = append(errs, err)
		}
	}
	return errs
}

// logEvery is the period at which a repeated Pebble error is logged.
const logEvery = 10 * time.Second

// logLimiter lets one message of each kind through per logEvery and counts
// the others.
type logLimiter struct {
	now func() time.Time
	mu  struct {
		sync.Mutex
		next       map[string]time.Time // when the next message of a kind may go
		suppressed map[string]int       // messages held back since the last one
	}
}

func newLogLimiter(now func() time.Time) *logLimiter {
	l := &logLimiter{now: now}
	l.mu.next, l.mu.suppressed = map[string]time.Time{}, map[string]int{}
	return l
}

// allow reports whether a message of kind may be logged now, and how many
// were held back since the last one.
func (l *logLimiter) allow(kind string) (ok bool, suppressed int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	if now.Before(l.mu.next[kind]) {
		l.mu.suppressed[kind]++
		return false, 0
	}
	l.mu.next[kind] = now.Add(logEvery)
	suppressed = l.mu.suppressed[kind]
	l.mu.suppressed[kind] = 0
	return true, suppressed
}

// events is what the store makes of Pebble's events: log lines an operator
// should see (errors of background work rate-limited), free-space
// measurements for the space guard, and the write-stall gate.
type events struct {
	log   *slog.Logger
	limit *logLimiter
	space *spaceGuard // nil: no guard
	stall stallGate

	// fail marks the store failed (nil: nothing does) once flushes have
	// failed for maxStall; flushFailing is when the failures began (Unix
	// nanoseconds; 0: the last flush succeeded).
	fail         func(error) error
	maxStall     time.Duration
	flushFailing atomic.Int64
}

// flushed notes the end of a flush. Flushes only write (they read the
// memtable), so flushes that fail, without one succeeding, for maxStall
// mean a disk that refuses writes: Pebble would retry them forever while
// its memtables fill and every commit waits in the write stall, with the
// array's link up. The store fails then, as when a WAL write fails. A
// flush that failed for lack of space is left to the space guard.
func (e *events) flushed(err error) {
	if err == nil {
		e.flushFailing.Store(0)
		return
	}
	if e.fail == nil || errors.Is(err, syscall.ENOSPC) {
		return
	}
	now := e.limit.now().UnixNano()
	since := e.flushFailing.Load()
	if since == 0 {
		e.flushFailing.CompareAndSwap(0, now)
		return
	}
	if d := time.Duration(now - since); d >= e.maxStall {
		_ = e.fail(fmt.Errorf("store: every flush has failed for %s (the limit is %s): the disk refuses writes: %w",
			d.Round(time.Second), e.maxStall, err))
	}
}

func newEvents(log *slog.Logger, space *spaceGuard, now func() time.Time) *events {
	return &events{log: log, limit: newLogLimiter(now), space: space}
}

// errorf logs an error of Pebble's background work, rate-limited by kind.
func (e *events) errorf(kind string, err error) {
	if ok, suppressed := e.limit.allow(kind); ok {
		e.log.Error(kind, "err", err.Error(), "suppressed_since_last", suppressed)
	}
}

// poke asks the space guard for a measurement: files were written or
// deleted.
func (e *events) poke() {
	if e.space != nil {
		e.space.poke()
	}
}

func (e *events) listener() *pebble.EventListener {
	log := e.log
	return &pebble.EventListener{
		BackgroundError: func(err error) { e.errorf("pebble background error", err) },
		DataCorruption: func(info pebble.DataCorruptionInfo) {
			log.Error("pebble data corruption", "path", info.Path, "err", info.Details)
		},
		WriteStallBegin: func(info pebble.WriteStallBeginInfo) {
			e.stall.begin()
			log.Warn("write stall begins", "reason", info.Reason)
		},
		WriteStallEnd: func() {
			e.stall.end()
			log.Info("write stall ends")
		},
		FlushEnd: func(info pebble.FlushInfo) {
			if info.Err != nil {
				e.errorf("pebble flush failed", info.Err)
			}
			e.flushed(info.Err)
			e.poke()
		},
		CompactionEnd: func(info pebble.CompactionInfo) {
			if info.Err != nil {
				e.errorf("pebble compaction failed", info.Err)
			}
			e.poke()
		},
		TableDeleted: func(pebble.TableDeleteInfo) { e.poke() },
		WALDeleted:   func(pebble.WALDeleteInfo) { e.poke() },
		LowDiskSpace: func(info pebble.LowDiskSpaceInfo) {
			log.Warn("pebble: low disk space", "free", info.AvailBytes, "total", info.TotalBytes)
			e.poke()
		},
	}
}

// stallGate tracks Pebble's write stalls, so that a commit waits for one
// to end only as long as its context allows instead of blocking inside
// Pebble with its chunk stripes held.
type stallGate struct {
	ch      atomic.Pointer[chan struct{}] // closed when the stall ends; nil: none
	waiting atomic.Int32                  // commits waiting in wait
}

func (g *stallGate) begin() {
	ch := make(chan struct{})
	g.ch.CompareAndSwap(nil, &ch)
}

func (g *stallGate) end() {
	if ch := g.ch.Swap(nil); ch != nil {
		close(*ch)
	}
}

// wait returns once no write stall is under way, or ctx's error. A stall
// that begins just after wait returns still holds the commit in Pebble.
func (g *stallGate) wait(ctx context.Context) error {
	ch := g.ch.Load()
	if ch == nil {
		return nil
	}
	g.waiting.Add(1)
	defer g.waiting.Add(-1)
	select {
	case <-*ch:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("store: commit: a write stall lasts longer than the command may wait: %w", ctx.Err())
	}
}

// ctxErr returns ctx's error wrapped with what was being done.
func ctxErr(ctx context.Context, what string) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("store: %s: %w", what, err)
	}
	return nil
}
