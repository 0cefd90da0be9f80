package array

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cockroachdb/datadriven"

	"github.com/metro-storage/metro/internal/catalog"
	"github.com/metro-storage/metro/internal/netproxy"
	"github.com/metro-storage/metro/internal/scsi"
)

// TestPairTranscripts runs the scripts in testdata/pair/ against a real
// in-process stretched pair (the pair harness: two arrays, the
// replication link through a netproxy): each directive acts on one array
// as a host or an administrator would, or on the link, and prints what
// can be observed, so the ordering and failure behaviour of the pod's
// sequencer is pinned down and reviewable. Rewrite the expected output
// with -rewrite (then review the diff: the outputs are the contract).
//
// Every script starts with a fresh pair whose pod is in sync: array a
// (array-a) created the pod and is its sequencer, array b (array-b) is
// the follower. Host h1 sees the pod's volume at LUN 0 through both.
// Blocks are 512 bytes; a block written with pattern X holds its LBA (8
// bytes) and then the byte X, and reads print each block as X, 0 (never
// written) or ? (anything else: torn, misplaced). Commands retry past
// unit attentions silently; tur shows them.
//
// Host directives (array=a|b; initiator=NAME picks a host port, created
// on that array at first use; the default port of array a is named a,
// of b b; async=NAME runs the command in the background, see await):
//
//	write array= lba=N [blocks=N] pattern=X|XYZ… [initiator=] [async=]
//	    WRITE(16) of blocks (1) with pattern X, or one letter per block
//	read array= lba=N [blocks=N] [initiator=]     READ(16); the blocks
//	caw array= lba=N expect=X new=Y [initiator=] [async=]
//	    COMPARE AND WRITE of one block
//	register array= key=K [initiator=]   PR OUT REGISTER AND IGNORE
//	    EXISTING KEY (key=0 unregisters)
//	pr-reserve|pr-release array= key=K type=we|ea|wero|earo|wear|eaar
//	readkeys array= / readres array=     PR IN READ KEYS / RESERVATION
//	reserve6|release6 array=             SCSI-2 RESERVE(6) / RELEASE(6)
//	tur array=             TEST UNIT READY: the unit attentions, then the status
//	clear-ua array=        the same, printing nothing (sets a baseline)
//	wait-ua array= sense=KK/AA/QQ   TEST UNIT READY until that unit
//	    attention is reported (one raised by a state change the pod's
//	    goroutine makes a moment after the change shows)
//	rtpg array=            REPORT TARGET PORT GROUPS, group ids as a/b
//	await name=NAME [hide-result]   the result of an async command;
//	    hide-result when either outcome is correct
//
// Pair directives:
//
//	status                 each array's view of the pod: the statuses as
//	    'metro pod list' shows them, the sequencer, whether it serves I/O
//	prefer through=a|b arrays=array-a,…|none   set h1's preferred arrays
//	partition | heal       cut or heal the replication link
//	link rtt=D             the link's added round trip
//	wait-in-sync           until both arrays see the pod online on both
//	wait-state array= status=NAME=S,NAME=S [serving=B]
//	    until the array sees the pod so
//	wait-store array= lba=N pattern=X
//	    until the block is so in the array's store (past the SCSI layer)
//	agree lba=N [blocks=N] whether both arrays read the same (through
//	    SCSI), without saying what
//
// After each script the link is healed and, once the pod is in sync, both
// arrays' stores must hold the same data over every block a script
// addressed (STYLE.md: a consistency check after every test).
func TestPairTranscripts(t *testing.T) {
	datadriven.Walk(t, "testdata/pair", func(t *testing.T, path string) {
		tr := newPairTranscript(t)
		datadriven.RunTest(t, path, tr.run)
		tr.finish()
	})
}

// pairTranscript is the state of one script.
type pairTranscript struct {
	t     *testing.T
	h     *pairHarness
	ports map[string]*transcriptPort
	async map[string]*asyncCmd
	isid  uint64
	// maxLBA is one past the highest block a script addressed.
	maxLBA uint64
}

// transcriptPort is a named host port: an initiator on one array.
type transcriptPort struct {
	name  string
	array int
	in    *initiator
	// busy names the async command running on the port.
	busy string
}

type asyncCmd struct {
	port *transcriptPort
	done chan *scsi.Result
	// format renders the result.
	format func(*scsi.Result) string
}

