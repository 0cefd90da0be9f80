package iscsi

import (
	"fmt"
	"strconv"
)

// params are the negotiated operational parameters of a session and its
// connection (RFC 7143 section 13), starting at the RFC defaults.
type params struct {
	HeaderDigest, DataDigest bool
	// MaxXmitDataSegment is the initiator's declared
	// MaxRecvDataSegmentLength: the most the target may send in one PDU.
	MaxXmitDataSegment uint32
	// MaxRecvDataSegment is what the target declared.
	MaxRecvDataSegment uint32
	MaxBurstLength     uint32
	FirstBurstLength   uint32
	InitialR2T         bool
	ImmediateData      bool
	MaxOutstandingR2T  uint32
	DefaultTime2Wait   uint32
	DefaultTime2Retain uint32
	MaxConnections     uint32
	ErrorRecovery      uint32
}

func defaultParams() params {
	return params{
		MaxXmitDataSegment: 8192,
		MaxRecvDataSegment: 8192,
		MaxBurstLength:     262144,
		FirstBurstLength:   65536,
		InitialR2T:         true,
		ImmediateData:      true,
		MaxOutstandingR2T:  1,
		DefaultTime2Wait:   2,
		DefaultTime2Retain: 20,
		MaxConnections:     1,
	}
}

// Target-side preferences for the negotiated keys.
const (
	targetTime2Wait   = 2
	targetTime2Retain = 0
)

// negotiator applies the initiator's offered operational keys to params
// and builds the target's answers. It is used across all login PDUs of a
// connection so a key offered twice is detected.
type negotiator struct {
	cfg       *Config
	discovery bool
	p         params
	seen      map[string]bool
	// declaredMRDSL is set once the target has declared its
	// MaxRecvDataSegmentLength.
	declaredMRDSL bool
}

func newNegotiator(cfg *Config) *negotiator {
	return &negotiator{cfg: cfg, p: defaultParams(), seen: make(map[string]bool)}
}

// keys handled by the login state machine rather than the negotiator.
func isSecurityKey(k string) bool {
	switch k {
	case "AuthMethod", "CHAP_A", "CHAP_I", "CHAP_C", "CHAP_N", "CHAP_R":
		return true
	}
	return false
}

func isDeclarativeNameKey(k string) bool {
	switch k {
	case "InitiatorName", "InitiatorAlias", "TargetName", "SessionType":
		return true
	}
	return false
}

// normalOnly lists keys irrelevant in a discovery session.
func normalOnly(k string) bool {
	switch k {
	case "MaxConnections", "InitialR2T", "ImmediateData", "MaxBurstLength",
		"FirstBurstLength", "MaxOutstandingR2T", "DataPDUInOrder", "DataSequenceInOrder":
		return true
	}
	return false
}

