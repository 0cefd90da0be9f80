package catalog

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"
)

// TestPodAttributes: a new pod recovers by itself and prefers no array;
// SetPodAttr names one of the pod's arrays or none, refusing another
// name with the list of valid ones; removing the preferred array from
// the pod clears the preference.
func TestPodAttributes(t *testing.T) {
	c, err := Open(&memPersist{})
	if err != nil {
		t.Fatal(err)
	}
	a, b := PodArray{Name: "array-a", ID: "ida"}, PodArray{Name: "array-b", ID: "idb"}
	mustApply(t, c, CreatePod{Name: "pod1", ID: "p1", Created: time.Now(), Array: a})
	if p := c.View().Pods["pod1"]; !p.AutoRecover || p.FailoverPreference != "" {
		t.Fatalf("new pod: auto recover %v, preference %q; want true and none", p.AutoRecover, p.FailoverPreference)
	}
	str := func(s string) *string { return &s }
	no := false
	err = c.Apply(SetPodAttr{Name: "pod1", FailoverPreference: str("array-b")})
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "(array-a)") {
		t.Fatalf("preference for an array the pod is not on: %v, want invalid naming array-a", err)
	}
	mustApply(t, c, SetPodMembership{Name: "pod1", Arrays: []PodArray{a, b}, Sequencer: "array-a", Epoch: 2},
		SetPodAttr{Name: "pod1", FailoverPreference: str("array-b"), AutoRecover: &no})
	if p := c.View().Pods["pod1"]; p.AutoRecover || p.FailoverPreference != "array-b" {
		t.Fatalf("after setattr: auto recover %v, preference %q", p.AutoRecover, p.FailoverPreference)
	}
	err = c.Apply(SetPodAttr{Name: "pod1", FailoverPreference: str("array-z")})
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "(array-a, array-b)") {
		t.Fatalf("preference for array-z: %v, want invalid listing array-a, array-b", err)
	}
	mustApply(t, c, SetPodAttr{Name: "pod1", AutoRecover: new(bool)})
	if p := c.View().Pods["pod1"]; p.FailoverPreference != "array-b" {
		t.Fatalf("a setattr of auto recover alone changed the preference to %q", p.FailoverPreference)
	}
	mustApply(t, c, SetPodMembership{Name: "pod1", Arrays: []PodArray{a}, Sequencer: "array-a", Epoch: 3})
	if p := c.View().Pods["pod1"]; p.FailoverPreference != "" {
		t.Fatalf("preference %q survived the removal of its array", p.FailoverPreference)
	}
	mustApply(t, c, SetPodAttr{Name: "pod1", FailoverPreference: str("array-a")},
		SetPodAttr{Name: "pod1", FailoverPreference: str("")})
	if p := c.View().Pods["pod1"]; p.FailoverPreference != "" {
		t.Fatalf("preference %q not cleared", p.FailoverPreference)
	}
}

// TestPodFormat1: a version 1 document (a list of preferred arrays, no
// auto_recover) reads as the first preferred array and auto-recover on,
// and is written back as version 2, which reads the same.
func TestPodFormat1(t *testing.T) {
	v1 := `{"version":1,"generation":3,"next_data_id":1,"pods":{
		"pod1":{"name":"pod1","id":"p1","arrays":[{"name":"array-a","id":"ida"},{"name":"array-b","id":"idb"}],
			"sequencer":"array-a","epoch":2,"failover_preference":["array-b","array-a"]},
		"pod2":{"name":"pod2","id":"p2","arrays":[{"name":"array-a","id":"ida"}],"sequencer":"array-a","epoch":1}}}`
	p := &memPersist{data: []byte(v1)}
	c, err := Open(p)
	if err != nil {
		t.Fatal(err)
	}
	check := func(st *State) {
		t.Helper()
		if p1 := st.Pods["pod1"]; p1.FailoverPreference != "array-b" || !p1.AutoRecover {
			t.Fatalf("pod1: preference %q, auto recover %v; want array-b, true", p1.FailoverPreference, p1.AutoRecover)
		}
		if p2 := st.Pods["pod2"]; p2.FailoverPreference != "" || !p2.AutoRecover {
			t.Fatalf("pod2: preference %q, auto recover %v; want none, true", p2.FailoverPreference, p2.AutoRecover)
		}
	}
	check(c.View())
	no := false
	mustApply(t, c, SetPodAttr{Name: "pod2", AutoRecover: &no})
	var doc struct {
		Version int                        `json:"version"`
		Pods    map[string]json.RawMessage `json:"pods"`
	}
	if err := json.Unmarshal(p.data, &doc); err != nil {
		t.Fatal(err)
	}
	if doc.Version != FormatVersion || !strings.Contains(string(doc.Pods["pod1"]), `"failover_preference":"array-b"`) ||
		!strings.Contains(string(doc.Pods["pod2"]), `"auto_recover":false`) {
		t.Fatalf("written back as version %d: %s", doc.Version, p.data)
	}
	c2, err := Open(p)
	if err != nil {
		t.Fatal(err)
	}
	if p2 := c2.View().Pods["pod2"]; p2.AutoRecover {
		t.Fatal("auto recover false read back as true")
	}
	if err := json.Unmarshal([]byte(`{"name":"x","failover_preference":7}`), new(Pod)); err == nil {
		t.Fatal("a failover preference that is a number was accepted")
	}
}
