package iscsi

import (
	"context"
	"log/slog"
	"runtime/debug"

	"github.com/metro-storage/metro/internal/scsi"
)

// Panic containment. Every goroutine of a connection (its reader, its
// writer, its task workers, its logout and task management goroutines)
// defers recoverPanic, and every call into the Executor goes through
// guardedExecutor: a panic there ends that connection and its session, is
// logged with its stack and counted (Server.Panics), and never takes the
// process down, as net/http contains a handler's panic. A failure that
// must stop the process (a store that can no longer promise durability)
// is not a panic: the store calls its fatal handler, which stops the
// process itself, so recovering every panic here swallows none of them.

// recoverPanic must be deferred directly (recover only works there). When
// the goroutine panicked it logs the value and stack, counts it and runs
// after (which closes the connection or finishes what the goroutine owed).
// It is the one place a panic is recovered, so a value that must go on
// propagating would be re-panicked here.
func (s *Server) recoverPanic(log *slog.Logger, where string, after func()) {
	v := recover()
	if v == nil {
		return
	}
	s.panics.Add(1)
	log.Error("iscsi: panic in "+where+"; the connection is closed, the server goes on",
		"panic", v, "stack", string(debug.Stack()))
	if after != nil {
		after()
	}
}

// Panics returns how many panics the server has contained since it
// started (each closed one connection).
func (s *Server) Panics() uint64 { return s.panics.Load() }

// sessionKeyCtx carries the session in the context its commands run
// under, so that the guarded executor can end the session whose command
// panicked.
type sessionCtxKey struct{}

func sessionFrom(ctx context.Context) *session {
	s, _ := ctx.Value(sessionCtxKey{}).(*session)
	return s
}

// guardedExecutor wraps the configured Executor: a panic in it is
// contained, the session it ran for ended, and the call answered as a
// failure nobody will see (the connection is closing).
type guardedExecutor struct {
	srv   *Server
	inner Executor
}

func (g guardedExecutor) endSession(ctx context.Context) func() {
	return func() {
		if s := sessionFrom(ctx); s != nil {
			s.terminate()
		}
	}
}

func (g guardedExecutor) logFor(ctx context.Context) *slog.Logger {
	if s := sessionFrom(ctx); s != nil {
		return s.log
	}
	return g.srv.log
}

func (g guardedExecutor) Execute(ctx context.Context, cmd *scsi.Command) (res *scsi.Result) {
	end := g.endSession(ctx)
	defer g.srv.recoverPanic(g.logFor(ctx), "a SCSI command", func() {
		end()
		res = &scsi.Result{Status: scsi.StatusCheckCondition, Sense: scsi.SenseHardwareError().Bytes()}
	})
	return g.inner.Execute(ctx, cmd)
}

func (g guardedExecutor) TaskManagement(ctx context.Context, n scsi.Nexus, fn scsi.TMF, lun uint64, refTag uint32) (resp scsi.TMFResponse) {
	end := g.endSession(ctx)
	defer g.srv.recoverPanic(g.logFor(ctx), "a task management function", func() {
		end()
		resp = scsi.TMFRejected
	})
	return g.inner.TaskManagement(ctx, n, fn, lun, refTag)
}

func (g guardedExecutor) NexusLost(n scsi.Nexus) {
	defer g.srv.recoverPanic(g.srv.log, "the end of a nexus", nil)
	g.inner.NexusLost(n)
}

// dataOutLength asks the Executor's DataOutSizer, if it has one, how many
// bytes of data-out a CDB transfers; a panic there counts as not knowing.
func (s *Server) dataOutLength(n scsi.Nexus, lun uint64, cdb []byte) (length uint32, ok bool) {
	if s.sizer == nil {
		return cdbDataOutLength(cdb, 512)
	}
	defer s.recoverPanic(s.log, "sizing a command's data-out", func() { length, ok = 0, false })
	return s.sizer.DataOutLength(n, lun, cdb)
}
