package mediator

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/metro-storage/metro/internal/fileperm"
)

// The files of a mediator's data directory that FileBackend owns.
const (
	// StateFile holds the state: id, generation, every pod's record.
	StateFile = "state.json"
	// LockFile is locked (flock) by the process using the directory.
	LockFile = "lock"
)

// stateFormat is the version of the state file's layout.
const stateFormat = 1

// DefaultMaxPods is the default limit of pods a FileBackend keeps a
// record for: 100000 records make a state file of about 10 MiB, which is
// rewritten (once per group of concurrent changes) at every change.
const DefaultMaxPods = 100000

// FileOptions configure a FileBackend.
type FileOptions struct {
	// MaxPods limits the pods with a record (0: DefaultMaxPods).
	MaxPods int
}

// FileBackend keeps the mediator's state in one JSON file of its data
// directory, rewritten whole (temporary file, fsync, rename, fsync of the
// directory) before every answer that depends on a change; concurrent
// changes share one write. The directory is locked while the backend is
// open, so that two processes never use it at once.
type FileBackend struct {
	path    string
	maxPods int
	lock    *os.File
	sync    *groupSync
	// mu guards the state in memory, which may be ahead of the file by
	// changes whose answers wait for the next write.
	mu struct {
		sync.Mutex
		st     fileState
		closed bool
	}
}

// fileState is the state file's content.
type fileState struct {
	Format          int               `json:"format"`
	ID              string            `json:"mediator"`
	Generation      uint64            `json:"generation"`
	ResetGeneration uint64            `json:"reset_generation,omitempty"`
	Pods            map[string]Record `json:"pods"`
}

var _ Backend = (*FileBackend)(nil)

// OpenFile opens (or, the first time, creates) the state in dir and
// starts: the generation grows by StartStep and is synced before it
// returns. dir is made 0700 and the state file 0600.
func OpenFile(dir string, opts FileOptions) (*FileBackend, error) {
	if opts.MaxPods <= 0 {
		opts.MaxPods = DefaultMaxPods
	}
	if _, err := SecureDir(dir); err != nil {
		return nil, fmt.Errorf("mediator data dir: %w", err)
	}
	lock, err := lockDir(dir)
	if err != nil {
		return nil, err
	}
	path := filepath.Join(dir, StateFile)
	st, ok, err := loadState(path)
	if err != nil {
		lock.Close()
		return nil, err
	}
	if !ok {
		st = fileState{Format: stateFormat, ID: newID(), Pods: map[string]Record{}}
	}
	st.Generation += StartStep
	data, _ := json.Marshal(st)
	if err := WriteFileDurable(path, data); err != nil {
		lock.Close()
		return nil, fmt.Errorf("mediator state %s: %w", path, err)
	}
	b := &FileBackend{path: path, maxPods: opts.MaxPods, lock: lock, sync: newGroupSync(st.Generation)}
	b.mu.st = st
	return b, nil
}

// Elect implements Backend.
func (b *FileBackend) Elect(ctx context.Context, req ElectRequest) (ElectResult, uint64, error) {
	if err := req.Validate(); err != nil {
		return ElectResult{}, 0, err
	}
	b.mu.Lock()
	if err := b.usable(); err != nil {
		b.mu.Unlock()
		return ElectResult{}, 0, err
	}
	stored, known := b.mu.st.Pods[req.Pod]
	next, changed, res := Decide(stored, req)
	if changed {
		if !known && len(b.mu.st.Pods) >= b.maxPods {
			b.mu.Unlock()
			return ElectResult{}, 0, fmt.Errorf("%w: it holds the records of %d pods, its limit (--max-pods)", ErrFull, b.maxPods)
		}
		b.mu.st.Pods[req.Pod] = next
		b.mu.st.Generation += ChangeStep
	}
	gen := b.mu.st.Generation
	b.mu.Unlock()
	if err := b.sync.wait(ctx, gen, b.snapshot, b.write); err != nil {
		return ElectResult{}, 0, err
	}
	return res, gen, nil
}

// Info implements Backend.
func (b *FileBackend) Info(ctx context.Context) (Info, error) {
	b.mu.Lock()
	if err := b.usable(); err != nil {
		b.mu.Unlock()
		return Info{}, err
	}
	info := Info{ID: b.mu.st.ID, Generation: b.mu.st.Generation, ResetGeneration: b.mu.st.ResetGeneration, Pods: len(b.mu.st.Pods)}
	b.mu.Unlock()
	return info, b.sync.wait(ctx, info.Generation, b.snapshot, b.write)
}

