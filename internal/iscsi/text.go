package iscsi

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"
)

// Limits of the text format (RFC 7143 6.1).
const (
	maxKeyLen   = 63
	maxValueLen = 16384 // large binary values (CHAP) are up to 8192 bytes hex or base64 encoded
	// maxTextLen bounds the text of one login or text request assembled
	// from several PDUs (C bit).
	maxTextLen = 64 << 10
)

// kv is one key=value pair.
type kv struct {
	Key, Value string
}

// parseText splits NUL-separated key=value pairs. Empty entries (padding,
// a trailing terminator) are skipped.
func parseText(b []byte) ([]kv, error) {
	if len(b) > maxTextLen {
		return nil, fmt.Errorf("text of %d bytes exceeds %d", len(b), maxTextLen)
	}
	var out []kv
	for len(b) > 0 {
		var entry []byte
		if i := bytes.IndexByte(b, 0); i >= 0 {
			entry, b = b[:i], b[i+1:]
		} else {
			entry, b = b, nil
		}
		if len(entry) == 0 {
			continue
		}
		eq := bytes.IndexByte(entry, '=')
		if eq < 0 {
			return nil, fmt.Errorf("text entry %q has no '='", truncate(entry))
		}
		key, value := entry[:eq], entry[eq+1:]
		if err := checkKey(key); err != nil {
			return nil, err
		}
		if len(value) > maxValueLen {
			return nil, fmt.Errorf("value of %s is %d bytes long", key, len(value))
		}
		out = append(out, kv{Key: string(key), Value: string(value)})
	}
	return out, nil
}

func checkKey(key []byte) error {
	if len(key) == 0 {
		return fmt.Errorf("empty key")
	}
	if len(key) > maxKeyLen {
		return fmt.Errorf("key %q longer than %d bytes", truncate(key), maxKeyLen)
	}
	for _, c := range key {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case c == '.', c == '-', c == '+', c == '@', c == '_', c == '#':
		default:
			return fmt.Errorf("key %q has invalid character %q", truncate(key), c)
		}
	}
	return nil
}

func truncate(b []byte) string {
	if len(b) > 40 {
		return string(b[:40]) + "..."
	}
	return string(b)
}

// textBuilder accumulates key=value pairs for a response.
type textBuilder struct {
	buf []byte
}

func (t *textBuilder) add(key, value string) {
	t.buf = append(t.buf, key...)
	t.buf = append(t.buf, '=')
	t.buf = append(t.buf, value...)
	t.buf = append(t.buf, 0)
}

func (t *textBuilder) bytes() []byte { return t.buf }

// Special values (RFC 7143 6.2).
const (
	valNotUnderstood = "NotUnderstood"
	valIrrelevant    = "Irrelevant"
	valReject        = "Reject"
)

// parseNumber decodes a numerical value: decimal, hex (0x) or base64 (0b)
// as in RFC 7143 6.1 (values that fit in 64 bits).
func parseNumber(s string) (uint64, error) {
	switch {
	case strings.HasPrefix(s, "0x") || strings.HasPrefix(s, "0X"):
		if len(s) == 2 || len(s) > 18 {
			return 0, fmt.Errorf("bad hex number %q", s)
		}
		return strconv.ParseUint(s[2:], 16, 64)
	case strings.HasPrefix(s, "0b") || strings.HasPrefix(s, "0B"):
		b, err := base64.StdEncoding.DecodeString(s[2:])
		if err != nil || len(b) == 0 || len(b) > 8 {
			return 0, fmt.Errorf("bad base64 number %q", s)
		}
		var v uint64
		for _, c := range b {
			v = v<<8 | uint64(c)
		}
		return v, nil
	}
	if s == "" || len(s) > 20 {
		return 0, fmt.Errorf("bad number %q", s)
	}
	for _, c := range s {
		if c < '0' || c > '9' {
			return 0, fmt.Errorf("bad number %q", s)
		}
	}
	return strconv.ParseUint(s, 10, 64)
}

// parseBinary decodes a binary value (CHAP_C, CHAP_R): hex with 0x or
// base64 with 0b.
func parseBinary(s string) ([]byte, error) {
	switch {
	case strings.HasPrefix(s, "0x") || strings.HasPrefix(s, "0X"):
		h := s[2:]
		if len(h)%2 == 1 {
			h = "0" + h
		}
		b, err := hex.DecodeString(h)
		if err != nil || len(b) == 0 {
			return nil, fmt.Errorf("bad hex value")
		}
		return b, nil
	case strings.HasPrefix(s, "0b") || strings.HasPrefix(s, "0B"):
		b, err := base64.StdEncoding.DecodeString(s[2:])
		if err != nil {
			b, err = base64.RawStdEncoding.DecodeString(s[2:])
		}
		if err != nil || len(b) == 0 {
			return nil, fmt.Errorf("bad base64 value")
		}
		return b, nil
	}
	return nil, fmt.Errorf("binary value without 0x or 0b prefix")
}

func encodeHex(b []byte) string { return "0x" + hex.EncodeToString(b) }

// splitList splits a list value ("CHAP,None").
func splitList(s string) []string { return strings.Split(s, ",") }
