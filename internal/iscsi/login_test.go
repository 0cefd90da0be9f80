package iscsi

import (
	"encoding/binary"
	"errors"
	"strings"
	"testing"
)

func wantStatus(t *testing.T, err error, want loginStatus) {
	t.Helper()
	var lf *loginFailure
	if !errors.As(err, &lf) {
		t.Fatalf("login error %v, want status 0x%04x", err, uint16(want))
	}
	if lf.status != want {
		t.Fatalf("login status 0x%04x, want 0x%04x", uint16(lf.status), uint16(want))
	}
}

func TestLoginNormal(t *testing.T) {
	h := newHarness(t, nil)
	in := h.dial()
	keys := in.mustLogin(loginOpts{})
	if keys["TargetPortalGroupTag"] != "1" {
		t.Errorf("TargetPortalGroupTag = %q", keys["TargetPortalGroupTag"])
	}
	if keys["MaxRecvDataSegmentLength"] != "262144" {
		t.Errorf("MaxRecvDataSegmentLength = %q", keys["MaxRecvDataSegmentLength"])
	}
	if keys["InitialR2T"] != "No" || keys["ImmediateData"] != "Yes" || keys["FirstBurstLength"] != "65536" {
		t.Errorf("keys %v", keys)
	}
	if in.tsih == 0 {
		t.Fatal("no TSIH assigned")
	}
	r := in.do([]byte{0, 0, 0, 0, 0, 0}, cmdOpts{})
	if r.status != 0 {
		t.Fatalf("TUR status %d", r.status)
	}
	ss := h.srv.Sessions()
	if len(ss) != 1 {
		t.Fatalf("%d sessions", len(ss))
	}
	s := ss[0]
	if s.InitiatorName != testInitiator || s.Target != testTarget || s.TSIH != in.tsih || s.ISID != "801234560001" || s.HeaderDigest != "None" || s.Discovery {
		t.Errorf("session info %+v", s)
	}
	cmds := h.exec.commands()
	n := cmds[0].Nexus
	if n.InitiatorPort != testInitiator+",i,0x801234560001" || n.TargetPort != testTarget+",t,0x0001" || n.RelativePortID != 7 || n.InitiatorName != testInitiator {
		t.Errorf("nexus %+v", n)
	}
	lr := in.logout(logoutCloseSession)
	if lr[2] != logoutOK {
		t.Fatalf("logout response %d", lr[2])
	}
	in.expectClosed()
	h.stop()
	if h.exec.lostCount() != 1 {
		t.Errorf("NexusLost called %d times", h.exec.lostCount())
	}
	if len(h.srv.Sessions()) != 0 {
		t.Error("session still listed after logout")
	}
}

func TestLoginSkipSecurityStage(t *testing.T) {
	h := newHarness(t, nil)
	in := h.dial()
	in.mustLogin(loginOpts{skipSecurity: true})
	if r := in.do([]byte{0, 0, 0, 0, 0, 0}, cmdOpts{}); r.status != 0 {
		t.Fatalf("status %d", r.status)
	}
}

func TestLoginDirectToFullFeature(t *testing.T) {
	h := newHarness(t, nil)
	in := h.dial()
	hdr, keys, err := in.loginExchange(stageSecurity, stageFullFeature, true, []kv{
		{"InitiatorName", in.name}, {"TargetName", testTarget}, {"AuthMethod", "None"},
	})
	if err != nil {
		t.Fatal(err)
	}
	if !hdr.transit() || hdr.nsg() != stageFullFeature || hdr.tsih() == 0 || keys["TargetPortalGroupTag"] != "1" {
		t.Fatalf("flags 0x%02x tsih %d keys %v", hdr[1], hdr.tsih(), keys)
	}
}

