package iscsi

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"time"
)

// loginStatus is the Status-Class and Status-Detail of a Login Response.
type loginStatus uint16

// Login statuses (RFC 7143 11.13.5).
const (
	statusSuccess        loginStatus = 0x0000
	statusInitiatorError loginStatus = 0x0200
	statusAuthFailure    loginStatus = 0x0201
	// 0x0202 (authorization failure) and 0x0203 (not found) are never
	// sent: they would tell an initiator which names exist (identify).
	statusUnsupportedVersion loginStatus = 0x0205
	statusMissingParameter   loginStatus = 0x0207
	statusSessionTypeUnsupp  loginStatus = 0x0209
	statusSessionNotFound    loginStatus = 0x020a
	statusInvalidDuringLogin loginStatus = 0x020b
	statusTargetError        loginStatus = 0x0300
	statusServiceUnavailable loginStatus = 0x0301
	statusOutOfResources     loginStatus = 0x0302
)

// Login stages (CSG/NSG).
const (
	stageSecurity    = 0
	stageOperational = 1
	stageFullFeature = 3
)

// Progress of the security stage.
const (
	chapStepNone      = 0 // AuthMethod not settled
	chapStepAlgorithm = 1 // waiting for CHAP_A
	chapStepResponse  = 2 // waiting for CHAP_N/CHAP_R
	chapStepDone      = 3 // authenticated, or no authentication
)

// loginError fails the login with a status.
type loginError struct {
	status loginStatus
	err    error
}

func (e *loginError) Error() string {
	return fmt.Sprintf("login failed (status 0x%04x): %v", uint16(e.status), e.err)
}

func (e *loginError) Unwrap() error { return e.err }

func failLogin(status loginStatus, format string, args ...any) error {
	return &loginError{status: status, err: fmt.Errorf(format, args...)}
}

// login is the state of one connection's login phase.
type login struct {
	c *conn
	// deadline is when the whole login must be done (the first request
	// has a shorter one, set by the caller).
	deadline time.Time
	// sess is the session once registered (for the teardown should the
	// login fail after that).
	sess *session
	// refused is why the initiator may not log in, when it may not: the
	// login then goes on as for an initiator whose CHAP secret is
	// unknown, to fail at the same step with the same status
	// (identify).
	refused error
	// started is set once the first Login Request has been seen; first
	// until the first complete request text has been handled.
	started, first bool

	isid      [6]byte
	tsih      uint16
	itt       uint32
	cid       uint16
	cmdSN     uint32
	initiator string
	target    string
	discovery bool

	stage        int
	creds        CHAP
	authRequired bool
	chapStep     int
	chap         chapAuth
	neg          *negotiator
	text         []byte
	// chapKeys collects CHAP_N, CHAP_R, CHAP_I and CHAP_C.
	chapKeys map[string]string
}

// run drives the login phase to full feature phase or failure. The
// connection has no writer goroutine yet: responses are written inline.
func (l *login) run() (*session, error) {
	c := l.c
	l.first = true
	l.neg = newNegotiator(&c.srv.cfg)
	var h bhs
	for {
		// Digests are never in force during login, so the BHS is the
		// whole header; check it before reading anything more.
		if err := c.rd.readBHS(&h); err != nil {
			return nil, fmt.Errorf("reading login request: %w", err)
		}
		if h.opcode() != opLoginReq {
			_ = l.respondFailure(statusInvalidDuringLogin)
			return nil, protoErr("%s during login", h.opcode())
		}
		if h.ahsLen() != 0 {
			_ = l.respondFailure(statusInitiatorError)
			return nil, protoErr("login request with AHS")
		}
		data, err := c.rd.readDataScratch(&h)
		if err != nil {
			return nil, fmt.Errorf("reading login request data: %w", err)
		}
		if !l.started {
			// The first request is in: the rest of the login has until
			// the login's own deadline.
			_ = c.nc.SetDeadline(l.deadline)
		}
		sess, done, err := l.step(&h, data)
		if err != nil {
			if l.refused != nil {
				err = fmt.Errorf("%w (%w)", l.refused, err)
			}
			c.endLogin()
			var le *loginError
			status := statusInitiatorError
			if errors.As(err, &le) {
				status = le.status
			}
			if werr := l.respondFailure(status); werr != nil {
				return nil, errors.Join(err, werr)
			}
			return nil, err
		}
		if done {
			return sess, nil
		}
	}
}

