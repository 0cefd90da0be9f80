package iscsi

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/metro-storage/metro/internal/scsi"
)

// A small iSCSI initiator for the tests, built on the package's PDU codec.

const (
	testTarget    = "iqn.2024-01.test.metro:array1"
	testTarget2   = "iqn.2024-01.test.metro:array2"
	testInitiator = "iqn.2024-01.test.host:init1"
)

// initiator is a minimal iSCSI initiator for tests.
type initiator struct {
	t         testing.TB
	nc        net.Conn
	rd        pduReader
	wr        pduWriter
	name      string
	isid      [6]byte
	tsih      uint16
	cmdSN     uint32
	expStatSN uint32
	itt       uint32
	// negotiated
	maxXmit       uint32 // target's MaxRecvDataSegmentLength
	firstBurst    uint32
	maxBurst      uint32
	immediateData bool
	initialR2T    bool
	loginKeys     map[string]string // keys from the last login response text
	myMRDSL       uint32            // the MaxRecvDataSegmentLength we declared
	lastMaxCmdSN  uint32
	lastExpCmdSN  uint32
	// tolerant makes send failures silent (for tests where the target
	// drops the connection mid-command).
	tolerant bool
}

func (h *harness) dial() *initiator {
	h.t.Helper()
	nc, err := h.l.Dial(context.Background())
	if err != nil {
		h.t.Fatalf("dial: %v", err)
	}
	return newInitiator(h.t, nc)
}

func newInitiator(t testing.TB, nc net.Conn) *initiator {
	in := &initiator{
		t:     t,
		nc:    nc,
		name:  testInitiator,
		isid:  [6]byte{0x80, 0x12, 0x34, 0x56, 0x00, 0x01},
		cmdSN: 1,
		itt:   0x100,
	}
	in.rd = pduReader{r: bufio.NewReader(nc), maxData: maxDataSegment}
	in.wr = pduWriter{w: bufio.NewWriter(nc)}
	t.Cleanup(func() { nc.Close() })
	return in
}

func (in *initiator) send(h *bhs, data []byte) error {
	if err := in.wr.write(h, data); err != nil {
		return err
	}
	return in.wr.w.Flush()
}

func (in *initiator) mustSend(h *bhs, data []byte) {
	in.t.Helper()
	if err := in.send(h, data); err != nil && !in.tolerant {
		in.t.Fatalf("send %s: %v", h.opcode(), err)
	}
}

// recv reads one PDU.
func (in *initiator) recv() (bhs, []byte, error) {
	var h bhs
	if _, err := in.rd.readHeader(&h); err != nil {
		return h, nil, err
	}
	data := make([]byte, h.dataLen())
	if err := in.rd.readData(&h, data); err != nil {
		return h, nil, err
	}
	switch h.opcode() {
	case opDataIn:
		if h.flags()&flagStatus != 0 {
			in.expStatSN = h.statSN() + 1
		}
	case opR2T:
	case opNopIn:
		if h.itt() != reservedTag {
			in.expStatSN = binary.BigEndian.Uint32(h[24:28]) + 1
		}
	default:
		in.expStatSN = binary.BigEndian.Uint32(h[24:28]) + 1
	}
	in.lastExpCmdSN = binary.BigEndian.Uint32(h[28:32])
	in.lastMaxCmdSN = binary.BigEndian.Uint32(h[32:36])
	return h, data, nil
}

// statSN returns the StatSN field (bytes 24-27).
func (h *bhs) statSN() uint32 { return binary.BigEndian.Uint32(h[24:28]) }

func (in *initiator) mustRecv() (bhs, []byte) {
	in.t.Helper()
	h, d, err := in.recv()
	if err != nil {
		in.t.Fatalf("recv: %v", err)
	}
	return h, d
}

// expectClosed waits for the connection to be dropped by the target.
func (in *initiator) expectClosed() {
	in.t.Helper()
	_ = in.nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		h, _, err := in.recv()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				in.t.Fatalf("connection still open")
			}
			return
		}
		_ = h
	}
}

func (in *initiator) nextITT() uint32 {
	in.itt++
	return in.itt
}