func TestLoginFailures(t *testing.T) {
	h := newHarness(t, nil)
	h.backend.denied["iqn.2024-01.test.host:denied"] = true

	in := h.dial()
	_, _, err := in.loginExchange(stageSecurity, stageOperational, true, []kv{{"TargetName", testTarget}})
	wantStatus(t, err, statusMissingParameter)
	in.expectClosed()

	in = h.dial()
	_, _, err = in.loginExchange(stageSecurity, stageOperational, true, []kv{{"InitiatorName", in.name}})
	wantStatus(t, err, statusMissingParameter)

	in = h.dial()
	_, err = in.login(loginOpts{target: "iqn.2024-01.test.metro:nope"})
	wantStatus(t, err, statusAuthFailure)

	in = h.dial()
	in.name = "iqn.2024-01.test.host:denied"
	_, err = in.login(loginOpts{})
	wantStatus(t, err, statusAuthFailure)

	in = h.dial()
	_, _, err = in.loginExchange(stageSecurity, stageOperational, true, []kv{{"InitiatorName", in.name}, {"SessionType", "Bogus"}})
	wantStatus(t, err, statusSessionTypeUnsupp)

	// Version 1 only.
	in = h.dial()
	var hdr bhs
	hdr.setOpcode(opLoginReq, true)
	hdr[1] = flagTransit | 1
	hdr[2], hdr[3] = 2, 1
	var tb textBuilder
	tb.add("InitiatorName", in.name)
	tb.add("TargetName", testTarget)
	in.mustSend(&hdr, tb.bytes())
	r, _ := in.mustRecv()
	if st := binary.BigEndian.Uint16(r[36:38]); st != uint16(statusUnsupportedVersion) {
		t.Errorf("version status 0x%04x", st)
	}

	// Bad stage transition: operational -> security.
	in = h.dial()
	_, _, err = in.loginExchange(stageOperational, stageSecurity, true, []kv{{"InitiatorName", in.name}, {"TargetName", testTarget}})
	wantStatus(t, err, statusInitiatorError)

	// A non-login PDU during login.
	in = h.dial()
	var nop bhs
	nop.setOpcode(opNopOut, true)
	nop[1] = flagFinal
	in.mustSend(&nop, nil)
	r, _ = in.mustRecv()
	if st := binary.BigEndian.Uint16(r[36:38]); r.opcode() != opLoginResp || st != uint16(statusInvalidDuringLogin) {
		t.Errorf("got %s status 0x%04x", r.opcode(), st)
	}
	in.expectClosed()

	// Security keys in the operational stage.
	in = h.dial()
	_, _, err = in.loginExchange(stageOperational, stageFullFeature, true, []kv{{"InitiatorName", in.name}, {"TargetName", testTarget}, {"CHAP_A", "5"}})
	wantStatus(t, err, statusInitiatorError)

	// A key offered twice.
	in = h.dial()
	_, _, err = in.loginExchange(stageOperational, stageFullFeature, true, []kv{{"InitiatorName", in.name}, {"TargetName", testTarget}, {"MaxBurstLength", "512"}, {"MaxBurstLength", "1024"}})
	wantStatus(t, err, statusInitiatorError)

	// Malformed text.
	in = h.dial()
	in.loginReq(stageOperational, stageFullFeature, true, []byte("InitiatorName\x00"))
	r, _ = in.mustRecv()
	if st := binary.BigEndian.Uint16(r[36:38]); st != uint16(statusInitiatorError) {
		t.Errorf("malformed text status 0x%04x", st)
	}

	if n := len(h.srv.Sessions()); n != 0 {
		t.Errorf("%d sessions after failed logins", n)
	}
	// The server still works.
	in = h.dial()
	in.mustLogin(loginOpts{})
}

func TestLoginTextContinuation(t *testing.T) {
	h := newHarness(t, nil)
	in := h.dial()
	var tb textBuilder
	tb.add("InitiatorName", in.name)
	tb.add("TargetName", testTarget)
	tb.add("SessionType", "Normal")
	tb.add("X-padding", strings.Repeat("p", 200))
	tb.add("MaxBurstLength", "131072")
	text := tb.bytes()
	split := 37 // in the middle of a key
	var hdr bhs
	hdr.setOpcode(opLoginReq, true)
	hdr[1] = flagContinue | byte(stageOperational)<<2 | stageFullFeature
	copy(hdr[8:14], in.isid[:])
	in.mustSend(&hdr, text[:split])
	r, d := in.mustRecv()
	if r.opcode() != opLoginResp || binary.BigEndian.Uint16(r[36:38]) != 0 || len(d) != 0 || r.transit() {
		t.Fatalf("continuation ack: %s status 0x%04x data %q flags 0x%02x", r.opcode(), binary.BigEndian.Uint16(r[36:38]), d, r[1])
	}
	hdr[1] = flagTransit | byte(stageOperational)<<2 | stageFullFeature
	in.mustSend(&hdr, text[split:])
	r, d = in.mustRecv()
	if st := binary.BigEndian.Uint16(r[36:38]); st != 0 || !r.transit() || r.nsg() != stageFullFeature {
		t.Fatalf("final: status 0x%04x flags 0x%02x", st, r[1])
	}
	kvs, _ := parseText(d)
	got := map[string]string{}
	for _, p := range kvs {
		got[p.Key] = p.Value
	}
	if got["MaxBurstLength"] != "131072" || got["X-padding"] != "NotUnderstood" {
		t.Errorf("keys %v", got)
	}
}

