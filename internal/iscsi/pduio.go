package iscsi

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math/bits"
	"sync"
)

// crc32cTable returns the Castagnoli table (hash/crc32 builds it once and
// uses the CPU's CRC32C instructions where it can).
func crc32cTable() *crc32.Table { return crc32.MakeTable(crc32.Castagnoli) }

// errProtocol marks errors caused by what the peer sent; the connection is
// dropped with a log line.
var errProtocol = errors.New("iscsi protocol error")

// errDigest marks a header or data digest mismatch.
var errDigest = errors.New("iscsi digest mismatch")

func protoErr(format string, args ...any) error {
	return fmt.Errorf("%w: %s", errProtocol, fmt.Sprintf(format, args...))
}

// maxAHS is the largest AHS the 8-bit TotalAHSLength can describe.
const maxAHS = 255 * 4

// pduReader reads PDUs from a connection. Header and data are read in two
// steps so the caller can direct the data segment straight into its final
// buffer (a task's data-out buffer) without a copy.
type pduReader struct {
	r          *bufio.Reader
	hdrDigest  bool
	dataDigest bool
	// maxData is the largest data segment accepted (the target's declared
	// MaxRecvDataSegmentLength).
	maxData uint32

	ahs     [maxAHS]byte
	scratch []byte
	pad     [8]byte
	// drop receives data that is read only to be dropped.
	drop [4096]byte
}

// readBHS reads the 48-byte basic header segment alone and checks the
// announced data length before anything more is read, so that garbage (or
// a hostile peer) claiming megabytes is dropped at once instead of holding
// the connection open while we wait for them.
func (pr *pduReader) readBHS(h *bhs) error {
	if _, err := io.ReadFull(pr.r, h[:]); err != nil {
		return err
	}
	if dl := h.dataLen(); dl > pr.maxData {
		return protoErr("%s data segment of %d bytes exceeds MaxRecvDataSegmentLength %d", h.opcode(), dl, pr.maxData)
	}
	return nil
}

// readHeader reads the BHS, any AHS and the header digest. The returned
// AHS slice is valid until the next call.
func (pr *pduReader) readHeader(h *bhs) ([]byte, error) {
	if err := pr.readBHS(h); err != nil {
		return nil, err
	}
	n := h.ahsLen()
	ahs := pr.ahs[:n]
	if n > 0 {
		if _, err := io.ReadFull(pr.r, ahs); err != nil {
			return nil, unexpectedEOF(err)
		}
	}
	if pr.hdrDigest {
		if _, err := io.ReadFull(pr.r, pr.pad[:4]); err != nil {
			return nil, unexpectedEOF(err)
		}
		sum := crc32.Update(0, crc32cTable(), h[:])
		sum = crc32.Update(sum, crc32cTable(), ahs)
		if got := binary.LittleEndian.Uint32(pr.pad[:4]); got != sum {
			return nil, fmt.Errorf("%w: header digest 0x%08x, computed 0x%08x (%s)", errDigest, got, sum, h.opcode())
		}
	}
	return ahs, nil
}

// readData reads the data segment announced by h: its first len(dst)
// bytes into dst (which may not be longer than the segment), the rest,
// the padding and the data digest checked and dropped.
func (pr *pduReader) readData(h *bhs, dst []byte) error {
	n := int(h.dataLen())
	if len(dst) > n {
		return fmt.Errorf("internal: data buffer of %d bytes for a %d-byte segment", len(dst), n)
	}
	if n == 0 {
		return nil
	}
	if _, err := io.ReadFull(pr.r, dst); err != nil {
		return unexpectedEOF(err)
	}
	var sum uint32
	if pr.dataDigest {
		sum = crc32.Update(0, crc32cTable(), dst)
	}
	// The rest of the segment and its padding pass through a small
	// buffer: nothing is allocated for data that is dropped.
	for rest := pad4(n) - len(dst); rest > 0; {
		k := min(rest, len(pr.drop))
		if _, err := io.ReadFull(pr.r, pr.drop[:k]); err != nil {
			return unexpectedEOF(err)
		}
		if pr.dataDigest {
			sum = crc32.Update(sum, crc32cTable(), pr.drop[:k])
		}
		rest -= k
	}
	if !pr.dataDigest {
		return nil
	}
	if _, err := io.ReadFull(pr.r, pr.pad[:4]); err != nil {
		return unexpectedEOF(err)
	}
	if got := binary.LittleEndian.Uint32(pr.pad[:4]); got != sum {
		return fmt.Errorf("%w: data digest 0x%08x, computed 0x%08x (%s)", errDigest, got, sum, h.opcode())
	}
	return nil
}

// Scratch buffer sizes: the buffer grows by scratchStep as data arrives,
// and one that grew beyond scratchKeep is let go when the next PDU comes.
const (
	scratchStep = 16 << 10
	scratchKeep = 64 << 10
)

