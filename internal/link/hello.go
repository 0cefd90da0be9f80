package link

import (
	"encoding/binary"
	"fmt"
	"io"
	"time"
)

// The hello: a prefix that is the same in every protocol version, then a
// body whose layout belongs to the version.
//
//	0..7   magic "METROLNK"
//	8..9   protocol version
//	10..11 body length (at most maxHelloBody)
//
// Body of version 1:
//
//	0      status (helloStatus)
//	1      connection kind (connKind)
//	2..17  session token
//	18..25 sender's Timeout in nanoseconds
//	26     id length n
//	27..   sender's array id (n bytes), then a reason text to the end
const (
	helloMagic     = "METROLNK"
	helloPrefixLen = 12
	helloFixedBody = 27
	maxHelloBody   = 4096
)

// helloStatus says what a hello is.
type helloStatus uint8

const (
	helloOffer         helloStatus = 1  // dialer: opens a connection
	helloAccept        helloStatus = 2  // listener: accepts the offer
	helloConfirm       helloStatus = 3  // dialer: accepts the listener
	helloRefuseVersion helloStatus = 16 // protocol versions differ
	helloRefusePeer    helloStatus = 17 // the array id is not the configured peer id
	helloRefuse        helloStatus = 18 // anything else (reason says what)
)

func (s helloStatus) refusal() bool { return s >= helloRefuseVersion }

// connKind says which of a session's two connections a connection is.
type connKind uint8

const (
	connData connKind = 1 // requests
	connMeta connKind = 2 // responses, heartbeats, goodbye
)

func (k connKind) String() string {
	switch k {
	case connData:
		return "data"
	case connMeta:
		return "meta"
	}
	return fmt.Sprintf("kind-%d", uint8(k))
}

// hello is a decoded hello. When version is not the reader's own, only
// version is set: the body's layout is unknown.
type hello struct {
	version int
	status  helloStatus
	kind    connKind
	token   [16]byte
	timeout time.Duration
	id      string
	reason  string
}

// marshal encodes h; the reason is cut to fit maxHelloBody.
func (h *hello) marshal() []byte {
	reason := h.reason
	if n := maxHelloBody - helloFixedBody - len(h.id); len(reason) > n {
		reason = reason[:n]
	}
	body := helloFixedBody + len(h.id) + len(reason)
	b := make([]byte, helloPrefixLen, helloPrefixLen+body)
	copy(b, helloMagic)
	binary.BigEndian.PutUint16(b[8:], uint16(h.version))
	binary.BigEndian.PutUint16(b[10:], uint16(body))
	b = append(b, byte(h.status), byte(h.kind))
	b = append(b, h.token[:]...)
	b = binary.BigEndian.AppendUint64(b, uint64(h.timeout))
	b = append(b, byte(len(h.id)))
	b = append(b, h.id...)
	return append(b, reason...)
}

// readHello reads one hello. The body is decoded only when the peer's
// version is localVersion.
func readHello(r io.Reader, localVersion int) (hello, error) {
	var pre [helloPrefixLen]byte
	if _, err := io.ReadFull(r, pre[:]); err != nil {
		return hello{}, err
	}
	if string(pre[:8]) != helloMagic {
		return hello{}, protoErr("no %s hello: the peer is not a metro link endpoint", helloMagic)
	}
	h := hello{version: int(binary.BigEndian.Uint16(pre[8:]))}
	n := int(binary.BigEndian.Uint16(pre[10:]))
	if n > maxHelloBody {
		return h, protoErr("hello body of %d bytes exceeds %d", n, maxHelloBody)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		return h, unexpectedEOF(err)
	}
	if h.version != localVersion {
		return h, nil
	}
	if n < helloFixedBody {
		return h, protoErr("hello body of %d bytes is too short", n)
	}
	h.status = helloStatus(body[0])
	h.kind = connKind(body[1])
	copy(h.token[:], body[2:18])
	h.timeout = time.Duration(binary.BigEndian.Uint64(body[18:26]))
	idLen := int(body[26])
	if helloFixedBody+idLen > n {
		return h, protoErr("hello id of %d bytes overruns the body", idLen)
	}
	h.id = string(body[helloFixedBody : helloFixedBody+idLen])
	h.reason = string(body[helloFixedBody+idLen:])
	return h, nil
}

// writeHello writes h in one write.
func writeHello(w io.Writer, h *hello) error {
	_, err := w.Write(h.marshal())
	return err
}
