package array

import (
	"fmt"
	"log/slog"
	"math"
	"net"
	"os"
	"strings"

	"github.com/metro-storage/metro/internal/api"
	"github.com/metro-storage/metro/internal/fileperm"
)

// The data directory holds the catalog (with hosts' CHAP secrets), the
// API token and the private keys: only the array's own user may enter it
// (0700), and every file the array writes there is 0600.
const (
	dataDirMode = fileperm.Dir
	fileMode    = fileperm.File
)

// secureDataDir creates the data directory 0700, or takes group and other
// permissions away from an existing one (made by an older release or by
// hand), saying so in the log.
func secureDataDir(dir string, log *slog.Logger) error {
	if err := os.MkdirAll(dir, dataDirMode); err != nil {
		return fmt.Errorf("data dir: %w", err)
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("data dir: %w", err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("data dir %s: not a directory: fix data_dir in the config", dir)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		if err := os.Chmod(dir, dataDirMode); err != nil {
			return fmt.Errorf("data dir %s is open to other users (%v) and cannot be restricted: %w: "+
				"run the array as the directory's owner, or chmod 700 it", dir, perm, err)
		}
		log.Warn("data directory was open to other users; restricted it to the array's user",
			"dir", dir, "was", perm.String(), "now", os.FileMode(dataDirMode).String())
	}
	return nil
}

// minTokenBits is the least strength of an API token: 128 bits, as the
// tokens the array generates (32 hex digits).
const minTokenBits = 128

// checkToken refuses an API token too short to resist guessing. Its
// strength is estimated from its length and the smallest usual alphabet
// its characters come from: decimal digits (3.3 bits each), hex digits
// (4 bits: 32 needed), base64 or base64url (6 bits: 22 needed), any other
// printable ASCII (6.6 bits: 20 needed). The error never shows the token.
func checkToken(token string) error {
	alphabet := 0
	for _, set := range []struct {
		n     int
		chars string
	}{
		{10, "0123456789"},
		{16, "0123456789abcdefABCDEF"},
		{64, "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-_+/="},
		{95, ""},
	} {
		if set.chars == "" || strings.Trim(token, set.chars) == "" {
			alphabet = set.n
			break
		}
	}
	for _, r := range token {
		if r <= ' ' || r > '~' {
			return fmt.Errorf("api token: only printable ASCII without spaces can be sent as a bearer token: " +
				"generate one with `openssl rand -hex 16`, or leave it empty to have the array generate one")
		}
	}
	bitsPer := math.Log2(float64(alphabet))
	if bits := float64(len(token)) * bitsPer; bits < minTokenBits {
		need := int(math.Ceil(minTokenBits / bitsPer))
		return fmt.Errorf("api token: too weak: %d characters of a %d-character alphabet hold %.0f bits, at least %d are needed "+
			"(%d such characters, e.g. 32 hex digits: `openssl rand -hex 16`); or leave it empty to have the array generate one",
			len(token), alphabet, bits, minTokenBits, need)
	}
	return nil
}

// checkPlainAPI refuses to serve the API without TLS on anything but a
// loopback address: the token and CHAP secrets would cross the network in
// clear.
func checkPlainAPI(listen string) error {
	host, _, err := net.SplitHostPort(listen)
	if err != nil {
		return fmt.Errorf("api: listen %q: %w", listen, err)
	}
	if !api.IsLoopback(host) {
		return fmt.Errorf("api: tls: false on %s would send the API token and CHAP secrets in clear: "+
			"plain HTTP is allowed on a loopback address only (127.0.0.1, ::1, localhost); "+
			"remove tls: false (TLS is the default) or listen on loopback", listen)
	}
	return nil
}