func TestLoginCHAP(t *testing.T) {
	h := newHarness(t, nil)
	h.backend.chap[testInitiator] = CHAP{User: "alice", Secret: "alice-secret-12", MutualUser: "array1", MutualSecret: "array-secret-12"}

	in := h.dial()
	in.mustLogin(loginOpts{chapUser: "alice", chapSecret: "alice-secret-12"})
	if r := in.do([]byte{0, 0, 0, 0, 0, 0}, cmdOpts{}); r.status != 0 {
		t.Fatalf("status %d", r.status)
	}

	in = h.dial()
	in.isid[5] = 2
	in.mustLogin(loginOpts{chapUser: "alice", chapSecret: "alice-secret-12", mutualSecret: "array-secret-12"})

	in = h.dial()
	in.isid[5] = 3
	_, err := in.login(loginOpts{chapUser: "alice", chapSecret: "wrong-secret"})
	wantStatus(t, err, statusAuthFailure)
	in.expectClosed()

	in = h.dial()
	in.isid[5] = 4
	_, err = in.login(loginOpts{chapUser: "mallory", chapSecret: "alice-secret-12"})
	wantStatus(t, err, statusAuthFailure)

	in = h.dial()
	in.isid[5] = 5
	_, err = in.login(loginOpts{chapUser: "alice", chapSecret: "alice-secret-12", mutualSecret: "array-secret-12", mutualReflect: true})
	wantStatus(t, err, statusAuthFailure)

	// CHAP required, only None offered.
	in = h.dial()
	in.isid[5] = 6
	_, err = in.login(loginOpts{})
	wantStatus(t, err, statusAuthFailure)

	// CHAP required, security stage skipped.
	in = h.dial()
	in.isid[5] = 7
	_, err = in.login(loginOpts{skipSecurity: true})
	wantStatus(t, err, statusAuthFailure)

	// Mutual CHAP asked for, not configured.
	h.backend.chap[testInitiator] = CHAP{User: "alice", Secret: "alice-secret-12"}
	in = h.dial()
	in.isid[5] = 8
	_, err = in.login(loginOpts{chapUser: "alice", chapSecret: "alice-secret-12", mutualSecret: "x"})
	wantStatus(t, err, statusAuthFailure)

	// Unsupported CHAP algorithm.
	in = h.dial()
	in.isid[5] = 9
	_, _, err = in.loginExchange(stageSecurity, stageOperational, true, []kv{{"InitiatorName", in.name}, {"TargetName", testTarget}, {"AuthMethod", "CHAP"}})
	if err != nil {
		t.Fatal(err)
	}
	_, _, err = in.loginExchange(stageSecurity, stageOperational, false, []kv{{"CHAP_A", "1,2"}})
	wantStatus(t, err, statusAuthFailure)

	if n := len(h.srv.Sessions()); n != 2 {
		t.Errorf("%d sessions, want 2", n)
	}
}

func TestLoginDigestsAndIO(t *testing.T) {
	h := newHarness(t, nil)
	in := h.dial()
	keys := in.mustLogin(loginOpts{keys: []kv{{"HeaderDigest", "CRC32C,None"}, {"DataDigest", "CRC32C"}}})
	if keys["HeaderDigest"] != "CRC32C" || keys["DataDigest"] != "CRC32C" {
		t.Fatalf("digests %v", keys)
	}
	data := pattern(8192, 1)
	if r := in.do(write10(0, 16), cmdOpts{dataOut: data}); r.status != 0 {
		t.Fatalf("write status %d", r.status)
	}
	r := in.do(read10(0, 16), cmdOpts{read: true, edtl: 8192})
	if r.status != 0 || string(r.data) != string(data) {
		t.Fatalf("read back status %d, %d bytes", r.status, len(r.data))
	}
	if s := h.srv.Sessions()[0]; s.HeaderDigest != "CRC32C" || s.DataDigest != "CRC32C" {
		t.Errorf("session info %+v", s)
	}
}

