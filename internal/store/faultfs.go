package store

import (
	"errors"
	"os"
	"strings"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/cockroachdb/pebble/v2/vfs/errorfs"
)

// errInjectedWAL is the error faultFS injects.
var errInjectedWAL = errors.New("injected fault (Options.FaultTrigger): WAL write or sync failed")

// faultFS is the fault-injection hook behind Options.FaultTrigger, for
// end-to-end tests that need a real array process to meet a failing disk:
// once a file exists at trigger, every write and sync of a WAL file fails.
// Each such operation stats trigger, so the hook costs a system call per
// WAL write while it is set; it is off (not even wrapped) by default.
func faultFS(fs vfs.FS, trigger string) vfs.FS {
	return errorfs.Wrap(fs, errorfs.InjectorFunc(func(op errorfs.Op) error {
		if !strings.HasSuffix(op.Path, ".log") {
			return nil
		}
		switch op.Kind {
		case errorfs.OpFileWrite, errorfs.OpFileWriteAt, errorfs.OpFileSync, errorfs.OpFileSyncData, errorfs.OpFileSyncTo:
			if _, err := os.Stat(trigger); err == nil {
				return errInjectedWAL
			}
		}
		return nil
	}))
}
