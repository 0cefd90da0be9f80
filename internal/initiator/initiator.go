// Package initiator is a small iSCSI initiator: one session, one
// connection, one command at a time. The end-to-end tests use it where
// they need to know exactly which writes were acknowledged (crash tests,
// out-of-space tests) and to speak to a target in ways the standard tools
// do not (malformed PDUs, REPORT TARGET PORT GROUPS). It is deliberately
// simple: no digests, no error recovery, no multiple connections.
package initiator

import (
	"bufio"
	"context"
	"crypto/md5"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"
)

// Options for a login.
type Options struct {
	InitiatorName string
	// TargetName is empty for a discovery session.
	TargetName string
	// CHAPUser and CHAPSecret answer the target's CHAP challenge.
	CHAPUser, CHAPSecret string
	// Timeout bounds each exchange (default 30 s).
	Timeout time.Duration
	// LocalAddr is the local IP address to connect from (default: any),
	// so that tests can play hosts at different addresses on loopback.
	LocalAddr string
	// ISID is the session's initiator session id (zero: a random one).
	// A host that logs in again with the same ISID is the same SCSI
	// initiator port: it keeps its persistent reservation registrations,
	// and the target reinstates the session (ending the old one).
	ISID [6]byte
}

// Conn is a logged-in session.
type Conn struct {
	nc        net.Conn
	rd        *bufio.Reader
	opts      Options
	itt       uint32
	cmdSN     uint32
	expStatSN uint32
	isid      [6]byte
	tsih      uint16
	// negotiated
	maxSendData   int // target's MaxRecvDataSegmentLength
	firstBurst    int
	maxBurst      int
	immediateData bool
	initialR2T    bool
	// Params holds the target's final answers to the operational keys.
	Params map[string]string
}

// ErrCheckCondition is returned (wrapped in *SCSIError) for CHECK CONDITION.
var ErrCheckCondition = errors.New("check condition")

// SCSIError is a command that ended with a status other than GOOD.
type SCSIError struct {
	Status byte
	Sense  []byte
}

func (e *SCSIError) Error() string {
	if len(e.Sense) >= 14 {
		return fmt.Sprintf("SCSI status 0x%02x, sense key 0x%x ASC/ASCQ 0x%02x/0x%02x", e.Status, e.Sense[2]&0xf, e.Sense[12], e.Sense[13])
	}
	return fmt.Sprintf("SCSI status 0x%02x", e.Status)
}

// SenseKey returns the sense key, ASC and ASCQ (zeros without sense).
func (e *SCSIError) SenseKey() (key, asc, ascq byte) {
	if len(e.Sense) < 14 {
		return 0, 0, 0
	}
	return e.Sense[2] & 0xf, e.Sense[12], e.Sense[13]
}

// Dial connects to portal ("host:port") and logs in.
func Dial(ctx context.Context, portal string, opts Options) (*Conn, error) {
	if opts.Timeout == 0 {
		opts.Timeout = 30 * time.Second
	}
	var d net.Dialer
	if opts.LocalAddr != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(opts.LocalAddr)}
	}
	nc, err := d.DialContext(ctx, "tcp", portal)
	if err != nil {
		return nil, err
	}
	c := &Conn{nc: nc, rd: bufio.NewReaderSize(nc, 1<<20), opts: opts, itt: 1,
		maxSendData: 8192, firstBurst: 65536, maxBurst: 262144, Params: map[string]string{}}
	if opts.ISID != [6]byte{} {
		c.isid = opts.ISID
	} else {
		_, _ = rand.Read(c.isid[1:])
		c.isid[0] = 0x80 // random ISID format
	}
	if err := c.login(); err != nil {
		nc.Close()
		return nil, fmt.Errorf("login to %s at %s: %w", opts.TargetName, portal, err)
	}
	return c, nil
}

// Close drops the connection without logging out.
func (c *Conn) Close() error { return c.nc.Close() }

// RawConn exposes the TCP connection (tests write malformed PDUs to it).
func (c *Conn) RawConn() net.Conn { return c.nc }

type pdu struct {
	h    [48]byte
	data []byte
}

func (p *pdu) opcode() byte { return p.h[0] & 0x3f }

// consumesStatSN reports whether the PDU carries a new StatSN: responses,
// Data-In with status, rejects, and NOP-Ins that answer our pings.
func (p *pdu) consumesStatSN() bool {
	switch p.opcode() {
	case 0x21, 0x22, 0x23, 0x24, 0x26, 0x3f:
		return true
	case 0x25:
		return p.h[1]&0x01 != 0
	case 0x20:
		return binary.BigEndian.Uint32(p.h[16:20]) != 0xffffffff
	}
	return false
}

func (c *Conn) deadline() { _ = c.nc.SetDeadline(time.Now().Add(c.opts.Timeout)) }

