package fileperm

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestOpen(t *testing.T) {
	root := t.TempDir()
	mk := func(p string, mode os.FileMode, dir bool) {
		p = filepath.Join(root, p)
		var err error
		if dir {
			err = os.Mkdir(p, mode)
		} else {
			err = os.WriteFile(p, nil, mode)
		}
		if err == nil {
			err = os.Chmod(p, mode)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	mk("ok", Dir, true)
	mk("ok/file", File, false)
	mk("ok/open", 0o644, false)
	mk("wide", 0o755, true)
	mk("store", 0o755, true)
	mk("store/file", 0o644, false)
	open, err := Open(root, "store")
	if err != nil {
		t.Fatal(err)
	}
	got := strings.Join(open, "\n")
	if len(open) != 2 || !strings.Contains(got, filepath.Join("ok", "open")+" is -rw-r--r--") ||
		!strings.Contains(got, "wide is -rwxr-xr-x") {
		t.Fatalf("Open = %q", open)
	}
}
