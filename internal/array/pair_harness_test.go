package array

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/metro-storage/metro/internal/catalog"
	"github.com/metro-storage/metro/internal/mediator"
	"github.com/metro-storage/metro/internal/netproxy"
	"github.com/metro-storage/metro/internal/scsi"
)

// The pair harness runs two arrays in one process, as production runs
// them (real store on disk, real link over TCP with TLS), with a netproxy
// on the replication link so a test can cut it, heal it and slow it down.
// Hosts are simulated by driving each array's SCSI target directly.

const (
	pairPod    = "pod1"
	pairVolume = "pod1::vol1"
	pairHost   = "h1"
	pairIQN    = "iqn.2026-11.io.metro:pair-host"
	// pairTimeout is the link's dead-peer timeout: short, so that a
	// partition is noticed quickly.
	pairTimeout = time.Second
	pairVolSize = 64 << 20
)

// pairHarness is a running pair of arrays with a stretched pod.
type pairHarness struct {
	t testing.TB
	// arrays[0] is the pod's sequencer (the pod is created there),
	// arrays[1] the follower.
	arrays [2]*Array
	proxy  *netproxy.Proxy
	logs   *logTail
	// log writes to logs, for the test's own markers.
	log    *slog.Logger
	ctx    context.Context
	cancel context.CancelFunc
	done   [2]chan error
	// accepter is the index of the array that accepts the link (the
	// proxy is in front of its listener).
	accepter int
	// medProxy[i] is array i's route to the mediator (pairOptions).
	medProxy [2]*netproxy.Proxy
	// cfgs, fs and arrayLog are what each array was opened with, and
	// stopArray[i] ends array i's Run, for restartArray.
	cfgs      [2]*Config
	fs        [2]vfs.FS
	arrayLog  *slog.Logger
	stopArray [2]context.CancelFunc
}

