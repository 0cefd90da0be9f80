package iscsi

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"

	"github.com/metro-storage/metro/internal/scsi"
)

// Task management is confined to the logical units of the caller: hosts
// that share an array must not abort one another's I/O, release one
// another's reservations or close one another's sessions.

const (
	host1 = "iqn.2024-01.test.host:one"
	host2 = "iqn.2024-01.test.host:two"
	host3 = "iqn.2024-01.test.host:three"
	host4 = "iqn.2024-01.test.host:four"
)

// unitExec is a fakeExec that names logical units (LogicalUnits) from a
// fixed LUN masking: units[initiator][lun].
type unitExec struct {
	*fakeExec
	units   map[string]map[uint64]string
	cleared chan tmfCall // TasksCleared calls
}

func (e *unitExec) LogicalUnitOf(n scsi.Nexus, lun uint64) (string, bool) {
	u, ok := e.units[n.InitiatorName][lun]
	return u, ok
}

func (e *unitExec) LogicalUnitsOf(n scsi.Nexus) []string {
	var out []string
	for _, u := range e.units[n.InitiatorName] {
		out = append(out, u)
	}
	return out
}

func (e *unitExec) TasksCleared(n scsi.Nexus, lun uint64) {
	e.cleared <- tmfCall{nexus: n, lun: lun}
}

// dialAs logs in as initiator name with extra login keys.
func (h *harness) dialAs(name string, keys ...kv) *initiator {
	h.t.Helper()
	in := h.dial()
	in.name = name
	in.mustLogin(loginOpts{keys: keys})
	return in
}

// sync returns once the target has read every PDU sent so far: it
// answers an immediate NOP-Out ping after them.
func (in *initiator) sync() {
	in.t.Helper()
	itt := in.nextITT()
	in.sendNop(itt, nil, true, in.cmdSN)
	in.until(func(h *bhs) bool { return h.opcode() == opNopIn && h.itt() == itt })
}

// responsesUntil reads until the SCSI Response for itt and returns the
// ITTs of the SCSI Responses that came before it (all the responses of
// the session's earlier tasks when itt is an ORDERED task).
func (in *initiator) responsesUntil(itt uint32) []uint32 {
	in.t.Helper()
	var before []uint32
	for {
		h, _ := in.mustRecv()
		if h.opcode() != opSCSIResp {
			continue
		}
		if h.itt() == itt {
			return before
		}
		before = append(before, h.itt())
	}
}

// TestLogicalUnitTMFsFollowTheUnit: host1 and host2 both see a volume at
// LUN 0, different volumes; host3 sees host1's volume at LUN 5. A LOGICAL
// UNIT RESET or CLEAR TASK SET from host1 on its LUN 0 drops host3's
// queued write (same unit, other number) and leaves host2's alone (other
// unit, same number).
func TestLogicalUnitTMFsFollowTheUnit(t *testing.T) {
	for _, fn := range []scsi.TMF{scsi.LogicalUnitReset, scsi.ClearTaskSet} {
		t.Run(fmt.Sprint("tmf", uint8(fn)), func(t *testing.T) {
			exec := &unitExec{
				fakeExec: newFakeExec(),
				units: map[string]map[uint64]string{
					host1: {0: "A"},
					host2: {0: "B"},
					host3: {5: "A"},
				},
				cleared: make(chan tmfCall, 4),
			}
			h := newHarness(t, func(c *Config) { c.Executor = exec })
			// host2's write waits in the task set behind an ORDERED
			// command that the executor holds.
			held, release := make(chan struct{}), make(chan struct{})
			var once sync.Once
			exec.setHook(func(ctx context.Context, cmd *scsi.Command) *scsi.Result {
				if cmd.Nexus.InitiatorName == host2 && cmd.CDB[0] == 0x00 {
					once.Do(func() {
						close(held)
						<-release
					})
				}
				return nil
			})
			in2 := h.dialAs(host2)
			in2.sendCommand(tur, cmdOpts{attr: 2})
			<-held
			w2 := in2.sendCommand(write10(0, 1), cmdOpts{dataOut: make([]byte, 512)})
			in2.sync()
			// host3's write waits for its data (R2T).
			in3 := h.dialAs(host3, kv{"InitialR2T", "Yes"}, kv{"ImmediateData", "No"})
			o3 := cmdOpts{lun: 5, dataOut: make([]byte, 512)}
			w3 := in3.sendCommand(write10(0, 1), o3)
			r2t, _ := in3.mustRecv()
			if r2t.opcode() != opR2T {
				t.Fatalf("host3 got %s, want R2T", r2t.opcode())
			}

			in1 := h.dialAs(host1)
			in1.sendTMF(byte(fn), 0, reservedTag, 0, true)
			if resp, _ := in1.until(isTMFResp); resp[2] != byte(scsi.TMFComplete) {
				t.Fatalf("response %d", resp[2])
			}

			close(release)
			if before := in2.responsesUntil(in2.sendCommand(tur, cmdOpts{attr: 2})); !slices.Contains(before, w2) {
				t.Fatalf("host1's reset of its LUN 0 dropped host2's write to another volume at LUN 0 (responses before TUR: %x)", before)
			}
			in3.sendDataOut(w3, o3, 0, 512, r2t.ttt(), 1)
			if before := in3.responsesUntil(in3.sendCommand(tur, cmdOpts{lun: 5, attr: 2})); slices.Contains(before, w3) {
				t.Fatal("host1's reset of its LUN 0 spared host3's write to the same volume at LUN 5")
			}
			var wantCleared []tmfCall
			if fn == scsi.ClearTaskSet {
				wantCleared = []tmfCall{{nexus: scsi.Nexus{InitiatorName: host3}, lun: 5}}
			}
			close(exec.cleared)
			var got []tmfCall
			for c := range exec.cleared {
				got = append(got, tmfCall{nexus: scsi.Nexus{InitiatorName: c.nexus.InitiatorName}, lun: c.lun})
			}
			if fmt.Sprint(got) != fmt.Sprint(wantCleared) {
				t.Errorf("TasksCleared calls %v, want %v", got, wantCleared)
			}
		})
	}
}