// Close implements Backend: it waits for a write in progress and unlocks
// the directory.
func (b *FileBackend) Close() error {
	b.mu.Lock()
	if b.mu.closed {
		b.mu.Unlock()
		return nil
	}
	b.mu.closed = true
	b.mu.Unlock()
	b.sync.slot <- struct{}{}
	return b.lock.Close()
}

// usable reports why the backend cannot answer (b.mu held).
func (b *FileBackend) usable() error {
	if b.mu.closed {
		return ErrClosed
	}
	return b.sync.failed()
}

func (b *FileBackend) snapshot() ([]byte, uint64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	data, _ := json.Marshal(b.mu.st)
	return data, b.mu.st.Generation
}

func (b *FileBackend) write(data []byte) error { return WriteFileDurable(b.path, data) }

// ResetGeneration raises the generation of the stopped mediator whose
// data directory is dir above above, and records it as the reset
// generation, so that arrays which saw generations up to above and found
// the mediator rolled back accept it again at its next start. It returns
// the generation before and after. Nothing else changes: the pods'
// records stay as they are.
func ResetGeneration(dir string, above uint64) (before, after uint64, err error) {
	if above >= 1<<62 {
		return 0, 0, fmt.Errorf("--above %d: too large for a generation", above)
	}
	lock, err := lockDir(dir)
	if err != nil {
		return 0, 0, err
	}
	defer lock.Close()
	path := filepath.Join(dir, StateFile)
	st, ok, err := loadState(path)
	if err != nil {
		return 0, 0, err
	}
	if !ok {
		return 0, 0, fmt.Errorf("%s: no mediator state there: give the data directory of the mediator (--data-dir)", dir)
	}
	before = st.Generation
	st.Generation = max(st.Generation, above+1)
	st.ResetGeneration = st.Generation
	data, _ := json.Marshal(st)
	if err := WriteFileDurable(path, data); err != nil {
		return 0, 0, fmt.Errorf("mediator state %s: %w", path, err)
	}
	return before, st.Generation, nil
}

// ReadInfo reads the state of a mediator's data directory without opening
// it (the mediator may be running).
func ReadInfo(dir string) (Info, error) {
	st, ok, err := loadState(filepath.Join(dir, StateFile))
	if err != nil {
		return Info{}, err
	}
	if !ok {
		return Info{}, fmt.Errorf("%s: no mediator state there", dir)
	}
	return Info{ID: st.ID, Generation: st.Generation, ResetGeneration: st.ResetGeneration, Pods: len(st.Pods)}, nil
}

// lockDir takes the data directory's lock, or says who holds it.
func lockDir(dir string) (*os.File, error) {
	path := filepath.Join(dir, LockFile)
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, fileperm.File)
	if err != nil {
		return nil, fmt.Errorf("mediator data dir: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("mediator data dir %s is in use by another process (a running mediator?): stop it first", dir)
		}
		return nil, fmt.Errorf("mediator data dir: lock %s: %w", path, err)
	}
	return f, nil
}

// loadState reads and checks the state file; ok is false when there is
// none yet.
func loadState(path string) (st fileState, ok bool, err error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return st, false, nil
	}
	if err != nil {
		return st, false, fmt.Errorf("mediator state: %w", err)
	}
	bad := func(format string, args ...any) error {
		return fmt.Errorf("mediator state %s is damaged: %s: restore the data directory from a copy (see README, \"The mediator\")",
			path, fmt.Sprintf(format, args...))
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&st); err != nil {
		return st, false, bad("%v", err)
	}
	if st.Format != stateFormat {
		return st, false, bad("format %d, this release reads format %d", st.Format, stateFormat)
	}
	if len(st.ID) != 32 || strings.Trim(st.ID, "0123456789abcdef") != "" {
		return st, false, bad("mediator id %q", st.ID)
	}
	if st.Pods == nil {
		st.Pods = map[string]Record{}
	}
	for pod, r := range st.Pods {
		if checkID("pod", pod) != nil || checkID("array", r.Winner) != nil || r.Epoch < 2 {
			return st, false, bad("pod %q: record %+v", pod, r)
		}
	}
	return st, true, nil
}

// newID returns 128 random bits in hex.
func newID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand never fails on Linux
	return hex.EncodeToString(b[:])
}