// step handles one Login Request PDU and writes the response. It returns
// the session once the login reached full feature phase.
func (l *login) step(h *bhs, data []byte) (*session, bool, error) {
	c := l.c
	if !l.started {
		l.started = true
		l.isid = h.isid()
		l.tsih = h.tsih()
		l.itt = h.itt()
		l.cid = h.cid()
		l.cmdSN = h.cmdSN()
		c.cid = l.cid
		c.statSN = h.expStatSN()
		c.statSNPub.Store(c.statSN)
		c.loginExpCmdSN = l.cmdSN
		c.loginMaxCmdSN = l.cmdSN + c.srv.cfg.CmdWindow - 1
		if h.versionMin() > 0 {
			return nil, false, failLogin(statusUnsupportedVersion, "initiator supports versions %d..%d, target 0", h.versionMin(), h.versionMax())
		}
		csg := h.csg()
		if csg != stageSecurity && csg != stageOperational {
			return nil, false, failLogin(statusInitiatorError, "first login request in stage %d", csg)
		}
		l.stage = csg
	} else {
		if h.isid() != l.isid || h.tsih() != l.tsih || h.cid() != l.cid {
			return nil, false, failLogin(statusInitiatorError, "ISID, TSIH or CID changed during login")
		}
		if h.csg() != l.stage {
			return nil, false, failLogin(statusInitiatorError, "login request in stage %d while in stage %d", h.csg(), l.stage)
		}
	}
	if len(l.text)+len(data) > maxTextLen {
		return nil, false, failLogin(statusInitiatorError, "login text longer than %d bytes", maxTextLen)
	}
	l.text = append(l.text, data...)
	if h.cont() {
		// More text follows: acknowledge with an empty response.
		if h.transit() {
			return nil, false, failLogin(statusInitiatorError, "login request with both C and T bits")
		}
		return nil, false, l.respond(h.itt(), false, l.stage, 0, nil)
	}
	kvs, err := parseText(l.text)
	l.text = l.text[:0]
	if err != nil {
		return nil, false, failLogin(statusInitiatorError, "login text: %v", err)
	}
	c.log.Debug("iscsi login request", "csg", h.csg(), "nsg", h.nsg(), "transit", h.transit(), "keys", kvs)

	var out textBuilder
	if l.first {
		if err := l.identify(kvs); err != nil {
			return nil, false, err
		}
		if !l.discovery {
			out.add("TargetPortalGroupTag", strconv.Itoa(int(c.srv.cfg.TPGT)))
		}
		l.first = false
	}
	for _, p := range kvs {
		switch {
		case isDeclarativeNameKey(p.Key):
			// Handled by identify in the first request; repeated later
			// they carry nothing new.
		case isSecurityKey(p.Key):
			if l.stage != stageSecurity {
				return nil, false, failLogin(statusInitiatorError, "security key %s in operational stage", p.Key)
			}
			if err := l.security(p, &out); err != nil {
				return nil, false, err
			}
		default:
			if err := l.neg.negotiate(p.Key, p.Value, &out); err != nil {
				return nil, false, failLogin(statusInitiatorError, "%v", err)
			}
		}
	}

	if err := l.finishCHAP(&out); err != nil {
		return nil, false, err
	}

	// Stage transition.
	transit := false
	nsg := 0
	if h.transit() {
		nsg = h.nsg()
		switch {
		case l.stage == stageSecurity && (nsg == stageOperational || nsg == stageFullFeature):
		case l.stage == stageOperational && nsg == stageFullFeature:
		default:
			return nil, false, failLogin(statusInitiatorError, "transition from stage %d to %d", l.stage, nsg)
		}
		transit = true
		if l.stage == stageSecurity {
			switch {
			case l.chapStep == chapStepNone && l.authRequired:
				return nil, false, failLogin(statusAuthFailure, "initiator %s left the security stage without authenticating", l.initiator)
			case l.chapStep == chapStepAlgorithm || l.chapStep == chapStepResponse:
				transit = false // CHAP still in progress
			}
		}
	}
	if !transit {
		return nil, false, l.respond(h.itt(), false, l.stage, 0, out.bytes())
	}
	if nsg != stageFullFeature {
		csg := l.stage
		l.stage = nsg
		return nil, false, l.respond(h.itt(), true, csg, nsg, out.bytes())
	}

	// Final response: the session starts.
	p := l.neg.finish(&out)
	sess := newSession(c.srv, l, p)
	old, status := c.srv.register(sess, l.tsih)
	if status != statusSuccess {
		return nil, false, failLogin(status, "registering session of %s", l.initiator)
	}
	l.sess = sess
	if old != nil {
		c.log.Info("iscsi session reinstatement", "initiator", l.initiator, "isid", isidString(l.isid), "old_tsih", old.tsih)
		old.terminate()
		<-old.ended
	}
	csg := l.stage
	l.tsih = sess.tsih
	c.endLogin()
	if err := l.respond(h.itt(), true, csg, stageFullFeature, out.bytes()); err != nil {
		sess.end() // the final response could not be sent
		return nil, false, err
	}
	return sess, true, nil
}

