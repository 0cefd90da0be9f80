package e2e

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/metro-storage/metro/internal/api"
	"github.com/metro-storage/metro/internal/initiator"
	"github.com/metro-storage/metro/internal/lab"
	"github.com/metro-storage/metro/internal/netproxy"
)

// The failure-scenario suite: one test per failure scenario of the
// design (DESIGN.md, "Failure scenarios"), on a real lab (arrays and the
// mediator as processes, faults made by the lab's cables). Each runs
// with four hosts writing throughout (scenhost_test.go): at each site a
// uniform host, with paths to both arrays, and a non-uniform one, with a
// path to its own site's array only. Hosts of site A prefer array-a
// (their paths to it Active/Optimized, to array-b Active/Non-optimized),
// those of site B array-b, and pod1 prefers array-a. Each scenario
// checks, against what the seeds promise: the pod's status on both
// arrays as each reports itself, the ALUA state every path of every host
// reports, which hosts saw an I/O error, and that every acknowledged
// write reads back through both arrays once the fault is repaired and
// the pod is in sync again, with both copies identical. The longest
// write pause of each host is logged and written to the document, never
// asserted. The scenarios share one lab: each ends repaired and in sync
// (if one does not, the next starts on a new lab).
//
// With METRO_SCENARIO_DOC=FILE the run writes FILE, the table of
// scenarios, expected and observed (scripts/failure-scenarios.sh makes
// docs/failure-scenarios.md so).

// The initiators of the scenario hosts, and of the checks that read the
// volume through each array's own portal.
const (
	iqnUniformA = "iqn.2026-11.io.metro:scen-uniform-a"
	iqnUniformB = "iqn.2026-11.io.metro:scen-uniform-b"
	iqnLocalA   = "iqn.2026-11.io.metro:scen-local-a"
	iqnLocalB   = "iqn.2026-11.io.metro:scen-local-b"
	iqnVerifier = "iqn.2026-11.io.metro:scen-verifier"
)

// Host names, in the order of the documents' columns.
const (
	uniformA = "uniform-A"
	uniformB = "uniform-B"
	localA   = "local-A"
	localB   = "local-B"
)

var hostNames = []string{uniformA, uniformB, localA, localB}

// Array states as the arrays report themselves (metro pod list), and
// stateDown for an array whose process is not running.
const (
	stOnline    = "online"
	stOffline   = "offline"
	stDown      = "down"
	preElected  = " (pre-elected)"
	scenVolSize = 64 << 20
	// regionUnits is each host's region: 1024 units of 4 KiB.
	regionUnits = 1024
)

// Path states the hosts see, by situation (host -> "a AO, b ANO": the
// path to array-a, then to array-b, in the host's order).
var (
	pathsInSync = map[string]string{uniformA: "a AO, b ANO", uniformB: "b AO, a ANO", localA: "a AO", localB: "b AO"}
	// array-a serves alone, array-b does not serve.
	pathsAAlone = map[string]string{uniformA: "a AO, b U", uniformB: "b U, a AO", localA: "a AO", localB: "b U"}
	// array-a is gone, array-b serves alone.
	pathsBAloneADown = map[string]string{uniformA: "a down, b AO", uniformB: "b AO, a down", localA: "a down", localB: "b AO"}
	// array-b is gone, array-a serves alone.
	pathsAAloneBDown = map[string]string{uniformA: "a AO, b down", uniformB: "b down, a AO", localA: "a AO", localB: "b down"}
	// neither serves.
	pathsSuspended = map[string]string{uniformA: "a U, b U", uniformB: "b U, a U", localA: "a U", localB: "b U"}
)

// errorsOf lists the hosts expected to see an I/O error.
func errorsOf(hosts ...string) map[string]bool {
	m := map[string]bool{}
	for _, h := range hostNames {
		m[h] = slices.Contains(hosts, h)
	}
	return m
}

// with is paths with some hosts' entries replaced.
func with(paths map[string]string, kv ...string) map[string]string {
	m := maps.Clone(paths)
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return m
}

// want is what a phase of a scenario must lead to.
type want struct {
	// arrays is each array's status as it reports itself: online,
	// offline or down; "online (pre-elected)" also requires the mark.
	arrays [2]string
	paths  map[string]string
	// errors, when set, are the hosts that must see an I/O error begin
	// during this phase (the others none), where a scenario's phases
	// differ in that.
	errors map[string]bool
}

// phase is one step of a scenario's fault.
type phase struct {
	what string
	do   func(s *scenSuite) error
	want want
	// carriesOn names a host that must acknowledge a write sent after
	// the phase began before the next step (up to a minute): the phase
	// lasts until it noticed the fault and carried on.
	carriesOn string
}

