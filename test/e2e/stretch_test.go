package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"maps"
	"math/rand/v2"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/metro-storage/metro/internal/initiator"
	"github.com/metro-storage/metro/internal/lab"
)

// dialArray logs in to array i of the lab as initiator and consumes the
// power-on unit attention.
func dialArray(t *testing.T, l *lab.Lab, i int, name string) *initiator.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	a := l.Info.Arrays[i]
	c, err := initiator.Dial(ctx, a.Portal, initiator.Options{InitiatorName: name, TargetName: a.Target, Timeout: 20 * time.Second})
	if err != nil {
		t.Fatalf("log in to %s as %s: %v", a.Name, name, err)
	}
	for i := 0; i < 4 && c.TestUnitReady(0) != nil; i++ {
	}
	return c
}

// volumeDigests reads the lab volume through array i, 1 MiB at a time,
// and returns each piece's SHA-256.
func volumeDigests(t *testing.T, l *lab.Lab, i int, name string) [][32]byte {
	t.Helper()
	c := dialArray(t, l, i, name)
	defer c.Close()
	blocks, bs, err := c.ReadCapacity(0)
	if err != nil {
		t.Fatalf("%s: read capacity: %v", l.Info.Arrays[i].Name, err)
	}
	const piece = 1 << 20
	per := uint64(piece / bs)
	var out [][32]byte
	for lba := uint64(0); lba < blocks; lba += per {
		n := min(per, blocks-lba)
		d, err := c.Read(0, lba, uint32(n))
		if err != nil {
			t.Fatalf("%s: read at LBA %d: %v", l.Info.Arrays[i].Name, lba, err)
		}
		out = append(out, sha256.Sum256(d))
	}
	return out
}

// compareCopies reads the whole lab volume through both arrays of the
// pair (each read is served from that array's own copy) and fails at the
// first MiB that differs.
func compareCopies(t *testing.T, l *lab.Lab, name string) {
	t.Helper()
	if len(l.Info.Arrays) != 2 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := l.WaitInSync(ctx, 2*time.Minute); err != nil {
		t.Fatalf("compare copies: %v", err)
	}
	a := volumeDigests(t, l, 0, name)
	b := volumeDigests(t, l, 1, name)
	if len(a) != len(b) {
		t.Fatalf("the copies differ in size: %d MiB on array-a, %d MiB on array-b", len(a), len(b))
	}
	for i := range a {
		if !bytes.Equal(a[i][:], b[i][:]) {
			t.Fatalf("the copies differ in MiB %d (of %d)", i, len(a))
		}
	}
	t.Logf("both copies identical (%d MiB compared)", len(a))
}

// tpgState is one target port group descriptor of REPORT TARGET PORT
// GROUPS.
type tpgState struct {
	state byte
	pref  bool
}

// reportTPG returns the groups the array reports, by group id.
func reportTPG(t *testing.T, c *initiator.Conn) map[uint16]tpgState {
	t.Helper()
	d, err := c.ReportTargetPortGroups(0)
	if err != nil {
		t.Fatalf("REPORT TARGET PORT GROUPS: %v", err)
	}
	out := map[uint16]tpgState{}
	for p := 8; p+8 <= len(d); { // extended header
		id := uint16(d[p+2])<<8 | uint16(d[p+3])
		out[id] = tpgState{state: d[p] & 0x0f, pref: d[p]&0x80 != 0}
		p += 8 + 4*int(d[p+7])
	}
	return out
}

