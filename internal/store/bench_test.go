package store

import (
	"context"
	"math/rand/v2"
	"sync/atomic"
	"testing"
)

// benchVolumeChunks is the span random benchmark I/O falls in (1 GiB).
const benchVolumeChunks = 1 << 18

func openBench(b *testing.B) *Store {
	b.Helper()
	s, err := Open(b.TempDir(), Options{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		if err := s.Close(); err != nil {
			b.Error(err)
		}
	})
	return s
}

// BenchmarkWrite4KParallel measures synced random 4 KiB writes from 32
// concurrent writers (16 per GOMAXPROCS on this 2-core machine) on the real
// disk: the iSCSI target's hot path.
func BenchmarkWrite4KParallel(b *testing.B) {
	s := openBench(b)
	v := s.Volume(1)
	ctx := context.Background()
	var seed atomic.Uint64
	b.SetBytes(ChunkSize)
	b.SetParallelism(max(1, 32/runtimeProcs()))
	cpu0 := cpuTime()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		rng := rand.New(rand.NewPCG(seed.Add(1), 1))
		buf := make([]byte, ChunkSize)
		for pb.Next() {
			fillRandom(rng, buf)
			off := int64(rng.IntN(benchVolumeChunks)) * ChunkSize
			if err := v.WriteAt(ctx, buf, off); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "writes/s")
	b.ReportMetric((cpuTime()-cpu0)/float64(b.N), "cpu-µs/op")
}

// BenchmarkWrite4KSerial measures the latency of one synced 4 KiB writer.
func BenchmarkWrite4KSerial(b *testing.B) {
	s := openBench(b)
	v := s.Volume(1)
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(1, 1))
	buf := make([]byte, ChunkSize)
	b.SetBytes(ChunkSize)
	for b.Loop() {
		fillRandom(rng, buf)
		if err := v.WriteAt(ctx, buf, int64(rng.IntN(benchVolumeChunks))*ChunkSize); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "writes/s")
}

// BenchmarkRead4KParallel measures random 4 KiB reads of written chunks from
// 32 concurrent readers.
func BenchmarkRead4KParallel(b *testing.B) {
	s := openBench(b)
	v := s.Volume(1)
	ctx := context.Background()
	const span = 1 << 14 // 64 MiB written
	buf := make([]byte, 256*ChunkSize)
	rng := rand.New(rand.NewPCG(2, 2))
	for off := int64(0); off < span*ChunkSize; off += int64(len(buf)) {
		fillRandom(rng, buf)
		if err := v.WriteAt(ctx, buf, off); err != nil {
			b.Fatal(err)
		}
	}
	var seed atomic.Uint64
	b.SetBytes(ChunkSize)
	b.SetParallelism(max(1, 32/runtimeProcs()))
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		rng := rand.New(rand.NewPCG(seed.Add(1), 3))
		buf := make([]byte, ChunkSize)
		for pb.Next() {
			if err := v.ReadAt(ctx, buf, int64(rng.IntN(span))*ChunkSize); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "reads/s")
}

// BenchmarkWrite64KSeq measures sequential synced 64 KiB writes from one
// writer.
func BenchmarkWrite64KSeq(b *testing.B) {
	s := openBench(b)
	v := s.Volume(1)
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(4, 4))
	buf := make([]byte, 64<<10)
	b.SetBytes(int64(len(buf)))
	off := int64(0)
	for b.Loop() {
		fillRandom(rng, buf)
		if err := v.WriteAt(ctx, buf, off); err != nil {
			b.Fatal(err)
		}
		off = (off + int64(len(buf))) % (benchVolumeChunks * ChunkSize)
	}
}

func fillRandom(rng *rand.Rand, p []byte) {
	for i := 0; i+8 <= len(p); i += 8 {
		u := rng.Uint64()
		p[i], p[i+1], p[i+2], p[i+3] = byte(u), byte(u>>8), byte(u>>16), byte(u>>24)
		p[i+4], p[i+5], p[i+6], p[i+7] = byte(u>>32), byte(u>>40), byte(u>>48), byte(u>>56)
	}
}

// BenchmarkChunkChecksums measures the CPU cost of checksumming one chunk
// as stored (format 2: one CRC32C over the chunk and one per 512-byte
// block) and verifying it (the chunk's checksum only, unless it fails)
// against format 1's one CRC32C per chunk: the per-block checksums that
// make sub-chunk repair possible are computed on every write.
func BenchmarkChunkChecksums(b *testing.B) {
	tab := castagnoli()
	data := pattern(1, 0, ChunkSize)
	val := make([]byte, chunkValueLen)
	b.Run("encode", func(b *testing.B) {
		b.SetBytes(ChunkSize)
		for b.Loop() {
			encodeChunk(tab, val, 1, 2, data, 0)
		}
	})
	b.Run("verify", func(b *testing.B) {
		encodeChunk(tab, val, 1, 2, data, 0)
		b.SetBytes(ChunkSize)
		for b.Loop() {
			if _, bad, _ := verifyChunk(tab, 1, 2, val); bad != 0 {
				b.Fatal("damaged")
			}
		}
	})
	b.Run("format1", func(b *testing.B) {
		b.SetBytes(ChunkSize)
		for b.Loop() {
			_ = chunkSum(tab, 1, 2, data)
		}
	})
}
