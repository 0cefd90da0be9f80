package e2e

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/metro-storage/metro/internal/api"
	"github.com/metro-storage/metro/internal/initiator"
	"github.com/metro-storage/metro/internal/lab"
)

const badInitiator = "iqn.2026-11.io.metro:e2e-bad"

// TestBadInput checks that bad input gets a clear error and harms nothing
// else: a malformed PDU drops only its own connection, an out-of-range LBA
// gets LBA OUT OF RANGE, a bad REST body 400, a wrong token 401, a bad CLI
// argument a message and a non-zero exit.
func TestBadInput(t *testing.T) {
	l := startLab(t, lab.Options{Arrays: 1, Initiators: []string{badInitiator}, Size: 16 << 20})
	a := l.Info.Arrays[0]
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	good, err := initiator.Dial(ctx, a.Portal, initiator.Options{InitiatorName: badInitiator, TargetName: a.Target})
	if err != nil {
		t.Fatal(err)
	}
	defer good.Close()
	for i := 0; i < 3 && good.TestUnitReady(0) != nil; i++ {
	}

	t.Run("malformed PDU drops only its connection", func(t *testing.T) {
		garbage := [][]byte{
			append([]byte{0x3d, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff}, make([]byte, 40)...), // unknown opcode, huge lengths
			[]byte(strings.Repeat("GET / HTTP/1.1\r\n", 8)),
		}
		for _, g := range garbage {
			nc, err := net.DialTimeout("tcp", a.Portal, 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			_, _ = nc.Write(g)
			_ = nc.SetReadDeadline(time.Now().Add(20 * time.Second))
			_, err = io.ReadAll(nc)
			nc.Close()
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				t.Fatal("the target kept a connection open after a malformed PDU")
			}
		}
		// A logged-in session sends a bad PDU: it is dropped.
		bad, err := initiator.Dial(ctx, a.Portal, initiator.Options{InitiatorName: badInitiator, TargetName: a.Target})
		if err != nil {
			t.Fatal(err)
		}
		_, _ = bad.RawConn().Write(append([]byte{0x1f, 0x80, 0, 0, 0, 0xff, 0xff, 0xff}, make([]byte, 40)...))
		if _, err := bad.Read(0, 0, 1); err == nil {
			// One command may squeeze through before the drop; the next must not.
			if _, err := bad.Read(0, 0, 1); err == nil {
				t.Fatal("session survived a malformed PDU")
			}
		}
		bad.Close()
		// The other session is unharmed.
		if err := good.Write(0, 10, make([]byte, 4096)); err != nil {
			t.Fatalf("the good session was harmed: %v", err)
		}
	})

	t.Run("out of range LBA", func(t *testing.T) {
		blocks, size, err := good.ReadCapacity(0)
		if err != nil || size != 512 || blocks != (16<<20)/512 {
			t.Fatalf("capacity %d blocks of %d: %v", blocks, size, err)
		}
		for _, lba := range []uint64{blocks, blocks - 1} {
			_, err := good.Read(0, lba, 2)
			var se *initiator.SCSIError
			if !errors.As(err, &se) {
				t.Fatalf("read at %d: %v, want LBA OUT OF RANGE", lba, err)
			}
			if key, asc, ascq := se.SenseKey(); key != 5 || asc != 0x21 || ascq != 0 {
				t.Fatalf("read at %d: sense %x/%02x/%02x, want 5/21/00", lba, key, asc, ascq)
			}
		}
	})

	t.Run("REST", func(t *testing.T) {
		c, err := l.Client(0)
		if err != nil {
			t.Fatal(err)
		}
		var se *api.StatusError
		err = c.Do(ctx, http.MethodPost, "/volumes", map[string]any{"name": "pod1::x", "size": "big"}, nil)
		if !errors.As(err, &se) || se.Code != 400 || !strings.Contains(se.Message, "size") {
			t.Fatalf("bad body: %v", err)
		}
		err = c.Do(ctx, http.MethodPost, "/volumes", map[string]any{"name": "pod1::x", "size": 1 << 20, "colour": "red"}, nil)
		if !errors.As(err, &se) || se.Code != 400 || !strings.Contains(se.Message, "colour") {
			t.Fatalf("unknown field: %v", err)
		}
		err = c.Do(ctx, http.MethodPost, "/volumes", map[string]any{"name": "novolname", "size": 1 << 20}, nil)
		if !errors.As(err, &se) || se.Code != 400 {
			t.Fatalf("bad name: %v", err)
		}
		wrong, _ := api.NewClient(a.API, "wrong-token", a.CA)
		_, err = wrong.Pods(ctx)
		if !errors.As(err, &se) || se.Code != 401 {
			t.Fatalf("wrong token: %v", err)
		}
	})

	t.Run("CLI", func(t *testing.T) {
		env := []string{"METRO_API=" + a.API, "METRO_TOKEN=" + a.Token, "METRO_CA=" + a.CA}
		run := func(args ...string) (string, error) {
			cmd := exec.Command(metroBin, args...)
			cmd.Env = env
			out, err := cmd.CombinedOutput()
			return string(out), err
		}
		for _, args := range [][]string{
			{"vol", "create", "--size", "ten", "pod1::v2"},
			{"vol", "create", "pod1::v2"},
			{"vol", "create", "--size", "1G", "nopod"},
			{"host", "connect", "h-none"},
			{"pod", "frobnicate"},
		} {
			out, err := run(args...)
			if err == nil {
				t.Fatalf("metro %v succeeded: %s", args, out)
			}
			if len(strings.TrimSpace(out)) == 0 {
				t.Fatalf("metro %v failed without a message", args)
			}
		}
		out, err := run("vol", "create", "--size", "1G", "pod1::v2")
		if err != nil {
			t.Fatalf("vol create: %v %s", err, out)
		}
		out, err = run("vol", "destroy", "pod1::vol1")
		if err == nil || !strings.Contains(out, "force") {
			t.Fatalf("destroying a connected volume without --force: %v %s", err, out)
		}
	})
}
