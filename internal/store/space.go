package store

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// The space guard keeps the filesystem holding the store from filling up.
// Pebble cannot work on a full filesystem: a WAL write that fails stops the
// store (ErrFailed), and a flush that fails is retried at once, forever,
// while commits stall in Pebble holding the chunk stripes. So the store
// refuses writes, with ErrNoSpace (the host's thin-provisioning "space
// allocation failed"), well before that:
//
//   - Capacity. The effective capacity is the lesser of the configured one
//     (Options.Capacity) and what the filesystem can hold: a share
//     (Options.FilesystemShare, by default 40%) of the store's files plus
//     the free space, less the reserve. The reserve is room for Pebble's
//     own work: the WAL of the memtables not yet flushed (preallocated at
//     1.1 memtables each, up to 4 plus one kept for reuse) and their
//     flushes. The share is what each stored byte may cost on disk: chunk
//     values carry 32 bytes of checksums and their keys; blob files may
//     hold up to 20% of overwritten or unmapped values before Pebble
//     rewrites them (ValueSeparationPolicy.TargetGarbageRatio); and a
//     compaction that rewrites values (when too many blob files overlap,
//     MaxBlobReferenceDepth) writes them again before it deletes the old
//     ones: with random writes, as much as all the data. Measured on a
//     96 MiB tmpfs filled to a capacity of half of it, a compaction after
//     the fill took the free space from 49 MiB down to 5.5 MiB, below the
//     floor, for a moment: so data × (1 + 0.25 garbage + 1 rewrite) must
//     fit, hence 40%. A write that needs new chunks beyond the capacity
//     fails; overwrites and unmaps go on.
//   - Free space. Overwrites, Pebble's garbage and other files on the
//     filesystem still use space, so when less than the floor (half the
//     reserve) is free, every batch that stores chunk data is refused too.
//     Unmaps, volume deletions and metadata changes (configuration, which
//     deletions need) go on: they free space. (An unmap whose ends fall
//     inside chunks stores those two chunks, partly zeroed, so unmaps are
//     refused only below half the floor, where the ballast goes.) Pebble
//     would apply an unmap to the disk only once its memtable fills
//     (which, with writes refused, may be never), so while free space is
//     below the floor an unmap or a deletion has the volume's key range
//     compacted at once (flushing the memtable): a deleted volume's
//     files, and blob files left holding only unmapped values, are then
//     deleted; blob files still holding
//     live values too are rewritten by Pebble once they are
//     RewriteMinimumAge (5 minutes) old. Free space is measured
//     (statfs) every second, when Pebble reports a flush, compaction, file
//     deletion or low disk space, and at every write once it is near the
//     floor; between measurements every commit counts twice its size
//     against it (the WAL now, a flush later).
//   - Ballast. A file of a quarter of the reserve (EMERGENCY-BALLAST in the
//     store's directory, as CockroachDB keeps one) holds space back. It is
//     deleted when free space falls below half the floor, or when a write
//     of Pebble's meets a full filesystem anyway (that write is then
//     retried once), so flushes, compactions and unmaps can proceed; it is
//     made again once free space is back above the reserve and the ballast.
//
// Pebble's memtable (and with it the reserve) shrinks on small
// filesystems: 1/128 of the filesystem, between 1 MiB and 64 MiB, so the
// reserve, twelve memtables, stays under a tenth of any filesystem of
// 1.5 GiB or more (768 MiB from 8 GiB up).
//
// On a filesystem that cannot report its usage (Pebble's in-memory one,
// unless a test sets it) only the configured capacity applies.
const (
	// reserveMemtables is the reserve in memtables.
	reserveMemtables = 12
	// minMemTable, maxMemTable bound the memtable size.
	minMemTable = 1 << 20
	maxMemTable = 64 << 20
	// ballastName is the ballast file in the store's directory.
	ballastName = "EMERGENCY-BALLAST"
	// DefaultFilesystemShare is the default of Options.FilesystemShare.
	DefaultFilesystemShare = 40
	// lookEvery is the period of the free-space measurement.
	lookEvery = time.Second
)

// memTableSize returns the memtable size for a filesystem of total bytes
// (0: unknown).
func memTableSize(total uint64) int64 {
	if total == 0 {
		return maxMemTable
	}
	return min(max(int64(total/128), minMemTable), maxMemTable)
}

// diskUsage reports the usage of the filesystem holding dir, which may not
// exist yet (its nearest existing parent is asked).
func diskUsage(fs vfs.FS, dir string) (vfs.DiskUsage, error) {
	for {
		u, err := fs.GetDiskUsage(dir)
		if err == nil || !errors.Is(err, os.ErrNotExist) {
			return u, err
		}
		parent := fs.PathDir(dir)
		if parent == dir {
			return u, err
		}
		dir = parent
	}
}