// transcriptTimeout bounds every wait of a script.
const transcriptTimeout = 30 * time.Second

func newPairTranscript(t *testing.T) *pairTranscript {
	tr := &pairTranscript{t: t, h: newPair(t), ports: map[string]*transcriptPort{}, async: map[string]*asyncCmd{}, isid: 0x100}
	// Runs before the harness stops the pair (cleanups run last first).
	t.Cleanup(tr.awaitAll)
	return tr
}

// awaitAll waits for the async commands no script awaited.
func (tr *pairTranscript) awaitAll() {
	for name, c := range tr.async {
		select {
		case <-c.done:
		case <-time.After(transcriptTimeout):
			tr.t.Errorf("async command %s still running after %s:\n%s", name, transcriptTimeout, allStacks())
		}
		delete(tr.async, name)
	}
}

// finish heals the link, waits for the pod to be in sync and compares
// both arrays' stores over every block the script addressed.
func (tr *pairTranscript) finish() {
	t := tr.t
	if t.Failed() {
		return
	}
	tr.awaitAll()
	tr.h.proxy.Set(netproxy.Settings{})
	tr.h.waitInSync(transcriptTimeout)
	const chunk = 2048
	for lba := uint64(0); lba < tr.maxLBA; lba += chunk {
		n := min(chunk, tr.maxLBA-lba)
		a, b := tr.storeBlocks(0, lba, n), tr.storeBlocks(1, lba, n)
		if !bytes.Equal(a, b) {
			for i := uint64(0); i < n; i++ {
				if da, db := a[512*i:512*(i+1)], b[512*i:512*(i+1)]; !bytes.Equal(da, db) {
					t.Fatalf("the pod is in sync, and the arrays' copies differ at lba %d: array-a has %s, array-b %s",
						lba+i, blockText(lba+i, da), blockText(lba+i, db))
				}
			}
		}
	}
}

// storeBlocks reads n blocks from lba straight from array i's store.
func (tr *pairTranscript) storeBlocks(i int, lba, n uint64) []byte {
	a := tr.h.arrays[i]
	vol := a.cat.View().Volumes[pairVolume]
	buf := make([]byte, 512*n)
	if err := a.store.Volume(vol.DataID).ReadAt(context.Background(), buf, int64(lba*512)); err != nil {
		tr.t.Fatalf("%s: read the store: %v", a.cfg.Name, err)
	}
	return buf
}

