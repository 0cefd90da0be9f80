package scsi

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Sense keys (SPC-4 4.5.6).
const (
	KeyNoSense        byte = 0x0
	KeyNotReady       byte = 0x2
	KeyMediumError    byte = 0x3
	KeyHardwareError  byte = 0x4
	KeyIllegalRequest byte = 0x5
	KeyUnitAttention  byte = 0x6
	KeyDataProtect    byte = 0x7
	KeyAbortedCommand byte = 0xB
	KeyMiscompare     byte = 0xE
)

// senseLen is the length of the fixed-format sense data the package returns.
const senseLen = 18

// Sense is one sense condition: key, additional sense code and qualifier,
// and the optional INFORMATION and SENSE KEY SPECIFIC fields. It encodes
// as fixed-format sense data (the control mode page has D_SENSE=0).
type Sense struct {
	Key  byte
	ASC  byte
	ASCQ byte
	// Info is the INFORMATION field, valid when InfoValid is set.
	Info      uint32
	InfoValid bool
	// SKS holds the three SENSE KEY SPECIFIC bytes (SKSV is bit 7 of
	// SKS[0]); zero when not used.
	SKS [3]byte
}

// Bytes encodes s as 18 bytes of fixed-format sense data (response code
// 70h, current error).
func (s Sense) Bytes() []byte {
	b := make([]byte, senseLen)
	b[0] = 0x70
	if s.InfoValid {
		b[0] |= 0x80
		binary.BigEndian.PutUint32(b[3:7], s.Info)
	}
	b[2] = s.Key & 0x0f
	b[7] = senseLen - 8
	b[12] = s.ASC
	b[13] = s.ASCQ
	copy(b[15:18], s.SKS[:])
	return b
}

// String formats s as "KEY/ASC/ASCQ" in hexadecimal.
func (s Sense) String() string {
	return fmt.Sprintf("%x/%02x/%02x", s.Key, s.ASC, s.ASCQ)
}

// Is reports whether s has the same key, ASC and ASCQ as o.
func (s Sense) Is(o Sense) bool {
	return s.Key == o.Key && s.ASC == o.ASC && s.ASCQ == o.ASCQ
}

// ErrSenseFormat is returned by ParseSense for data it cannot decode.
var ErrSenseFormat = errors.New("scsi: unsupported sense data format")

// ParseSense decodes fixed-format sense data (response code 70h or 71h).
func ParseSense(b []byte) (Sense, error) {
	if len(b) < 14 || (b[0]&0x7f != 0x70 && b[0]&0x7f != 0x71) {
		return Sense{}, fmt.Errorf("%d bytes, response code %#x: %w", len(b), firstByte(b), ErrSenseFormat)
	}
	s := Sense{Key: b[2] & 0x0f, ASC: b[12], ASCQ: b[13]}
	if b[0]&0x80 != 0 {
		s.InfoValid = true
		s.Info = binary.BigEndian.Uint32(b[3:7])
	}
	if len(b) >= 18 {
		copy(s.SKS[:], b[15:18])
	}
	return s, nil
}

func firstByte(b []byte) byte {
	if len(b) == 0 {
		return 0
	}
	return b[0]
}

// fieldPointer builds SENSE KEY SPECIFIC bytes for an ILLEGAL REQUEST: the
// byte (and, when bit >= 0, the bit) of the CDB (cdb=true) or parameter
// list at fault.
func fieldPointer(cdb bool, field, bit int) [3]byte {
	var sks [3]byte
	sks[0] = 0x80 // SKSV
	if cdb {
		sks[0] |= 0x40 // C/D
	}
	if bit >= 0 && bit < 8 {
		sks[0] |= 0x08 | byte(bit) // BPV, bit pointer
	}
	binary.BigEndian.PutUint16(sks[1:3], uint16(field))
	return sks
}

// SenseNoSense is the sense data REQUEST SENSE returns when nothing is
// pending: NO SENSE, NO ADDITIONAL SENSE INFORMATION.
func SenseNoSense() Sense { return Sense{Key: KeyNoSense} }

// SenseInvalidOpcode is ILLEGAL REQUEST, INVALID COMMAND OPERATION CODE
// (05/20/00).
func SenseInvalidOpcode() Sense { return Sense{Key: KeyIllegalRequest, ASC: 0x20} }

// SenseInvalidFieldInCDB is ILLEGAL REQUEST, INVALID FIELD IN CDB (05/24/00)
// with a field pointer to byte field of the CDB.
func SenseInvalidFieldInCDB(field int) Sense {
	return Sense{Key: KeyIllegalRequest, ASC: 0x24, SKS: fieldPointer(true, field, -1)}
}

