package catalog

import (
	"encoding/json"
	"fmt"
	"sync"
	"time"
)

// Persister stores the configuration document durably. Save must be
// atomic and synced before it returns.
type Persister interface {
	Load() (data []byte, ok bool, err error)
	Save(data []byte) error
}

// Catalog is the live configuration of an array. Readers get immutable
// snapshots; Apply copies, changes, persists, then publishes.
type Catalog struct {
	persist Persister

	// applyMu serialises Apply so that operations take effect in order.
	applyMu sync.Mutex
	mu      struct {
		sync.RWMutex
		// state is the published snapshot; never mutated once published.
		state *State
		// watchers are called after each applied op with the new state.
		watchers []func(*State)
	}
}

// Open loads the configuration, or starts an empty one.
func Open(p Persister) (*Catalog, error) {
	c := &Catalog{persist: p}
	data, ok, err := p.Load()
	if err != nil {
		return nil, fmt.Errorf("catalog: load: %w", err)
	}
	st := NewState()
	if ok {
		if err := json.Unmarshal(data, st); err != nil {
			return nil, fmt.Errorf("catalog: decode: %w", err)
		}
		if st.Version > FormatVersion {
			return nil, fmt.Errorf("catalog: configuration format version %d is newer than this metro understands (%d): upgrade metro", st.Version, FormatVersion)
		}
		st.Version = FormatVersion
		st.fill()
	}
	c.mu.state = st
	return c, nil
}

// fill makes nil maps empty after decoding.
func (s *State) fill() {
	if s.Pods == nil {
		s.Pods = map[string]*Pod{}
	}
	if s.Volumes == nil {
		s.Volumes = map[string]*Volume{}
	}
	if s.Hosts == nil {
		s.Hosts = map[string]*Host{}
	}
	if s.HostGroups == nil {
		s.HostGroups = map[string]*HostGroup{}
	}
}

// View returns the current configuration. Callers must not modify it.
func (c *Catalog) View() *State {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.mu.state
}

// Watch registers fn to be called with the new state after every applied
// op (under the apply lock, so calls are ordered). It is also called once
// at once with the current state.
func (c *Catalog) Watch(fn func(*State)) {
	c.applyMu.Lock()
	defer c.applyMu.Unlock()
	c.mu.Lock()
	c.mu.watchers = append(c.mu.watchers, fn)
	st := c.mu.state
	c.mu.Unlock()
	fn(st)
}

// Apply applies op durably. On error nothing changes.
func (c *Catalog) Apply(op Op) error {
	c.applyMu.Lock()
	defer c.applyMu.Unlock()
	cur := c.View()
	next, err := cur.Clone()
	if err != nil {
		return err
	}
	if err := op.apply(next); err != nil {
		return err
	}
	next.Generation++
	data, err := json.Marshal(next)
	if err != nil {
		return fmt.Errorf("catalog: encode: %w", err)
	}
	if err := c.persist.Save(data); err != nil {
		return fmt.Errorf("catalog: save: %w", err)
	}
	c.mu.Lock()
	c.mu.state = next
	watchers := c.mu.watchers
	c.mu.Unlock()
	for _, w := range watchers {
		w(next)
	}
	return nil
}

// Clone deep-copies the state.
func (s *State) Clone() (*State, error) {
	data, err := json.Marshal(s)
	if err != nil {
		return nil, fmt.Errorf("catalog: clone: %w", err)
	}
	out := NewState()
	if err := json.Unmarshal(data, out); err != nil {
		return nil, fmt.Errorf("catalog: clone: %w", err)
	}
	out.fill()
	return out, nil
}

// Expired lists destroyed volumes whose eradication window has passed.
func (s *State) Expired(window time.Duration, now time.Time) []*Volume {
	var out []*Volume
	for _, v := range s.SortedVolumes() {
		if v.Destroyed != nil && !now.Before(v.Destroyed.Add(window)) {
			out = append(out, v)
		}
	}
	return out
}
