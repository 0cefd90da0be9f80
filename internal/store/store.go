package store

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
)

const (
	// BlockSize is the logical block size volumes are addressed in.
	BlockSize = 512
	// ChunkSize is the unit of storage, checksumming and space accounting
	// (the physical block size reported to hosts).
	ChunkSize = 4096
)

// Sentinel errors, matched with errors.Is.
var (
	// ErrNoSpace: the write needs chunks beyond the capacity. Nothing was
	// changed.
	ErrNoSpace = errors.New("store: out of space")
	// ErrCorrupt: stored data cannot be read back intact: it fails its
	// checksum, Pebble found the file holding it damaged, or the disk
	// failed to read it. Data errors are *CorruptError (with the volume
	// and offset of the first bad block).
	ErrCorrupt = errors.New("store: data corrupt")
	// ErrClosed: the store has been closed.
	ErrClosed = errors.New("store: closed")
	// ErrInvalid: offset or length not a multiple of BlockSize, negative, or
	// overflowing.
	ErrInvalid = errors.New("store: invalid argument")
	// ErrFormat: the directory holds a store of an unknown (newer) format or
	// something that is not a metro store.
	ErrFormat = errors.New("store: unsupported on-disk format")
	// ErrMiscompare: CompareAndWrite found different data (see
	// MiscompareError for where).
	ErrMiscompare = errors.New("store: miscompare")
	// ErrFailed: a change could not be made durable (the disk refused a
	// WAL write or sync, or Pebble hit an error it cannot continue from),
	// so what Pebble holds in memory may be ahead of the disk: the store
	// refuses every later read and write, and the process should stop
	// (Options.OnFatal); a restart recovers exactly what was acknowledged,
	// as after a power loss.
	ErrFailed = errors.New("store: failed")
)

// CorruptError reports volume data that cannot be read back intact (see
// ErrCorrupt, which it matches with errors.Is). Offset is the byte offset
// in the volume of the first block the operation needed that is damaged or
// unreadable (a multiple of BlockSize): what SCSI reports as the LBA of an
// unrecovered read error.
type CorruptError struct {
	Volume uint64
	Offset int64
	// Err says what is wrong: a checksum mismatch (wrapping ErrCorrupt),
	// damage Pebble detected, or the disk's read error.
	Err error
}

func (e *CorruptError) Error() string {
	return fmt.Sprintf("store: volume %d: block at byte %d (LBA %d) cannot be read back: %v",
		e.Volume, e.Offset, e.Offset/BlockSize, e.Err)
}

// Is makes errors.Is(err, ErrCorrupt) true.
func (e *CorruptError) Is(target error) bool { return target == ErrCorrupt }

func (e *CorruptError) Unwrap() error { return e.Err }

// errBatchDone is returned when a Batch is used after Commit.
var errBatchDone = errors.New("store: batch already committed")

