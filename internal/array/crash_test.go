package array

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/metro-storage/metro/internal/catalog"
	"github.com/metro-storage/metro/internal/scsi"
)

const testIQN = "iqn.2026-11.io.metro:test-host"

func testConfig() *Config {
	c := &Config{Name: "array-a", DataDir: "/data"}
	if err := c.setDefaults(); err != nil {
		panic(err)
	}
	return c
}

func openOn(t *testing.T, fs vfs.FS) *Array {
	t.Helper()
	a, err := Open(Options{Config: testConfig(), FS: fs})
	if err != nil {
		t.Fatalf("open array: %v", err)
	}
	return a
}

func nexus(a *Array, isid byte) scsi.Nexus {
	return scsi.Nexus{InitiatorName: testIQN, InitiatorPort: fmt.Sprintf("%s,i,0x80000000000%x", testIQN, isid),
		TargetPort: a.cfg.ISCSI.Target + ",t,0x0001", RelativePortID: a.id.RelativePortID()}
}

// exec runs a command, retrying past unit attentions.
func exec(t *testing.T, a *Array, n scsi.Nexus, cdb, out []byte, in uint32) *scsi.Result {
	t.Helper()
	for i := 0; ; i++ {
		r := a.target.Execute(context.Background(), &scsi.Command{Nexus: n, LUN: 0, CDB: cdb, DataOut: out, ExpectedDataIn: in})
		if r.Status == scsi.StatusCheckCondition && len(r.Sense) > 2 && r.Sense[2]&0xf == 0x6 && i < 5 {
			continue
		}
		return r
	}
}

func write16(lba uint64, data []byte) []byte {
	cdb := make([]byte, 16)
	cdb[0] = 0x8a
	binary.BigEndian.PutUint64(cdb[2:10], lba)
	binary.BigEndian.PutUint32(cdb[10:14], uint32(len(data)/512))
	return cdb
}

func read16(lba uint64, blocks uint32) []byte {
	cdb := make([]byte, 16)
	cdb[0] = 0x88
	binary.BigEndian.PutUint64(cdb[2:10], lba)
	binary.BigEndian.PutUint32(cdb[10:14], blocks)
	return cdb
}

// prRegister registers key, with APTPL when aptpl.
func prRegister(key uint64, aptpl bool) ([]byte, []byte) {
	param := make([]byte, 24)
	binary.BigEndian.PutUint64(param[8:16], key)
	if aptpl {
		param[20] = 1
	}
	cdb := make([]byte, 10)
	cdb[0] = 0x5f
	cdb[1] = 0x00
	binary.BigEndian.PutUint32(cdb[5:9], 24)
	return cdb, param
}

func prReadKeys(t *testing.T, a *Array, n scsi.Nexus) []uint64 {
	t.Helper()
	cdb := make([]byte, 10)
	cdb[0] = 0x5e
	binary.BigEndian.PutUint16(cdb[7:9], 512)
	r := exec(t, a, n, cdb, nil, 512)
	if r.Status != scsi.StatusGood {
		t.Fatalf("PR IN READ KEYS: status %x sense %x", r.Status, r.Sense)
	}
	n2 := binary.BigEndian.Uint32(r.Data[4:8])
	var keys []uint64
	for i := 8; i < 8+int(n2); i += 8 {
		keys = append(keys, binary.BigEndian.Uint64(r.Data[i:i+8]))
	}
	return keys
}

func setup(t *testing.T, a *Array) {
	t.Helper()
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, op := range []catalog.Op{
		catalog.CreatePod{Name: "pod1", ID: newID(), Created: now, Array: catalog.PodArray{Name: "array-a", ID: a.id.ID}},
		catalog.CreateVolume{Name: "pod1::vol1", UUID: newID(), Size: 64 << 20, Created: now},
		catalog.CreateHost{Host: catalog.Host{Name: "h1", IQNs: []string{testIQN}}},
		catalog.Connect{Volume: "pod1::vol1", Host: "h1"},
	} {
		if err := a.cat.Apply(op); err != nil {
			t.Fatal(err)
		}
	}
}

func pattern(lba, seq uint64) []byte {
	b := make([]byte, 4096)
	for i := 0; i < len(b); i += 16 {
		binary.BigEndian.PutUint64(b[i:], lba)
		binary.BigEndian.PutUint64(b[i+8:], seq)
	}
	return b
}

