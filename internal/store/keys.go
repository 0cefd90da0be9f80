package store

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"math/bits"
)

// Key prefixes. Every key starts with one of these bytes, so the four kinds
// of record never interleave and each volume's chunks form one contiguous
// key range.
const (
	prefixSys   byte = 0x01 // store-internal records (format version)
	prefixAlloc byte = 0x02 // allocation bitmap pages (merge operands)
	prefixChunk byte = 0x03 // data chunks
	prefixMeta  byte = 0x04 // caller metadata
)

const (
	// chunkKeyLen is the length of a data key: prefix, volume id, chunk index.
	chunkKeyLen = 1 + 8 + 8
	// allocKeyLen is the length of a bitmap key: prefix, volume id, page.
	allocKeyLen = 1 + 8 + 8
	// crcLen is the length of one checksum.
	crcLen = 4
	// blocksPerChunk is the number of logical blocks in a chunk.
	blocksPerChunk = ChunkSize / BlockSize
	// chunkValueLen is the length of a stored chunk value (format 2): the
	// data, one CRC32C over the chunk, then one per block.
	chunkValueLen = ChunkSize + crcLen + blocksPerChunk*crcLen
	// chunkValueLenV1 is the length of a format 1 chunk value, still read:
	// the data, then one CRC32C over the whole chunk.
	chunkValueLenV1 = ChunkSize + crcLen
	// chunkShift is log2(ChunkSize), blockShift log2(BlockSize).
	chunkShift = 12
	blockShift = 9
)

// sysFormatKey holds the on-disk format version (uint32 big-endian).
const sysFormatKey = "format"

func sysKey(name string) []byte {
	k := make([]byte, 0, 1+len(name))
	k = append(k, prefixSys)
	return append(k, name...)
}

func metaKey(key string) []byte {
	k := make([]byte, 0, 1+len(key))
	k = append(k, prefixMeta)
	return append(k, key...)
}

// putChunkKey writes the data key of (vol, chunk) into dst, which must be at
// least chunkKeyLen long.
func putChunkKey(dst []byte, vol, chunk uint64) {
	dst[0] = prefixChunk
	binary.BigEndian.PutUint64(dst[1:9], vol)
	binary.BigEndian.PutUint64(dst[9:17], chunk)
}

func chunkKey(vol, chunk uint64) []byte {
	k := make([]byte, chunkKeyLen)
	putChunkKey(k, vol, chunk)
	return k
}

// decodeChunkKey returns the volume and chunk index of a data key.
func decodeChunkKey(k []byte) (vol, chunk uint64, ok bool) {
	if len(k) != chunkKeyLen || k[0] != prefixChunk {
		return 0, 0, false
	}
	return binary.BigEndian.Uint64(k[1:9]), binary.BigEndian.Uint64(k[9:17]), true
}

func allocKey(vol, page uint64) []byte {
	k := make([]byte, allocKeyLen)
	k[0] = prefixAlloc
	binary.BigEndian.PutUint64(k[1:9], vol)
	binary.BigEndian.PutUint64(k[9:17], page)
	return k
}

// volumeKeys returns the bounds [start, end) of all keys of vol with the
// given prefix (prefixChunk or prefixAlloc).
func volumeKeys(prefix byte, vol uint64) (start, end []byte) {
	start = make([]byte, 1+8)
	start[0] = prefix
	binary.BigEndian.PutUint64(start[1:], vol)
	return start, prefixEnd(start)
}

// castagnoli is the CRC32C table; crc32.MakeTable returns the same shared,
// hardware-accelerated table on every call for this polynomial.
func castagnoli() *crc32.Table { return crc32.MakeTable(crc32.Castagnoli) }

// blockMask is a set of the blocks of one chunk: bit i is block i.
type blockMask uint8

// allBlocks is every block of a chunk.
const allBlocks blockMask = 1<<blocksPerChunk - 1

// blocksIn returns the blocks of a chunk that bytes [lo, hi) of it cover
// (0 <= lo < hi <= ChunkSize).
func blocksIn(lo, hi int64) blockMask {
	first, last := lo>>blockShift, (hi-1)>>blockShift
	return allBlocks >> (blocksPerChunk - 1 - last) &^ (1<<first - 1)
}

// first returns the index of the lowest block in m (m != 0).
func (m blockMask) first() int64 { return int64(bits.TrailingZeros8(uint8(m))) }

