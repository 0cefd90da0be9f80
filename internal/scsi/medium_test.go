package scsi

import (
	"context"
	"strings"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/metro-storage/metro/internal/store"
)

// TestMediumErrorNamesLBA runs a logical unit on a real store whose blob
// file (where Pebble keeps chunk values) is damaged behind its back, so
// that Pebble's checksum catches it: single-chunk and multi-chunk reads
// both answer MEDIUM ERROR, UNRECOVERED READ ERROR with the LBA of the
// first unreadable block in INFORMATION, and rewriting that block mends
// it.
func TestMediumErrorNamesLBA(t *testing.T) {
	const blocks = 512 // 256 KiB: 64 chunks
	fs := vfs.NewMem()
	open := func() *store.Store {
		st, err := store.Open("db", store.Options{FS: fs, CacheSize: 1 << 20})
		if err != nil {
			t.Fatal(err)
		}
		return st
	}
	st := open()
	data := make([]byte, blocks*BlockSize)
	for i := range data {
		data[i] = byte(i/BlockSize) | 1
	}
	if err := st.Volume(1).WriteAt(context.Background(), data, 0); err != nil {
		t.Fatal(err)
	}
	// Reopening replays the WAL into sstables and blob files.
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	if err := open().Close(); err != nil {
		t.Fatal(err)
	}
	names, err := fs.List("db")
	if err != nil {
		t.Fatal(err)
	}
	damagedFiles := 0
	for _, name := range names {
		if strings.HasSuffix(name, ".blob") {
			buf, err := fs.UnsafeGetFileDataBuffer("db/" + name)
			if err != nil {
				t.Fatal(err)
			}
			buf[len(buf)/3] ^= 0x40
			damagedFiles++
		}
	}
	if damagedFiles == 0 {
		t.Fatal("no blob file to damage")
	}
	st = open()
	defer st.Close()
	lu := NewLogicalUnit(LUConfig{UUID: testUUID, Size: testSize, Backend: st.Volume(1)})
	tgt := NewTarget(TargetConfig{Resolver: NewStaticResolver(map[uint64]*LogicalUnit{0: lu})})
	n := nx(1)
	exec := func(cdb, out []byte) *Result {
		c := make([]byte, 16)
		copy(c, cdb)
		return tgt.Execute(context.Background(), &Command{Nexus: n, CDB: c, DataOut: out})
	}
	for i := 0; i < 3 && exec([]byte{opTestUnitReady, 0, 0, 0, 0, 0}, nil).Status != StatusGood; i++ {
	}

	// The first damaged block, found one chunk at a time.
	first := -1
	for lba := 0; lba < blocks && first < 0; lba += 8 {
		r := exec(cdbRW16(opRead16, uint64(lba), 8), nil)
		if r.Status == StatusGood {
			continue
		}
		s := expectSense(t, r, SenseMediumError())
		if !s.InfoValid || s.Info != uint32(lba) {
			t.Fatalf("read of LBA %d+8: sense %v information %d (valid %v), want the LBA", lba, s, s.Info, s.InfoValid)
		}
		first = lba
	}
	if first < 0 {
		t.Fatal("no block damaged")
	}
	// One read of everything names the same block.
	s := expectSense(t, exec(cdbRW16(opRead16, 0, blocks), nil), SenseMediumError())
	if !s.InfoValid || s.Info != uint32(first) {
		t.Fatalf("read of all blocks: sense %v information %d (valid %v), want LBA %d", s, s.Info, s.InfoValid, first)
	}
	// Every other command that reads the medium names it too: VERIFY
	// (BYTCHK 0 and 1), COMPARE AND WRITE and ORWRITE, from the block
	// before it when there is one.
	from := max(first-1, 0)
	verify01 := cdbRW16(opVerify16, uint64(from), 2)
	verify01[1] = 0x02 // BYTCHK 01b
	for name, r := range map[string]*Result{
		"verify":            exec(cdbRW16(opVerify16, uint64(from), 8), nil),
		"verify (bytchk 1)": exec(verify01, make([]byte, 2*BlockSize)),
		"compare and write": exec(cdbCAW(uint64(from), 2), make([]byte, 4*BlockSize)),
		"orwrite":           exec(cdbRW16(opOrWrite16, uint64(from), 2), make([]byte, 2*BlockSize)),
	} {
		if r.Status != StatusCheckCondition {
			t.Fatalf("%s over the damaged LBA %d: status %#x, want a medium error", name, first, r.Status)
		}
		s := expectSense(t, r, SenseMediumError())
		if !s.InfoValid || s.Info != uint32(first) {
			t.Fatalf("%s over the damaged LBA %d: information %d (valid %v)", name, first, s.Info, s.InfoValid)
		}
	}

	// Rewriting just that block mends it (the chunk's other blocks stay
	// unreadable until rewritten): the next read names the next block.
	if r := exec(cdbRW16(opWrite16, uint64(first), 1), pattern(9, 1)); r.Status != StatusGood {
		t.Fatalf("rewrite of LBA %d: status %#x sense %s", first, r.Status, senseOf(r))
	}
	s = expectSense(t, exec(cdbRW16(opRead16, uint64(first), 8), nil), SenseMediumError())
	if !s.InfoValid || s.Info != uint32(first+1) {
		t.Fatalf("read after rewriting LBA %d: sense %v information %d, want LBA %d", first, s, s.Info, first+1)
	}
}
