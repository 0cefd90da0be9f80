package replication

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/metro-storage/metro/internal/catalog"
	"github.com/metro-storage/metro/internal/link"
	"github.com/metro-storage/metro/internal/logtest"
	"github.com/metro-storage/metro/internal/pod"
	"github.com/metro-storage/metro/internal/scsi"
	"github.com/metro-storage/metro/internal/store"
)

// The hostile-peer harness: a Replicator of array-b on an in-memory store
// and catalog, with a real link session to a fake array-a that the tests
// drive by hand, sending what a malicious or broken peer could send. The
// Replicator's runtimes run (its pods' goroutines) but not its link loop:
// the session is the one the test made.

const (
	nameA, idA = "array-a", "id-array-a"
	nameB, idB = "array-b", "id-array-b"
	// portA and portB are the arrays' relative port ids (PortOf).
	portA, portB = 0x0a, 0x0b
	volSize      = 1 << 20

	iqnH1   = "iqn.2026-01.test:h1"
	iqnH2   = "iqn.2026-01.test:h2"
	iqnEvil = "iqn.2026-01.test:evil"
	secret1 = "h1-chap-secret-1"
)

// The configuration of array-b before each test:
//
//	local  (array-b only)            local::secret → h1 (CHAP), and group g (h1)
//	pod1   (stretched, a orders, b follows, epoch 5)  pod1::vol1 → h2
//	pod2   (stretched, b orders, epoch 7)             pod2::vol2 → h2
//	pod4   (stretched, b orders, epoch 3)             no volumes
var (
	uuidSecret = strings.Repeat("11", 16)
	uuidVol1   = strings.Repeat("22", 16)
	uuidVol2   = strings.Repeat("33", 16)
)

const epoch1, epoch2 = 5, 7

type memPersist struct {
	mu   sync.Mutex
	data []byte
}

func (m *memPersist) Load() ([]byte, bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.data, m.data != nil, nil
}

func (m *memPersist) Save(d []byte) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.data = bytes.Clone(d)
	return nil
}

// testEnv is the array around the Replicator under test.
type testEnv struct {
	cat    *catalog.Catalog
	st     *store.Store
	target *scsi.Target
	r      *Replicator
	mu     sync.Mutex
	lus    map[string]*scsi.LogicalUnit
}

func (e *testEnv) Catalog() *catalog.Catalog { return e.cat }
func (e *testEnv) Store() *store.Store       { return e.st }
func (e *testEnv) Target() *scsi.Target      { return e.target }
func (e *testEnv) LU(uuid string) *scsi.LogicalUnit {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.lus[uuid]
}

// configChanged makes a logical unit for every live volume.
func (e *testEnv) configChanged(st *catalog.State) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, v := range st.Volumes {
		if _, ok := e.lus[v.UUID]; ok || v.Destroyed != nil {
			continue
		}
		var id [16]byte
		b, _ := hex.DecodeString(v.UUID)
		copy(id[:], b)
		rv := e.r.Volume(v.Pod, v.UUID, e.st.Volume(v.DataID))
		e.lus[v.UUID] = scsi.NewLogicalUnit(scsi.LUConfig{UUID: id, Size: v.Size, Backend: rv, Replica: rv})
	}
}

// noResolver maps no LUNs: forwarded commands name their unit.
type noResolver struct{}

func (noResolver) LUN(string, uint64) *scsi.LogicalUnit                  { return nil }
func (noResolver) LUNs(string) []uint64                                  { return nil }
func (noResolver) PortGroups(string, *scsi.LogicalUnit) []scsi.PortGroup { return nil }

// hostilePeer is the harness: env is array-b, peer the fake array-a's
// session to it.
type hostilePeer struct {
	t    *testing.T
	env  *testEnv
	peer *link.Session
	// logs is array-b's log.
	logs *logtest.Buffer
	// serve, when set, answers array-b's requests to the fake peer
	// (otherwise it serves only stretch checks).
	serve atomic.Pointer[func(req link.Message) (link.Message, error)]
}

func mustApply(t *testing.T, c *catalog.Catalog, ops ...catalog.Op) {
	t.Helper()
	for _, op := range ops {
		if err := c.Apply(op); err != nil {
			t.Fatalf("%s: %v", op.Kind(), err)
		}
	}
}

