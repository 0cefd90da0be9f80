package link

import (
	"bytes"
	"errors"
	"io"
	"runtime"
	"testing"
	"time"
)

func seedFrames() [][]byte {
	req := appendFrame(nil, header{kind: kindRequest, typ: 7, id: 1, epoch: 42}, []byte("payload"))
	resp := appendFrame(nil, header{kind: kindResponse, typ: 8, id: 1, epoch: 42}, []byte("answer"))
	errResp := appendFrame(nil, header{kind: kindError, typ: 7, id: 2}, []byte("disk on fire"))
	ping := appendFrame(nil, header{kind: kindPing, id: 3}, nil)
	pong := appendFrame(nil, header{kind: kindPong, id: 3}, nil)
	bye := appendFrame(nil, header{kind: kindGoodbye}, nil)
	flags := bytes.Clone(ping)
	flags[1] = 1
	huge := bytes.Clone(ping)
	huge[4], huge[5], huge[6], huge[7] = 0xff, 0xff, 0xff, 0xff
	return [][]byte{req, resp, errResp, ping, pong, bye, flags, huge, req[:30],
		append(append(bytes.Clone(req), resp...), ping...)}
}

// FuzzFrame feeds arbitrary bytes to the frame decoder: it must not panic,
// must not allocate a payload beyond its maximum, and every frame it
// accepts must re-encode to exactly the bytes it was read from.
func FuzzFrame(f *testing.F) {
	for _, s := range seedFrames() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		// A small maximum keeps the fuzzer fast; TestFrameLimit checks
		// the real one.
		const max = 1 << 16
		r := bytes.NewReader(in)
		fr := frameReader{r: r, max: max}
		off := 0
		for {
			h, p, err := fr.next()
			if err != nil {
				if n := len(in) - off; n >= headerLen && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, errProtocol) {
					t.Fatalf("error %v with %d bytes left", err, n)
				}
				return
			}
			if len(p) > max || uint32(len(p)) != h.length {
				t.Fatalf("payload of %d bytes for length %d (max %d)", len(p), h.length, max)
			}
			end := len(in) - r.Len()
			if enc := appendFrame(nil, h, p); !bytes.Equal(enc, in[off:end]) {
				t.Fatalf("frame re-encodes to\n%x\nread from\n%x", enc, in[off:end])
			}
			off = end
		}
	})
}

// FuzzHello feeds arbitrary bytes to the hello decoder: no panic, and a
// hello it decodes re-encodes to the same bytes.
func FuzzHello(f *testing.F) {
	offer := hello{version: ProtocolVersion, status: helloOffer, kind: connData, token: [16]byte{1, 2, 3}, timeout: 2 * time.Second, id: "array-a"}
	refusal := hello{version: ProtocolVersion, status: helloRefusePeer, kind: connMeta, id: "array-b", reason: "wrong peer"}
	other := hello{version: 9, status: helloOffer, id: "x"}
	for _, h := range []hello{offer, refusal, other} {
		f.Add(h.marshal())
	}
	f.Add([]byte("METROLNK\x00\x01\xff\xff"))
	f.Add([]byte("NOTMETRO\x00\x01\x00\x00"))
	f.Fuzz(func(t *testing.T, in []byte) {
		r := bytes.NewReader(in)
		h, err := readHello(r, ProtocolVersion)
		if err != nil || h.version != ProtocolVersion {
			return
		}
		used := in[:len(in)-r.Len()]
		if enc := h.marshal(); !bytes.Equal(enc, used) {
			t.Fatalf("hello re-encodes to\n%x\nread from\n%x", enc, used)
		}
	})
}

// TestFrameLimit checks that a frame announcing more than MaxPayload is
// refused from its header, before anything is allocated for it.
func TestFrameLimit(t *testing.T) {
	hdr := appendFrame(nil, header{kind: kindRequest, id: 1}, nil)
	hdr[4], hdr[5], hdr[6], hdr[7] = 0xff, 0xff, 0xff, 0xff
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	const runs = 10
	for range runs {
		fr := frameReader{r: bytes.NewReader(hdr), max: MaxPayload}
		if _, _, err := fr.next(); !errors.Is(err, errProtocol) {
			t.Fatalf("oversize frame: %v", err)
		}
	}
	runtime.ReadMemStats(&after)
	if n := (after.TotalAlloc - before.TotalAlloc) / runs; n > 4096 {
		t.Fatalf("%d bytes allocated refusing an oversize frame", n)
	}
	// Exactly MaxPayload is accepted.
	full := appendFrame(nil, header{kind: kindRequest, id: 1}, make([]byte, MaxPayload))
	fr := frameReader{r: bytes.NewReader(full), max: MaxPayload}
	if h, p, err := fr.next(); err != nil || len(p) != MaxPayload || h.length != MaxPayload {
		t.Fatalf("frame of MaxPayload: %v", err)
	}
}
