package iscsi

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"testing"
	"time"

	"github.com/metro-storage/metro/internal/pipenet"
	"github.com/metro-storage/metro/internal/scsi"
)

// seedPDU encodes one PDU for the seed corpus.
func seedPDU(op opcode, flags byte, itt uint32, data []byte, mod func(*bhs)) []byte {
	var buf bytes.Buffer
	w := pduWriter{w: bufio.NewWriter(&buf)}
	var h bhs
	h.setOpcode(op, false)
	h[1] = flags
	h.setITT(itt)
	if mod != nil {
		mod(&h)
	}
	_ = w.write(&h, data)
	_ = w.w.Flush()
	return buf.Bytes()
}

func seedCommands() [][]byte {
	cmd := seedPDU(opSCSICmd, flagFinal|flagRead, 1, nil, func(h *bhs) {
		h.setField20(512)
		copy(h[32:], read10(0, 1))
	})
	wr := seedPDU(opSCSICmd, flagWrite, 2, make([]byte, 512), func(h *bhs) {
		h.setField20(1024)
		h.setField24(2)
		copy(h[32:], write10(0, 2))
	})
	dout := seedPDU(opDataOut, flagFinal, 2, make([]byte, 512), func(h *bhs) {
		h.setField20(reservedTag)
		h.setField40(512)
	})
	nop := seedPDU(opNopOut, flagFinal, 3, []byte("ping"), func(h *bhs) { h.setField20(reservedTag) })
	text := seedPDU(opTextReq, flagFinal, 4, []byte("SendTargets=All\x00"), func(h *bhs) { h.setField20(reservedTag) })
	tmf := seedPDU(opTMFReq, flagFinal|1, 5, nil, func(h *bhs) { h.setField20(1) })
	logout := seedPDU(opLogoutReq, flagFinal, 6, nil, nil)
	ahs := seedPDU(opSCSICmd, flagFinal, 7, nil, func(h *bhs) { h[4] = 1 })
	ahs = append(ahs, 0, 1, 1, 0)
	return [][]byte{cmd, append(wr, dout...), nop, text, tmf, logout, ahs, append(cmd, nop...)}
}

// FuzzReadPDU feeds arbitrary bytes to the PDU reader (with and without
// digests). Every PDU it accepts must re-encode to the same bytes.
func FuzzReadPDU(f *testing.F) {
	for _, s := range seedCommands() {
		f.Add(s, false)
	}
	f.Add(seedPDU(opNopOut, flagFinal, 1, []byte("x"), nil), true)
	f.Fuzz(func(t *testing.T, in []byte, digests bool) {
		r := pduReader{r: bufio.NewReader(bytes.NewReader(in)), hdrDigest: digests, dataDigest: digests, maxData: 1 << 16}
		for {
			var h bhs
			ahs, err := r.readHeader(&h)
			if err != nil {
				return
			}
			ahs = bytes.Clone(ahs)
			if h.opcode() == opSCSICmd {
				_, _, _, _ = parseAHS(ahs)
			}
			data, err := r.readDataScratch(&h)
			if err != nil {
				return
			}
			_ = decodeLUN(h.lunRaw())
			if len(ahs) == 0 {
				var buf bytes.Buffer
				w := pduWriter{w: bufio.NewWriter(&buf), hdrDigest: digests, dataDigest: digests}
				h2 := h
				if err := w.write(&h2, data); err != nil {
					t.Fatal(err)
				}
				w.w.Flush()
				r2 := pduReader{r: bufio.NewReader(&buf), hdrDigest: digests, dataDigest: digests, maxData: 1 << 16}
				var g bhs
				if _, err := r2.readHeader(&g); err != nil {
					t.Fatalf("re-read header: %v", err)
				}
				d2, err := r2.readDataScratch(&g)
				if err != nil || g != h2 || !bytes.Equal(d2, data) {
					t.Fatalf("round trip differs: %v", err)
				}
			}
		}
	})
}

