package replication

import (
	"bytes"
	"slices"
	"testing"

	"github.com/metro-storage/metro/internal/scsi"
)

func TestMessagesRoundTrip(t *testing.T) {
	w := &writeMsg{Pod: "pod1", Volume: "00112233445566778899aabbccddeeff", Off: 4096, Length: 512, Ref: 7, RefOff: 1024, Data: []byte("data")}
	got, err := decodeWrite(w.encode())
	if err != nil || !sameWrite(got, w) || got.Damaged != nil {
		t.Fatalf("write: %+v %v", got, err)
	}
	cp := &writeMsg{Pod: "pod1", Volume: "v", Off: 1 << 20, Length: 8192, Data: make([]byte, 8192),
		Damaged: []extent{{Off: 1<<20 + 512, Length: 1024}, {Off: 1<<20 + 4096, Length: 4096}}}
	if got, err := decodeWrite(cp.encode()); err != nil || !sameWrite(got, cp) {
		t.Fatalf("copied piece with damage: %+v %v", got, err)
	}
	// A count of extents beyond the message is refused before anything
	// is allocated for them.
	huge := (&writeMsg{Pod: "p"}).encode()
	huge = append(huge[:len(huge)-4], 0xff, 0xff, 0xff, 0xff)
	if _, err := decodeWrite(huge); err == nil {
		t.Fatal("a write message claiming 2^32-1 damaged extents decoded")
	}
	if _, err := decodeWrite(cp.encode()[:len(cp.encode())-1]); err == nil {
		t.Fatal("a write message with a truncated extent decoded")
	}
	f := &forwardMsg{Pod: "p", Volume: "v", ID: 9, Cmd: scsi.Command{
		Nexus: scsi.Nexus{InitiatorName: "iqn.x", InitiatorPort: "iqn.x,i,0x1", TargetPort: "iqn.t,t,0x2", RelativePortID: 33},
		LUN:   3, Tag: 44, Attr: scsi.TaskOrdered, CDB: []byte{0x2a, 0, 0, 0}, DataOut: []byte{1, 2, 3}, ExpectedDataIn: 5}}
	gf, err := decodeForward(f.encode())
	if err != nil || gf.Pod != f.Pod || gf.ID != f.ID || gf.Cmd.Nexus != f.Cmd.Nexus || gf.Cmd.LUN != 3 || gf.Cmd.Tag != 44 ||
		gf.Cmd.Attr != scsi.TaskOrdered || !bytes.Equal(gf.Cmd.CDB, f.Cmd.CDB) || !bytes.Equal(gf.Cmd.DataOut, f.Cmd.DataOut) || gf.Cmd.ExpectedDataIn != 5 {
		t.Fatalf("forward: %+v %v", gf, err)
	}
	r := &scsi.Result{Status: scsi.StatusCheckCondition, Sense: []byte{0x70, 0, 5}, Data: []byte{9}, Aborted: true}
	gr, err := decodeResult(encodeResult(r))
	if err != nil || gr.Status != r.Status || !gr.Aborted || !bytes.Equal(gr.Sense, r.Sense) || !bytes.Equal(gr.Data, r.Data) {
		t.Fatalf("result: %+v %v", gr, err)
	}
	wr := &writtenMsg{Pod: "pod1", Ref: 12, Length: 8192}
	if gw, err := decodeWritten(wr.encode()); err != nil || *gw != *wr {
		t.Fatalf("written: %+v %v", gw, err)
	}
	if _, err := decodeWrite(w.encode()[:10]); err == nil {
		t.Fatal("a truncated write message decoded")
	}
	if _, err := decodeWritten(wr.encode()[:12]); err == nil {
		t.Fatal("a truncated written message decoded")
	}
}

// sameWrite reports whether two write messages say the same.
func sameWrite(a, b *writeMsg) bool {
	return a.Pod == b.Pod && a.Volume == b.Volume && a.Off == b.Off && a.Length == b.Length &&
		a.Ref == b.Ref && a.RefOff == b.RefOff && bytes.Equal(a.Data, b.Data) && slices.Equal(a.Damaged, b.Damaged)
}

