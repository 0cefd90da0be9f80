// Package backendtest is the conformance suite that every
// mediator.Backend must pass (Run), and Memory, a backend kept in memory
// that serves as the suite's reference model and as a fast backend for
// tests of the server and client.
package backendtest

import (
	"context"
	"fmt"
	"sync"

	"github.com/metro-storage/metro/internal/mediator"
)

// Memory is a mediator state kept in memory: the simplest implementation
// of the contract (one lock around mediator.Decide), nothing durable
// beyond the Memory value itself, which stands for the store: Open on the
// same Memory is a restart that keeps the records.
type Memory struct {
	maxPods int
	mu      struct {
		sync.Mutex
		id    string
		gen   uint64
		reset uint64
		pods  map[string]mediator.Record
		open  bool
	}
}

// NewMemory returns an empty store keeping at most maxPods records (0:
// mediator.DefaultMaxPods).
func NewMemory(maxPods int) *Memory {
	if maxPods <= 0 {
		maxPods = mediator.DefaultMaxPods
	}
	m := &Memory{maxPods: maxPods}
	m.mu.id = fmt.Sprintf("%032x", 0x6d656d)
	m.mu.pods = map[string]mediator.Record{}
	return m
}

// Open starts a mediator on the store; only one may be open at a time.
func (m *Memory) Open() (mediator.Backend, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.mu.open {
		return nil, fmt.Errorf("memory mediator state is in use")
	}
	m.mu.open = true
	m.mu.gen += mediator.StartStep
	return &memBackend{m: m}, nil
}

// ResetGeneration is mediator.ResetGeneration for a stopped Memory.
func (m *Memory) ResetGeneration(above uint64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.mu.gen = max(m.mu.gen, above+1)
	m.mu.reset = m.mu.gen
}

// memBackend is one open of a Memory.
type memBackend struct {
	m      *Memory
	closed bool // guarded by m.mu
}

func (b *memBackend) Elect(ctx context.Context, req mediator.ElectRequest) (mediator.ElectResult, uint64, error) {
	if err := req.Validate(); err != nil {
		return mediator.ElectResult{}, 0, err
	}
	m := b.m
	m.mu.Lock()
	defer m.mu.Unlock()
	if b.closed {
		return mediator.ElectResult{}, 0, mediator.ErrClosed
	}
	stored, known := m.mu.pods[req.Pod]
	next, changed, res := mediator.Decide(stored, req)
	if changed {
		if !known && len(m.mu.pods) >= m.maxPods {
			return mediator.ElectResult{}, 0, mediator.ErrFull
		}
		m.mu.pods[req.Pod] = next
		m.mu.gen += mediator.ChangeStep
	}
	return res, m.mu.gen, nil
}

func (b *memBackend) Info(ctx context.Context) (mediator.Info, error) {
	m := b.m
	m.mu.Lock()
	defer m.mu.Unlock()
	if b.closed {
		return mediator.Info{}, mediator.ErrClosed
	}
	return mediator.Info{ID: m.mu.id, Generation: m.mu.gen, ResetGeneration: m.mu.reset, Pods: len(m.mu.pods)}, nil
}

func (b *memBackend) Close() error {
	m := b.m
	m.mu.Lock()
	defer m.mu.Unlock()
	if !b.closed {
		b.closed = true
		m.mu.open = false
	}
	return nil
}