func newHostilePeer(t *testing.T) *hostilePeer {
	t.Helper()
	h := &hostilePeer{t: t, logs: &logtest.Buffer{}}
	st, err := store.Open("db", store.Options{FS: vfs.NewMem(), CacheSize: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	cat, err := catalog.Open(&memPersist{})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	a, b := catalog.PodArray{Name: nameA, ID: idA}, catalog.PodArray{Name: nameB, ID: idB}
	lun0 := uint64(0)
	mustApply(t, cat,
		catalog.CreatePod{Name: "local", ID: "pod-local", Created: now, Array: b},
		catalog.CreateVolume{Name: "local::secret", UUID: uuidSecret, Size: volSize, Created: now},
		catalog.CreateHost{Host: catalog.Host{Name: "h1", IQNs: []string{iqnH1}, CHAPUser: "h1", CHAPSecret: secret1}},
		catalog.CreateHost{Host: catalog.Host{Name: "h2", IQNs: []string{iqnH2}}},
		catalog.CreateHostGroup{Name: "g", Hosts: []string{"h1"}},
		catalog.Connect{Volume: "local::secret", Host: "h1", LUN: &lun0},
		catalog.CreatePod{Name: "pod1", ID: "pod-1", Created: now, Array: a},
		catalog.SetPodMembership{Name: "pod1", Arrays: []catalog.PodArray{a, b}, Sequencer: nameA, Epoch: epoch1},
		catalog.CreateVolume{Name: "pod1::vol1", UUID: uuidVol1, Size: volSize, Created: now},
		catalog.Connect{Volume: "pod1::vol1", Host: "h2", LUN: &lun0},
		catalog.CreatePod{Name: "pod2", ID: "pod-2", Created: now, Array: b},
		catalog.SetPodMembership{Name: "pod2", Arrays: []catalog.PodArray{b, a}, Sequencer: nameB, Epoch: epoch2},
		catalog.CreateVolume{Name: "pod2::vol2", UUID: uuidVol2, Size: volSize, Created: now},
	)
	one := uint64(1)
	mustApply(t, cat, catalog.Connect{Volume: "pod2::vol2", Host: "h2", LUN: &one},
		catalog.CreatePod{Name: "pod4", ID: "pod-4", Created: now, Array: b})

	certA, err := link.NewCertificate(nameA)
	if err != nil {
		t.Fatal(err)
	}
	certB, err := link.NewCertificate(nameB)
	if err != nil {
		t.Fatal(err)
	}
	env := &testEnv{cat: cat, st: st, target: scsi.NewTarget(scsi.TargetConfig{Resolver: noResolver{}}), lus: map[string]*scsi.LogicalUnit{}}
	h.env = env
	r := New(Config{Name: nameB, ID: idB, Env: env, Link: link.Config{Cert: certB},
		Logger: h.logs.Logger(), Timeout: time.Second,
		PortOf: func(id string) uint16 {
			if id == idA {
				return portA
			}
			return portB
		}})
	env.r = r
	r.SetPeer(&Peer{Name: nameA, ID: idA, Cert: certA.Certificate[0]})

	// What Run does before its link loop: pods' runtimes and the
	// volume index follow the catalog. pod2 and pod4 start alone (just
	// stretched), so pod2's writes need no follower, and neither moves
	// on its own during a test (a paused pod would take a new epoch once
	// its follower's lease ran out).
	ctx, cancel := context.WithCancel(context.Background())
	r.ctx = ctx
	for _, pr := range []struct {
		name, id string
		epoch    uint64
	}{{"pod2", "pod-2", epoch2}, {"pod4", "pod-4", 3}} {
		if err := r.saveRecord(pr.name, pr.id, pod.Stretched(idB, pr.epoch), false); err != nil {
			t.Fatal(err)
		}
	}
	cat.Watch(func(st *catalog.State) {
		env.configChanged(st)
		r.indexVolumes(st)
		r.syncPods()
	})
	mustApply(t, cat, catalog.SetPodMembership{Name: "pod4", Arrays: []catalog.PodArray{b, a}, Sequencer: nameB, Epoch: 3})

	// The fake array-a dials array-b's link listener.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := link.Listen(r.linkConfig(r.peer()), ln)
	dctx, dcancel := context.WithTimeout(ctx, 10*time.Second)
	defer dcancel()
	// A long timeout: array-b's read lease (see newInSyncFollower)
	// stays valid through a test.
	cfgA := link.Config{LocalID: idA, PeerID: idB, Cert: certA, PeerCert: certB.Certificate[0], Timeout: time.Minute,
		Handler: func(_ context.Context, req link.Message) (link.Message, error) {
			if f := h.serve.Load(); f != nil {
				return (*f)(req)
			}
			if req.Type == msgCheckStretch {
				return link.Message{Type: req.Type}, nil // "yes, stretch it to me"
			}
			return link.Message{}, fmt.Errorf("the fake peer serves no %s", msgName(req.Type))
		}}
	sa, err := link.Dial(dctx, cfgA, ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	sb, err := l.Accept(dctx)
	if err != nil {
		t.Fatal(err)
	}
	r.mu.Lock()
	r.mu.sess = sb
	pods := r.podList()
	r.mu.Unlock()
	for _, p := range pods {
		p.linkUp(sb)
	}
	h.peer = sa
	t.Cleanup(func() {
		sa.Close()
		sb.Close()
		l.Close()
		cancel()
		// As the replicator's own shutdown: stopped, so that a handler
		// still running (a notice that makes syncPods start a pod) starts
		// none that nobody stops.
		r.mu.Lock()
		pods := r.mu.pods
		r.mu.pods = map[string]*podRT{}
		r.mu.stopped = true
		r.publishPods()
		r.mu.Unlock()
		for _, p := range pods {
			p.stop()
		}
		r.wg.Wait()
	})
	return h
}

// send sends a request from the fake peer; the error is what the peer
// gets back.
func (h *hostilePeer) send(typ uint16, epoch uint64, payload []byte) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := h.peer.Call(ctx, link.Message{Type: typ, Epoch: epoch, Payload: payload})
	return resp.Payload, err
}

// refused sends a request the checks must refuse: the peer gets a remote
// error containing want, array-b logs the refusal, and its catalog does
// not change.
func (h *hostilePeer) refused(what string, typ uint16, epoch uint64, payload []byte, want string) {
	h.t.Helper()
	before := h.env.cat.View()
	logged := h.logs.Count("refused a request from the peer")
	_, err := h.send(typ, epoch, payload)
	var re *link.RemoteError
	if !errors.As(err, &re) || !strings.Contains(re.Msg, want) {
		h.t.Errorf("%s: the peer got %v, want a refusal saying %q", what, err, want)
		return
	}
	h.t.Logf("%s: refused: %s", what, re.Msg)
	if h.logs.Count("refused a request from the peer") == logged {
		h.t.Errorf("%s: refused without a log line here", what)
	}
	if after := h.env.cat.View(); after != before {
		h.t.Errorf("%s: the refused request changed the configuration (generation %d → %d)", what, before.Generation, after.Generation)
	}
}

// accepted sends a request the checks must let through.
func (h *hostilePeer) accepted(what string, typ uint16, epoch uint64, payload []byte) []byte {
	h.t.Helper()
	out, err := h.send(typ, epoch, payload)
	if err != nil {
		h.t.Fatalf("%s: %v", what, err)
	}
	return out
}

// pod1Config is pod1's configuration as array-a would send it, changed
// by edit.
func (h *hostilePeer) pod1Config(edit func(pc *catalog.PodConfig)) *catalog.PodConfig {
	pc := h.env.cat.View().PodConfig("pod1")
	edit(pc)
	return pc
}

// TestPeerPodConfigConfined checks that a pod configuration from the
// peer (an ordered change, a resync, a stretch check) can change that pod
// and the hosts and host groups its connections used before, and nothing
// else here.
func TestPeerPodConfigConfined(t *testing.T) {
	h := newHostilePeer(t)
	h1 := *h.env.cat.View().Hosts["h1"]
	evil := catalog.Host{Name: "evil", IQNs: []string{iqnEvil}}
	for _, tc := range []struct {
		name string
		edit func(pc *catalog.PodConfig)
		want string
	}{
		{"a connection of another pod's volume", func(pc *catalog.PodConfig) {
			pc.Hosts = append(pc.Hosts, evil)
			pc.Connections = append(pc.Connections, catalog.Connection{Volume: "local::secret", Host: "evil", LUN: 3})
		}, "not the pod's"},
		{"a host its connections do not use", func(pc *catalog.PodConfig) {
			pc.Hosts = append(pc.Hosts, evil)
		}, "host evil is not used by the pod's connections"},
		{"another host's CHAP blanked", func(pc *catalog.PodConfig) {
			blank := h1
			blank.CHAPUser, blank.CHAPSecret = "", ""
			pc.Hosts = append(pc.Hosts, blank)
			pc.Connections = append(pc.Connections, catalog.Connection{Volume: "pod1::vol1", Host: "h1", LUN: 1})
		}, "host h1: conflict: it exists on this array with other CHAP settings"},
		{"another host's initiators", func(pc *catalog.PodConfig) {
			other := h1
			other.IQNs = []string{iqnEvil}
			pc.Hosts = append(pc.Hosts, other)
			pc.Connections = append(pc.Connections, catalog.Connection{Volume: "pod1::vol1", Host: "h1", LUN: 1})
		}, "host h1: conflict: it exists on this array with initiators " + iqnH1},
		{"a member added to a host group of another pod", func(pc *catalog.PodConfig) {
			pc.Hosts = append(pc.Hosts, h1, evil)
			pc.HostGroups = append(pc.HostGroups, catalog.HostGroup{Name: "g", Hosts: []string{"h1", "evil"}})
			pc.Connections = append(pc.Connections, catalog.Connection{Volume: "pod1::vol1", HostGroup: "g", LUN: 2})
		}, "host group g: conflict"},
		{"an initiator of another host", func(pc *catalog.PodConfig) {
			pc.Hosts = append(pc.Hosts, catalog.Host{Name: "h9", IQNs: []string{iqnH1}})
			pc.Connections = append(pc.Connections, catalog.Connection{Volume: "pod1::vol1", Host: "h9", LUN: 4})
		}, "it belongs to host h1"},
		{"a volume of another pod", func(pc *catalog.PodConfig) {
			v := pc.Volumes[0]
			v.Name, v.Pod, v.UUID = "local::other", "local", strings.Repeat("44", 16)
			pc.Volumes = append(pc.Volumes, v)
		}, "belongs to pod local"},
		{"another pod's volume uuid", func(pc *catalog.PodConfig) {
			v := pc.Volumes[0]
			v.Name, v.UUID = "pod1::dup", uuidSecret
			pc.Volumes = append(pc.Volumes, v)
		}, "volume local::secret of another pod has it"},
		{"another sequencer", func(pc *catalog.PodConfig) {
			pc.Pod.Sequencer = nameB
		}, "not of a pod array array-a orders"},
		{"a LUN the host sees already", func(pc *catalog.PodConfig) {
			pc.Hosts = append(pc.Hosts, h1)
			pc.Connections = append(pc.Connections, catalog.Connection{Volume: "pod1::vol1", Host: "h1", LUN: 0})
		}, "would see LUN 0 twice"},
	} {
		pc := h.pod1Config(tc.edit)
		h.refused("apply-config: "+tc.name, msgApplyConfig, epoch1, mustJSON(pc), tc.want)
		// The same as a new pod, pod3.
		pc.Pod.Name, pc.Pod.ID = "pod3", "pod-3"
		for i := range pc.Volumes {
			if pc.Volumes[i].Pod == "pod1" {
				pc.Volumes[i].Pod, pc.Volumes[i].Name = "pod3", strings.Replace(pc.Volumes[i].Name, "pod1::", "pod3::", 1)
			}
			if pc.Volumes[i].UUID == uuidVol1 {
				pc.Volumes[i].UUID = strings.Repeat("55", 16)
			}
		}
		for i := range pc.Connections {
			pc.Connections[i].Volume = strings.Replace(pc.Connections[i].Volume, "pod1::", "pod3::", 1)
		}
		h.refused("resync of a new pod: "+tc.name, msgResync, 1, mustJSON(resyncMsg{Config: *pc}), strings.ReplaceAll(tc.want, "pod1", "pod3"))
		h.refused("stretch check of a new pod: "+tc.name, msgCheckStretch, 0, mustJSON(checkStretchMsg{Config: *pc}), strings.ReplaceAll(tc.want, "pod1", "pod3"))
	}
	st := h.env.cat.View()
	if got := st.Hosts["h1"]; got.CHAPSecret != secret1 || len(got.IQNs) != 1 || st.Hosts["evil"] != nil || st.Pods["pod3"] != nil {
		t.Fatalf("hosts after the refusals: h1 %+v, evil %v, pod3 %v", got, st.Hosts["evil"], st.Pods["pod3"])
	}

	// A configuration of a pod this array orders, or of its local pod.
	pc := st.PodConfig("local")
	pc.Pod.Arrays = []catalog.PodArray{{Name: nameA, ID: idA}, {Name: nameB, ID: idB}}
	pc.Pod.Sequencer = nameA
	h.refused("resync of this array's local pod", msgResync, 9, mustJSON(resyncMsg{Config: *pc}), "pod local is not ordered by array array-a here")
	pc = st.PodConfig("pod2")
	pc.Pod.Sequencer = nameA
	h.refused("resync of a pod this array orders", msgResync, 9, mustJSON(resyncMsg{Config: *pc}), "resync at epoch 9 while alone")

	// What an ordered change of pod1 may do: change the hosts pod1's
	// connections used before (h2's CHAP), and bring in new ones.
	pc = h.pod1Config(func(pc *catalog.PodConfig) {
		pc.Hosts[0].CHAPUser, pc.Hosts[0].CHAPSecret = "h2", "h2-new-secret-2"
		pc.Hosts = append(pc.Hosts, catalog.Host{Name: "h5", IQNs: []string{"iqn.2026-01.test:h5"}})
		pc.Connections = append(pc.Connections, catalog.Connection{Volume: "pod1::vol1", Host: "h5", LUN: 5})
	})
	h.accepted("an ordered change of pod1", msgApplyConfig, epoch1, mustJSON(pc))
	st = h.env.cat.View()
	if st.Hosts["h2"].CHAPSecret != "h2-new-secret-2" || st.Hosts["h5"] == nil || len(st.ConnectionsOf("pod1::vol1")) != 2 {
		t.Fatalf("the ordered change did not apply: h2 %+v, h5 %v, connections %v", st.Hosts["h2"], st.Hosts["h5"], st.ConnectionsOf("pod1::vol1"))
	}
}

// forwardCDB returns a forwarded command of the pod's volume from the
// initiator on the peer's port.
func forwardCDB(podName, uuid, iqn string, cdb, data []byte) *forwardMsg {
	return &forwardMsg{Pod: podName, Volume: uuid, ID: 1, Cmd: scsi.Command{
		Nexus: scsi.Nexus{InitiatorName: iqn, InitiatorPort: iqn + ",i,0x000000000001",
			TargetPort: "iqn.2026-11.io.metro:array-a,t,0x0001", RelativePortID: portA},
		CDB: cdb, DataOut: data}}
}

// prRegisterCDB is PERSISTENT RESERVE OUT REGISTER of key.
func prRegisterCDB(key uint64) ([]byte, []byte) {
	param := make([]byte, 24)
	binary.BigEndian.PutUint64(param[8:16], key)
	cdb := make([]byte, 10)
	cdb[0] = 0x5f
	binary.BigEndian.PutUint32(cdb[5:9], 24)
	return cdb, param
}

// TestPeerForwardConfined checks that a forwarded command, reservation
// update or reset names a volume of its pod, and that a forwarded
// command runs as an initiator connected to the volume on the peer's
// port.
func TestPeerForwardConfined(t *testing.T) {
	h := newHostilePeer(t)
	cdb, param := prRegisterCDB(0xbad)
	fwd := func(edit func(m *forwardMsg)) []byte {
		m := forwardCDB("pod2", uuidVol2, iqnH2, cdb, param)
		edit(m)
		return m.encode()
	}
	for _, tc := range []struct {
		name string
		edit func(m *forwardMsg)
		want string
	}{
		{"another pod's volume", func(m *forwardMsg) {
			m.Volume = uuidSecret
			m.Cmd.Nexus.InitiatorName, m.Cmd.Nexus.InitiatorPort = iqnH1, iqnH1+",i,0x1"
		}, "pod pod2 has no volume " + uuidSecret},
		{"an initiator of no host", func(m *forwardMsg) {
			m.Cmd.Nexus.InitiatorName, m.Cmd.Nexus.InitiatorPort = iqnEvil, iqnEvil+",i,0x1"
		}, "is not a host connected to the volume"},
		{"a host not connected to the volume", func(m *forwardMsg) {
			m.Cmd.Nexus.InitiatorName, m.Cmd.Nexus.InitiatorPort = iqnH1, iqnH1+",i,0x1"
		}, "is not a host connected to the volume"},
		{"another initiator's port", func(m *forwardMsg) { m.Cmd.Nexus.InitiatorPort = iqnH1 + ",i,0x1" }, "is not a port of initiator"},
		{"this array's port", func(m *forwardMsg) { m.Cmd.Nexus.RelativePortID = portB }, "is not the peer's"},
	} {
		h.refused("forward: "+tc.name, msgForward, epoch2, fwd(tc.edit), tc.want)
	}
	for _, uuid := range []string{uuidVol2, uuidSecret} {
		if regs := h.env.LU(uuid).Reservations().Registrations; len(regs) != 0 {
			t.Fatalf("volume %s: the refused commands registered %+v", uuid, regs)
		}
	}
	// The host connected to the volume, through the peer's port.
	res, err := decodeResult(h.accepted("forward from h2", msgForward, epoch2, fwd(func(*forwardMsg) {})))
	if err != nil || res.Status != scsi.StatusGood {
		t.Fatalf("the connected host's command: %+v %v", res, err)
	}
	if regs := h.env.LU(uuidVol2).Reservations().Registrations; len(regs) != 1 {
		t.Fatalf("registrations after the connected host's command: %+v", regs)
	}

	// Reservations and resets name a volume of their pod.
	u := scsi.ReservationUpdate{State: scsi.ReservationState{Generation: 9, Registrations: []scsi.Registration{{Key: 0xbad}}}}
	h.refused("reservations of another pod's volume", msgReservations, epoch1,
		mustJSON(reservationsMsg{Pod: "pod1", Volume: uuidSecret, Update: u}), "pod pod1 has no volume "+uuidSecret)
	if regs := h.env.LU(uuidSecret).Reservations().Registrations; len(regs) != 0 {
		t.Fatalf("reservations installed on another pod's volume: %+v", regs)
	}
	h.refused("reset of another pod's volume", msgReset, epoch1,
		mustJSON(resetMsg{Pod: "pod1", Volume: uuidSecret, LUNReset: true}), "pod pod1 has no volume "+uuidSecret)
	h.accepted("reservations of pod1's volume", msgReservations, epoch1, mustJSON(reservationsMsg{Pod: "pod1", Volume: uuidVol1, Update: u}))
}

// TestPeerWriteBounds checks that replicated writes, copies and unmaps
// stay inside their volume, on block boundaries, and refer only to
// forwarded data of their volume.
func TestPeerWriteBounds(t *testing.T) {
	h := newHostilePeer(t)
	h.followInSync("pod1", epoch1)
	block := bytes.Repeat([]byte{0xee}, store.BlockSize)
	w := func(typ uint16, off uint64, length uint64, data []byte) []byte {
		return (&writeMsg{Pod: "pod1", Volume: uuidVol1, Off: off, Length: length, Data: data}).encode()
	}
	for _, tc := range []struct {
		name    string
		typ     uint16
		payload []byte
		want    string
	}{
		{"a write past the end", msgWrite, w(msgWrite, volSize, store.BlockSize, block), "end beyond the volume's"},
		{"a write far past the end", msgWrite, w(msgWrite, 1<<40, store.BlockSize, block), "end beyond the volume's"},
		{"a write across the end", msgWrite, w(msgWrite, volSize-store.BlockSize, 2*store.BlockSize, append(block, block...)), "end beyond the volume's"},
		{"a copy past the end", msgBaseline, w(msgBaseline, volSize, store.BlockSize, block), "end beyond the volume's"},
		{"an unmap past the end", msgUnmap, w(msgUnmap, 0, volSize+store.BlockSize, nil), "end beyond the volume's"},
		{"an unaligned write", msgWrite, w(msgWrite, 100, store.BlockSize, block), "not whole"},
		{"a length that is not the data's", msgWrite, w(msgWrite, 0, 2*store.BlockSize, block), "carries"},
		{"another pod's volume", msgWrite, (&writeMsg{Pod: "pod1", Volume: uuidSecret, Length: store.BlockSize, Data: block}).encode(), "pod pod1 has no volume"},
		{"damage in a host write", msgWrite, damaged(0, block, extent{0, store.BlockSize}), "only a copied piece"},
		{"damage beyond the piece", msgBaseline, damaged(0, block, extent{store.BlockSize, store.BlockSize}), "not whole blocks of the copied piece"},
		{"damage before the piece", msgBaseline, damaged(store.BlockSize, block, extent{0, store.BlockSize}), "not whole blocks of the copied piece"},
		{"damage in part of a block", msgBaseline, damaged(0, block, extent{0, 100}), "not whole blocks of the copied piece"},
		{"damage of no blocks", msgBaseline, damaged(0, block, extent{0, 0}), "not whole blocks of the copied piece"},
	} {
		h.refused(tc.name, tc.typ, epoch1, tc.payload, tc.want)
	}
	if used := h.env.st.Volume(h.env.cat.View().Volumes["pod1::vol1"].DataID).Used(); used != 0 {
		t.Fatalf("the refused writes stored %d bytes", used)
	}

	// A write referring to data this array forwarded for another volume.
	h.env.r.refs.Store(uint64(77), &forwarded{pod: "pod2", uuid: uuidVol2, data: block})
	defer h.env.r.refs.Delete(uint64(77))
	h.refused("a write referring to another volume's data", msgWrite, epoch1,
		(&writeMsg{Pod: "pod1", Volume: uuidVol1, Length: store.BlockSize, Ref: 77}).encode(), "refers to request 77, sent for volume")

	// Inside the volume: applied.
	h.accepted("the last block", msgWrite, epoch1, w(msgWrite, volSize-store.BlockSize, store.BlockSize, block))
	got := make([]byte, store.BlockSize)
	if err := h.env.LU(uuidVol1).Size(); err != volSize {
		t.Fatalf("size %d", err)
	}
	vol := h.env.st.Volume(h.env.cat.View().Volumes["pod1::vol1"].DataID)
	if err := vol.ReadAt(context.Background(), got, volSize-store.BlockSize); err != nil || !bytes.Equal(got, block) {
		t.Fatalf("the last block reads %x, %v", got[:8], err)
	}
	// A copied piece with a damaged block: recorded damaged here.
	two := append(bytes.Clone(block), make([]byte, store.BlockSize)...)
	h.accepted("a copied piece with a damaged block", msgBaseline, epoch1, damaged(0, two, extent{store.BlockSize, store.BlockSize}))
	var ce *store.CorruptError
	if err := vol.ReadAt(context.Background(), make([]byte, 2*store.BlockSize), 0); !errors.As(err, &ce) || ce.Offset != store.BlockSize {
		t.Fatalf("read of the copied piece: %v, want a CorruptError at its second block", err)
	}
}

// damaged encodes a write message of pod1::vol1 listing damaged blocks.
func damaged(off uint64, data []byte, x ...extent) []byte {
	return (&writeMsg{Pod: "pod1", Volume: uuidVol1, Off: off, Length: uint64(len(data)), Data: data, Damaged: x}).encode()
}

// TestPeerCannotPullAPod checks that the peer cannot have this array
// stretch one of its pods to it: a stretch starts only on the pod's own
// array, from its administrator.
func TestPeerCannotPullAPod(t *testing.T) {
	h := newHostilePeer(t)
	h.refused("stretch of the local pod", msgStretch, 0, []byte(`{"pod":"local","array":"array-a"}`), "stretches a pod only when its administrator asks")
	if p := h.env.cat.View().Pods["local"]; len(p.Arrays) != 1 {
		t.Fatalf("the local pod is on %+v", p.Arrays)
	}
}

// TestPeerMembershipConfined checks the membership messages: the peer
// removes this array, or hands a pod over, only for pods it orders, and
// leaves this array alone in the pod it hands over.
func TestPeerMembershipConfined(t *testing.T) {
	h := newHostilePeer(t)
	h.refused("removal of this array from a pod it orders", msgUnstretch, 0,
		mustJSON(unstretchMsg{Pod: "pod2", Array: nameB}), "removal at epoch 0")
	h.refused("removal of this array from its local pod", msgUnstretch, 0,
		mustJSON(unstretchMsg{Pod: "local", Array: nameB}), "not stretched to the peer")
	// A notice that the peer made a pod its own sets aside the pods this
	// array does not serve alone (pod1, which it follows), and only
	// those, whatever the peer says of the others.
	for _, name := range []string{"local", "pod1", "pod2", "pod4"} {
		h.accepted("notice of "+name, msgUnstretch, 0, mustJSON(unstretchMsg{Pod: name, Notice: true}))
	}
	for deadline := time.Now().Add(10 * time.Second); h.env.cat.View().Pods["pod1"].Pending == nil; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("pod1, which the peer orders and made its own, was not set aside")
		}
	}
	st := h.env.cat.View()
	for _, name := range []string{"local", "pod2", "pod4"} {
		if st.Pods[name].Pending != nil {
			t.Fatalf("pod %s was set aside by the peer", name)
		}
	}
	h.refused("hello of another array", msgHello, 0, mustJSON(helloMsg{Name: nameA, ID: "id-array-c"}), "paired with another")

	// A configuration change through this array (the sequencer of pod4)
	// that destroys the pod, or concerns a pod the peer orders.
	for _, op := range []catalog.Op{catalog.DestroyPod{Name: "pod4"}, catalog.SetPodAttr{Name: "pod1"}} {
		data, _ := catalog.MarshalOp(op)
		var ans answer
		out := h.accepted("config "+op.Kind(), msgConfig, 0, mustJSON(configMsg{Op: data}))
		if err := json.Unmarshal(out, &ans); err != nil || ans.Kind != "conflict" {
			t.Fatalf("config %s: answer %+v %v, want a conflict", op.Kind(), ans, err)
		}
	}
	if h.env.cat.View().Pods["pod4"] == nil {
		t.Fatal("the peer destroyed pod4")
	}
}

