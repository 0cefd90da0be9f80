// Package logtest captures what a logger writes, for tests that check
// what was logged.
package logtest

import (
	"bytes"
	"log/slog"
	"strings"
	"sync"
)

// Buffer holds the text a logger wrote; it is safe for concurrent use.
type Buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

// Logger returns a text logger (info level and above) writing to b.
func (b *Buffer) Logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(b, nil))
}

// Write implements io.Writer.
func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

// String returns everything written so far.
func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// Count returns how often s occurs in what was written.
func (b *Buffer) Count(s string) int { return strings.Count(b.String(), s) }
