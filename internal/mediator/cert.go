package mediator

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/metro-storage/metro/internal/tlscert"
)

// The self-signed certificate a mediator makes in its data directory on
// first start, unless it is given one (--cert, --key). Arrays trust it
// with their ca_file (metro array setattr --mediator-ca).
const (
	CertFile = "mediator.crt"
	KeyFile  = "mediator.key"
)

// LoadOrMakeCert returns the mediator's TLS certificate: the one in
// certFile and keyFile when given, else the self-signed one of the data
// directory, made on first start for the names this machine answers to
// (localhost, its host name, its interface addresses, and listen's host).
// It also returns the path of the PEM certificate arrays should trust.
func LoadOrMakeCert(dataDir, certFile, keyFile, listen string, now time.Time) (tls.Certificate, string, error) {
	if (certFile == "") != (keyFile == "") {
		return tls.Certificate{}, "", errors.New("give both --cert and --key, or neither (a self-signed certificate is made in the data directory)")
	}
	if certFile == "" {
		certFile, keyFile = filepath.Join(dataDir, CertFile), filepath.Join(dataDir, KeyFile)
		if _, err := os.Stat(certFile); errors.Is(err, os.ErrNotExist) {
			if err := makeSelfSigned(certFile, keyFile, listen, now); err != nil {
				return tls.Certificate{}, "", fmt.Errorf("mediator certificate: %w", err)
			}
		}
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return tls.Certificate{}, "", fmt.Errorf("mediator certificate: %w", err)
	}
	return cert, certFile, nil
}

// makeSelfSigned writes a self-signed certificate for this machine's
// names, and its key.
func makeSelfSigned(certFile, keyFile, listen string, now time.Time) error {
	dns, ips := certNames(listen)
	return tlscert.WriteSelfSigned(certFile, keyFile, tlscert.Names{CommonName: "metro mediator", DNSNames: dns, IPs: ips}, now)
}

// certNames lists the names and addresses a self-signed certificate
// covers: loopback, the host name, every interface address, and the
// listen address's host.
func certNames(listen string) (dns []string, ips []net.IP) {
	dns = []string{"localhost"}
	if h, err := os.Hostname(); err == nil && h != "" {
		dns = append(dns, h)
	}
	ips = []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}
	if addrs, err := net.InterfaceAddrs(); err == nil {
		for _, a := range addrs {
			if n, ok := a.(*net.IPNet); ok && !n.IP.IsLoopback() && !n.IP.IsLinkLocalUnicast() {
				ips = append(ips, n.IP)
			}
		}
	}
	if host, _, err := net.SplitHostPort(listen); err == nil && host != "" {
		if ip := net.ParseIP(host); ip == nil {
			dns = append(dns, host)
		} else if !ip.IsUnspecified() && !ip.IsLoopback() {
			ips = append(ips, ip)
		}
	}
	return dns, ips
}
