package api

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"
)

// Client talks to one array's API.
type Client struct {
	base  string
	shown string // base without a password, for errors
	token string
	http  *http.Client
}

// StatusError is an API error response.
type StatusError struct {
	Code    int
	Message string
}

func (e *StatusError) Error() string { return e.Message }

// NewClient returns a client for the API at base (e.g.
// https://127.0.0.1:8443). caFile, when set, is the PEM certificate
// (or CA) that the array's certificate must chain to.
func NewClient(base, token, caFile string) (*Client, error) {
	base = strings.TrimRight(base, "/")
	u, err := url.Parse(base)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("API URL %q: expected http(s)://HOST:PORT, e.g. https://127.0.0.1:8443", redactURL(base))
	}
	if u.Scheme == "http" && !IsLoopback(u.Hostname()) {
		return nil, fmt.Errorf("API URL %s: plain HTTP would send the API token in clear; use https:// "+
			"(arrays serve plain HTTP on loopback only)", u.Redacted())
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("CA file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("CA file %s: no PEM certificate in it", caFile)
		}
		tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	// The API never redirects; following one could send the token to
	// another scheme or port (Go keeps the header for the same host).
	noRedirect := func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	return &Client{base: base, shown: u.Redacted(), token: token,
		http: &http.Client{Transport: tr, Timeout: 60 * time.Second, CheckRedirect: noRedirect}}, nil
}

// Base returns the API URL.
func (c *Client) Base() string { return c.base }

// Do sends a request with a JSON body (nil for none) and decodes the JSON
// answer into out (nil to discard).
func (c *Client) Do(ctx context.Context, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+Version+path, rd)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		var uerr x509.UnknownAuthorityError
		if errors.As(err, &uerr) || strings.Contains(err.Error(), "certificate") {
			return fmt.Errorf("%s: %w (pass the array's certificate with --ca or METRO_CA)", c.shown, err)
		}
		return fmt.Errorf("%s: %w (is the array running? check --api or METRO_API)", c.shown, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode >= 300 {
		var e Error
		if json.Unmarshal(data, &e) != nil || e.Error == "" {
			e.Error = strings.TrimSpace(string(data))
		}
		return &StatusError{Code: resp.StatusCode, Message: e.Error}
	}
	if out != nil && len(data) > 0 {
		if err := json.Unmarshal(data, out); err != nil {
			return fmt.Errorf("%s %s: decode answer: %w", method, path, err)
		}
	}
	return nil
}

func esc(s string) string { return url.PathEscape(s) }

// Array describes the array answering.
func (c *Client) Array(ctx context.Context) (ArrayInfo, error) {
	var out ArrayInfo
	return out, c.Do(ctx, "GET", "/array", nil, &out)
}

// Arrays lists this array and its peers.
func (c *Client) Arrays(ctx context.Context) ([]ArrayInfo, error) {
	var out []ArrayInfo
	return out, c.Do(ctx, "GET", "/arrays", nil, &out)
}

// Pods lists pods.
func (c *Client) Pods(ctx context.Context) ([]Pod, error) {
	var out []Pod
	return out, c.Do(ctx, "GET", "/pods", nil, &out)
}

// Pod shows one pod.
func (c *Client) Pod(ctx context.Context, name string) (Pod, error) {
	var out Pod
	return out, c.Do(ctx, "GET", "/pods/"+esc(name), nil, &out)
}

// CreatePod creates a pod.
func (c *Client) CreatePod(ctx context.Context, name string) (Pod, error) {
	var out Pod
	return out, c.Do(ctx, "POST", "/pods", PodCreate{Name: name}, &out)
}

// UpdatePod changes pod attributes.
func (c *Client) UpdatePod(ctx context.Context, name string, u PodUpdate) (Pod, error) {
	var out Pod
	return out, c.Do(ctx, "PATCH", "/pods/"+esc(name), u, &out)
}

// DestroyPod destroys an empty pod.
func (c *Client) DestroyPod(ctx context.Context, name string) error {
	return c.Do(ctx, "DELETE", "/pods/"+esc(name), nil, nil)
}

// Volumes lists volumes; pending lists the destroyed ones instead.
func (c *Client) Volumes(ctx context.Context, pending bool) ([]Volume, error) {
	var out []Volume
	return out, c.Do(ctx, "GET", fmt.Sprintf("/volumes?pending=%t", pending), nil, &out)
}

