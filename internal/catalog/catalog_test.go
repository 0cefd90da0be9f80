package catalog

import (
	"errors"
	"testing"
	"time"
)

type memPersist struct {
	data  []byte
	saves int
	fail  error
}

func (m *memPersist) Load() ([]byte, bool, error) { return m.data, m.data != nil, nil }
func (m *memPersist) Save(d []byte) error {
	if m.fail != nil {
		return m.fail
	}
	m.data = append([]byte(nil), d...)
	m.saves++
	return nil
}

func mustApply(t *testing.T, c *Catalog, ops ...Op) {
	t.Helper()
	for _, op := range ops {
		if err := c.Apply(op); err != nil {
			t.Fatalf("%s: %v", op.Kind(), err)
		}
	}
}

func applyErr(t *testing.T, c *Catalog, op Op, want error) {
	t.Helper()
	err := c.Apply(op)
	if !errors.Is(err, want) {
		t.Fatalf("%s: got %v, want %v", op.Kind(), err, want)
	}
}

const (
	uuid1 = "0123456789abcdef0123456789abcdef"
	uuid2 = "fedcba9876543210fedcba9876543210"
)

func lun(n uint64) *uint64 { return &n }

func TestLifecycle(t *testing.T) {
	p := &memPersist{}
	c, err := Open(p)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	mustApply(t, c,
		CreatePod{Name: "pod1", ID: "p1", Created: now, Array: PodArray{Name: "a", ID: "ida"}},
		CreateVolume{Name: "pod1::vol1", UUID: uuid1, Size: 1 << 30, Created: now},
		CreateHost{Host: Host{Name: "h1", IQNs: []string{"iqn.2020-01.org.example:h1"}}},
		Connect{Volume: "pod1::vol1", Host: "h1"},
	)
	applyErr(t, c, CreateVolume{Name: "pod1::vol1", UUID: uuid1, Size: 4096}, ErrExists)
	applyErr(t, c, CreateVolume{Name: "nopod::vol1", UUID: uuid1, Size: 4096}, ErrNotFound)
	applyErr(t, c, CreateVolume{Name: "pod1vol1", UUID: uuid1, Size: 4096}, ErrInvalid)
	applyErr(t, c, CreateVolume{Name: "pod1::v2", UUID: uuid1, Size: 1000}, ErrInvalid)
	applyErr(t, c, CreateHost{Host: Host{Name: "h2", IQNs: []string{"iqn.2020-01.org.example:h1"}}}, ErrConflict)
	applyErr(t, c, CreateHost{Host: Host{Name: "h3", IQNs: []string{"not-an-iqn"}}}, ErrInvalid)
	applyErr(t, c, DestroyVolume{Name: "pod1::vol1", At: now}, ErrConflict)
	applyErr(t, c, ResizeVolume{Name: "pod1::vol1", Size: 1 << 20}, ErrInvalid)
	mustApply(t, c, ResizeVolume{Name: "pod1::vol1", Size: 2 << 30})

	luns := c.View().LUNsFor("iqn.2020-01.org.example:h1")
	if v := luns[0]; v == nil || v.Name != "pod1::vol1" || v.Size != 2<<30 {
		t.Fatalf("LUNsFor: %+v", luns)
	}
	if len(c.View().LUNsFor("iqn.2020-01.org.example:other")) != 0 {
		t.Fatal("unknown initiator sees LUNs")
	}

	mustApply(t, c, DestroyVolume{Name: "pod1::vol1", At: now, Force: true})
	if len(c.View().Connections) != 0 {
		t.Fatal("force destroy kept the connection")
	}
	applyErr(t, c, DestroyPod{Name: "pod1"}, ErrConflict)
	if got := c.View().Expired(24*time.Hour, now.Add(23*time.Hour)); len(got) != 0 {
		t.Fatalf("expired early: %v", got)
	}
	if got := c.View().Expired(24*time.Hour, now.Add(24*time.Hour)); len(got) != 1 {
		t.Fatalf("not expired: %v", got)
	}
	mustApply(t, c, RecoverVolume{Name: "pod1::vol1"})
	mustApply(t, c, DestroyVolume{Name: "pod1::vol1", At: now}, EradicateVolume{Name: "pod1::vol1"}, DestroyPod{Name: "pod1"})

	// Reopen: state survives.
	c2, err := Open(p)
	if err != nil {
		t.Fatal(err)
	}
	if c2.View().Generation != c.View().Generation || len(c2.View().Hosts) != 1 || c2.View().NextDataID != 2 {
		t.Fatalf("reopened state differs: %+v", c2.View())
	}
}

func TestHostGroupLUNs(t *testing.T) {
	c, _ := Open(&memPersist{})
	now := time.Now()
	mustApply(t, c,
		CreatePod{Name: "p", ID: "p", Created: now, Array: PodArray{Name: "a"}},
		CreateVolume{Name: "p::a", UUID: uuid1, Size: 4096, Created: now},
		CreateVolume{Name: "p::b", UUID: uuid2, Size: 4096, Created: now},
		CreateHost{Host: Host{Name: "h1", IQNs: []string{"iqn.2020-01.x:1"}}},
		CreateHost{Host: Host{Name: "h2", IQNs: []string{"iqn.2020-01.x:2"}}},
		CreateHostGroup{Name: "g", Hosts: []string{"h1", "h2"}},
		Connect{Volume: "p::a", HostGroup: "g"},
		Connect{Volume: "p::b", Host: "h1"},
	)
	l1 := c.View().LUNsFor("iqn.2020-01.x:1")
	if l1[0].Name != "p::a" || l1[1].Name != "p::b" {
		t.Fatalf("h1 LUNs: %v", l1)
	}
	applyErr(t, c, Connect{Volume: "p::b", Host: "h2", LUN: lun(0)}, ErrConflict)
	applyErr(t, c, DeleteHostGroup{Name: "g"}, ErrConflict)
	applyErr(t, c, Connect{Volume: "p::a", HostGroup: "g"}, ErrExists)
	mustApply(t, c, Disconnect{Volume: "p::a", HostGroup: "g"}, DeleteHostGroup{Name: "g"})
}

func TestFailedSaveChangesNothing(t *testing.T) {
	p := &memPersist{}
	c, _ := Open(p)
	p.fail = errors.New("disk gone")
	if err := c.Apply(CreateHost{Host: Host{Name: "h"}}); err == nil {
		t.Fatal("apply succeeded with a failing persister")
	}
	if len(c.View().Hosts) != 0 {
		t.Fatal("failed apply changed the state")
	}
}

func TestOpRoundTrip(t *testing.T) {
	ops := []Op{
		CreatePod{Name: "p"}, Connect{Volume: "p::v", Host: "h", LUN: lun(3)},
		SetHostAttr{Name: "h", AddIQNs: []string{"iqn.2020-01.x:1"}},
	}
	for _, op := range ops {
		b, err := MarshalOp(op)
		if err != nil {
			t.Fatal(err)
		}
		back, err := UnmarshalOp(b)
		if err != nil {
			t.Fatal(err)
		}
		if back.Kind() != op.Kind() {
			t.Fatalf("kind %s became %s", op.Kind(), back.Kind())
		}
	}
	if _, err := UnmarshalOp([]byte(`{"kind":"nope","op":{}}`)); !errors.Is(err, ErrInvalid) {
		t.Fatalf("unknown kind: %v", err)
	}
}
