package store

import (
	"errors"
	"fmt"
	"strings"

	"github.com/cockroachdb/pebble/v2"
)

// GetMeta returns a copy of the value of metadata key and whether it exists.
func (s *Store) GetMeta(key string) ([]byte, bool, error) {
	if err := s.enter(); err != nil {
		return nil, false, err
	}
	defer s.leave()
	var val []byte
	found, err := get(s.db, metaKey(key), func(v []byte) error {
		val = append([]byte{}, v...)
		return nil
	})
	if err != nil {
		return nil, false, fmt.Errorf("store: get metadata %q: %w", key, markCorruption(err))
	}
	return val, found, nil
}

// ScanMeta calls fn, in key order, for every metadata key starting with
// prefix, with a copy of its value. An error from fn stops the scan and is
// returned as is.
func (s *Store) ScanMeta(prefix string, fn func(key string, value []byte) error) error {
	if err := s.enter(); err != nil {
		return err
	}
	defer s.leave()
	lower := metaKey(prefix)
	it, err := s.db.NewIter(&pebble.IterOptions{
		LowerBound: lower,
		UpperBound: prefixEnd(lower),
	})
	if err != nil {
		return fmt.Errorf("store: scan metadata %q: %w", prefix, err)
	}
	for valid := it.First(); valid; valid = it.Next() {
		key := string(it.Key()[1:])
		if !strings.HasPrefix(key, prefix) {
			continue // cannot happen within the bounds
		}
		val, err := it.ValueAndErr()
		if err != nil {
			return errors.Join(fmt.Errorf("store: scan metadata %q: %w", prefix, markCorruption(err)), it.Close())
		}
		if err := fn(key, append([]byte{}, val...)); err != nil {
			_ = it.Close() // fn's error is the one that matters
			return err
		}
	}
	if err := it.Close(); err != nil {
		return fmt.Errorf("store: scan metadata %q: %w", prefix, markCorruption(err))
	}
	return nil
}

// prefixEnd returns the smallest key greater than every key starting with
// p, which must contain a byte other than 0xff.
func prefixEnd(p []byte) []byte {
	end := append([]byte{}, p...)
	for i := len(end) - 1; i >= 0; i-- {
		if end[i] != 0xff {
			end[i]++
			return end[:i+1]
		}
	}
	panic("store: prefixEnd of all-0xff key")
}
