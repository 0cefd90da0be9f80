package replication

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/metro-storage/metro/internal/catalog"
	"github.com/metro-storage/metro/internal/link"
	"github.com/metro-storage/metro/internal/pod"
	"github.com/metro-storage/metro/internal/scsi"
	"github.com/metro-storage/metro/internal/store"
)

// Regression tests of the pod protocol's defects (issue 9, part 1) that
// need a peer driven message by message: array-b is the array under test,
// the fake array-a (the hostile-peer harness) the sequencer of pod1.

// blockWrite makes the next mirrored write or copied piece of pod1 at off
// wait, once checked, until release is closed; checked is closed when it
// waits.
func (h *hostilePeer) blockWrite(off uint64) (checked, release chan struct{}) {
	checked, release = make(chan struct{}), make(chan struct{})
	var once atomic.Bool
	h.env.r.applyHook = func(m *writeMsg) {
		if m.Pod == "pod1" && m.Off == off && once.CompareAndSwap(false, true) {
			close(checked)
			<-release
		}
	}
	return checked, release
}

// sendAsync sends a request in the background; the channel gets its
// error.
func (h *hostilePeer) sendAsync(typ uint16, epoch uint64, payload []byte) chan error {
	c := make(chan error, 1)
	go func() {
		_, err := h.send(typ, epoch, payload)
		c <- err
	}()
	return c
}

// TestGrantCoversWritesBeingApplied (defect 3): a mirrored write checked
// while this array received a copy (so written without a sync) was still
// being applied when the grant arrived. Before, the grant synced the
// store, was accepted and answered while the write went on: the write
// was then applied unsynced after the grant's sync, and the sequencer,
// hearing both, cleared the write's region from its tracking; a crash of
// this array lost an acknowledged write. Now the grant takes the pod's
// barrier and waits for every write already checked.
func TestGrantCoversWritesBeingApplied(t *testing.T) {
	h := newHostilePeer(t)
	const e = epoch1 + 1
	h.accepted("resync", msgResync, e, mustJSON(resyncMsg{Config: *h.pod1Config(func(*catalog.PodConfig) {})}))
	checked, release := h.blockWrite(0)
	block := bytes.Repeat([]byte{0x3c}, store.BlockSize)
	wrote := h.sendAsync(msgWrite, e, (&writeMsg{Pod: "pod1", Volume: uuidVol1, Length: store.BlockSize, Data: block}).encode())
	<-checked
	granted := h.sendAsync(msgGrant, e, mustJSON(grantMsg{Pod: "pod1"}))
	select {
	case err := <-granted:
		close(release)
		t.Fatalf("the grant was answered (%v) while a write checked as received without sync was still being applied: that write is applied after the grant's sync, unsynced", err)
	case <-time.After(time.Second):
		// Waiting, as it must: the write goes on, then the grant.
	}
	close(release)
	if err := <-wrote; err != nil {
		t.Fatalf("the write: %v", err)
	}
	if err := <-granted; err != nil {
		t.Fatalf("the grant: %v", err)
	}
}

// TestOldEpochWriteNotAppliedAfterResync (defect 7): a mirrored write of
// epoch E, checked at E, was still being applied when the sequencer
// started a new copy at E+1 and sent the same block anew. Before, the
// epoch was checked only at the handler's entry: the old write landed
// after the new copy's block and the copy kept the old data. Now the new
// epoch is accepted only once the writes checked at the old one are
// applied, so the new copy's block comes last.
func TestOldEpochWriteNotAppliedAfterResync(t *testing.T) {
	h := newHostilePeer(t)
	const e = epoch1 + 1
	h.accepted("resync", msgResync, e, mustJSON(resyncMsg{Config: *h.pod1Config(func(*catalog.PodConfig) {})}))
	checked, release := h.blockWrite(0)
	old := bytes.Repeat([]byte{0x01}, store.BlockSize)
	fresh := bytes.Repeat([]byte{0x02}, store.BlockSize)
	wrote := h.sendAsync(msgWrite, e, (&writeMsg{Pod: "pod1", Volume: uuidVol1, Length: store.BlockSize, Data: old}).encode())
	<-checked
	resynced := h.sendAsync(msgResync, e+1, mustJSON(resyncMsg{Config: *h.pod1Config(func(*catalog.PodConfig) {})}))
	copyPiece := (&writeMsg{Pod: "pod1", Volume: uuidVol1, Length: store.BlockSize, Data: fresh}).encode()
	select {
	case err := <-resynced:
		// Accepted while the old write waits: the new copy's block
		// goes first, then the old write lands (the defect).
		if err != nil {
			t.Fatalf("the resync at %d: %v", e+1, err)
		}
		h.accepted("the new copy's block", msgBaseline, e+1, copyPiece)
		close(release)
		<-wrote
	case <-time.After(time.Second):
		// Waiting, as it must, for the old write.
		close(release)
		if err := <-wrote; err != nil {
			t.Fatalf("the old write: %v", err)
		}
		if err := <-resynced; err != nil {
			t.Fatalf("the resync at %d: %v", e+1, err)
		}
		h.accepted("the new copy's block", msgBaseline, e+1, copyPiece)
	}
	got := make([]byte, store.BlockSize)
	vol := h.env.st.Volume(h.env.cat.View().Volumes["pod1::vol1"].DataID)
	if err := vol.ReadAt(context.Background(), got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, fresh) {
		t.Fatalf("the block holds %x after the copy at epoch %d sent %x: a write of epoch %d was applied after the newer epoch was accepted", got[:4], e+1, fresh[:4], e)
	}
}

