package api

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/metro-storage/metro/internal/catalog"
	"github.com/metro-storage/metro/internal/pipenet"
)

// TestSlowClientsAreCut opens API connections that never finish their
// headers, trickle a body, or sit idle after an answer: the server closes
// each once its timeout has passed (on synctest's clock), instead of
// holding it for ever.
func TestSlowClientsAreCut(t *testing.T) {
	to := DefaultTimeouts
	cases := []struct {
		name string
		// send writes the client's part; the server must close the
		// connection no sooner than after wait.
		send func(t *testing.T, c net.Conn, r *bufio.Reader)
		wait time.Duration
	}{
		{"headers never finished", func(t *testing.T, c net.Conn, r *bufio.Reader) {
			write(t, c, "GET /api/v1/pods HTTP/1.1\r\nHost: array\r\nAuthorization: Bearer tok\r\n")
		}, to.ReadHeader},
		{"body never finished", func(t *testing.T, c net.Conn, r *bufio.Reader) {
			write(t, c, "POST /api/v1/pods HTTP/1.1\r\nHost: array\r\nAuthorization: Bearer tok\r\n"+
				"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"na")
			// The handler's read fails at the deadline and it answers 400.
			readAnswer(t, r, http.StatusBadRequest)
		}, to.Read},
		{"idle after an answer", func(t *testing.T, c net.Conn, r *bufio.Reader) {
			write(t, c, "GET /api/v1/pods HTTP/1.1\r\nHost: array\r\nAuthorization: Bearer tok\r\n\r\n")
			readAnswer(t, r, http.StatusOK)
		}, to.Idle},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				l := pipenet.Listen("api")
				srv := NewHTTPServer(NewServer(newFake(t), "tok", nil), Timeouts{})
				served := make(chan error, 1)
				go func() { served <- srv.Serve(l) }()
				defer func() {
					_ = srv.Close()
					if err := <-served; !errors.Is(err, http.ErrServerClosed) {
						t.Errorf("Serve: %v", err)
					}
				}()
				c, err := l.Dial(context.Background())
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
				start := time.Now()
				r := bufio.NewReader(c)
				tc.send(t, c, r)
				// Without a timeout every goroutine of the bubble blocks
				// here for ever, and synctest fails the test.
				n, err := r.Read(make([]byte, 1))
				if n != 0 || !errors.Is(err, io.EOF) {
					t.Fatalf("read %d bytes, %v; want the server to close the connection", n, err)
				}
				if waited := time.Since(start); waited < tc.wait {
					t.Fatalf("closed after %v, before its timeout %v", waited, tc.wait)
				}
			})
		})
	}
}

