package scsi

import (
	"context"
	"testing"
)

// nullBackend does nothing, to measure the command path alone.
type nullBackend struct{}

func (nullBackend) ReadAt(context.Context, []byte, int64) error  { return nil }
func (nullBackend) WriteAt(context.Context, []byte, int64) error { return nil }
func (nullBackend) Unmap(context.Context, int64, int64) error    { return nil }
func (nullBackend) Mapped(_ context.Context, _, n int64) (bool, int64, error) {
	return true, n, nil
}

func benchmarkExecute(b *testing.B, op byte) {
	lu := NewLogicalUnit(LUConfig{UUID: testUUID, Size: 1 << 30, Backend: nullBackend{}})
	tgt := NewTarget(TargetConfig{Resolver: NewStaticResolver(map[uint64]*LogicalUnit{0: lu})})
	n := nx(1)
	for range 3 {
		tgt.Execute(context.Background(), &Command{Nexus: n, CDB: []byte{opTestUnitReady, 0, 0, 0, 0, 0}})
	}
	data := make([]byte, 4096)
	b.SetBytes(4096)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		i := uint32(0)
		for pb.Next() {
			i++
			c := cdbRW10(op, (i*8)%(1<<20), 8)
			cmd := &Command{Nexus: n, Tag: i, CDB: c}
			if op == opWrite10 {
				cmd.DataOut = data
			}
			if r := tgt.Execute(context.Background(), cmd); r.Status != StatusGood {
				b.Fatalf("status %#x", r.Status)
			}
		}
	})
}

func BenchmarkExecuteRead4K(b *testing.B)  { benchmarkExecute(b, opRead10) }
func BenchmarkExecuteWrite4K(b *testing.B) { benchmarkExecute(b, opWrite10) }
