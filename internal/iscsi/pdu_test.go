package iscsi

import (
	"bufio"
	"bytes"
	"crypto/md5"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"io"
	"strings"
	"testing"
)

// RFC 3720 appendix B.4: CRC32C of 32 zero bytes is 0x8aa9136aa... sent
// as bytes aa 36 91 8a.
func TestCRC32CVector(t *testing.T) {
	sum := crc32.Checksum(make([]byte, 32), crc32cTable())
	var b [4]byte
	binary.LittleEndian.PutUint32(b[:], sum)
	if want := []byte{0xaa, 0x36, 0x91, 0x8a}; !bytes.Equal(b[:], want) {
		t.Fatalf("crc32c(32 zeros) on the wire = % x, want % x", b, want)
	}
	ones := bytes.Repeat([]byte{0xff}, 32)
	binary.LittleEndian.PutUint32(b[:], crc32.Checksum(ones, crc32cTable()))
	if want := []byte{0x43, 0xab, 0xa8, 0x62}; !bytes.Equal(b[:], want) {
		t.Fatalf("crc32c(32 0xff) on the wire = % x, want % x", b, want)
	}
}

func TestPDURoundTrip(t *testing.T) {
	for _, digests := range []bool{false, true} {
		for _, n := range []int{0, 1, 3, 4, 5, 48, 8191} {
			var buf bytes.Buffer
			w := pduWriter{w: bufio.NewWriter(&buf), hdrDigest: digests, dataDigest: digests}
			var h bhs
			h.setOpcode(opDataIn, false)
			h[1] = flagFinal | flagStatus
			h.setITT(0x1234)
			h.setField36(9)
			data := pattern(n, 3)
			if err := w.write(&h, data); err != nil {
				t.Fatal(err)
			}
			if err := w.w.Flush(); err != nil {
				t.Fatal(err)
			}
			wantLen := bhsLen + pad4(n)
			if digests {
				wantLen += 4
				if n > 0 {
					wantLen += 4
				}
			}
			if buf.Len() != wantLen {
				t.Fatalf("digests=%v n=%d: encoded %d bytes, want %d", digests, n, buf.Len(), wantLen)
			}
			r := pduReader{r: bufio.NewReader(&buf), hdrDigest: digests, dataDigest: digests, maxData: 1 << 20}
			var g bhs
			if _, err := r.readHeader(&g); err != nil {
				t.Fatal(err)
			}
			if g != h {
				t.Fatalf("header mismatch")
			}
			got, err := r.readDataScratch(&g)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, data) {
				t.Fatalf("data mismatch")
			}
			if _, err := r.readHeader(&g); err != io.EOF {
				t.Fatalf("trailing read: %v, want EOF", err)
			}
		}
	}
}

func TestPDUDigestMismatch(t *testing.T) {
	var buf bytes.Buffer
	w := pduWriter{w: bufio.NewWriter(&buf), hdrDigest: true, dataDigest: true}
	var h bhs
	h.setOpcode(opNopIn, false)
	if err := w.write(&h, []byte("hello")); err != nil {
		t.Fatal(err)
	}
	w.w.Flush()
	raw := buf.Bytes()

	bad := bytes.Clone(raw)
	bad[20] ^= 1 // header byte
	r := pduReader{r: bufio.NewReader(bytes.NewReader(bad)), hdrDigest: true, dataDigest: true, maxData: 1 << 20}
	if _, err := r.readHeader(&h); !errors.Is(err, errDigest) {
		t.Fatalf("corrupt header: %v, want digest error", err)
	}

	bad = bytes.Clone(raw)
	bad[bhsLen+4] ^= 1 // first data byte
	r = pduReader{r: bufio.NewReader(bytes.NewReader(bad)), hdrDigest: true, dataDigest: true, maxData: 1 << 20}
	if _, err := r.readHeader(&h); err != nil {
		t.Fatal(err)
	}
	if _, err := r.readDataScratch(&h); !errors.Is(err, errDigest) {
		t.Fatalf("corrupt data: %v, want digest error", err)
	}
}

func TestPDUTooLong(t *testing.T) {
	var h bhs
	h.setOpcode(opSCSICmd, false)
	h.setDataLen(9000)
	r := pduReader{r: bufio.NewReader(bytes.NewReader(h[:])), maxData: 8192}
	if _, err := r.readHeader(&h); !errors.Is(err, errProtocol) {
		t.Fatalf("got %v, want protocol error", err)
	}
}

