package array

import (
	"context"
	"encoding/json"
	"encoding/pem"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/metro-storage/metro/internal/api"
	"github.com/metro-storage/metro/internal/catalog"
	"github.com/metro-storage/metro/internal/link"
)

// TestPairAgainKeepsLink: pairing an array again with the peer it is
// paired with, from either side, changes nothing: the link session stays
// up and the stretched pod in sync. Before, each pairing replaced the
// peer and ended the link session, pausing every stretched pod. Pairing
// with a third array is refused with the current peer's name and leaves
// the pair as it was; new details of the peer (its API URL here) replace
// the old ones.
func TestPairAgainKeepsLink(t *testing.T) {
	h := newPair(t)
	a, b := h.arrays[0], h.arrays[1]
	sa, sb := a.repl.LinkSession(), b.repl.LinkSession()
	if sa == nil || sb == nil {
		t.Fatal("the link is down after the pair came up")
	}
	steady := h.steadyLink()
	kept := func(what string) {
		t.Helper()
		for _, s := range []*link.Session{sa, sb} {
			select {
			case <-s.Done():
				t.Fatalf("%s: the link session ended (%v)", what, s.Err())
			default:
			}
		}
		if a.repl.LinkSession() != sa || b.repl.LinkSession() != sb {
			t.Fatalf("%s: the arrays use another link session", what)
		}
		h.checkSteady(steady, what)
	}
	for _, pair := range []struct{ x, y *Array }{{a, b}, {b, a}, {a, b}} {
		if _, err := pair.x.Pair(h.ctx, pair.y.pairing()); err != nil {
			t.Fatalf("%s paired again with %s: %v", pair.x.cfg.Name, pair.y.cfg.Name, err)
		}
		kept(pair.x.cfg.Name + " paired again with " + pair.y.cfg.Name)
	}
	other := b.pairing()
	other.Name, other.ID = "array-c", newID()
	_, err := a.Pair(h.ctx, other)
	if !errors.Is(err, catalog.ErrConflict) || !strings.Contains(err.Error(), "already paired with array array-b") {
		t.Fatalf("pairing %s with a third array: %v, want a conflict naming array-b", a.cfg.Name, err)
	}
	kept("a third array refused")
	if p, _, _ := a.repl.PeerInfo(); p == nil || p.ID != b.id.ID {
		t.Fatalf("%s's peer after refusing a third array: %+v", a.cfg.Name, p)
	}
	moved := b.pairing()
	moved.API = "https://127.0.0.1:1"
	if _, err := a.Pair(h.ctx, moved); err != nil {
		t.Fatalf("new pairing details of %s: %v", b.cfg.Name, err)
	}
	if p, _, _ := a.repl.PeerInfo(); p.API != moved.API {
		t.Fatalf("%s's record of its peer's API: %s, want %s", a.cfg.Name, p.API, moved.API)
	}
	h.waitInSync(60 * time.Second)
}

// fakePeer is the management API of an array that pairs: it says who it
// is and counts the pairings it is sent.
type fakePeer struct {
	srv     *httptest.Server
	pairing api.Pairing
	pairs   atomic.Int32
}

func newFakePeer(t *testing.T, name string) *fakePeer {
	t.Helper()
	f := &fakePeer{}
	f.srv = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var out any
		switch r.Method + " " + r.URL.Path {
		case "GET " + api.Version + "/array":
			out = api.ArrayInfo{Name: f.pairing.Name, ID: f.pairing.ID, API: f.pairing.API}
		case "POST " + api.Version + "/array/pair":
			f.pairs.Add(1)
			out = f.pairing
		default:
			http.NotFound(w, r)
			return
		}
		_ = json.NewEncoder(w).Encode(out)
	}))
	t.Cleanup(f.srv.Close)
	f.pairing = api.Pairing{Name: name, ID: newID(), API: f.srv.URL, LinkAddress: "127.0.0.1:1",
		LinkCert: []byte("the link certificate of " + name), LinkVersion: link.ProtocolVersion, Version: "test"}
	return f
}

func (f *fakePeer) connect() api.ArrayConnect {
	ca := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: f.srv.Certificate().Raw})
	return api.ArrayConnect{PeerURL: f.srv.URL, Token: "peer-token-0123456789abcdef", CA: string(ca)}
}

// TestConnectPeerOnce: `metro array connect` to the array this one is
// paired with answers "already paired" and changes nothing; to another
// array it is refused, naming the peer, before that array is sent
// anything. Before, the other array was sent this array's pairing
// first, which paired it, alone, with an array that then refused it.
func TestConnectPeerOnce(t *testing.T) {
	a, err := Open(Options{Config: loopbackConfig(t, t.TempDir())})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, c := newFakePeer(t, "array-b"), newFakePeer(t, "array-c")
	ctx := context.Background()
	got, err := a.ConnectPeer(ctx, b.connect())
	if err != nil || got.Name != "array-b" || got.AlreadyPaired {
		t.Fatalf("the first connect: %+v %v", got, err)
	}
	before, _, _ := a.repl.PeerInfo()
	got, err = a.ConnectPeer(ctx, b.connect())
	if err != nil || !got.AlreadyPaired || got.Name != "array-b" {
		t.Fatalf("connect again to array-b: %+v %v, want already paired", got, err)
	}
	if after, _, _ := a.repl.PeerInfo(); after != before {
		t.Fatalf("connect again to array-b replaced the peer: %+v, was %+v", after, before)
	}
	_, err = a.ConnectPeer(ctx, c.connect())
	if !errors.Is(err, catalog.ErrConflict) || !strings.Contains(err.Error(), "already paired with array array-b") {
		t.Fatalf("connect to array-c: %v, want a conflict naming array-b", err)
	}
	if n := c.pairs.Load(); n != 0 {
		t.Fatalf("array-c was sent %d pairing(s) although this array refused it", n)
	}
	if p, _, _ := a.repl.PeerInfo(); p.Name != "array-b" {
		t.Fatalf("the peer after refusing array-c: %+v", p)
	}
}
