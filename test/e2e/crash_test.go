package e2e

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/metro-storage/metro/internal/initiator"
	"github.com/metro-storage/metro/internal/lab"
)

const crashInitiator = "iqn.2026-11.io.metro:e2e-crash"

// blockPattern is the content of one 512-byte block written by a writer
// at sequence number seq: its LBA, seq and a filler derived from both, so
// a block from any other write, or a torn one, is recognised.
func blockPattern(lba, seq uint64) []byte {
	b := make([]byte, 512)
	binary.BigEndian.PutUint64(b[0:8], lba)
	binary.BigEndian.PutUint64(b[8:16], seq)
	x := lba*0x9E3779B97F4A7C15 ^ seq
	for i := 16; i < 512; i += 8 {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		binary.BigEndian.PutUint64(b[i:i+8], x)
	}
	return b
}

// region is one writer's range of blocks and what it knows of them.
type region struct {
	first, blocks uint64
	// acked[i] is the seq of the last acknowledged write of block i
	// (0: never written, reads as zeros).
	acked []uint64
	// inflight holds the seq of a write that was sent but not
	// acknowledged when the array died, per block.
	inflight map[uint64]uint64
}

// writer writes random runs of blocks into its region until ctx ends or
// a write fails (the array died); an unacknowledged write is remembered
// as in flight.
func (r *region) write(ctx context.Context, c *initiator.Conn, seq *uint64, rng *rand.Rand) int {
	n := 0
	for ctx.Err() == nil {
		count := uint64(1 + rng.IntN(16))
		if rng.IntN(4) == 0 {
			count = 8 // 4 KiB aligned runs too
		}
		start := rng.Uint64N(r.blocks - count + 1)
		*seq++
		s := *seq
		buf := make([]byte, 0, count*512)
		for i := uint64(0); i < count; i++ {
			buf = append(buf, blockPattern(r.first+start+i, s)...)
		}
		if err := c.Write(0, r.first+start, buf); err != nil {
			for i := uint64(0); i < count; i++ {
				r.inflight[start+i] = s
			}
			return n
		}
		for i := uint64(0); i < count; i++ {
			r.acked[start+i] = s
		}
		n++
	}
	return n
}

// verify reads the region and checks every block is its last acknowledged
// content or, for blocks of the write in flight at the crash, that write's
// content; it then adopts what it read as the new acknowledged state.
func (r *region) verify(t *testing.T, c *initiator.Conn) {
	t.Helper()
	data, err := c.Read(0, r.first, uint32(r.blocks))
	if err != nil {
		t.Fatalf("read back region at %d: %v", r.first, err)
	}
	zero := make([]byte, 512)
	for i := uint64(0); i < r.blocks; i++ {
		got := data[i*512 : (i+1)*512]
		want := zero
		if s := r.acked[i]; s != 0 {
			want = blockPattern(r.first+i, s)
		}
		if bytes.Equal(got, want) {
			continue
		}
		if s, ok := r.inflight[i]; ok && bytes.Equal(got, blockPattern(r.first+i, s)) {
			r.acked[i] = s
			continue
		}
		t.Fatalf("block %d: lost or torn: header lba=%d seq=%d, want seq %d (in flight: %d)",
			r.first+i, binary.BigEndian.Uint64(got[0:8]), binary.BigEndian.Uint64(got[8:16]), r.acked[i], r.inflight[i])
	}
	clear(r.inflight)
}

