package iscsi

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"log/slog"
	"os"
	"sync"
	"testing"

	"github.com/metro-storage/metro/internal/pipenet"
	"github.com/metro-storage/metro/internal/scsi"
)

// The test harness: an in-memory listener, a fake backend and executor,
// and a Server running on them. Set ISCSI_TEST_LOG=1 to see the server's
// debug log.

// fakeBackend serves fixed targets and per-initiator CHAP.
type fakeBackend struct {
	mu      sync.Mutex
	targets []TargetInfo
	chap    map[string]CHAP // by initiator
	denied  map[string]bool // initiators refused
}

func newFakeBackend() *fakeBackend {
	return &fakeBackend{
		targets: []TargetInfo{
			{Name: testTarget, Addresses: []string{"10.0.0.1:3260,1"}},
			{Name: testTarget2},
		},
		chap:   map[string]CHAP{},
		denied: map[string]bool{},
	}
}

func (b *fakeBackend) Targets(string) []TargetInfo {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]TargetInfo(nil), b.targets...)
}

func (b *fakeBackend) Authorize(target, initiator string) (CHAP, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if target != "" {
		found := false
		for _, t := range b.targets {
			found = found || t.Name == target
		}
		if !found {
			return CHAP{}, ErrTargetNotFound
		}
	}
	if b.denied[initiator] {
		return CHAP{}, ErrNotAuthorized
	}
	return b.chap[initiator], nil
}

// fakeExec is an in-memory disk of 512-byte blocks that records what it
// is asked. A hook can take over any command.
type fakeExec struct {
	mu    sync.Mutex
	disk  []byte
	cmds  []scsi.Command
	tmfs  []tmfCall
	lost  []scsi.Nexus
	hook  func(ctx context.Context, cmd *scsi.Command) *scsi.Result
	tmfFn func(fn scsi.TMF, lun uint64, tag uint32) scsi.TMFResponse
}

type tmfCall struct {
	nexus scsi.Nexus
	fn    scsi.TMF
	lun   uint64
	tag   uint32
}

func newFakeExec() *fakeExec { return &fakeExec{disk: make([]byte, 4<<20)} }

func (e *fakeExec) Execute(ctx context.Context, cmd *scsi.Command) *scsi.Result {
	e.mu.Lock()
	c := *cmd
	c.CDB = bytes.Clone(cmd.CDB)
	c.DataOut = bytes.Clone(cmd.DataOut)
	e.cmds = append(e.cmds, c)
	hook := e.hook
	e.mu.Unlock()
	if hook != nil {
		if r := hook(ctx, cmd); r != nil {
			return r
		}
	}
	cdb := cmd.CDB
	switch cdb[0] {
	case 0x00: // TEST UNIT READY
		return &scsi.Result{Status: scsi.StatusGood}
	case 0x12: // INQUIRY
		d := make([]byte, 36)
		d[2], d[3], d[4] = 6, 2, 31
		copy(d[8:], "METRO   TEST            0001")
		return &scsi.Result{Status: scsi.StatusGood, Data: d}
	case 0x28: // READ(10)
		lba := int(binary.BigEndian.Uint32(cdb[2:]))
		n := int(binary.BigEndian.Uint16(cdb[7:]))
		if (lba+n)*512 > len(e.disk) {
			return checkCondition(0x05, 0x21, 0x00)
		}
		e.mu.Lock()
		d := bytes.Clone(e.disk[lba*512 : (lba+n)*512])
		e.mu.Unlock()
		return &scsi.Result{Status: scsi.StatusGood, Data: d}
	case 0x2a: // WRITE(10)
		lba := int(binary.BigEndian.Uint32(cdb[2:]))
		n := int(binary.BigEndian.Uint16(cdb[7:]))
		if (lba+n)*512 > len(e.disk) {
			return checkCondition(0x05, 0x21, 0x00)
		}
		e.mu.Lock()
		copy(e.disk[lba*512:(lba+n)*512], cmd.DataOut)
		e.mu.Unlock()
		return &scsi.Result{Status: scsi.StatusGood}
	}
	return checkCondition(0x05, 0x20, 0x00)
}

func checkCondition(key, asc, ascq byte) *scsi.Result {
	s := make([]byte, 18)
	s[0], s[2], s[7], s[12], s[13] = 0x70, key, 10, asc, ascq
	return &scsi.Result{Status: scsi.StatusCheckCondition, Sense: s}
}

func (e *fakeExec) TaskManagement(_ context.Context, n scsi.Nexus, fn scsi.TMF, lun uint64, tag uint32) scsi.TMFResponse {
	e.mu.Lock()
	e.tmfs = append(e.tmfs, tmfCall{nexus: n, fn: fn, lun: lun, tag: tag})
	f := e.tmfFn
	e.mu.Unlock()
	if f != nil {
		return f(fn, lun, tag)
	}
	return scsi.TMFComplete
}

func (e *fakeExec) NexusLost(n scsi.Nexus) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.lost = append(e.lost, n)
}

func (e *fakeExec) setHook(h func(ctx context.Context, cmd *scsi.Command) *scsi.Result) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.hook = h
}

func (e *fakeExec) lostCount() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.lost)
}

func (e *fakeExec) commands() []scsi.Command {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]scsi.Command(nil), e.cmds...)
}

// harness runs a Server on a pipe listener.
type harness struct {
	t       testing.TB
	srv     *Server
	l       *pipenet.Listener
	exec    *fakeExec
	backend *fakeBackend
	done    chan error
	cancel  context.CancelFunc
}

func testLogger(t testing.TB) *slog.Logger {
	if os.Getenv("ISCSI_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

func newHarness(t testing.TB, mod func(*Config)) *harness {
	t.Helper()
	h := &harness{t: t, l: pipenet.Listen("pipe:3260"), exec: newFakeExec(), backend: newFakeBackend(), done: make(chan error, 1)}
	cfg := Config{
		Backend:        h.backend,
		Executor:       h.exec,
		TPGT:           1,
		RelativePortID: 7,
		Logger:         testLogger(t),
		NopInterval:    -1,
		// Every pipe connection comes from the same source and tests
		// dial fast: the limits are generous unless a test sets them.
		MaxConnectionsPerSource: 1 << 20,
		MaxLoginsPerSource:      1 << 20,
		MaxLogins:               1 << 20,
	}
	if mod != nil {
		mod(&cfg)
	}
	h.srv = NewServer(cfg)
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	go func() { h.done <- h.srv.Serve(ctx, h.l) }()
	t.Cleanup(h.stop)
	return h
}

func (h *harness) stop() {
	h.cancel()
	if err := <-h.done; err != nil && !errors.Is(err, context.Canceled) && !errors.Is(err, ErrServerClosed) {
		h.t.Errorf("Serve: %v", err)
	}
	// Every session is gone: whatever they counted in the write budget
	// was given back.
	if used, _ := h.srv.budget.usage(nil); used != 0 {
		h.t.Errorf("%d bytes still counted in the write budget after every session ended", used)
	}
	if used, _ := h.srv.reads.usage(nil); used != 0 {
		h.t.Errorf("%d bytes still counted in the read budget after every session ended", used)
	}
	h.done <- nil // make stop idempotent
}
