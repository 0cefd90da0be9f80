package array

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/metro-storage/metro/internal/api"
	"github.com/metro-storage/metro/internal/store"
)

// checker runs the checks of the array's store that `metro array check`
// asks for, one at a time, in the background: a check reads every stored
// block, which takes longer than an API request may.
type checker struct {
	mu struct {
		sync.Mutex
		ctx     context.Context // the array's run; nil before Run
		running bool
		last    *api.CheckRun // the running or the last check
	}
	checked, total atomic.Int64
}

var _ api.Checker = (*Array)(nil)

// StartCheck implements api.Checker.
func (a *Array) StartCheck() api.CheckRun {
	c := &a.check
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.mu.running {
		return c.snapshot(*c.mu.last)
	}
	ctx := c.mu.ctx
	if ctx == nil {
		ctx = context.Background()
	}
	c.checked.Store(0)
	c.total.Store(0)
	c.mu.running = true
	c.mu.last = &api.CheckRun{State: "running", Started: a.now(), Damaged: []api.DamagedRange{}, Problems: []string{}}
	a.log.Info("store check started")
	go a.runCheck(ctx)
	return c.snapshot(*c.mu.last)
}

// LastCheck implements api.Checker.
func (a *Array) LastCheck() (api.CheckRun, bool) {
	c := &a.check
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.mu.last == nil {
		return api.CheckRun{}, false
	}
	return c.snapshot(*c.mu.last), true
}

// snapshot fills a running check's progress in; c.mu is held.
func (c *checker) snapshot(run api.CheckRun) api.CheckRun {
	if run.State == "running" {
		run.CheckedBytes, run.TotalBytes = c.checked.Load(), c.total.Load()
	}
	return run
}

func (a *Array) runCheck(ctx context.Context) {
	c := &a.check
	err := a.store.CheckProgress(ctx, func(checked, total int64) {
		c.checked.Store(checked)
		c.total.Store(total)
	})
	now := a.now()
	c.mu.Lock()
	defer c.mu.Unlock()
	run := c.mu.last
	run.Finished = &now
	run.CheckedBytes, run.TotalBytes = c.checked.Load(), c.total.Load()
	c.mu.running = false
	var ce *store.CheckError
	switch {
	case err == nil:
		run.State = "done"
		run.CheckedBytes = max(run.CheckedBytes, run.TotalBytes)
		a.log.Info("store check done: no damage found", "took", now.Sub(run.Started))
	case errors.As(err, &ce):
		run.State = "done"
		run.CheckedBytes = max(run.CheckedBytes, run.TotalBytes)
		names := a.volumeNames()
		var blocks uint64
		for _, d := range ce.Damaged {
			name, ok := names[d.Volume]
			if !ok {
				name = fmt.Sprintf("store volume %d", d.Volume)
			}
			reason := "damaged"
			if d.Err != nil {
				reason = d.Err.Error()
			}
			n := uint64(d.Length / store.BlockSize)
			blocks += n
			run.Damaged = append(run.Damaged, api.DamagedRange{Volume: name, LBA: uint64(d.Offset / store.BlockSize), Blocks: n, Reason: reason})
		}
		for _, p := range ce.Problems {
			run.Problems = append(run.Problems, p.Error())
		}
		run.OmittedProblems = ce.Omitted
		a.log.Error("store check done: damage found", "damaged_blocks", blocks, "damaged_runs", len(ce.Damaged),
			"other_problems", len(ce.Problems)+ce.Omitted, "took", now.Sub(run.Started))
	default:
		run.State = "failed"
		run.Error = err.Error()
		a.log.Error("store check failed", "err", err)
	}
}

// volumeNames maps the store's volume ids to the volumes' names
// (pod::name; destroyed ones pending eradication say so).
func (a *Array) volumeNames() map[uint64]string {
	names := make(map[uint64]string)
	for _, v := range a.cat.View().Volumes {
		name := v.Name
		if v.Destroyed != nil {
			name += " (destroyed)"
		}
		names[v.DataID] = name
	}
	return names
}

// setCheckContext gives later checks the array's run context, so that
// stopping the array stops a check.
func (a *Array) setCheckContext(ctx context.Context) {
	a.check.mu.Lock()
	a.check.mu.ctx = ctx
	a.check.mu.Unlock()
}