// TestALUAPreferences reads REPORT TARGET PORT GROUPS through both arrays
// of a stretched pair for a host preferring array-a, one preferring
// array-b and one with no preference, then changes a preference live and
// checks the unit attention and the new states.
func TestALUAPreferences(t *testing.T) {
	const (
		iqnA    = "iqn.2026-11.io.metro:e2e-prefer-a"
		iqnB    = "iqn.2026-11.io.metro:e2e-prefer-b"
		iqnNone = "iqn.2026-11.io.metro:e2e-prefer-none"
	)
	l := startLab(t, lab.Options{Initiators: []string{iqnNone}, Size: 64 << 20})
	mustCLI(t, l, "host", "create", "--iqn", iqnA, "--preferred-array", "array-a", "h-a")
	mustCLI(t, l, "host", "create", "--iqn", iqnB, "--preferred-array", "array-b", "h-b")
	mustCLI(t, l, "host", "connect", "--vol", "pod1::vol1", "--lun", "0", "h-a")
	mustCLI(t, l, "host", "connect", "--vol", "pod1::vol1", "--lun", "0", "h-b")

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := l.Client(0)
	if err != nil {
		t.Fatal(err)
	}
	arrays, err := c.Arrays(ctx)
	if err != nil || len(arrays) != 2 {
		t.Fatalf("arrays: %v %+v", err, arrays)
	}
	tpg := map[string]uint16{arrays[0].Name: arrays[0].TPG, arrays[1].Name: arrays[1].TPG}
	const ao, ano = 0x0, 0x1
	want := map[string]map[string]tpgState{
		iqnA:    {"array-a": {ao, true}, "array-b": {ano, false}},
		iqnB:    {"array-a": {ano, false}, "array-b": {ao, true}},
		iqnNone: {"array-a": {ao, false}, "array-b": {ao, false}},
	}
	conns := map[string][]*initiator.Conn{}
	for iqn, groups := range want {
		for i := range l.Info.Arrays {
			// The host configuration reaches the follower through the
			// sequencer; wait for it.
			var cn *initiator.Conn
			for try := 0; ; try++ {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				a := l.Info.Arrays[i]
				cn, err = initiator.Dial(ctx, a.Portal, initiator.Options{InitiatorName: iqn, TargetName: a.Target, Timeout: 10 * time.Second})
				cancel()
				if err == nil || try > 50 {
					break
				}
				time.Sleep(100 * time.Millisecond)
			}
			if err != nil {
				t.Fatalf("%s: log in to %s: %v", iqn, l.Info.Arrays[i].Name, err)
			}
			defer cn.Close()
			for k := 0; k < 4 && cn.TestUnitReady(0) != nil; k++ {
			}
			conns[iqn] = append(conns[iqn], cn)
			got := reportTPG(t, cn)
			if len(got) != 2 {
				t.Fatalf("%s through %s: %d groups, want 2: %+v", iqn, l.Info.Arrays[i].Name, len(got), got)
			}
			for name, w := range groups {
				if g := got[tpg[name]]; g != w {
					t.Errorf("%s through %s: group of %s is state %d pref %v, want state %d pref %v",
						iqn, l.Info.Arrays[i].Name, name, g.state, g.pref, w.state, w.pref)
				}
			}
		}
	}
	// Prefer array-b for h-a now: every path of h-a reports the change.
	mustCLI(t, l, "host", "setattr", "--preferred-array", "array-b", "h-a")
	for i, cn := range conns[iqnA] {
		var key, asc, ascq byte
		deadline := time.Now().Add(10 * time.Second)
		for {
			err := cn.TestUnitReady(0)
			var se *initiator.SCSIError
			if errors.As(err, &se) {
				key, asc, ascq = se.SenseKey()
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("h-a through %s: no unit attention after the preference changed", l.Info.Arrays[i].Name)
			}
			time.Sleep(50 * time.Millisecond)
		}
		if key != 0x6 || asc != 0x2a || ascq != 0x06 {
			t.Fatalf("h-a through %s: sense %x/%02x/%02x, want 6/2a/06 (asymmetric access state changed)", l.Info.Arrays[i].Name, key, asc, ascq)
		}
		got := reportTPG(t, cn)
		if got[tpg["array-b"]] != (tpgState{ao, true}) || got[tpg["array-a"]] != (tpgState{ano, false}) {
			t.Fatalf("h-a through %s after the change: %+v", l.Info.Arrays[i].Name, got)
		}
	}
}

