package lab

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/metro-storage/metro/internal/netproxy"
)

// The fault controls. Each takes effect before it returns and is
// idempotent: asking for the state the lab is in changes nothing. A
// control names the cables it sets and leaves the others as they are
// (rejoin heals the link even if a partition cut it, and leaves the other
// array's mediator path alone). Changes to several cables (isolate,
// partition with the mediator) happen in one instant (netproxy.Apply).
// One control runs at a time, whether called here or asked on the
// control socket.

// ErrNoLink is the answer of a link control in a lab of one array.
var ErrNoLink = errors.New("this lab runs one array, so it has no link: start a pair (metro lab up without --arrays 1)")

// ErrNoMediator is the answer of a mediator control in a lab without one
// (wrapped with the reason).
var ErrNoMediator = errors.New("this lab runs without a mediator")

// noMediator is ErrNoMediator with why, and what to do.
func (l *Lab) noMediator() error {
	if l.opts.Arrays == 1 {
		return fmt.Errorf("%w: it runs one array; start a pair (metro lab up without --arrays 1)", ErrNoMediator)
	}
	return fmt.Errorf("%w: it was started with --mediator=false; start it again without", ErrNoMediator)
}

// ArrayIndex finds an array of the lab by name: its full name (array-a),
// or its letter (a or A).
func (l *Lab) ArrayIndex(name string) (int, error) {
	for i, ai := range l.Info.Arrays {
		if strings.EqualFold(name, ai.Name) || strings.EqualFold("array-"+name, ai.Name) {
			return i, nil
		}
	}
	return 0, fmt.Errorf("no array %q in this lab: name one of %s (or its letter)", name, l.arrayNames())
}

func (l *Lab) checkArray(i int) error {
	if i < 0 || i >= len(l.Info.Arrays) {
		return fmt.Errorf("no array %d in this lab: it has %d", i, len(l.Info.Arrays))
	}
	return nil
}

// cutTraffic sets whether array i's traffic to its peer is dropped on
// the link proxy s.
func (l *Lab) cutTraffic(s *netproxy.Settings, i int, cut bool) {
	if i == l.linkTarget {
		s.CutBToA = cut
	} else {
		s.CutAToB = cut
	}
}

// trafficCut reports whether array i's traffic to its peer is dropped.
func (l *Lab) trafficCut(s netproxy.Settings, i int) bool {
	if i == l.linkTarget {
		return s.Partitioned || s.CutBToA
	}
	return s.Partitioned || s.CutAToB
}

// cables is a change of the lab's cables, made in one instant.
type cables struct {
	// link edits the link proxy's settings (nil: unchanged).
	link func(*netproxy.Settings)
	// med cuts (true) or mends (false) the arrays' paths to the mediator,
	// by array index.
	med map[int]bool
	// paths cuts or mends host paths.
	paths map[HostPath]bool
}

// change makes c, one control at a time.
func (l *Lab) change(c cables) error {
	l.ctl.Lock()
	defer l.ctl.Unlock()
	return l.changeLocked(c)
}

// changeLocked makes c with l.ctl held: every cable it names in the same
// instant (netproxy.Apply), or none if one of them does not exist.
func (l *Lab) changeLocked(c cables) error {
	var cs []netproxy.Change
	if c.link != nil {
		if l.proxy == nil {
			return ErrNoLink
		}
		cs = append(cs, netproxy.Change{Proxy: l.proxy, Set: c.link})
	}
	if len(c.med) > 0 && l.med == nil {
		return l.noMediator()
	}
	for i, cut := range c.med {
		if err := l.checkArray(i); err != nil {
			return err
		}
		cs = append(cs, netproxy.Change{Proxy: l.med.routes[i], Set: cutOrMend(cut)})
	}
	for p, cut := range c.paths {
		if err := l.checkHostPath(p); err != nil {
			return err
		}
		cs = append(cs, netproxy.Change{Proxy: l.hostPaths[p.Site][p.Array], Set: cutOrMend(cut)})
	}
	netproxy.Apply(cs...)
	return nil
}

// cutOrMend is a settings change that cuts a route both ways, or mends it.
func cutOrMend(cut bool) func(*netproxy.Settings) {
	if cut {
		return partition
	}
	return heal
}

// both is a mediator change for both arrays of a pair.
func both(cut bool) map[int]bool { return map[int]bool{0: cut, 1: cut} }

func partition(s *netproxy.Settings) { s.Partitioned = true }
func heal(s *netproxy.Settings)      { s.Heal() }

// Partition cuts the replication link both ways: the arrays' bytes to
// each other are lost silently, as at a cable cut, until Heal.
func (l *Lab) Partition() error { return l.change(cables{link: partition}) }

// PartitionFrom cuts the link one way: array i's traffic to its peer is
// lost while the peer's still reaches it.
func (l *Lab) PartitionFrom(i int) error {
	if err := l.checkArray(i); err != nil {
		return err
	}
	return l.change(cables{link: func(s *netproxy.Settings) { l.cutTraffic(s, i, true) }})
}

// PartitionAndMediator cuts the link and both arrays' paths to the
// mediator in the same instant.
func (l *Lab) PartitionAndMediator() error { return l.change(cables{link: partition, med: both(true)}) }

// Heal mends the link, both ways (one-way cuts too). Connections that
// lost bytes are reset, so the arrays reconnect.
func (l *Lab) Heal() error { return l.change(cables{link: heal}) }

// HealAndMediator mends the link and both arrays' mediator paths in the
// same instant.
func (l *Lab) HealAndMediator() error { return l.change(cables{link: heal, med: both(false)}) }