// FuzzLoginText parses key=value text and runs it through negotiation and
// the CHAP value decoders: never a panic, and what parses re-encodes.
func FuzzLoginText(f *testing.F) {
	f.Add([]byte("InitiatorName=iqn.x\x00TargetName=iqn.y\x00SessionType=Normal\x00AuthMethod=CHAP,None\x00"))
	f.Add([]byte("HeaderDigest=CRC32C,None\x00MaxRecvDataSegmentLength=262144\x00MaxBurstLength=0x1000\x00FirstBurstLength=0bAQA=\x00"))
	f.Add([]byte("CHAP_A=5,7\x00CHAP_I=12\x00CHAP_C=0x0102\x00CHAP_R=0bAQID\x00"))
	f.Add([]byte("X-a=b\x00IFMarkInt=2048~8192\x00InitialR2T=Yes\x00=\x00a"))
	f.Fuzz(func(t *testing.T, in []byte) {
		kvs, err := parseText(in)
		if err != nil {
			return
		}
		var tb textBuilder
		for _, p := range kvs {
			tb.add(p.Key, p.Value)
		}
		again, err := parseText(tb.bytes())
		if err != nil || len(again) != len(kvs) {
			t.Fatalf("re-parse: %v (%d vs %d)", err, len(again), len(kvs))
		}
		cfg := Config{}.withDefaults()
		n := newNegotiator(&cfg)
		var out textBuilder
		a := chapAuth{creds: CHAP{User: "u", Secret: "s", MutualUser: "m", MutualSecret: "ms"}}
		_ = a.start(chapMD5)
		for _, p := range kvs {
			switch p.Key {
			case "CHAP_A":
				chooseAlgorithm(p.Value)
			case "CHAP_R":
				_ = a.verify("u", p.Value)
			case "CHAP_C":
				_, _, _ = a.mutual("1", p.Value)
			default:
				_ = n.negotiate(p.Key, p.Value, &out)
			}
		}
		p := n.finish(&out)
		if p.FirstBurstLength > p.MaxBurstLength || p.MaxXmitDataSegment < 512 {
			t.Fatalf("bad params %+v", p)
		}
		if _, err := parseText(out.bytes()); err != nil {
			t.Fatalf("answer does not parse: %v", err)
		}
	})
}

// nopExec answers every command GOOD with a block of data.
type nopExec struct{}

func (nopExec) Execute(_ context.Context, cmd *scsi.Command) *scsi.Result {
	return &scsi.Result{Status: scsi.StatusGood, Data: make([]byte, 512)}
}
func (nopExec) TaskManagement(context.Context, scsi.Nexus, scsi.TMF, uint64, uint32) scsi.TMFResponse {
	return scsi.TMFComplete
}
func (nopExec) NexusLost(scsi.Nexus) {}

// FuzzLogin sends arbitrary bytes as the login phase.
func FuzzLogin(f *testing.F) {
	var tb textBuilder
	tb.add("InitiatorName", testInitiator)
	tb.add("TargetName", testTarget)
	tb.add("AuthMethod", "None")
	login := seedPDU(opLoginReq, flagTransit|1, 1, tb.bytes(), func(h *bhs) { h[0] |= immediateBit })
	f.Add(login)
	f.Add(seedPDU(opLoginReq, flagContinue, 1, []byte("InitiatorName=iqn"), nil))
	f.Fuzz(func(t *testing.T, in []byte) {
		srv := NewServer(Config{Backend: newFakeBackend(), Executor: nopExec{}, NopInterval: -1, Logger: testLogger(t)})
		l := pipenet.Listen("pipe:3260")
		done := make(chan error, 1)
		go func() { done <- srv.Serve(context.Background(), l) }()
		defer func() {
			srv.Close()
			<-done
		}()
		nc, err := l.Dial(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		drained := make(chan struct{})
		go func() {
			defer close(drained)
			_, _ = io.Copy(io.Discard, nc)
		}()
		_ = nc.SetWriteDeadline(time.Now().Add(5 * time.Second))
		_, _ = nc.Write(in)
		nc.Close()
		<-drained
	})
}
