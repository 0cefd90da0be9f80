package scsi

import (
	"context"
	"errors"
)

// Mode page codes.
const (
	pageCaching       = 0x08
	pageControl       = 0x0a
	pageInfoException = 0x1c
	pageAll           = 0x3f
)

// Page control values of MODE SENSE.
const (
	pcCurrent    = 0
	pcChangeable = 1
	pcDefault    = 2
	pcSaved      = 3
)

// modePages are the supported pages, ascending.
var modePages = []byte{pageCaching, pageControl, pageInfoException}

// modePage returns page code in the form selected by pc (current,
// changeable mask or default), or nil for an unsupported page.
func modePage(code byte, pc int, swp bool) []byte {
	var p []byte
	switch code {
	case pageCaching:
		p = make([]byte, 20) // WCE=0, RCD=0: nothing is cached for writes
	case pageControl:
		p = make([]byte, 12)
		switch pc {
		case pcChangeable:
			p[4] = 0x08 // SWP
		default:
			p[3] = 0x10            // QUEUE ALGORITHM MODIFIER 1: unrestricted reordering
			put16(p[8:10], 0xffff) // BUSY TIMEOUT PERIOD: unlimited
			if pc == pcCurrent && swp {
				p[4] = 0x08
			}
		}
	case pageInfoException:
		p = make([]byte, 12)
		if pc != pcChangeable {
			p[2] = 0x08 // DEXCPT: informational exceptions disabled
		}
	default:
		return nil
	}
	p[0] = code
	p[1] = byte(len(p) - 2)
	return p
}

// runModeSense implements MODE SENSE(6) and MODE SENSE(10).
func runModeSense(x *exec) *Result {
	ten := x.cdb[0] == opModeSense10
	dbd := x.cdb[1]&0x08 != 0
	llbaa := ten && x.cdb[1]&0x10 != 0
	pc := int(x.cdb[2] >> 6)
	code := x.cdb[2] & 0x3f
	sub := x.cdb[3]
	var alloc uint32
	if ten {
		alloc = uint32(be16(x.cdb[7:9]))
	} else {
		alloc = uint32(x.cdb[4])
	}
	if pc == pcSaved {
		return checkCondition(SenseSavingParametersNotSupported())
	}
	swp, res := x.swp()
	if res != nil {
		return res
	}
	var pages []byte
	switch {
	case code == pageAll && (sub == 0 || sub == 0xff):
		for _, c := range modePages {
			pages = append(pages, modePage(c, pc, swp)...)
		}
	case sub != 0:
		return checkCondition(SenseInvalidFieldInCDB(3))
	default:
		pages = modePage(code, pc, swp)
		if pages == nil {
			return checkCondition(SenseInvalidBitInCDB(2, 5))
		}
	}
	var bd []byte
	if !dbd {
		blocks := x.lu.blocks()
		if llbaa {
			bd = make([]byte, 16)
			put64(bd[0:8], blocks)
			put32(bd[12:16], BlockSize)
		} else {
			bd = make([]byte, 8)
			put32(bd[0:4], uint32(min(blocks, 0xffffffff)))
			put32(bd[4:8], BlockSize) // density code 0, block length
		}
	}
	dsp := byte(0x10) // DPOFUA
	if swp {
		dsp |= 0x80 // WP
	}
	var d []byte
	if ten {
		d = make([]byte, 8, 8+len(bd)+len(pages))
		d[3] = dsp
		if llbaa && !dbd {
			d[4] = 0x01 // LONGLBA
		}
		put16(d[6:8], uint16(len(bd)))
		d = append(append(d, bd...), pages...)
		put16(d[0:2], uint16(len(d)-2))
	} else {
		d = make([]byte, 4, 4+len(bd)+len(pages))
		d[2] = dsp
		d[3] = byte(len(bd))
		d = append(append(d, bd...), pages...)
		d[0] = byte(len(d) - 1)
	}
	return good(truncate(d, alloc))
}

