package store

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
)

// FormatVersion is the on-disk format this package writes and the newest it
// can open. Format 1 stored one checksum per chunk; format 2 one per block
// (format 1 chunks are still read, and rewritten in format 2).
const FormatVersion uint32 = 2

// formatFile, in the store's directory, holds the format version as text
// ("metro store format 2"), so that it can be read before Pebble opens the
// store for writing: opening for writing replays the WAL, writes a new
// manifest and starts compactions, which a store of a newer format must
// never undergo. The version record inside the DB (sysFormatKey) is
// written first and kept equal; stores of format 1 have only the record.
const formatFile = "METRO-FORMAT"

const formatFilePrefix = "metro store format "

// readFormat returns the format version of the store in dir before Pebble
// opens it for writing, and whether formatFile holds it: 0 for a new
// store (absent, or empty because power was lost while it was being
// made, before its format record was durable). A newer version than this
// package supports, or a Pebble DB that is not a metro store, is refused
// with ErrFormat.
func readFormat(fs vfs.FS, dir string, po *pebble.Options) (v uint32, inFile bool, err error) {
	if v, ok, err := readFormatFile(fs, dir); err != nil || ok {
		return v, ok, err
	}
	desc, err := pebble.Peek(dir, fs)
	if errors.Is(err, os.ErrNotExist) || (err == nil && !desc.Exists) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, fmt.Errorf("store: %s: %w", dir, err)
	}
	// A DB without the file: made by a metro that wrote only the record
	// (format 1), one whose making or upgrade was cut short before the
	// file was written, or not a metro store. Read the record read-only.
	ro := *po
	ro.ReadOnly = true
	db, err := pebble.Open(dir, &ro)
	if err != nil {
		return 0, false, fmt.Errorf("store: open %s read-only to read its format version: %w", dir, err)
	}
	v, found, err := formatRecord(db)
	empty := false
	if err == nil && !found {
		empty, err = isEmpty(db)
	}
	err = errors.Join(err, closeDB(db))
	switch {
	case err != nil:
		return 0, false, fmt.Errorf("store: %s: %w", dir, err)
	case !found && empty:
		return 0, false, nil
	case !found:
		return 0, false, fmt.Errorf("store: %s holds a database but no format version; not a metro store: %w", dir, ErrFormat)
	}
	return v, false, checkVersion(dir, v)
}

// readFormatFile reads formatFile; ok is false if there is none.
func readFormatFile(fs vfs.FS, dir string) (v uint32, ok bool, err error) {
	f, err := fs.Open(fs.PathJoin(dir, formatFile))
	if errors.Is(err, os.ErrNotExist) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, fmt.Errorf("store: %s: read format version: %w", dir, err)
	}
	data, err := io.ReadAll(io.LimitReader(f, 256))
	err = errors.Join(err, f.Close())
	if err != nil {
		return 0, false, fmt.Errorf("store: %s: read format version: %w", dir, err)
	}
	text, found := strings.CutPrefix(strings.TrimSpace(string(data)), formatFilePrefix)
	n, perr := strconv.ParseUint(text, 10, 32)
	if !found || perr != nil {
		return 0, false, fmt.Errorf("store: %s: %s holds %q, not a metro format version: %w",
			dir, formatFile, data, ErrFormat)
	}
	return uint32(n), true, checkVersion(dir, uint32(n))
}

func checkVersion(dir string, v uint32) error {
	if v > FormatVersion || v == 0 {
		return fmt.Errorf("store: %s has on-disk format version %d but this metro supports up to %d; run a newer metro: %w",
			dir, v, FormatVersion, ErrFormat)
	}
	return nil
}

// formatRecord reads the format version record of db.
func formatRecord(db pebble.Reader) (v uint32, found bool, err error) {
	found, err = get(db, sysKey(sysFormatKey), func(val []byte) error {
		if len(val) != 4 {
			return fmt.Errorf("format version record is %d bytes: %w", len(val), ErrFormat)
		}
		v = binary.BigEndian.Uint32(val)
		return nil
	})
	if err != nil {
		return 0, false, fmt.Errorf("read format version: %w", err)
	}
	return v, found, nil
}

// settleFormat runs once Pebble has opened the store for writing: it
// writes the format version into a new store, upgrades an older one (the
// record first, then the file, so the file never claims more than the
// record), writes the file if it is missing (power was lost between the
// two) and checks that the record agrees with what readFormat found.
func (s *Store) settleFormat(fs vfs.FS, found uint32, inFile bool) error {
	rec, ok, err := formatRecord(s.db)
	switch {
	case err != nil:
		return fmt.Errorf("store: %s: %w", s.dir, err)
	case !ok && found != 0:
		return fmt.Errorf("store: %s: format version record missing (the format file says %d): %w", s.dir, found, ErrFormat)
	case !ok:
		empty, err := isEmpty(s.db)
		if err != nil {
			return fmt.Errorf("store: %s: %w", s.dir, err)
		}
		if !empty {
			return fmt.Errorf("store: %s holds data but no format version; not a metro store: %w", s.dir, ErrFormat)
		}
	default:
		if err := checkVersion(s.dir, rec); err != nil {
			return err
		}
	}
	if rec != FormatVersion {
		v := binary.BigEndian.AppendUint32(nil, FormatVersion)
		if err := s.db.Set(sysKey(sysFormatKey), v, pebble.Sync); err != nil {
			return s.fail(fmt.Errorf("store: %s: write format version: %w", s.dir, err))
		}
		if rec != 0 {
			s.log.Info("store format upgraded", "dir", s.dir, "from", rec, "to", FormatVersion)
		}
	}
	if found != FormatVersion || !inFile {
		return writeFormatFile(fs, s.dir)
	}
	return nil
}

// writeFormatFile replaces formatFile durably (write, sync, rename, sync
// the directory).
func writeFormatFile(fs vfs.FS, dir string) error {
	tmp := fs.PathJoin(dir, formatFile+".new")
	f, err := fs.Create(tmp, vfs.WriteCategoryUnspecified)
	if err != nil {
		return fmt.Errorf("store: %s: write format version: %w", dir, err)
	}
	_, err = f.Write([]byte(formatFilePrefix + strconv.FormatUint(uint64(FormatVersion), 10) + "\n"))
	if err == nil {
		err = f.Sync()
	}
	if err = errors.Join(err, f.Close()); err == nil {
		err = fs.Rename(tmp, fs.PathJoin(dir, formatFile))
	}
	if err == nil {
		err = syncDir(fs, dir)
	}
	if err != nil {
		return fmt.Errorf("store: %s: write format version: %w", dir, err)
	}
	return nil
}

func syncDir(fs vfs.FS, dir string) error {
	d, err := fs.OpenDir(dir)
	if err != nil {
		return err
	}
	return errors.Join(d.Sync(), d.Close())
}