// blockSums computes the checksums stored with a chunk (format 2): for
// block i, CRC32C over the volume id and chunk index (big-endian), the
// block index (one byte) and the block's data. Mixing in the key detects a
// chunk stored or read under the wrong key, and the block index a block
// moved within its chunk, just like a flipped bit.
func blockSums(tab *crc32.Table, vol, chunk uint64, data []byte, sums *[blocksPerChunk]uint32) {
	var hdr [16]byte
	binary.BigEndian.PutUint64(hdr[0:8], vol)
	binary.BigEndian.PutUint64(hdr[8:16], chunk)
	base := crc32.Update(0, tab, hdr[:])
	for i := range blocksPerChunk {
		idx := [1]byte{byte(i)}
		sums[i] = crc32.Update(crc32.Update(base, tab, idx[:]), tab, data[i*BlockSize:(i+1)*BlockSize])
	}
}

// chunkSum is the checksum of a whole chunk (the one checksum of format 1,
// the first of format 2): CRC32C over the volume id and chunk index
// (big-endian) followed by the data.
func chunkSum(tab *crc32.Table, vol, chunk uint64, data []byte) uint32 {
	var hdr [16]byte
	binary.BigEndian.PutUint64(hdr[0:8], vol)
	binary.BigEndian.PutUint64(hdr[8:16], chunk)
	return crc32.Update(crc32.Update(0, tab, hdr[:]), tab, data)
}

// encodeChunk writes the stored form of data (ChunkSize bytes) into dst
// (chunkValueLen bytes). The blocks in bad are stored as known damaged:
// their data (zeros) is kept with the complement of its checksum (and of
// the chunk's), so they fail verification, and read as a medium error,
// until rewritten.
func encodeChunk(tab *crc32.Table, dst []byte, vol, chunk uint64, data []byte, bad blockMask) {
	copy(dst[:ChunkSize], data)
	sum := chunkSum(tab, vol, chunk, data)
	if bad != 0 {
		sum = ^sum
	}
	binary.LittleEndian.PutUint32(dst[ChunkSize:], sum)
	var sums [blocksPerChunk]uint32
	blockSums(tab, vol, chunk, data, &sums)
	for i, sum := range sums {
		if bad&(1<<i) != 0 {
			sum = ^sum
		}
		binary.LittleEndian.PutUint32(dst[ChunkSize+crcLen+i*crcLen:], sum)
	}
}

// verifyChunk checks a stored chunk value and returns its data (aliasing
// val; nil if the value has no recognisable form) and the blocks that fail
// verification, with why (an error wrapping ErrCorrupt) when there are
// any. A format 2 value is checked as a whole (as fast as format 1) and,
// only if that fails, block by block; a format 1 value as a whole; a value
// of any other length is damaged throughout.
func verifyChunk(tab *crc32.Table, vol, chunk uint64, val []byte) (data []byte, bad blockMask, why error) {
	switch len(val) {
	case chunkValueLen:
		data = val[:ChunkSize]
		if binary.LittleEndian.Uint32(val[ChunkSize:]) == chunkSum(tab, vol, chunk, data) {
			return data, 0, nil
		}
		// Some block is damaged (or known damaged), or the chunk's own
		// checksum is: the blocks' checksums say which.
		var sums [blocksPerChunk]uint32
		blockSums(tab, vol, chunk, data, &sums)
		for i, sum := range sums {
			if binary.LittleEndian.Uint32(val[ChunkSize+crcLen+i*crcLen:]) != sum {
				bad |= 1 << i
			}
		}
		if bad != 0 {
			why = fmt.Errorf("volume %d chunk %d: blocks %08b fail their checksums: %w", vol, chunk, bad, ErrCorrupt)
		}
		return data, bad, why
	case chunkValueLenV1:
		data = val[:ChunkSize]
		want := binary.LittleEndian.Uint32(val[ChunkSize:])
		if got := chunkSum(tab, vol, chunk, data); got != want {
			return data, allBlocks, fmt.Errorf("volume %d chunk %d: checksum %08x, stored %08x: %w",
				vol, chunk, got, want, ErrCorrupt)
		}
		return data, 0, nil
	}
	return nil, allBlocks, fmt.Errorf("volume %d chunk %d: stored value is %d bytes, want %d: %w",
		vol, chunk, len(val), chunkValueLen, ErrCorrupt)
}