// TestPowerLoss runs writers and configuration changes against an array
// on a filesystem that forgets everything not synced, "pulls the plug" at
// a random moment, reopens the array on what survived and checks that
// every acknowledged write, the configuration and the APTPL reservation
// are there, and that a reservation made without APTPL is not.
func TestPowerLoss(t *testing.T) {
	iterations := 8
	if testing.Short() {
		iterations = 3
	}
	for it := 0; it < iterations; it++ {
		t.Run(fmt.Sprint(it), func(t *testing.T) { powerLossOnce(t, uint64(it)) })
	}
}

func powerLossOnce(t *testing.T, seed uint64) {
	fs := vfs.NewCrashableMem()
	a := openOn(t, fs)
	setup(t, a)
	n1, n2 := nexus(a, 1), nexus(a, 2)
	cdb, p := prRegister(0xaaaa, true)
	if r := exec(t, a, n1, cdb, p, 0); r.Status != scsi.StatusGood {
		t.Fatalf("register with APTPL: %x %x", r.Status, r.Sense)
	}

	const writers = 4
	var (
		mu    sync.Mutex
		acked = map[uint64]uint64{} // lba (4 KiB aligned, in blocks) -> seq
		stop  atomic.Bool
		wg    sync.WaitGroup
		seq   atomic.Uint64
	)
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(seed, uint64(w)))
			for !stop.Load() {
				lba := uint64(w*1024+rng.IntN(1024)) * 8
				s := seq.Add(1)
				r := a.target.Execute(context.Background(), &scsi.Command{Nexus: n1, CDB: write16(lba, pattern(lba, s)), DataOut: pattern(lba, s)})
				if r.Status != scsi.StatusGood {
					continue
				}
				mu.Lock()
				if acked[lba] < s {
					acked[lba] = s
				}
				mu.Unlock()
			}
		}()
	}
	time.Sleep(time.Duration(20+seed*7%50) * time.Millisecond)
	// Configuration changes while writing.
	if err := a.cat.Apply(catalog.CreateVolume{Name: "pod1::vol2", UUID: newID(), Size: 1 << 20, Created: time.Now()}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(10 * time.Millisecond)
	// Power cut: what was synced survives, the rest is lost at random.
	mu.Lock()
	crashed := fs.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: 50, RNG: rand.New(rand.NewPCG(seed, 99))})
	snapshot := make(map[uint64]uint64, len(acked))
	for k, v := range acked {
		snapshot[k] = v
	}
	mu.Unlock()
	stop.Store(true)
	wg.Wait()
	// A registration without APTPL after the crash point does not matter;
	// one before it must not survive a restart either.
	a.Close()

	b := openOn(t, crashed)
	defer b.Close()
	st := b.cat.View()
	if st.Volumes["pod1::vol1"] == nil || st.Volumes["pod1::vol2"] == nil || st.Hosts["h1"] == nil || len(st.Connections) != 1 {
		t.Fatalf("configuration lost: %+v", st)
	}
	if keys := prReadKeys(t, b, n2); len(keys) != 1 || keys[0] != 0xaaaa {
		t.Fatalf("APTPL registration after power loss: %x", keys)
	}
	for lba, s := range snapshot {
		r := exec(t, b, n1, read16(lba, 8), nil, 4096)
		if r.Status != scsi.StatusGood {
			t.Fatalf("read %d: %x %x", lba, r.Status, r.Sense)
		}
		got := binary.BigEndian.Uint64(r.Data[8:16])
		if got < s || !bytes.Equal(r.Data, pattern(lba, got)) {
			t.Fatalf("lba %d: acknowledged seq %d, read seq %d (torn: %v)", lba, s, got, !bytes.Equal(r.Data, pattern(lba, got)))
		}
	}
	t.Logf("%d acknowledged 4 KiB writes survived", len(snapshot))
}

// TestReservationWithoutAPTPLIsForgotten checks the other half of the
// APTPL rule: a registration without it does not survive a restart.
func TestReservationWithoutAPTPLIsForgotten(t *testing.T) {
	fs := vfs.NewMem()
	a := openOn(t, fs)
	setup(t, a)
	n := nexus(a, 1)
	cdb, p := prRegister(0xbbbb, false)
	if r := exec(t, a, n, cdb, p, 0); r.Status != scsi.StatusGood {
		t.Fatalf("register: %x %x", r.Status, r.Sense)
	}
	if keys := prReadKeys(t, a, n); len(keys) != 1 {
		t.Fatalf("keys before restart: %x", keys)
	}
	a.Close()
	b := openOn(t, fs)
	defer b.Close()
	if keys := prReadKeys(t, b, n); len(keys) != 0 {
		t.Fatalf("keys after restart without APTPL: %x", keys)
	}
}
