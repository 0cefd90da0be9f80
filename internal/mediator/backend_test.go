package mediator_test

import (
	"testing"

	"github.com/metro-storage/metro/internal/mediator"
	"github.com/metro-storage/metro/internal/mediator/backendtest"
)

// TestFileBackend runs the backend conformance suite against the file
// backend.
func TestFileBackend(t *testing.T) {
	backendtest.Run(t, func(t *testing.T, maxPods int) backendtest.Opener {
		dir := t.TempDir()
		return func() (mediator.Backend, error) {
			return mediator.OpenFile(dir, mediator.FileOptions{MaxPods: maxPods})
		}
	})
}

// TestMemoryBackend runs the suite against the reference backend.
func TestMemoryBackend(t *testing.T) {
	backendtest.Run(t, func(t *testing.T, maxPods int) backendtest.Opener {
		return backendtest.NewMemory(maxPods).Open
	})
}