func (tr *pairTranscript) run(t *testing.T, d *datadriven.TestData) string {
	switch d.Cmd {
	case "write":
		lba, blocks := tr.lbaArgs(t, d)
		pat := tr.str(t, d, "pattern")
		if len(pat) != 1 && uint64(len(pat)) != blocks {
			d.Fatalf(t, "pattern=%s: one letter, or one per block (%d)", pat, blocks)
		}
		data := make([]byte, 0, 512*blocks)
		for i := uint64(0); i < blocks; i++ {
			c := pat[0]
			if len(pat) > 1 {
				c = pat[i]
			}
			data = append(data, tr.block(t, d, lba+i, c)...)
		}
		return tr.command(t, d, write16(lba, data), data, 0, resultText)
	case "read":
		lba, blocks := tr.lbaArgs(t, d)
		return tr.command(t, d, read16(lba, uint32(blocks)), nil, uint32(512*blocks), func(r *scsi.Result) string {
			if r.Status != scsi.StatusGood {
				return resultText(r)
			}
			return blocksText(lba, r.Data)
		})
	case "caw":
		lba := tr.num(t, d, "lba")
		tr.touch(lba, 1)
		out := append(tr.block(t, d, lba, tr.char(t, d, "expect")), tr.block(t, d, lba, tr.char(t, d, "new"))...)
		return tr.command(t, d, compareAndWrite16(lba, 1), out, 0, resultText)
	case "register":
		cdb, param := prRegisterIgnore(tr.num(t, d, "key"))
		return tr.command(t, d, cdb, param, 0, resultText)
	case "pr-reserve", "pr-release":
		sa := byte(1)
		if d.Cmd == "pr-release" {
			sa = 2
		}
		cdb, param := prOutCDB(sa, tr.num(t, d, "key"), tr.prType(t, d))
		return tr.command(t, d, cdb, param, 0, resultText)
	case "readkeys":
		return tr.command(t, d, prInReadKeys(), nil, 1024, func(r *scsi.Result) string {
			if r.Status != scsi.StatusGood {
				return resultText(r)
			}
			keys, err := parseKeys(r.Data)
			if err != nil {
				return err.Error()
			}
			if len(keys) == 0 {
				return "keys: none"
			}
			s := make([]string, len(keys))
			for i, k := range keys {
				s[i] = fmt.Sprintf("%#x", k)
			}
			return "keys: " + strings.Join(s, " ")
		})
	case "readres":
		return tr.command(t, d, prInReadReservation(), nil, 1024, func(r *scsi.Result) string {
			if r.Status != scsi.StatusGood {
				return resultText(r)
			}
			if len(r.Data) < 8 || binary.BigEndian.Uint32(r.Data[4:8]) == 0 {
				return "reservation: none"
			}
			if len(r.Data) < 24 {
				return fmt.Sprintf("READ RESERVATION: %d bytes", len(r.Data))
			}
			return fmt.Sprintf("reservation: key %#x type %s", binary.BigEndian.Uint64(r.Data[8:16]), prTypeName(r.Data[21]&0x0f))
		})
	case "reserve6":
		return tr.command(t, d, reserve6(), nil, 0, resultText)
	case "release6":
		return tr.command(t, d, release6(), nil, 0, resultText)
	case "tur", "clear-ua":
		p := tr.port(t, d)
		uas, r := p.in.drainUAs()
		if d.Cmd == "clear-ua" {
			return ""
		}
		var lines []string
		for _, s := range uas {
			lines = append(lines, "unit attention "+senseText(s))
		}
		return strings.Join(append(lines, resultText(r)), "\n")
	case "wait-ua":
		p := tr.port(t, d)
		want := tr.str(t, d, "sense")
		var seen []string
		tr.h.waitFor(fmt.Sprintf("unit attention %s on initiator %s", want, p.name), transcriptTimeout, func() (bool, string) {
			uas, _ := p.in.drainUAs()
			for _, s := range uas {
				if strings.HasPrefix(senseText(s), want) {
					return true, ""
				}
				seen = append(seen, senseText(s))
			}
			return false, fmt.Sprintf("seen %v", seen)
		})
		return "ok"
	case "rtpg":
		return tr.command(t, d, reportTPG(), nil, 4096, tr.formatTPG)
	case "await":
		name := tr.str(t, d, "name")
		c, ok := tr.async[name]
		if !ok {
			d.Fatalf(t, "no async command %s", name)
		}
		var r *scsi.Result
		select {
		case r = <-c.done:
		case <-time.After(transcriptTimeout):
			d.Fatalf(t, "async command %s still running after %s:\n%s", name, transcriptTimeout, allStacks())
		}
		delete(tr.async, name)
		c.port.busy = ""
		if d.HasArg("hide-result") {
			return "done"
		}
		return c.format(r)
	case "status":
		return tr.status()
	case "prefer":
		i := tr.arrayArg(t, d, "through")
		pref := []string{}
		if v := tr.str(t, d, "arrays"); v != "none" {
			pref = strings.Split(v, ",")
		}
		if err := tr.h.arrays[i].Apply(context.Background(), catalog.SetHostAttr{Name: pairHost, PreferredArrays: &pref}); err != nil {
			return "error: " + err.Error()
		}
		return "ok"
	case "partition":
		tr.h.proxy.Partition(true)
		tr.h.log.Info("transcript: link cut")
		return "ok"
	case "heal":
		tr.h.proxy.Partition(false)
		tr.h.log.Info("transcript: link healed")
		return "ok"
	case "link":
		var rtt time.Duration
		tr.duration(t, d, "rtt", &rtt)
		s := tr.h.proxy.Settings()
		s.RTT = rtt
		tr.h.proxy.Set(s)
		return "ok"
	case "wait-in-sync":
		tr.h.waitInSync(transcriptTimeout)
		return "ok"
	case "wait-state":
		i := tr.arrayArg(t, d, "array")
		want := strings.ReplaceAll(tr.str(t, d, "status"), " ", "")
		var serving *bool
		if d.HasArg("serving") {
			var b bool
			d.ScanArgs(t, "serving", &b)
			serving = &b
		}
		tr.h.waitFor(fmt.Sprintf("%s to see the pod as %s", tr.h.arrays[i].cfg.Name, want), transcriptTimeout, func() (bool, string) {
			got := tr.h.podStatus(i)
			s, _ := tr.h.arrays[i].repl.Serving(pairPod)
			return got == want && (serving == nil || s == *serving), fmt.Sprintf("%s, serving %v", got, s)
		})
		return "ok"
	case "wait-store":
		i := tr.arrayArg(t, d, "array")
		lba := tr.num(t, d, "lba")
		c := tr.char(t, d, "pattern")
		want := tr.block(t, d, lba, c)
		tr.h.waitFor(fmt.Sprintf("lba %d to hold %c in %s's store", lba, c, tr.h.arrays[i].cfg.Name), transcriptTimeout, func() (bool, string) {
			got := tr.storeBlocks(i, lba, 1)
			return bytes.Equal(got, want), blockText(lba, got)
		})
		return "ok"
	case "agree":
		lba, blocks := tr.lbaArgs(t, d)
		var data [2][]byte
		for i := range data {
			p := tr.portOn(t, d, tr.defaultPort(i), i)
			r, _ := p.in.doPastUA(read16(lba, uint32(blocks)), nil, uint32(512*blocks))
			if r.Status != scsi.StatusGood {
				return fmt.Sprintf("read through %s: %s", tr.h.arrays[i].cfg.Name, resultText(r))
			}
			data[i] = r.Data
		}
		if bytes.Equal(data[0], data[1]) {
			return "both arrays read the same"
		}
		return fmt.Sprintf("the arrays differ: array-a reads %s, array-b %s", blocksText(lba, data[0]), blocksText(lba, data[1]))
	}
	d.Fatalf(t, "unknown directive %s", d.Cmd)
	return ""
}

