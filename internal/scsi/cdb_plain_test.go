package scsi

import "testing"

func TestIsPlainWrite(t *testing.T) {
	for _, c := range []struct {
		cdb  []byte
		want bool
	}{
		{[]byte{opWrite6, 0, 0, 0, 1, 0}, true},
		{[]byte{opWrite10, 0, 0, 0, 0, 0, 0, 0, 1, 0}, true},
		{[]byte{opWrite12}, true},
		{[]byte{opWrite16}, true},
		{[]byte{opWriteVerify10}, false}, // reads back after writing
		{[]byte{opWriteVerify16}, false},
		{[]byte{opCompareAndWrite}, false},
		{[]byte{opWriteSame16}, false},
		{[]byte{opRead10}, false},
		{nil, false},
	} {
		if got := IsPlainWrite(c.cdb); got != c.want {
			t.Errorf("IsPlainWrite(%#x) = %v, want %v", c.cdb, got, c.want)
		}
	}
}