// TestForwardedCompletes checks when a forwarded plain write may complete
// before the sequencer's answer: only once both copies hold every byte,
// in whichever order the counts arrive, and never for other commands.
func TestForwardedCompletes(t *testing.T) {
	type count struct {
		applied bool // else confirmed
		n       int64
		done    bool // complete after this count
	}
	for name, counts := range map[string][]count{
		"sequencer first": {{false, 8192, false}, {true, 4096, false}, {true, 4096, true}, {false, 4096, true}},
		"follower first":  {{true, 4096, false}, {false, 4096, true}},
	} {
		var total int64
		for _, c := range counts {
			if c.applied {
				total += c.n
			}
		}
		f := &forwarded{total: total, written: make(chan struct{})}
		for i, c := range counts {
			if c.applied {
				f.add(&f.applied, c.n)
			} else {
				f.add(&f.confirmed, c.n) // a late count must not close twice
			}
			select {
			case <-f.written:
				if !c.done {
					t.Fatalf("%s: complete after count %d, before both copies hold the write", name, i)
				}
			default:
				if c.done {
					t.Fatalf("%s: not complete after count %d, with the whole write on both copies", name, i)
				}
			}
		}
	}
	h := &forwarded{} // not a plain write: waits for the answer
	h.add(&h.applied, 4096)
	h.add(&h.confirmed, 4096)
	if h.written != nil {
		t.Fatal("a command other than a plain write got an early completion")
	}
}

// FuzzMessages feeds arbitrary bytes to the link message decoders: they
// fail cleanly, never panic, and what they decode encodes back the same.
func FuzzMessages(f *testing.F) {
	f.Add((&writeMsg{Pod: "pod1", Volume: "v", Off: 1, Length: 2, Data: []byte("x")}).encode())
	f.Add((&writeMsg{Pod: "pod1", Volume: "v", Off: 512, Length: 1024, Data: make([]byte, 1024), Damaged: []extent{{Off: 1024, Length: 512}}}).encode())
	f.Add((&forwardMsg{Pod: "p", Volume: "v", ID: 1, Cmd: scsi.Command{CDB: []byte{0}}}).encode())
	f.Add(encodeResult(&scsi.Result{Status: 2, Sense: []byte{1}}))
	f.Add((&writtenMsg{Pod: "p", Ref: 3, Length: 512}).encode())
	f.Add([]byte{0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, p []byte) {
		if m, err := decodeWrite(p); err == nil {
			if g, err := decodeWrite(m.encode()); err != nil || !sameWrite(g, m) {
				t.Fatalf("write re-encode: %+v %v", g, err)
			}
			// What a follower accepts of a copied piece's damage lies
			// inside the piece, on block boundaries.
			if checkDamaged(m, msgBaseline, uint64(len(m.Data))) == nil {
				for _, x := range m.Damaged {
					if x.Off < m.Off || x.Off+x.Length > m.Off+uint64(len(m.Data)) || x.Off%512 != 0 || x.Length%512 != 0 || x.Length == 0 {
						t.Fatalf("damaged extent %+v accepted for a piece of %d bytes at %d", x, len(m.Data), m.Off)
					}
				}
			}
		}
		if m, err := decodeForward(p); err == nil {
			if _, err := decodeForward(m.encode()); err != nil {
				t.Fatalf("forward re-encode: %v", err)
			}
		}
		if m, err := decodeWritten(p); err == nil {
			if g, err := decodeWritten(m.encode()); err != nil || *g != *m {
				t.Fatalf("written re-encode: %+v %v", g, err)
			}
		}
		if r, err := decodeResult(p); err == nil {
			if _, err := decodeResult(encodeResult(r)); err != nil {
				t.Fatalf("result re-encode: %v", err)
			}
		}
	})
}