// command runs a SCSI command on the directive's port, or starts it in
// the background (async=NAME).
func (tr *pairTranscript) command(t *testing.T, d *datadriven.TestData, cdb, out []byte, dataIn uint32, format func(*scsi.Result) string) string {
	p := tr.port(t, d)
	if !d.HasArg("async") {
		r, _ := p.in.doPastUA(cdb, out, dataIn)
		return format(r)
	}
	name := tr.str(t, d, "async")
	if _, ok := tr.async[name]; ok {
		d.Fatalf(t, "async command %s is already running", name)
	}
	c := &asyncCmd{port: p, done: make(chan *scsi.Result, 1), format: format}
	p.busy = name
	tr.async[name] = c
	in := p.in
	go func() {
		r, _ := in.doPastUA(cdb, out, dataIn)
		c.done <- r
	}()
	return "started"
}

func (tr *pairTranscript) defaultPort(i int) string { return string(rune('a' + i)) }

// port returns the port the directive names (initiator=, else the
// array's default one).
func (tr *pairTranscript) port(t *testing.T, d *datadriven.TestData) *transcriptPort {
	i := tr.arrayArg(t, d, "array")
	name := tr.defaultPort(i)
	if d.HasArg("initiator") {
		name = tr.str(t, d, "initiator")
	}
	return tr.portOn(t, d, name, i)
}

func (tr *pairTranscript) portOn(t *testing.T, d *datadriven.TestData, name string, i int) *transcriptPort {
	p, ok := tr.ports[name]
	if !ok {
		p = &transcriptPort{name: name, array: i, in: newInitiator(tr.h.arrays[i], pairIQN, tr.isid)}
		tr.isid++
		tr.ports[name] = p
	}
	if p.array != i {
		d.Fatalf(t, "initiator %s is on %s", name, tr.h.arrays[p.array].cfg.Name)
	}
	if p.busy != "" {
		d.Fatalf(t, "initiator %s is running async command %s: await it first", name, p.busy)
	}
	return p
}

// status renders each array's view of the pod.
func (tr *pairTranscript) status() string {
	var lines []string
	for i, a := range tr.h.arrays {
		p := a.cat.View().Pods[pairPod]
		if p == nil {
			lines = append(lines, a.cfg.Name+": no pod")
			continue
		}
		var st []string
		for _, pa := range a.PodArrays(p) {
			st = append(st, pa.Name+"="+pa.Status)
		}
		serving, _ := a.repl.Serving(pairPod)
		lines = append(lines, fmt.Sprintf("%s sees: %s; sequencer %s; serving %v", tr.h.arrays[i].cfg.Name, strings.Join(st, " "), p.Sequencer, serving))
	}
	return strings.Join(lines, "\n")
}

