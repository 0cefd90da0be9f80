// Package fileperm is what keeps an array's and a lab's files to their
// own user: the modes they are made with, and a check of a tree against
// them. An array's data directory holds the catalog with hosts' CHAP
// secrets, the API token and private keys; a lab's directory holds the
// arrays' tokens in lab.json.
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
