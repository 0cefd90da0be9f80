package mediator

import (
	"context"
	"fmt"
	"os"
	"sync"

	"github.com/metro-storage/metro/internal/fileperm"
)

// groupSync makes successive versions of some state durable, one write at
// a time, so that callers waiting at once share one write (group commit):
// the mediator's answers and an array's highest generations seen each
// wait for the version they depend on, and one fsync serves all the
// requests that arrived while the previous one ran.
type groupSync struct {
	// slot is held by the one caller writing.
	slot chan struct{}
	mu   struct {
		sync.Mutex
		durable uint64 // the last version written
		err     error  // the first failed write; sticky
	}
}

func newGroupSync(durable uint64) *groupSync {
	g := &groupSync{slot: make(chan struct{}, 1)}
	g.mu.durable = durable
	return g
}

// wait returns once version v is durable, writing it if nobody else is:
// snapshot returns the current state and its version (at least v) and
// write makes it durable. A failed write fails every later wait.
func (g *groupSync) wait(ctx context.Context, v uint64, snapshot func() ([]byte, uint64), write func([]byte) error) error {
	for {
		if done, err := g.check(v); done || err != nil {
			return err
		}
		select {
		case g.slot <- struct{}{}:
		case <-ctx.Done():
			return ctx.Err()
		}
		if done, err := g.check(v); done || err != nil {
			<-g.slot
			return err
		}
		data, ver := snapshot()
		err := write(data)
		g.mu.Lock()
		if err != nil && g.mu.err == nil {
			g.mu.err = fmt.Errorf("%w: %w", ErrFailed, err)
		} else if err == nil && ver > g.mu.durable {
			g.mu.durable = ver
		}
		g.mu.Unlock()
		<-g.slot
	}
}

// check reports whether version v is durable, or the write failure.
func (g *groupSync) check(v uint64) (bool, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.mu.err != nil {
		return false, g.mu.err
	}
	return g.mu.durable >= v, nil
}

// failed returns the sticky write failure, if any.
func (g *groupSync) failed() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.mu.err
}

// WriteFileDurable replaces path with data durably, with mode
// fileperm.File (fileperm.WriteFile).
func WriteFileDurable(path string, data []byte) error {
	return fileperm.WriteFile(path, data, fileperm.File)
}

// SecureDir creates dir with mode fileperm.Dir, or takes group and other
// permissions away from an existing one; it reports whether it did so.
func SecureDir(dir string) (restricted bool, err error) {
	if err := os.MkdirAll(dir, fileperm.Dir); err != nil {
		return false, err
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return false, err
	}
	if !fi.IsDir() {
		return false, fmt.Errorf("%s is not a directory", dir)
	}
	if fi.Mode().Perm()&0o077 == 0 {
		return false, nil
	}
	if err := os.Chmod(dir, fileperm.Dir); err != nil {
		return false, fmt.Errorf("%s is open to other users (%v) and cannot be restricted: %w: run as its owner, or chmod 700 it",
			dir, fi.Mode().Perm(), err)
	}
	return true, nil
}