// TestStretchedKill9 kills either array of a stretched pair with SIGKILL
// while sessions write known patterns through both, restarts it, and
// checks that every acknowledged write reads back intact through both
// arrays and that the copies are identical.
func TestStretchedKill9(t *testing.T) {
	const perWriter, rounds = 2048, 6
	l := startLab(t, lab.Options{Initiators: []string{crashInitiator}, Size: 64 << 20, LinkTimeout: 2 * time.Second})
	// Writers 0 and 1 write through array-a, 2 and 3 through array-b.
	regions := make([]*region, 4)
	for w := range regions {
		regions[w] = &region{first: uint64(w * perWriter), blocks: perWriter, acked: make([]uint64, perWriter), inflight: map[uint64]uint64{}}
	}
	seqs := make([]uint64, len(regions))
	rng := rand.New(rand.NewPCG(7, uint64(time.Now().UnixNano())))
	total := 0
	for round := 0; round < rounds; round++ {
		victim := rng.IntN(2)
		ctx, cancel := context.WithCancel(context.Background())
		var wg sync.WaitGroup
		counts := make([]int, len(regions))
		for w := range regions {
			c := dialArray(t, l, w/2, crashInitiator)
			wrng := rand.New(rand.NewPCG(uint64(round), uint64(w)))
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				counts[w] = regions[w].write(ctx, c, &seqs[w], wrng)
			}()
		}
		time.Sleep(time.Duration(200+rng.IntN(600)) * time.Millisecond)
		if err := l.Kill(victim); err != nil {
			t.Fatal(err)
		}
		// The survivor's writers carry on (through the pause, if the
		// sequencer survived) for a while.
		time.Sleep(time.Duration(rng.IntN(3000)) * time.Millisecond)
		cancel()
		wg.Wait()
		for _, n := range counts {
			total += n
		}
		rctx, rcancel := context.WithTimeout(context.Background(), 2*time.Minute)
		if err := l.Start(rctx, victim); err != nil {
			rcancel()
			t.Fatalf("round %d: restart %s: %v", round, l.Info.Arrays[victim].Name, err)
		}
		if err := l.WaitInSync(rctx, 2*time.Minute); err != nil {
			rcancel()
			t.Fatalf("round %d after killing %s: %v", round, l.Info.Arrays[victim].Name, err)
		}
		rcancel()
		for i := range l.Info.Arrays {
			c := dialArray(t, l, i, crashInitiator)
			for _, r := range regions {
				inflight := maps.Clone(r.inflight)
				r.verify(t, c)
				r.inflight = inflight
			}
			c.Close()
		}
		for _, r := range regions {
			clear(r.inflight)
		}
		t.Logf("round %d: killed %s; %d writes acknowledged so far", round, l.Info.Arrays[victim].Name, total)
	}
	compareCopies(t, l, crashInitiator)
	if total < rounds {
		t.Fatalf("only %d writes were acknowledged in %d rounds: the writers did not really run", total, rounds)
	}
}

