package iscsi

import (
	"encoding/binary"
	"fmt"
)

// bhsLen is the size of the Basic Header Segment.
const bhsLen = 48

// maxDataSegment is the largest value of the 24-bit DataSegmentLength and
// of the length keys.
const maxDataSegment = 1<<24 - 1

// reservedTag is the reserved value of Initiator and Target Task Tags.
const reservedTag = 0xffffffff

// opcode is a PDU opcode (byte 0, low six bits).
type opcode uint8

// Initiator opcodes.
const (
	opNopOut     opcode = 0x00
	opSCSICmd    opcode = 0x01
	opTMFReq     opcode = 0x02
	opLoginReq   opcode = 0x03
	opTextReq    opcode = 0x04
	opDataOut    opcode = 0x05
	opLogoutReq  opcode = 0x06
	opSNACKReq   opcode = 0x10
	opNopIn      opcode = 0x20
	opSCSIResp   opcode = 0x21
	opTMFResp    opcode = 0x22
	opLoginResp  opcode = 0x23
	opTextResp   opcode = 0x24
	opDataIn     opcode = 0x25
	opLogoutResp opcode = 0x26
	opR2T        opcode = 0x31
	opAsync      opcode = 0x32
	opReject     opcode = 0x3f
)

func (o opcode) String() string {
	switch o {
	case opNopOut:
		return "NOP-Out"
	case opSCSICmd:
		return "SCSI-Command"
	case opTMFReq:
		return "TMF-Request"
	case opLoginReq:
		return "Login-Request"
	case opTextReq:
		return "Text-Request"
	case opDataOut:
		return "Data-Out"
	case opLogoutReq:
		return "Logout-Request"
	case opSNACKReq:
		return "SNACK"
	case opNopIn:
		return "NOP-In"
	case opSCSIResp:
		return "SCSI-Response"
	case opTMFResp:
		return "TMF-Response"
	case opLoginResp:
		return "Login-Response"
	case opTextResp:
		return "Text-Response"
	case opDataIn:
		return "Data-In"
	case opLogoutResp:
		return "Logout-Response"
	case opR2T:
		return "R2T"
	case opAsync:
		return "Async-Message"
	case opReject:
		return "Reject"
	}
	return fmt.Sprintf("opcode-0x%02x", uint8(o))
}

// Flag bits of byte 1.
const (
	flagFinal    = 0x80 // F: final PDU of a sequence
	flagContinue = 0x40 // C: text continues (login, text)
	flagTransit  = 0x80 // T: login stage transition
	flagRead     = 0x40 // R: SCSI command reads
	flagWrite    = 0x20 // W: SCSI command writes
	flagAck      = 0x40 // A: Data-In acknowledge
	flagBidiOver = 0x10 // o: bidirectional read residual overflow
	flagBidiUnd  = 0x08 // u: bidirectional read residual underflow
	flagOverflow = 0x04 // O: residual overflow
	flagUnderflw = 0x02 // U: residual underflow
	flagStatus   = 0x01 // S: Data-In carries status
	immediateBit = 0x40 // I: in byte 0
)

// Reject reasons (RFC 7143 11.17.1).
const (
	rejectDataDigest     = 0x02
	rejectSNACK          = 0x03
	rejectProtocolError  = 0x04
	rejectNotSupported   = 0x05
	rejectImmediate      = 0x06
	rejectTaskInProgress = 0x07
	rejectInvalidField   = 0x09
	rejectLongOp         = 0x0a
	rejectWaitingLogout  = 0x0c
)

// bhs is a Basic Header Segment. Its accessors read the fields at the
// offsets RFC 7143 section 11 gives; which ones are meaningful depends on
// the opcode.
type bhs [bhsLen]byte

func (h *bhs) opcode() opcode    { return opcode(h[0] & 0x3f) }
func (h *bhs) immediate() bool   { return h[0]&immediateBit != 0 }
func (h *bhs) flags() byte       { return h[1] }
func (h *bhs) final() bool       { return h[1]&flagFinal != 0 }
func (h *bhs) ahsLen() int       { return int(h[4]) * 4 }
func (h *bhs) dataLen() uint32   { return uint32(h[5])<<16 | uint32(h[6])<<8 | uint32(h[7]) }
func (h *bhs) lunRaw() uint64    { return binary.BigEndian.Uint64(h[8:16]) }
func (h *bhs) itt() uint32       { return binary.BigEndian.Uint32(h[16:20]) }
func (h *bhs) field20() uint32   { return binary.BigEndian.Uint32(h[20:24]) }
func (h *bhs) cmdSN() uint32     { return binary.BigEndian.Uint32(h[24:28]) }
func (h *bhs) expStatSN() uint32 { return binary.BigEndian.Uint32(h[28:32]) }
func (h *bhs) field32() uint32   { return binary.BigEndian.Uint32(h[32:36]) }
func (h *bhs) field36() uint32   { return binary.BigEndian.Uint32(h[36:40]) }
func (h *bhs) field40() uint32   { return binary.BigEndian.Uint32(h[40:44]) }
func (h *bhs) field44() uint32   { return binary.BigEndian.Uint32(h[44:48]) }

// Names for the opcode-specific fields used by the target.
func (h *bhs) ttt() uint32       { return h.field20() } // NOP-Out, Text, Data-Out
func (h *bhs) edtl() uint32      { return h.field20() } // SCSI Command
func (h *bhs) refTag() uint32    { return h.field20() } // TMF: Referenced Task Tag
func (h *bhs) refCmdSN() uint32  { return h.field32() } // TMF
func (h *bhs) dataSN() uint32    { return h.field36() } // Data-Out
func (h *bhs) bufOffset() uint32 { return h.field40() } // Data-Out
func (h *bhs) cdb() []byte       { return h[32:48] }    // SCSI Command