func TestParseAHS(t *testing.T) {
	// Extended CDB of 32 bytes: 16 in the BHS, 16 in the AHS.
	ext := make([]byte, 4+16)
	binary.BigEndian.PutUint16(ext, 17)
	ext[2] = ahsExtendedCDB
	for i := range 16 {
		ext[4+i] = byte(16 + i)
	}
	bidi := []byte{0, 5, ahsBidiReadLen, 0, 0, 0, 0x10, 0}
	cdb, rl, ok, err := parseAHS(append(ext, bidi...))
	if err != nil {
		t.Fatal(err)
	}
	if len(cdb) != 16 || cdb[0] != 16 || !ok || rl != 0x1000 {
		t.Fatalf("got cdb %v read %d ok %v", cdb, rl, ok)
	}
	for _, bad := range [][]byte{
		{0, 1},
		{0, 0, 1, 0},
		{0, 40, 1, 0, 1, 2, 3, 4},
		{0, 4, 2, 0, 0, 0, 0, 0},
		{0, 1, 9, 0},
	} {
		if _, _, _, err := parseAHS(bad); err == nil {
			t.Errorf("parseAHS(% x) succeeded", bad)
		}
	}
}

func TestLUNEncoding(t *testing.T) {
	for _, lun := range []uint64{0, 1, 255, 256, 1000, 16383} {
		if got := decodeLUN(encodeLUN(lun)); got != lun {
			t.Errorf("decode(encode(%d)) = %d", lun, got)
		}
	}
	if got := decodeLUN(0x0001000000000000); got != 1 {
		t.Errorf("peripheral LUN 1 decoded as %d", got)
	}
	if got := decodeLUN(0x4101000000000000); got != 0x101 {
		t.Errorf("flat LUN 0x101 decoded as %d", got)
	}
	if raw := uint64(0xc000000000000001); decodeLUN(raw) != raw {
		t.Errorf("extended addressing not passed through raw")
	}
}

func TestSerialArithmetic(t *testing.T) {
	if !snInWindow(5, 5, 5) || snInWindow(4, 5, 10) || snInWindow(11, 5, 10) {
		t.Error("plain window")
	}
	if !snInWindow(2, 0xfffffff0, 10) || !snInWindow(0xfffffff5, 0xfffffff0, 10) || snInWindow(11, 0xfffffff0, 10) {
		t.Error("wrapped window")
	}
	if !snLess(0xffffffff, 0) || snLess(0, 0xffffffff) {
		t.Error("snLess wrap")
	}
}

func TestBufferPool(t *testing.T) {
	var p bufferPool
	for _, n := range []int{0, 1, 4096, 4097, 65536, 1 << 20} {
		b := p.get(n)
		if len(*b) != n {
			t.Fatalf("get(%d) has length %d", n, len(*b))
		}
		p.put(b)
	}
	if c := sizeClass(1<<maxBufShift + 1); c != -1 {
		t.Fatalf("oversize class %d", c)
	}
	b := p.get(1<<maxBufShift + 1)
	if len(*b) != 1<<maxBufShift+1 {
		t.Fatal("oversize buffer")
	}
	p.put(b)
}

func TestParseText(t *testing.T) {
	kvs, err := parseText([]byte("A=1\x00B=\x00\x00C=x=y\x00D=last"))
	if err != nil {
		t.Fatal(err)
	}
	want := []kv{{"A", "1"}, {"B", ""}, {"C", "x=y"}, {"D", "last"}}
	if len(kvs) != len(want) {
		t.Fatalf("got %v", kvs)
	}
	for i := range want {
		if kvs[i] != want[i] {
			t.Fatalf("got %v, want %v", kvs, want)
		}
	}
	for _, bad := range []string{"noequals\x00", "=v\x00", "bad key=1\x00", strings.Repeat("k", 64) + "=1\x00"} {
		if _, err := parseText([]byte(bad)); err == nil {
			t.Errorf("parseText(%q) succeeded", bad)
		}
	}
}