func (c *Conn) send(h *[48]byte, data []byte) error {
	c.deadline()
	h[5], h[6], h[7] = byte(len(data)>>16), byte(len(data)>>8), byte(len(data))
	buf := make([]byte, 0, 48+len(data)+3)
	buf = append(buf, h[:]...)
	buf = append(buf, data...)
	for len(buf)%4 != 0 {
		buf = append(buf, 0)
	}
	_, err := c.nc.Write(buf)
	return err
}

func (c *Conn) recv() (*pdu, error) {
	c.deadline()
	p := &pdu{}
	if _, err := io.ReadFull(c.rd, p.h[:]); err != nil {
		return nil, err
	}
	ahs := int(p.h[4]) * 4
	n := int(p.h[5])<<16 | int(p.h[6])<<8 | int(p.h[7])
	if ahs > 0 {
		if _, err := c.rd.Discard(ahs); err != nil {
			return nil, err
		}
	}
	p.data = make([]byte, (n+3)&^3)
	if _, err := io.ReadFull(c.rd, p.data); err != nil {
		return nil, err
	}
	p.data = p.data[:n]
	if p.consumesStatSN() {
		c.expStatSN = binary.BigEndian.Uint32(p.h[24:28]) + 1
	}
	return p, nil
}

func textKV(pairs ...string) []byte {
	var b []byte
	for i := 0; i+1 < len(pairs); i += 2 {
		b = append(b, pairs[i]+"="+pairs[i+1]...)
		b = append(b, 0)
	}
	return b
}

func parseKV(data []byte) map[string]string {
	out := map[string]string{}
	for _, kv := range strings.Split(string(data), "\x00") {
		if k, v, ok := strings.Cut(kv, "="); ok {
			out[k] = v
		}
	}
	return out
}

// loginStep sends one login request and returns the target's keys.
func (c *Conn) loginStep(csg, nsg int, transit bool, kv []byte) (map[string]string, int, error) {
	var h [48]byte
	h[0] = 0x03 | 0x40
	h[1] = byte(csg<<2 | nsg)
	if transit {
		h[1] |= 0x80
	}
	copy(h[8:14], c.isid[:])
	binary.BigEndian.PutUint16(h[14:16], c.tsih)
	binary.BigEndian.PutUint32(h[16:20], c.itt)
	binary.BigEndian.PutUint32(h[24:28], c.cmdSN)
	binary.BigEndian.PutUint32(h[28:32], c.expStatSN)
	if err := c.send(&h, kv); err != nil {
		return nil, 0, err
	}
	p, err := c.recv()
	if err != nil {
		return nil, 0, err
	}
	if p.opcode() != 0x23 {
		return nil, 0, fmt.Errorf("expected a login response, got opcode 0x%02x", p.opcode())
	}
	if cls, det := p.h[36], p.h[37]; cls != 0 {
		return nil, 0, fmt.Errorf("login refused: status class 0x%02x detail 0x%02x", cls, det)
	}
	c.tsih = binary.BigEndian.Uint16(p.h[14:16])
	// The login is an immediate command: the first command after it
	// carries the ExpCmdSN the target announced.
	c.cmdSN = binary.BigEndian.Uint32(p.h[28:32])
	stage := -1
	if p.h[1]&0x80 != 0 {
		stage = int(p.h[1] & 3)
	}
	return parseKV(p.data), stage, nil
}

func (c *Conn) login() error {
	session := "Normal"
	if c.opts.TargetName == "" {
		session = "Discovery"
	}
	first := []string{"InitiatorName", c.opts.InitiatorName, "SessionType", session}
	if c.opts.TargetName != "" {
		first = append(first, "TargetName", c.opts.TargetName)
	}
	auth := "None"
	if c.opts.CHAPUser != "" {
		auth = "CHAP,None"
	}
	kv, stage, err := c.loginStep(0, 1, c.opts.CHAPUser == "", textKV(append(first, "AuthMethod", auth)...))
	if err != nil {
		return err
	}
	if kv["AuthMethod"] == "CHAP" {
		kv, _, err = c.loginStep(0, 1, false, textKV("CHAP_A", "5"))
		if err != nil {
			return err
		}
		id, err := strconv.Atoi(kv["CHAP_I"])
		if err != nil {
			return fmt.Errorf("CHAP: bad CHAP_I %q", kv["CHAP_I"])
		}
		chal, err := hex.DecodeString(strings.TrimPrefix(strings.ToLower(kv["CHAP_C"]), "0x"))
		if err != nil {
			return fmt.Errorf("CHAP: bad CHAP_C")
		}
		h := md5.New()
		h.Write([]byte{byte(id)})
		h.Write([]byte(c.opts.CHAPSecret))
		h.Write(chal)
		_, stage, err = c.loginStep(0, 1, true, textKV("CHAP_N", c.opts.CHAPUser, "CHAP_R", "0x"+hex.EncodeToString(h.Sum(nil))))
		if err != nil {
			return err
		}
	}
	if stage != 1 {
		// Target stayed in security negotiation without asking for CHAP.
		if _, _, err = c.loginStep(0, 1, true, nil); err != nil {
			return err
		}
	}
	ops := []string{"HeaderDigest", "None", "DataDigest", "None", "MaxRecvDataSegmentLength", "262144",
		"DefaultTime2Wait", "0", "DefaultTime2Retain", "0", "ErrorRecoveryLevel", "0"}
	if session == "Normal" {
		ops = append(ops, "InitialR2T", "No", "ImmediateData", "Yes", "MaxBurstLength", "262144",
			"FirstBurstLength", "65536", "MaxOutstandingR2T", "1", "MaxConnections", "1",
			"DataPDUInOrder", "Yes", "DataSequenceInOrder", "Yes")
	}
	kv, stage, err = c.loginStep(1, 3, true, textKV(ops...))
	if err != nil {
		return err
	}
	for stage != 3 {
		var more map[string]string
		if more, stage, err = c.loginStep(1, 3, true, nil); err != nil {
			return err
		}
		for k, v := range more {
			kv[k] = v
		}
	}
	c.Params = kv
	num := func(key string, def int) int {
		if n, err := strconv.Atoi(kv[key]); err == nil {
			return n
		}
		return def
	}
	c.maxSendData = num("MaxRecvDataSegmentLength", 8192)
	c.firstBurst = num("FirstBurstLength", 65536)
	c.maxBurst = num("MaxBurstLength", 262144)
	c.immediateData = kv["ImmediateData"] != "No"
	c.initialR2T = kv["InitialR2T"] == "Yes"
	return nil
}

