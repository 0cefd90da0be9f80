package iscsi

import (
	"encoding/binary"

	"github.com/metro-storage/metro/internal/scsi"
)

// residual is an overflow/underflow count.
type residual struct {
	over, under bool
	count       uint32
}

func (r residual) flags() byte {
	switch {
	case r.over:
		return flagOverflow
	case r.under:
		return flagUnderflw
	}
	return 0
}

func (r residual) bidiFlags() byte {
	switch {
	case r.over:
		return flagBidiOver
	case r.under:
		return flagBidiUnd
	}
	return 0
}

// compare returns the residual of an expected length against the actual
// (or required) one.
func compare(expected, actual uint64) residual {
	switch {
	case actual > expected:
		return residual{over: true, count: uint32(min(actual-expected, 0xffffffff))}
	case actual < expected:
		return residual{under: true, count: uint32(expected - actual)}
	}
	return residual{}
}

// queueResponse queues the Data-In PDUs and the status of a finished task
// (sess.mu is held by the caller).
// The PDUs are queued without waking the writer: the caller sends them
// with c.kick (or c.out.wake) once it holds no session lock.
func (c *conn) queueResponse(t *task, res *scsi.Result) {
	s := t.sess
	data := res.Data
	var readRes, writeRes residual
	if t.read {
		if uint64(len(data)) > uint64(t.readLen) {
			data = data[:t.readLen]
		}
		if res.Status == scsi.StatusGood {
			readRes = compare(uint64(t.readLen), uint64(len(res.Data)))
		}
	} else {
		data = nil // no data-in without the R bit
	}
	if t.write {
		if need, ok := c.dataOutLength(t); ok {
			writeRes = compare(uint64(t.writeLen), uint64(need))
		}
	}
	// The residual fields of the final PDU: for a bidirectional command
	// the read residual goes in the bidi fields.
	var main, bidi residual
	switch {
	case t.read && t.write:
		main, bidi = writeRes, readRes
	case t.read:
		main = readRes
	case t.write:
		main = writeRes
	}

	statusInData := res.Status == scsi.StatusGood && len(res.Sense) == 0 && len(data) > 0 && !t.write
	dataInCount := uint32(0)
	if len(data) > 0 {
		maxSeg := s.p.MaxXmitDataSegment
		burst := s.p.MaxBurstLength
		var ps []*outPDU
		for off := uint32(0); off < uint32(len(data)); {
			n := min(uint32(len(data))-off, maxSeg)
			// Data-In sequences end at MaxBurstLength boundaries.
			if rest := burst - off%burst; n > rest {
				n = rest
			}
			last := off+n == uint32(len(data))
			p := c.srv.getOut()
			p.h.setOpcode(opDataIn, false)
			f := byte(0)
			if last || (off+n)%burst == 0 {
				f |= flagFinal
			}
			if last && statusInData {
				f |= flagStatus | main.flags()
				p.h[3] = byte(res.Status)
				p.h.setField44(main.count)
				p.stat = statAdvance
			}
			p.h[1] = f
			p.h.setLUNRaw(t.lunRaw)
			p.h.setITT(t.itt)
			p.h.setField20(reservedTag)
			p.h.setField36(dataInCount)
			p.h.setField40(off)
			p.data = data[off : off+n]
			p.dataIn = true
			ps = append(ps, p)
			dataInCount++
			off += n
		}
		if statusInData {
			t.passRead(ps[len(ps)-1], len(res.Data))
		}
		c.out.pushQuiet(ps...)
		if statusInData {
			return
		}
	}

	p := c.srv.getOut()
	p.h.setOpcode(opSCSIResp, false)
	p.h[1] = flagFinal | main.flags() | bidi.bidiFlags()
	p.h[2] = 0 // command completed at target
	p.h[3] = byte(res.Status)
	p.h.setITT(t.itt)
	p.h.setField20(0) // SNACK tag
	expDataSN := dataInCount
	if t.write {
		expDataSN = t.r2tSN
	}
	p.h.setField36(expDataSN)
	p.h.setField40(bidi.count)
	p.h.setField44(main.count)
	if len(res.Sense) > 0 {
		sense := make([]byte, 2+len(res.Sense))
		binary.BigEndian.PutUint16(sense, uint16(len(res.Sense)))
		copy(sense[2:], res.Sense)
		p.data = sense
	}
	p.stat = statAdvance
	held := 0
	if len(data) > 0 {
		held = len(res.Data) // what the Data-In PDUs keep alive
	}
	t.passRead(p, held)
	c.out.pushQuiet(p)
}

