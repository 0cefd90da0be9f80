// Package store is metro's local block store: every volume's blocks and the
// array's durable metadata (configuration, persistent reservations, later
// replication state) in one Pebble DB, so that data and the metadata that
// goes with it commit atomically in one synced batch.
//
// # Model
//
// Volumes are thin and need no creation: a volume id (chosen by the caller,
// never reused) names a sparse array of bytes that reads as zeros where
// nothing was written. Hosts address 512-byte logical blocks; the store
// keeps 4096-byte chunks, each stored as one Pebble value with a CRC32C.
// A write smaller than a chunk reads, modifies and rewrites the chunk while
// holding that chunk's lock stripe, so writers of one chunk serialise and
// writers of different chunks run concurrently. Every write is one batch
// committed with pebble.Sync: it is durable before the call returns, and
// Pebble's WAL group commit lets concurrent writers share one fsync.
//
// A chunk that would be all zeros is deleted instead of stored (writes of
// zeros and unmaps both deallocate). Which chunks are mapped is kept in an
// allocation bitmap per volume, durable and in memory; writers consult the
// in-memory copy (exact under the chunk's stripe) instead of looking chunks
// up in Pebble. Space used is mapped chunks × 4096 bytes, per volume and for
// the array. A write that needs new chunks beyond the capacity fails with
// ErrNoSpace before anything is written. The effective capacity is the
// lesser of the configured one and what the filesystem can hold, and once
// the filesystem is nearly full every write of data fails with ErrNoSpace
// too, before Pebble runs out of room (space.go explains the rules, the
// reserve and the ballast); unmaps, volume deletions and metadata changes
// always proceed and free space; reads always work.
//
// # On-disk format (version 2)
//
// All keys begin with a one-byte prefix:
//
//	0x01 name                 system record
//	0x01 "format"             format version, uint32 big-endian (2)
//	0x02 vol(8) page(8)       allocation bitmap page (4096 chunks)
//	0x03 vol(8) chunk(8)      data chunk
//	0x04 key                  caller metadata (caller-chosen key bytes)
//
// vol is the volume id, chunk the chunk index (byte offset / 4096) and page
// the bitmap page index (chunk / 4096), all uint64 big-endian, so one
// volume's chunks form one contiguous, ordered key range: reads of a range
// are one iterator, and deleting a volume is one range deletion per prefix.
//
// A data value is 4132 bytes: the 4096 data bytes, then CRC32C (Castagnoli,
// little-endian) over vol(8, big-endian) ‖ chunk(8, big-endian) ‖ data,
// then one CRC32C per 512-byte block i, over vol ‖ chunk ‖ i(1) ‖ the
// block's data. Mixing the key into the checksums detects a chunk written
// or read under the wrong key (and the index, a block moved within its
// chunk) as well as damaged bytes. Reads verify the chunk's checksum (one
// CRC over 4 KiB is about twice as fast as eight over 512 bytes) and,
// only when it fails, the blocks', to tell damaged blocks from good ones;
// a value of any other length is damaged throughout. Format 1 values (4100
// bytes: the data, then the chunk's checksum) are still read, and
// rewritten in format 2 when next written.
//
// # Damaged data
//
// Blocks that fail a checksum (the store's own, or Pebble's over the file
// holding the value: Pebble usually catches damage first) or that the disk
// cannot read are reported as a *CorruptError naming the first such block,
// which SCSI turns into MEDIUM ERROR with its LBA. A host repairs damage the
// way it would on a disk: by rewriting the bad blocks, in any pieces. A
// partial write to a damaged chunk keeps its good blocks and stores the
// damaged ones it does not cover as known damaged (zeros under the
// complement of their checksum), so they go on failing until they are
// rewritten or unmapped while the rest of the chunk is usable. A chunk the
// disk failed to read (an I/O error, not proven damage: the data may come
// back) is not touched by a partial write, which fails; writing the whole
// 4 KiB chunk (the physical block size hosts are told) or unmapping it
// replaces it. Check lists every damaged block. A copy of a volume (a
// pod's baseline or resync) reads with ReadSalvage, which returns the good
// blocks and lists the damaged ones, and the receiving store records those
// damaged with Batch.MarkDamaged (salvage.go); IsDamage tells proven
// damage from a read the disk failed.
//
// A bitmap page is only ever written with Pebble merge operands, in the same
// batch as the chunk changes it records; the merge operator
// ("metro.alloc-bitmap.v1") composes them. Bit i of a page (word i/64, bit
// i%64 of little-endian uint64 words) is chunk page×4096+i. A value's first
// byte is its form:
//
//	0x01 list    changes, uint16 big-endian each: bit 15 = mapped, bits 0-11 = chunk in page
//	0x02 masks   set mask (512 bytes) then clear mask (512 bytes): x → (x &^ clear) | set
//	0x03 full    the page (512 bytes), replacing any older state
//
// Batches write lists; merging yields masks (when older operands may exist)
// or full pages. Because the bitmap changes commit atomically with the
// chunks, after any crash the bitmaps equal the set of stored chunks and the
// used bytes are exact (Store.Check verifies both). Open reads the bitmaps
// (512 bytes per 16 MiB of mapped volume) to rebuild the in-memory state.
//
// The format record is written when the store is created, with a copy in
// the text file METRO-FORMAT beside Pebble's files, which Open reads before
// Pebble opens the store for writing (a format 1 store, which has only the
// record, is opened read-only first). Open refuses a store with a newer
// format version (ErrFormat, naming both versions) without writing to it,
// and a non-empty DB without a format record; it upgrades a format 1 store
// to format 2 (the record, then the file). Pebble's own format is pinned to
// pebble.FormatValueSeparation (the newest in Pebble v2.1) so a module
// upgrade never ratchets it silently.
//
// On the real disk the store's directory is 0700 and its files 0600
// (volume data and the configuration, with CHAP secrets, live there): a
// wrapper of Pebble's filesystem creates them so, and Open narrows the
// modes of a store made before.
//
// # Failures
//
// If Pebble cannot make a commit durable (a WAL write or sync fails, or it
// hits an error it cannot continue from), what it holds in memory may be
// ahead of the disk: the store fails, refusing every later read and write
// (ErrFailed), and calls Options.OnFatal, with which the array stops its
// process (fail-stop: its peer sees the link drop and takes over). A disk
// that stops answering (one operation stalled for Options.MaxDiskStall),
// and flushes that keep failing for as long other than for lack of
// space, fail the store the same way: they return no error to a commit,
// which would otherwise wait forever. This
// does not depend on a panic reaching the top of a goroutine, so no panic
// recovery can keep a failed array running. On restart the WAL replay
// recovers exactly what was acknowledged, as after a power loss.
//
// # Batches
//
// Batch carries metadata changes and data operations (writes, unmaps) for
// any number of volumes; Commit takes the lock stripes of every chunk
// involved in ascending order, reads what it must (existence, partial-chunk
// contents), checks space, and commits everything in one synced Pebble
// batch. Volume.WriteAt and Volume.Unmap are one-operation batches; later
// replication adds its sequence numbers to the same batch as the data.
package store