// spaceGuard implements the free-space rules above.
type spaceGuard struct {
	fs      vfs.FS // the filesystem under the ballast handling
	dir     string
	log     *slog.Logger
	reserve int64
	floor   int64 // reserve / 2
	ballast int64 // ballast size: reserve / 4
	share   int64 // percent of the filesystem (less the reserve) data may fill
	// storeBytes returns the bytes of the store's files (Pebble's
	// metrics) and compact compacts a volume's key range; both set once
	// the DB is open.
	storeBytes func() int64
	compact    func(ctx context.Context, vol uint64) error

	// low is set while free space is below the floor.
	low atomic.Bool
	// reclaim holds the volumes unmapped or deleted while low, to compact.
	reclaim struct {
		sync.Mutex
		vols map[uint64]bool
	}

	// avail is the free space at the last measurement, less twice the
	// bytes committed since; capacity is the logical bytes the filesystem
	// can hold (-1: not known yet).
	avail    atomic.Int64
	capacity atomic.Int64

	kick chan struct{} // asks the loop for a measurement
	stop chan struct{}
	done chan struct{}

	// mu serialises measurements and guards the ballast state and what
	// has been logged.
	mu struct {
		sync.Mutex
		haveBallast bool
		low         bool // free space was below the floor at the last measurement
	}
}

// newSpaceGuard returns the guard for a store in dir on fs, or nil if fs
// cannot report its usage.
func newSpaceGuard(fs vfs.FS, dir string, memTable int64, share int, log *slog.Logger) *spaceGuard {
	if _, err := diskUsage(fs, dir); err != nil {
		return nil
	}
	if share <= 0 || share > 100 {
		share = DefaultFilesystemShare
	}
	g := &spaceGuard{fs: fs, dir: dir, log: log, reserve: reserveMemtables * memTable, share: int64(share),
		kick: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{})}
	g.floor, g.ballast = g.reserve/2, g.reserve/4
	g.avail.Store(math.MaxInt64)
	g.capacity.Store(-1)
	return g
}

// start measures, makes the ballast if there is room, and runs the
// measuring loop until close.
func (g *spaceGuard) start(storeBytes func() int64, compact func(ctx context.Context, vol uint64) error) {
	g.storeBytes, g.compact = storeBytes, compact
	if _, err := g.fs.Stat(g.ballastPath()); err == nil {
		g.mu.haveBallast = true
	}
	g.look()
	go g.loop()
}

func (g *spaceGuard) close() {
	close(g.stop)
	<-g.done
}

func (g *spaceGuard) ballastPath() string { return g.fs.PathJoin(g.dir, ballastName) }

func (g *spaceGuard) loop() {
	defer close(g.done)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-g.stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	t := time.NewTicker(lookEvery)
	defer t.Stop()
	for {
		select {
		case <-g.stop:
			return
		case <-t.C:
		case <-g.kick:
		}
		g.look()
		g.compactFreed(ctx)
	}
}

// freed notes that vol had data unmapped or deleted: while free space is
// below the floor, its key range is compacted so that the space comes back.
func (g *spaceGuard) freed(vol uint64) {
	if !g.low.Load() {
		return
	}
	g.reclaim.Lock()
	if g.reclaim.vols == nil {
		g.reclaim.vols = map[uint64]bool{}
	}
	g.reclaim.vols[vol] = true
	g.reclaim.Unlock()
	g.poke()
}

// compactFreed compacts the volumes freed() noted.
func (g *spaceGuard) compactFreed(ctx context.Context) {
	g.reclaim.Lock()
	vols := g.reclaim.vols
	g.reclaim.vols = nil
	g.reclaim.Unlock()
	for vol := range vols {
		if ctx.Err() != nil {
			return
		}
		if err := g.compact(ctx, vol); err != nil && ctx.Err() == nil {
			g.log.Warn("could not compact the space an unmap or deletion freed", "volume", vol, "err", err)
		}
		g.look()
	}
}

// poke asks for a measurement soon (Pebble's events call it).
func (g *spaceGuard) poke() {
	select {
	case g.kick <- struct{}{}:
	default:
	}
}

// look measures free space, updates the capacity and manages the ballast.
func (g *spaceGuard) look() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.lookLocked(true)
}

