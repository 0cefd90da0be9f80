package array

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/metro-storage/metro/internal/fileperm"
	"github.com/metro-storage/metro/internal/tlscert"
)

// loadOrMakeCert returns the API certificate: the configured one, or a
// self-signed one made on first start and kept in the data directory. It
// also returns the path of the PEM file clients should trust (--ca).
func loadOrMakeCert(cfg *Config, now time.Time) (tls.Certificate, string, error) {
	certFile, keyFile := cfg.API.CertFile, cfg.API.KeyFile
	if certFile == "" {
		certFile = filepath.Join(cfg.DataDir, "api-cert.pem")
		keyFile = filepath.Join(cfg.DataDir, "api-key.pem")
		if _, err := os.Stat(certFile); errors.Is(err, os.ErrNotExist) {
			if err := makeSelfSigned(cfg, certFile, keyFile, now); err != nil {
				return tls.Certificate{}, "", err
			}
		}
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return tls.Certificate{}, "", fmt.Errorf("api certificate: %w", err)
	}
	return cert, certFile, nil
}

func makeSelfSigned(cfg *Config, certFile, keyFile string, now time.Time) error {
	n := tlscert.Names{CommonName: "metro array " + cfg.Name, DNSNames: []string{"localhost", cfg.Name},
		IPs: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}}
	if host, _, err := net.SplitHostPort(cfg.API.Listen); err == nil {
		if ip := net.ParseIP(host); ip != nil && !ip.IsUnspecified() && !ip.IsLoopback() {
			n.IPs = append(n.IPs, ip)
		} else if ip == nil && host != "" {
			n.DNSNames = append(n.DNSNames, host)
		}
	}
	return tlscert.WriteSelfSigned(certFile, keyFile, n, now)
}

// writeFileSync writes a file atomically and durably (fileperm.WriteFile)
// with permissions perm, also when a temporary file of a crashed write was
// left with others. Files of the data directory are fileMode (0600).
func writeFileSync(path string, data []byte, perm os.FileMode) error {
	return fileperm.WriteFile(path, data, perm)
}