// readAnswer reads a whole answer from r and checks its status.
func readAnswer(t *testing.T, r *bufio.Reader, code int) {
	t.Helper()
	resp, err := http.ReadResponse(r, nil)
	if err != nil {
		t.Fatalf("read the answer: %v", err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != code {
		t.Fatalf("status %d, want %d", resp.StatusCode, code)
	}
}

func write(t *testing.T, c net.Conn, s string) {
	t.Helper()
	if _, err := io.WriteString(c, s); err != nil {
		t.Fatal(err)
	}
}

func TestTimeoutsWithDefaults(t *testing.T) {
	got := Timeouts{Write: time.Hour}.WithDefaults()
	want := DefaultTimeouts
	want.Write = time.Hour
	if got != want {
		t.Fatalf("WithDefaults = %+v, want %+v", got, want)
	}
	srv := NewHTTPServer(http.NotFoundHandler(), Timeouts{})
	if srv.ReadHeaderTimeout <= 0 || srv.ReadTimeout <= 0 || srv.WriteTimeout <= 0 || srv.IdleTimeout <= 0 {
		t.Fatalf("server without every timeout: %+v", srv)
	}
}

// fakeRepl is a fakeBackend that replicates: it records the pairings it
// is asked for.
type fakeRepl struct {
	*fakeBackend
	connects atomic.Int32
}

func (f *fakeRepl) ConnectPeer(context.Context, ArrayConnect) (PeerConnected, error) {
	f.connects.Add(1)
	return PeerConnected{ArrayInfo: ArrayInfo{Name: "array-b"}}, nil
}
func (f *fakeRepl) Pair(context.Context, Pairing) (Pairing, error)     { return Pairing{}, nil }
func (f *fakeRepl) StretchPod(context.Context, string, string) error   { return nil }
func (f *fakeRepl) UnstretchPod(context.Context, string, string) error { return nil }
func (f *fakeRepl) EradicatePod(context.Context, string) error         { return nil }
func (f *fakeRepl) PodReplication(*catalog.Pod) *PodReplication        { return nil }

// TestConnectPeerNeedsHTTPS: the API refuses to pair with a peer whose
// URL is not HTTPS (the peer's token and the link certificates would
// cross in clear), loopback included, before the array contacts it.
func TestConnectPeerNeedsHTTPS(t *testing.T) {
	b := &fakeRepl{fakeBackend: newFake(t)}
	h := NewServer(b, "tok", nil)
	const peerToken = "peer-token-0123456789abcdef"
	for _, u := range []string{"http://10.0.1.5:8443", "http://127.0.0.1:8443", "ftp://10.0.1.5", "10.0.1.5:8443"} {
		rec := do(t, h, "POST", "/api/v1/array/connect", "tok", `{"peer_url":"`+u+`","token":"`+peerToken+`"}`)
		if rec.Code != http.StatusBadRequest || !strings.Contains(rec.Body.String(), "https://") {
			t.Errorf("connect to %s: %d %s; want 400 asking for https://", u, rec.Code, rec.Body.String())
		}
		if strings.Contains(rec.Body.String(), peerToken) {
			t.Errorf("connect to %s: the answer shows the peer's token: %s", u, rec.Body.String())
		}
	}
	if n := b.connects.Load(); n != 0 {
		t.Fatalf("the array was asked to pair %d times with a non-HTTPS peer", n)
	}
	rec := do(t, h, "POST", "/api/v1/array/connect", "tok", `{"peer_url":"https://10.0.1.5:8443","token":"`+peerToken+`"}`)
	if rec.Code != http.StatusOK || b.connects.Load() != 1 {
		t.Fatalf("connect to an https peer: %d %s", rec.Code, rec.Body.String())
	}
}

// TestHostSecretsNeverReturned: the API never returns CHAP secrets; a
// host shows its CHAP user names, which are set only with their secrets.
func TestHostSecretsNeverReturned(t *testing.T) {
	h := NewServer(newFake(t), "tok", nil)
	const secret, target = "host-secret-0123", "array-secret-4567"
	for _, s := range []struct{ method, path, body string }{
		{"POST", "/api/v1/hosts", `{"name":"h1","iqns":["iqn.2020-01.org.example:h1"],"chap_user":"u","chap_secret":"` + secret + `",` +
			`"target_chap_user":"t","target_chap_secret":"` + target + `"}`},
		{"GET", "/api/v1/hosts", ""},
		{"GET", "/api/v1/hosts/h1", ""},
		{"PATCH", "/api/v1/hosts/h1", `{"chap_secret":"` + secret + `x"}`},
		// Refused changes do not echo the secret either.
		{"PATCH", "/api/v1/hosts/h1", `{"chap_user":"u","chap_secret":"short-` + secret[:3] + `"}`},
		{"POST", "/api/v1/hosts", `{"name":"h1","iqns":[],"chap_user":"u","chap_secret":"` + secret + `"}`},
	} {
		rec := do(t, h, s.method, s.path, "tok", s.body)
		body := rec.Body.String()
		for _, sec := range []string{secret, target, "short-" + secret[:3]} {
			if strings.Contains(body, sec) {
				t.Errorf("%s %s: the answer (%d) shows a CHAP secret: %s", s.method, s.path, rec.Code, body)
			}
		}
		if s.method == "GET" && (!strings.Contains(body, `"chap_user": "u"`) || !strings.Contains(body, `"target_chap_user": "t"`)) {
			t.Errorf("%s %s: the CHAP users are not shown: %s", s.method, s.path, body)
		}
	}
}

// TestClientKeepsTheTokenOffPlainNetworks: the client refuses plain HTTP
// to anything but loopback, and never follows a redirect (Go would resend
// the token to the same host on another scheme or port).
func TestClientKeepsTheTokenOffPlainNetworks(t *testing.T) {
	const token = "client-token-0123456789abcdef"
	for _, u := range []string{"http://10.0.1.5:8443", "http://array-a.example:8443", "http://user:pw@10.0.1.5"} {
		_, err := NewClient(u, token, "")
		if err == nil || !strings.Contains(err.Error(), "https://") || strings.Contains(err.Error(), "pw") {
			t.Errorf("NewClient(%s): %v; want a refusal asking for https:// without the password", u, err)
		}
	}
	for _, u := range []string{"http://127.0.0.1:8443", "http://[::1]:8443", "http://localhost:8443", "https://10.0.1.5:8443"} {
		if _, err := NewClient(u, token, ""); err != nil {
			t.Errorf("NewClient(%s): %v", u, err)
		}
	}

	var leaked atomic.Bool
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		leaked.Store(strings.Contains(r.Header.Get("Authorization"), token))
	}))
	defer other.Close()
	redirector := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, other.URL+r.URL.Path, http.StatusTemporaryRedirect)
	}))
	defer redirector.Close()
	c, err := NewClient(redirector.URL, token, "")
	if err != nil {
		t.Fatal(err)
	}
	var se *StatusError
	if _, err := c.Pods(context.Background()); !errors.As(err, &se) || se.Code != http.StatusTemporaryRedirect {
		t.Fatalf("a redirect: %v; want it reported as a 307", err)
	}
	if leaked.Load() {
		t.Fatal("the client followed a redirect with the token")
	}
}

func TestRequireHTTPS(t *testing.T) {
	for u, ok := range map[string]bool{
		"https://10.0.1.5:8443": true, "https://[::1]:8443": true, "http://127.0.0.1:8443": false,
		"http://10.0.1.5:8443": false, "10.0.1.5:8443": false, "": false, "https://": false,
	} {
		if err := RequireHTTPS(u); (err == nil) != ok {
			t.Errorf("RequireHTTPS(%q) = %v", u, err)
		}
	}
	if err := RequireHTTPS("http://admin:hunter2@10.0.1.5"); err == nil || strings.Contains(err.Error(), "hunter2") {
		t.Errorf("RequireHTTPS with a password in the URL: %v", err)
	}
}
