package link

import (
	"context"
	"runtime"
	"testing"
)

// BenchmarkCall4K measures 4 KiB calls over loopback TCP and TLS, one at a
// time (latency) and 64 in flight (throughput).
func BenchmarkCall4K(b *testing.B) {
	a, c := testConfigs(b)
	sa, _ := tcpPair(b, a, c)
	payload := make([]byte, 4<<10)
	ctx := context.Background()
	b.Run("depth=1", func(b *testing.B) {
		b.SetBytes(int64(len(payload)))
		b.ReportAllocs()
		for b.Loop() {
			if _, err := sa.Call(ctx, Message{Payload: payload}); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("depth=64", func(b *testing.B) {
		b.SetBytes(int64(len(payload)))
		b.ReportAllocs()
		b.SetParallelism(max(1, 64/runtime.GOMAXPROCS(0)))
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, err := sa.Call(ctx, Message{Payload: payload}); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
}
