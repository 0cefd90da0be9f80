package scsi

import (
	"bytes"
	"context"
	"fmt"
	"sort"
	"sync"
)

// MemBackend is an in-memory Backend for tests: a sparse map of 512-byte
// blocks (absent blocks are unmapped and read as zeros; writing a block of
// zeros unmaps it, as the store does). Errors can be injected.
type MemBackend struct {
	// mu guards the fields below.
	mu struct {
		sync.Mutex
		blocks   map[int64][]byte
		readErr  error
		writeErr error
		writes   int
	}
}

// NewMemBackend returns an empty MemBackend.
func NewMemBackend() *MemBackend {
	m := &MemBackend{}
	m.mu.blocks = make(map[int64][]byte)
	return m
}

func checkAligned(off, n int64) error {
	if off%BlockSize != 0 || n%BlockSize != 0 || off < 0 || n < 0 {
		return fmt.Errorf("membackend: unaligned access off=%d len=%d", off, n)
	}
	return nil
}

// ReadAt implements Backend.
func (m *MemBackend) ReadAt(ctx context.Context, p []byte, off int64) error {
	if err := checkAligned(off, int64(len(p))); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.mu.readErr != nil {
		return m.mu.readErr
	}
	for i := 0; i < len(p); i += BlockSize {
		b := m.mu.blocks[(off+int64(i))/BlockSize]
		if b == nil {
			clear(p[i : i+BlockSize])
		} else {
			copy(p[i:], b)
		}
	}
	return ctx.Err()
}

// WriteAt implements Backend.
func (m *MemBackend) WriteAt(ctx context.Context, p []byte, off int64) error {
	if err := checkAligned(off, int64(len(p))); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.mu.writeErr != nil {
		return m.mu.writeErr
	}
	m.mu.writes++
	zero := make([]byte, BlockSize)
	for i := 0; i < len(p); i += BlockSize {
		lba := (off + int64(i)) / BlockSize
		if bytes.Equal(p[i:i+BlockSize], zero) {
			delete(m.mu.blocks, lba)
			continue
		}
		m.mu.blocks[lba] = bytes.Clone(p[i : i+BlockSize])
	}
	return nil
}

// Unmap implements Backend.
func (m *MemBackend) Unmap(ctx context.Context, off, length int64) error {
	if err := checkAligned(off, length); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.mu.writeErr != nil {
		return m.mu.writeErr
	}
	if length/BlockSize > int64(len(m.mu.blocks)) {
		for lba := range m.mu.blocks {
			if lba >= off/BlockSize && lba < (off+length)/BlockSize {
				delete(m.mu.blocks, lba)
			}
		}
		return nil
	}
	for lba := off / BlockSize; lba < (off+length)/BlockSize; lba++ {
		delete(m.mu.blocks, lba)
	}
	return nil
}

// Mapped implements Backend.
func (m *MemBackend) Mapped(ctx context.Context, off, length int64) (bool, int64, error) {
	if err := checkAligned(off, length); err != nil {
		return false, 0, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	first := off / BlockSize
	_, mapped := m.mu.blocks[first]
	end := (off + length) / BlockSize
	if !mapped {
		// Jump to the next mapped block rather than walking every block.
		next := end
		for lba := range m.mu.blocks {
			if lba > first && lba < next {
				next = lba
			}
		}
		return false, (next - first) * BlockSize, nil
	}
	lba := first + 1
	for lba < end {
		if _, ok := m.mu.blocks[lba]; !ok {
			break
		}
		lba++
	}
	return true, (lba - first) * BlockSize, nil
}

// SetErrors injects errors returned by reads and by writes and unmaps.
func (m *MemBackend) SetErrors(read, write error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.mu.readErr, m.mu.writeErr = read, write
}

// Block returns a copy of block lba (zeros if unmapped).
func (m *MemBackend) Block(lba int64) []byte {
	m.mu.Lock()
	defer m.mu.Unlock()
	b := make([]byte, BlockSize)
	copy(b, m.mu.blocks[lba])
	return b
}

// MappedBlocks returns the mapped LBAs, ascending.
func (m *MemBackend) MappedBlocks() []int64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	var l []int64
	for lba := range m.mu.blocks {
		l = append(l, lba)
	}
	sort.Slice(l, func(i, j int) bool { return l[i] < l[j] })
	return l
}

// StaticResolver is a Resolver for tests: every initiator (or only those
// listed in Initiators, when set) sees the same LUNs; port groups are fixed.
type StaticResolver struct {
	// mu guards the fields below.
	mu struct {
		sync.Mutex
		luns       map[uint64]*LogicalUnit
		initiators map[string]bool
		groups     []PortGroup
		// groupsFor, when set for an initiator and unit, replaces groups.
		groupsFor map[groupsKey][]PortGroup
	}
}

type groupsKey struct {
	initiator string
	lu        *LogicalUnit
}

// NewStaticResolver returns a resolver mapping luns to every initiator
// with one active/optimized group of relative port 1.
func NewStaticResolver(luns map[uint64]*LogicalUnit) *StaticResolver {
	r := &StaticResolver{}
	r.mu.luns = luns
	r.mu.groups = []PortGroup{{ID: 1, State: ActiveOptimized, Preferred: true, RelativePortIDs: []uint16{1}}}
	return r
}

// SetGroups replaces the port groups.
func (r *StaticResolver) SetGroups(g []PortGroup) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.mu.groups = g
}

// SetLUNs replaces the LUNs every (visible) initiator sees.
func (r *StaticResolver) SetLUNs(luns map[uint64]*LogicalUnit) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.mu.luns = luns
}

// SetGroupsFor replaces the port groups initiator sees for lu.
func (r *StaticResolver) SetGroupsFor(initiator string, lu *LogicalUnit, g []PortGroup) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.mu.groupsFor == nil {
		r.mu.groupsFor = map[groupsKey][]PortGroup{}
	}
	r.mu.groupsFor[groupsKey{initiator, lu}] = g
}

// Restrict limits the LUNs to the listed initiators.
func (r *StaticResolver) Restrict(initiators ...string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.mu.initiators = map[string]bool{}
	for _, i := range initiators {
		r.mu.initiators[i] = true
	}
}

func (r *StaticResolver) visible(initiator string) bool {
	return r.mu.initiators == nil || r.mu.initiators[initiator]
}

// LUN implements Resolver.
func (r *StaticResolver) LUN(initiator string, lun uint64) *LogicalUnit {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.visible(initiator) {
		return nil
	}
	return r.mu.luns[lun]
}

// LUNs implements Resolver.
func (r *StaticResolver) LUNs(initiator string) []uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.visible(initiator) {
		return nil
	}
	var l []uint64
	for k := range r.mu.luns {
		l = append(l, k)
	}
	sort.Slice(l, func(i, j int) bool { return l[i] < l[j] })
	return l
}

// PortGroups implements Resolver.
func (r *StaticResolver) PortGroups(initiator string, lu *LogicalUnit) []PortGroup {
	r.mu.Lock()
	defer r.mu.Unlock()
	if g, ok := r.mu.groupsFor[groupsKey{initiator, lu}]; ok {
		return append([]PortGroup(nil), g...)
	}
	return append([]PortGroup(nil), r.mu.groups...)
}