func TestDiscovery(t *testing.T) {
	h := newHarness(t, nil)
	in := h.dial()
	keys := in.mustLogin(loginOpts{discovery: true, keys: []kv{{"InitialR2T", "No"}}})
	if _, ok := keys["TargetPortalGroupTag"]; ok {
		t.Error("TargetPortalGroupTag sent in a discovery session")
	}
	if keys["InitialR2T"] != "Irrelevant" {
		t.Errorf("InitialR2T = %q in discovery", keys["InitialR2T"])
	}
	got, _ := in.text("SendTargets=All")
	want := "TargetName=" + testTarget + "\x00TargetAddress=10.0.0.1:3260,1\x00TargetName=" + testTarget2 + "\x00TargetAddress=pipe,1\x00"
	if got != want {
		t.Errorf("SendTargets=All:\n got %q\nwant %q", got, want)
	}
	got, _ = in.text("SendTargets=" + testTarget2)
	if got != "TargetName="+testTarget2+"\x00TargetAddress=pipe,1\x00" {
		t.Errorf("SendTargets=name: %q", got)
	}
	got, _ = in.text("SendTargets=iqn.none")
	if got != "" {
		t.Errorf("SendTargets=unknown: %q", got)
	}
	got, _ = in.text("X-foo=bar")
	if got != "X-foo=NotUnderstood\x00" {
		t.Errorf("unknown key: %q", got)
	}
	// SCSI commands are not allowed in a discovery session.
	itt := in.sendCommand([]byte{0, 0, 0, 0, 0, 0}, cmdOpts{})
	r, _ := in.mustRecv()
	if r.opcode() != opReject || r[2] != rejectProtocolError {
		t.Errorf("SCSI command in discovery: %s reason 0x%02x (itt 0x%x)", r.opcode(), r[2], itt)
	}
	if ss := h.srv.Sessions(); len(ss) != 1 || !ss[0].Discovery {
		t.Errorf("sessions %+v", ss)
	}
	if lr := in.logout(logoutCloseSession); lr[2] != 0 {
		t.Fatal("logout failed")
	}
	in.expectClosed()
	h.stop()
	if n := h.exec.lostCount(); n != 0 {
		t.Errorf("NexusLost called %d times for a discovery session", n)
	}
}

func TestDiscoveryLongAnswer(t *testing.T) {
	h := newHarness(t, nil)
	h.backend.targets = nil
	for i := range 200 {
		h.backend.targets = append(h.backend.targets, TargetInfo{Name: "iqn.2024-01.test.metro:t" + strings.Repeat("x", 20) + string(rune('a'+i%26)) + itoa3(i)})
	}
	in := h.dial()
	in.mustLogin(loginOpts{discovery: true, keys: []kv{{"MaxRecvDataSegmentLength", "512"}}})
	got, pdus := in.text("SendTargets=All")
	if pdus < 2 {
		t.Fatalf("answer in %d PDU(s), want continuation", pdus)
	}
	if n := strings.Count(got, "TargetName="); n != 200 {
		t.Fatalf("%d targets in the answer", n)
	}
	// Normal session: SendTargets= (empty) gives the session's target.
	in2 := h.dial()
	in2.isid[5] = 9
	h.backend.targets = append(h.backend.targets, TargetInfo{Name: testTarget})
	in2.mustLogin(loginOpts{})
	got, _ = in2.text("SendTargets=")
	if got != "TargetName="+testTarget+"\x00TargetAddress=pipe,1\x00" {
		t.Errorf("normal-session SendTargets=: %q", got)
	}
}

func itoa3(i int) string {
	return string([]byte{byte('0' + i/100), byte('0' + i/10%10), byte('0' + i%10)})
}

func TestTextRequestContinuation(t *testing.T) {
	h := newHarness(t, nil)
	in := h.dial()
	in.mustLogin(loginOpts{discovery: true})
	itt := in.nextITT()
	var hdr bhs
	hdr.setOpcode(opTextReq, true)
	hdr[1] = flagContinue
	hdr.setITT(itt)
	hdr.setField20(reservedTag)
	hdr.setField24(in.cmdSN)
	in.mustSend(&hdr, []byte("SendTar"))
	r, d := in.mustRecv()
	if r.opcode() != opTextResp || len(d) != 0 || r.final() || r.ttt() == reservedTag {
		t.Fatalf("ack %s flags 0x%02x ttt 0x%x data %q", r.opcode(), r[1], r.ttt(), d)
	}
	hdr[1] = flagFinal
	hdr.setField20(r.ttt())
	in.mustSend(&hdr, []byte("gets="+testTarget2+"\x00"))
	r, d = in.mustRecv()
	if !r.final() || string(d) != "TargetName="+testTarget2+"\x00TargetAddress=pipe,1\x00" {
		t.Fatalf("answer flags 0x%02x %q", r[1], d)
	}
	// A continuation with a stale TTT is rejected.
	in.mustSend(&hdr, nil)
	r, _ = in.mustRecv()
	if r.opcode() != opReject || r[2] != rejectInvalidField {
		t.Fatalf("stale TTT: %s reason 0x%02x", r.opcode(), r[2])
	}
}
