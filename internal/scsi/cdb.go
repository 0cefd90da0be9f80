package scsi

import "encoding/binary"

// Operation codes the package implements.
const (
	opTestUnitReady    = 0x00
	opRequestSense     = 0x03
	opRead6            = 0x08
	opWrite6           = 0x0a
	opInquiry          = 0x12
	opModeSelect6      = 0x15
	opReserve6         = 0x16
	opRelease6         = 0x17
	opModeSense6       = 0x1a
	opStartStopUnit    = 0x1b
	opPreventAllow     = 0x1e
	opReadCapacity10   = 0x25
	opRead10           = 0x28
	opWrite10          = 0x2a
	opWriteVerify10    = 0x2e
	opVerify10         = 0x2f
	opPrefetch10       = 0x34
	opSyncCache10      = 0x35
	opReadDefectData10 = 0x37
	opWriteSame10      = 0x41
	opUnmap            = 0x42
	opModeSelect10     = 0x55
	opModeSense10      = 0x5a
	opPRIn             = 0x5e
	opPROut            = 0x5f
	opRead16           = 0x88
	opCompareAndWrite  = 0x89
	opWrite16          = 0x8a
	opOrWrite16        = 0x8b
	opWriteVerify16    = 0x8e
	opVerify16         = 0x8f
	opPrefetch16       = 0x90
	opSyncCache16      = 0x91
	opWriteSame16      = 0x93
	opWriteAtomic16    = 0x9c
	opServiceActionIn  = 0x9e
	opReportLUNs       = 0xa0
	opMaintenanceIn    = 0xa3
	opRead12           = 0xa8
	opWrite12          = 0xaa
	opWriteVerify12    = 0xae
	opVerify12         = 0xaf
	opReadDefectData12 = 0xb7
)

// Service actions.
const (
	saReadCapacity16  = 0x10
	saGetLBAStatus    = 0x12
	saReportTPG       = 0x0a
	saReportOpcodes   = 0x0c
	maxPRInAction     = 0x03
	maxPROutAction    = 0x06
	serviceActionMask = 0x1f
)

func be16(b []byte) uint16 { return binary.BigEndian.Uint16(b) }
func be32(b []byte) uint32 { return binary.BigEndian.Uint32(b) }
func be64(b []byte) uint64 { return binary.BigEndian.Uint64(b) }

func put16(b []byte, v uint16) { binary.BigEndian.PutUint16(b, v) }
func put32(b []byte, v uint32) { binary.BigEndian.PutUint32(b, v) }
func put64(b []byte, v uint64) { binary.BigEndian.PutUint64(b, v) }

// blockRange decodes the LOGICAL BLOCK ADDRESS and the TRANSFER LENGTH (or
// NUMBER OF LOGICAL BLOCKS, VERIFICATION LENGTH...) of a block command,
// and the index of the length field for field pointers. The CDB must be at
// least as long as the opcode's CDB.
func blockRange(cdb []byte) (lba, n uint64, lenField int) {
	switch cdb[0] {
	case opRead6, opWrite6:
		lba = uint64(cdb[1]&0x1f)<<16 | uint64(cdb[2])<<8 | uint64(cdb[3])
		n = uint64(cdb[4])
		if n == 0 {
			n = 256
		}
		return lba, n, 4
	case opRead10, opWrite10, opWriteVerify10, opVerify10, opPrefetch10,
		opSyncCache10, opWriteSame10:
		return uint64(be32(cdb[2:6])), uint64(be16(cdb[7:9])), 7
	case opRead12, opWrite12, opWriteVerify12, opVerify12:
		return uint64(be32(cdb[2:6])), uint64(be32(cdb[6:10])), 6
	case opCompareAndWrite:
		return be64(cdb[2:10]), uint64(cdb[13]), 13
	case opWriteAtomic16:
		return be64(cdb[2:10]), uint64(be16(cdb[12:14])), 12
	default: // 16-byte block commands
		return be64(cdb[2:10]), uint64(be32(cdb[10:14])), 10
	}
}

// cdbLength returns the length of the CDB of an operation code by group.
func cdbLength(op byte) int {
	switch op >> 5 {
	case 0:
		return 6
	case 1, 2:
		return 10
	case 4:
		return 16
	case 5:
		return 12
	}
	return 0
}

// dataOutLength returns how many bytes of data-out the CDB calls for, and
// false if the CDB is too short to tell or is not a command of this
// package.
func dataOutLength(cdb []byte) (uint32, bool) {
	if len(cdb) == 0 || len(cdb) < cdbLength(cdb[0]) {
		return 0, false
	}
	blocks := func() (uint32, bool) {
		_, n, _ := blockRange(cdb)
		if n > 1<<32/BlockSize-1 {
			return 0, false
		}
		return uint32(n) * BlockSize, true
	}
	switch cdb[0] {
	case opWrite6, opWrite10, opWrite12, opWrite16, opWriteVerify10,
		opWriteVerify12, opWriteVerify16, opOrWrite16, opWriteAtomic16:
		return blocks()
	case opVerify10, opVerify12, opVerify16:
		switch (cdb[1] >> 1) & 3 {
		case 1:
			return blocks()
		case 3:
			return BlockSize, true
		}
		return 0, true
	case opCompareAndWrite:
		return 2 * uint32(cdb[13]) * BlockSize, true
	case opWriteSame10:
		return BlockSize, true
	case opWriteSame16:
		if cdb[1]&0x01 != 0 { // NDOB
			return 0, true
		}
		return BlockSize, true
	case opUnmap, opModeSelect10:
		return uint32(be16(cdb[7:9])), true
	case opModeSelect6:
		return uint32(cdb[4]), true
	case opPROut:
		return be32(cdb[5:9]), true
	}
	return 0, true
}

// EncodeLUN returns the 8-byte SAM LUN structure for a LUN number:
// peripheral device addressing below 256, flat space addressing up to
// 16383.
func EncodeLUN(lun uint64) [8]byte {
	var b [8]byte
	if lun < 256 {
		b[1] = byte(lun)
	} else {
		b[0] = 0x40 | byte(lun>>8)&0x3f
		b[1] = byte(lun)
	}
	return b
}

// DecodeLUN returns the LUN number of an 8-byte SAM LUN structure in
// peripheral or flat space addressing (the first level only).
func DecodeLUN(b [8]byte) uint64 {
	switch b[0] >> 6 {
	case 0:
		return uint64(b[1])
	case 1:
		return uint64(b[0]&0x3f)<<8 | uint64(b[1])
	}
	return uint64(binary.BigEndian.Uint16(b[0:2]))
}

// IsPlainWrite reports whether cdb is a WRITE (6, 10, 12 or 16): a
// command whose only effect is writing its data-out, and whose outcome,
// once the data is written, is GOOD.
func IsPlainWrite(cdb []byte) bool {
	if len(cdb) == 0 {
		return false
	}
	switch cdb[0] {
	case opWrite6, opWrite10, opWrite12, opWrite16:
		return true
	}
	return false
}
