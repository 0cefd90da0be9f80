package mediator

import (
	"context"
	"errors"
)

// Backend is the mediator's durable state. FileBackend keeps it in a file
// of the mediator's data directory; an etcd backend (a later release)
// will keep it in an etcd cluster so that several mediators can serve the
// same state. The conformance suite in package backendtest checks every
// implementation against this contract:
//
//   - Opening a backend (its constructor) is a start: it adds StartStep to
//     the generation and makes that durable before returning. The first
//     open of an empty store chooses the mediator's id, 128 random bits in
//     hex, kept for ever after.
//   - Elect checks the request (Validate; ErrInvalid otherwise), then
//     applies Decide to the pod's stored record atomically with respect
//     to every other Elect on the same state, also Elects through other
//     backends opened on the same store. A changed record adds ChangeStep
//     to the generation. Elect returns only once the record it answered
//     from and the generation it returns are durable: an answer never
//     depends on state that a crash could lose. A retried request gets
//     the same answer and changes nothing.
//   - Info returns the id, a durable generation at least that of every
//     answer already returned, the reset generation and the number of pods
//     with a record.
//   - A new pod beyond the backend's limit of pods is refused with
//     ErrFull and changes nothing.
//   - When the state cannot be made durable, the call fails with an error
//     that wraps ErrFailed, and so does every later call (fail-stop: the
//     process should exit; a restart reloads what was durable).
//   - After Close every call fails with ErrClosed. Close releases the
//     store for another open.
//   - Every method is safe for concurrent use; ctx bounds how long a call
//     waits (for the disk, or for another writer), and a call it ends
//     returns ctx's error with nothing answered.
type Backend interface {
	Info(ctx context.Context) (Info, error)
	Elect(ctx context.Context, req ElectRequest) (ElectResult, uint64, error)
	Close() error
}

// Info describes a mediator's state.
type Info struct {
	// ID is the mediator's random id, chosen at its first start.
	ID string
	// Generation is the durable generation.
	Generation uint64
	// ResetGeneration is the generation reset-generation last set, 0 if
	// it never ran.
	ResetGeneration uint64
	// Pods is the number of pods with a record.
	Pods int
}

// Errors of a Backend.
var (
	ErrClosed = errors.New("mediator state is closed")
	ErrFull   = errors.New("mediator state is full")
	ErrFailed = errors.New("mediator state cannot be made durable")
)
