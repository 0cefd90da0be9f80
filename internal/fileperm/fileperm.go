// Package fileperm is what keeps an array's, a mediator's and a lab's
// files to their own user: the modes they are made with, a durable way to
// write them, and a check of a tree against them. An array's data
// directory holds the catalog with hosts' CHAP secrets, the API token and
// private keys; a mediator's its state and auth key; a lab's directory
// holds the arrays' tokens in lab.json.
package fileperm

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
)

// The modes of private directories and files.
const (
	Dir  os.FileMode = 0o700
	File os.FileMode = 0o600
)

// WriteFile replaces path with data so that a crash leaves either the old
// or the new content, and the new one survives once it returns: it writes
// a temporary file with mode perm (also over one a crash left behind with
// other permissions), syncs it, renames it over path and syncs the
// directory.
func WriteFile(path string, data []byte, perm os.FileMode) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, perm)
	if err != nil {
		return err
	}
	if err := f.Chmod(perm); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	d, err := os.Open(filepath.Dir(path))
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// Open lists what under root (root itself excluded) is open to other
// users: a directory not Dir or a file not File, one line each. Trees
// under a directory named in skip are not looked at.
func Open(root string, skip ...string) ([]string, error) {
	var open []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		switch {
		case err != nil:
			return err
		case p == root:
			return nil
		case d.IsDir() && slices.Contains(skip, d.Name()):
			return filepath.SkipDir
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		want := File
		if d.IsDir() {
			want = Dir
		}
		if fi.Mode().Perm() != want {
			open = append(open, fmt.Sprintf("%s is %v, want %v", p, fi.Mode().Perm(), want))
		}
		return nil
	})
	return open, err
}