// formatTPG renders REPORT TARGET PORT GROUPS with the arrays' group
// and port ids as a and b.
func (tr *pairTranscript) formatTPG(r *scsi.Result) string {
	if r.Status != scsi.StatusGood {
		return resultText(r)
	}
	groups, err := parseTPG(r.Data)
	if err != nil {
		return err.Error()
	}
	name := func(id uint16, of func(*Array) uint16) string {
		for i, a := range tr.h.arrays {
			if of(a) == id {
				return tr.defaultPort(i)
			}
		}
		return fmt.Sprintf("%#x", id)
	}
	var lines []string
	for _, g := range groups {
		var ports []string
		for _, p := range g.ports {
			ports = append(ports, name(p, func(a *Array) uint16 { return a.id.RelativePortID() }))
		}
		s := fmt.Sprintf("group %s: %s", name(g.id, func(a *Array) uint16 { return a.id.TargetPortGroup() }), accessStateText(g.state))
		if g.preferred {
			s += " preferred"
		}
		lines = append(lines, s+" ports "+strings.Join(ports, ","))
	}
	return strings.Join(lines, "\n")
}

func accessStateText(s scsi.AccessState) string {
	switch s {
	case scsi.ActiveOptimized:
		return "active/optimized"
	case scsi.ActiveNonOptimized:
		return "active/non-optimized"
	case scsi.Standby:
		return "standby"
	case scsi.Unavailable:
		return "unavailable"
	case scsi.Offline:
		return "offline"
	case scsi.Transitioning:
		return "transitioning"
	}
	return fmt.Sprintf("state %#x", byte(s))
}

// resultText renders a command's status: GOOD, RESERVATION CONFLICT, or the
// sense key/ASC/ASCQ of a CHECK CONDITION.
func resultText(r *scsi.Result) string {
	switch {
	case r.Aborted:
		return "ABORTED"
	case r.Status == scsi.StatusGood:
		return "GOOD"
	case r.Status == scsi.StatusReservationConflict:
		return "RESERVATION CONFLICT"
	case r.Status == scsi.StatusCheckCondition:
		s, err := scsi.ParseSense(r.Sense)
		if err != nil {
			return fmt.Sprintf("CHECK CONDITION, sense %x", r.Sense)
		}
		return "CHECK CONDITION " + senseText(s)
	}
	return fmt.Sprintf("status %#x", byte(r.Status))
}

// senseText is key/ASC/ASCQ with a name for the ones the scripts meet.
func senseText(s scsi.Sense) string {
	txt := fmt.Sprintf("%02x/%02x/%02x", s.Key, s.ASC, s.ASCQ)
	for _, n := range []struct {
		s    scsi.Sense
		name string
	}{
		{scsi.SenseMiscompare(0), "MISCOMPARE"},
		{scsi.SenseNotReadyTransitioning(), "NOT READY (ALUA transitioning)"},
		{scsi.SenseNotReadyStandby(), "NOT READY (ALUA standby)"},
		{scsi.SenseNotReadyUnavailable(), "NOT READY (ALUA unavailable)"},
		{scsi.SenseNotReadyOffline(), "NOT READY (offline)"},
		{scsi.SensePowerOnReset(), "POWER ON OR RESET"},
		{scsi.SenseLUNReset(), "LOGICAL UNIT RESET"},
		{scsi.SenseAsymmetricAccessChanged(), "ASYMMETRIC ACCESS STATE CHANGED"},
		{scsi.SenseReservationsPreempted(), "RESERVATIONS PREEMPTED"},
		{scsi.SenseReservationsReleased(), "RESERVATIONS RELEASED"},
		{scsi.SenseRegistrationsPreempted(), "REGISTRATIONS PREEMPTED"},
	} {
		if s.Is(n.s) {
			return txt + " " + n.name
		}
	}
	return txt
}

// block is one 512-byte block of pattern c at lba: the lba, then c.
func (tr *pairTranscript) block(t *testing.T, d *datadriven.TestData, lba uint64, c byte) []byte {
	if c == '0' || c == '?' || c <= ' ' || c > '~' {
		d.Fatalf(t, "pattern %q: a printable character other than 0 and ?", c)
	}
	b := bytes.Repeat([]byte{c}, 512)
	binary.BigEndian.PutUint64(b, lba)
	return b
}

