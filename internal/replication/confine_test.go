package replication

import (
	"testing"

	"github.com/metro-storage/metro/internal/scsi"
)

// TestPeerReleaseFromAnyInitiator checks the one forwarded command that
// need not come from a connected host: a RELEASE(6), which the peer sends
// when a nexus ends (its host may have been disconnected meanwhile). It
// gives up only its own nexus's reservation, and still only on the
// peer's port.
func TestPeerReleaseFromAnyInitiator(t *testing.T) {
	h := newHostilePeer(t)
	reserve := []byte{0x16, 0, 0, 0, 0, 0}
	release := []byte{opRelease6, 0, 0, 0, 0, 0}
	res, err := decodeResult(h.accepted("RESERVE(6) from h2", msgForward, epoch2, forwardCDB("pod2", uuidVol2, iqnH2, reserve, nil).encode()))
	if err != nil || res.Status != scsi.StatusGood {
		t.Fatalf("RESERVE(6) from h2: %+v %v", res, err)
	}
	res, err = decodeResult(h.accepted("RELEASE(6) from an initiator of no host", msgForward, epoch2, forwardCDB("pod2", uuidVol2, iqnEvil, release, nil).encode()))
	if err != nil || res.Status != scsi.StatusGood {
		t.Fatalf("RELEASE(6) from another initiator: %+v %v", res, err)
	}
	if h.env.LU(uuidVol2).Reservations().SCSI2 == nil {
		t.Fatal("a RELEASE(6) from another initiator released h2's reservation")
	}
	m := forwardCDB("pod2", uuidVol2, iqnH2, release, nil)
	m.Cmd.Nexus.RelativePortID = portB
	h.refused("RELEASE(6) on this array's port", msgForward, epoch2, m.encode(), "is not the peer's")
	m = forwardCDB("pod2", uuidVol2, iqnEvil, release, nil)
	m.Cmd.Nexus.InitiatorPort = iqnH2 + ",i,0x000000000001"
	h.refused("RELEASE(6) on another initiator's port", msgForward, epoch2, m.encode(), "is not a port of initiator")
	if h.env.LU(uuidVol2).Reservations().SCSI2 == nil {
		t.Fatal("h2's reservation is gone")
	}
	h.accepted("RELEASE(6) from h2", msgForward, epoch2, forwardCDB("pod2", uuidVol2, iqnH2, release, nil).encode())
	if h.env.LU(uuidVol2).Reservations().SCSI2 != nil {
		t.Fatal("h2's own RELEASE(6) left its reservation")
	}
}
