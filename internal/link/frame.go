package link

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// frameKind is the first byte of a frame header.
type frameKind uint8

const (
	kindRequest  frameKind = 1 + iota // data: a request for the peer's handler
	kindResponse                      // meta: a handler's answer
	kindError                         // meta: a handler's error (payload: its text)
	kindPing                          // meta: heartbeat (id: sequence number)
	kindPong                          // meta: answer to a ping (same id)
	kindGoodbye                       // meta: the sender closes the session
)

func (k frameKind) String() string {
	switch k {
	case kindRequest:
		return "request"
	case kindResponse:
		return "response"
	case kindError:
		return "error-response"
	case kindPing:
		return "ping"
	case kindPong:
		return "pong"
	case kindGoodbye:
		return "goodbye"
	}
	return fmt.Sprintf("kind-%d", uint8(k))
}

// headerLen is the size of a frame header:
//
//	0      kind
//	1      flags (reserved, zero)
//	2..3   type
//	4..7   payload length
//	8..15  request id
//	16..23 epoch
const headerLen = 24

// header is a decoded frame header.
type header struct {
	kind   frameKind
	typ    uint16
	length uint32
	id     uint64
	epoch  uint64
}

func (h *header) put(b *[headerLen]byte) {
	b[0] = byte(h.kind)
	b[1] = 0
	binary.BigEndian.PutUint16(b[2:], h.typ)
	binary.BigEndian.PutUint32(b[4:], h.length)
	binary.BigEndian.PutUint64(b[8:], h.id)
	binary.BigEndian.PutUint64(b[16:], h.epoch)
}

// parseHeader decodes a header and checks it, including the payload length
// against max, before anything is allocated for the payload.
func parseHeader(b *[headerLen]byte, max uint32) (header, error) {
	h := header{
		kind:   frameKind(b[0]),
		typ:    binary.BigEndian.Uint16(b[2:]),
		length: binary.BigEndian.Uint32(b[4:]),
		id:     binary.BigEndian.Uint64(b[8:]),
		epoch:  binary.BigEndian.Uint64(b[16:]),
	}
	if h.kind < kindRequest || h.kind > kindGoodbye {
		return h, protoErr("unknown frame kind %d", b[0])
	}
	if b[1] != 0 {
		return h, protoErr("%s frame with reserved flags 0x%02x", h.kind, b[1])
	}
	if h.length > max {
		return h, protoErr("%s frame of %d bytes exceeds the %d-byte maximum", h.kind, h.length, max)
	}
	return h, nil
}

// frameReader reads frames from a connection.
type frameReader struct {
	r io.Reader
	// max is the largest payload accepted.
	max uint32
	// admit, when set, is called with each checked header before its
	// payload is allocated; its error ends the reading.
	admit func(header) error
	hdr   [headerLen]byte
}

// next reads one frame. The payload is freshly allocated (nil when empty)
// and belongs to the caller. At most max bytes are allocated, and only once
// the header has been read and checked.
func (fr *frameReader) next() (header, []byte, error) {
	if _, err := io.ReadFull(fr.r, fr.hdr[:]); err != nil {
		return header{}, nil, err
	}
	h, err := parseHeader(&fr.hdr, fr.max)
	if err != nil {
		return h, nil, err
	}
	if fr.admit != nil {
		if err := fr.admit(h); err != nil {
			return h, nil, err
		}
	}
	if h.length == 0 {
		return h, nil, nil
	}
	p := make([]byte, h.length)
	if _, err := io.ReadFull(fr.r, p); err != nil {
		return h, nil, unexpectedEOF(err)
	}
	return h, p, nil
}

// writeFrame buffers one frame; h.length is set from the payload.
func writeFrame(w *bufio.Writer, h *header, payload []byte) error {
	var b [headerLen]byte
	h.length = uint32(len(payload))
	h.put(&b)
	if _, err := w.Write(b[:]); err != nil {
		return err
	}
	_, err := w.Write(payload)
	return err
}

// appendFrame appends the encoding of one frame to dst.
func appendFrame(dst []byte, h header, payload []byte) []byte {
	var b [headerLen]byte
	h.length = uint32(len(payload))
	h.put(&b)
	return append(append(dst, b[:]...), payload...)
}

// unexpectedEOF turns an EOF in the middle of something into
// io.ErrUnexpectedEOF.
func unexpectedEOF(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}
