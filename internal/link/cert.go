package link

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"errors"
	"fmt"
	"math/big"
	"net"
	"time"
)

// NewCertificate makes a self-signed link certificate (ECDSA P-256) for an
// array. Peers pin it, so it is valid for a hundred years; replace it by
// generating a new one and giving its DER (Certificate[0]) to the peer.
func NewCertificate(commonName string) (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("link: certificate key: %w", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("link: certificate serial: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: commonName},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.AddDate(100, 0, 0),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("link: create certificate: %w", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("link: parse certificate: %w", err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, nil
}

// Fingerprint is "sha256:" and the hex SHA-256 of a certificate's DER, for
// operators comparing the certificates two arrays pin.
func Fingerprint(der []byte) string {
	sum := sha256.Sum256(der)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// tlsConfig is the TLS configuration of one side: TLS 1.3, this array's
// certificate, and instead of chain verification the pinned peer
// certificate, required of the client too. Session resumption is off so
// every connection goes through the pin check.
func (c *Config) tlsConfig(server bool) *tls.Config {
	pin := c.PeerCert
	tc := &tls.Config{
		Certificates: []tls.Certificate{c.Cert},
		MinVersion:   tls.VersionTLS13,
		// No CA: VerifyPeerCertificate accepts exactly the pinned
		// certificate. The handshake still proves the peer holds its key.
		InsecureSkipVerify: true,
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			return verifyPinned(raw, pin)
		},
		SessionTicketsDisabled: true,
	}
	if server {
		tc.ClientAuth = tls.RequireAnyClientCert
	}
	return tc
}

// errNotPinned is the pin check's error.
var errNotPinned = errors.New("link: peer certificate is not the pinned one")

func verifyPinned(raw [][]byte, pin []byte) error {
	if len(raw) == 0 {
		return fmt.Errorf("%w: the peer presented no certificate", errNotPinned)
	}
	if !bytes.Equal(raw[0], pin) {
		return fmt.Errorf("%w: it presented %s, this array pins %s; configure the peer's current link certificate",
			errNotPinned, Fingerprint(raw[0]), Fingerprint(pin))
	}
	return nil
}

// explainRemoteTLS adds what to do to a TLS alert from the peer (with TLS
// 1.3 the client learns that the server refused its certificate only when
// it first reads).
func explainRemoteTLS(err error) error {
	var oe *net.OpError
	if errors.As(err, &oe) && oe.Op == "remote error" {
		return fmt.Errorf("%w (the peer refused this array's TLS handshake: does it pin this array's current link certificate?)", err)
	}
	return err
}