// runModeSelect implements MODE SELECT(6) and MODE SELECT(10). Only the SWP
// bit of the control page can change; any other field must keep its
// current value.
func runModeSelect(x *exec) *Result {
	ten := x.cdb[0] == opModeSelect10
	if x.cdb[1]&0x01 != 0 { // SP: saving is not supported
		return checkCondition(SenseInvalidBitInCDB(1, 0))
	}
	var plen, hdr int
	if ten {
		plen, hdr = int(be16(x.cdb[7:9])), 8
	} else {
		plen, hdr = int(x.cdb[4]), 4
	}
	if plen == 0 {
		return good(nil)
	}
	p := x.cmd.DataOut
	if len(p) < plen || plen < hdr {
		return checkCondition(SenseParameterListLengthError())
	}
	p = p[:plen]
	var bdl int
	if ten {
		bdl = int(be16(p[6:8]))
	} else {
		bdl = int(p[3])
	}
	if hdr+bdl > plen {
		return checkCondition(SenseParameterListLengthError())
	}
	if bdl >= 8 {
		// The block length is the last three bytes of a descriptor.
		if bl := be32(p[hdr+bdl-4:hdr+bdl]) & 0xffffff; bl != 0 && bl != BlockSize {
			return checkCondition(SenseInvalidFieldInParameterList(hdr + bdl - 3))
		}
	}
	swp, res := x.swp()
	if res != nil {
		return res
	}
	newSWP := swp
	for off := hdr + bdl; off < plen; {
		if plen-off < 2 {
			return checkCondition(SenseParameterListLengthError())
		}
		if p[off]&0xc0 != 0 { // PS is reserved here; no subpages
			return checkCondition(SenseInvalidFieldInParameterList(off))
		}
		code := p[off] & 0x3f
		n := int(p[off+1]) + 2
		if plen-off < n {
			return checkCondition(SenseParameterListLengthError())
		}
		cur, mask := modePage(code, pcCurrent, swp), modePage(code, pcChangeable, swp)
		if cur == nil {
			return checkCondition(SenseInvalidFieldInParameterList(off))
		}
		if n != len(cur) {
			return checkCondition(SenseInvalidFieldInParameterList(off + 1))
		}
		for i := 2; i < n; i++ {
			if (p[off+i]^cur[i])&^mask[i] != 0 {
				return checkCondition(SenseInvalidFieldInParameterList(off + i))
			}
		}
		if code == pageControl {
			newSWP = p[off+4]&0x08 != 0
		}
		off += n
	}
	if newSWP != swp {
		if err := x.lu.setSWP(x.ctx, x.cmd.Nexus, newSWP); err != nil {
			return checkCondition(SenseNotReadyTransitioning())
		}
	}
	return good(nil)
}

// setSWP changes the SWP bit and raises MODE PARAMETERS CHANGED on the
// other nexuses (the peer's too, for a stretched pod). When the change
// could not be shared it fails (err), undone as share's callers do (see
// settle).
func (lu *LogicalUnit) setSWP(ctx context.Context, from Nexus, swp bool) error {
	lu.prMu.Lock()
	defer lu.prMu.Unlock()
	lu.mu.Lock()
	prev := lu.mu.swp
	lu.beginChangeLocked()
	lu.mu.swp = swp
	u := lu.updateLocked(nil, nil)
	lu.mu.Unlock()
	id := NexusID(from)
	u.ModeChangedBy = &id
	err := lu.replica.ShareReservations(ctx, u)
	defer lu.endChange()
	lu.mu.Lock()
	defer lu.mu.Unlock()
	if err != nil && !errors.Is(err, ErrMayBeShared) {
		lu.log.Warn("sharing mode parameters with the peer failed: the change is undone here and its command fails", "lu", lu.serial, "err", err)
		lu.mu.swp = prev
		return err
	}
	lu.modeChangedLocked(id)
	return err
}

// modeChangedLocked raises MODE PARAMETERS CHANGED on every nexus but
// from's. lu.mu must be held.
func (lu *LogicalUnit) modeChangedLocked(from PRNexus) {
	for _, ns := range lu.mu.nexus {
		if NexusID(ns.nexus) != from {
			ns.raise(SenseModeParametersChanged())
		}
	}
}