// TestBaselineWhileWriting stretches a pod whose 1 GiB volume holds 256
// MiB of data while a host keeps writing through the first array: the
// copies end identical and the baseline sends about the written data
// only.
func TestBaselineWhileWriting(t *testing.T) {
	needTool(t, "qemu-io")
	l := startLab(t, lab.Options{Initiators: []string{qemuInitiator}, Size: 1 << 30, Unstretched: true})
	if out, err := runTool(t, 3*time.Minute, "qemu-io", "--image-opts", qemuOpts(l, 0), "-c", "write -P 0x5a 0 256M"); err != nil {
		t.Fatalf("qemu-io: %v\n%s", err, out)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c := dialArray(t, l, 0, qemuInitiator)
	defer c.Close()
	// The same writer without a baseline, for comparison.
	before := 0
	brng := rand.New(rand.NewPCG(5, 6))
	bbuf := make([]byte, 4096)
	for t0 := time.Now(); time.Since(t0) < 2*time.Second; before++ {
		for i := range bbuf {
			bbuf[i] = byte(brng.Uint32())
		}
		if err := c.Write(0, brng.Uint64N(512<<20/4096)*8, bbuf); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("before the stretch the host wrote %.0f writes/s (depth 1, one array)", float64(before)/2)
	var writes int
	var werr error
	done := make(chan struct{})
	go func() {
		defer close(done)
		rng := rand.New(rand.NewPCG(3, 4))
		buf := make([]byte, 4096)
		for ctx.Err() == nil {
			for i := range buf {
				buf[i] = byte(rng.Uint32())
			}
			// Anywhere in the first 512 MiB: copied and not yet
			// copied regions, written and unwritten ones.
			lba := rng.Uint64N(512<<20/4096) * 8
			for try := 0; ; try++ {
				werr = c.Write(0, lba, buf)
				var se *initiator.SCSIError
				if errors.As(werr, &se) && try < 3 {
					if key, _, _ := se.SenseKey(); key == 0x6 {
						continue // a unit attention (the ALUA states changed): retry, as hosts do
					}
				}
				break
			}
			if werr != nil {
				return
			}
			writes++
		}
	}()
	start := time.Now()
	out := mustCLI(t, l, "pod", "add", "--array", "array-b", "--wait", "pod1")
	took := time.Since(start)
	cancel()
	<-done
	if werr != nil {
		t.Fatalf("host write during the baseline failed: %v", werr)
	}
	if writes == 0 {
		t.Fatal("the host wrote nothing during the baseline")
	}
	t.Logf("baseline took %v with %d host writes of 4 KiB during it (%.0f writes/s)\n%s", took.Round(time.Millisecond), writes,
		float64(writes)/took.Seconds(), out)
	api, err := l.Client(0)
	if err != nil {
		t.Fatal(err)
	}
	info, err := api.Array(context.Background())
	if err != nil || info.Link == nil {
		t.Fatalf("array info: %v %+v", err, info)
	}
	ratio := float64(info.Link.Baseline) / float64(256<<20)
	t.Logf("baseline traffic %d bytes = %.3f x the 256 MiB written (mirrored host writes %d bytes)", info.Link.Baseline, ratio, info.Link.Mirror)
	if ratio > 1.1 {
		t.Errorf("baseline sent %.3f x the written data, want <= 1.1", ratio)
	}
	compareCopies(t, l, qemuInitiator)
}

// cliOn runs the metro CLI against array i of the lab.
func cliOn(t *testing.T, l *lab.Lab, i int, args ...string) string {
	t.Helper()
	out, err := cliTry(t, l, i, args...)
	if err != nil {
		t.Fatalf("metro %s on %s: %v\n%s", strings.Join(args, " "), l.Info.Arrays[i].Name, err, out)
	}
	return out
}

// podView is what `metro pod list --json` shows of a pod.
type podView struct {
	Name      string
	Sequencer string
	Epoch     uint64
	Arrays    []struct{ Name, Status string }
}

func podsOn(t *testing.T, l *lab.Lab, i int, args ...string) map[string]podView {
	t.Helper()
	var pods []podView
	if err := json.Unmarshal([]byte(cliOn(t, l, i, append([]string{"pod", "list", "--json"}, args...)...)), &pods); err != nil {
		t.Fatal(err)
	}
	out := map[string]podView{}
	for _, p := range pods {
		out[p.Name] = p
	}
	return out
}

// statusOf returns the status array shows for array name in pod p.
func statusOf(p podView, name string) string {
	for _, a := range p.Arrays {
		if a.Name == name {
			return a.Status
		}
	}
	return ""
}

// proxyCall posts to the lab's link proxy control API.
func proxyCall(t *testing.T, l *lab.Lab, path string) {
	t.Helper()
	resp, err := http.Post(l.Info.LinkProxy+path, "application/json", nil)
	if err != nil {
		t.Fatalf("link proxy %s: %v", path, err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("link proxy %s: %s", path, resp.Status)
	}
}

// TestLinkPartitionAndUnstretch cuts the link of a stretched pair: the pod
// stays online on its sequencer, which it prefers (writes there complete
// after the pause; without a preference either array may win the race),
// the follower answers NOT READY, and when the link heals the follower
// catches up by itself. Then the pod is unstretched from the follower's
// side, stretched again, handed over by removing its sequencer, and the
// removed copy is eradicated.
func TestLinkPartitionAndUnstretch(t *testing.T) {
	l, a, b := startPairWithHosts(t)
	cliOn(t, l, 0, "pod", "setattr", "--failover-preference", "array-a", "pod1")

	proxyCall(t, l, "/link/partition")
	start := time.Now()
	if err := writeRetry(a, 8, block(2)); err != nil {
		t.Fatalf("write through the sequencer during the cut: %v", err)
	}
	t.Logf("first write through the sequencer after the cut took %v", time.Since(start).Round(time.Millisecond))
	var key, asc byte
	for deadline := time.Now().Add(30 * time.Second); ; {
		err := b.Write(0, 16, block(3))
		var se *initiator.SCSIError
		if errors.As(err, &se) {
			if key, asc, _ = se.SenseKey(); key == 0x2 && asc == 0x04 {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("the follower still accepts writes during the cut (last: %v)", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if got := statusOf(podsOn(t, l, 1)["pod1"], "array-b"); got != "offline" {
		t.Errorf("array-b sees itself %q during the cut, want offline", got)
	}
	if got := statusOf(podsOn(t, l, 0)["pod1"], "array-a"); got != "online" {
		t.Errorf("array-a sees itself %q during the cut, want online", got)
	}
	for i := 0; i < 20; i++ {
		if err := writeRetry(a, uint64(24+8*i), block(byte(10+i))); err != nil {
			t.Fatalf("write through the sequencer alone: %v", err)
		}
	}
	proxyCall(t, l, "/link/heal")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := l.WaitInSync(ctx, 2*time.Minute); err != nil {
		t.Fatalf("after the heal: %v", err)
	}
	compareCopies(t, l, crashInitiator)

	// Unstretch from the follower's side; its copy is kept pending.
	cliOn(t, l, 1, "pod", "remove", "--array", "array-b", "pod1")
	if p := podsOn(t, l, 0)["pod1"]; len(p.Arrays) != 1 || p.Arrays[0].Name != "array-a" {
		t.Fatalf("after removing array-b, array-a lists %+v", p)
	}
	if _, ok := podsOn(t, l, 1, "--pending")["pod1"]; !ok {
		t.Fatalf("array-b does not list its copy of pod1 as pending eradication")
	}
	if err := writeRetry(a, 400, block(0x77)); err != nil {
		t.Fatalf("write to the unstretched pod: %v", err)
	}
	// Stretch again: the copies end identical.
	cliOn(t, l, 0, "pod", "add", "--array", "array-b", "--wait", "pod1")
	compareCopies(t, l, crashInitiator)

	// Remove the sequencer: the pod moves to array-b.
	cliOn(t, l, 0, "pod", "remove", "--array", "array-a", "pod1")
	p := podsOn(t, l, 1)["pod1"]
	if len(p.Arrays) != 1 || p.Arrays[0].Name != "array-b" || p.Sequencer != "array-b" {
		t.Fatalf("after removing array-a, array-b lists %+v", p)
	}
	if werr := writeRetry(b, 408, block(0x78)); werr != nil {
		t.Fatalf("write through array-b after the handover: %v", werr)
	}
	_ = b.TestUnitReady(0)
	d, err := b.Read(0, 400, 16)
	if err != nil || !bytes.Equal(d[:4096], block(0x77)) || !bytes.Equal(d[4096:], block(0x78)) {
		t.Fatalf("read through array-b after the handover: %v", err)
	}
	if _, ok := podsOn(t, l, 0, "--pending")["pod1"]; !ok {
		t.Fatalf("array-a does not list its copy of pod1 as pending eradication")
	}
	cliOn(t, l, 0, "pod", "eradicate", "pod1")
	if _, ok := podsOn(t, l, 0, "--pending")["pod1"]; ok {
		t.Fatalf("array-a still lists pod1 after eradicating it")
	}
}

// writeRetry writes as a host does around configuration changes: a unit
// attention or a transitioning path is retried (for up to 10 s).
func writeRetry(c *initiator.Conn, lba uint64, data []byte) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := c.Write(0, lba, data)
		var se *initiator.SCSIError
		if err == nil || !errors.As(err, &se) || time.Now().After(deadline) {
			return err
		}
		if key, asc, _ := se.SenseKey(); key != 0x6 && !(key == 0x2 && asc == 0x04) {
			return err
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestBaselineResumes kills the receiving array (kill -9) in the middle of
// a baseline copy and restarts it: the copy resumes where it stopped
// rather than starting over, and the copies end identical.
func TestBaselineResumes(t *testing.T) {
	needTool(t, "qemu-io")
	l := startLab(t, lab.Options{Initiators: []string{qemuInitiator}, Size: 1 << 30, Unstretched: true,
		BaselineRate: 48 << 20, LinkTimeout: 2 * time.Second})
	if out, err := runTool(t, 3*time.Minute, "qemu-io", "--image-opts", qemuOpts(l, 0), "-c", "write -P 0x3c 0 256M"); err != nil {
		t.Fatalf("qemu-io: %v\n%s", err, out)
	}
	cliOn(t, l, 0, "pod", "add", "--array", "array-b", "pod1")
	api, err := l.Client(0)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	for {
		p, err := api.Pod(ctx, "pod1")
		if err != nil {
			t.Fatal(err)
		}
		if r := p.Replication; r != nil && r.Copying && r.Percent >= 45 {
			t.Logf("killing array-b at %.0f%% of the baseline", r.Percent)
			break
		}
		if ctx.Err() != nil {
			t.Fatal("the baseline did not reach 45%")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := l.Kill(1); err != nil {
		t.Fatal(err)
	}
	// Written while the receiving array is down: copied on the resume.
	if out, err := runTool(t, time.Minute, "qemu-io", "--image-opts", qemuOpts(l, 0), "-c", "write -P 0x4d 1M 64K"); err != nil {
		t.Fatalf("qemu-io: %v\n%s", err, out)
	}
	if err := l.Start(ctx, 1); err != nil {
		t.Fatal(err)
	}
	if err := l.WaitInSync(ctx, 3*time.Minute); err != nil {
		t.Fatal(err)
	}
	info, err := api.Array(ctx)
	if err != nil || info.Link == nil {
		t.Fatalf("array info: %v", err)
	}
	ratio := float64(info.Link.Baseline) / float64(256<<20)
	t.Logf("baseline traffic with the interruption: %d bytes = %.3f x the 256 MiB written", info.Link.Baseline, ratio)
	logB, _ := os.ReadFile(l.Info.Arrays[1].Log)
	if !strings.Contains(string(logB), "resuming the copy") {
		t.Errorf("array-b did not resume the copy (its log does not say so)")
	}
	if ratio > 1.5 {
		t.Errorf("the copy sent %.2f x the data: it started over instead of resuming", ratio)
	}
	compareCopies(t, l, qemuInitiator)
}