// TestTargetResetConfinedToCaller runs a real SCSI target: host1 sees
// volume A at LUN 0 and host4 at LUN 3; host2 and host3 see volume B at
// LUN 0. host2 holds a SCSI-2 reservation on B. host1's TARGET WARM and
// COLD RESET reset A only: host2 keeps its reservation, gets no unit
// attention and keeps its session; host4 gets the reset's unit
// attention; host1's cold reset closes host1's connection only.
func TestTargetResetConfinedToCaller(t *testing.T) {
	a, b := newVolumeLU(t, 1<<20), newVolumeLU(t, 1<<20)
	tgt := scsi.NewTarget(scsi.TargetConfig{Resolver: maskedLUNs{
		host1: {0: a},
		host2: {0: b},
		host3: {0: b},
		host4: {3: a},
	}})
	h := newHarness(t, func(c *Config) { c.Executor = tgt })
	ins := map[string]*initiator{}
	luns := map[string]uint64{host1: 0, host2: 0, host3: 0, host4: 3}
	for _, name := range []string{host1, host2, host3, host4} {
		ins[name] = h.dialAs(name)
		clearUAs(t, ins[name], luns[name])
	}
	res6 := []byte{0x16, 0, 0, 0, 0, 0}
	if r := ins[host2].do(res6, cmdOpts{}); r.status != scsi.StatusGood {
		t.Fatalf("RESERVE(6) by host2: status %#x", r.status)
	}
	for _, fn := range []scsi.TMF{scsi.TargetWarmReset, scsi.TargetColdReset} {
		in1 := ins[host1]
		in1.sendTMF(byte(fn), 0, reservedTag, 0, true)
		if resp, _ := in1.until(isTMFResp); resp[2] != byte(scsi.TMFComplete) {
			t.Fatalf("tmf %d: response %d", fn, resp[2])
		}
		if r := ins[host2].do(tur, cmdOpts{}); r.status != scsi.StatusGood {
			t.Fatalf("tmf %d from host1: host2, which host1 cannot reach, got status %#x sense %x", fn, r.status, r.sense)
		}
		if r := ins[host3].do(res6, cmdOpts{}); r.status != scsi.StatusReservationConflict {
			t.Fatalf("tmf %d from host1 released host2's reservation on B: RESERVE(6) by host3 got %#x", fn, r.status)
		}
		if r := ins[host4].do(tur, cmdOpts{lun: 3}); r.status != scsi.StatusCheckCondition || senseCode(r.sense) != 0x29 {
			t.Fatalf("tmf %d from host1: host4, which shares A, got status %#x sense %x, want the reset's unit attention", fn, r.status, r.sense)
		}
		if fn == scsi.TargetColdReset {
			in1.expectClosed()
		} else {
			clearUAs(t, in1, 0)
		}
	}
	for _, name := range []string{host2, host3, host4} {
		if !slices.ContainsFunc(h.srv.Sessions(), func(s SessionInfo) bool { return s.InitiatorName == name }) {
			t.Errorf("host1's cold reset ended %s's session", name)
		}
	}
}

// clearUAs sends TEST UNIT READY until it is GOOD.
func clearUAs(t *testing.T, in *initiator, lun uint64) {
	t.Helper()
	for range 10 {
		if r := in.do(tur, cmdOpts{lun: lun}); r.status == scsi.StatusGood {
			return
		}
	}
	t.Fatal("unit attentions never cleared")
}

// senseCode returns the additional sense code of fixed-format sense data.
func senseCode(sense []byte) byte {
	if len(sense) < 13 {
		return 0
	}
	return sense[12]
}
