package api

import (
	"fmt"
	"net"
	"net/http"
	"net/url"
	"time"
)

// Timeouts bound how long the API server waits on a client, so that
// connections which never finish a request (slowloris), send a body at a
// trickle, never read the answer or sit idle cannot hold the server's
// connections and goroutines for ever. Zero fields take the value of
// DefaultTimeouts. The API has no streaming or long-poll endpoint
// (`metro pod add --wait` polls), so every answer fits in Write.
type Timeouts struct {
	// ReadHeader bounds the TLS handshake and the request line and
	// headers, counted from the connection's first byte.
	ReadHeader time.Duration
	// Read bounds the whole request, body included (bodies are at most
	// 1 MiB).
	Read time.Duration
	// Write bounds the time from the end of the request's headers to the
	// end of the answer. It must exceed the slowest handler: pairing waits
	// up to 15 s for the peer; the CLI itself gives up after 60 s.
	Write time.Duration
	// Idle is how long a kept-alive connection may wait for its next
	// request.
	Idle time.Duration
}

// DefaultTimeouts are the API server's timeouts unless configured
// otherwise (api.read_header_timeout, read_timeout, write_timeout and
// idle_timeout in an array's configuration).
var DefaultTimeouts = Timeouts{ReadHeader: 10 * time.Second, Read: 30 * time.Second, Write: 2 * time.Minute, Idle: 2 * time.Minute}

// WithDefaults returns t with its zero fields set from DefaultTimeouts.
func (t Timeouts) WithDefaults() Timeouts {
	set := func(v *time.Duration, d time.Duration) {
		if *v <= 0 {
			*v = d
		}
	}
	set(&t.ReadHeader, DefaultTimeouts.ReadHeader)
	set(&t.Read, DefaultTimeouts.Read)
	set(&t.Write, DefaultTimeouts.Write)
	set(&t.Idle, DefaultTimeouts.Idle)
	return t
}

// NewHTTPServer returns the http.Server that serves h with the timeouts t
// (zero fields: the defaults). The caller serves it on its listener,
// wrapped in TLS unless the address is loopback.
func NewHTTPServer(h http.Handler, t Timeouts) *http.Server {
	t = t.WithDefaults()
	return &http.Server{Handler: h, ReadHeaderTimeout: t.ReadHeader, ReadTimeout: t.Read,
		WriteTimeout: t.Write, IdleTimeout: t.Idle}
}

// IsLoopback reports whether host (a name or an address, without a port)
// is this machine's loopback: "localhost" or an address in 127.0.0.0/8 or
// ::1. An empty host (every interface) is not.
func IsLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// RequireHTTPS checks that a peer array's API URL uses HTTPS: pairing
// sends the peer's API token and both arrays' link certificates, which
// must never cross a network in clear, loopback included.
func RequireHTTPS(peerURL string) error {
	u, err := url.Parse(peerURL)
	if err != nil || u.Host == "" {
		return fmt.Errorf("peer URL %q: expected https://HOST:PORT, e.g. https://10.0.1.5:8443", redactURL(peerURL))
	}
	if u.Scheme != "https" {
		return fmt.Errorf("peer URL %s: pairing sends the peer's API token and the link certificates, so it needs "+
			"https://, not %s://: give the peer's HTTPS API URL (and its certificate with --ca)", u.Redacted(), u.Scheme)
	}
	return nil
}

// redactURL hides a password a URL may carry, for error messages.
func redactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparsable URL)"
	}
	return u.Redacted()
}