// passRead hands the read budget the task holds for the n bytes its
// Data-In PDUs keep alive to its last response PDU, which gives it back once written
// (conn.retire). What the task held beyond them (a command that
// transferred less than its Expected Data Transfer Length) is given back
// now (the caller, holding sess.mu, wakes the waiters later).
func (t *task) passRead(p *outPDU, n int) {
	keep := min(uint64(n), t.readCharged)
	t.sess.srv.reads.release(t.sess, 0, t.readCharged-keep)
	p.readSess, p.readBytes = t.sess, keep
	t.readCharged = 0
}

// dataOutLength is how many data-out bytes the task's CDB calls for.
func (c *conn) dataOutLength(t *task) (uint32, bool) {
	return c.srv.dataOutLength(t.cmd.Nexus, t.cmd.LUN, t.cmd.CDB)
}

// cdbDataInLength decodes the data-in length of the READ CDBs (SBC-3) for
// a logical block size.
func cdbDataInLength(cdb []byte, blockSize uint32) (uint32, bool) {
	var blocks uint64
	switch {
	case len(cdb) >= 6 && cdb[0] == 0x08: // READ(6): 0 means 256 blocks
		blocks = uint64(cdb[4])
		if blocks == 0 {
			blocks = 256
		}
	case len(cdb) >= 10 && cdb[0] == 0x28: // READ(10)
		blocks = uint64(binary.BigEndian.Uint16(cdb[7:]))
	case len(cdb) >= 12 && cdb[0] == 0xa8: // READ(12)
		blocks = uint64(binary.BigEndian.Uint32(cdb[6:]))
	case len(cdb) >= 16 && cdb[0] == 0x88: // READ(16)
		blocks = uint64(binary.BigEndian.Uint32(cdb[10:]))
	default:
		return 0, false
	}
	return uint32(min(blocks*uint64(blockSize), 0xffffffff)), true
}

// cdbDataOutLength decodes the data-out length of the common write-type
// CDBs (SBC-3/SPC-4) for a logical block size.
func cdbDataOutLength(cdb []byte, blockSize uint32) (uint32, bool) {
	if len(cdb) == 0 {
		return 0, false
	}
	be16 := func(i int) uint32 { return uint32(binary.BigEndian.Uint16(cdb[i:])) }
	be32 := func(i int) uint32 { return binary.BigEndian.Uint32(cdb[i:]) }
	blocks := func(n uint32) (uint32, bool) {
		v := uint64(n) * uint64(blockSize)
		if v > 0xffffffff {
			return 0, false
		}
		return uint32(v), true
	}
	need := func(n int) bool { return len(cdb) >= n }
	switch cdb[0] {
	case 0x0a: // WRITE(6): 0 means 256 blocks
		if !need(6) {
			return 0, false
		}
		n := uint32(cdb[4])
		if n == 0 {
			n = 256
		}
		return blocks(n)
	case 0x2a, 0x2e: // WRITE(10), WRITE AND VERIFY(10)
		if !need(10) {
			return 0, false
		}
		return blocks(be16(7))
	case 0xaa, 0xae: // WRITE(12), WRITE AND VERIFY(12)
		if !need(12) {
			return 0, false
		}
		return blocks(be32(6))
	case 0x8a, 0x8e: // WRITE(16), WRITE AND VERIFY(16)
		if !need(16) {
			return 0, false
		}
		return blocks(be32(10))
	case 0x89: // COMPARE AND WRITE: verify and write data
		if !need(16) {
			return 0, false
		}
		return blocks(2 * uint32(cdb[13]))
	case 0x41: // WRITE SAME(10)
		if !need(10) {
			return 0, false
		}
		return blockSize, true
	case 0x93: // WRITE SAME(16); NDOB means no data
		if !need(16) {
			return 0, false
		}
		if cdb[1]&0x01 != 0 {
			return 0, true
		}
		return blockSize, true
	case 0x42: // UNMAP: parameter list length
		if !need(10) {
			return 0, false
		}
		return be16(7), true
	case 0x15: // MODE SELECT(6)
		if !need(6) {
			return 0, false
		}
		return uint32(cdb[4]), true
	case 0x55: // MODE SELECT(10)
		if !need(10) {
			return 0, false
		}
		return be16(7), true
	case 0x5f: // PERSISTENT RESERVE OUT
		if !need(10) {
			return 0, false
		}
		return be32(5), true
	}
	return 0, false
}