// TestResyncRefusedChangesNothing (defect 4): a resync the protocol
// refuses (here: this array serves the pod in sync) changes nothing.
// Before, it installed the sender's configuration (a volume appeared)
// and erased this array's copy before (or without) the epoch check.
func TestResyncRefusedChangesNothing(t *testing.T) {
	h := newHostilePeer(t)
	h.followInSync("pod1", epoch1)
	block := bytes.Repeat([]byte{0x5e}, store.BlockSize)
	h.accepted("a mirrored write", msgWrite, epoch1, (&writeMsg{Pod: "pod1", Volume: uuidVol1, Length: store.BlockSize, Data: block}).encode())
	pc := h.pod1Config(func(pc *catalog.PodConfig) {
		pc.Volumes = append(pc.Volumes, catalog.Volume{Name: "pod1::vol9", Pod: "pod1", UUID: "99999999999999999999999999999999", Size: volSize})
	})
	h.refused("a resync while in sync", msgResync, epoch1+1, mustJSON(resyncMsg{Config: *pc}), "while in-sync")
	st := h.env.cat.View()
	if st.Volumes["pod1::vol9"] != nil {
		t.Fatal("the refused resync installed its configuration")
	}
	got := make([]byte, store.BlockSize)
	if err := h.env.st.Volume(st.Volumes["pod1::vol1"].DataID).ReadAt(context.Background(), got, 0); err != nil || !bytes.Equal(got, block) {
		t.Fatalf("the refused resync changed this array's copy: %x, %v", got[:4], err)
	}
	if p := h.env.r.pod("pod1"); p.mode().state != pod.InSync || p.mode().epoch != epoch1 {
		t.Fatalf("pod1 after the refused resync: %s at epoch %d", p.mode().state, p.mode().epoch)
	}
}

