package scsi

// Block limits reported in VPD page B0h and enforced by the commands.
const (
	// maxTransferBlocks is the MAXIMUM TRANSFER LENGTH (4 MiB).
	maxTransferBlocks = 8192
	// optimalGranularityBlocks is the OPTIMAL TRANSFER LENGTH GRANULARITY
	// and OPTIMAL UNMAP GRANULARITY: the 4 KiB allocation unit.
	optimalGranularityBlocks = 8
	// maxCompareAndWriteBlocks is the MAXIMUM COMPARE AND WRITE LENGTH.
	maxCompareAndWriteBlocks = 255
	// maxUnmapBlocks is the MAXIMUM UNMAP LBA COUNT (512 MiB).
	maxUnmapBlocks = 1 << 20
	// maxUnmapDescriptors is the MAXIMUM UNMAP BLOCK DESCRIPTOR COUNT.
	maxUnmapDescriptors = 256
	// maxWriteSameBlocks is the MAXIMUM WRITE SAME LENGTH (just under 32
	// MiB: libiscsi writes 65536 blocks with one WRITE(16) to test larger
	// ones, more than MAXIMUM TRANSFER LENGTH allows).
	maxWriteSameBlocks = 1<<16 - 1
	// lbppbExponent is the LOGICAL BLOCKS PER PHYSICAL BLOCK EXPONENT of
	// READ CAPACITY(16): 0, see the package documentation (3 would describe
	// the 4 KiB chunks, but then the GET LBA STATUS that SBC requires fails
	// libiscsi's GetLBAStatus.UnmapSingle).
	lbppbExponent = 0
	// maxAtomicBlocks is the MAXIMUM ATOMIC TRANSFER LENGTH.
	maxAtomicBlocks = 2048
)

// Version descriptors of the standard INQUIRY data.
var versionDescriptors = []uint16{
	0x00a0, // SAM-5
	0x0960, // iSCSI
	0x0460, // SPC-4
	0x04c0, // SBC-3
}

// supportedVPDPages are the VPD pages, ascending.
var supportedVPDPages = []byte{0x00, 0x80, 0x83, 0xb0, 0xb1, 0xb2}

// runInquiry implements INQUIRY: standard data and the VPD pages. It also
// answers for an unmapped LUN (x.lu nil) with peripheral qualifier 011b.
func runInquiry(x *exec) *Result {
	evpd := x.cdb[1]&0x01 != 0
	page := x.cdb[2]
	alloc := uint32(be16(x.cdb[3:5]))
	if !evpd {
		if page != 0 {
			return checkCondition(SenseInvalidFieldInCDB(2))
		}
		return good(truncate(x.t.standardInquiry(x.lu == nil), alloc))
	}
	var d []byte
	switch page {
	case 0x00:
		d = vpdPage(page, supportedVPDPages)
	case 0x80:
		d = vpdPage(page, []byte(x.lu.serial))
	case 0x83:
		d = vpdPage(page, x.t.deviceIdentification(x.lu, x.cmd.Nexus))
	case 0xb0:
		d = vpdPage(page, blockLimits())
	case 0xb1:
		d = vpdPage(page, blockCharacteristics())
	case 0xb2:
		d = vpdPage(page, provisioning())
	default:
		return checkCondition(SenseInvalidFieldInCDB(2))
	}
	return good(truncate(d, alloc))
}

// standardInquiry returns the standard INQUIRY data (96 bytes).
func (t *Target) standardInquiry(noLU bool) []byte {
	d := make([]byte, 96)
	if noLU {
		d[0] = 0x7f // peripheral qualifier 011b, device type 1Fh
	}
	d[2] = 0x06 // SPC-4
	d[3] = 0x12 // HISUP, response data format 2
	d[4] = byte(len(d) - 5)
	d[5] = 0x10 // TPGS 01b: implicit ALUA
	d[6] = 0x10 // MULTIP
	d[7] = 0x02 // CMDQUE
	copy(d[8:16], t.vendor)
	copy(d[16:32], t.product)
	copy(d[32:36], t.revision)
	for i, v := range versionDescriptors {
		put16(d[58+2*i:], v)
	}
	return d
}

