package lab

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/metro-storage/metro/internal/api"
	"github.com/metro-storage/metro/internal/netproxy"
)

// stretch pairs the two arrays through the link proxy, stretches the lab
// pod to the second array and waits until it is in sync.
func (l *Lab) stretch(ctx context.Context) error {
	if err := l.startProxy(ctx); err != nil {
		return err
	}
	a, err := l.Client(0)
	if err != nil {
		return err
	}
	b := l.Info.Arrays[1]
	peers, err := a.Arrays(ctx)
	if err != nil {
		return err
	}
	if len(peers) < 2 {
		ca, err := os.ReadFile(b.CA)
		if err != nil {
			return err
		}
		if _, err := a.ConnectPeer(ctx, api.ArrayConnect{PeerURL: b.API, Token: b.Token, CA: string(ca)}); err != nil {
			return fmt.Errorf("pair the arrays: %w", err)
		}
	}
	if err := waitLink(ctx, a); err != nil {
		return err
	}
	if l.opts.Unstretched {
		return nil
	}
	p, err := a.Pod(ctx, PodName)
	if err != nil {
		return err
	}
	if len(p.Arrays) < 2 {
		if _, err := a.StretchPod(ctx, PodName, b.Name); err != nil {
			return fmt.Errorf("stretch %s: %w", PodName, err)
		}
	}
	return l.WaitInSync(ctx, 5*time.Minute)
}

// WaitInSync waits until the lab pod is online on both arrays, as both
// arrays see it.
func (l *Lab) WaitInSync(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var last string
	for {
		ok := true
		for i := range l.Info.Arrays {
			c, err := l.Client(i)
			if err != nil {
				return err
			}
			p, err := c.Pod(ctx, PodName)
			if err != nil {
				ok, last = false, err.Error()
				break
			}
			if len(p.Arrays) != 2 {
				ok, last = false, fmt.Sprintf("%s: pod on %d arrays", l.Info.Arrays[i].Name, len(p.Arrays))
				break
			}
			for _, pa := range p.Arrays {
				if pa.Status != "online" {
					ok = false
					last = fmt.Sprintf("%s sees %s %s", l.Info.Arrays[i].Name, pa.Name, pa.Status)
				}
			}
		}
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("pod %s not in sync within %s: %s", PodName, timeout, last)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// startProxy puts the delay proxy in front of the link listener of the
// array that accepts the link (the one with the larger id: the other
// dials), listening on the address both arrays advertise.
func (l *Lab) startProxy(ctx context.Context) error {
	if l.proxy != nil {
		return nil
	}
	ids := make([]string, len(l.Info.Arrays))
	for i := range l.Info.Arrays {
		c, err := l.Client(i)
		if err != nil {
			return err
		}
		info, err := c.Array(ctx)
		if err != nil {
			return err
		}
		ids[i] = info.ID
	}
	listener := 1
	if ids[0] > ids[1] {
		listener = 0
	}
	l.linkTarget = listener
	ai := l.Info.Arrays[listener]
	ctl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	ln := l.proxyLn[listener]
	l.proxyLn[listener] = nil
	l.releaseProxyLn()
	px := netproxy.Serve(ln, ai.LinkListen,
		netproxy.Settings{RTT: l.opts.LinkRTT, Bandwidth: l.opts.LinkBandwidth}, l.opts.Logger.With("component", "link-proxy"))
	l.proxy = px
	l.proxySrv = &http.Server{Handler: px.Handler(), ReadHeaderTimeout: 10 * time.Second}
	l.proxyDone = make(chan struct{})
	go func() {
		defer close(l.proxyDone)
		if err := l.proxySrv.Serve(ctl); err != nil && !errors.Is(err, http.ErrServerClosed) {
			l.opts.Logger.Warn("link proxy control", "err", err)
		}
	}()
	l.Info.LinkProxy = "http://" + ctl.Addr().String()
	return nil
}

// releaseProxyLn closes the advertised addresses held for a proxy that
// does not serve them.
func (l *Lab) releaseProxyLn() {
	for i, ln := range l.proxyLn {
		if ln != nil {
			_ = ln.Close()
			l.proxyLn[i] = nil
		}
	}
}

// stopProxies closes the link's proxy, the mediator routes and the host
// paths.
func (l *Lab) stopProxies() {
	l.closeRoutes()
	l.closeHostPaths()
	if l.proxy == nil {
		return
	}
	if l.proxySrv != nil {
		_ = l.proxySrv.Close()
		<-l.proxyDone
	}
	_ = l.proxy.Close()
	l.proxy = nil
}

// Proxy returns the link proxy (nil for a single array).
func (l *Lab) Proxy() *netproxy.Proxy { return l.proxy }

// waitLink waits until the array reports its peer connected.
func waitLink(ctx context.Context, c *api.Client) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		arrays, err := c.Arrays(ctx)
		if err != nil {
			return err
		}
		if len(arrays) > 1 && arrays[1].Status == "connected" {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the link between the arrays did not come up within 30s; see the arrays' logs")
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}