// Options configures Open.
type Options struct {
	// FS is the filesystem; nil means the real disk.
	FS vfs.FS
	// Capacity is the array's usable size in bytes; 0 means unlimited.
	// The effective capacity is the lesser of this and what the
	// filesystem can hold (see the space guard in space.go).
	Capacity uint64
	// FilesystemShare is the percentage of the filesystem, less the
	// store's reserve, that volume data may fill (1-100; 0 means
	// DefaultFilesystemShare, 40): the rest is room for Pebble's garbage
	// and compactions (see space.go). Raise it only on filesystems whose
	// workload is known to need less.
	FilesystemShare int
	// Logger receives the store's and Pebble's messages; nil discards them.
	Logger *slog.Logger
	// CacheSize is Pebble's block cache in bytes; 0 means 256 MiB.
	CacheSize int64

	// MaxDiskStall is how long one disk operation of Pebble's (a WAL write
	// or sync, a flush's, a file's creation) may go on before the store
	// fails as if the operation had failed (0 means DefaultMaxDiskStall,
	// 20 s): a disk that stops answering returns no error, and commits
	// would wait for it forever with their chunk stripes held while the
	// array's link stays up. Operations slower than the lesser of 5 s and
	// this are logged. Flushes that keep failing (other than for lack of
	// space) for as long also fail the store (see events.flushed).
	MaxDiskStall time.Duration

	// OnFatal is called once, when the store fails, with an error
	// wrapping ErrFailed and the cause. The store is unusable from then on; the caller should stop
	// the process at once (an array exits, so its peer sees the link drop
	// and takes over) and must not count on the operation that failed
	// returning: when Pebble itself cannot continue, that operation's
	// goroutine panics after OnFatal returns. OnFatal must not call back
	// into the store. nil: the store only fails.
	OnFatal func(error)
	// FaultTrigger is a fault-injection hook for tests of a whole array
	// process, off when empty and never set in production: once a file
	// exists at this path, every write and sync of Pebble's WAL fails with
	// an I/O error, as on a failing disk (see faultFS).
	FaultTrigger string

	// tune, when set (by tests), adjusts the Pebble options last.
	tune func(*pebble.Options)
	// memTable is Pebble's memtable size (0: the largest); Open sets it
	// from the filesystem's size.
	memTable int64
	// now is the clock (time.Now when nil); tests set it.
	now func() time.Time
}

const defaultCacheSize = 256 << 20

// DefaultMaxDiskStall is the default of Options.MaxDiskStall: long enough
// for a busy disk's slowest sync, short enough for the peer to take over
// before hosts time out their commands.
const DefaultMaxDiskStall = 20 * time.Second

// diskSlowLog is how long a disk operation may take before it is logged.
const diskSlowLog = 5 * time.Second

// Store is the array's local block store and metadata store: one Pebble DB.
// It is safe for concurrent use.
type Store struct {
	dir string
	db  *pebble.DB
	log *slog.Logger
	crc *crc32.Table

	// stripes serialise writers of the same chunk: a batch holds the stripes
	// of every chunk it touches from its reads (existence check,
	// read-modify-write) until its commit and bitmap and counter updates are
	// done.
	// Stripes are always taken in ascending index order.
	stripes [numStripes]sync.Mutex

	// used is the array-wide number of bytes in mapped chunks plus the
	// reservations of batches in flight; it never exceeds capacity because of
	// a write (reserve checks and adds atomically).
	used     atomic.Int64
	capacity atomic.Uint64

	// failure is the first commit error; once set, every operation is
	// refused. onFatal is Options.OnFatal.
	failure atomic.Pointer[error]
	onFatal func(error)

	// space keeps the filesystem from filling up (nil if it cannot report
	// its usage); ev is what the store makes of Pebble's events.
	space *spaceGuard
	ev    *events
	// health watches Pebble's disk operations for stalls (closed by
	// Close).
	health io.Closer

	// life is held shared by every operation that uses db and exclusively by
	// Close, so Close waits for operations in flight.
	life struct {
		sync.RWMutex
		closed bool // set once by Close
	}

	// mu guards the volume handles.
	mu struct {
		sync.Mutex
		vols map[uint64]*Volume // every volume ever mapped or asked for
	}
}

// Volume is the data handle of one volume. Handles are shared: Store.Volume
// returns the same *Volume for the same id.
type Volume struct {
	s  *Store
	id uint64
	// alloc says which chunks are mapped and used counts their bytes; both
	// change only under the stripes of the chunks concerned, after the
	// commit that made the change durable.
	alloc allocMap
	used  atomic.Int64
}