// vpdPage wraps a VPD page payload in its 4-byte header.
func vpdPage(code byte, payload []byte) []byte {
	d := make([]byte, 4, 4+len(payload))
	d[1] = code
	put16(d[2:4], uint16(len(payload)))
	return append(d, payload...)
}

// designator encodes one identification descriptor of VPD page 83h.
func designator(protoCodeSet, piVAssocType byte, id []byte) []byte {
	d := []byte{protoCodeSet, piVAssocType, 0, byte(len(id))}
	return append(d, id...)
}

// deviceIdentification returns the payload of VPD page 83h: the logical
// unit's NAA designator, then the designators of the target port the
// command arrived on.
func (t *Target) deviceIdentification(lu *LogicalUnit, n Nexus) []byte {
	var d []byte
	// Binary code set, association logical unit, NAA.
	d = append(d, designator(0x01, 0x03, lu.naa[:])...)
	// iSCSI, binary, PIV=1, association target port, relative target port.
	d = append(d, designator(0x51, 0x94, []byte{0, 0, byte(n.RelativePortID >> 8), byte(n.RelativePortID)})...)
	if g, ok := t.portGroup(lu, n); ok {
		// Target port group.
		d = append(d, designator(0x51, 0x95, []byte{0, 0, byte(g.ID >> 8), byte(g.ID)})...)
	}
	if n.TargetPort != "" {
		// iSCSI, UTF-8, PIV=1, association target port, SCSI name string:
		// NUL terminated, padded to a multiple of four.
		name := append([]byte(n.TargetPort), 0)
		for len(name)%4 != 0 {
			name = append(name, 0)
		}
		if len(name) <= 252 {
			d = append(d, designator(0x53, 0x98, name)...)
		}
	}
	return d
}

// blockLimits returns the payload of VPD page B0h (page length 3Ch).
func blockLimits() []byte {
	d := make([]byte, 0x3c)
	// Offsets are of the full page minus the 4-byte header.
	d[0] = 0x01 // WSNZ: WRITE SAME needs a non-zero block count
	d[1] = maxCompareAndWriteBlocks
	put16(d[2:4], optimalGranularityBlocks)
	put32(d[4:8], maxTransferBlocks)
	put32(d[12:16], maxTransferBlocks) // MAXIMUM PREFETCH LENGTH
	put32(d[16:20], maxUnmapBlocks)
	put32(d[20:24], maxUnmapDescriptors)
	put32(d[24:28], optimalGranularityBlocks)
	put32(d[28:32], 0x80000000) // UGAVALID, alignment 0
	put64(d[32:40], maxWriteSameBlocks)
	put32(d[40:44], maxAtomicBlocks) // MAXIMUM ATOMIC TRANSFER LENGTH
	put32(d[44:48], 0)               // ATOMIC ALIGNMENT: any
	put32(d[48:52], 1)               // ATOMIC TRANSFER LENGTH GRANULARITY
	return d
}

// blockCharacteristics returns the payload of VPD page B1h: non-rotating
// medium.
func blockCharacteristics() []byte {
	d := make([]byte, 0x3c)
	put16(d[0:2], 1)
	return d
}

// provisioning returns the payload of VPD page B2h: thin provisioned, UNMAP
// and WRITE SAME (10 and 16) with UNMAP supported, unmapped blocks read as
// zeros.
func provisioning() []byte {
	d := make([]byte, 4)
	d[1] = 0x80 | 0x40 | 0x20 | 0x04 // LBPU, LBPWS, LBPWS10, LBPRZ
	d[2] = 0x02                      // provisioning type: thin
	return d
}
