package scsi

// PERSISTENT RESERVE IN service actions.
const (
	prInReadKeys        = 0
	prInReadReservation = 1
	prInReportCaps      = 2
	prInReadFullStatus  = 3
)

// protocolISCSI is the protocol identifier of iSCSI (SPC-4 7.6.1).
const protocolISCSI = 0x5

// runPRIn implements PERSISTENT RESERVE IN.
func runPRIn(x *exec) *Result {
	alloc := uint32(be16(x.cdb[7:9]))
	// The state is reported from this array's copy only while the pod
	// is served here under its lease (a paused array past it may have
	// lost the pod to a peer that changed the state since).
	if x.lu.replica.Readable(x.ctx) != nil {
		return checkCondition(SenseNotReadyTransitioning())
	}
	if x.lu.replica.Ordering() {
		// A change made here and not yet on the peer is not reported
		// before it is there.
		x.lu.prMu.Lock()
		defer x.lu.prMu.Unlock()
		if !x.lu.replica.Ordering() || x.lu.replica.Readable(x.ctx) != nil {
			// This array stopped ordering the pod while the change
			// shared (it lost the pod to the peer): its state may hold a
			// change the peer never got; the host asks the peer.
			return checkCondition(SenseNotReadyTransitioning())
		}
	}
	st := x.lu.Reservations()
	var d []byte
	switch x.cdb[1] & serviceActionMask {
	case prInReadKeys:
		d = make([]byte, 8, 8+8*len(st.Registrations))
		for _, r := range st.Registrations {
			d = put64Append(d, r.Key)
		}
	case prInReadReservation:
		d = make([]byte, 8)
		if st.Reserved {
			r := make([]byte, 16)
			if !st.Type.allRegistrants() {
				put64(r[0:8], st.Holder.Key)
			}
			r[13] = byte(st.Type) // scope 0: logical unit
			d = append(d, r...)
		}
	case prInReportCaps:
		d = make([]byte, 8)
		put16(d[0:2], 8)
		d[2] = 0x10 | 0x04 | 0x01 // CRH (see scsi2UnderPR), ATP_C, PTPL_C
		d[3] = 0x80               // TMV
		if st.APTPL {
			d[3] |= 0x01 // PTPL_A
		}
		d[4] = 0x80 | 0x40 | 0x20 | 0x08 | 0x02 // WR_EX_AR, EX_AC_RO, WR_EX_RO, EX_AC, WR_EX
		d[5] = 0x01                             // EX_AC_AR
		return good(truncate(d, alloc))
	case prInReadFullStatus:
		d = make([]byte, 8)
		for _, r := range st.Registrations {
			d = append(d, fullStatusDescriptor(st, r)...)
		}
	default:
		return checkCondition(SenseInvalidFieldInCDB(1))
	}
	put32(d[0:4], st.Generation)
	put32(d[4:8], uint32(len(d)-8))
	return good(truncate(d, alloc))
}

func put64Append(d []byte, v uint64) []byte {
	var b [8]byte
	put64(b[:], v)
	return append(d, b[:]...)
}

// fullStatusDescriptor encodes one READ FULL STATUS descriptor with the
// registration's iSCSI TransportID (format 01b: name and ISID).
func fullStatusDescriptor(st ReservationState, r Registration) []byte {
	name := append([]byte(r.Nexus.InitiatorPort), 0)
	for len(name)%4 != 0 {
		name = append(name, 0)
	}
	tid := make([]byte, 4, 4+len(name))
	tid[0] = 0x40 | protocolISCSI
	put16(tid[2:4], uint16(len(name)))
	tid = append(tid, name...)

	d := make([]byte, 24, 24+len(tid))
	put64(d[0:8], r.Key)
	if r.AllTargetPorts {
		d[12] |= 0x02
	}
	if st.isHolderRegistration(r) {
		d[12] |= 0x01 // R_HOLDER
		d[13] = byte(st.Type)
	}
	put16(d[18:20], r.Nexus.RelativePortID)
	put32(d[20:24], uint32(len(tid)))
	return append(d, tid...)
}

// prOutParamLen is the length of the basic PERSISTENT RESERVE OUT
// parameter list (SPEC_I_PT is not supported, so it is the only one).
const prOutParamLen = 24

// prOutOf decodes a PERSISTENT RESERVE OUT's CDB and basic parameter
// list p (prOutParamLen bytes).
func prOutOf(cdb, p []byte) PROut {
	return PROut{
		Action:         PRAction(cdb[1] & serviceActionMask),
		Scope:          cdb[2] >> 4,
		Type:           PRType(cdb[2] & 0x0f),
		Key:            be64(p[0:8]),
		ServiceKey:     be64(p[8:16]),
		AllTargetPorts: p[20]&0x04 != 0,
		APTPL:          p[20]&0x01 != 0,
	}
}

// runPROut implements PERSISTENT RESERVE OUT.
func runPROut(x *exec) *Result {
	plen := be32(x.cdb[5:9])
	if plen != prOutParamLen || len(x.cmd.DataOut) < prOutParamLen {
		return checkCondition(SenseParameterListLengthError())
	}
	p := x.cmd.DataOut[:prOutParamLen]
	if p[20]&0x08 != 0 { // SPEC_I_PT
		return checkCondition(SenseInvalidFieldInParameterList(20))
	}
	out := x.lu.applyPR(x.ctx, x.cmd.Nexus, prOutOf(x.cdb, p))
	switch out.Status {
	case StatusGood:
	case StatusReservationConflict:
		return reservationConflict()
	default:
		return checkCondition(out.Sense)
	}
	if len(out.Abort) > 0 {
		x.t.abortTasks(x.ctx, func(tk *task) bool {
			if tk.lu != x.lu || tk.key == x.key {
				return false
			}
			id := NexusID(tk.nexus)
			for _, r := range out.Abort {
				if r.matches(id) {
					return true
				}
			}
			return false
		})
	}
	return good(nil)
}

// runReserve6 implements RESERVE(6) (SCSI-2 reservation of the whole
// logical unit).
func runReserve6(x *exec) *Result {
	return scsi2Result(x.lu.reserveSCSI2(x.ctx, x.cmd.Nexus))
}

// runRelease6 implements RELEASE(6): a release by a nexus that does not
// hold the reservation does nothing and is GOOD, unless persistent
// reservations exist (ReservationState.ReleaseSCSI2).
func runRelease6(x *exec) *Result {
	return scsi2Result(x.lu.releaseSCSI2(x.ctx, x.cmd.Nexus))
}

// scsi2Result is the status of a RESERVE(6) or RELEASE(6): ok false is a
// reservation conflict, err a change the array now serving the pod lacks.
func scsi2Result(ok bool, err error) *Result {
	switch {
	case !ok:
		return reservationConflict()
	case err != nil:
		return checkCondition(SenseNotReadyTransitioning())
	}
	return good(nil)
}