// loginOpts shape a login.
type loginOpts struct {
	target        string
	discovery     bool
	keys          []kv // extra operational keys
	chapUser      string
	chapSecret    string
	mutualSecret  string // when set, ask the target to authenticate (mutual CHAP)
	mutualReflect bool   // send the target's own challenge back
	authMethod    string
	tsih          uint16
	skipSecurity  bool
}

// loginError is returned with the status of a failed login.
type loginFailure struct{ status loginStatus }

func (e *loginFailure) Error() string { return fmt.Sprintf("login status 0x%04x", uint16(e.status)) }

func (in *initiator) loginReq(csg, nsg int, transit bool, text []byte) bhs {
	var h bhs
	h.setOpcode(opLoginReq, true)
	f := byte(csg)<<2 | byte(nsg)
	if transit {
		f |= flagTransit
	}
	h[1] = f
	copy(h[8:14], in.isid[:])
	binary.BigEndian.PutUint16(h[14:16], in.tsih)
	h.setITT(in.itt)
	h.setField24(in.cmdSN)
	h.setField28(in.expStatSN)
	in.mustSend(&h, text)
	return h
}

// loginExchange sends one login request and returns the response keys.
func (in *initiator) loginExchange(csg, nsg int, transit bool, keys []kv) (bhs, map[string]string, error) {
	var tb textBuilder
	for _, p := range keys {
		tb.add(p.Key, p.Value)
	}
	in.loginReq(csg, nsg, transit, tb.bytes())
	h, data, err := in.recv()
	if err != nil {
		return h, nil, err
	}
	if h.opcode() != opLoginResp {
		return h, nil, fmt.Errorf("got %s, want Login-Response", h.opcode())
	}
	if st := loginStatus(binary.BigEndian.Uint16(h[36:38])); st != statusSuccess {
		return h, nil, &loginFailure{status: st}
	}
	kvs, err := parseText(data)
	if err != nil {
		return h, nil, err
	}
	m := map[string]string{}
	for _, p := range kvs {
		m[p.Key] = p.Value
	}
	return h, m, nil
}