// Open opens (creating if needed) the store in dir.
func Open(dir string, opts Options) (*Store, error) {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("component", "store")
	s := &Store{dir: dir, log: log, crc: castagnoli(), onFatal: opts.OnFatal}
	if opts.now == nil {
		opts.now = time.Now
	}
	base := opts.FS
	if base == nil {
		base = modeFS{vfs.Default}
		if err := tightenModes(dir); err != nil {
			return nil, err
		}
	}
	var total uint64
	if u, err := diskUsage(base, dir); err == nil {
		total = u.TotalBytes
	}
	opts.memTable = memTableSize(total)
	s.space = newSpaceGuard(base, dir, opts.memTable, opts.FilesystemShare, log)
	s.ev = newEvents(log, s.space, opts.now)
	fs := base
	if s.space != nil {
		fs = vfs.OnDiskFull(fs, s.space.onDiskFull)
	}
	if opts.FaultTrigger != "" {
		fs = faultFS(fs, opts.FaultTrigger)
	}
	maxStall := opts.MaxDiskStall
	if maxStall <= 0 {
		maxStall = DefaultMaxDiskStall
	}
	fs, s.health = vfs.WithDiskHealthChecks(fs, min(diskSlowLog, maxStall), nil,
		func(info vfs.DiskSlowInfo) { s.diskSlow(info, maxStall) })
	s.ev.fail, s.ev.maxStall = s.fail, maxStall
	opts.FS = fs
	po := pebbleOptions(opts, log, s.fail, s.ev)
	version, inFile, err := readFormat(po.FS, dir, po)
	if err != nil {
		return nil, errors.Join(err, s.health.Close())
	}
	db, err := pebble.Open(dir, po)
	if err != nil {
		return nil, errors.Join(fmt.Errorf("store: open %s: %w", dir, err), s.health.Close())
	}
	s.db = db
	s.capacity.Store(opts.Capacity)
	s.mu.vols = make(map[uint64]*Volume)
	if err := s.settleFormat(po.FS, version, inFile); err != nil {
		return nil, errors.Join(err, closeDB(db), s.health.Close())
	}
	if err := s.loadBitmaps(); err != nil {
		return nil, errors.Join(err, closeDB(db), s.health.Close())
	}
	if s.space != nil {
		s.space.start(func() int64 { return storeFileBytes(db.Metrics()) },
			func(ctx context.Context, vol uint64) error {
				start, end := volumeKeys(prefixChunk, vol)
				return db.Compact(ctx, start, end, false)
			})
	}
	used, capacity := s.Usage()
	log.Info("store opened", "dir", dir, "format", FormatVersion,
		"used", used, "capacity", capacity)
	if capacity != 0 && used > capacity {
		// Typically a store filled before the filesystem's share applied.
		log.Warn("volume data already exceeds the effective capacity: writes that need new chunks get out of space (overwrites and unmaps go on); grow the filesystem, free space on it, or raise the filesystem share (see internal/store/space.go)",
			"dir", dir, "used", used, "capacity", capacity, "configured_capacity", opts.Capacity)
	}
	return s, nil
}

func closeDB(db *pebble.DB) error {
	if err := db.Close(); err != nil {
		return fmt.Errorf("store: close: %w", err)
	}
	return nil
}

// isEmpty reports whether db holds no key at all.
func isEmpty(db *pebble.DB) (bool, error) {
	it, err := db.NewIter(nil)
	if err != nil {
		return false, fmt.Errorf("look for keys: %w", err)
	}
	empty := !it.First()
	if err := it.Close(); err != nil {
		return false, fmt.Errorf("look for keys: %w", err)
	}
	return empty, nil
}