func TestParseNumber(t *testing.T) {
	for s, want := range map[string]uint64{"0": 0, "262144": 262144, "0x10": 16, "0X1f": 31, "0bAQA=": 256} {
		got, err := parseNumber(s)
		if err != nil || got != want {
			t.Errorf("parseNumber(%q) = %d, %v; want %d", s, got, err, want)
		}
	}
	for _, s := range []string{"", "-1", "1a", "0x", "0xzz", "0b!", "99999999999999999999999"} {
		if _, err := parseNumber(s); err == nil {
			t.Errorf("parseNumber(%q) succeeded", s)
		}
	}
	b, err := parseBinary("0xabc")
	if err != nil || !bytes.Equal(b, []byte{0x0a, 0xbc}) {
		t.Errorf("parseBinary odd hex: % x %v", b, err)
	}
	b, err = parseBinary("0bAQID")
	if err != nil || !bytes.Equal(b, []byte{1, 2, 3}) {
		t.Errorf("parseBinary base64: % x %v", b, err)
	}
	if _, err := parseBinary("abc"); err == nil {
		t.Error("parseBinary without prefix succeeded")
	}
}

func TestNegotiation(t *testing.T) {
	cfg := Config{}.withDefaults()
	n := newNegotiator(&cfg)
	var out textBuilder
	offers := []kv{
		{"HeaderDigest", "CRC32C,None"},
		{"DataDigest", "None,CRC32C"},
		{"MaxRecvDataSegmentLength", "65536"},
		{"MaxBurstLength", "16776192"},
		{"FirstBurstLength", "262144"},
		{"InitialR2T", "No"},
		{"ImmediateData", "Yes"},
		{"MaxOutstandingR2T", "8"},
		{"MaxConnections", "4"},
		{"ErrorRecoveryLevel", "2"},
		{"DefaultTime2Wait", "0"},
		{"DefaultTime2Retain", "20"},
		{"DataPDUInOrder", "No"},
		{"DataSequenceInOrder", "Yes"},
		{"IFMarker", "Yes"},
		{"OFMarkInt", "2048~8192"},
		{"X-com.example.key", "1"},
		{"FooBar", "1"},
	}
	for _, p := range offers {
		if err := n.negotiate(p.Key, p.Value, &out); err != nil {
			t.Fatal(err)
		}
	}
	p := n.finish(&out)
	kvs, _ := parseText(out.bytes())
	got := map[string]string{}
	for _, x := range kvs {
		if _, dup := got[x.Key]; dup {
			t.Errorf("key %s answered twice", x.Key)
		}
		got[x.Key] = x.Value
	}
	want := map[string]string{
		"HeaderDigest": "CRC32C", "DataDigest": "None",
		"MaxRecvDataSegmentLength": "262144",
		"MaxBurstLength":           "262144", "FirstBurstLength": "65536",
		"InitialR2T": "No", "ImmediateData": "Yes",
		"MaxOutstandingR2T": "1", "MaxConnections": "1", "ErrorRecoveryLevel": "0",
		"DefaultTime2Wait": "2", "DefaultTime2Retain": "0",
		"DataPDUInOrder": "Yes", "DataSequenceInOrder": "Yes",
		"IFMarker": "No", "OFMarkInt": "Reject",
		"X-com.example.key": "NotUnderstood", "FooBar": "NotUnderstood",
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %q, want %q", k, got[k], v)
		}
	}
	if !p.HeaderDigest || p.DataDigest || p.MaxXmitDataSegment != 65536 || p.FirstBurstLength != 65536 || p.InitialR2T || !p.ImmediateData {
		t.Errorf("params %+v", p)
	}
	if err := n.negotiate("InitialR2T", "Yes", &out); err == nil {
		t.Error("a key offered twice was accepted")
	}

	// OR / AND semantics the other way round, and bad values.
	n = newNegotiator(&cfg)
	out = textBuilder{}
	for _, p := range []kv{{"InitialR2T", "Yes"}, {"ImmediateData", "No"}, {"MaxBurstLength", "4096"}, {"FirstBurstLength", "8192"}, {"HeaderDigest", "MD5"}, {"MaxRecvDataSegmentLength", "12"}} {
		if err := n.negotiate(p.Key, p.Value, &out); err != nil {
			t.Fatal(err)
		}
	}
	p = n.finish(&out)
	if !p.InitialR2T || p.ImmediateData || p.MaxBurstLength != 4096 || p.FirstBurstLength != 4096 || p.HeaderDigest {
		t.Errorf("params %+v", p)
	}
	if s := string(out.bytes()); !strings.Contains(s, "HeaderDigest=Reject\x00") || !strings.Contains(s, "MaxRecvDataSegmentLength=Reject\x00") {
		t.Errorf("answers %q", s)
	}

	// Discovery sessions answer Irrelevant for session keys.
	n = newNegotiator(&cfg)
	n.discovery = true
	out = textBuilder{}
	_ = n.negotiate("InitialR2T", "No", &out)
	if string(out.bytes()) != "InitialR2T=Irrelevant\x00" {
		t.Errorf("discovery answer %q", out.bytes())
	}
}