// scenario is one failure scenario of the design.
type scenario struct {
	name string
	// seeds is what the seeds promise, with the documents cited; cite
	// names them shortly.
	seeds, cite string
	phases      []phase
	// errors: which hosts are expected to see an I/O error.
	errors map[string]bool
	// failed is the host the scenario fails on purpose, if any.
	failed string
	repair string
	fix    func(s *scenSuite) error
	// quick repairs as soon as the last phase is seen (else the hosts
	// write on under the fault for 2 s more).
	quick bool
	// note adds to the observations (e.g. latencies), from the hosts'
	// runs and the phases' start times.
	note func(runs map[string]hostRun, phases []time.Time) string
}

// The seeds, by document.
const (
	seedPure     = "Pure, *Implementing vSphere Metro Storage Cluster With ActiveCluster*"
	seedPurePref = "Pure, *ActiveCluster: Using Pod Failover Preferences*"
	seedHPE      = "HPE, *Remote Copy Active Sync* (Active Peer Persistence failure scenarios)"
	seedTintri   = "Tintri, *VMware Stretched Metro Cluster with VMstore Synchronous Replication*, Failure Scenarios"
)

func scenarios() []scenario {
	healLink := func(s *scenSuite) error { return s.l.Heal() }
	kill := func(i int) func(*scenSuite) error { return func(s *scenSuite) error { return s.l.Kill(i) } }
	start := func(i int) func(*scenSuite) error {
		return func(s *scenSuite) error { return s.l.Start(context.Background(), i) }
	}
	return []scenario{{
		name: "single host failure",
		cite: "Tintri: single-host failure; HPE: cluster server failure",
		seeds: "A host that fails takes its own applications down, to be restarted on another host; the storage and the " +
			"other hosts are not affected (" + seedTintri + ": single-host failure; " + seedHPE + ": cluster server failure, RPO 0).",
		phases: []phase{{
			what: "local-A fails: its sessions drop mid-write",
			do:   func(s *scenSuite) error { s.host(localA).fail(); return nil },
			want: want{arrays: [2]string{stOnline, stOnline}, paths: with(pathsInSync, localA, hostFailed)},
		}},
		failed: localA,
		errors: errorsOf(),
		repair: "local-A restarts and writes again",
		fix:    func(s *scenSuite) error { s.host(localA).startWriter(); return nil },
	}, {
		name: "host isolation",
		cite: "HPE: host disconnect; Tintri: single-host network isolation",
		seeds: "A host that loses its paths to one array carries on through its paths to the other, RPO 0 and RTO 0 " +
			"(" + seedHPE + ": host disconnect); a host cut from the network altogether loses its own I/O and its " +
			"cluster restarts its applications elsewhere, the arrays and the witness unaffected (" + seedTintri +
			": single-host network isolation).",
		phases: []phase{{
			what: "uniform-A's cable to array-a (its optimized path) is cut",
			do:   func(s *scenSuite) error { s.host(uniformA).cable(true, 0); return nil },
			want: want{arrays: [2]string{stOnline, stOnline}, paths: with(pathsInSync, uniformA, "a down, b ANO"), errors: errorsOf()},
			// Until uniform-A has noticed (its path timeout) and writes
			// through array-b.
			carriesOn: uniformA,
		}, {
			what: "then its cable to array-b too",
			do:   func(s *scenSuite) error { s.host(uniformA).cable(true, 1); return nil },
			want: want{arrays: [2]string{stOnline, stOnline}, paths: with(pathsInSync, uniformA, "a down, b down"), errors: errorsOf(uniformA)},
		}},
		errors: errorsOf(uniformA),
		repair: "its cables are mended",
		fix:    func(s *scenSuite) error { s.host(uniformA).cable(false, 0, 1); return nil },
	}, {
		name: "replication link partition",
		cite: "Pure: the race; Pure: failover preferences; HPE: replication link failure",
		seeds: "Both arrays pause and race to the mediator; one keeps the pod online, the other stops serving it, within " +
			"host I/O timeouts (" + seedPure + ": the race to the mediator); with a failover preference the preferred " +
			"array wins, and non-uniform hosts of the other array must be restarted at the winner's site (" + seedPurePref +
			"); paths to the array that stops serving become ALUA unavailable and uniform hosts continue through the " +
			"others, RPO 0, RTO 0 (" + seedHPE + ": replication link failure).",
		phases: []phase{{
			what: "the link is cut both ways",
			do:   func(s *scenSuite) error { return s.l.Partition() },
			want: want{arrays: [2]string{stOnline, stOffline}, paths: pathsAAlone},
		}},
		errors: errorsOf(localB),
		repair: "the link is mended",
		fix:    healLink,
	}, {
		name: "data-center partition",
		cite: "Tintri: data center partition; Pure: failover preferences",
		seeds: "The sites are cut from each other, the mediator still reachable from both: replication stops, the " +
			"preferred array keeps the pod, and hosts that can reach it carry on; hosts that can reach only the other " +
			"array lose access and are restarted where the pod is served (" + seedTintri + ": data center partition; " +
			seedPurePref + ").",
		phases: []phase{{
			what: "the link and every cross-site host path are cut in one instant",
			do:   func(s *scenSuite) error { return s.l.PartitionSites() },
			want: want{arrays: [2]string{stOnline, stOffline},
				paths: with(pathsAAlone, uniformA, "a AO, b down", uniformB, "b U, a down")},
		}},
		errors: errorsOf(uniformB, localB),
		repair: "the link and the cross-site paths are mended",
		fix:    func(s *scenSuite) error { return s.l.HealSites() },
	}, {
		name: "full storage failure at a site",
		cite: "Tintri: full storage failure; HPE: primary array failure; Pure: failover preferences",
		seeds: "The surviving array takes the pod over with the witness and hosts continue without downtime through it " +
			"(" + seedTintri + ": full storage failure in site A; " + seedHPE + ": primary array failure, RPO 0 and RTO 0); " +
			"with a failover preference the other array still wins when the preferred one is gone (" + seedPurePref + ").",
		phases: []phase{{
			what: "array-a (the preferred array) is killed",
			do:   kill(0),
			want: want{arrays: [2]string{stDown, stOnline}, paths: pathsBAloneADown},
		}},
		errors: errorsOf(localA),
		repair: "array-a starts again and resyncs",
		fix:    start(0),
	}, {
		name: "array reboot",
		cite: "HPE: primary array reboot/shutdown; Pure: automatic resynchronization",
		seeds: "When an array reboots, the other keeps serving, taking over the pods the rebooting array ordered, and " +
			"hosts connected to both continue through it, RPO 0 and RTO 0 (" + seedHPE + ": primary array " +
			"reboot/shutdown); back, it resynchronises by itself (" + seedPure + ": transparent failover with automatic " +
			"resynchronization).",
		phases: []phase{{
			what: "array-b is killed (kill -9) and started again at once",
			do:   kill(1),
			want: want{arrays: [2]string{stOnline, stDown}, paths: pathsAAloneBDown},
		}},
		errors: errorsOf(localB),
		repair: "array-b is started (as soon as the state above is seen)",
		fix:    start(1),
		quick:  true,
	}, {
		name: "loss of a whole site",
		cite: "Tintri: loss of site A; HPE: data center failure",
		seeds: "The surviving site's array and the witness find the lost array down and take its pods over; the hosts " +
			"of the lost site are lost with it and their applications restart at the other site (" + seedTintri +
			": loss of site A; " + seedHPE + ": data center failure, RPO 0).",
		phases: []phase{{
			what: "site A is lost: its cables (link, its mediator path, every host path into or out of it), then array-a",
			do:   func(s *scenSuite) error { return s.l.SiteDown(0) },
			want: want{arrays: [2]string{stDown, stOnline},
				paths: with(pathsBAloneADown, uniformA, "a down, b down")},
		}},
		errors: errorsOf(uniformA, localA),
		repair: "site A comes back (cables, then array-a)",
		fix:    func(s *scenSuite) error { return s.l.SiteUp(context.Background(), 0) },
	}, {
		name: "mediator loss",
		cite: "Pure: passive mediation, pre-election",
		seeds: "Mediation is passive: with the mediator lost the arrays go on replicating and serving while the link is " +
			"up, and once both see it gone they pre-elect one array per pod, the failover preference if set (" + seedPure +
			": passive mediation, pre-election).",
		phases: []phase{{
			what: "the mediator is killed",
			do:   func(s *scenSuite) error { return s.l.StopMediator() },
			want: want{arrays: [2]string{stOnline + preElected, stOnline}, paths: pathsInSync},
		}},
		errors: errorsOf(),
		repair: "the mediator starts again (pre-election disengages)",
		fix:    func(s *scenSuite) error { return s.l.StartMediator(context.Background()) },
	}, {
		name: "mediator loss, then link loss",
		cite: "Pure: pre-election",
		seeds: "With the mediator lost and the pod pre-elected, a later loss of the link keeps the pod online on the " +
			"pre-elected array and the other stops serving it (" + seedPure + ": pre-election).",
		phases: []phase{{
			what: "the mediator is killed",
			do:   func(s *scenSuite) error { return s.l.StopMediator() },
			want: want{arrays: [2]string{stOnline + preElected, stOnline}, paths: pathsInSync},
		}, {
			what: "then the link is cut",
			do:   func(s *scenSuite) error { return s.l.Partition() },
			want: want{arrays: [2]string{stOnline, stOffline}, paths: pathsAAlone},
		}},
		errors: errorsOf(localB),
		repair: "the link is mended, then the mediator starts",
		fix: func(s *scenSuite) error {
			if err := s.l.Heal(); err != nil {
				return err
			}
			return s.l.StartMediator(context.Background())
		},
	}, {
		name: "link and mediator lost together",
		cite: "Pure: what pre-election does not do",
		seeds: "Pre-election does not keep a pod online when the mediator and the link are lost at the same time: " +
			"the pod goes offline on both arrays, never split brain (" + seedPure + ": what pre-election does not do); " +
			"it comes back when either returns (DESIGN.md).",
		phases: []phase{{
			what: "the link and both mediator paths are cut in one instant",
			do:   func(s *scenSuite) error { return s.l.PartitionAndMediator() },
			want: want{arrays: [2]string{stOffline, stOffline}, paths: pathsSuspended},
		}, {
			what: "the mediator paths come back, the link still cut",
			do: func(s *scenSuite) error {
				if err := s.l.RestoreMediator(0); err != nil {
					return err
				}
				return s.l.RestoreMediator(1)
			},
			want: want{arrays: [2]string{stOnline, stOffline}, paths: pathsAAlone},
		}},
		errors: errorsOf(uniformA, uniformB, localA, localB),
		repair: "the link is mended",
		fix:    healLink,
	}, {
		name: "link flapping",
		cite: "Tintri: storage partition; Pure: automatic resynchronization",
		seeds: "Each loss of the link is a race the preferred array wins; each return resynchronises the other array " +
			"by itself, and no acknowledged write is lost (" + seedTintri + ": storage partition, replication " +
			"reconnects and resyncs; " + seedPure + ": automatic resynchronization and recovery).",
		phases: []phase{{
			what: "the link flaps: 3 cuts of 0.3 s then 3 of 2.5 s, mended 1-2 s between (each mend resets the link's connections " +
				"that lost bytes, so even a cut shorter than the link timeout ends the link session); it ends mended",
			do: func(s *scenSuite) error {
				for i, cut := range []time.Duration{300, 300, 300, 2500, 2500, 2500} {
					if err := s.l.Partition(); err != nil {
						return err
					}
					time.Sleep(cut * time.Millisecond)
					if err := s.l.Heal(); err != nil {
						return err
					}
					time.Sleep(time.Duration(1000+200*i) * time.Millisecond)
				}
				return nil
			},
			want: want{arrays: [2]string{stOnline, stOnline}, paths: pathsInSync},
		}},
		errors: errorsOf(localB),
	}, {
		name: "slow link (RTT 11 ms)",
		cite: "Pure: up to 11 ms RTT",
		seeds: "Arrays up to 11 ms of round trip apart are supported: both serve, in sync (" + seedPure +
			": uniform and non-uniform access).",
		phases: []phase{{
			what: "the link's round trip is set to 11 ms, for 5 s of writes",
			do: func(s *scenSuite) error {
				if err := s.l.SetRTT(11 * time.Millisecond); err != nil {
					return err
				}
				time.Sleep(5 * time.Second)
				return nil
			},
			want: want{arrays: [2]string{stOnline, stOnline}, paths: pathsInSync},
		}},
		errors: errorsOf(),
		repair: "the round trip is set back to 0",
		fix:    func(s *scenSuite) error { return s.l.SetRTT(0) },
		note: func(runs map[string]hostRun, ph []time.Time) string {
			var parts []string
			for _, h := range hostNames {
				r := runs[h]
				parts = append(parts, fmt.Sprintf("%s %s before, %s at 11 ms", h,
					ms(r.medianBetween(ph[0].Add(-time.Second), ph[0])), ms(r.medianBetween(ph[0].Add(time.Second), ph[0].Add(5*time.Second)))))
			}
			return "median write: " + strings.Join(parts, "; ")
		},
	}}
}