// Isolate cuts array i from everything at once: the link, both ways, and
// its path to the mediator (as when its site is cut off). In a lab
// without a mediator it cuts the link.
func (l *Lab) Isolate(i int) error {
	if err := l.checkArray(i); err != nil {
		return err
	}
	return l.change(cables{link: partition, med: l.mediatorPath(i, true)})
}

// Rejoin undoes Isolate: the link and array i's mediator path are mended
// in the same instant.
func (l *Lab) Rejoin(i int) error {
	if err := l.checkArray(i); err != nil {
		return err
	}
	return l.change(cables{link: heal, med: l.mediatorPath(i, false)})
}

// mediatorPath is a change of array i's mediator path, none without a
// mediator.
func (l *Lab) mediatorPath(i int, cut bool) map[int]bool {
	if l.med == nil {
		return nil
	}
	return map[int]bool{i: cut}
}

// CutMediator cuts array i's path to the mediator; the mediator and the
// other array's path stay up.
func (l *Lab) CutMediator(i int) error { return l.change(cables{med: map[int]bool{i: true}}) }

// RestoreMediator mends array i's path to the mediator.
func (l *Lab) RestoreMediator(i int) error { return l.change(cables{med: map[int]bool{i: false}}) }

// SetRTT sets the round trip the link adds (half each way), for open
// connections too; 0 clears it.
func (l *Lab) SetRTT(d time.Duration) error {
	if d < 0 {
		return fmt.Errorf("round trip %v: negative; give 0 or more", d)
	}
	return l.change(cables{link: func(s *netproxy.Settings) { s.RTT = d }})
}

// StopMediator kills the mediator process (kill -9, as a lost site would
// stop it) and waits until it has died. It does nothing if the mediator
// is not running.
func (l *Lab) StopMediator() error {
	if l.med == nil {
		return l.noMediator()
	}
	l.ctl.Lock()
	defer l.ctl.Unlock()
	l.mu.Lock()
	p := l.mu.mediator
	l.mu.Unlock()
	if !p.running() {
		return nil
	}
	p.kill()
	l.mu.Lock()
	l.Info.MediatorPID = 0
	l.mu.Unlock()
	return l.writeInfo()
}

// StartMediator starts the mediator again, with the same data directory
// and address, and waits until it answers. It does nothing if it runs.
func (l *Lab) StartMediator(ctx context.Context) error {
	if l.med == nil {
		return l.noMediator()
	}
	l.ctl.Lock()
	defer l.ctl.Unlock()
	l.mu.Lock()
	running := l.mu.mediator.running()
	l.mu.Unlock()
	if running {
		return nil
	}
	if err := l.startMediator(ctx); err != nil {
		return err
	}
	return l.writeInfo()
}

// Status is the state of a running lab's processes and cables.
type Status struct {
	Dir string `json:"dir"`
	// PID is the lab's own process (metro lab up).
	PID    int           `json:"pid"`
	Arrays []ArrayStatus `json:"arrays"`
	// Link is nil in a lab of one array, Mediator in a lab without one.
	Link     *LinkStatus     `json:"link,omitempty"`
	Mediator *MediatorStatus `json:"mediator,omitempty"`
	// Sites are the lab's sites, with their hosts' paths to the arrays.
	Sites []SiteStatus `json:"sites"`
}

// ArrayStatus is one array in Status.
type ArrayStatus struct {
	Name    string `json:"name"`
	Running bool   `json:"running"`
	PID     int    `json:"pid,omitempty"`
	// MediatorCut is whether its path to the mediator is cut.
	MediatorCut bool `json:"mediator_cut"`
}

// LinkStatus is the replication link in Status.
type LinkStatus struct {
	// Cut names the arrays whose traffic to their peer is lost: both
	// when the link is partitioned, one for a one-way cut, none when it
	// is whole.
	Cut []string `json:"cut"`
	// RTT is the round trip the link adds, Bandwidth its limit per
	// direction ("" unlimited).
	RTT       string `json:"rtt"`
	Bandwidth string `json:"bandwidth"`
}

// MediatorStatus is the mediator in Status.
type MediatorStatus struct {
	Running bool   `json:"running"`
	PID     int    `json:"pid,omitempty"`
	URL     string `json:"url"`
}

// Status reports what runs and what is cut, as it is now.
func (l *Lab) Status() Status {
	st := Status{Dir: l.opts.Dir, PID: os.Getpid(), Arrays: make([]ArrayStatus, len(l.Info.Arrays))}
	l.mu.Lock()
	for i, ai := range l.Info.Arrays {
		st.Arrays[i] = ArrayStatus{Name: ai.Name, Running: l.mu.procs[i].running()}
		if st.Arrays[i].Running {
			st.Arrays[i].PID = ai.PID
		}
	}
	if l.med != nil {
		st.Mediator = &MediatorStatus{Running: l.mu.mediator.running(), URL: l.med.info.URL}
		if st.Mediator.Running {
			st.Mediator.PID = l.Info.MediatorPID
		}
	}
	l.mu.Unlock()
	if l.med != nil {
		for i := range st.Arrays {
			st.Arrays[i].MediatorCut = l.med.routes[i].Settings().Partitioned
		}
	}
	if l.proxy != nil {
		s := l.proxy.Settings()
		link := &LinkStatus{Cut: []string{}, RTT: s.RTT.String()}
		link.Bandwidth = netproxy.FormatBandwidth(s.Bandwidth)
		for i, ai := range l.Info.Arrays {
			if l.trafficCut(s, i) {
				link.Cut = append(link.Cut, ai.Name)
			}
		}
		st.Link = link
	}
	st.Sites = l.siteStatus()
	return st
}