// Logout ends the session cleanly and closes the connection.
func (c *Conn) Logout() error {
	defer c.nc.Close()
	var h [48]byte
	h[0] = 0x06 | 0x40
	h[1] = 0x80
	c.itt++
	binary.BigEndian.PutUint32(h[16:20], c.itt)
	binary.BigEndian.PutUint32(h[24:28], c.cmdSN)
	binary.BigEndian.PutUint32(h[28:32], c.expStatSN)
	if err := c.send(&h, nil); err != nil {
		return err
	}
	for {
		p, err := c.recv()
		if err != nil {
			return err
		}
		if p.opcode() == 0x26 {
			return nil
		}
	}
}

// SendTargets asks a (discovery) session for all targets; it returns the
// raw key=value pairs in order (TargetName, TargetAddress, ...).
func (c *Conn) SendTargets() ([]string, error) {
	var h [48]byte
	h[0] = 0x04 | 0x40
	h[1] = 0x80
	c.itt++
	binary.BigEndian.PutUint32(h[16:20], c.itt)
	binary.BigEndian.PutUint32(h[20:24], 0xffffffff)
	binary.BigEndian.PutUint32(h[24:28], c.cmdSN)
	binary.BigEndian.PutUint32(h[28:32], c.expStatSN)
	if err := c.send(&h, textKV("SendTargets", "All")); err != nil {
		return nil, err
	}
	var out []string
	for {
		p, err := c.recv()
		if err != nil {
			return nil, err
		}
		if p.opcode() != 0x24 {
			continue
		}
		for _, kv := range strings.Split(string(p.data), "\x00") {
			if kv != "" {
				out = append(out, kv)
			}
		}
		if p.h[1]&0x80 != 0 {
			return out, nil
		}
		// Continue: ask for the rest with the target's TTT.
		var h2 [48]byte
		h2[0] = 0x04 | 0x40
		h2[1] = 0x80
		copy(h2[16:20], h[16:20])
		copy(h2[20:24], p.h[20:24])
		binary.BigEndian.PutUint32(h2[24:28], c.cmdSN)
		binary.BigEndian.PutUint32(h2[28:32], c.expStatSN)
		if err := c.send(&h2, nil); err != nil {
			return nil, err
		}
	}
}

// Raw PDU access, for tests that play a hostile or broken host: they
// build headers themselves and need the session's numbering.

// NextCmdSN returns the CmdSN for the next numbered PDU and advances it.
func (c *Conn) NextCmdSN() uint32 {
	sn := c.cmdSN
	c.cmdSN++
	return sn
}

// CmdSN is the CmdSN the next numbered PDU will carry, without advancing.
func (c *Conn) CmdSN() uint32 { return c.cmdSN }

// ExpStatSN is the StatSN the initiator expects next.
func (c *Conn) ExpStatSN() uint32 { return c.expStatSN }

// SendPDU writes one PDU as given (its data segment length is set from
// data, which is padded); nothing else in the header is changed.
func (c *Conn) SendPDU(h *[48]byte, data []byte) error { return c.send(h, data) }

// RecvPDU reads one PDU and returns its header and data segment.
func (c *Conn) RecvPDU() (h [48]byte, data []byte, err error) {
	p, err := c.recv()
	if err != nil {
		return h, nil, err
	}
	return p.h, p.data, nil
}