// negotiate handles one operational key offered by the initiator and
// adds the answer (if one is due) to out. It returns an error for a
// violation that fails the login (a key offered twice).
func (n *negotiator) negotiate(key, value string, out *textBuilder) error {
	if n.seen[key] {
		return fmt.Errorf("key %s offered twice", key)
	}
	n.seen[key] = true
	switch value {
	case valNotUnderstood, valIrrelevant, valReject:
		// An answer to something the target offered; the target only
		// offers declaratives, so there is nothing to do.
		return nil
	}
	if n.discovery && normalOnly(key) {
		out.add(key, valIrrelevant)
		return nil
	}
	switch key {
	case "HeaderDigest", "DataDigest":
		choice := ""
		for _, v := range splitList(value) {
			if v == "None" || v == "CRC32C" {
				choice = v
				break
			}
		}
		if choice == "" {
			out.add(key, valReject)
			return nil
		}
		if key == "HeaderDigest" {
			n.p.HeaderDigest = choice == "CRC32C"
		} else {
			n.p.DataDigest = choice == "CRC32C"
		}
		out.add(key, choice)
	case "MaxRecvDataSegmentLength":
		v, ok := numberIn(value, 512, maxDataSegment)
		if !ok {
			out.add(key, valReject)
			return nil
		}
		n.p.MaxXmitDataSegment = uint32(v)
		n.declare(out)
	case "MaxBurstLength":
		v, ok := numberIn(value, 512, maxDataSegment)
		if !ok {
			out.add(key, valReject)
			return nil
		}
		n.p.MaxBurstLength = min(uint32(v), n.cfg.MaxBurstLength)
		out.add(key, strconv.FormatUint(uint64(n.p.MaxBurstLength), 10))
	case "FirstBurstLength":
		v, ok := numberIn(value, 512, maxDataSegment)
		if !ok {
			out.add(key, valReject)
			return nil
		}
		n.p.FirstBurstLength = min(uint32(v), n.cfg.FirstBurstLength)
		out.add(key, strconv.FormatUint(uint64(n.p.FirstBurstLength), 10))
	case "InitialR2T":
		v, ok := boolValue(value)
		if !ok {
			out.add(key, valReject)
			return nil
		}
		n.p.InitialR2T = v // OR with the target's No
		out.add(key, yesNo(n.p.InitialR2T))
	case "ImmediateData":
		v, ok := boolValue(value)
		if !ok {
			out.add(key, valReject)
			return nil
		}
		n.p.ImmediateData = v // AND with the target's Yes
		out.add(key, yesNo(n.p.ImmediateData))
	case "MaxOutstandingR2T":
		if _, ok := numberIn(value, 1, 65535); !ok {
			out.add(key, valReject)
			return nil
		}
		n.p.MaxOutstandingR2T = 1
		out.add(key, "1")
	case "MaxConnections":
		if _, ok := numberIn(value, 1, 65535); !ok {
			out.add(key, valReject)
			return nil
		}
		n.p.MaxConnections = 1
		out.add(key, "1")
	case "ErrorRecoveryLevel":
		if _, ok := numberIn(value, 0, 2); !ok {
			out.add(key, valReject)
			return nil
		}
		n.p.ErrorRecovery = 0
		out.add(key, "0")
	case "DefaultTime2Wait":
		v, ok := numberIn(value, 0, 3600)
		if !ok {
			out.add(key, valReject)
			return nil
		}
		n.p.DefaultTime2Wait = max(uint32(v), targetTime2Wait)
		out.add(key, strconv.FormatUint(uint64(n.p.DefaultTime2Wait), 10))
	case "DefaultTime2Retain":
		v, ok := numberIn(value, 0, 3600)
		if !ok {
			out.add(key, valReject)
			return nil
		}
		n.p.DefaultTime2Retain = min(uint32(v), targetTime2Retain)
		out.add(key, strconv.FormatUint(uint64(n.p.DefaultTime2Retain), 10))
	case "DataPDUInOrder", "DataSequenceInOrder":
		if _, ok := boolValue(value); !ok {
			out.add(key, valReject)
			return nil
		}
		out.add(key, "Yes") // OR with the target's Yes
	case "IFMarker", "OFMarker":
		if _, ok := boolValue(value); !ok {
			out.add(key, valReject)
			return nil
		}
		out.add(key, "No") // AND with the target's No
	case "IFMarkInt", "OFMarkInt":
		out.add(key, valReject)
	case "TargetAlias", "TargetAddress", "TargetPortalGroupTag":
		// Target declaratives: an initiator must not send them.
		out.add(key, valReject)
	case "SendTargets":
		// Only valid in a Text request in full feature phase.
		out.add(key, valIrrelevant)
	default:
		out.add(key, valNotUnderstood)
	}
	return nil
}

// declare adds the target's MaxRecvDataSegmentLength declaration once.
func (n *negotiator) declare(out *textBuilder) {
	if n.declaredMRDSL {
		return
	}
	n.declaredMRDSL = true
	n.p.MaxRecvDataSegment = n.cfg.MaxRecvDataSegmentLength
	out.add("MaxRecvDataSegmentLength", strconv.FormatUint(uint64(n.cfg.MaxRecvDataSegmentLength), 10))
}

// finish completes the parameters when the login moves to full feature
// phase: the target's declaration always applies and FirstBurstLength may
// not exceed MaxBurstLength.
func (n *negotiator) finish(out *textBuilder) params {
	n.declare(out)
	if n.p.FirstBurstLength > n.p.MaxBurstLength {
		n.p.FirstBurstLength = n.p.MaxBurstLength
	}
	return n.p
}

func numberIn(s string, lo, hi uint64) (uint64, bool) {
	v, err := parseNumber(s)
	if err != nil || v < lo || v > hi {
		return 0, false
	}
	return v, true
}

func boolValue(s string) (bool, bool) {
	switch s {
	case "Yes":
		return true, true
	case "No":
		return false, true
	}
	return false, false
}

func yesNo(b bool) string {
	if b {
		return "Yes"
	}
	return "No"
}

func digestName(on bool) string {
	if on {
		return "CRC32C"
	}
	return "None"
}
