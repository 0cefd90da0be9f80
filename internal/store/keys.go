package store

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
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
	// crcLen is the length of the checksum trailer of a chunk value.
	crcLen = 4
	// chunkValueLen is the length of a stored chunk value: data then CRC32C.
	chunkValueLen = ChunkSize + crcLen
	// chunkShift is log2(ChunkSize).
	chunkShift = 12
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

// chunkSum is the checksum stored with a chunk: CRC32C over the volume id and
// chunk index (big-endian) followed by the data, so a chunk stored or read
// under the wrong key fails verification just like a flipped bit.
func chunkSum(tab *crc32.Table, vol, chunk uint64, data []byte) uint32 {
	var hdr [16]byte
	binary.BigEndian.PutUint64(hdr[0:8], vol)
	binary.BigEndian.PutUint64(hdr[8:16], chunk)
	return crc32.Update(crc32.Update(0, tab, hdr[:]), tab, data)
}

// encodeChunk writes the stored form of data (ChunkSize bytes) into dst
// (chunkValueLen bytes).
func encodeChunk(tab *crc32.Table, dst []byte, vol, chunk uint64, data []byte) {
	copy(dst[:ChunkSize], data)
	binary.LittleEndian.PutUint32(dst[ChunkSize:], chunkSum(tab, vol, chunk, data))
}

// verifyChunk checks a stored chunk value and returns its data (aliasing
// val). A wrong length or checksum yields an error wrapping ErrCorrupt.
func verifyChunk(tab *crc32.Table, vol, chunk uint64, val []byte) ([]byte, error) {
	if len(val) != chunkValueLen {
		return nil, fmt.Errorf("volume %d chunk %d: stored value is %d bytes, want %d: %w",
			vol, chunk, len(val), chunkValueLen, ErrCorrupt)
	}
	data := val[:ChunkSize]
	want := binary.LittleEndian.Uint32(val[ChunkSize:])
	if got := chunkSum(tab, vol, chunk, data); got != want {
		return nil, fmt.Errorf("volume %d chunk %d (bytes %d-%d): checksum %08x, stored %08x: %w",
			vol, chunk, chunk*ChunkSize, (chunk+1)*ChunkSize-1, got, want, ErrCorrupt)
	}
	return data, nil
}
