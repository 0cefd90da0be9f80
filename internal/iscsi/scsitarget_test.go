package iscsi

import (
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/metro-storage/metro/internal/scsi"
	"github.com/metro-storage/metro/internal/store"
)

// A real SCSI target for the tests that need one: a scsi.Target over
// logical units on a store in Pebble's in-memory filesystem.

// The SCSI target names the logical units behind LUNs, so that task
// management reaches the same unit through every session.
var _ LogicalUnits = (*scsi.Target)(nil)

// memStore is the store every such test shares (opening one costs more
// than most tests); each logical unit gets a volume of its own.
var memStore = sync.OnceValues(func() (*store.Store, error) {
	return store.Open("db", store.Options{FS: vfs.NewMem(), CacheSize: 8 << 20})
})

// lastVolumeID hands out the volume ids of memStore.
var lastVolumeID atomic.Uint64

// newVolumeLU returns a logical unit of size bytes (a multiple of 4096)
// on a fresh volume of memStore; its UUID derives from the volume id.
func newVolumeLU(t testing.TB, size uint64) *scsi.LogicalUnit {
	t.Helper()
	st, err := memStore()
	if err != nil {
		t.Fatalf("in-memory store: %v", err)
	}
	id := lastVolumeID.Add(1)
	var uuid [16]byte
	for i := range 8 {
		uuid[8+i] = byte(id >> (8 * (7 - i)))
	}
	uuid[0] = 0x1e
	return scsi.NewLogicalUnit(scsi.LUConfig{UUID: uuid, Size: size, Backend: st.Volume(id)})
}

// maskedLUNs is a scsi.Resolver with LUN masking: each initiator sees its
// own LUNs, so one LUN number may name different units for different
// initiators and one unit may have different numbers.
type maskedLUNs map[string]map[uint64]*scsi.LogicalUnit

func (m maskedLUNs) LUN(initiator string, lun uint64) *scsi.LogicalUnit { return m[initiator][lun] }

func (m maskedLUNs) LUNs(initiator string) []uint64 {
	return slices.Sorted(maps.Keys(m[initiator]))
}

// PortGroups reports one active/optimized group holding the harness's
// port (relative port id 7).
func (m maskedLUNs) PortGroups(string, *scsi.LogicalUnit) []scsi.PortGroup {
	return []scsi.PortGroup{{ID: 1, State: scsi.ActiveOptimized, Preferred: true, RelativePortIDs: []uint16{7}}}
}
