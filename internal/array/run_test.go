package array

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/metro-storage/metro/internal/api"
	"github.com/metro-storage/metro/internal/store"
)

// TestRunStopsEverything starts an array on loopback, stops it, and checks
// that Run returns only once every goroutine it started is gone.
func TestRunStopsEverything(t *testing.T) {
	before := runtime.NumGoroutine()
	c := &Config{Name: "array-a", DataDir: t.TempDir()}
	c.API.Listen = "127.0.0.1:0"
	c.ISCSI.Listen = []string{"127.0.0.1:0"}
	if err := c.setDefaults(); err != nil {
		t.Fatal(err)
	}
	_, stop := startArray(t, c, nil)
	if err := stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	// Goroutines that were told to stop may take a moment to be reaped.
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > before {
		buf := make([]byte, 1<<20)
		t.Fatalf("%d goroutines left after Run returned (%d before):\n%s", n, before, buf[:runtime.Stack(buf, true)])
	}
}

// TestStoreFailureStopsArray makes the store's WAL fail under a
// configuration change made through the API, the path whose panic the
// API's recovery used to swallow (the array then kept its link up with a
// store that could not write). The array's fatal handler is called (metro
// array run exits there), Run stops and returns the failure, and the
// request is answered 503.
func TestStoreFailureStopsArray(t *testing.T) {
	dir := t.TempDir()
	c := &Config{Name: "array-a", DataDir: dir}
	c.API.Listen = "127.0.0.1:0"
	c.ISCSI.Listen = []string{"127.0.0.1:0"}
	if err := c.setDefaults(); err != nil {
		t.Fatal(err)
	}
	trigger := filepath.Join(dir, "fail-wal")
	var mu sync.Mutex
	var fatal []error
	a, err := Open(Options{Config: c, StoreFaultTrigger: trigger, Fatal: func(err error) {
		mu.Lock()
		defer mu.Unlock()
		fatal = append(fatal, err)
	}})
	if err != nil {
		t.Fatal(err)
	}
	ready := make(chan struct{})
	done := make(chan error, 1)
	go func() { done <- a.Run(context.Background(), func() { close(ready) }) }()
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("Run ended before it was ready: %v", err)
	}
	if err := os.WriteFile(trigger, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	h := api.NewServer(a, "", nil)
	req := httptest.NewRequest("POST", api.Version+"/pods", strings.NewReader(`{"name":"pod1"}`))
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	if rec.Code != http.StatusServiceUnavailable {
		t.Errorf("create pod on a failing disk: %d %s, want 503", rec.Code, rec.Body.String())
	}
	select {
	case err := <-done:
		if !errors.Is(err, store.ErrFailed) {
			t.Fatalf("Run returned %v, want the store failure", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Run did not stop after the store failed")
	}
	mu.Lock()
	defer mu.Unlock()
	if len(fatal) != 1 || !strings.Contains(fatal[0].Error(), "WAL") {
		t.Fatalf("fatal handler calls: %v, want one naming the WAL failure", fatal)
	}
}
