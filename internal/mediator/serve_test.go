package mediator_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/metro-storage/metro/internal/fileperm"
	"github.com/metro-storage/metro/internal/mediator"
)

// serveTLS serves h over TLS on loopback with a self-signed certificate
// made in dir; it returns the URL and the certificate's PEM file.
func serveTLS(t testing.TB, dir string, h http.Handler, lim mediator.Limits) (url, ca string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cert, ca, err := mediator.LoadOrMakeCert(dir, "", "", ln.Addr().String(), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- mediator.Serve(ctx, ln, h, cert, lim, nil) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return "https://" + ln.Addr().String(), ca
}

func pool(t *testing.T, ca string) *x509.CertPool {
	t.Helper()
	pem, err := os.ReadFile(ca)
	if err != nil {
		t.Fatal(err)
	}
	p := x509.NewCertPool()
	if !p.AppendCertsFromPEM(pem) {
		t.Fatal("no certificate in", ca)
	}
	return p
}

// TestServeTLS: the mediator speaks TLS 1.3 only, with a self-signed
// certificate made on first start (files 0600) and kept afterwards.
func TestServeTLS(t *testing.T) {
	dir := t.TempDir()
	s := newTestServer(t, nil)
	url, ca := serveTLS(t, dir, s, mediator.Limits{})
	if ca != filepath.Join(dir, mediator.CertFile) {
		t.Fatalf("certificate at %s", ca)
	}
	if open, err := fileperm.Open(dir); err != nil || len(open) > 0 {
		t.Fatalf("files open to others: %v %v", open, err)
	}
	client := func(maxVersion uint16) *http.Client {
		return &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool(t, ca), MaxVersion: maxVersion}}}
	}
	req := func(c *http.Client) (*http.Response, error) {
		r, _ := http.NewRequest("POST", url+mediator.PathHeartbeat, strings.NewReader(`{"array":"a"}`))
		r.Header.Set("Authorization", "Bearer "+key1)
		return c.Do(r)
	}
	resp, err := req(client(0))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.TLS.Version != tls.VersionTLS13 || resp.ProtoMajor != 1 {
		t.Fatalf("%d over %x, HTTP/%d", resp.StatusCode, resp.TLS.Version, resp.ProtoMajor)
	}
	if _, err := req(client(tls.VersionTLS12)); err == nil || !strings.Contains(err.Error(), "protocol version") {
		t.Fatalf("a TLS 1.2 client: %v", err)
	}
	// A second start keeps the certificate.
	before, _ := os.ReadFile(ca)
	if _, ca2, err := mediator.LoadOrMakeCert(dir, "", "", "127.0.0.1:0", time.Now()); err != nil || ca2 != ca {
		t.Fatal(err)
	}
	if after, _ := os.ReadFile(ca); string(after) != string(before) {
		t.Fatal("the certificate was made again")
	}
	if _, _, err := mediator.LoadOrMakeCert(dir, ca, "", "", time.Now()); err == nil {
		t.Fatal("--cert without --key accepted")
	}
}