// Volume shows one volume.
func (c *Client) Volume(ctx context.Context, name string) (Volume, error) {
	var out Volume
	return out, c.Do(ctx, "GET", "/volumes/"+esc(name), nil, &out)
}

// CreateVolume creates a volume.
func (c *Client) CreateVolume(ctx context.Context, name string, size uint64) (Volume, error) {
	var out Volume
	return out, c.Do(ctx, "POST", "/volumes", VolumeCreate{Name: name, Size: size}, &out)
}

// ResizeVolume grows a volume.
func (c *Client) ResizeVolume(ctx context.Context, name string, size uint64) (Volume, error) {
	var out Volume
	return out, c.Do(ctx, "PATCH", "/volumes/"+esc(name), VolumeUpdate{Size: size}, &out)
}

// DestroyVolume destroys a volume (recoverable until eradicated).
func (c *Client) DestroyVolume(ctx context.Context, name string, force bool) (Volume, error) {
	var out Volume
	return out, c.Do(ctx, "DELETE", fmt.Sprintf("/volumes/%s?force=%t", esc(name), force), nil, &out)
}

// RecoverVolume recovers a destroyed volume.
func (c *Client) RecoverVolume(ctx context.Context, name string) (Volume, error) {
	var out Volume
	return out, c.Do(ctx, "POST", "/volumes/"+esc(name)+"/recover", nil, &out)
}

// EradicateVolume eradicates a destroyed volume now.
func (c *Client) EradicateVolume(ctx context.Context, name string) error {
	return c.Do(ctx, "POST", "/volumes/"+esc(name)+"/eradicate", nil, nil)
}

// Hosts lists hosts.
func (c *Client) Hosts(ctx context.Context) ([]Host, error) {
	var out []Host
	return out, c.Do(ctx, "GET", "/hosts", nil, &out)
}

// CreateHost creates a host.
func (c *Client) CreateHost(ctx context.Context, h HostCreate) (Host, error) {
	var out Host
	return out, c.Do(ctx, "POST", "/hosts", h, &out)
}

// UpdateHost changes a host.
func (c *Client) UpdateHost(ctx context.Context, name string, u HostUpdate) (Host, error) {
	var out Host
	return out, c.Do(ctx, "PATCH", "/hosts/"+esc(name), u, &out)
}

// DeleteHost deletes a host.
func (c *Client) DeleteHost(ctx context.Context, name string) error {
	return c.Do(ctx, "DELETE", "/hosts/"+esc(name), nil, nil)
}

// HostGroups lists host groups.
func (c *Client) HostGroups(ctx context.Context) ([]HostGroup, error) {
	var out []HostGroup
	return out, c.Do(ctx, "GET", "/hgroups", nil, &out)
}

// CreateHostGroup creates a host group.
func (c *Client) CreateHostGroup(ctx context.Context, g HostGroupCreate) (HostGroup, error) {
	var out HostGroup
	return out, c.Do(ctx, "POST", "/hgroups", g, &out)
}

// UpdateHostGroup adds or removes hosts.
func (c *Client) UpdateHostGroup(ctx context.Context, name string, u HostGroupUpdate) (HostGroup, error) {
	var out HostGroup
	return out, c.Do(ctx, "PATCH", "/hgroups/"+esc(name), u, &out)
}

// DeleteHostGroup deletes a host group.
func (c *Client) DeleteHostGroup(ctx context.Context, name string) error {
	return c.Do(ctx, "DELETE", "/hgroups/"+esc(name), nil, nil)
}

// Connections lists connections.
func (c *Client) Connections(ctx context.Context) ([]Connection, error) {
	var out []Connection
	return out, c.Do(ctx, "GET", "/connections", nil, &out)
}

// Connect connects a volume to a host or host group.
func (c *Client) Connect(ctx context.Context, conn Connection) (Connection, error) {
	var out Connection
	return out, c.Do(ctx, "POST", "/connections", conn, &out)
}

// Disconnect removes a connection.
func (c *Client) Disconnect(ctx context.Context, volume, host, group string) error {
	q := url.Values{"volume": {volume}}
	if host != "" {
		q.Set("host", host)
	}
	if group != "" {
		q.Set("host_group", group)
	}
	return c.Do(ctx, "DELETE", "/connections?"+q.Encode(), nil, nil)
}

// Sessions lists iSCSI sessions.
func (c *Client) Sessions(ctx context.Context) ([]Session, error) {
	var out []Session
	return out, c.Do(ctx, "GET", "/sessions", nil, &out)
}
