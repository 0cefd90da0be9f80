// Package idlesock holds idle TCP connections open against a listener, as
// an attacker who wants to use up its connection or handshake slots does.
// Tests of connection limits use it.
package idlesock

import (
	"context"
	"fmt"
	"net"
	"sync"
	"time"
)

// RenewPause is how long a renewing holder waits before opening again a
// connection the listener dropped.
const RenewPause = 20 * time.Millisecond

// Holder holds connections until Stop.
type Holder struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// Hold opens n connections to addr, from the local IP addresses in from
// in turn (loopback addresses such as 127.0.0.2 work on Linux without
// configuration), sends nothing on them and holds them. With renew, each
// connection the listener drops is opened again after RenewPause. All n
// are open (or queued by the listener's kernel) when Hold returns.
func Hold(addr string, from []string, n int, renew bool) (*Holder, error) {
	ctx, cancel := context.WithCancel(context.Background())
	h := &Holder{cancel: cancel}
	dial := func(i int) (net.Conn, error) {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from[i%len(from)])}}
		return d.DialContext(ctx, "tcp", addr)
	}
	for i := range n {
		c, err := dial(i)
		if err != nil {
			h.Stop()
			return nil, fmt.Errorf("idle connection %d from %s: %w", i, from[i%len(from)], err)
		}
		h.wg.Go(func() {
			for {
				stop := context.AfterFunc(ctx, func() { c.Close() })
				_, _ = c.Read(make([]byte, 1)) // until the listener drops it
				stop()
				c.Close()
				if !renew {
					return
				}
				select {
				case <-time.After(RenewPause):
				case <-ctx.Done():
					return
				}
				var err error
				if c, err = dial(i); err != nil {
					return
				}
			}
		})
	}
	return h, nil
}

// Stop closes the connections and returns once every goroutine of the
// holder is gone.
func (h *Holder) Stop() {
	h.cancel()
	h.wg.Wait()
}
