package array

import (
	"runtime"
	"testing"
	"time"
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