// identify reads the declarations of the first login request and asks the
// backend whether the initiator may log in.
func (l *login) identify(kvs []kv) error {
	sessionType := "Normal"
	for _, p := range kvs {
		switch p.Key {
		case "InitiatorName":
			l.initiator = p.Value
		case "TargetName":
			l.target = p.Value
		case "SessionType":
			sessionType = p.Value
		}
	}
	if l.initiator == "" {
		return failLogin(statusMissingParameter, "no InitiatorName")
	}
	switch sessionType {
	case "Normal":
		if l.target == "" {
			return failLogin(statusMissingParameter, "normal session without TargetName")
		}
	case "Discovery":
		l.discovery = true
		l.target = ""
	default:
		return failLogin(statusSessionTypeUnsupp, "session type %q", sessionType)
	}
	l.neg.discovery = l.discovery
	creds, err := l.c.srv.cfg.Backend.Authorize(l.target, l.initiator)
	switch {
	case errors.Is(err, ErrTargetNotFound), errors.Is(err, ErrNotAuthorized):
		// One answer for an unknown target, an unknown initiator and a
		// known one that may not log in, so that no login reveals which
		// names exist: the login goes on as for an initiator that must
		// pass CHAP with a secret nobody knows, and fails where such a
		// login fails, with authentication failure (0x0201).
		l.refused = fmt.Errorf("initiator %q to target %q: %w", l.initiator, l.target, err)
		l.c.log.Info("iscsi login refused; answering as a CHAP failure", "initiator", l.initiator, "target", l.target, "reason", err)
		creds = decoyCHAP()
	case err != nil:
		return failLogin(statusTargetError, "authorizing %q: %v", l.initiator, err)
	}
	l.creds = creds
	l.chap.creds = creds
	l.authRequired = creds.User != ""
	if l.stage != stageSecurity && l.authRequired {
		return failLogin(statusAuthFailure, "initiator %s skipped the security stage but CHAP is required", l.initiator)
	}
	return nil
}

// decoyCHAP returns credentials no initiator can prove: a random user
// name and secret, made per login.
func decoyCHAP() CHAP {
	var b [32]byte
	_, _ = rand.Read(b[:])
	return CHAP{User: "decoy-" + hex.EncodeToString(b[:8]), Secret: hex.EncodeToString(b[8:])}
}