// Login request fields.
func (h *bhs) isid() [6]byte    { var b [6]byte; copy(b[:], h[8:14]); return b }
func (h *bhs) tsih() uint16     { return binary.BigEndian.Uint16(h[14:16]) }
func (h *bhs) cid() uint16      { return binary.BigEndian.Uint16(h[20:22]) }
func (h *bhs) versionMax() byte { return h[2] }
func (h *bhs) versionMin() byte { return h[3] }
func (h *bhs) csg() int         { return int(h[1]>>2) & 3 }
func (h *bhs) nsg() int         { return int(h[1]) & 3 }
func (h *bhs) transit() bool    { return h[1]&flagTransit != 0 }
func (h *bhs) cont() bool       { return h[1]&flagContinue != 0 }

// Setters.
func (h *bhs) setOpcode(o opcode, immediate bool) {
	h[0] = byte(o)
	if immediate {
		h[0] |= immediateBit
	}
}
func (h *bhs) setDataLen(n int) {
	h[5], h[6], h[7] = byte(n>>16), byte(n>>8), byte(n)
}
func (h *bhs) setLUNRaw(v uint64)  { binary.BigEndian.PutUint64(h[8:16], v) }
func (h *bhs) setITT(v uint32)     { binary.BigEndian.PutUint32(h[16:20], v) }
func (h *bhs) setField20(v uint32) { binary.BigEndian.PutUint32(h[20:24], v) }
func (h *bhs) setField24(v uint32) { binary.BigEndian.PutUint32(h[24:28], v) }
func (h *bhs) setField28(v uint32) { binary.BigEndian.PutUint32(h[28:32], v) }
func (h *bhs) setField32(v uint32) { binary.BigEndian.PutUint32(h[32:36], v) }
func (h *bhs) setField36(v uint32) { binary.BigEndian.PutUint32(h[36:40], v) }
func (h *bhs) setField40(v uint32) { binary.BigEndian.PutUint32(h[40:44], v) }
func (h *bhs) setField44(v uint32) { binary.BigEndian.PutUint32(h[44:48], v) }

// AHS types (RFC 7143 11.2.2).
const (
	ahsExtendedCDB = 1
	ahsBidiReadLen = 2
)

// parseAHS walks the additional header segments of a SCSI command and
// returns the CDB bytes beyond the 16 in the BHS and the bidirectional
// expected read length (if present).
func parseAHS(ahs []byte) (extCDB []byte, bidiRead uint32, hasBidi bool, err error) {
	for len(ahs) > 0 {
		if len(ahs) < 4 {
			return nil, 0, false, fmt.Errorf("truncated AHS header (%d bytes)", len(ahs))
		}
		n := int(binary.BigEndian.Uint16(ahs[0:2]))
		typ := ahs[2]
		total := pad4(3 + n)
		if n == 0 || total > len(ahs) {
			return nil, 0, false, fmt.Errorf("AHS length %d exceeds the %d bytes left", n, len(ahs))
		}
		// The AHS-specific field starts at byte 3 (its first byte is
		// reserved for both types the target understands).
		spec := ahs[3 : 3+n]
		switch typ {
		case ahsExtendedCDB:
			if extCDB != nil {
				return nil, 0, false, fmt.Errorf("two extended-CDB AHS")
			}
			extCDB = spec[1:]
		case ahsBidiReadLen:
			if n != 5 {
				return nil, 0, false, fmt.Errorf("bidirectional read length AHS of length %d", n)
			}
			bidiRead = binary.BigEndian.Uint32(spec[1:5])
			hasBidi = true
		default:
			return nil, 0, false, fmt.Errorf("unknown AHS type %d", typ)
		}
		ahs = ahs[total:]
	}
	return extCDB, bidiRead, hasBidi, nil
}

// pad4 rounds n up to a multiple of four.
func pad4(n int) int { return (n + 3) &^ 3 }

// decodeLUN turns the 8-byte SAM LUN structure into a LUN number for the
// peripheral and flat space addressing methods of the first level; any
// other structure is returned as its raw 64-bit value (which no logical
// unit will match).
func decodeLUN(raw uint64) uint64 {
	b0 := byte(raw >> 56)
	b1 := byte(raw >> 48)
	rest := raw & 0x0000ffffffffffff
	switch b0 >> 6 {
	case 0: // peripheral device addressing: bus 0 only
		if b0&0x3f == 0 && rest == 0 {
			return uint64(b1)
		}
	case 1: // flat space addressing
		if rest == 0 {
			return uint64(b0&0x3f)<<8 | uint64(b1)
		}
	}
	return raw
}

// encodeLUN is the inverse of decodeLUN for LUN numbers below 16384.
func encodeLUN(lun uint64) uint64 {
	if lun < 256 {
		return lun << 48
	}
	if lun < 1<<14 {
		return (0x4000 | lun) << 48
	}
	return lun
}

// serial number arithmetic (RFC 1982) on 32-bit sequence numbers.
func snLess(a, b uint32) bool { return int32(a-b) < 0 }

// snInWindow reports whether sn lies in [lo, hi].
func snInWindow(sn, lo, hi uint32) bool {
	return int32(sn-lo) >= 0 && int32(hi-sn) >= 0
}
