package store

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

func TestMeta(t *testing.T) {
	s, fs := openMem(t, Options{})
	if _, ok, err := s.GetMeta("cfg/x"); ok || err != nil {
		t.Fatalf("missing key: %v %v", ok, err)
	}
	b := s.NewBatch()
	for _, k := range []string{"cfg/a", "cfg/b", "cfg/b/c", "cfh", "cf", "pr/1", "", "cfg/\xff\xff"} {
		b.SetMeta(k, []byte("v:"+k))
	}
	val := []byte("reused")
	b.SetMeta("copy", val)
	val[0] = 'X' // the batch keeps its own copy
	if err := b.Commit(); err != nil {
		t.Fatal(err)
	}
	if err := b.Commit(); err == nil {
		t.Fatal("second Commit of a batch succeeded")
	}
	if v, ok, err := s.GetMeta("copy"); err != nil || !ok || string(v) != "reused" {
		t.Fatalf("copy: %q %v %v", v, ok, err)
	}
	scan := func(prefix string) string {
		var got []string
		err := s.ScanMeta(prefix, func(k string, v []byte) error {
			if string(v) != "v:"+k {
				t.Errorf("key %q value %q", k, v)
			}
			got = append(got, k)
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		return strings.Join(got, ",")
	}
	if got := scan("cfg/"); got != "cfg/a,cfg/b,cfg/b/c,cfg/\xff\xff" {
		t.Fatalf("scan cfg/: %q", got)
	}
	if got := scan("cf"); got != "cf,cfg/a,cfg/b,cfg/b/c,cfg/\xff\xff,cfh" {
		t.Fatalf("scan cf: %q", got)
	}
	if got := scan("pr/"); got != "pr/1" {
		t.Fatalf("scan pr/: %q", got)
	}
	stop := errors.New("stop")
	n := 0
	err := s.ScanMeta("", func(string, []byte) error { n++; return stop })
	if err != stop || n != 1 {
		t.Fatalf("scan stop: %v after %d", err, n)
	}
	// Metadata lives apart from volume data: a volume's data does not show.
	mustWrite(t, s.Volume(1), pattern(1, 0, 512), 0)
	if got := scan("\x03"); got != "" {
		t.Fatalf("data visible as metadata: %q", got)
	}

	b = s.NewBatch()
	b.DeleteMeta("cfg/b")
	b.SetMeta("cfg/a", []byte("v:cfg/a"))
	if err := b.Commit(); err != nil {
		t.Fatal(err)
	}
	s = reopen(t, s, fs, Options{})
	if got := strings.Join(keys(t, s, "cfg/"), ","); got != "cfg/a,cfg/b/c,cfg/\xff\xff" {
		t.Fatalf("after reopen: %q", got)
	}
	// An empty batch commits trivially.
	if err := s.NewBatch().Commit(); err != nil {
		t.Fatal(err)
	}
}

func keys(t *testing.T, s *Store, prefix string) []string {
	var out []string
	if err := s.ScanMeta(prefix, func(k string, _ []byte) error { out = append(out, k); return nil }); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestBatchDataAndMetaAtomic(t *testing.T) {
	s, _ := openMem(t, Options{Capacity: 4 * ChunkSize})
	v, w := s.Volume(1), s.Volume(2)
	// Writes to two volumes, an overlapping rewrite, an unmap and
	// metadata, in one batch.
	b := s.NewBatch()
	for _, err := range []error{
		b.WriteAt(v, pattern(1, 0, 2*ChunkSize), 0),
		b.WriteAt(w, pattern(2, 0, ChunkSize), 0),
		b.WriteAt(v, pattern(3, 0, 512), 1024),
		b.Unmap(v, ChunkSize, ChunkSize),
		b.WriteAt(v, pattern(4, 0, 512), ChunkSize+512),
	} {
		if err != nil {
			t.Fatal(err)
		}
	}
	b.SetMeta("seq", []byte("1"))
	if err := b.Commit(); err != nil {
		t.Fatal(err)
	}
	want := pattern(1, 0, 2*ChunkSize)
	copy(want[1024:], pattern(3, 0, 512))
	clear(want[ChunkSize:])
	copy(want[ChunkSize+512:], pattern(4, 0, 512))
	equalOrFail(t, "volume 1", mustRead(t, v, 0, 2*ChunkSize), want)
	equalOrFail(t, "volume 2", mustRead(t, w, 0, ChunkSize), pattern(2, 0, ChunkSize))
	if v.Used() != 2*ChunkSize || w.Used() != ChunkSize {
		t.Fatalf("used %d %d", v.Used(), w.Used())
	}

	// A batch that runs out of space applies none of its parts, metadata
	// included.
	b = s.NewBatch()
	b.SetMeta("seq", []byte("2"))
	if err := b.WriteAt(v, pattern(5, 0, 512), 0); err != nil {
		t.Fatal(err)
	}
	if err := b.WriteAt(w, pattern(6, 0, 2*ChunkSize), 4*ChunkSize); err != nil {
		t.Fatal(err)
	}
	if err := b.Commit(); !errors.Is(err, ErrNoSpace) {
		t.Fatalf("commit: %v, want ErrNoSpace", err)
	}
	if val, _, _ := s.GetMeta("seq"); string(val) != "1" {
		t.Fatalf("seq %q after failed batch", val)
	}
	equalOrFail(t, "volume 1 after failed batch", mustRead(t, v, 0, 2*ChunkSize), want)
	mustCheck(t, s)

	// Invalid arguments are refused when added.
	if err := s.NewBatch().WriteAt(v, make([]byte, 100), 0); !errors.Is(err, ErrInvalid) {
		t.Fatalf("bad write: %v", err)
	}
}

func TestManyVolumesOneBatch(t *testing.T) {
	s, _ := openMem(t, Options{})
	b := s.NewBatch()
	for id := range uint64(50) {
		if err := b.WriteAt(s.Volume(id), pattern(id, 0, ChunkSize), int64(id)*ChunkSize); err != nil {
			t.Fatal(err)
		}
		b.SetMeta(fmt.Sprintf("vol/%02d", id), []byte("x"))
	}
	if err := b.Commit(); err != nil {
		t.Fatal(err)
	}
	for id := range uint64(50) {
		equalOrFail(t, "volume", mustRead(t, s.Volume(id), int64(id)*ChunkSize, ChunkSize), pattern(id, 0, ChunkSize))
	}
	if n := len(keys(t, s, "vol/")); n != 50 {
		t.Fatalf("%d metadata keys", n)
	}
	mustCheck(t, s)
}
