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
