// Package scsi implements the SCSI block-device command set (SPC-4, SBC-3)
// that metro presents for every volume: identity and VPD pages, reads and
// writes, thin-provisioning commands, COMPARE AND WRITE, persistent and
// SCSI-2 reservations, unit attentions and ALUA target port groups.
//
// The package knows nothing of iSCSI. A transport hands a Target complete
// commands (CDB plus any data-out) with the I_T nexus they arrived on and
// gets back a status, sense data and data-in. Logical units are backed by
// a Backend (the volume's blocks); which LUNs an initiator sees and what
// ALUA state each target port group is in for it come from a Resolver, so
// LUN masking and the per-host ALUA answer are decided by the array.
//
// # Identity
//
// Every logical unit is named by its volume UUID alone, so every array that
// holds a copy of the volume reports the same identity and multipath
// software sees one device:
//
//   - The unit serial number (VPD page 0x80) is the UUID as 32 lower-case
//     hexadecimal characters.
//   - The logical-unit designator (VPD page 0x83, association 00b) is one
//     NAA IEEE Registered Extended designator (NAA 6, 16 bytes). Its 24-bit
//     IEEE company identifier is 0xDA4D54: metro holds no OUI or CID of its
//     own, so it uses a value in the CID form (the low nibble of the first
//     octet is 1010b, the X/Y/Z/M bits of a Company ID) whose last two
//     octets spell "MT". Collisions with a real holder of that CID would need
//     the 100 bits below to match too. The 36-bit vendor specific identifier
//     and the 64-bit vendor specific identifier extension are the first 100
//     bits of SHA-256("metro-naa-v1" || UUID), so they are stable, spread
//     over the whole space and independent of the UUID version bits.
//   - No other logical-unit designator is reported: Linux prefers an LU
//     SCSI name string over NAA and keys ALUA port groups on it, so anything
//     that differed between arrays would split the paths.
//
// Target port designators describe the port a command arrived on: its
// relative target port identifier (type 4), its target port group (type 5,
// looked up in Resolver.PortGroups) and its SCSI name string (type 8,
// "iqn...,t,0x<TPGT>"). These differ per array by design.
//
// The logical block is 512 bytes. READ CAPACITY(16) reports a LOGICAL
// BLOCKS PER PHYSICAL BLOCK EXPONENT of 0 and the 4 KiB allocation unit is
// advertised through the OPTIMAL TRANSFER LENGTH GRANULARITY and OPTIMAL
// UNMAP GRANULARITY of the Block Limits page instead: with an exponent of 3
// the GET LBA STATUS answer that SBC requires (first descriptor at the
// requested LBA) contradicts libiscsi's GetLBAStatus.UnmapSingle test.
//
// # Behaviour worth knowing
//
//   - A new I_T nexus gets a POWER ON, RESET, OR BUS DEVICE RESET OCCURRED
//     unit attention on its first command to each logical unit; INQUIRY,
//     REPORT LUNS and REQUEST SENSE neither report nor clear unit
//     attentions (REQUEST SENSE returns and clears one).
//   - ASYMMETRIC ACCESS STATE CHANGED is established on an I_T nexus when
//     the unit's target port groups as its initiator sees them (the
//     Resolver's answer, what REPORT TARGET PORT GROUPS reports) differ
//     from those it last heard of; each command that reports unit
//     attentions compares them first. Other hosts' nexuses, and units
//     whose states stayed, hear nothing.
//   - WRITE SAME with the UNMAP bit deallocates the range whatever the
//     data-out holds (as Linux LIO does); unmapped blocks read as zeros
//     (LBPRZ=1).
//   - Writes whose data-out is shorter than the CDB asks for write the whole
//     blocks that did arrive (the transport reports the residual); COMPARE
//     AND WRITE and WRITE SAME need exactly the data their CDB implies.
//   - Every write, COMPARE AND WRITE and ORWRITE holds an exclusive range
//     lock on its blocks, so the read-compare-write of COMPARE AND WRITE is
//     atomic against every other write of the logical unit; reads take no
//     lock.
//   - RESERVE(6) and RELEASE(6) follow SPC-4's exceptions to SPC-2
//     behavior (CRH is reported): while persistent reservation
//     registrations exist they complete GOOD without effect from the
//     persistent reservation holder, or from a registered nexus under a
//     registrants only or all registrants reservation, and end in
//     RESERVATION CONFLICT from every other nexus.
//   - A COMPARE AND WRITE or PERSISTENT RESERVE OUT that the other array
//     of a stretched pod forwarded, and whose answer the link lost after
//     it took effect, answers the host's identical retry with its first
//     outcome (GOOD) rather than a MISCOMPARE or RESERVATION CONFLICT
//     against its own effect; a repeat of a command whose answer was
//     delivered is run as on one array (outcome.go).
//   - Persistent reservation state lives in ReservationState, a plain value
//     with pure methods (Apply, Allows) so that a later sequencer can order
//     and replicate it; the logical unit only stores it, persists it through
//     LUConfig.PersistPR while APTPL is set and turns its effects into unit
//     attentions and task aborts.
//   - In a stretched pod the unit's reservations, mode parameters and
//     resets are decided where the pod is sequenced and shared with the
//     peer (Replica). The loss of the peer is the loss of every I_T nexus
//     through it: the array that serves alone releases the SCSI-2
//     reservation held through the peer's port (PortLost). A target reset
//     through either array resets the unit on both. Unit attentions are
//     part of the replicated state: a peer that rejoins compares the
//     state it is sent with the one it holds and gives its nexuses what
//     they missed (rejoin.go).
//   - For a volume of a stretched pod (Replica), the pod's sequencer
//     decides every reservation change and shares it before the command's
//     status: the change is acknowledged only once the peer installed it
//     or no longer serves the pod (this array then serves it alone, and
//     the peer gets the whole state at its resync). When this array lost
//     the pod first, the command fails with a retryable NOT READY and the
//     change is undone (its state, its saved state; the change's unit
//     attentions are established only once it stands), unless it went out
//     unconfirmed before the command ended (Replica, ErrMayBeShared): a
//     host may have seen it through the peer, so it is kept, and the
//     command's outcome is unknown (the host's identical retry on the
//     same nexus is GOOD once the state is shared again: outcome.go).
//     Until the change stands or is undone, a command whose answer
//     depends on it (the preempted nexus's write) waits, and one it does
//     not concern runs (LogicalUnit.decided): no command acts on a change
//     that may never stand. The peer's install aborts the preempted
//     nexuses' tasks that run there, and does not wait for those it
//     forwarded to the sequencer, which aborts and settles them itself
//     before its PREEMPT AND ABORT completes: no lock is held across the
//     link while waiting for a task the other array forwarded.
package scsi