// lookLocked is look with g.mu held; a writer's measurement (admit) only
// deletes the ballast, never makes it (which may mean writing it).
func (g *spaceGuard) lookLocked(makeBallast bool) {
	u, err := g.fs.GetDiskUsage(g.dir)
	if err != nil {
		return
	}
	avail := clampAvail(u.AvailBytes)
	if g.mu.haveBallast && avail < g.floor/2 {
		g.dropBallastLocked("free space is nearly exhausted")
		if u, err = g.fs.GetDiskUsage(g.dir); err == nil {
			avail = clampAvail(u.AvailBytes)
		}
	}
	if makeBallast && !g.mu.haveBallast && avail >= g.reserve+g.ballast {
		if err := g.makeBallast(); err != nil {
			g.log.Warn("could not make the emergency ballast file", "path", g.ballastPath(), "err", err)
		} else {
			g.mu.haveBallast = true
			avail -= g.ballast
		}
	}
	g.avail.Store(avail)
	held := int64(0)
	if g.mu.haveBallast {
		held = g.ballast
	}
	if g.storeBytes != nil {
		// The store's bytes are at most 2^61 (reported beyond that they
		// are not real) and the free space at most 2^62, so the sum
		// cannot wrap around.
		room := (min(g.storeBytes(), 1<<61) + avail + held - g.reserve) / 100 * g.share
		g.capacity.Store(max(room, 1))
	}
	if low := avail < g.floor; low != g.mu.low {
		g.mu.low = low
		g.low.Store(low)
		if low {
			g.log.Warn("filesystem nearly full: refusing writes of data until space is freed (unmap, delete volumes or grow the filesystem)",
				"dir", g.dir, "free", avail, "floor", g.floor)
		} else {
			g.log.Info("free space back above the floor: writes accepted again", "dir", g.dir, "free", avail)
		}
	}
}

// clampAvail turns a filesystem's free bytes into an int64 small enough
// that the capacity's sums cannot overflow (some filesystems report more
// than an int64 holds).
func clampAvail(avail uint64) int64 { return int64(min(avail, 1<<62)) }

// dropBallastLocked deletes the ballast (g.mu held).
func (g *spaceGuard) dropBallastLocked(why string) {
	if err := g.fs.Remove(g.ballastPath()); err != nil && !errors.Is(err, os.ErrNotExist) {
		g.log.Error("could not delete the emergency ballast file", "path", g.ballastPath(), "err", err)
		return
	}
	g.mu.haveBallast = false
	g.log.Warn("deleted the emergency ballast file so that Pebble's flushes, compactions and unmaps can proceed: "+why,
		"path", g.ballastPath(), "bytes", g.ballast)
}

// onDiskFull is called (by vfs.OnDiskFull) when a write of Pebble's met a
// full filesystem; the write is retried once when it returns.
func (g *spaceGuard) onDiskFull() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.mu.haveBallast {
		g.dropBallastLocked("a write met a full filesystem")
	}
	g.avail.Store(0)
	g.poke()
}

// makeBallast writes the ballast file: allocated blocks where the
// filesystem can preallocate, zeros otherwise.
func (g *spaceGuard) makeBallast() error {
	tmp := g.ballastPath() + ".new"
	f, err := g.fs.Create(tmp, vfs.WriteCategoryUnspecified)
	if err != nil {
		return err
	}
	if err = f.Preallocate(0, g.ballast); err != nil { // no preallocation: write zeros
		zeros := make([]byte, 1<<20)
		err = nil
		for off := int64(0); off < g.ballast && err == nil; off += int64(len(zeros)) {
			_, err = f.Write(zeros[:min(int64(len(zeros)), g.ballast-off)])
		}
	}
	if err == nil {
		err = f.Sync()
	}
	if err = errors.Join(err, f.Close()); err == nil {
		err = g.fs.Rename(tmp, g.ballastPath())
	}
	if err != nil {
		_ = g.fs.Remove(tmp)
	}
	return err
}

// admit checks that a batch that stores chunk data, of n bytes, leaves
// the floor free; a batch of unmaps only (which stores the chunks its
// unmaps end in, partly zeroed, and frees the rest) half the floor, so
// that hosts can free space with unmaps that are not chunk-aligned. Near
// the floor it measures again before refusing.
func (g *spaceGuard) admit(n int64, unmaps bool) error {
	floor := g.floor
	if unmaps {
		floor /= 2
	}
	if g.avail.Load()-2*n >= floor {
		return nil
	}
	if g.mu.TryLock() { // else another writer is measuring: use its result
		g.lookLocked(false)
		g.mu.Unlock()
	}
	if avail := g.avail.Load(); avail-2*n < floor {
		return fmt.Errorf("store: the filesystem holding the store has %d bytes free, less than the %d kept for the store's own work: free space (unmap, delete volumes or grow the filesystem): %w",
			max(avail, 0), floor, ErrNoSpace)
	}
	return nil
}

// consumed counts a committed batch of n bytes against the free space.
func (g *spaceGuard) consumed(n int64) { g.avail.Add(-2 * n) }
