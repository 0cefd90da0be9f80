package link

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

// refusals collects the listener's refusals.
type refusals chan error

func (r refusals) hook(err error) {
	select {
	case r <- err:
	default:
	}
}

// find returns the first refusal that matches (the dialer may also abort
// its other connection, which the listener reports as well).
func (r refusals) find(t *testing.T, match func(error) bool) error {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case err := <-r:
			t.Logf("listener: %v", err)
			if match(err) {
				return err
			}
		case <-timeout:
			t.Error("the listener did not refuse as expected")
			return nil
		}
	}
}

// refuseTest dials b from a and expects the dial to fail with an error
// matching dialErr and the listener to refuse with an error matching
// listenErr. No session may come out of the listener.
func refuseTest(t *testing.T, a, b Config, dialErr, listenErr func(error) bool) {
	t.Helper()
	checkLeaks(t)
	refused := make(refusals, 4)
	b.onRefuse = refused.hook
	l := tcpListen(t, b)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := Dial(ctx, a, l.Addr().String())
	if err == nil {
		s.Close()
		t.Fatal("Dial succeeded")
	}
	t.Logf("dialer: %v", err)
	if !dialErr(err) {
		t.Errorf("dialer error: %v", err)
	}
	refused.find(t, listenErr)
	actx, acancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer acancel()
	if s, err := l.Accept(actx); err == nil {
		s.Close()
		t.Error("the listener produced a session")
	}
}

func contains(s string) func(error) bool {
	return func(err error) bool { return err != nil && strings.Contains(err.Error(), s) }
}

func TestPinning(t *testing.T) {
	t.Run("dialer not pinned by listener", func(t *testing.T) {
		a, b := testConfigs(t)
		a.Cert = newCert(t, "impostor")
		refuseTest(t, a, b, contains("pin this array's current link certificate"),
			func(err error) bool { return errors.Is(err, errNotPinned) })
	})
	t.Run("listener not pinned by dialer", func(t *testing.T) {
		a, b := testConfigs(t)
		b.Cert = newCert(t, "impostor")
		refuseTest(t, a, b, func(err error) bool { return errors.Is(err, errNotPinned) },
			contains("TLS handshake"))
	})
}

func TestWrongPeerID(t *testing.T) {
	t.Run("listener refuses", func(t *testing.T) {
		a, b := testConfigs(t)
		b.PeerID = "array-c"
		refuseTest(t, a, b,
			func(err error) bool {
				return errors.Is(err, ErrWrongPeer) && strings.Contains(err.Error(), `"array-c"`)
			},
			func(err error) bool {
				return errors.Is(err, ErrWrongPeer) && strings.Contains(err.Error(), `"array-a"`)
			})
	})
	t.Run("dialer refuses", func(t *testing.T) {
		a, b := testConfigs(t)
		a.PeerID = "array-c"
		refuseTest(t, a, b,
			func(err error) bool {
				return errors.Is(err, ErrWrongPeer) && strings.Contains(err.Error(), `"array-b"`)
			},
			func(err error) bool { return errors.Is(err, ErrWrongPeer) })
	})
}

func TestVersionMismatch(t *testing.T) {
	versionErr := func(local, remote int) func(error) bool {
		return func(err error) bool {
			var ve *VersionError
			if !errors.As(err, &ve) || ve.Local != local || ve.Remote != remote {
				return false
			}
			msg := ve.Error()
			return strings.Contains(msg, fmt.Sprintf("version %d", local)) && strings.Contains(msg, fmt.Sprintf("version %d", remote)) &&
				strings.Contains(msg, "compatible metro releases")
		}
	}
	t.Run("newer dialer", func(t *testing.T) {
		a, b := testConfigs(t)
		a.version = ProtocolVersion + 1
		refuseTest(t, a, b, versionErr(ProtocolVersion+1, ProtocolVersion), versionErr(ProtocolVersion, ProtocolVersion+1))
	})
	t.Run("newer listener", func(t *testing.T) {
		a, b := testConfigs(t)
		b.version = ProtocolVersion + 1
		refuseTest(t, a, b, versionErr(ProtocolVersion, ProtocolVersion+1), versionErr(ProtocolVersion+1, ProtocolVersion))
	})
}

func TestFingerprint(t *testing.T) {
	c := newCert(t, "x")
	fp := Fingerprint(c.Certificate[0])
	if !strings.HasPrefix(fp, "sha256:") || len(fp) != len("sha256:")+64 {
		t.Fatalf("fingerprint %q", fp)
	}
	if c.Leaf == nil || c.Leaf.Subject.CommonName != "x" {
		t.Fatal("no leaf with the common name")
	}
}
