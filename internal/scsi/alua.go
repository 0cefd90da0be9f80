package scsi

import "slices"

// implicitTransitionSeconds is the IMPLICIT TRANSITION TIME reported by
// REPORT TARGET PORT GROUPS: how long an initiator should tolerate the
// transitioning state.
const implicitTransitionSeconds = 30

// tpgSupportBits are the support bits of every target port group
// descriptor: T_SUP, U_SUP, AN_SUP and AO_SUP (HOST-CONTRACT §2).
const tpgSupportBits = 0x8b

// portGroups returns the target port groups of lu as the nexus's
// initiator sees them (what REPORT TARGET PORT GROUPS answers it).
func (t *Target) portGroups(lu *LogicalUnit, n Nexus) []PortGroup {
	if t.resolver == nil {
		return nil
	}
	return t.resolver.PortGroups(n.InitiatorName, lu)
}

// portGroup returns the target port group containing the port the nexus
// uses, and false if the resolver reports none.
func (t *Target) portGroup(lu *LogicalUnit, n Nexus) (PortGroup, bool) {
	return groupOf(t.portGroups(lu, n), n)
}

// groupOf returns the group of groups containing the nexus's port.
func groupOf(groups []PortGroup, n Nexus) (PortGroup, bool) {
	for _, g := range groups {
		if slices.Contains(g.RelativePortIDs, n.RelativePortID) {
			return g, true
		}
	}
	return PortGroup{}, false
}

// samePortGroups reports whether two answers of REPORT TARGET PORT GROUPS
// are the same: groups, states, PREF bits and ports.
func samePortGroups(a, b []PortGroup) bool {
	return slices.EqualFunc(a, b, func(x, y PortGroup) bool {
		return x.ID == y.ID && x.State == y.State && x.Preferred == y.Preferred && slices.Equal(x.RelativePortIDs, y.RelativePortIDs)
	})
}

// clonePortGroups returns a deep copy of groups.
func clonePortGroups(groups []PortGroup) []PortGroup {
	c := slices.Clone(groups)
	for i := range c {
		c[i].RelativePortIDs = slices.Clone(c[i].RelativePortIDs)
	}
	return c
}

// aluaBlocks returns the NOT READY sense for a command of class c arriving
// on a port whose group (in groups, the unit's groups as the initiator
// sees them) is not in an active state, or nil when the command may run.
func aluaBlocks(groups []PortGroup, n Nexus, c aluaClass) *Sense {
	if c == aluaAny {
		return nil
	}
	g, ok := groupOf(groups, n)
	if !ok {
		return nil
	}
	var s Sense
	switch g.State {
	case ActiveOptimized, ActiveNonOptimized:
		return nil
	case Standby:
		if c == aluaStandby {
			return nil
		}
		s = SenseNotReadyStandby()
	case Unavailable:
		s = SenseNotReadyUnavailable()
	case Offline:
		s = SenseNotReadyOffline()
	default:
		s = SenseNotReadyTransitioning()
	}
	return &s
}

// runReportTPG implements REPORT TARGET PORT GROUPS (MAINTENANCE IN,
// service action 0Ah) with the length-only or extended header.
func runReportTPG(x *exec) *Result {
	format := x.cdb[1] >> 5
	if format > 1 {
		return checkCondition(SenseInvalidBitInCDB(1, 7))
	}
	alloc := be32(x.cdb[6:10])
	var groups []PortGroup
	if x.t.resolver != nil {
		groups = x.t.resolver.PortGroups(x.cmd.Nexus.InitiatorName, x.lu)
	}
	hdr := 4
	if format == 1 {
		hdr = 8
	}
	d := make([]byte, hdr)
	if format == 1 {
		d[4] = 0x10
		d[5] = implicitTransitionSeconds
	}
	for _, g := range groups {
		desc := make([]byte, 8, 8+4*len(g.RelativePortIDs))
		desc[0] = byte(g.State) & 0x0f
		if g.Preferred {
			desc[0] |= 0x80
		}
		desc[1] = tpgSupportBits
		put16(desc[2:4], g.ID)
		desc[7] = byte(len(g.RelativePortIDs))
		for _, p := range g.RelativePortIDs {
			desc = append(desc, 0, 0, byte(p>>8), byte(p))
		}
		d = append(d, desc...)
	}
	put32(d[0:4], uint32(len(d)-4))
	return good(truncate(d, alloc))
}

// truncate returns at most alloc bytes of d.
func truncate(d []byte, alloc uint32) []byte {
	if uint64(len(d)) > uint64(alloc) {
		return d[:alloc]
	}
	return d
}
