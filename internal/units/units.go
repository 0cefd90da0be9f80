// Package units parses and formats sizes in the binary units storage
// administrators use: 1K = 1024 bytes, 1G = 1 GiB.
package units

import (
	"fmt"
	"strconv"
	"strings"
)

var suffixes = []struct {
	name  string
	shift uint
}{
	{"P", 50}, {"T", 40}, {"G", 30}, {"M", 20}, {"K", 10},
}

// ParseSize parses "10G", "512M", "1.5T", "4096" (bytes) or with an
// optional "iB"/"B" tail ("10GiB", "10GB" both mean 10 GiB).
func ParseSize(s string) (uint64, error) {
	orig := s
	s = strings.TrimSpace(strings.ToUpper(s))
	s = strings.TrimSuffix(s, "IB")
	s = strings.TrimSuffix(s, "B")
	if s == "" {
		return 0, fmt.Errorf("size %q: empty; use a number with a unit, e.g. 10G", orig)
	}
	shift := uint(0)
	for _, u := range suffixes {
		if strings.HasSuffix(s, u.name) {
			shift = u.shift
			s = strings.TrimSuffix(s, u.name)
			break
		}
	}
	if shift == 0 {
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("size %q: not a size; use a number with a unit K, M, G, T or P (binary: 1G = 1 GiB)", orig)
		}
		return n, nil
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || f < 0 {
		return 0, fmt.Errorf("size %q: not a size; use a number with a unit K, M, G, T or P (binary: 1G = 1 GiB)", orig)
	}
	v := f * float64(uint64(1)<<shift)
	if v >= 1<<63 {
		return 0, fmt.Errorf("size %q: too large", orig)
	}
	return uint64(v), nil
}

// FormatSize renders n bytes with the largest binary unit that keeps at
// least one whole unit, e.g. 10G, 1.50T, 512.
func FormatSize(n uint64) string {
	for _, u := range suffixes {
		unit := uint64(1) << u.shift
		if n >= unit {
			if n%unit == 0 {
				return fmt.Sprintf("%d%s", n/unit, u.name)
			}
			return fmt.Sprintf("%.2f%s", float64(n)/float64(unit), u.name)
		}
	}
	return strconv.FormatUint(n, 10)
}