// TestFailedPersistRetried (defect 6): the record that lets a paused,
// pre-elected array serve alone fails to persist. Before, the driver
// only logged it and the pod stayed paused for good, its writes waiting.
// Now the machine tries again after its timeout, and the write completes.
func TestFailedPersistRetried(t *testing.T) {
	h := newHostilePeer(t)
	r := h.env.r
	var failures atomic.Int32
	r.persistHook = func(podName string, rec pod.Record) error {
		if podName == "pod2" && failures.Load() < 2 {
			failures.Add(1)
			return errors.New("injected: the record could not be written")
		}
		return nil
	}
	p := r.pod("pod2")
	p.mu.Lock()
	p.mu.m = pod.New(pod.Config{Self: idB, Peer: idA, Timeout: time.Second}, pod.Record{Epoch: epoch2, Sequencer: idB, Synced: epoch2, Pre: idB}, time.Now())
	p.mu.sess = nil
	p.mu.Unlock()
	vol := r.Volume("pod2", uuidVol2, h.env.st.Volume(h.env.cat.View().Volumes["pod2::vol2"].DataID))
	wrote := make(chan error, 1)
	go func() { wrote <- vol.WriteAt(context.Background(), bytes.Repeat([]byte{7}, store.BlockSize), 0) }()
	select {
	case err := <-wrote:
		if err != nil {
			t.Fatalf("the write: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("the write waits for good: the pod is %s after %d failed persists", p.mode().state, failures.Load())
	}
	if failures.Load() == 0 {
		t.Fatal("no persist failed: the test tested nothing")
	}
	if md := p.mode(); md.state != pod.Alone || md.epoch != epoch2+1 {
		t.Fatalf("pod2: %s at epoch %d, want alone at %d", md.state, md.epoch, epoch2+1)
	}
}

// TestForgetPod: the record and cursor of an eradicated copy go with it
// (a pod stretched again later starts from none).
func TestForgetPod(t *testing.T) {
	h := newHostilePeer(t)
	r := h.env.r
	if _, ok := r.loadRecord("pod-2"); !ok {
		t.Fatal("pod2 has no record to forget")
	}
	if err := r.saveCursor("pod-2", cursor{Epoch: 3, Complete: true}); err != nil {
		t.Fatal(err)
	}
	if err := r.ForgetPod("pod-2"); err != nil {
		t.Fatal(err)
	}
	if rec, ok := r.loadRecord("pod-2"); ok {
		t.Fatalf("pod2's record %s outlived ForgetPod", rec)
	}
	if c, ok := r.loadCursor("pod-2"); ok {
		t.Fatalf("pod2's cursor %+v outlived ForgetPod", c)
	}
}

// TestFollowerNeverWritesAlone: a write that reaches the backend of an
// array that does not order the pod (it lost the pod between the
// command's routing and its write) is refused (the host retries), never
// written to this copy alone: the array that won would not have it.
func TestFollowerNeverWritesAlone(t *testing.T) {
	h := newHostilePeer(t)
	h.followInSync("pod1", epoch1)
	local := h.env.st.Volume(h.env.cat.View().Volumes["pod1::vol1"].DataID)
	vol := h.env.r.Volume("pod1", uuidVol1, local)
	err := vol.WriteAt(context.Background(), bytes.Repeat([]byte{9}, store.BlockSize), 0)
	if !errors.Is(err, scsi.ErrTransitioning) {
		t.Fatalf("a write through the follower's backend: %v, want NOT READY (transitioning)", err)
	}
	got := make([]byte, store.BlockSize)
	if err := local.ReadAt(context.Background(), got, 0); err != nil || !bytes.Equal(got, make([]byte, store.BlockSize)) {
		t.Fatalf("the follower's copy changed: %x, %v", got[:4], err)
	}
}

// FuzzPodRequests feeds arbitrary payloads and epochs, as a hostile or
// broken peer could send them, to the pod protocol's requests (pod
// state, pre-election, grant, handover, removal, resync, status): each is
// answered or refused, never a panic, and a refusal changes nothing.
func FuzzPodRequests(f *testing.F) {
	types := []uint16{msgPodState, msgPreElect, msgGrant, msgHandover, msgUnstretch, msgResync, msgStatus}
	f.Add(uint8(0), uint64(0), []byte(`{"pod":"pod1","id":"pod-1"}`))
	f.Add(uint8(0), uint64(0), []byte(`{"pod":"pod1","id":"pod-1","notice":true,"has":true,"record":{"epoch":99,"sequencer":"x","left":true}}`))
	f.Add(uint8(1), uint64(epoch1), []byte(`{"pod":"pod1","pre":"id-array-b"}`))
	f.Add(uint8(2), uint64(epoch1), []byte(`{"pod":"pod1","pre":"id-array-c"}`))
	f.Add(uint8(3), uint64(epoch1+1), []byte(`{"pod":"pod1","id":"pod-1"}`))
	f.Add(uint8(4), uint64(epoch1), []byte(`{"pod":"pod1","array":"array-b"}`))
	f.Add(uint8(4), uint64(0), []byte(`{"pod":"pod2","notice":true}`))
	f.Add(uint8(5), uint64(epoch1+1), []byte(`{"config":{"pod":{"name":"pod1"}},"resume_from":5}`))
	f.Add(uint8(6), uint64(0), []byte(`{"mediator":true}`))
	f.Add(uint8(5), uint64(1<<63), []byte(`null`))
	f.Fuzz(func(t *testing.T, which uint8, epoch uint64, payload []byte) {
		h := newHostilePeer(t)
		typ := types[int(which)%len(types)]
		before := h.env.cat.View().Generation
		_, err := h.env.r.handle(context.Background(), link.Message{Type: typ, Epoch: epoch, Payload: payload})
		if err != nil && errors.Is(err, errRefused) && h.env.cat.View().Generation != before {
			t.Fatalf("%s refused (%v) and the configuration changed", msgName(typ), err)
		}
	})
}

// TestLosingSequencerReportsNoUnsharedReservation: a registration made at
// the sequencer is being shared with the follower when the link goes and
// the follower wins the pod. Neither the registration nor a READ KEYS
// that waited for its share here may report it done, for the winner never
// got it (it would be undone for the host the moment it asks the
// winner): both answer NOT READY. Before, the loser answered GOOD to both
// (TestPairLinearizableFailover found each).
func TestLosingSequencerReportsNoUnsharedReservation(t *testing.T) {
	h := newHostilePeer(t)
	r := h.env.r
	p := r.pod("pod2")
	now := time.Now()
	// pod2 in sync, ordered here.
	m := pod.New(pod.Config{Self: idB, Peer: idA, Timeout: time.Second}, pod.Stretched(idB, epoch2-1), now)
	persisted := func(acts []pod.Action) {
		for _, a := range acts {
			if a.Kind == pod.Persist {
				m.Persisted(a.ID, now)
			}
		}
	}
	m.LinkUp(now)
	m.PeerRecord(pod.Record{}, false, now)
	persisted(m.ResyncStarted(epoch2, now))
	persisted(m.BaselineDone(epoch2))
	m.PeerInSync(epoch2, now)
	newInSyncFollower(t, h, epoch2) // waits for the session's lease
	p.mu.Lock()
	p.mu.m = m
	p.mu.sess = r.session()
	p.mu.Unlock()
	if md := p.mode(); md.state != pod.InSync || !md.serving {
		t.Fatalf("pod2 is %s (serving %t), want in sync", md.state, md.serving)
	}
	// The fake follower never answers the shared reservations.
	shared, unblock := make(chan struct{}), make(chan struct{})
	defer close(unblock)
	var once atomic.Bool
	serve := func(req link.Message) (link.Message, error) {
		var m reservationsMsg
		if req.Type == msgReservations && json.Unmarshal(req.Payload, &m) == nil && m.Volume == uuidVol2 &&
			len(m.Update.State.Registrations) > 0 && once.CompareAndSwap(false, true) {
			close(shared)
			<-unblock
		}
		return link.Message{Type: req.Type, Epoch: req.Epoch}, nil
	}
	h.serve.Store(&serve)
	lu := h.env.LU(uuidVol2)
	nexus := scsi.Nexus{InitiatorName: iqnH2, InitiatorPort: iqnH2 + ",i,0x1", TargetPort: "t,0x1"}
	cdb := []byte{0x5f, 0x06, 0, 0, 0, 0, 0, 0, 24, 0} // REGISTER AND IGNORE EXISTING KEY
	param := make([]byte, 24)
	param[15] = 0x42
	registered := make(chan *scsi.Result, 1)
	go func() {
		registered <- h.env.target.ExecuteForwarded(context.Background(), lu, &scsi.Command{Nexus: nexus, CDB: cdb, DataOut: param})
	}()
	select {
	case <-shared:
	case res := <-registered:
		t.Fatalf("the registration completed (%+v) without sharing", res)
	}
	keys := make(chan *scsi.Result, 1)
	go func() {
		keys <- h.env.target.ExecuteForwarded(context.Background(), lu, &scsi.Command{Nexus: nexus, CDB: []byte{0x5e, 0, 0, 0, 0, 0, 0, 4, 0, 0}, ExpectedDataIn: 1024})
	}()
	// The READ KEYS waits for the registration's share (it came through
	// an active path: this harness has no ALUA gate, so it must be
	// waiting before the pod leaves this array).
	select {
	case res := <-keys:
		t.Fatalf("READ KEYS answered (%s) while the registration was being shared", describeResult(res))
	case <-time.After(500 * time.Millisecond):
	}
	// The link goes and the follower wins the pod (the mediator's word).
	p.linkDown(r.session())
	p.event(func(mm *pod.Machine) []pod.Action {
		return mm.Elected(epoch2, pod.ElectResult{Epoch: epoch2 + 1, Winner: idA}, time.Now())
	})
	var res *scsi.Result
	select {
	case res = <-keys:
	case <-time.After(30 * time.Second):
		t.Fatal("READ KEYS did not complete")
	}
	select {
	case reg := <-registered:
		// The registration itself is not reported done either.
		if reg.Status == scsi.StatusGood {
			t.Fatal("the array that lost the pod answered GOOD to a registration the winner never got")
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the registration did not complete")
	}
	if res.Status == scsi.StatusGood && len(res.Data) >= 8 && res.Data[7] != 0 {
		md := p.mode()
		t.Fatalf("the array that lost the pod reported a registration the winner never got: %x (pod2 %s, %s, epoch %d)", res.Data[:16], md.state, md.role, md.epoch)
	}
}

// describeResult renders a SCSI result for messages.
func describeResult(r *scsi.Result) string {
	if r.Status == scsi.StatusGood {
		return "GOOD"
	}
	if s, err := scsi.ParseSense(r.Sense); err == nil {
		return "CHECK CONDITION " + s.String()
	}
	return fmt.Sprintf("status %#x", byte(r.Status))
}

// TestPausedPastLeaseAnswersNoReservationRead: a follower whose link went
// is paused, deciding; once its lease on the lost session has run out the
// peer may have won the pod and changed its reservations, so a PERSISTENT
// RESERVE IN here waits like a read of data, and answers NOT READY if the
// pod is still undecided when the command gives up; it never reports the
// state of its copy as current. Before, the follower answered from its
// copy (TestPairLinearizableFailover saw a READ KEYS at a follower that
// the mediator had just let race again miss registrations the winner had
// acknowledged).
func TestPausedPastLeaseAnswersNoReservationRead(t *testing.T) {
	h := newHostilePeer(t)
	r := h.env.r
	p := r.pod("pod1")
	newInSyncFollower(t, h, epoch1) // waits for the session's lease
	// The follower of pod1 prefers the peer for failover, with a head
	// start longer than the test: once paused it stays paused.
	now := time.Now()
	m := pod.New(pod.Config{Self: idB, Peer: idA, Timeout: time.Second, Preference: idA, HeadStart: time.Hour},
		pod.Record{Epoch: epoch1 - 1, Sequencer: idA}, now)
	m.LinkUp(now)
	for _, f := range []func() ([]pod.Action, error){
		func() ([]pod.Action, error) { return m.ResyncRequested(epoch1) },
		func() ([]pod.Action, error) { return m.GrantRequested(epoch1, "") },
	} {
		acts, err := f()
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range acts {
			if a.Kind == pod.Persist {
				m.Persisted(a.ID, now)
			}
		}
	}
	p.mu.Lock()
	p.mu.m = m
	p.mu.sess = r.session()
	p.mu.Unlock()
	lu := h.env.LU(uuidVol1)
	nexus := scsi.Nexus{InitiatorName: iqnH2, InitiatorPort: iqnH2 + ",i,0x1", TargetPort: "t,0x1"}
	readKeys := func(ctx context.Context) *scsi.Result {
		return h.env.target.ExecuteForwarded(ctx, lu, &scsi.Command{Nexus: nexus, CDB: []byte{0x5e, 0, 0, 0, 0, 0, 0, 4, 0, 0}, ExpectedDataIn: 1024})
	}
	if res := readKeys(context.Background()); res.Status != scsi.StatusGood {
		t.Fatalf("READ KEYS at the in-sync follower: %s, want GOOD", describeResult(res))
	}
	// The link goes (as linkDown, with the fake peer's long lease cut
	// to now: this array's lease has run out).
	p.event(func(m *pod.Machine) []pod.Action {
		p.mu.sess = nil
		p.mu.peerView = nil
		now := time.Now()
		return m.LinkDown(now, now, now)
	})
	if md := p.mode(); md.state != pod.Paused || md.serving {
		t.Fatalf("pod1 is %s (serving %t) after the link went, want paused past its lease", md.state, md.serving)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	res := readKeys(ctx)
	if md := p.mode(); md.state != pod.Paused {
		t.Fatalf("pod1 is %s, want still paused", md.state)
	}
	if res.Status == scsi.StatusGood {
		t.Fatal("the paused follower answered READ KEYS from its copy past its lease (the peer may have won and changed the reservations)")
	}
	if s, err := scsi.ParseSense(res.Sense); err != nil || s != scsi.SenseNotReadyTransitioning() {
		t.Fatalf("READ KEYS at the paused follower: %s, want NOT READY (transitioning)", describeResult(res))
	}
	if waited := time.Since(start); waited < 250*time.Millisecond {
		t.Fatalf("READ KEYS at the paused follower answered after %s, want it to wait for the pod to be decided", waited)
	}
}
