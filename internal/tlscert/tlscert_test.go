package tlscert

import (
	"crypto/tls"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestWriteSelfSigned: the certificate and key load as a pair, name what
// they were made for, verify as their own CA, and are 0600.
func TestWriteSelfSigned(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "c.pem"), filepath.Join(dir, "k.pem")
	now := time.Now()
	n := Names{CommonName: "metro test", DNSNames: []string{"localhost", "med.example"}, IPs: []net.IP{net.IPv4(10, 0, 2, 5)}}
	if err := WriteSelfSigned(certFile, keyFile, n, now); err != nil {
		t.Fatal(err)
	}
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	leaf := pair.Leaf
	if leaf.Subject.CommonName != "metro test" || !leaf.IsCA || leaf.NotAfter.Before(now.AddDate(9, 0, 0)) {
		t.Fatalf("certificate %+v", leaf.Subject)
	}
	for _, host := range []string{"localhost", "med.example", "10.0.2.5"} {
		if err := leaf.VerifyHostname(host); err != nil {
			t.Errorf("%s: %v", host, err)
		}
	}
	if err := leaf.VerifyHostname("other.example"); err == nil {
		t.Error("valid for a name it was not made for")
	}
	for _, f := range []string{certFile, keyFile} {
		if fi, err := os.Stat(f); err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: %v %v", f, fi.Mode(), err)
		}
	}
}