// login logs in and returns the first response's keys merged with the
// later ones.
func (in *initiator) login(o loginOpts) (map[string]string, error) {
	if o.target == "" && !o.discovery {
		o.target = testTarget
	}
	in.tsih = o.tsih
	all := map[string]string{}
	merge := func(m map[string]string) {
		for k, v := range m {
			all[k] = v
		}
	}
	first := []kv{{"InitiatorName", in.name}}
	if o.discovery {
		first = append(first, kv{"SessionType", "Discovery"})
	} else {
		first = append(first, kv{"TargetName", o.target}, kv{"SessionType", "Normal"})
	}
	if !o.skipSecurity {
		am := o.authMethod
		if am == "" {
			am = "None"
			if o.chapUser != "" {
				am = "CHAP,None"
			}
		}
		first = append(first, kv{"AuthMethod", am})
		h, m, err := in.loginExchange(stageSecurity, stageOperational, true, first)
		if err != nil {
			return all, err
		}
		merge(m)
		if m["AuthMethod"] == "CHAP" {
			_, m, err = in.loginExchange(stageSecurity, stageOperational, false, []kv{{"CHAP_A", "5"}})
			if err != nil {
				return all, err
			}
			merge(m)
			id, _ := strconv.Atoi(m["CHAP_I"])
			ch, err := parseBinary(m["CHAP_C"])
			if err != nil {
				return all, err
			}
			resp := chapResponse(chapMD5, byte(id), o.chapSecret, ch)
			keys := []kv{{"CHAP_N", o.chapUser}, {"CHAP_R", encodeHex(resp)}}
			var myCh []byte
			if o.mutualSecret != "" {
				myCh = []byte("initiator-challenge-0123456789ab")
				if o.mutualReflect {
					myCh = ch
				}
				keys = append(keys, kv{"CHAP_I", "77"}, kv{"CHAP_C", encodeHex(myCh)})
			}
			h, m, err = in.loginExchange(stageSecurity, stageOperational, true, keys)
			if err != nil {
				return all, err
			}
			merge(m)
			if o.mutualSecret != "" {
				want := chapResponse(chapMD5, 77, o.mutualSecret, myCh)
				got, err := parseBinary(m["CHAP_R"])
				if err != nil || !bytes.Equal(got, want) {
					return all, fmt.Errorf("target's mutual CHAP_R %q is wrong", m["CHAP_R"])
				}
			}
		}
		if !h.transit() || h.nsg() != stageOperational {
			return all, fmt.Errorf("target did not move to the operational stage (flags 0x%02x)", h[1])
		}
		first = nil
	}
	ops := append(first, []kv{
		{"HeaderDigest", "None"},
		{"DataDigest", "None"},
		{"MaxRecvDataSegmentLength", "262144"},
		{"InitialR2T", "No"},
		{"ImmediateData", "Yes"},
		{"FirstBurstLength", "65536"},
		{"MaxBurstLength", "262144"},
		{"ErrorRecoveryLevel", "0"},
	}...)
	ops = overrideKeys(ops, o.keys)
	in.myMRDSL = 8192
	for _, p := range ops {
		if p.Key == "MaxRecvDataSegmentLength" {
			in.myMRDSL = atoiDefault(p.Value, 8192)
		}
	}
	h, m, err := in.loginExchange(stageOperational, stageFullFeature, true, ops)
	if err != nil {
		return all, err
	}
	merge(m)
	if !h.transit() || h.nsg() != stageFullFeature {
		return all, fmt.Errorf("target did not move to full feature phase (flags 0x%02x)", h[1])
	}
	in.tsih = h.tsih()
	in.loginKeys = all
	in.maxXmit = 8192
	if v, ok := all["MaxRecvDataSegmentLength"]; ok {
		n, _ := strconv.Atoi(v)
		in.maxXmit = uint32(n)
	}
	in.firstBurst = atoiDefault(all["FirstBurstLength"], 65536)
	in.maxBurst = atoiDefault(all["MaxBurstLength"], 262144)
	in.immediateData = all["ImmediateData"] != "No"
	in.initialR2T = all["InitialR2T"] != "No"
	if all["HeaderDigest"] == "CRC32C" {
		in.rd.hdrDigest, in.wr.hdrDigest = true, true
	}
	if all["DataDigest"] == "CRC32C" {
		in.rd.dataDigest, in.wr.dataDigest = true, true
	}
	return all, nil
}

func overrideKeys(base, over []kv) []kv {
	out := append([]kv(nil), base...)
	for _, o := range over {
		replaced := false
		for i := range out {
			if out[i].Key == o.Key {
				out[i].Value = o.Value
				replaced = true
			}
		}
		if !replaced {
			out = append(out, o)
		}
	}
	var res []kv
	for _, p := range out {
		if p.Value != "-" { // "-" drops a key
			res = append(res, p)
		}
	}
	return res
}

func atoiDefault(s string, d uint32) uint32 {
	if n, err := strconv.Atoi(s); err == nil {
		return uint32(n)
	}
	return d
}

func (in *initiator) mustLogin(o loginOpts) map[string]string {
	in.t.Helper()
	m, err := in.login(o)
	if err != nil {
		in.t.Fatalf("login: %v", err)
	}
	return m
}

// cmdOpts describe a SCSI command.
type cmdOpts struct {
	lun        uint64
	read       bool
	write      bool // W bit even without data (dataOut != nil implies it)
	edtl       uint32
	dataOut    []byte // data the initiator sends (len may differ from edtl only in tests that break the rules)
	attr       byte
	immediate  bool
	noImmData  bool // send no immediate data
	noUnsol    bool // send no unsolicited Data-Out
	itt        uint32
	cmdSN      *uint32 // override CmdSN (no increment)
	segment    uint32  // Data-Out segment size (default maxXmit)
	dataSNFunc func(seq, i uint32) uint32
}

// cmdResult is what came back for a command.
type cmdResult struct {
	status     scsi.Status
	sense      []byte
	data       []byte
	flags      byte
	residual   uint32
	dataIns    int
	r2ts       int
	statusInDI bool
}

