// Package tlscert makes the self-signed certificates that an array's API
// and a mediator present until they are given certificates of their own.
package tlscert

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"time"

	"github.com/metro-storage/metro/internal/fileperm"
)

// Names are what a certificate is for.
type Names struct {
	// CommonName is the subject's name, e.g. "metro array array-a".
	CommonName string
	// DNSNames and IPs are the names and addresses clients reach the
	// server by.
	DNSNames []string
	IPs      []net.IP
}

// WriteSelfSigned makes a self-signed ECDSA P-256 certificate, valid from
// an hour before now for ten years and usable as its own CA (clients trust
// it by naming the certificate file), and writes it and its private key as
// PEM into certFile and keyFile (mode 0600, durably).
func WriteSelfSigned(certFile, keyFile string, n Names, now time.Time) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: n.CommonName, Organization: []string{"metro"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.AddDate(10, 0, 0),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		DNSNames:              n.DNSNames,
		IPAddresses:           n.IPs,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return err
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return err
	}
	if err := fileperm.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), fileperm.File); err != nil {
		return err
	}
	return fileperm.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), fileperm.File)
}