// TestPeerHandoverConfined checks a handover: the peer may leave the pod
// to this array alone, at the next epoch, and nothing else.
func TestPeerHandoverConfined(t *testing.T) {
	h := newHostilePeer(t)
	p := h.env.r.pod("pod1")
	p.mu.Lock()
	p.mu.m = newInSyncFollower(t, h, epoch1)
	p.mu.sess = h.env.r.session()
	p.mu.Unlock()
	for _, tc := range []struct {
		name  string
		pod   string
		epoch uint64
	}{
		{"of a local pod", "local", epoch1 + 1},
		{"at the same epoch", "pod1", epoch1},
		{"two epochs on", "pod1", epoch1 + 2},
	} {
		id := "pod-1"
		if tc.pod == "local" {
			id = "pod-local"
		}
		h.refused("handover "+tc.name, msgHandover, tc.epoch, mustJSON(podStateMsg{Pod: tc.pod, ID: id}), "")
	}
	h.accepted("handover", msgHandover, epoch1+1, mustJSON(podStateMsg{Pod: "pod1", ID: "pod-1"}))
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		cp := h.env.cat.View().Pods["pod1"]
		if cp.Sequencer == nameB && len(cp.Arrays) == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("pod1 after the handover: %+v, want array-b's alone", cp)
		}
	}
}