// sendCommand sends a SCSI Command PDU (and its immediate and unsolicited
// data) and returns its ITT.
func (in *initiator) sendCommand(cdb []byte, o cmdOpts) uint32 {
	in.t.Helper()
	var h bhs
	h.setOpcode(opSCSICmd, o.immediate)
	itt := o.itt
	if itt == 0 {
		itt = in.nextITT()
	}
	write := o.dataOut != nil || o.write
	edtl := o.edtl
	if edtl == 0 && write {
		edtl = uint32(len(o.dataOut))
	}
	var imm []byte
	unsol := uint32(0)
	if write {
		if in.immediateData && !o.noImmData {
			n := min(uint32(len(o.dataOut)), in.firstBurst, in.maxXmit)
			imm = o.dataOut[:n]
		}
		if !in.initialR2T && !o.noUnsol {
			unsol = min(uint32(len(o.dataOut)), in.firstBurst)
		}
	}
	f := byte(o.attr & 7)
	if uint32(len(imm)) >= unsol {
		f |= flagFinal
	}
	if o.read {
		f |= flagRead
	}
	if write {
		f |= flagWrite
	}
	h[1] = f
	h.setLUNRaw(encodeLUN(o.lun))
	h.setITT(itt)
	h.setField20(edtl)
	sn := in.cmdSN
	if o.cmdSN != nil {
		sn = *o.cmdSN
	} else if !o.immediate {
		in.cmdSN++
	}
	h.setField24(sn)
	h.setField28(in.expStatSN)
	copy(h[32:48], cdb)
	in.mustSend(&h, imm)
	if uint32(len(imm)) < unsol {
		in.sendDataOut(itt, o, uint32(len(imm)), unsol, reservedTag, 0)
	}
	return itt
}

// sendDataOut sends o.dataOut[from:to] in Data-Out PDUs.
func (in *initiator) sendDataOut(itt uint32, o cmdOpts, from, to, ttt, seq uint32) {
	in.t.Helper()
	seg := o.segment
	if seg == 0 {
		seg = in.maxXmit
	}
	sn := uint32(0)
	for off := from; off < to; {
		n := min(to-off, seg)
		var h bhs
		h.setOpcode(opDataOut, false)
		if off+n == to {
			h[1] = flagFinal
		}
		h.setLUNRaw(encodeLUN(o.lun))
		h.setITT(itt)
		h.setField20(ttt)
		h.setField28(in.expStatSN)
		dsn := sn
		if o.dataSNFunc != nil {
			dsn = o.dataSNFunc(seq, sn)
		}
		h.setField36(dsn)
		h.setField40(off)
		in.mustSend(&h, o.dataOut[off:off+n])
		sn++
		off += n
	}
}

// waitResult collects Data-In and answers R2Ts until the status arrives.
func (in *initiator) waitResult(itt uint32, o cmdOpts) (cmdResult, error) {
	var r cmdResult
	seq := uint32(1)
	for {
		h, data, err := in.recv()
		if err != nil {
			return r, err
		}
		switch h.opcode() {
		case opNopIn:
			in.answerNop(&h)
			continue
		case opR2T:
			if h.itt() != itt {
				return r, fmt.Errorf("R2T for ITT 0x%x while waiting for 0x%x", h.itt(), itt)
			}
			r.r2ts++
			off := h.field40()
			n := h.field44()
			end := min(off+n, uint32(len(o.dataOut)))
			in.sendDataOut(itt, o, off, end, h.ttt(), seq)
			seq++
			continue
		case opDataIn:
			if h.itt() != itt {
				return r, fmt.Errorf("Data-In for ITT 0x%x while waiting for 0x%x", h.itt(), itt)
			}
			if got := h.field36(); got != uint32(r.dataIns) {
				return r, fmt.Errorf("Data-In DataSN %d, want %d", got, r.dataIns)
			}
			if off := h.field40(); off != uint32(len(r.data)) {
				return r, fmt.Errorf("Data-In offset %d, want %d", off, len(r.data))
			}
			if len(data) > int(in.maxXmitRecv()) {
				return r, fmt.Errorf("Data-In of %d bytes exceeds our MaxRecvDataSegmentLength", len(data))
			}
			r.dataIns++
			r.data = append(r.data, data...)
			if h.flags()&flagStatus != 0 {
				r.statusInDI = true
				r.status = scsi.Status(h[3])
				r.flags = h.flags()
				r.residual = h.field44()
				return r, nil
			}
			continue
		case opSCSIResp:
			if h.itt() != itt {
				return r, fmt.Errorf("response for ITT 0x%x while waiting for 0x%x", h.itt(), itt)
			}
			r.status = scsi.Status(h[3])
			r.flags = h.flags()
			r.residual = h.field44()
			if len(data) >= 2 {
				n := int(binary.BigEndian.Uint16(data))
				if n > len(data)-2 {
					return r, fmt.Errorf("sense length %d in %d bytes", n, len(data))
				}
				r.sense = data[2 : 2+n]
			}
			return r, nil
		default:
			return r, fmt.Errorf("unexpected %s (reason 0x%02x) while waiting for ITT 0x%x", h.opcode(), h[2], itt)
		}
	}
}