// blockText names a block's content: its pattern, 0 if never
// written, ? otherwise.
func blockText(lba uint64, b []byte) string {
	if bytes.Equal(b, make([]byte, len(b))) {
		return "0"
	}
	if len(b) != 512 || binary.BigEndian.Uint64(b) != lba {
		return "?"
	}
	c := b[8]
	if bytes.Count(b[8:], []byte{c}) != len(b)-8 {
		return "?"
	}
	return string(rune(c))
}

// blocksText names each block of data read from lba.
func blocksText(lba uint64, data []byte) string {
	var s []string
	for i := 0; i+512 <= len(data); i += 512 {
		s = append(s, blockText(lba+uint64(i/512), data[i:i+512]))
	}
	return strings.Join(s, " ")
}

// prOut is PERSISTENT RESERVE OUT with service action sa (1 RESERVE, 2
// RELEASE), reservation key key and type typ.
func prOutCDB(sa byte, key uint64, typ byte) (cdb, param []byte) {
	param = make([]byte, 24)
	binary.BigEndian.PutUint64(param[0:8], key)
	cdb = make([]byte, 10)
	cdb[0] = 0x5f
	cdb[1] = sa
	cdb[2] = typ
	binary.BigEndian.PutUint32(cdb[5:9], 24)
	return cdb, param
}

// prInReadReservation is PERSISTENT RESERVE IN READ RESERVATION.
func prInReadReservation() []byte {
	cdb := prInReadKeys()
	cdb[1] = 0x01
	return cdb
}

var prTypeNames = []struct {
	name string
	typ  byte
}{{"we", 1}, {"ea", 3}, {"wero", 5}, {"earo", 6}, {"wear", 7}, {"eaar", 8}}

func prTypeName(typ byte) string {
	for _, p := range prTypeNames {
		if p.typ == typ {
			return p.name
		}
	}
	return fmt.Sprintf("%#x", typ)
}

func (tr *pairTranscript) prType(t *testing.T, d *datadriven.TestData) byte {
	s := tr.str(t, d, "type")
	for _, p := range prTypeNames {
		if p.name == s {
			return p.typ
		}
	}
	d.Fatalf(t, "type=%s: one of we, ea, wero, earo, wear, eaar", s)
	return 0
}

// Argument helpers.

func (tr *pairTranscript) str(t *testing.T, d *datadriven.TestData, key string) string {
	var s string
	d.ScanArgs(t, key, &s)
	return s
}

func (tr *pairTranscript) char(t *testing.T, d *datadriven.TestData, key string) byte {
	s := tr.str(t, d, key)
	if len(s) != 1 {
		d.Fatalf(t, "%s=%s: one character", key, s)
	}
	return s[0]
}

// num parses a number argument: decimal or 0x hexadecimal.
func (tr *pairTranscript) num(t *testing.T, d *datadriven.TestData, key string) uint64 {
	s := tr.str(t, d, key)
	v, err := strconv.ParseUint(s, 0, 64)
	if err != nil {
		d.Fatalf(t, "%s=%s: %v", key, s, err)
	}
	return v
}

func (tr *pairTranscript) duration(t *testing.T, d *datadriven.TestData, key string, v *time.Duration) {
	s := tr.str(t, d, key)
	var err error
	if *v, err = time.ParseDuration(s); err != nil {
		d.Fatalf(t, "%s=%s: %v", key, s, err)
	}
}

// lbaArgs returns lba= and blocks= (1 if absent) and notes the range.
func (tr *pairTranscript) lbaArgs(t *testing.T, d *datadriven.TestData) (lba, blocks uint64) {
	lba, blocks = tr.num(t, d, "lba"), 1
	if d.HasArg("blocks") {
		blocks = tr.num(t, d, "blocks")
	}
	if blocks == 0 || blocks > 2048 || (lba+blocks)*512 > pairVolSize {
		d.Fatalf(t, "lba=%d blocks=%d: 1 to 2048 blocks inside the volume", lba, blocks)
	}
	tr.touch(lba, blocks)
	return lba, blocks
}

func (tr *pairTranscript) touch(lba, blocks uint64) { tr.maxLBA = max(tr.maxLBA, lba+blocks) }

// arrayArg returns the index of the array key names: a (the sequencer)
// or b.
func (tr *pairTranscript) arrayArg(t *testing.T, d *datadriven.TestData, key string) int {
	switch s := tr.str(t, d, key); s {
	case "a":
		return 0
	case "b":
		return 1
	default:
		d.Fatalf(t, "%s=%s: a or b", key, s)
	}
	return 0
}
