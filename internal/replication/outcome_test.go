package replication

import (
	"context"
	"testing"
	"time"

	"github.com/metro-storage/metro/internal/link"
	"github.com/metro-storage/metro/internal/scsi"
)

// TestSentAnswerFate: the sequencer's record of a forwarded COMPARE AND
// WRITE's answer is lost only once the session ended without the
// follower's confirmation; a confirmed answer is delivered for good, and
// the registry forgets every record at the confirmation, at the session's
// end, or at once when the command did not end GOOD (nothing remembered).
func TestSentAnswerFate(t *testing.T) {
	r := &Replicator{}
	caw := scsi.Command{CDB: []byte{0x89, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0}}
	sess, end := context.WithCancel(context.Background())
	start := func(id uint64) (*sentAnswer, func(*scsi.Result)) {
		t.Helper()
		_, done := r.answering(sess, &forwardMsg{ID: id, Cmd: caw})
		v, ok := r.answers.Load(id)
		if !ok {
			t.Fatalf("request %d not registered", id)
		}
		return v.(*sentAnswer), done
	}
	confirmed, done1 := start(1)
	done1(&scsi.Result{Status: scsi.StatusGood})
	lost, done2 := start(2)
	done2(&scsi.Result{Status: scsi.StatusGood})
	_, done3 := start(3)
	done3(&scsi.Result{Status: scsi.StatusCheckCondition})
	if _, ok := r.answers.Load(uint64(3)); ok {
		t.Fatal("a command that did not end GOOD is still registered")
	}
	if confirmed.Lost() || lost.Lost() {
		t.Fatal("an answer is lost while its session lives")
	}
	if err := r.handleAnswered(link.Message{Type: msgAnswered, Payload: (&writtenMsg{Pod: "p", Ref: 1}).encode()}); err != nil {
		t.Fatal(err)
	}
	if _, ok := r.answers.Load(uint64(1)); ok || !confirmed.Delivered() {
		t.Fatal("a confirmed answer is still registered, or not delivered")
	}
	end()
	if confirmed.Lost() || !lost.Lost() || lost.Delivered() {
		t.Fatalf("after the session ended: confirmed lost %v, unconfirmed lost %v", confirmed.Lost(), lost.Lost())
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, ok := r.answers.Load(uint64(2)); !ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the registry keeps a record of an ended session")
		}
		time.Sleep(time.Millisecond)
	}
	// A plain write is never registered.
	if ctx, _ := r.answering(context.Background(), &forwardMsg{ID: 4, Cmd: scsi.Command{CDB: []byte{0x8a}}}); ctx != context.Background() {
		t.Fatal("a plain write runs under an answer record")
	}
}

// TestOwnAnswerFate: the follower's record of a command the sequencer
// ran for a host of its own is lost only once the session ended without
// the sequencer's confirmation; a command the sequencer ended otherwise
// (Length 1) leaves the registry without being delivered.
func TestOwnAnswerFate(t *testing.T) {
	r := &Replicator{}
	sess, end := context.WithCancel(context.Background())
	ident := &scsi.Identity{CDB: []byte{0x5f, 0, 0, 0, 0, 0, 0, 0, 24, 0}, Param: make([]byte, 24)}
	if ctx := r.withOwn(context.Background(), sess, 0, ident); ctx != context.Background() {
		t.Fatal("a write without an own command runs under an answer record")
	}
	fates := map[uint64]*sentAnswer{}
	for id := uint64(1); id <= 3; id++ {
		r.withOwn(context.Background(), sess, id, ident)
		v, ok := r.answers.Load(id)
		if !ok {
			t.Fatalf("command %d not registered", id)
		}
		fates[id] = v.(*sentAnswer)
	}
	for id, length := range map[uint64]uint64{1: 0, 2: 1} {
		if err := r.handleAnswered(link.Message{Type: msgAnswered, Payload: (&writtenMsg{Pod: "p", Ref: id, Length: length}).encode()}); err != nil {
			t.Fatal(err)
		}
		if _, ok := r.answers.Load(id); ok {
			t.Fatalf("command %d still registered after the sequencer's word", id)
		}
	}
	end()
	if fates[1].Lost() || !fates[1].Delivered() {
		t.Fatal("a confirmed GOOD counts as lost")
	}
	for _, id := range []uint64{2, 3} {
		if !fates[id].Lost() || fates[id].Delivered() {
			t.Fatalf("command %d, not confirmed, session ended: lost %v delivered %v", id, fates[id].Lost(), fates[id].Delivered())
		}
	}
}

// TestWriteMsgOwn: a write's own-command fields travel, and a message
// without them (a plain write, a copied piece) decodes with none.
func TestWriteMsgOwn(t *testing.T) {
	plain := &writeMsg{Pod: "p", Volume: "v", Off: 512, Length: 512, Data: make([]byte, 512), Damaged: []extent{{0, 512}}}
	m, err := decodeWrite(plain.encode())
	if err != nil || m.OwnID != 0 || m.Own != nil || len(m.Damaged) != 1 {
		t.Fatalf("plain write: %+v, %v", m, err)
	}
	own := *plain
	own.Damaged = nil
	own.OwnID, own.Own = 7, []byte(`{"cdb":"iQ=="}`)
	m, err = decodeWrite(own.encode())
	if err != nil || m.OwnID != 7 || string(m.Own) != string(own.Own) {
		t.Fatalf("write of an own command: %+v, %v", m, err)
	}
	p := own.encode()
	if _, err := decodeWrite(p[:len(p)-3]); err == nil {
		t.Fatal("a truncated own-command field decodes")
	}
	if ownIdentity([]byte("{")) != nil || ownIdentity(nil) != nil {
		t.Fatal("a malformed or absent identity decodes")
	}
}