// ms is d for people, in milliseconds or seconds.
func ms(d time.Duration) string {
	if d < time.Second {
		return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond))
	}
	return fmt.Sprintf("%.2f s", d.Seconds())
}

// scenSuite is the lab the scenarios share and its hosts.
type scenSuite struct {
	t *testing.T
	// l is the lab when it runs in this process (nil when it runs as
	// metro lab up), info its lab.json.
	l       *lab.Lab
	info    lab.Info
	clients []*api.Client
	hosts   []*mpHost
	// running reports whether array i's process runs.
	running func(i int) bool
}

func (s *scenSuite) host(name string) *mpHost {
	for _, h := range s.hosts {
		if h.name == name {
			return h
		}
	}
	s.t.Fatalf("no host %s", name)
	return nil
}

// up starts a lab for the scenarios: a pair with its mediator (the arrays
// heartbeat it every second, so that they notice its loss sooner; every
// other timer at its default), pod1 preferring array-a, the hosts of
// both sites connected.
func (s *scenSuite) up() error {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	l, err := lab.Up(ctx, lab.Options{Dir: s.t.TempDir(), Binary: metroBin, Initiators: []string{iqnVerifier},
		Size: scenVolSize, MediatorHeartbeat: time.Second})
	if err != nil {
		return fmt.Errorf("lab up: %w", err)
	}
	s.l, s.info = l, l.Info
	s.running = func(i int) bool { return l.Status().Arrays[i].Running }
	if err := s.connect(); err != nil {
		return err
	}
	for _, args := range [][]string{
		{"host", "create", "--iqn", iqnUniformA, "--iqn", iqnLocalA, "--preferred-array", "array-a", "site-a"},
		{"host", "create", "--iqn", iqnUniformB, "--iqn", iqnLocalB, "--preferred-array", "array-b", "site-b"},
		{"host", "connect", "--vol", lab.VolName, "--lun", "0", "site-a"},
		{"host", "connect", "--vol", lab.VolName, "--lun", "0", "site-b"},
		{"pod", "setattr", "--failover-preference", "array-a", lab.PodName},
	} {
		if out, err := cliTry(s.t, l, 0, args...); err != nil {
			return fmt.Errorf("metro %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	return s.addHosts(ctx, []hostDef{
		{uniformA, iqnUniformA, 0, []int{0, 1}},
		{uniformB, iqnUniformB, 1, []int{1, 0}},
		{localA, iqnLocalA, 0, []int{0}},
		{localB, iqnLocalB, 1, []int{1}},
	})
}

// connect makes an API client per array of s.info.
func (s *scenSuite) connect() error {
	s.clients = nil
	for _, ai := range s.info.Arrays {
		c, err := api.NewClient(ai.API, ai.Token, ai.CA)
		if err != nil {
			return err
		}
		s.clients = append(s.clients, c)
	}
	return nil
}

// hostDef is a host to make: its name and initiator, its site and the
// arrays of its paths, in its order.
type hostDef struct {
	name, iqn string
	site      int
	arrays    []int
}

// addHosts makes the hosts, each with its own region of the volume, in
// order.
func (s *scenSuite) addHosts(ctx context.Context, defs []hostDef) error {
	arrays, err := s.clients[0].Arrays(ctx)
	if err != nil {
		return err
	}
	tpgs := make([]uint16, len(s.info.Arrays))
	for _, a := range arrays {
		for i, ai := range s.info.Arrays {
			if ai.Name == a.Name {
				tpgs[i] = a.TPG
			}
		}
	}
	for _, d := range defs {
		k := uint64(len(s.hosts))
		h, err := newHost(s.info, d.name, d.iqn, d.site, d.arrays, tpgs, k*regionUnits*unitBlocks, regionUnits)
		if err != nil {
			return err
		}
		s.hosts = append(s.hosts, h)
	}
	return nil
}

// sequencer says which array is pod1's sequencer, at which epoch, as
// array-a (else array-b) reports it.
func (s *scenSuite) sequencer() string {
	for i, c := range s.clients {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		p, err := c.Pod(ctx, lab.PodName)
		cancel()
		if err == nil {
			return fmt.Sprintf("%s the sequencer at epoch %d (as %s reports)", p.Sequencer, p.Epoch, s.info.Arrays[i].Name)
		}
	}
	return "the sequencer unknown"
}

// down stops the hosts and the lab.
func (s *scenSuite) down() {
	for _, h := range s.hosts {
		h.stopWriter()
		h.close()
	}
	s.hosts = nil
	if s.l != nil {
		s.l.Stop()
		s.l = nil
	}
}

// cable cuts (or mends) the host's own cables to the arrays named, at
// once.
func (h *mpHost) cable(cut bool, arrays ...int) {
	var cs []netproxy.Change
	for _, p := range h.paths {
		if !slices.Contains(arrays, p.array) {
			continue
		}
		set := func(st *netproxy.Settings) { st.Heal() }
		if cut {
			set = func(st *netproxy.Settings) { st.Partitioned = true }
		}
		cs = append(cs, netproxy.Change{Proxy: p.nic, Set: set})
	}
	netproxy.Apply(cs...)
}

// arrayView is what array i reports of pod1: its own status (with the
// pre-election mark) and how it sees the other array.
type arrayView struct {
	self, peer string
}

// views asks both arrays about pod1 (an array whose process is not
// running is down; one that does not answer says why).
func (s *scenSuite) views() [2]arrayView {
	var out [2]arrayView
	for i, ai := range s.info.Arrays {
		if !s.running(i) {
			out[i] = arrayView{self: stDown, peer: "-"}
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		p, err := s.clients[i].Pod(ctx, lab.PodName)
		cancel()
		if err != nil {
			out[i] = arrayView{self: "no answer (" + err.Error() + ")", peer: "-"}
			continue
		}
		out[i] = arrayView{self: "not listed", peer: "not listed"}
		for _, pa := range p.Arrays {
			v := pa.Status
			if pa.PreElected {
				v += preElected
			}
			if pa.Name == ai.Name {
				out[i].self = v
			} else {
				out[i].peer = v
			}
		}
	}
	return out
}

// matches reports whether an array's own status is what w asks: the
// pre-election mark is compared only where w has it.
func matches(w, got string) bool {
	if strings.HasSuffix(w, preElected) {
		return got == w
	}
	return strings.TrimSuffix(got, preElected) == w
}

// pathsNow is every host's path states.
func (s *scenSuite) pathsNow() map[string]string {
	m := map[string]string{}
	for _, h := range s.hosts {
		m[h.name] = h.pathStates()
	}
	return m
}

// phaseResult is one phase as expected and as observed.
type phaseResult struct {
	what     string
	want     want
	got      [2]arrayView
	gotPaths map[string]string
	settled  time.Duration
	start    time.Time
}

// await waits until the arrays report w.arrays and the hosts see
// w.paths, each for a second on end (a minute for the arrays, then half
// a minute for the paths), and returns what it saw last; settled is when
// the arrays' states began to hold.
func (s *scenSuite) await(w want, start time.Time) phaseResult {
	r := phaseResult{want: w, start: start}
	since := holds(time.Minute, func() bool {
		r.got = s.views()
		return matches(w.arrays[0], r.got[0].self) && matches(w.arrays[1], r.got[1].self)
	})
	r.settled = time.Since(start)
	if !since.IsZero() {
		r.settled = since.Sub(start)
	}
	holds(30*time.Second, func() bool {
		r.gotPaths = s.pathsNow()
		return maps.Equal(r.gotPaths, w.paths)
	})
	return r
}

// holds polls ok until it has been true for stableFor on end, or for
// timeout; it returns when ok began to hold (zero if it did not).
func holds(timeout time.Duration, ok func() bool) time.Time {
	var since time.Time
	deadline := time.Now().Add(timeout)
	for {
		now := time.Now()
		if !ok() {
			since = time.Time{}
		} else if since.IsZero() {
			since = now
		}
		if !since.IsZero() && now.Sub(since) >= stableFor {
			return since
		}
		if now.After(deadline) {
			return time.Time{}
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// stableFor is how long a state must hold to count as reached (a
// passing state, such as a pod offline for a moment on its way to
// paused, does not).
const stableFor = time.Second

// healthy waits until the lab is as every scenario starts: pod1 in
// sync, both arrays seeing the mediator online and neither pre-elected,
// the link's round trip 0, every host seeing its paths as in sync.
func (s *scenSuite) healthy() error {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if err := s.l.SetRTT(0); err != nil {
		return err
	}
	if err := s.l.WaitInSync(ctx, 2*time.Minute); err != nil {
		return err
	}
	deadline := time.Now().Add(time.Minute)
	for {
		var last string
		ok := true
		for i := range s.info.Arrays {
			info, err := s.clients[i].Array(ctx)
			if err != nil || info.Mediator == nil || info.Mediator.Status != "online" {
				ok, last = false, fmt.Sprintf("%s sees the mediator %+v (%v)", s.info.Arrays[i].Name, info.Mediator, err)
			}
		}
		v := s.views()
		if v[0].self != stOnline || v[1].self != stOnline {
			ok, last = false, fmt.Sprintf("pod1: %+v", v)
		}
		if p := s.pathsNow(); !maps.Equal(p, pathsInSync) {
			ok, last = false, fmt.Sprintf("paths %v", p)
		}
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the lab is not back to its start: %s", last)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// scenResult is one scenario as expected and as observed.
type scenResult struct {
	name, seeds, cite string
	// start is when the fault began; before says which array was the
	// sequencer then, at which epoch.
	start      time.Time
	before     string
	phases     []phaseResult
	failed     string
	wantErrors map[string]bool
	runs       map[string]hostRun
	repair     string
	recovery   string
	data       string
	note       string
	problems   []string
}

func (r *scenResult) problem(format string, args ...any) {
	r.problems = append(r.problems, fmt.Sprintf(format, args...))
}

// run runs one scenario on the suite's lab.
func (s *scenSuite) run(sc scenario) *scenResult {
	r := &scenResult{name: sc.name, seeds: sc.seeds, cite: sc.cite, failed: sc.failed, wantErrors: sc.errors, repair: sc.repair,
		runs: map[string]hostRun{}, before: s.sequencer()}
	for _, h := range s.hosts {
		h.startWriter()
	}
	time.Sleep(time.Second)
	var starts []time.Time
	for _, ph := range sc.phases {
		start := time.Now()
		starts = append(starts, start)
		if r.start.IsZero() {
			r.start = start
		}
		if err := ph.do(s); err != nil {
			r.problem("%s: %v", ph.what, err)
			break
		}
		pr := s.await(ph.want, start)
		pr.what = ph.what
		if ph.carriesOn != "" {
			h := s.host(ph.carriesOn)
			if !h.ackedSince(start, time.Minute) {
				r.problem("%s: %s acknowledged no write sent after it within a minute", ph.what, h.name)
			}
		}
		r.phases = append(r.phases, pr)
		if !sc.quick {
			time.Sleep(2 * time.Second) // the hosts go on writing under the fault
		}
	}
	fixed := time.Now()
	if sc.fix != nil {
		if err := sc.fix(s); err != nil {
			r.problem("%s: %v", sc.repair, err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if err := s.l.WaitInSync(ctx, 2*time.Minute); err != nil {
		r.problem("after the repair: %v", err)
		r.recovery = "not back in sync within 2 min"
	} else if sc.fix != nil {
		r.recovery = fmt.Sprintf("in sync again %s after the repair began", ms(time.Since(fixed)))
	} else {
		r.recovery = "in sync again by itself (above)"
	}
	time.Sleep(time.Second)
	for _, h := range s.hosts {
		if !h.dead.Load() {
			h.stopWriter()
		}
		r.runs[h.name] = h.run()
		if h.stuck != "" {
			r.problem("%s: %s", h.name, h.stuck)
		}
	}
	if sc.note != nil {
		r.note = sc.note(r.runs, starts)
	}
	r.data = s.checkData(r)
	r.judge()
	return r
}

// checkData reads every host's region through both arrays' own portals
// and compares the whole volume's copies; it returns the observation.
func (s *scenSuite) checkData(r *scenResult) string {
	writes := 0
	for _, h := range s.hosts {
		writes += r.runs[h.name].writes
	}
	if err := s.verifyData(0, 1); err != nil {
		r.problem("data: %v", err)
		return "LOST or not checked: " + err.Error()
	}
	return fmt.Sprintf("none lost: %d writes acknowledged, each read back through array-a and array-b; the copies are identical", writes)
}

// verifyData reads every host's region through the own portal of each
// array named (every acknowledged write must be there) and, with both,
// compares their copies whole.
func (s *scenSuite) verifyData(arrays ...int) error {
	var conns []*initiator.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for _, i := range arrays {
		ai := s.info.Arrays[i]
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		c, err := initiator.Dial(ctx, ai.Portal, initiator.Options{InitiatorName: iqnVerifier, TargetName: ai.Target, Timeout: 20 * time.Second})
		cancel()
		if err != nil {
			return fmt.Errorf("log in to %s: %v", ai.Name, err)
		}
		conns = append(conns, c)
		for k := 0; k < 4 && c.TestUnitReady(0) != nil; k++ {
		}
		for _, h := range s.hosts {
			if err := h.verify(c, ai.Name); err != nil {
				return err
			}
		}
	}
	for _, h := range s.hosts {
		if err := h.settle(conns[0]); err != nil {
			return err
		}
	}
	if len(conns) < 2 {
		return nil
	}
	same, err := sameCopies(conns[0], conns[1])
	if err != nil {
		return fmt.Errorf("compare the copies: %v", err)
	}
	if !same {
		return fmt.Errorf("every acknowledged write reads back, but the copies of %s and %s differ",
			s.info.Arrays[arrays[0]].Name, s.info.Arrays[arrays[1]].Name)
	}
	return nil
}

// sameCopies reads the whole volume through two sessions, a MiB at a
// time, and compares.
func sameCopies(a, b *initiator.Conn) (bool, error) {
	const piece = 2048
	blocks, _, err := a.ReadCapacity(0)
	if err != nil {
		return false, err
	}
	for lba := uint64(0); lba < blocks; lba += piece {
		n := uint32(min(piece, blocks-lba))
		da, err := a.Read(0, lba, n)
		if err != nil {
			return false, err
		}
		db, err := b.Read(0, lba, n)
		if err != nil {
			return false, err
		}
		if string(da) != string(db) {
			return false, nil
		}
	}
	return true, nil
}

// judge compares what was observed with what was expected.
func (r *scenResult) judge() {
	for k, ph := range r.phases {
		if ph.want.errors != nil {
			for _, h := range hostNames {
				if got, w := r.phaseErrors(k, h) > 0, ph.want.errors[h]; got != w && h != r.failed {
					r.problem("%s: %s %s", ph.what, h, yesNo(got, "saw an I/O error, want none", "saw no I/O error, want one"))
				}
			}
		}
		for i, w := range ph.want.arrays {
			if !matches(w, ph.got[i].self) {
				r.problem("%s: %s reports itself %q, want %q", ph.what, arrayName(i), ph.got[i].self, w)
			}
		}
		for _, h := range hostNames {
			if ph.gotPaths[h] != ph.want.paths[h] {
				r.problem("%s: %s sees its paths %q, want %q", ph.what, h, ph.gotPaths[h], ph.want.paths[h])
			}
		}
	}
	for _, h := range hostNames {
		if h == r.failed {
			continue
		}
		run := r.runs[h]
		if got, w := run.errors > 0, r.wantErrors[h]; got != w {
			if got {
				r.problem("%s saw an I/O error, want none: %s", h, run.first)
			} else {
				r.problem("%s saw no I/O error, want one", h)
			}
		}
		if run.writes == 0 {
			r.problem("%s acknowledged no write: its writer did not run", h)
		}
	}
}

// phaseErrors counts host h's outages that began during phase k (until
// the next phase, or the end of the scenario for the last).
func (r *scenResult) phaseErrors(k int, h string) int {
	var to time.Time
	if k+1 < len(r.phases) {
		to = r.phases[k+1].start
	}
	return r.runs[h].errorsBetween(r.phases[k].start, to)
}

func arrayName(i int) string { return "array-" + string(rune('a'+i)) }

// TestFailureScenarios runs every failure scenario of the design on one
// lab (a new one if a scenario leaves it broken) and, with
// METRO_SCENARIO_DOC set, writes the table of expected and observed.
func TestFailureScenarios(t *testing.T) {
	s := &scenSuite{t: t}
	if err := s.up(); err != nil {
		s.down()
		t.Fatal(err)
	}
	t.Cleanup(func() { s.down() })
	var results []*scenResult
	t.Cleanup(func() { writeScenarioDoc(t, results, nil) })
	for _, sc := range scenarios() {
		t.Run(strings.ReplaceAll(sc.name, " ", "_"), func(t *testing.T) {
			if err := s.healthy(); err != nil {
				t.Logf("before %s: %v; starting a new lab", sc.name, err)
				s.logTails(t)
				s.down()
				if err := s.up(); err != nil {
					t.Fatal(err)
				}
				if err := s.healthy(); err != nil {
					t.Fatalf("a new lab: %v", err)
				}
			}
			r := s.run(sc)
			results = append(results, r)
			logResult(t, r)
			for _, p := range r.problems {
				t.Error(p)
			}
			if t.Failed() {
				s.logTails(t)
			}
		})
	}
}

// logTails logs the tail of each array's log.
func (s *scenSuite) logTails(t *testing.T) {
	for _, a := range s.info.Arrays {
		log := logSince(t, a.Log, max(0, logSize(t, a.Log)-4000))
		t.Logf("%s log (tail):\n%s", a.Name, log)
	}
}

// logResult logs a scenario's observations.
func logResult(t *testing.T, r *scenResult) {
	for _, ph := range r.phases {
		t.Logf("%s: array-a %s (sees b %s), array-b %s (sees a %s) after %s; paths %v", ph.what,
			ph.got[0].self, ph.got[0].peer, ph.got[1].self, ph.got[1].peer, ms(ph.settled), ph.gotPaths)
	}
	for _, h := range hostNames {
		run := r.runs[h]
		t.Logf("%s: %d writes, %d outages %s, longest write %s", h, run.writes, run.errors, run.first, ms(run.longest))
	}
	if r.note != "" {
		t.Log(r.note)
	}
	t.Logf("recovery: %s; data: %s", r.recovery, r.data)
}