// security handles AuthMethod and the CHAP keys.
func (l *login) security(p kv, out *textBuilder) error {
	switch p.Key {
	case "AuthMethod":
		if l.chapStep != chapStepNone {
			return failLogin(statusInitiatorError, "AuthMethod offered twice")
		}
		offers := splitList(p.Value)
		has := func(m string) bool {
			for _, o := range offers {
				if o == m {
					return true
				}
			}
			return false
		}
		switch {
		case l.authRequired && has("CHAP"):
			out.add("AuthMethod", "CHAP")
			l.chapStep = chapStepAlgorithm
		case l.authRequired:
			out.add("AuthMethod", valReject)
			return failLogin(statusAuthFailure, "initiator %s offered AuthMethod=%s, CHAP is required", l.initiator, p.Value)
		case has("None"):
			out.add("AuthMethod", "None")
			l.chapStep = chapStepDone
		default:
			out.add("AuthMethod", valReject)
			return failLogin(statusAuthFailure, "initiator %s offered AuthMethod=%s and no CHAP secret is configured", l.initiator, p.Value)
		}
	case "CHAP_A":
		if l.chapStep != chapStepAlgorithm {
			return failLogin(statusAuthFailure, "unexpected CHAP_A")
		}
		alg, ok := chooseAlgorithm(p.Value)
		if !ok {
			out.add("CHAP_A", valReject)
			return failLogin(statusAuthFailure, "no supported CHAP algorithm in %q", p.Value)
		}
		if err := l.chap.start(alg); err != nil {
			return failLogin(statusTargetError, "%v", err)
		}
		out.add("CHAP_A", strconv.Itoa(alg))
		out.add("CHAP_I", l.chap.idString())
		out.add("CHAP_C", encodeHex(l.chap.challenge))
		l.chapStep = chapStepResponse
	case "CHAP_N", "CHAP_R", "CHAP_I", "CHAP_C":
		if l.chapStep != chapStepResponse {
			return failLogin(statusAuthFailure, "unexpected %s", p.Key)
		}
		// Checked together once the PDU's keys are collected.
		return l.chapResponse(p)
	}
	return nil
}

// chapResponse collects CHAP_N, CHAP_R, CHAP_I and CHAP_C; finishCHAP
// checks them once the whole request has been read.
func (l *login) chapResponse(p kv) error {
	if l.chapKeys == nil {
		l.chapKeys = make(map[string]string, 4)
	}
	if _, dup := l.chapKeys[p.Key]; dup {
		return failLogin(statusAuthFailure, "%s sent twice", p.Key)
	}
	l.chapKeys[p.Key] = p.Value
	return nil
}

// finishCHAP verifies the initiator's CHAP_N/CHAP_R once both have come
// and answers a mutual challenge (CHAP_I and CHAP_C).
func (l *login) finishCHAP(out *textBuilder) error {
	if l.chapStep != chapStepResponse {
		return nil
	}
	k := l.chapKeys
	name, okN := k["CHAP_N"]
	resp, okR := k["CHAP_R"]
	if !okN || !okR {
		return nil
	}
	id, okI := k["CHAP_I"]
	ch, okC := k["CHAP_C"]
	if okI != okC {
		return failLogin(statusAuthFailure, "mutual CHAP needs both CHAP_I and CHAP_C")
	}
	if err := l.chap.verify(name, resp); err != nil {
		return &loginError{status: statusAuthFailure, err: err}
	}
	if okI {
		n, r, err := l.chap.mutual(id, ch)
		if err != nil {
			return &loginError{status: statusAuthFailure, err: err}
		}
		out.add("CHAP_N", n)
		out.add("CHAP_R", r)
	}
	l.chapStep = chapStepDone
	return nil
}

// respond writes a Login Response.
func (l *login) respond(itt uint32, transit bool, csg, nsg int, text []byte) error {
	var p outPDU
	p.h.setOpcode(opLoginResp, false)
	f := byte(csg&3)<<2 | byte(nsg&3)
	if transit {
		f |= flagTransit
	}
	p.h[1] = f
	p.h[2], p.h[3] = 0, 0 // version max, version active
	copy(p.h[8:14], l.isid[:])
	if transit && nsg == stageFullFeature {
		p.h[14], p.h[15] = byte(l.tsih>>8), byte(l.tsih)
	}
	p.h.setITT(itt)
	p.data = text
	p.stat = statAdvance
	return l.c.writeNow(&p)
}

// respondFailure writes a Login Response with a failure status.
func (l *login) respondFailure(status loginStatus) error {
	var p outPDU
	p.h.setOpcode(opLoginResp, false)
	copy(p.h[8:14], l.isid[:])
	p.h.setITT(l.itt)
	p.h[36] = byte(status >> 8)
	p.h[37] = byte(status)
	p.stat = statAdvance
	return l.c.writeNow(&p)
}
