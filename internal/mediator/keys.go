package mediator

import (
	"bytes"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"strings"

	"github.com/metro-storage/metro/internal/fileperm"
)

// MinKeyBits is the least strength of an auth key: 128 bits, as the keys
// the mediator makes (32 hex digits).
const MinKeyBits = 128

// maxKeyFile bounds what a key file may hold.
const maxKeyFile = 4096

// CheckKey refuses an auth key that cannot travel in a header or is too
// short to resist guessing: its strength is its length times the bits of
// the smallest usual alphabet it is written in (decimal digits, hex
// digits, base64, any printable ASCII). The error never shows the key.
func CheckKey(key string) error {
	for i := 0; i < len(key); i++ {
		if key[i] <= ' ' || key[i] > '~' {
			return errors.New("only printable ASCII without spaces can be an auth key: make one with `openssl rand -hex 16`")
		}
	}
	alphabet := 95
	for _, set := range []struct {
		n     int
		chars string
	}{{10, "0123456789"}, {16, "0123456789abcdefABCDEF"}, {64, "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ+/=-_"}} {
		if strings.Trim(key, set.chars) == "" {
			alphabet = set.n
			break
		}
	}
	if bits := float64(len(key)) * math.Log2(float64(alphabet)); bits < MinKeyBits {
		return fmt.Errorf("too weak: %d characters from an alphabet of %d hold %.0f bits, %d are needed: "+
			"make one with `openssl rand -hex 16`", len(key), alphabet, bits, MinKeyBits)
	}
	return nil
}

// NewKey returns a new auth key: 128 random bits in hex.
func NewKey() string { return newID() }

// ReadKeyFile reads an auth key from a file that only its owner may read
// (no permission for group or others): one line, checked with CheckKey.
func ReadKeyFile(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("auth key: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return "", fmt.Errorf("auth key: %w", err)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return "", fmt.Errorf("auth key file %s is open to other users (%v): chmod 600 %s", path, perm, path)
	}
	data, err := io.ReadAll(io.LimitReader(f, maxKeyFile+1))
	if err != nil {
		return "", fmt.Errorf("auth key %s: %w", path, err)
	}
	if len(data) > maxKeyFile {
		return "", fmt.Errorf("auth key file %s: more than %d bytes: not a key file", path, maxKeyFile)
	}
	key := string(bytes.TrimRight(data, "\r\n"))
	if key == "" {
		return "", fmt.Errorf("auth key file %s is empty: put the key in it on one line (e.g. openssl rand -hex 16 > %s)", path, path)
	}
	if err := CheckKey(key); err != nil {
		return "", fmt.Errorf("auth key in %s: %w", path, err)
	}
	return key, nil
}

// MakeKeyFile writes a new auth key into path (mode 0600) and returns it.
func MakeKeyFile(path string) (string, error) {
	key := NewKey()
	if err := fileperm.WriteFile(path, []byte(key+"\n"), fileperm.File); err != nil {
		return "", fmt.Errorf("auth key: %w", err)
	}
	return key, nil
}

// keySet is the auth keys a server accepts, kept as digests so that a
// comparison takes the same time whatever the key offered and its length.
type keySet [][sha256.Size]byte

func newKeySet(keys []string) (keySet, error) {
	switch {
	case len(keys) == 0:
		return nil, errors.New("no auth key: give --authkey-file")
	case len(keys) > 2:
		return nil, fmt.Errorf("%d auth keys: give one, or two while rotating", len(keys))
	}
	ks := make(keySet, 0, len(keys))
	for _, k := range keys {
		if err := CheckKey(k); err != nil {
			return nil, fmt.Errorf("auth key: %w", err)
		}
		ks = append(ks, sha256.Sum256([]byte(k)))
	}
	return ks, nil
}

// accepts reports whether key is one of the set, comparing with every
// key in constant time.
func (ks keySet) accepts(key string) bool {
	d := sha256.Sum256([]byte(key))
	ok := 0
	for _, k := range ks {
		ok |= subtle.ConstantTimeCompare(d[:], k[:])
	}
	return ok == 1
}
