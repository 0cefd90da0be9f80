package replication

import (
	"encoding/json"
	"fmt"

	"github.com/metro-storage/metro/internal/catalog"
	"github.com/metro-storage/metro/internal/pod"
)

// An array keeps each stretched pod's protocol record (pod.Record)
// durably in its store, apart from the catalog: the record is this
// array's alone, never replicated. The catalog's epoch and sequencer
// follow it (for display and for routing configuration changes to the
// sequencer); at start the record wins.

func recordKey(podID string) string { return "podrec/" + podID }

// loadRecord returns the stored record of a pod, if any.
func (r *Replicator) loadRecord(podID string) (pod.Record, bool) {
	data, ok, err := r.env.Store().GetMeta(recordKey(podID))
	if err != nil || !ok {
		return pod.Record{}, false
	}
	var rec pod.Record
	if json.Unmarshal(data, &rec) != nil {
		return pod.Record{}, false
	}
	return rec, true
}

// recordOf returns a pod's record: the stored one, or one made from the
// catalog for a pod stretched before records existed (a follower whose
// copy is not recorded complete at the pod's epoch is behind).
func (r *Replicator) recordOf(cp *catalog.Pod) pod.Record {
	if rec, ok := r.loadRecord(cp.ID); ok {
		return rec
	}
	// Before records, a lost link kept the pod on its sequencer (a fixed
	// bias): the same as a pre-election of the sequencer on both sides.
	rec := pod.Record{Epoch: cp.Epoch, Sequencer: r.arrayID(cp, cp.Sequencer)}
	rec.Pre = rec.Sequencer
	if cp.Sequencer == r.cfg.Name {
		rec.Synced = cp.Epoch
	} else if c, ok := r.loadCursor(cp.ID); ok && c.Complete && c.Epoch == cp.Epoch {
		rec.Synced = cp.Epoch
	}
	rec.Left = cp.Pending != nil
	return rec
}

// arrayID returns the id of the pod's array named name.
func (r *Replicator) arrayID(cp *catalog.Pod, name string) string {
	for _, a := range cp.Arrays {
		if a.Name == name {
			return a.ID
		}
	}
	if name == r.cfg.Name {
		return r.cfg.ID
	}
	if p := r.peer(); p != nil && p.Name == name {
		return p.ID
	}
	return ""
}

// arrayName returns the name of the array with the id.
func (r *Replicator) arrayName(id string) string {
	if id == r.cfg.ID {
		return r.cfg.Name
	}
	if p := r.peer(); p != nil && p.ID == id {
		return p.Name
	}
	return id
}

// saveRecord makes a pod's record durable (after the data this array
// received, when syncData), then brings the catalog's epoch and
// sequencer in line with it.
func (r *Replicator) saveRecord(podName, podID string, rec pod.Record, syncData bool) error {
	if r.persistHook != nil {
		if err := r.persistHook(podName, rec); err != nil {
			return err
		}
	}
	st := r.env.Store()
	if syncData {
		if err := st.Sync(); err != nil {
			return fmt.Errorf("sync the received copy: %w", err)
		}
	}
	b := st.NewBatch()
	b.SetMeta(recordKey(podID), mustJSON(rec))
	if err := b.Commit(); err != nil {
		return fmt.Errorf("record: %w", err)
	}
	return r.followRecord(podName, podID, rec)
}

// followRecord sets the catalog's epoch and sequencer of a stretched pod
// to its record's.
func (r *Replicator) followRecord(podName, podID string, rec pod.Record) error {
	cp := r.env.Catalog().View().Pods[podName]
	if cp == nil || cp.ID != podID || cp.Pending != nil || rec.Left || len(cp.Arrays) < 2 {
		return nil
	}
	seq := r.arrayName(rec.Sequencer)
	if cp.Epoch == rec.Epoch && cp.Sequencer == seq {
		return nil
	}
	if cp.Epoch > rec.Epoch {
		return nil // the catalog already went on (a restretch)
	}
	return r.env.Catalog().Apply(catalog.SetPodMembership{Name: podName, Arrays: cp.Arrays, Sequencer: seq, Epoch: rec.Epoch})
}

// ForgetPod deletes what this array kept of a pod's protocol (its record
// and the cursor of a copy), once its copy is eradicated.
func (r *Replicator) ForgetPod(podID string) error {
	b := r.env.Store().NewBatch()
	b.DeleteMeta(recordKey(podID))
	b.DeleteMeta(cursorKey(podID))
	return b.Commit()
}