func TestCHAPResponse(t *testing.T) {
	ch := []byte{1, 2, 3, 4}
	h := md5.New()
	h.Write([]byte{9})
	h.Write([]byte("secret"))
	h.Write(ch)
	if got := chapResponse(chapMD5, 9, "secret", ch); !bytes.Equal(got, h.Sum(nil)) {
		t.Fatal("MD5 CHAP response mismatch")
	}
	for _, alg := range []int{chapMD5, chapSHA1, chapSHA256, chapSHA3256} {
		if chapHash(alg) == nil {
			t.Errorf("algorithm %d unsupported", alg)
		}
	}
	if alg, ok := chooseAlgorithm("7,5"); !ok || alg != chapSHA256 {
		t.Errorf("chooseAlgorithm(7,5) = %d %v", alg, ok)
	}
	if _, ok := chooseAlgorithm("1,2,x"); ok {
		t.Error("chooseAlgorithm accepted nothing supported")
	}
	a := chapAuth{creds: CHAP{User: "u", Secret: "s", MutualUser: "t", MutualSecret: "ms"}}
	if err := a.start(chapMD5); err != nil {
		t.Fatal(err)
	}
	good := encodeHex(chapResponse(chapMD5, a.id, "s", a.challenge))
	if err := a.verify("u", good); err != nil {
		t.Errorf("good response refused: %v", err)
	}
	if err := a.verify("v", good); !errors.Is(err, errAuth) {
		t.Errorf("wrong user accepted: %v", err)
	}
	if err := a.verify("u", encodeHex(make([]byte, 16))); !errors.Is(err, errAuth) {
		t.Errorf("wrong response accepted: %v", err)
	}
	if _, _, err := a.mutual("1", encodeHex(a.challenge)); !errors.Is(err, errAuth) {
		t.Errorf("reflected challenge accepted: %v", err)
	}
	n, r, err := a.mutual("3", "0x01020304")
	if err != nil || n != "t" || r != encodeHex(chapResponse(chapMD5, 3, "ms", []byte{1, 2, 3, 4})) {
		t.Errorf("mutual = %q %q %v", n, r, err)
	}
	a.creds.MutualUser = ""
	if _, _, err := a.mutual("3", "0x01020304"); !errors.Is(err, errAuth) {
		t.Errorf("mutual without credentials: %v", err)
	}
}

func TestCDBDataOutLength(t *testing.T) {
	w16 := make([]byte, 16)
	w16[0] = 0x8a
	binary.BigEndian.PutUint32(w16[10:], 3)
	caw := make([]byte, 16)
	caw[0], caw[13] = 0x89, 1
	ws16 := make([]byte, 16)
	ws16[0] = 0x93
	ws16ndob := bytes.Clone(ws16)
	ws16ndob[1] = 1
	w6 := []byte{0x0a, 0, 0, 0, 0, 0}
	cases := []struct {
		cdb  []byte
		want uint32
		ok   bool
	}{
		{write10(0, 2), 1024, true},
		{w16, 1536, true},
		{caw, 1024, true},
		{ws16, 512, true},
		{ws16ndob, 0, true},
		{w6, 256 * 512, true},
		{read10(0, 1), 0, false},
		{[]byte{0x2a}, 0, false},
		{nil, 0, false},
	}
	for _, c := range cases {
		got, ok := cdbDataOutLength(c.cdb, 512)
		if got != c.want || ok != c.ok {
			t.Errorf("cdbDataOutLength(% x) = %d %v, want %d %v", c.cdb, got, ok, c.want, c.ok)
		}
	}
}