// SenseInvalidBitInCDB is INVALID FIELD IN CDB (05/24/00) pointing at one
// bit of one byte of the CDB.
func SenseInvalidBitInCDB(field, bit int) Sense {
	return Sense{Key: KeyIllegalRequest, ASC: 0x24, SKS: fieldPointer(true, field, bit)}
}

// SenseInvalidFieldInParameterList is ILLEGAL REQUEST, INVALID FIELD IN
// PARAMETER LIST (05/26/00) pointing at byte field of the parameter list.
func SenseInvalidFieldInParameterList(field int) Sense {
	return Sense{Key: KeyIllegalRequest, ASC: 0x26, SKS: fieldPointer(false, field, -1)}
}

// SenseParameterListLengthError is ILLEGAL REQUEST, PARAMETER LIST LENGTH
// ERROR (05/1A/00).
func SenseParameterListLengthError() Sense { return Sense{Key: KeyIllegalRequest, ASC: 0x1a} }

// SenseInvalidFieldInInformationUnit is ILLEGAL REQUEST, INVALID FIELD IN
// INFORMATION UNIT (05/0E/03): the data-out does not fit the command.
func SenseInvalidFieldInInformationUnit() Sense {
	return Sense{Key: KeyIllegalRequest, ASC: 0x0e, ASCQ: 0x03}
}

// SenseLBAOutOfRange is ILLEGAL REQUEST, LOGICAL BLOCK ADDRESS OUT OF RANGE
// (05/21/00).
func SenseLBAOutOfRange() Sense { return Sense{Key: KeyIllegalRequest, ASC: 0x21} }

// SenseLUNNotSupported is ILLEGAL REQUEST, LOGICAL UNIT NOT SUPPORTED
// (05/25/00).
func SenseLUNNotSupported() Sense { return Sense{Key: KeyIllegalRequest, ASC: 0x25} }

// SenseInvalidReleaseOfPR is ILLEGAL REQUEST, INVALID RELEASE OF PERSISTENT
// RESERVATION (05/26/04).
func SenseInvalidReleaseOfPR() Sense {
	return Sense{Key: KeyIllegalRequest, ASC: 0x26, ASCQ: 0x04}
}

// SenseSavingParametersNotSupported is ILLEGAL REQUEST, SAVING PARAMETERS
// NOT SUPPORTED (05/39/00).
func SenseSavingParametersNotSupported() Sense { return Sense{Key: KeyIllegalRequest, ASC: 0x39} }

// SenseNotReadyTransitioning is NOT READY, LOGICAL UNIT NOT ACCESSIBLE,
// ASYMMETRIC ACCESS STATE TRANSITION (02/04/0A).
func SenseNotReadyTransitioning() Sense { return Sense{Key: KeyNotReady, ASC: 0x04, ASCQ: 0x0a} }

// SenseNotReadyStandby is NOT READY, LOGICAL UNIT NOT ACCESSIBLE, TARGET
// PORT IN STANDBY STATE (02/04/0B).
func SenseNotReadyStandby() Sense { return Sense{Key: KeyNotReady, ASC: 0x04, ASCQ: 0x0b} }

// SenseNotReadyUnavailable is NOT READY, LOGICAL UNIT NOT ACCESSIBLE,
// TARGET PORT IN UNAVAILABLE STATE (02/04/0C).
func SenseNotReadyUnavailable() Sense { return Sense{Key: KeyNotReady, ASC: 0x04, ASCQ: 0x0c} }

// SenseNotReadyOffline is NOT READY, LOGICAL UNIT OFFLINE (02/04/12).
func SenseNotReadyOffline() Sense { return Sense{Key: KeyNotReady, ASC: 0x04, ASCQ: 0x12} }

// SenseSpaceAllocFailed is DATA PROTECT, SPACE ALLOCATION FAILED WRITE
// PROTECT (07/27/07): the thin-provisioned pool is out of space.
func SenseSpaceAllocFailed() Sense { return Sense{Key: KeyDataProtect, ASC: 0x27, ASCQ: 0x07} }

// SenseWriteProtected is DATA PROTECT, SOFTWARE WRITE PROTECTED (07/27/02):
// the SWP bit of the control mode page is set.
func SenseWriteProtected() Sense { return Sense{Key: KeyDataProtect, ASC: 0x27, ASCQ: 0x02} }

// SenseMediumError is MEDIUM ERROR, UNRECOVERED READ ERROR (03/11/00): the
// stored data failed verification.
func SenseMediumError() Sense { return Sense{Key: KeyMediumError, ASC: 0x11} }

