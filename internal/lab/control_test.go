package lab

import (
	"bufio"
	"context"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// controlOnly is a lab with no process, only its control socket, in dir.
func controlOnly(t *testing.T, dir string) *Lab {
	t.Helper()
	l := &Lab{opts: Options{Dir: dir, Arrays: 2, NoMediator: true}}
	var err error
	if l.lock, err = lockDir(dir); err != nil {
		t.Fatal(err)
	}
	if l.ctlSrv, err = l.listenControl(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(l.Stop)
	return l
}

func ask(t *testing.T, dir string, req Request) (Response, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	return Ask(ctx, dir, req)
}

// TestControlSocket: a lab refuses requests until it is up, then answers
// them; the socket is its user's only; a long directory name works;
// without a lab, or once it stopped, the error says how to start one.
func TestControlSocket(t *testing.T) {
	// Deeper than a socket address can name (108 bytes).
	dir := filepath.Join(t.TempDir(), strings.Repeat("d", 60), strings.Repeat("e", 60))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	noLab := "no lab is running in " + dir + ": start one with metro lab up --dir " + dir
	if _, err := ask(t, dir, Request{Verb: VerbStatus}); err == nil || err.Error() != noLab {
		t.Fatalf("status before the lab: %v; want %q", err, noLab)
	}

	l := controlOnly(t, dir)
	fi, err := os.Stat(filepath.Join(dir, SocketName))
	if err != nil || fi.Mode().Perm() != 0o600 || fi.Mode().Type() != os.ModeSocket {
		t.Fatalf("control socket: %v, %v; want a socket 0600", fi.Mode(), err)
	}
	if _, err := ask(t, dir, Request{Verb: VerbStatus}); err == nil || !strings.Contains(err.Error(), "still starting") {
		t.Fatalf("status while the lab starts: %v; want it refused as starting", err)
	}
	l.ctlSrv.ready.Store(true)
	resp, err := ask(t, dir, Request{Verb: VerbStatus})
	if err != nil || resp.Status == nil || resp.Status.PID != os.Getpid() || resp.Status.Dir != dir {
		t.Fatalf("status: %+v, %v", resp, err)
	}

	// A second lab in the same directory is refused, naming the first.
	if _, err := lockDir(dir); err == nil || !strings.Contains(err.Error(), "already running in "+dir+" (pid "+strconv.Itoa(os.Getpid())+")") {
		t.Fatalf("a second lock of the directory: %v", err)
	}

	l.Stop()
	if _, err := os.Stat(filepath.Join(dir, SocketName)); !os.IsNotExist(err) {
		t.Fatalf("the socket outlives the lab: %v", err)
	}
	if _, err := ask(t, dir, Request{Verb: VerbStatus}); err == nil || err.Error() != noLab {
		t.Fatalf("status after the lab: %v; want %q", err, noLab)
	}
	// A socket file left by a lab killed with -9 is stale: same answer.
	ln, err := net.Listen("unix", filepath.Join(t.TempDir(), SocketName))
	if err != nil {
		t.Fatal(err)
	}
	stale := filepath.Dir(ln.Addr().String())
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()
	if _, err := ask(t, stale, Request{Verb: VerbStatus}); err == nil || !strings.HasPrefix(err.Error(), "no lab is running in "+stale) {
		t.Fatalf("status with a stale socket: %v", err)
	}
	// And the next lab there takes over the stale socket.
	l2 := controlOnly(t, stale)
	l2.ctlSrv.ready.Store(true)
	if _, err := ask(t, stale, Request{Verb: VerbStatus}); err != nil {
		t.Fatalf("status of a lab started over a stale socket: %v", err)
	}
}

// TestControlBadRequests: whatever arrives on the socket gets an answer
// that says what is wrong, and the lab carries on.
func TestControlBadRequests(t *testing.T) {
	dir := t.TempDir()
	l := controlOnly(t, dir)
	l.ctlSrv.ready.Store(true)
	for _, tc := range []struct{ req, want string }{
		{"", "bad request"},
		{"not json\n", "bad request"},
		{`{"verb":"status","colour":"red"}` + "\n", "unknown field"},
		{`{"verb":"status"} {"verb":"status"}` + "\n", "more than one"},
		{`{"verb":"explode"}` + "\n", `unknown verb "explode"`},
		{`{"verb":"kill"}` + "\n", "kill: name an array"},
		{`{"verb":"kill","array":"array-z"}` + "\n", `no array "array-z"`},
		{`{"verb":"rtt","rtt":"fast"}` + "\n", "not a duration"},
		{`{"verb":"rtt","rtt":"-5ms"}` + "\n", "negative"},
		{`{"verb":"kill","array":"a","and_mediator":true}` + "\n", "partition and heal only"},
		{`{"verb":"partition","array":"a","and_mediator":true}` + "\n", "one-way cut is of the link only"},
		{`{"verb":"mediator-stop"}` + "\n", "--mediator=false"},
		{strings.Repeat(" ", maxRequest+10), "bad request"},
	} {
		c, err := net.Dial("unix", filepath.Join(dir, SocketName))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Write([]byte(tc.req)); err != nil {
			t.Fatal(err)
		}
		if tc.req == "" {
			c.(*net.UnixConn).CloseWrite()
		}
		var resp Response
		err = json.NewDecoder(bufio.NewReader(c)).Decode(&resp)
		c.Close()
		if err != nil || !strings.Contains(resp.Error, tc.want) {
			t.Errorf("request %.40q: answer %+v, %v; want an error with %q", tc.req, resp, err, tc.want)
		}
	}
	if _, err := ask(t, dir, Request{Verb: VerbStatus}); err != nil {
		t.Fatalf("status after the bad requests: %v", err)
	}
}