// readDataScratch reads the data segment into a buffer owned by the reader
// and valid until the next call. The buffer grows as the data arrives, so
// a peer announcing a long segment and sending nothing costs no more than
// what it sent.
func (pr *pduReader) readDataScratch(h *bhs) ([]byte, error) {
	if cap(pr.scratch) > scratchKeep {
		pr.scratch = nil
	}
	n := int(h.dataLen())
	buf := pr.scratch[:0]
	for len(buf) < n {
		k := min(n-len(buf), max(cap(buf)-len(buf), len(buf), scratchStep))
		if cap(buf)-len(buf) < k {
			grown := make([]byte, len(buf), len(buf)+k)
			copy(grown, buf)
			buf = grown
			pr.scratch = buf
		}
		if _, err := io.ReadFull(pr.r, buf[len(buf):len(buf)+k]); err != nil {
			return nil, unexpectedEOF(err)
		}
		buf = buf[:len(buf)+k]
	}
	// The data is in; then the padding and the digest.
	if err := pr.readTrailer(h, buf); err != nil {
		return nil, err
	}
	return buf, nil
}

// readTrailer reads the padding and data digest after a data segment that
// was read whole into data.
func (pr *pduReader) readTrailer(h *bhs, data []byte) error {
	if len(data) == 0 {
		return nil
	}
	padN := pad4(len(data)) - len(data)
	trailer := padN
	if pr.dataDigest {
		trailer += 4
	}
	if trailer > 0 {
		if _, err := io.ReadFull(pr.r, pr.pad[:trailer]); err != nil {
			return unexpectedEOF(err)
		}
	}
	if pr.dataDigest {
		sum := crc32.Update(0, crc32cTable(), data)
		sum = crc32.Update(sum, crc32cTable(), pr.pad[:padN])
		if got := binary.LittleEndian.Uint32(pr.pad[padN : padN+4]); got != sum {
			return fmt.Errorf("%w: data digest 0x%08x, computed 0x%08x (%s)", errDigest, got, sum, h.opcode())
		}
	}
	return nil
}

// discardData reads and drops the data segment (digest still checked).
func (pr *pduReader) discardData(h *bhs) error {
	return pr.readData(h, nil)
}

func unexpectedEOF(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// pduWriter encodes PDUs onto a buffered writer.
type pduWriter struct {
	w          *bufio.Writer
	hdrDigest  bool
	dataDigest bool
	zero       [8]byte
}

// write encodes one PDU (the target never sends AHS). It sets the data
// segment length in h from data.
func (pw *pduWriter) write(h *bhs, data []byte) error {
	h[4] = 0
	h.setDataLen(len(data))
	if _, err := pw.w.Write(h[:]); err != nil {
		return err
	}
	if pw.hdrDigest {
		var d [4]byte
		binary.LittleEndian.PutUint32(d[:], crc32.Update(0, crc32cTable(), h[:]))
		if _, err := pw.w.Write(d[:]); err != nil {
			return err
		}
	}
	if len(data) == 0 {
		return nil
	}
	if _, err := pw.w.Write(data); err != nil {
		return err
	}
	padN := pad4(len(data)) - len(data)
	if padN > 0 {
		if _, err := pw.w.Write(pw.zero[:padN]); err != nil {
			return err
		}
	}
	if pw.dataDigest {
		sum := crc32.Update(0, crc32cTable(), data)
		sum = crc32.Update(sum, crc32cTable(), pw.zero[:padN])
		var d [4]byte
		binary.LittleEndian.PutUint32(d[:], sum)
		if _, err := pw.w.Write(d[:]); err != nil {
			return err
		}
	}
	return nil
}

// Data-out buffers come from power-of-two size classes so a busy session
// reuses them instead of allocating (and zeroing) one per command.
const (
	minBufShift = 12 // 4 KiB
	maxBufShift = 26 // 64 MiB
)

type bufferPool struct {
	classes [maxBufShift - minBufShift + 1]sync.Pool
}

// get returns a buffer of length n (contents unspecified).
func (p *bufferPool) get(n int) *[]byte {
	c := sizeClass(n)
	if c < 0 {
		b := make([]byte, n)
		return &b
	}
	if v, ok := p.classes[c].Get().(*[]byte); ok {
		*v = (*v)[:n]
		return v
	}
	b := make([]byte, n, 1<<(c+minBufShift))
	return &b
}

// put returns a buffer obtained from get.
func (p *bufferPool) put(b *[]byte) {
	if b == nil {
		return
	}
	c := sizeClass(cap(*b))
	if c < 0 || cap(*b) != 1<<(c+minBufShift) {
		return
	}
	p.classes[c].Put(b)
}

func sizeClass(n int) int {
	if n <= 1<<minBufShift {
		return 0
	}
	shift := bits.Len(uint(n - 1))
	if shift > maxBufShift {
		return -1
	}
	return shift - minBufShift
}
