package units

import "testing"

func TestParseSize(t *testing.T) {
	good := map[string]uint64{
		"4096": 4096, "1K": 1024, "1k": 1024, "10G": 10 << 30, "10GiB": 10 << 30,
		"10GB": 10 << 30, "1.5T": 3 << 39, "512M": 512 << 20, "1P": 1 << 50,
	}
	for in, want := range good {
		got, err := ParseSize(in)
		if err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "G", "ten", "-1G", "1X", "99999999P"} {
		if _, err := ParseSize(in); err == nil {
			t.Errorf("ParseSize(%q) succeeded; want an error", in)
		}
	}
}

func TestFormatSize(t *testing.T) {
	cases := map[uint64]string{0: "0", 512: "512", 1024: "1K", 10 << 30: "10G", 3 << 39: "1.50T"}
	for in, want := range cases {
		if got := FormatSize(in); got != want {
			t.Errorf("FormatSize(%d) = %q; want %q", in, got, want)
		}
	}
}
