package initiator

import (
	"encoding/binary"
	"fmt"
)

// Exec runs one SCSI command on lun. dataOut is sent (immediate data,
// unsolicited data, then in answer to R2Ts); up to dataInLen bytes of
// data-in are returned. A status other than GOOD is a *SCSIError.
func (c *Conn) Exec(lun uint64, cdb []byte, dataOut []byte, dataInLen int) ([]byte, error) {
	if len(cdb) > 16 {
		return nil, fmt.Errorf("CDB of %d bytes: at most 16", len(cdb))
	}
	c.itt++
	itt := c.itt
	var h [48]byte
	h[0] = 0x01
	h[1] = 0x80 | 0x01 // final, SIMPLE
	if dataInLen > 0 {
		h[1] |= 0x40
	}
	edtl := dataInLen
	if len(dataOut) > 0 {
		h[1] |= 0x20
		edtl = len(dataOut)
	}
	binary.BigEndian.PutUint64(h[8:16], encodeLUN(lun))
	binary.BigEndian.PutUint32(h[16:20], itt)
	binary.BigEndian.PutUint32(h[20:24], uint32(edtl))
	binary.BigEndian.PutUint32(h[24:28], c.cmdSN)
	binary.BigEndian.PutUint32(h[28:32], c.expStatSN)
	copy(h[32:48], cdb)
	c.cmdSN++

	sent := 0
	var imm []byte
	if len(dataOut) > 0 && c.immediateData {
		n := min(len(dataOut), c.firstBurst, c.maxSendData)
		imm = dataOut[:n]
		sent = n
	}
	unsolicitedEnd := 0
	if len(dataOut) > 0 && !c.initialR2T {
		unsolicitedEnd = min(len(dataOut), c.firstBurst)
	}
	if sent < unsolicitedEnd {
		h[1] &^= 0x80 // more unsolicited data follows
	}
	if err := c.send(&h, imm); err != nil {
		return nil, err
	}
	if sent < unsolicitedEnd {
		if err := c.sendData(itt, 0xffffffff, dataOut, sent, unsolicitedEnd-sent); err != nil {
			return nil, err
		}
	}
	var in []byte
	for {
		p, err := c.recv()
		if err != nil {
			return nil, err
		}
		switch p.opcode() {
		case 0x20: // NOP-In: answer target pings
			if ttt := binary.BigEndian.Uint32(p.h[20:24]); ttt != 0xffffffff {
				if err := c.nopOut(ttt, p.h[8:16]); err != nil {
					return nil, err
				}
			}
		case 0x31: // R2T
			ttt := binary.BigEndian.Uint32(p.h[20:24])
			off := int(binary.BigEndian.Uint32(p.h[40:44]))
			n := int(binary.BigEndian.Uint32(p.h[44:48]))
			if off+n > len(dataOut) {
				return nil, fmt.Errorf("R2T for bytes %d+%d beyond the %d-byte buffer", off, n, len(dataOut))
			}
			if err := c.sendData(itt, ttt, dataOut, off, n); err != nil {
				return nil, err
			}
		case 0x25: // Data-In
			off := int(binary.BigEndian.Uint32(p.h[40:44]))
			if need := off + len(p.data); need > len(in) {
				in = append(in, make([]byte, need-len(in))...)
			}
			copy(in[off:], p.data)
			if p.h[1]&0x01 != 0 {
				if st := p.h[3]; st != 0 {
					return in, &SCSIError{Status: st}
				}
				return in, nil
			}
		case 0x21: // SCSI Response
			if p.h[2] != 0 {
				return in, fmt.Errorf("iSCSI response 0x%02x (target failure)", p.h[2])
			}
			if st := p.h[3]; st != 0 {
				var sense []byte
				if len(p.data) >= 2 {
					n := int(binary.BigEndian.Uint16(p.data[:2]))
					if 2+n <= len(p.data) {
						sense = p.data[2 : 2+n]
					}
				}
				return in, &SCSIError{Status: st, Sense: sense}
			}
			return in, nil
		case 0x3f:
			return nil, fmt.Errorf("target rejected the command (reason 0x%02x)", p.h[2])
		default:
			// Async messages and the like are ignored.
		}
	}
}

