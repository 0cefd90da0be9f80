package scsi

// runTestUnitReady implements TEST UNIT READY: unit attentions, ALUA state
// and reservations were checked already.
func runTestUnitReady(*exec) *Result { return good(nil) }

// runStartStopUnit implements START STOP UNIT: the medium is always
// present, so there is nothing to do.
func runStartStopUnit(*exec) *Result { return good(nil) }

// runPreventAllow implements PREVENT ALLOW MEDIUM REMOVAL: the medium is
// not removable, so there is nothing to do.
func runPreventAllow(*exec) *Result { return good(nil) }

// runRequestSense implements REQUEST SENSE: a pending unit attention is
// returned (and cleared), otherwise NO SENSE.
func runRequestSense(x *exec) *Result {
	if s, ok := x.lu.takeUA(x.cmd.Nexus, x.key, x.t.portGroups(x.lu, x.cmd.Nexus)); ok {
		return x.senseData(s)
	}
	return x.senseData(SenseNoSense())
}

// senseData returns s as REQUEST SENSE parameter data (fixed format; the
// descriptor format is not supported).
func (x *exec) senseData(s Sense) *Result {
	if x.cdb[1]&0x01 != 0 { // DESC
		return checkCondition(SenseInvalidBitInCDB(1, 0))
	}
	return good(truncate(s.Bytes(), uint32(x.cdb[4])))
}

// runReadCapacity10 implements READ CAPACITY(10).
func runReadCapacity10(x *exec) *Result {
	if x.cdb[8]&0x01 == 0 && be32(x.cdb[2:6]) != 0 {
		return checkCondition(SenseInvalidFieldInCDB(2))
	}
	d := make([]byte, 8)
	last := x.lu.blocks() - 1
	put32(d[0:4], uint32(min(last, 0xffffffff)))
	put32(d[4:8], BlockSize)
	return good(d)
}

// runReadCapacity16 implements READ CAPACITY(16): thin provisioned
// (LBPME), unmapped blocks read as zeros (LBPRZ), no protection.
func runReadCapacity16(x *exec) *Result {
	d := make([]byte, 32)
	put64(d[0:8], x.lu.blocks()-1)
	put32(d[8:12], BlockSize)
	d[13] = lbppbExponent
	d[14] = 0x80 | 0x40 // LBPME, LBPRZ; lowest aligned LBA 0
	return good(truncate(d, be32(x.cdb[10:14])))
}

// runReportLUNs implements REPORT LUNS from the resolver's LUN masking.
func runReportLUNs(x *exec) *Result {
	alloc := be32(x.cdb[6:10])
	if alloc < 16 {
		return checkCondition(SenseInvalidFieldInCDB(6))
	}
	var luns []uint64
	switch x.cdb[2] {
	case 0x00, 0x02:
		if x.t.resolver != nil {
			luns = x.t.resolver.LUNs(x.cmd.Nexus.InitiatorName)
		}
	case 0x01: // well-known logical units: none
	default:
		return checkCondition(SenseInvalidFieldInCDB(2))
	}
	d := make([]byte, 8, 8+8*len(luns))
	for _, l := range luns {
		b := EncodeLUN(l)
		d = append(d, b[:]...)
	}
	put32(d[0:4], uint32(8*len(luns)))
	return good(truncate(d, alloc))
}

// runReadDefectData implements READ DEFECT DATA(10) and (12): there are no
// defects, in whichever list and format was asked for.
func runReadDefectData(x *exec) *Result {
	var d []byte
	var alloc uint32
	if x.cdb[0] == opReadDefectData10 {
		d = make([]byte, 4)
		d[1] = x.cdb[2] & 0x1f // PLISTV, GLISTV, format as requested
		alloc = uint32(be16(x.cdb[7:9]))
	} else {
		d = make([]byte, 8)
		d[1] = x.cdb[1] & 0x1f
		alloc = be32(x.cdb[6:10])
	}
	return good(truncate(d, alloc))
}

// runReportOpcodes implements REPORT SUPPORTED OPERATION CODES: all
// commands (reporting options 000b) or one (001b without service action,
// 010b with, 011b either), optionally with command timeouts descriptors.
func runReportOpcodes(x *exec) *Result {
	rctd := x.cdb[2]&0x80 != 0
	opts := x.cdb[2] & 0x07
	reqOp := x.cdb[3]
	reqSA := be16(x.cdb[4:6])
	alloc := be32(x.cdb[6:10])
	tbl := x.t.table
	switch opts {
	case 0:
		d := make([]byte, 4)
		for _, c := range tbl.all {
			desc := make([]byte, 8)
			desc[0] = c.op
			if c.hasSA {
				put16(desc[2:4], uint16(c.sa))
				desc[5] |= 0x01 // SERVACTV
			}
			put16(desc[6:8], uint16(len(c.usage)))
			if rctd {
				desc[5] |= 0x02 // CTDP
				desc = append(desc, timeoutsDescriptor()...)
			}
			d = append(d, desc...)
		}
		put32(d[0:4], uint32(len(d)-4))
		return good(truncate(d, alloc))
	case 1, 2, 3:
		hasSA := tbl.hasServiceActions(reqOp)
		if (opts == 1 && hasSA) || (opts == 2 && !hasSA) {
			return checkCondition(SenseInvalidFieldInCDB(2))
		}
		var c *command
		if hasSA {
			if reqSA <= serviceActionMask {
				c = tbl.byOp[reqOp].bySA[uint8(reqSA)]
			}
		} else {
			c = tbl.byOp[reqOp].cmd
		}
		d := make([]byte, 4)
		if c == nil {
			d[1] = 0x01 // not supported
			return good(truncate(d, alloc))
		}
		d[1] = 0x03 // supported as the standard says
		put16(d[2:4], uint16(len(c.usage)))
		d = append(d, c.usage...)
		if rctd {
			d[1] |= 0x80 // CTDP
			d = append(d, timeoutsDescriptor()...)
		}
		return good(truncate(d, alloc))
	}
	return checkCondition(SenseInvalidFieldInCDB(2))
}

// timeoutsDescriptor returns a command timeouts descriptor.
func timeoutsDescriptor() []byte {
	d := make([]byte, 12)
	put16(d[0:2], 0x0a)
	put32(d[8:12], recommendedTimeout)
	return d
}