// reservePort returns a loopback address whose port was free a moment
// ago (the lab does the same to write its configurations).
func reservePort(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// newPair starts two arrays, pairs them through a link proxy, creates
// the pod with a volume connected to pairIQN at LUN 0, stretches it and
// waits until it is in sync. Everything is stopped at the end of the
// test, which fails if goroutines are left behind.
func newPair(t *testing.T) *pairHarness {
	t.Helper()
	h := newPairUnstretched(t)
	h.stretch()
	return h
}

// newPairUnstretched is newPair without the stretch: the pod, its volume
// and connection exist on the first array only.
func newPairUnstretched(t *testing.T) *pairHarness {
	t.Helper()
	return newPairWith(t, pairOptions{})
}

// pairOptions changes the pair a test starts.
type pairOptions struct {
	// fs is each array's store filesystem (nil: the disk).
	fs [2]vfs.FS
	// maxDiskStall, when set, is each array's max_disk_stall.
	maxDiskStall time.Duration
	// mediator: a mediator serves the pair, each array reaching it
	// through a proxy of its own (pairHarness.medProxy), heartbeating
	// every 100 ms.
	mediator bool
	// timeout, when set, is the link's timeout instead of pairTimeout:
	// a mirrored write the follower has not applied within it ends the
	// link (defect 5), which large writes under -race on a small machine
	// can take.
	timeout time.Duration
	// mediatorBackend, when set, wraps the mediator's state.
	mediatorBackend func(mediator.Backend) mediator.Backend
}

// newPairWith is newPairUnstretched with options.
func newPairWith(t *testing.T, opts pairOptions) *pairHarness {
	t.Helper()
	h := &pairHarness{t: t, logs: newLogTail(4 << 20)}
	log := slog.New(slog.NewTextHandler(h.logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
	h.log = log.With("component", "test")
	dir := t.TempDir()
	// The link proxy's listener is opened now, for the arrays' config
	// names its address (a port reserved and closed could be taken
	// meanwhile by a connection's ephemeral port).
	proxyLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	proxyAddr := proxyLn.Addr().String()
	names := [2]string{"array-a", "array-b"}
	// The mediator and its proxies outlive the arrays: their goroutines
	// are counted before the arrays start.
	var med testMediator
	var keyFile string
	if opts.mediator {
		med = serveMediatorWith(t, opts.mediatorBackend)
		keyFile = filepath.Join(dir, "mediator-key")
		if err := os.WriteFile(keyFile, []byte(med.key+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		target := strings.TrimPrefix(med.url, "https://")
		for i := range h.medProxy {
			px, err := netproxy.New("127.0.0.1:0", target, netproxy.Settings{}, log.With("component", "mediator-proxy", "array", names[i]))
			if err != nil {
				t.Fatal(err)
			}
			h.medProxy[i] = px
		}
	}
	before := runtime.NumGoroutine()
	var cfgs [2]*Config
	for i := range cfgs {
		c := &Config{Name: names[i], DataDir: filepath.Join(dir, names[i])}
		c.API.Listen = "127.0.0.1:0"
		tlsOff := false
		c.API.TLS = &tlsOff
		c.API.Token = "pair-test-token-0123456789abcdef"
		c.ISCSI.Listen = []string{"127.0.0.1:0"}
		c.Replication.Listen = reservePort(t)
		c.Replication.Advertise = proxyAddr
		c.Replication.Timeout.Duration = pairTimeout
		if opts.timeout > 0 {
			c.Replication.Timeout.Duration = opts.timeout
		}
		c.MaxDiskStall.Duration = opts.maxDiskStall
		if opts.mediator {
			c.Mediator.URL = "https://" + h.medProxy[i].Addr()
			c.Mediator.AuthKeyFile, c.Mediator.CAFile = keyFile, med.caFile
			c.Mediator.Heartbeat.Duration = 100 * time.Millisecond
			c.Mediator.Timeout.Duration = 300 * time.Millisecond
		}
		if err := c.setDefaults(); err != nil {
			t.Fatal(err)
		}
		cfgs[i] = c
	}
	for i := range h.arrays {
		a, err := Open(Options{Config: cfgs[i], Logger: log.With("array", names[i]), FS: opts.fs[i]})
		if err != nil {
			for _, o := range h.arrays[:i] {
				o.Close()
			}
			proxyLn.Close()
			t.Fatalf("open %s: %v", names[i], err)
		}
		h.arrays[i] = a
	}
	// The array with the larger id accepts the link; the other dials the
	// address the accepter advertises: the proxy.
	if h.arrays[0].id.ID < h.arrays[1].id.ID {
		h.accepter = 1
	}
	h.proxy = netproxy.Serve(proxyLn, cfgs[h.accepter].Replication.Listen, netproxy.Settings{}, log.With("component", "link-proxy"))
	h.ctx, h.cancel = context.WithCancel(context.Background())
	h.cfgs, h.fs, h.arrayLog = cfgs, opts.fs, log
	var ready [2]chan struct{}
	for i, a := range h.arrays {
		ready[i] = make(chan struct{})
		h.done[i] = make(chan error, 1)
		ctx, cancel := context.WithCancel(h.ctx)
		h.stopArray[i] = cancel
		go func() { h.done[i] <- a.Run(ctx, func() { close(ready[i]) }) }()
	}
	t.Cleanup(func() { h.stop(before) })
	for i := range h.arrays {
		select {
		case <-ready[i]:
		case err := <-h.done[i]:
			h.done[i] <- err
			t.Fatalf("%s stopped before it was ready: %v", names[i], err)
		}
	}

	a, b := h.arrays[0], h.arrays[1]
	if _, err := a.Pair(h.ctx, b.pairing()); err != nil {
		t.Fatalf("pair a with b: %v", err)
	}
	if _, err := b.Pair(h.ctx, a.pairing()); err != nil {
		t.Fatalf("pair b with a: %v", err)
	}
	h.waitFor("the link to come up", 30*time.Second, func() (bool, string) {
		_, upA, _ := a.repl.PeerInfo()
		_, upB, _ := b.repl.PeerInfo()
		return upA && upB, fmt.Sprintf("link up: a %v, b %v", upA, upB)
	})
	now := time.Now()
	for _, op := range []catalog.Op{
		catalog.CreatePod{Name: pairPod, ID: newID(), Created: now, Array: catalog.PodArray{Name: a.cfg.Name, ID: a.id.ID}},
		catalog.CreateVolume{Name: pairVolume, UUID: newID(), Size: pairVolSize, Created: now},
		catalog.CreateHost{Host: catalog.Host{Name: pairHost, IQNs: []string{pairIQN}}},
		catalog.Connect{Volume: pairVolume, Host: pairHost},
	} {
		if err := a.Apply(h.ctx, op); err != nil {
			t.Fatalf("%s: %v", op.Kind(), err)
		}
	}
	return h
}

// stretch stretches the pod to the second array and waits until it is in
// sync.
func (h *pairHarness) stretch() {
	h.t.Helper()
	if err := h.arrays[0].StretchPod(h.ctx, pairPod, h.arrays[1].cfg.Name); err != nil {
		h.t.Fatalf("stretch: %v", err)
	}
	h.waitInSync(60 * time.Second)
}

// stop stops both arrays and the proxy and checks that no goroutine is
// left behind.
func (h *pairHarness) stop(before int) {
	t := h.t
	h.proxy.Partition(false)
	h.cancel()
	stuck := false
	for i, a := range h.arrays {
		select {
		case err := <-h.done[i]:
			if err != nil {
				t.Errorf("%s: Run: %v", a.cfg.Name, err)
			}
		case <-time.After(15 * time.Second):
			t.Errorf("%s: Run did not return within 15s of its context ending:\n%s", a.cfg.Name, allStacks())
			stuck = true
		}
	}
	if err := h.proxy.Close(); err != nil {
		t.Errorf("proxy: %v", err)
	}
	// The mediator's routes go too: the connections the arrays' clients
	// kept alive through them end with them.
	for _, px := range h.medProxy {
		if px != nil {
			px.Close()
		}
	}
	if t.Failed() || os.Getenv("METRO_PAIR_LOG") != "" {
		h.dumpLogs()
	}
	if stuck {
		return // its goroutines are still there
	}
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > before {
		t.Errorf("%d goroutines left after both arrays stopped (%d before):\n%s", n, before, allStacks())
	}
}

func allStacks() string {
	buf := make([]byte, 4<<20)
	return string(buf[:runtime.Stack(buf, true)])
}

// dumpLogs writes the tail of the arrays' logs to the test log.
func (h *pairHarness) dumpLogs() {
	tail := h.logs.String()
	const max = 64 << 10
	if len(tail) > max {
		tail = tail[len(tail)-max:]
		if i := strings.IndexByte(tail, '\n'); i >= 0 {
			tail = tail[i+1:]
		}
	}
	h.t.Logf("arrays' log (tail):\n%s", tail)
}

// waitFor polls cond until it holds, failing the test after timeout with
// cond's last explanation.
func (h *pairHarness) waitFor(what string, timeout time.Duration, cond func() (bool, string)) {
	h.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, why := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("waiting for %s: not within %s: %s", what, timeout, why)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// podStatus returns the pod's arrays' statuses as array i sees them.
func (h *pairHarness) podStatus(i int) string {
	a := h.arrays[i]
	p := a.cat.View().Pods[pairPod]
	if p == nil {
		return "no pod"
	}
	var parts []string
	for _, pa := range a.PodArrays(p) {
		parts = append(parts, pa.Name+"="+pa.Status)
	}
	return strings.Join(parts, ",")
}

// inSync reports whether both arrays see the pod online on both.
func (h *pairHarness) inSync() (bool, string) {
	var why []string
	ok := true
	for i, a := range h.arrays {
		p := a.cat.View().Pods[pairPod]
		if p == nil {
			return false, a.cfg.Name + " has no pod"
		}
		arrays := a.PodArrays(p)
		if len(arrays) != 2 {
			ok = false
		}
		for _, pa := range arrays {
			if pa.Status != catalog.StatusOnline {
				ok = false
			}
		}
		why = append(why, a.cfg.Name+" sees "+h.podStatus(i))
	}
	return ok, strings.Join(why, "; ")
}

// waitInSync waits until both arrays see the pod online on both.
func (h *pairHarness) waitInSync(timeout time.Duration) {
	h.t.Helper()
	h.waitFor("the pod to be in sync", timeout, h.inSync)
}

// logTail is an io.Writer keeping the last max bytes written to it.
type logTail struct {
	mu  sync.Mutex
	max int
	buf []byte
}

func newLogTail(max int) *logTail { return &logTail{max: max} }

func (l *logTail) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf = append(l.buf, p...)
	if len(l.buf) > l.max {
		l.buf = append([]byte(nil), l.buf[len(l.buf)-l.max/2:]...)
	}
	return len(p), nil
}

func (l *logTail) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return string(l.buf)
}

// initiator is one simulated host port: an I_T nexus to one array.
type initiator struct {
	arr   *Array
	nexus scsi.Nexus
	tag   uint32
}

// newInitiator returns the nexus of initiator port isid of iqn to arr.
func newInitiator(arr *Array, iqn string, isid uint64) *initiator {
	return &initiator{arr: arr, nexus: scsi.Nexus{
		InitiatorName:  iqn,
		InitiatorPort:  fmt.Sprintf("%s,i,0x%012x", iqn, isid),
		TargetPort:     fmt.Sprintf("%s,t,0x%04x", arr.cfg.ISCSI.Target, arr.id.PortalGroupTag()),
		RelativePortID: arr.id.RelativePortID(),
	}}
}

// do runs one command once. An initiator runs one command at a time.
func (in *initiator) do(cdb, out []byte, dataIn uint32) *scsi.Result {
	in.tag++
	return in.arr.target.Execute(context.Background(), &scsi.Command{Nexus: in.nexus, LUN: 0, Tag: in.tag,
		CDB: cdb, DataOut: out, ExpectedDataIn: dataIn})
}

// doPastUA runs a command, running it again after unit attentions
// (reported before the command ran), and returns the result and the unit
// attentions seen.
func (in *initiator) doPastUA(cdb, out []byte, dataIn uint32) (*scsi.Result, []scsi.Sense) {
	var uas []scsi.Sense
	for {
		r := in.do(cdb, out, dataIn)
		s, ok := senseOf(r)
		if !ok || s.Key != scsi.KeyUnitAttention || len(uas) > 32 {
			return r, uas
		}
		uas = append(uas, s)
	}
}

// drainUAs runs TEST UNIT READY until it is not a unit attention and
// returns the unit attentions and the final result.
func (in *initiator) drainUAs() ([]scsi.Sense, *scsi.Result) {
	r, uas := in.doPastUA(make([]byte, 6), nil, 0)
	return uas, r
}

// senseOf parses a CHECK CONDITION's sense data.
func senseOf(r *scsi.Result) (scsi.Sense, bool) {
	if r.Status != scsi.StatusCheckCondition {
		return scsi.Sense{}, false
	}
	s, err := scsi.ParseSense(r.Sense)
	if err != nil {
		return scsi.Sense{}, false
	}
	return s, true
}

// describe renders a result for messages.
func describe(r *scsi.Result) string {
	switch {
	case r.Aborted:
		return "aborted"
	case r.Status == scsi.StatusGood:
		return "GOOD"
	case r.Status == scsi.StatusReservationConflict:
		return "RESERVATION CONFLICT"
	}
	if s, ok := senseOf(r); ok {
		return "CHECK CONDITION " + s.String()
	}
	return fmt.Sprintf("status %#x", byte(r.Status))
}

// CDBs the tests use besides write16, read16 and prRegister
// (crash_test.go).

func testUnitReady() []byte { return make([]byte, 6) }

// compareAndWrite16 is COMPARE AND WRITE of blocks from lba; its data-out
// is the verify data followed by the write data.
func compareAndWrite16(lba uint64, blocks uint8) []byte {
	cdb := make([]byte, 16)
	cdb[0] = 0x89
	binary.BigEndian.PutUint64(cdb[2:10], lba)
	cdb[13] = blocks
	return cdb
}

// prRegisterIgnore is PERSISTENT RESERVE OUT REGISTER AND IGNORE EXISTING
// KEY with service action key key (0 unregisters).
func prRegisterIgnore(key uint64) (cdb, param []byte) {
	param = make([]byte, 24)
	binary.BigEndian.PutUint64(param[8:16], key)
	cdb = make([]byte, 10)
	cdb[0] = 0x5f
	cdb[1] = 0x06
	binary.BigEndian.PutUint32(cdb[5:9], 24)
	return cdb, param
}

// prInReadKeys is PERSISTENT RESERVE IN READ KEYS.
func prInReadKeys() []byte {
	cdb := make([]byte, 10)
	cdb[0] = 0x5e
	binary.BigEndian.PutUint16(cdb[7:9], 1024)
	return cdb
}

// parseKeys decodes READ KEYS parameter data.
func parseKeys(d []byte) ([]uint64, error) {
	if len(d) < 8 {
		return nil, fmt.Errorf("READ KEYS: %d bytes", len(d))
	}
	n := binary.BigEndian.Uint32(d[4:8])
	if uint64(len(d)) < 8+uint64(n) || n%8 != 0 {
		return nil, fmt.Errorf("READ KEYS: list of %d bytes in %d", n, len(d))
	}
	var keys []uint64
	for i := 8; i < 8+int(n); i += 8 {
		keys = append(keys, binary.BigEndian.Uint64(d[i:i+8]))
	}
	return keys, nil
}

func reserve6() []byte { return []byte{0x16, 0, 0, 0, 0, 0} }
func release6() []byte { return []byte{0x17, 0, 0, 0, 0, 0} }

// reportTPG is REPORT TARGET PORT GROUPS.
func reportTPG() []byte {
	cdb := make([]byte, 12)
	cdb[0] = 0xa3
	cdb[1] = 0x0a
	binary.BigEndian.PutUint32(cdb[6:10], 4096)
	return cdb
}

// tpgDesc is one target port group descriptor.
type tpgDesc struct {
	id        uint16
	state     scsi.AccessState
	preferred bool
	ports     []uint16
}

func parseTPG(d []byte) ([]tpgDesc, error) {
	if len(d) < 4 {
		return nil, fmt.Errorf("REPORT TARGET PORT GROUPS: %d bytes", len(d))
	}
	n := int(binary.BigEndian.Uint32(d[0:4]))
	if len(d) < 4+n {
		return nil, fmt.Errorf("REPORT TARGET PORT GROUPS: %d bytes of %d", len(d)-4, n)
	}
	var out []tpgDesc
	for p := d[4 : 4+n]; len(p) > 0; {
		if len(p) < 8 {
			return nil, fmt.Errorf("short descriptor")
		}
		g := tpgDesc{id: binary.BigEndian.Uint16(p[2:4]), state: scsi.AccessState(p[0] & 0x0f), preferred: p[0]&0x80 != 0}
		cnt := int(p[7])
		if len(p) < 8+4*cnt {
			return nil, fmt.Errorf("short port list")
		}
		for i := 0; i < cnt; i++ {
			g.ports = append(g.ports, binary.BigEndian.Uint16(p[8+4*i+2:]))
		}
		out = append(out, g)
		p = p[8+4*cnt:]
	}
	return out, nil
}

// unitData is the 4 KiB content of a unit holding value v: records of
// (lba, v); zeros for v == 0 (never written).
func unitData(lba, v uint64) []byte {
	if v == 0 {
		return make([]byte, 4096)
	}
	return pattern(lba, v)
}

// tornValue marks a unit whose content is no value written to it.
const tornValue = ^uint64(0)

// unitValue decodes a unit's content written by unitData; tornValue if it
// is neither zeros nor one whole value for that lba.
func unitValue(lba uint64, d []byte) uint64 {
	if bytes.Equal(d, make([]byte, len(d))) {
		return 0
	}
	v := binary.BigEndian.Uint64(d[8:16])
	if v == 0 || !bytes.Equal(d, pattern(lba, v)) {
		return tornValue
	}
	return v
}
