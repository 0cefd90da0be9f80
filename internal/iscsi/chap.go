package iscsi

import (
	"bytes"
	"crypto/md5"
	"crypto/rand"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha3"
	"crypto/subtle"
	"errors"
	"fmt"
	"hash"
	"strconv"
)

// CHAP algorithm identifiers (RFC 7143 12.1.3 and the IANA PPP registry).
const (
	chapMD5     = 5
	chapSHA1    = 6
	chapSHA256  = 7
	chapSHA3256 = 8
)

// chapChallengeLen is the length of the target's challenges.
const chapChallengeLen = 32

// maxChapChallenge bounds the initiator's challenge (RFC 7143 12.1.3: at
// most 1024 bytes).
const maxChapChallenge = 1024

// errAuth marks an authentication failure (login status 0x0201).
var errAuth = errors.New("authentication failed")

func chapHash(alg int) hash.Hash {
	switch alg {
	case chapMD5:
		return md5.New()
	case chapSHA1:
		return sha1.New()
	case chapSHA256:
		return sha256.New()
	case chapSHA3256:
		return sha3.New256()
	}
	return nil
}

// chapResponse computes H(id || secret || challenge).
func chapResponse(alg int, id byte, secret string, challenge []byte) []byte {
	h := chapHash(alg)
	h.Write([]byte{id})
	h.Write([]byte(secret))
	h.Write(challenge)
	return h.Sum(nil)
}

// chapAuth is the target side of one CHAP exchange.
type chapAuth struct {
	creds     CHAP
	alg       int
	id        byte
	challenge []byte
}

// chooseAlgorithm picks the first algorithm of the initiator's CHAP_A list
// the target supports.
func chooseAlgorithm(list string) (int, bool) {
	for _, v := range splitList(list) {
		n, err := parseNumber(v)
		if err != nil {
			continue
		}
		if chapHash(int(n)) != nil {
			return int(n), true
		}
	}
	return 0, false
}

// start picks the identifier and a fresh challenge.
func (c *chapAuth) start(alg int) error {
	c.alg = alg
	var b [1 + chapChallengeLen]byte
	if _, err := rand.Read(b[:]); err != nil {
		return fmt.Errorf("chap challenge: %w", err)
	}
	c.id = b[0]
	c.challenge = bytes.Clone(b[1:])
	return nil
}

// verify checks the initiator's CHAP_N and CHAP_R.
func (c *chapAuth) verify(name, resp string) error {
	got, err := parseBinary(resp)
	if err != nil {
		return fmt.Errorf("%w: CHAP_R: %v", errAuth, err)
	}
	want := chapResponse(c.alg, c.id, c.creds.Secret, c.challenge)
	nameOK := subtle.ConstantTimeCompare([]byte(name), []byte(c.creds.User)) == 1
	respOK := subtle.ConstantTimeCompare(got, want) == 1
	if !nameOK || !respOK {
		return fmt.Errorf("%w: wrong CHAP_N or CHAP_R for user %q", errAuth, name)
	}
	return nil
}

// mutual answers the initiator's challenge (mutual CHAP) and returns
// CHAP_N and CHAP_R for the target.
func (c *chapAuth) mutual(idStr, challengeStr string) (string, string, error) {
	if c.creds.MutualUser == "" {
		return "", "", fmt.Errorf("%w: initiator asked for mutual CHAP, none is configured", errAuth)
	}
	id, err := parseNumber(idStr)
	if err != nil || id > 255 {
		return "", "", fmt.Errorf("%w: bad CHAP_I %q", errAuth, idStr)
	}
	ch, err := parseBinary(challengeStr)
	if err != nil {
		return "", "", fmt.Errorf("%w: CHAP_C: %v", errAuth, err)
	}
	if len(ch) > maxChapChallenge {
		return "", "", fmt.Errorf("%w: CHAP_C of %d bytes", errAuth, len(ch))
	}
	if bytes.Equal(ch, c.challenge) {
		return "", "", fmt.Errorf("%w: initiator reflected the target's challenge", errAuth)
	}
	r := chapResponse(c.alg, byte(id), c.creds.MutualSecret, ch)
	return c.creds.MutualUser, encodeHex(r), nil
}

func (c *chapAuth) idString() string { return strconv.Itoa(int(c.id)) }
