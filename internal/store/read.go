package store

import (
	"errors"
	"fmt"

	"github.com/cockroachdb/pebble/v2"
)

// get looks key up in r (the DB or a snapshot) and, if it exists, passes
// its value to fn, which must not keep it. Every point read of the store
// goes through here: Pebble fetches a value kept apart from its key (in a
// blob file: every value of 1 KiB or more) lazily, and if that fetch fails
// Get still returns a value, with no error; the error comes only from
// closing the returned closer. get therefore closes it before returning,
// and its error wins over fn's, which saw a value that was not read.
func get(r pebble.Reader, key []byte, fn func(val []byte) error) (found bool, err error) {
	val, closer, err := r.Get(key)
	if errors.Is(err, pebble.ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	ferr := fn(val)
	if cerr := closer.Close(); cerr != nil {
		return true, cerr
	}
	return true, ferr
}

// markCorruption wraps a read error from Pebble with ErrCorrupt when
// Pebble found the data damaged (a checksum of its own failed), so callers
// can tell damage from other failures.
func markCorruption(err error) error {
	if err != nil && pebble.IsCorruptionError(err) && !errors.Is(err, ErrCorrupt) {
		return fmt.Errorf("%w: %w", ErrCorrupt, err)
	}
	return err
}

// readForWrite returns a private copy of chunk c of vol for a
// read-modify-write, with the blocks that are damaged zeroed and flagged in
// bad: the write then stores them as known damaged (see encodeChunk), so a
// host repairs a chunk by rewriting its bad blocks, one at a time if it
// likes, while the other blocks keep their data. Damage is what a checksum
// proves: the store's own per block, or Pebble's over the file holding the
// value (then every block of the chunk is lost). A read the disk failed
// proves nothing (the data may come back), so it fails the write instead.
func (s *Store) readForWrite(vol, c uint64) (data []byte, bad blockMask, err error) {
	buf := make([]byte, ChunkSize)
	var why error
	found, err := get(s.db, chunkKey(vol, c), func(val []byte) error {
		var d []byte
		d, bad, why = verifyChunk(s.crc, vol, c, val)
		copy(buf, d)
		return nil
	})
	switch {
	case err != nil && pebble.IsCorruptionError(err):
		bad, why = allBlocks, markCorruption(err)
	case err != nil:
		return nil, 0, &CorruptError{Volume: vol, Offset: int64(c) << chunkShift,
			Err: fmt.Errorf("chunk %d: read for a partial write: %w", c, err)}
	case !found:
		return nil, 0, &CorruptError{Volume: vol, Offset: int64(c) << chunkShift,
			Err: fmt.Errorf("chunk %d: mapped in the allocation bitmap but not stored: %w", c, ErrCorrupt)}
	}
	if bad != 0 {
		for i := range int64(blocksPerChunk) {
			if bad&(1<<i) != 0 {
				clear(buf[i*BlockSize : (i+1)*BlockSize])
			}
		}
		s.log.Warn("partial write to a damaged chunk: its damaged blocks stay unreadable (medium error) until rewritten",
			"volume", vol, "chunk", c, "damaged_blocks", fmt.Sprintf("%08b", uint8(bad)), "err", why)
	}
	return buf, bad, nil
}
