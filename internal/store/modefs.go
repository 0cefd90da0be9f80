package store

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// The store's files hold volume data and the array's configuration (CHAP
// secrets among it), so only the array's user may read them: the
// directory is created 0700 and every file 0600.
const (
	dirMode  os.FileMode = 0o700
	fileMode os.FileMode = 0o600
)

// modeFS is the real disk with the store's modes: Pebble creates files
// through its vfs with 0666 and directories with 0755 (less the umask);
// modeFS creates directories 0700 and narrows each file it creates to 0600
// (the directory is private first, so nobody can open a file in the
// moment before).
type modeFS struct{ vfs.FS }

func (fs modeFS) Create(name string, category vfs.DiskWriteCategory) (vfs.File, error) {
	return private(fs.FS.Create(name, category))(name)
}

func (fs modeFS) OpenReadWrite(name string, category vfs.DiskWriteCategory, opts ...vfs.OpenOption) (vfs.File, error) {
	return private(fs.FS.OpenReadWrite(name, category, opts...))(name)
}

func (fs modeFS) ReuseForWrite(oldname, newname string, category vfs.DiskWriteCategory) (vfs.File, error) {
	return private(fs.FS.ReuseForWrite(oldname, newname, category))(newname)
}

func (fs modeFS) Lock(name string) (io.Closer, error) {
	c, err := fs.FS.Lock(name)
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(name, fileMode); err != nil {
		return nil, errors.Join(err, c.Close())
	}
	return c, nil
}

func (fs modeFS) MkdirAll(dir string, _ os.FileMode) error { return fs.FS.MkdirAll(dir, dirMode) }

func (fs modeFS) Unwrap() vfs.FS { return fs.FS }

// private narrows the file just opened at name to fileMode.
func private(f vfs.File, err error) func(name string) (vfs.File, error) {
	return func(name string) (vfs.File, error) {
		if err != nil {
			return nil, err
		}
		if err := os.Chmod(name, fileMode); err != nil {
			return nil, errors.Join(err, f.Close())
		}
		return f, nil
	}
}

// tightenModes gives an existing store directory made before the store
// kept these modes (0755, files 0644) the private ones.
func tightenModes(dir string) error {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("store: %s: %w", dir, err)
	}
	if err := os.Chmod(dir, dirMode); err != nil {
		return fmt.Errorf("store: %s: %w", dir, err)
	}
	for _, e := range entries {
		if e.Type().IsRegular() {
			if err := os.Chmod(filepath.Join(dir, e.Name()), fileMode); err != nil {
				return fmt.Errorf("store: %s: %w", dir, err)
			}
		}
	}
	return nil
}