// loadBitmaps reads every volume's allocation bitmap into memory and
// counts the used bytes.
func (s *Store) loadBitmaps() error {
	it, err := s.db.NewIter(&pebble.IterOptions{
		LowerBound: []byte{prefixAlloc},
		UpperBound: []byte{prefixAlloc + 1},
	})
	if err != nil {
		return fmt.Errorf("store: load bitmaps: %w", err)
	}
	var total int64
	for valid := it.First(); valid; valid = it.Next() {
		k := it.Key()
		if len(k) != allocKeyLen {
			return errors.Join(fmt.Errorf("store: bitmap key %x: %w", k, ErrCorrupt), it.Close())
		}
		val, err := it.ValueAndErr()
		if err != nil {
			return errors.Join(fmt.Errorf("store: load bitmaps: %w", err), it.Close())
		}
		op, err := decodePageOp(val)
		if err != nil {
			return errors.Join(fmt.Errorf("store: bitmap %x: %w", k, err), it.Close())
		}
		v := s.volume(binary.BigEndian.Uint64(k[1:9]))
		n := v.alloc.load(binary.BigEndian.Uint64(k[9:17]), &op) * ChunkSize
		v.used.Add(n)
		total += n
	}
	if err := it.Close(); err != nil {
		return fmt.Errorf("store: load bitmaps: %w", err)
	}
	s.used.Store(total)
	return nil
}

// enter marks the start of an operation that uses the DB; leave marks its
// end. enter fails with ErrClosed after Close and with ErrFailed once the
// store has failed: what Pebble would serve may never have been durable.
func (s *Store) enter() error {
	s.life.RLock()
	if s.life.closed {
		s.life.RUnlock()
		return ErrClosed
	}
	if err := s.healthy(); err != nil {
		s.life.RUnlock()
		return err
	}
	return nil
}

func (s *Store) leave() { s.life.RUnlock() }

// fail records a commit error after which the store's memory may disagree
// with the disk (Pebble may have applied the batch without making it
// durable), calls OnFatal the first time, and returns the error to give the
// caller (wrapping ErrFailed).
func (s *Store) fail(err error) error {
	failed := fmt.Errorf("%w: %w", ErrFailed, err)
	if s.failure.CompareAndSwap(nil, &err) {
		s.log.Error("store failed: a change could not be made durable; refusing every read and write until restart", "err", err)
		if s.onFatal != nil {
			s.onFatal(failed)
		}
	}
	return failed
}

// healthy returns an error wrapping ErrFailed after a failed commit.
func (s *Store) healthy() error {
	if p := s.failure.Load(); p != nil {
		return fmt.Errorf("%w: an earlier change could not be made durable (%w); restart the array to recover", ErrFailed, *p)
	}
	return nil
}

// Close waits for operations in flight and closes the DB. Everything
// acknowledged is already durable; Close only releases resources.
func (s *Store) Close() error {
	s.life.Lock()
	defer s.life.Unlock()
	if s.life.closed {
		return ErrClosed
	}
	s.life.closed = true
	if s.space != nil {
		s.space.close()
	}
	return errors.Join(closeDB(s.db), s.health.Close())
}

// diskSlow is told of a disk operation of Pebble's that has gone on for
// a while: it is logged, and once it has gone on for maxStall the disk is
// taken as failed, like one that returned an error: the store fails.
func (s *Store) diskSlow(info vfs.DiskSlowInfo, maxStall time.Duration) {
	if info.Duration >= maxStall {
		_ = s.fail(fmt.Errorf("store: the disk has not completed a %s of %s for %s (the limit is %s): it is stalled",
			info.OpType, info.Path, info.Duration.Round(time.Second), maxStall))
		return
	}
	if ok, suppressed := s.ev.limit.allow("disk slow"); ok {
		s.log.Warn("disk slow", "path", info.Path, "op", info.OpType.String(), "duration", info.Duration,
			"suppressed_since_last", suppressed)
	}
}

// Usage returns the array-wide used bytes (mapped chunks, including
// reservations of writes in flight) and the effective capacity: the lesser
// of the configured one and what the filesystem can hold (0: unlimited).
func (s *Store) Usage() (used, capacity uint64) {
	return uint64(max(s.used.Load(), 0)), s.effectiveCapacity()
}

// storeFileBytes is the bytes of the store's files by Pebble's metrics.
// Pebble's count of compaction output in progress goes below zero as
// compactions finish, and DiskSpaceUsage adds it as an unsigned number,
// which wraps the total around to about 2^64: a count below zero is left
// out. The result is at most 2^61, so that sums with it cannot overflow.
func storeFileBytes(m *pebble.Metrics) int64 {
	u := m.DiskSpaceUsage()
	if in := m.Compact.InProgressBytes; in < 0 {
		u -= uint64(in) // undoes the wrapped addition
	}
	return int64(min(u, 1<<61))
}

