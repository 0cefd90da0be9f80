package array

import (
	"testing"
	"time"

	"github.com/metro-storage/metro/internal/idlesock"
)

// TestPairLinkPastHeldSockets is the pair's side of the handshake-slot
// attack: 200 idle sockets held against the accepting array's link port
// (from other loopback addresses, renewed as they are dropped, or from
// the address the peer's connections come from) while the link drops and
// heals. The link comes back and the pod returns to in sync; the time
// from the heal to the link being up is logged (it includes the dialing
// array's retry pause), the deadline is generous.
func TestPairLinkPastHeldSockets(t *testing.T) {
	for name, tc := range map[string]struct {
		from  []string
		renew bool
	}{
		"other addresses":    {[]string{"127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5", "127.0.0.6", "127.0.0.7", "127.0.0.8", "127.0.0.9"}, true},
		"the peer's address": {[]string{"127.0.0.1"}, false},
	} {
		t.Run(name, func(t *testing.T) {
			h := newPair(t)
			a, b := h.arrays[0], h.arrays[1]
			linkUp := func(want bool) func() (bool, string) {
				return func() (bool, string) {
					_, upA, _ := a.repl.PeerInfo()
					_, upB, _ := b.repl.PeerInfo()
					return upA == want && upB == want, "link up: " + h.podStatus(0) + " / " + h.podStatus(1)
				}
			}
			held, err := idlesock.Hold(h.arrays[h.accepter].cfg.Replication.Listen, tc.from, 200, tc.renew)
			if err != nil {
				t.Fatal(err)
			}
			defer held.Stop()
			h.proxy.Partition(true)
			h.waitFor("the link to drop", 30*time.Second, linkUp(false))
			h.proxy.Partition(false)
			start := time.Now()
			h.waitFor("the link to come back past the held sockets", 5*time.Second, linkUp(true))
			t.Logf("the link came back %v after the heal, with 200 sockets held against the link port", time.Since(start).Round(time.Millisecond))
			h.waitInSync(60 * time.Second)
		})
	}
}