// TestKill9UnderWriters kills the array process with SIGKILL at random
// moments while four sessions write known patterns, restarts it, and
// checks that every acknowledged write reads back intact and no block is
// torn.
func TestKill9UnderWriters(t *testing.T) {
	const writers, perWriter, rounds = 4, 2048, 20
	l := startLab(t, lab.Options{Arrays: 1, Initiators: []string{crashInitiator}, Size: 64 << 20})
	portal, target := l.Info.Arrays[0].Portal, l.Info.Arrays[0].Target
	dial := func() *initiator.Conn {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		c, err := initiator.Dial(ctx, portal, initiator.Options{InitiatorName: crashInitiator, TargetName: target, Timeout: 10 * time.Second})
		if err != nil {
			t.Fatalf("dial: %v", err)
		}
		// Consume the power-on unit attention.
		for i := 0; i < 3 && c.TestUnitReady(0) != nil; i++ {
		}
		return c
	}
	regions := make([]*region, writers)
	for w := range regions {
		regions[w] = &region{first: uint64(w * perWriter), blocks: perWriter, acked: make([]uint64, perWriter), inflight: map[uint64]uint64{}}
	}
	seqs := make([]uint64, writers)
	rng := rand.New(rand.NewPCG(1, uint64(time.Now().UnixNano())))
	total := 0
	for round := 0; round < rounds; round++ {
		ctx, cancel := context.WithCancel(context.Background())
		var wg sync.WaitGroup
		counts := make([]int, writers)
		for w := 0; w < writers; w++ {
			c := dial()
			wrng := rand.New(rand.NewPCG(uint64(round), uint64(w)))
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				counts[w] = regions[w].write(ctx, c, &seqs[w], wrng)
			}()
		}
		time.Sleep(time.Duration(50+rng.IntN(400)) * time.Millisecond)
		if err := l.Kill(0); err != nil {
			t.Fatal(err)
		}
		wg.Wait()
		cancel()
		for _, n := range counts {
			total += n
		}
		rctx, rcancel := context.WithTimeout(context.Background(), time.Minute)
		err := l.Start(rctx, 0)
		rcancel()
		if err != nil {
			t.Fatalf("round %d: restart: %v", round, err)
		}
		c := dial()
		for _, r := range regions {
			r.verify(t, c)
		}
		c.Close()
	}
	t.Logf("%d kills, %d acknowledged writes verified", rounds, total)
	if total < rounds {
		t.Fatalf("only %d writes were acknowledged in %d rounds: the writers did not really run", total, rounds)
	}
}

// TestOutOfSpace fills a small array: writes then fail with the
// thin-provisioning sense, acknowledged data stays readable, and after
// UNMAP frees space writes succeed again.
func TestOutOfSpace(t *testing.T) {
	const capacity = 8 << 20
	l := startLab(t, lab.Options{Arrays: 1, Initiators: []string{crashInitiator}, Size: 64 << 20, Capacity: capacity})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := initiator.Dial(ctx, l.Info.Arrays[0].Portal, initiator.Options{InitiatorName: crashInitiator, TargetName: l.Info.Arrays[0].Target})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for i := 0; i < 3 && c.TestUnitReady(0) != nil; i++ {
	}
	const chunk = 128 // blocks of 512: 64 KiB
	var written uint64
	var full error
	for lba := uint64(0); lba < (64<<20)/512; lba += chunk {
		buf := make([]byte, 0, chunk*512)
		for i := uint64(0); i < chunk; i++ {
			buf = append(buf, blockPattern(lba+i, 1)...)
		}
		if full = c.Write(0, lba, buf); full != nil {
			break
		}
		written = lba + chunk
	}
	var se *initiator.SCSIError
	if !errors.As(full, &se) {
		t.Fatalf("filling the array ended with %v, want a SCSI error", full)
	}
	if key, asc, ascq := se.SenseKey(); key != 0x7 || asc != 0x27 || ascq != 0x07 {
		t.Fatalf("full array: sense %x/%02x/%02x, want DATA PROTECT 7/27/07 (space allocation failed write protect)", key, asc, ascq)
	}
	if written*512 > capacity || written*512 < capacity/2 {
		t.Fatalf("wrote %d bytes into a %d-byte array", written*512, capacity)
	}
	t.Logf("array full after %d KiB", written/2)
	check := func() {
		for lba := uint64(0); lba < written; lba += chunk {
			data, err := c.Read(0, lba, chunk)
			if err != nil {
				t.Fatalf("read acknowledged data at %d: %v", lba, err)
			}
			for i := uint64(0); i < chunk; i++ {
				if !bytes.Equal(data[i*512:(i+1)*512], blockPattern(lba+i, 1)) {
					t.Fatalf("acknowledged block %d changed after the array filled", lba+i)
				}
			}
		}
	}
	check()
	// Overwriting already allocated blocks still works when full.
	if err := c.Write(0, 0, blockPattern(0, 1)); err != nil {
		t.Fatalf("overwrite of an allocated block on a full array: %v", err)
	}
	// Free 1 MiB at the start, then new writes fit again.
	if err := c.Unmap(0, 0, 2048); err != nil {
		t.Fatalf("unmap: %v", err)
	}
	z, err := c.Read(0, 0, 8)
	if err != nil || !bytes.Equal(z, make([]byte, 4096)) {
		t.Fatalf("unmapped blocks do not read as zeros: %v", err)
	}
	for lba := written; lba < written+1024; lba += chunk {
		buf := make([]byte, 0, chunk*512)
		for i := uint64(0); i < chunk; i++ {
			buf = append(buf, blockPattern(lba+i, 2)...)
		}
		if err := c.Write(0, lba, buf); err != nil {
			t.Fatalf("write after unmap freed space: %v", err)
		}
	}
}