// followInSync makes this array's runtime of the pod an in-sync follower
// of the fake peer at epoch (the pod receives its mirrored writes).
func (h *hostilePeer) followInSync(name string, epoch uint64) {
	h.t.Helper()
	p := h.env.r.pod(name)
	m := newInSyncFollower(h.t, h, epoch)
	p.mu.Lock()
	p.mu.m = m
	p.mu.sess = h.env.r.session()
	p.mu.Unlock()
}

// newInSyncFollower returns the machine of a follower in sync at epoch,
// once the session's read lease (from the fake peer's pongs) is valid so
// that the pod's runtime keeps it in sync.
func newInSyncFollower(t *testing.T, h *hostilePeer, epoch uint64) *pod.Machine {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for s := h.env.r.session(); !time.Now().Before(leaseEnd(s, h.env.r.cfg.Timeout)); {
		if time.Now().After(deadline) {
			t.Fatal("no read lease from the fake peer")
		}
		time.Sleep(10 * time.Millisecond)
	}
	now := time.Now()
	m := pod.New(pod.Config{Self: idB, Peer: idA, Timeout: time.Second}, pod.Record{Epoch: epoch - 1, Sequencer: idA}, now)
	m.LinkUp(now)
	step := func(acts []pod.Action, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range acts {
			if a.Kind == pod.Persist {
				m.Persisted(a.ID, now)
			}
		}
	}
	step(m.ResyncRequested(epoch))
	step(m.GrantRequested(epoch, ""))
	if m.State() != pod.InSync {
		t.Fatalf("the follower's machine is %s, want in sync", m.State())
	}
	return m
}