// maxXmitRecv is the initiator's declared MaxRecvDataSegmentLength.
func (in *initiator) maxXmitRecv() uint32 {
	return in.myMRDSL
}

func (in *initiator) answerNop(h *bhs) {
	if h.itt() != reservedTag || h.ttt() == reservedTag {
		return
	}
	var o bhs
	o.setOpcode(opNopOut, true)
	o[1] = flagFinal
	o.setITT(reservedTag)
	o.setField20(h.ttt())
	o.setField24(in.cmdSN)
	o.setField28(in.expStatSN)
	in.mustSend(&o, nil)
}

// do sends a command and waits for its result.
func (in *initiator) do(cdb []byte, o cmdOpts) cmdResult {
	in.t.Helper()
	itt := in.sendCommand(cdb, o)
	r, err := in.waitResult(itt, o)
	if err != nil {
		in.t.Fatalf("command 0x%02x: %v", cdb[0], err)
	}
	return r
}

func read10(lba uint32, blocks uint16) []byte {
	cdb := make([]byte, 10)
	cdb[0] = 0x28
	binary.BigEndian.PutUint32(cdb[2:], lba)
	binary.BigEndian.PutUint16(cdb[7:], blocks)
	return cdb
}

func write10(lba uint32, blocks uint16) []byte {
	cdb := read10(lba, blocks)
	cdb[0] = 0x2a
	return cdb
}

func pattern(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = seed + byte(i*7) + byte(i>>9)
	}
	return b
}

// logout sends a Logout Request and waits for the response.
func (in *initiator) logout(reason byte) bhs {
	in.t.Helper()
	var h bhs
	h.setOpcode(opLogoutReq, true)
	h[1] = flagFinal | reason
	h.setITT(in.nextITT())
	h.setField24(in.cmdSN)
	h.setField28(in.expStatSN)
	in.mustSend(&h, nil)
	for {
		r, _ := in.mustRecv()
		if r.opcode() == opLogoutResp {
			return r
		}
	}
}

// text sends a Text request and collects the (possibly continued) answer.
func (in *initiator) text(keys string) (string, int) {
	in.t.Helper()
	itt := in.nextITT()
	ttt := uint32(reservedTag)
	data := []byte(strings.ReplaceAll(keys, ";", "\x00") + "\x00")
	var out []byte
	pdus := 0
	for {
		var h bhs
		h.setOpcode(opTextReq, false)
		h[1] = flagFinal
		h.setITT(itt)
		h.setField20(ttt)
		h.setField24(in.cmdSN)
		in.cmdSN++
		h.setField28(in.expStatSN)
		in.mustSend(&h, data)
		data = nil
		r, d := in.mustRecv()
		if r.opcode() != opTextResp {
			in.t.Fatalf("got %s, want Text-Response", r.opcode())
		}
		pdus++
		out = append(out, d...)
		if r.final() {
			if r.ttt() != reservedTag {
				in.t.Fatalf("final text response with TTT 0x%x", r.ttt())
			}
			return string(out), pdus
		}
		if r.flags()&flagContinue == 0 {
			in.t.Fatalf("text response neither final nor continued")
		}
		ttt = r.ttt()
	}
}
