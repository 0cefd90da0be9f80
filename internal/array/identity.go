package array

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"time"

	"github.com/metro-storage/metro/internal/store"
)

// Identity is an array's permanent identity, chosen at first start.
//
// The ALUA target port group id and the relative target port id are
// derived from the id (never from the name or from start order), so two
// arrays that pair later keep the numbers they always had and hosts never
// see a port renumbered. Both are 16-bit and never zero; pairing refuses
// two arrays whose derived numbers collide.
type Identity struct {
	ID      string    `json:"id"`
	Name    string    `json:"name"`
	Created time.Time `json:"created"`
}

const identityKey = "array/identity"

// loadIdentity reads the identity, making one on first start.
func loadIdentity(s *store.Store, name string, now time.Time) (Identity, error) {
	data, ok, err := s.GetMeta(identityKey)
	if err != nil {
		return Identity{}, fmt.Errorf("identity: %w", err)
	}
	if ok {
		var id Identity
		if err := json.Unmarshal(data, &id); err != nil {
			return Identity{}, fmt.Errorf("identity: %w", err)
		}
		if id.Name != name {
			return Identity{}, fmt.Errorf("identity: this data directory belongs to array %q, but the config names it %q: fix the config's name", id.Name, name)
		}
		return id, nil
	}
	id := Identity{ID: newID(), Name: name, Created: now.UTC()}
	data, _ = json.Marshal(id)
	b := s.NewBatch()
	b.SetMeta(identityKey, data)
	if err := b.Commit(); err != nil {
		return Identity{}, fmt.Errorf("identity: %w", err)
	}
	return id, nil
}

// derive16 hashes the id with a purpose into a non-zero 16-bit number.
func (id Identity) derive16(purpose string) uint16 {
	h := sha256.Sum256([]byte(purpose + ":" + id.ID))
	v := binary.BigEndian.Uint16(h[:2])
	if v == 0 {
		v = 1
	}
	return v
}

// TargetPortGroup is the array's ALUA target port group id.
func (id Identity) TargetPortGroup() uint16 { return id.derive16("tpg") }

// RelativePortID is the relative target port id of the array's port.
func (id Identity) RelativePortID() uint16 { return id.derive16("rtpi") }

// PortalGroupTag is the iSCSI target portal group tag of the array's
// portals: the same as its target port group.
func (id Identity) PortalGroupTag() uint16 { return id.TargetPortGroup() }

// newID returns 128 random bits in hex.
func newID() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err) // crypto/rand never fails on Linux
	}
	return hex.EncodeToString(b[:])
}
