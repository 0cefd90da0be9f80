package iscsi

import "testing"

// Benchmarks of the transport's command path over an in-memory pipe with
// the fake executor: one session, 4 KiB reads and writes, one command at
// a time and 32 at a time. Compare runs with benchstat.

func benchmarkIO(b *testing.B, write bool, depth int) {
	h := newHarness(b, nil)
	in := h.dial()
	in.mustLogin(loginOpts{})
	data := pattern(4096, 1)
	o := cmdOpts{read: true, edtl: 4096}
	cdb := read10(8, 8)
	if write {
		o = cmdOpts{dataOut: data}
		cdb = write10(8, 8)
	}
	b.SetBytes(4096)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i += depth {
		n := min(depth, b.N-i)
		for range n {
			in.sendCommand(cdb, o)
		}
		// The responses come in any order (immediate data: no R2T).
		for done := 0; done < n; {
			r, _ := in.mustRecv()
			switch {
			case r.opcode() == opSCSIResp, r.opcode() == opDataIn && r.flags()&flagStatus != 0:
				if r[3] != 0 {
					b.Fatalf("status %d", r[3])
				}
				done++
			case r.opcode() != opDataIn:
				b.Fatalf("unexpected %s", r.opcode())
			}
		}
	}
}

func BenchmarkRead4K(b *testing.B)         { benchmarkIO(b, false, 1) }
func BenchmarkWrite4K(b *testing.B)        { benchmarkIO(b, true, 1) }
func BenchmarkRead4KDepth32(b *testing.B)  { benchmarkIO(b, false, 32) }
func BenchmarkWrite4KDepth32(b *testing.B) { benchmarkIO(b, true, 32) }
