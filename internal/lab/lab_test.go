package lab

import (
	"context"
	"fmt"
	"net"
	"os"
	"testing"
	"time"

	"github.com/metro-storage/metro/internal/testbin"
)

var metroBin string

func TestMain(m *testing.M) {
	os.Exit(testbin.Run(m, &metroBin))
}

// TestUpWhenAPortIsTaken hands the first array a port that another
// process holds (as when two labs start at once): the array stops at
// once, and the lab starts it again on other ports.
func TestUpWhenAPortIsTaken(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	takenPort := taken.Addr().(*net.TCPAddr).Port
	free, calls := freePort, 0
	freePort = func() (int, error) {
		calls++
		if calls == 2 { // array-a's iSCSI portal
			return takenPort, nil
		}
		return free()
	}
	defer func() { freePort = free }()

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	l, err := Up(ctx, Options{Dir: t.TempDir(), Arrays: 1, Binary: metroBin})
	if err != nil {
		t.Fatalf("lab up with a taken port: %v", err)
	}
	defer l.Stop()
	if calls < 5 {
		t.Fatalf("%d ports picked: the array was not given fresh ones", calls)
	}
	ai := l.Info.Arrays[0]
	if ai.Portal == fmt.Sprintf("127.0.0.1:%d", takenPort) {
		t.Fatalf("the array's portal is the taken port %s", ai.Portal)
	}
	c, err := l.Client(0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Array(ctx); err != nil {
		t.Fatalf("the restarted array does not answer: %v", err)
	}
	if conn, err := net.Dial("tcp", ai.Portal); err != nil {
		t.Fatalf("the array's portal %s does not accept: %v", ai.Portal, err)
	} else {
		conn.Close()
	}
}