// SenseMediumErrorAt is SenseMediumError with the LBA of the first block
// that could not be read in INFORMATION (SBC-3 4.15), which hosts use to
// rewrite just that block. Fixed-format sense has 4 bytes for it: an LBA
// beyond them is left out (VALID clear).
func SenseMediumErrorAt(lba uint64) Sense {
	s := SenseMediumError()
	if lba <= 0xffffffff {
		s.Info, s.InfoValid = uint32(lba), true
	}
	return s
}

// SenseHardwareError is HARDWARE ERROR, INTERNAL TARGET FAILURE (04/44/00).
func SenseHardwareError() Sense { return Sense{Key: KeyHardwareError, ASC: 0x44} }

// SenseMiscompare is MISCOMPARE, MISCOMPARE DURING VERIFY OPERATION
// (0E/1D/00) with the byte offset of the first difference in INFORMATION.
func SenseMiscompare(offset uint32) Sense {
	return Sense{Key: KeyMiscompare, ASC: 0x1d, Info: offset, InfoValid: true}
}

// SensePowerOnReset is the unit attention POWER ON, RESET, OR BUS DEVICE
// RESET OCCURRED (06/29/00), raised for a new I_T nexus and on target reset.
func SensePowerOnReset() Sense { return Sense{Key: KeyUnitAttention, ASC: 0x29} }

// SenseLUNReset is the unit attention BUS DEVICE RESET FUNCTION OCCURRED
// (06/29/03), raised by LOGICAL UNIT RESET.
func SenseLUNReset() Sense { return Sense{Key: KeyUnitAttention, ASC: 0x29, ASCQ: 0x03} }

// SenseNexusLoss is the unit attention I_T NEXUS LOSS OCCURRED
// (06/29/07): the nexus was lost (for a stretched pod, the array it goes
// through was fenced), and with it its SCSI-2 reservation.
func SenseNexusLoss() Sense { return Sense{Key: KeyUnitAttention, ASC: 0x29, ASCQ: 0x07} }

// SenseModeParametersChanged is the unit attention MODE PARAMETERS CHANGED
// (06/2A/01).
func SenseModeParametersChanged() Sense {
	return Sense{Key: KeyUnitAttention, ASC: 0x2a, ASCQ: 0x01}
}

// SenseReservationsPreempted is the unit attention RESERVATIONS PREEMPTED
// (06/2A/03).
func SenseReservationsPreempted() Sense {
	return Sense{Key: KeyUnitAttention, ASC: 0x2a, ASCQ: 0x03}
}

// SenseReservationsReleased is the unit attention RESERVATIONS RELEASED
// (06/2A/04).
func SenseReservationsReleased() Sense {
	return Sense{Key: KeyUnitAttention, ASC: 0x2a, ASCQ: 0x04}
}

// SenseRegistrationsPreempted is the unit attention REGISTRATIONS PREEMPTED
// (06/2A/05).
func SenseRegistrationsPreempted() Sense {
	return Sense{Key: KeyUnitAttention, ASC: 0x2a, ASCQ: 0x05}
}

// SenseAsymmetricAccessChanged is the unit attention ASYMMETRIC ACCESS
// STATE CHANGED (06/2A/06).
func SenseAsymmetricAccessChanged() Sense {
	return Sense{Key: KeyUnitAttention, ASC: 0x2a, ASCQ: 0x06}
}

// SenseCapacityChanged is the unit attention CAPACITY DATA HAS CHANGED
// (06/2A/09).
func SenseCapacityChanged() Sense {
	return Sense{Key: KeyUnitAttention, ASC: 0x2a, ASCQ: 0x09}
}

// SenseCommandsCleared is the unit attention COMMANDS CLEARED BY ANOTHER
// INITIATOR (06/2F/00).
func SenseCommandsCleared() Sense { return Sense{Key: KeyUnitAttention, ASC: 0x2f} }

// SenseLUNsChanged is the unit attention REPORTED LUNS DATA HAS CHANGED
// (06/3F/0E).
func SenseLUNsChanged() Sense { return Sense{Key: KeyUnitAttention, ASC: 0x3f, ASCQ: 0x0e} }

// checkCondition is a CHECK CONDITION result carrying s.
func checkCondition(s Sense) *Result {
	return &Result{Status: StatusCheckCondition, Sense: s.Bytes()}
}

// good is a GOOD result carrying data-in d.
func good(d []byte) *Result { return &Result{Status: StatusGood, Data: d} }

// reservationConflict is a RESERVATION CONFLICT result (no sense data).
func reservationConflict() *Result { return &Result{Status: StatusReservationConflict} }