// sendData sends dataOut[off:off+n] as Data-Out PDUs for one burst.
func (c *Conn) sendData(itt, ttt uint32, dataOut []byte, off, n int) error {
	sn := uint32(0)
	for n > 0 {
		seg := min(n, c.maxSendData)
		var h [48]byte
		h[0] = 0x05
		if seg == n {
			h[1] = 0x80
		}
		binary.BigEndian.PutUint32(h[16:20], itt)
		binary.BigEndian.PutUint32(h[20:24], ttt)
		binary.BigEndian.PutUint32(h[28:32], c.expStatSN)
		binary.BigEndian.PutUint32(h[36:40], sn)
		binary.BigEndian.PutUint32(h[40:44], uint32(off))
		if err := c.send(&h, dataOut[off:off+seg]); err != nil {
			return err
		}
		off += seg
		n -= seg
		sn++
	}
	return nil
}

func (c *Conn) nopOut(ttt uint32, lun []byte) error {
	var h [48]byte
	h[0] = 0x00 | 0x40
	h[1] = 0x80
	copy(h[8:16], lun)
	binary.BigEndian.PutUint32(h[16:20], 0xffffffff)
	binary.BigEndian.PutUint32(h[20:24], ttt)
	binary.BigEndian.PutUint32(h[24:28], c.cmdSN)
	binary.BigEndian.PutUint32(h[28:32], c.expStatSN)
	return c.send(&h, nil)
}

// encodeLUN puts a LUN in SAM flat or peripheral addressing.
func encodeLUN(lun uint64) uint64 {
	if lun < 256 {
		return lun << 48
	}
	return (0x4000 | lun&0x3fff) << 48
}

// Read reads blocks 512-byte blocks at lba (READ 16).
func (c *Conn) Read(lun, lba uint64, blocks uint32) ([]byte, error) {
	cdb := make([]byte, 16)
	cdb[0] = 0x88
	binary.BigEndian.PutUint64(cdb[2:10], lba)
	binary.BigEndian.PutUint32(cdb[10:14], blocks)
	return c.Exec(lun, cdb, nil, int(blocks)*512)
}

// Write writes data (a multiple of 512 bytes) at lba (WRITE 16).
func (c *Conn) Write(lun, lba uint64, data []byte) error {
	if len(data)%512 != 0 {
		return fmt.Errorf("write of %d bytes: not whole 512-byte blocks", len(data))
	}
	cdb := make([]byte, 16)
	cdb[0] = 0x8a
	binary.BigEndian.PutUint64(cdb[2:10], lba)
	binary.BigEndian.PutUint32(cdb[10:14], uint32(len(data)/512))
	_, err := c.Exec(lun, cdb, data, 0)
	return err
}

// Unmap deallocates blocks at lba.
func (c *Conn) Unmap(lun, lba uint64, blocks uint32) error {
	param := make([]byte, 24)
	binary.BigEndian.PutUint16(param[0:2], 22)
	binary.BigEndian.PutUint16(param[2:4], 16)
	binary.BigEndian.PutUint64(param[8:16], lba)
	binary.BigEndian.PutUint32(param[16:20], blocks)
	cdb := make([]byte, 10)
	cdb[0] = 0x42
	binary.BigEndian.PutUint16(cdb[7:9], uint16(len(param)))
	_, err := c.Exec(lun, cdb, param, 0)
	return err
}

// TestUnitReady sends TEST UNIT READY.
func (c *Conn) TestUnitReady(lun uint64) error {
	_, err := c.Exec(lun, make([]byte, 6), nil, 0)
	return err
}

// ReadCapacity returns the number of blocks and the block size.
func (c *Conn) ReadCapacity(lun uint64) (blocks uint64, blockSize uint32, err error) {
	cdb := make([]byte, 16)
	cdb[0] = 0x9e
	cdb[1] = 0x10
	binary.BigEndian.PutUint32(cdb[10:14], 32)
	d, err := c.Exec(lun, cdb, nil, 32)
	if err != nil {
		return 0, 0, err
	}
	if len(d) < 12 {
		return 0, 0, fmt.Errorf("READ CAPACITY(16): %d bytes", len(d))
	}
	return binary.BigEndian.Uint64(d[0:8]) + 1, binary.BigEndian.Uint32(d[8:12]), nil
}

// ReportTargetPortGroups returns the raw RTPG data (extended header).
func (c *Conn) ReportTargetPortGroups(lun uint64) ([]byte, error) {
	cdb := make([]byte, 12)
	cdb[0] = 0xa3
	cdb[1] = 0x2a
	binary.BigEndian.PutUint32(cdb[6:10], 1024)
	return c.Exec(lun, cdb, nil, 1024)
}