// effectiveCapacity is the lesser of the configured capacity and what the
// filesystem can hold (0: unlimited).
func (s *Store) effectiveCapacity() uint64 {
	c := s.capacity.Load()
	if s.space != nil {
		if fs := s.space.capacity.Load(); fs > 0 && (c == 0 || uint64(fs) < c) {
			c = uint64(fs)
		}
	}
	return c
}

// Sync makes every write committed so far durable (those made with
// WriteAtNoSync included).
func (s *Store) Sync() error {
	if err := s.enter(); err != nil {
		return err
	}
	defer s.leave()
	if err := s.db.LogData(nil, pebble.Sync); err != nil {
		return s.fail(fmt.Errorf("store: sync: %w", err))
	}
	return nil
}

// SetCapacity changes the capacity (0: unlimited). Lowering it below the
// used bytes makes writes that need new chunks fail with ErrNoSpace until
// space is freed; nothing stored is affected.
func (s *Store) SetCapacity(bytes uint64) { s.capacity.Store(bytes) }

// reserve adds n (> 0) bytes to the used count if they fit in the capacity.
func (s *Store) reserve(n int64) (ok bool, used int64, capacity uint64) {
	for {
		cur := s.used.Load()
		capacity = s.effectiveCapacity()
		if capacity != 0 && cur+n > int64(min(capacity, 1<<62)) {
			return false, cur, capacity
		}
		if s.used.CompareAndSwap(cur, cur+n) {
			return true, cur + n, capacity
		}
	}
}

// Volume returns the data handle for volume id. Ids are chosen by the
// caller; a volume needs no creation: it starts empty (all zeros).
func (s *Store) Volume(id uint64) *Volume { return s.volume(id) }

func (s *Store) volume(id uint64) *Volume {
	s.mu.Lock()
	defer s.mu.Unlock()
	v := s.mu.vols[id]
	if v == nil {
		v = &Volume{s: s, id: id}
		s.mu.vols[id] = v
	}
	return v
}

// ID returns the volume's id.
func (v *Volume) ID() uint64 { return v.id }

// Used returns the bytes of the volume's mapped chunks.
func (v *Volume) Used() uint64 { return uint64(max(v.used.Load(), 0)) }

// DeleteVolume durably drops all of volume id's data (eradication) with
// range deletions of its chunks and allocation bitmap. Writes to the volume wait
// while it runs; afterwards the volume reads as zeros and may be written
// again, though callers never reuse ids.
func (s *Store) DeleteVolume(id uint64) error {
	if err := s.enter(); err != nil {
		return err
	}
	defer s.leave()
	v := s.volume(id)
	// All stripes: no writer of this volume is between its existence check
	// and its counter update while the range and counter are dropped.
	var all stripeSet
	all.fill()
	s.lockStripes(&all)
	defer s.unlockStripes(&all)

	if err := s.healthy(); err != nil {
		return err
	}
	b := s.db.NewBatch()
	defer b.Close()
	for _, prefix := range []byte{prefixChunk, prefixAlloc} {
		start, end := volumeKeys(prefix, id)
		if err := b.DeleteRange(start, end, nil); err != nil {
			return fmt.Errorf("store: delete volume %d: %w", id, err)
		}
	}
	if err := b.Commit(pebble.Sync); err != nil {
		return s.fail(fmt.Errorf("store: delete volume %d: commit: %w", id, err))
	}
	s.consumed(b)
	if s.space != nil {
		s.space.freed(id)
	}
	v.alloc.reset()
	freed := v.used.Swap(0)
	s.used.Add(-freed)
	s.log.Info("volume data deleted", "volume", id, "freed", freed)
	return nil
}
