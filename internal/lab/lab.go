// Package lab runs metro on one machine: arrays as separate `metro array
// run` processes on loopback, configured with a pod, a volume and a host,
// and described in lab.json for initiators and tests. `metro lab up` is the
// demo; the end-to-end tests drive the same code, so the demo and the tests
// run the same cluster.
//
// A pair's link runs through a proxy (internal/netproxy), and so does each
// array's path to the lab's mediator, a `metro mediator run` process of
// its own. Each array is at a site of its own, and hosts of each site
// reach each array through a route of the proxy too (sites.go). While a
// lab runs, its fault controls change that world: cut and heal the link
// (both ways or one way), cut an array's path to the mediator, cut host
// paths, partition the sites, lose a whole site, kill and start arrays
// and the mediator, slow the link. They
// are methods of Lab for tests in the same process, and requests on the
// lab's control socket (lab.sock in its directory) for `metro lab <verb>`
// from another one (see control.go).
package lab

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/metro-storage/metro/internal/api"
	"github.com/metro-storage/metro/internal/fileperm"
	"github.com/metro-storage/metro/internal/netproxy"
)

// DefaultInitiator is the initiator name the lab's host gets when none is
// given.
const DefaultInitiator = "iqn.2026-11.io.metro:lab-initiator"

// Options describe a lab.
type Options struct {
	// Dir holds every array's data, config and log, and lab.json. The
	// lab makes it 0700 when it creates it, and everything it writes in
	// it is private to the user (directories 0700, files 0600): lab.json
	// and the arrays' data directories hold API tokens.
	Dir string
	// Binary is the metro executable to run arrays with.
	Binary string
	// Arrays is how many arrays to start: 2 (the default) makes a
	// stretched pair with a delay proxy on its link, 1 a single array.
	Arrays     int
	Initiators []string
	// Size of the lab volume in bytes.
	Size uint64
	// Capacity of each array in bytes (0: unlimited).
	Capacity uint64
	// EradicationWindow for the arrays (0: the default 24h).
	EradicationWindow time.Duration
	// LinkRTT and LinkBandwidth (bytes per second, 0: unlimited) set the
	// link proxy between the arrays.
	LinkRTT       time.Duration
	LinkBandwidth int64
	// LinkTimeout is the arrays' dead-peer timeout (0: the default).
	LinkTimeout time.Duration
	// Unstretched pairs two arrays but leaves the pod on the first only
	// (tests stretch it themselves).
	Unstretched bool
	// BaselineRate limits the arrays' baseline copies (bytes per second,
	// 0: unlimited).
	BaselineRate int64
	// NoMediator leaves the mediator out of a pair (a single array never
	// has one).
	NoMediator bool
	// MediatorHeartbeat is how often the arrays heartbeat the mediator
	// (0: the array's default, 5s); tests shorten it to see a mediator
	// loss sooner.
	MediatorHeartbeat time.Duration
	Logger            *slog.Logger
}

// ArrayInfo is one array in lab.json.
type ArrayInfo struct {
	Name string `json:"name"`
	API  string `json:"api"`
	// Token is the array's API token, which the array generates into
	// TokenFile at its first start (METRO_TOKEN_FILE for the CLI).
	Token     string `json:"token"`
	TokenFile string `json:"token_file"`
	CA        string `json:"ca,omitempty"`
	Portal    string `json:"portal"`
	Target    string `json:"target"`
	Config    string `json:"config"`
	DataDir   string `json:"data_dir"`
	Log       string `json:"log"`
	PID       int    `json:"pid"`

	// Portal (above) is the array's own iSCSI portal, reached directly:
	// no fault control of the lab cuts it. HostPortals are the array's
	// portal as the hosts of each site reach it (one per site, in the
	// order of Info.Sites): routes of the lab's proxy that metro lab
	// hostpath, partition --sites and site down cut.
	HostPortals []HostPortal `json:"host_portals"`

	// LinkListen is where the array's replication link listens, and
	// LinkAdvertise what it tells its peer to dial (the proxy).
	LinkListen    string `json:"link_listen,omitempty"`
	LinkAdvertise string `json:"link_advertise,omitempty"`
	// MediatorURL is the array's own route to the mediator, through the
	// lab's proxy, so that it can be cut from the mediator alone.
	MediatorURL string `json:"mediator_url,omitempty"`
}

// Info is lab.json.
type Info struct {
	Arrays     []ArrayInfo `json:"arrays"`
	Pod        string      `json:"pod"`
	Volume     string      `json:"volume"`
	Host       string      `json:"host"`
	LUN        uint64      `json:"lun"`
	Initiators []string    `json:"initiators"`
	// URLs has one libiscsi URL per array for the volume, through the
	// arrays' own portals (never cut); each HostPortal has its own.
	URLs []string `json:"urls"`
	// Sites are the lab's sites, one per array: site A is array-a and the
	// hosts beside it, whose paths to each array are the arrays'
	// HostPortals of site A.
	Sites []SiteInfo `json:"sites"`
	// LinkProxy is the control address of the proxy on the link between
	// the arrays (http://HOST:PORT, API at /link).
	LinkProxy string `json:"link_proxy,omitempty"`
	// Mediator is the lab's mediator (nil without one), and MediatorPID
	// its process while it runs.
	Mediator    *MediatorInfo `json:"mediator,omitempty"`
	MediatorPID int           `json:"mediator_pid,omitempty"`
	// Control is the lab's control socket, where `metro lab <verb>`
	// asks the running lab for a change.
	Control string `json:"control"`
}

// MediatorInfo is the mediator in lab.json.
type MediatorInfo struct {
	// URL is where the mediator listens (the arrays reach it through
	// their own routes, ArrayInfo.MediatorURL).
	URL string `json:"url"`
	// CA is the mediator's certificate, which clients verify it with.
	CA string `json:"ca"`
	// AuthKeyFile holds the key the arrays authenticate with.
	AuthKeyFile string `json:"authkey_file"`
	DataDir     string `json:"data_dir"`
	Log         string `json:"log"`
}

// Lab is a running lab.
type Lab struct {
	opts Options
	// Info is lab.json. The fault controls change its PIDs: read them
	// between controls, not during one.
	Info Info

	// ctl serializes the fault controls, called in this process or
	// asked on the control socket: one change at a time.
	ctl sync.Mutex

	// mu guards the processes and Info's PIDs.
	mu struct {
		sync.Mutex
		// procs are the arrays' processes by index (nil before the
		// first start); mediator is the mediator's (nil without one).
		procs    []*proc
		mediator *proc
	}
	// exits reports processes that ended without being told to.
	exits chan Exit

	proxy     *netproxy.Proxy
	proxySrv  *http.Server
	proxyDone chan struct{}
	// proxyLn holds each array's advertised link address (a pair only)
	// from the moment it is written in the config until the proxy serves
	// one of them, so that nothing else takes the port meanwhile.
	proxyLn []net.Listener
	// linkTarget is the index of the array the link proxy forwards to
	// (the one that accepts the link); the other array dials it.
	linkTarget int

	// prev is the lab.json of the lab that ran in the directory before
	// (nil if none), whose ports a restarted lab takes again.
	prev *Info

	// med is the mediator's setup (nil without one).
	med *labMediator
	// hostPaths are the routes from each site's hosts to each array's
	// portal, by site then array (sites.go).
	hostPaths [][]*netproxy.Proxy

	// ctlSrv serves the control socket; lock holds lab.lock, which keeps
	// a second lab out of the directory.
	ctlSrv *controlServer
	lock   *os.File
}

// proc is one process of the lab: an array or the mediator.
type proc struct {
	name string
	cmd  *exec.Cmd
	// done is closed when the process has ended, err then says how.
	done chan struct{}
	err  error
	// log is its log file, of which this run wrote from offset logFrom.
	log     string
	logFrom int64
	// up is set once the process answered after its start; told before
	// the lab signals it. An end is reported as unexpected (Lab.Exits)
	// only when up and not told.
	up, told atomic.Bool
}

// logOfRun reads what this run of p wrote to its log.
func (p *proc) logOfRun() []byte {
	log, _ := os.ReadFile(p.log)
	if int64(len(log)) >= p.logFrom {
		log = log[p.logFrom:]
	}
	return log
}

// running reports whether p has not ended.
func (p *proc) running() bool {
	if p == nil {
		return false
	}
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// kill sends SIGKILL to p and waits for it to end.
func (p *proc) kill() {
	if p == nil {
		return
	}
	p.told.Store(true)
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

// Exit is a process of the lab that ended on its own (a crash, a failed
// disk), not by a fault control or Stop.
type Exit struct {
	Name string
	Err  error
	// Log is the process's log file.
	Log string
}

// Names of the lab's objects.
const (
	PodName  = "pod1"
	VolName  = "pod1::vol1"
	HostName = "lab-host"
)

// Up starts the arrays (and, for a pair, the mediator), configures them,
// opens the control socket and writes lab.json. On error everything
// started is stopped again. A directory holds one running lab at a time.
func Up(ctx context.Context, opts Options) (l *Lab, err error) {
	if opts.Arrays == 0 {
		opts.Arrays = 2
	}
	if opts.Arrays != 1 && opts.Arrays != 2 {
		return nil, fmt.Errorf("--arrays %d: a lab runs one array or a stretched pair (2)", opts.Arrays)
	}
	if len(opts.Initiators) == 0 {
		opts.Initiators = []string{DefaultInitiator}
	}
	if opts.Size == 0 {
		opts.Size = 1 << 30
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Binary == "" {
		if opts.Binary, err = os.Executable(); err != nil {
			return nil, err
		}
	}
	if err := os.MkdirAll(opts.Dir, fileperm.Dir); err != nil {
		return nil, err
	}
	lab := &Lab{opts: opts, exits: make(chan Exit, 16)}
	l = lab
	if l.lock, err = lockDir(opts.Dir); err != nil {
		return nil, err
	}
	l.prev = readInfo(opts.Dir)
	_ = os.Remove(filepath.Join(opts.Dir, "lab.json"))
	l.mu.procs = make([]*proc, opts.Arrays)
	defer func() {
		if err != nil {
			lab.Stop()
		}
	}()
	if l.ctlSrv, err = l.listenControl(); err != nil {
		return nil, err
	}
	l.Info.Control = l.ctlSrv.path
	if opts.Arrays == 2 && !opts.NoMediator {
		if err := l.startMediatorFirst(ctx); err != nil {
			return nil, err
		}
	}
	l.Info.Arrays = make([]ArrayInfo, opts.Arrays)
	l.proxyLn = make([]net.Listener, opts.Arrays)
	for i := 0; i < opts.Arrays; i++ {
		err := l.onFreePorts(arrayName(i), func(attempt int) error {
			ai, err := l.writeConfig(i, attempt == 1)
			if err != nil {
				return err
			}
			l.Info.Arrays[i] = ai
			return l.start(ctx, i)
		})
		if err != nil {
			return nil, err
		}
	}
	if opts.Arrays == 1 {
		l.releaseProxyLn() // no link
	}
	if err := l.startHostPaths(); err != nil {
		return nil, err
	}
	if err := l.configure(ctx); err != nil {
		return nil, err
	}
	if opts.Arrays == 2 {
		if err := l.stretch(ctx); err != nil {
			return nil, err
		}
	}
	if err := l.writeInfo(); err != nil {
		return nil, err
	}
	l.ctlSrv.ready.Store(true)
	return l, nil
}

// onFreePorts runs try, which picks free ports and starts a process on
// them, up to three times. The ports are picked free but bound by the
// process a moment later, so another process (another lab, an outgoing
// connection) can take one first: then the process stops at once
// (errPortTaken), and is started again on fresh ports.
func (l *Lab) onFreePorts(name string, try func(attempt int) error) error {
	for attempt := 1; ; attempt++ {
		err := try(attempt)
		if err == nil || !errors.Is(err, errPortTaken) || attempt == 3 {
			return err
		}
		l.opts.Logger.Warn("a port was taken before the process bound it; starting it on other ports", "process", name, "err", err)
	}
}

// portAgain returns the port of addr (127.0.0.1:port) if it is free now,
// else a free one.
func portAgain(addr string) (int, error) {
	if addr != "" {
		if ln, err := net.Listen("tcp", addr); err == nil {
			port := ln.Addr().(*net.TCPAddr).Port
			ln.Close()
			return port, nil
		}
	}
	return freePort()
}

// freePort picks a TCP port that is free on the loopback now (a variable:
// tests hand out a taken one).
var freePort = func() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

func arrayName(i int) string { return "array-" + string(rune('a'+i)) }

// writeConfig writes array i's config, on the ports of the lab that ran
// in the directory before if reuse is set and they are free, else on
// free ones.
func (l *Lab) writeConfig(i int, reuse bool) (ArrayInfo, error) {
	name := arrayName(i)
	dir := filepath.Join(l.opts.Dir, name)
	if err := mkdirPrivate(dir); err != nil {
		return ArrayInfo{}, err
	}
	// A lab restarted in its directory takes its arrays' ports again
	// where it can (first attempt only): the arrays remember each other's
	// API and link addresses from when they paired.
	var prev ArrayInfo
	if reuse && l.prev != nil && i < len(l.prev.Arrays) {
		prev = l.prev.Arrays[i]
	}
	apiPort, err := portAgain(strings.TrimPrefix(prev.API, "https://"))
	if err != nil {
		return ArrayInfo{}, err
	}
	iscsiPort, err := portAgain(prev.Portal)
	if err != nil {
		return ArrayInfo{}, err
	}
	linkPort, err := portAgain(prev.LinkListen)
	if err != nil {
		return ArrayInfo{}, err
	}
	// The advertised address is the proxy's (for a pair), which this
	// process binds now and keeps.
	if l.proxyLn[i] == nil {
		ln, err := listenAgain(prev.LinkAdvertise)
		if err != nil {
			return ArrayInfo{}, err
		}
		l.proxyLn[i] = ln
	}
	proxyPort := l.proxyLn[i].Addr().(*net.TCPAddr).Port
	ai := ArrayInfo{
		Name:      name,
		API:       fmt.Sprintf("https://127.0.0.1:%d", apiPort),
		TokenFile: filepath.Join(dir, "data", "api-token"),
		CA:        filepath.Join(dir, "data", "api-cert.pem"),
		Portal:    fmt.Sprintf("127.0.0.1:%d", iscsiPort),
		Target:    "iqn.2026-11.io.metro:" + name,
		Config:    filepath.Join(dir, "config.yaml"),
		DataDir:   filepath.Join(dir, "data"),
		Log:       filepath.Join(dir, "array.log"),

		LinkListen:    fmt.Sprintf("127.0.0.1:%d", linkPort),
		LinkAdvertise: fmt.Sprintf("127.0.0.1:%d", proxyPort),
	}
	// No token: the array generates one into its data directory (0600),
	// as for an administrator, so the configuration holds no secret.
	cfg := fmt.Sprintf(`# written by metro lab up
name: %s
data_dir: %s
api:
  listen: 127.0.0.1:%d
iscsi:
  listen: [%q]
  target: %s
replication:
  listen: %s
  advertise: %s
`, name, ai.DataDir, apiPort, ai.Portal, ai.Target, ai.LinkListen, ai.LinkAdvertise)
	if l.opts.LinkTimeout > 0 {
		cfg += "  timeout: " + l.opts.LinkTimeout.String() + "\n"
	}
	if l.opts.BaselineRate > 0 {
		cfg += "  baseline_rate: " + strconv.FormatInt(l.opts.BaselineRate, 10) + "\n"
	}
	if l.opts.Capacity > 0 {
		cfg += "capacity: " + strconv.FormatUint(l.opts.Capacity, 10) + "\n"
	}
	if l.opts.EradicationWindow > 0 {
		cfg += "eradication_window: " + l.opts.EradicationWindow.String() + "\n"
	}
	if l.med != nil {
		ai.MediatorURL = "https://" + l.med.routes[i].Addr()
		cfg += l.mediatorConfig(i)
	}
	return ai, writePrivate(ai.Config, []byte(cfg))
}

// mkdirPrivate makes a directory of the lab 0700, also when an older lab
// left it open to others.
func mkdirPrivate(dir string) error {
	if err := os.MkdirAll(dir, fileperm.Dir); err != nil {
		return err
	}
	return os.Chmod(dir, fileperm.Dir)
}

// writePrivate writes a file of the lab atomically, 0600 (a fresh
// temporary file renamed over the old one, whatever its mode).
func writePrivate(path string, data []byte) error {
	f, err := os.CreateTemp(filepath.Dir(path), filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		os.Remove(f.Name())
		return err
	}
	if err := f.Close(); err != nil {
		os.Remove(f.Name())
		return err
	}
	if err := os.Rename(f.Name(), path); err != nil {
		os.Remove(f.Name())
		return err
	}
	return nil
}

// Start starts array i again, with the same configuration and data, and
// waits until its API answers. It does nothing if the array runs.
func (l *Lab) Start(ctx context.Context, i int) error {
	if err := l.checkArray(i); err != nil {
		return err
	}
	l.ctl.Lock()
	defer l.ctl.Unlock()
	if l.arrayRunning(i) {
		return nil
	}
	if err := l.start(ctx, i); err != nil {
		return err
	}
	return l.writeInfo()
}

// arrayRunning reports whether array i's process runs.
func (l *Lab) arrayRunning(i int) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.mu.procs[i].running()
}

// start starts array i's process and waits until its API answers; if it
// does not, the process is killed.
func (l *Lab) start(ctx context.Context, i int) error {
	ai := l.Info.Arrays[i]
	p, err := l.spawn(ai.Name, ai.Log, "array", "run", "--config", ai.Config)
	if err != nil {
		return err
	}
	l.mu.Lock()
	l.mu.procs[i] = p
	l.Info.Arrays[i].PID = p.cmd.Process.Pid
	l.mu.Unlock()
	err = l.waitUp(ctx, p, ai.API, func() bool {
		// The array writes its token before its certificate.
		if _, err := os.Stat(ai.CA); err != nil || l.readToken(i) != nil {
			return false
		}
		c, err := l.Client(i)
		if err != nil {
			return false
		}
		_, err = c.Array(ctx)
		return err == nil
	})
	if err != nil {
		l.stopped(i, p)
	}
	return err
}

// stopped kills array i's process p and forgets its PID.
func (l *Lab) stopped(i int, p *proc) {
	p.kill()
	l.mu.Lock()
	if l.mu.procs[i] == p {
		l.Info.Arrays[i].PID = 0
	}
	l.mu.Unlock()
}

// spawn starts a process of the lab (metro with args), its output
// appended to logPath (0600).
func (l *Lab) spawn(name, logPath string, args ...string) (*proc, error) {
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, fileperm.File)
	if err != nil {
		return nil, err
	}
	fi, err := logf.Stat()
	if err == nil {
		err = logf.Chmod(fileperm.File)
	}
	if err != nil {
		logf.Close()
		return nil, err
	}
	cmd := exec.Command(l.opts.Binary, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, done: make(chan struct{}), log: logPath, logFrom: fi.Size()}
	go func() {
		p.err = cmd.Wait()
		logf.Close()
		if p.up.Load() && !p.told.Load() {
			select {
			case l.exits <- Exit{Name: name, Err: p.err, Log: logPath}:
			default:
			}
		}
		close(p.done)
	}()
	return p, nil
}

// startTimeout bounds how long a process of the lab may take to answer
// after it started.
const startTimeout = 60 * time.Second

// errPortTaken marks a process that stopped during its start because an
// address of its configuration was in use.
var errPortTaken = errors.New("an address of the process is in use")

// waitUp polls ready until it reports true, then marks p up. It fails if
// p ends first (errPortTaken if its log of this run says an address was
// in use), or after startTimeout; addr names what it should answer on.
func (l *Lab) waitUp(ctx context.Context, p *proc, addr string, ready func() bool) error {
	deadline := time.Now().Add(startTimeout)
	for {
		select {
		case <-p.done:
			log := p.logOfRun()
			err := fmt.Errorf("%s exited during start (%v); its log:\n%s", p.name, p.err, tail(log, 2000))
			if bytes.Contains(log, []byte("address already in use")) {
				err = fmt.Errorf("%w: %w", errPortTaken, err)
			}
			return err
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		if ready() {
			p.up.Store(true)
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s did not answer on %s within %v; see %s", p.name, addr, startTimeout, p.log)
		}
	}
}

// readToken reads array i's API token from its token file, once.
func (l *Lab) readToken(i int) error {
	ai := &l.Info.Arrays[i]
	if ai.Token != "" {
		return nil
	}
	data, err := os.ReadFile(ai.TokenFile)
	if err != nil {
		return err
	}
	ai.Token = strings.TrimSpace(string(data))
	return nil
}

func tail(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

// Client returns an API client for array i.
func (l *Lab) Client(i int) (*api.Client, error) {
	ai := l.Info.Arrays[i]
	return api.NewClient(ai.API, ai.Token, ai.CA)
}

// configure creates the pod, volume and host and connects them (each step
// only when missing, so a restarted lab keeps its data). What exists is
// read first: a restarted pair's pod may be ordered by array-b for a
// while (array-b asked the mediator as the lab stopped), and array-a then
// refuses a change to it, even one that would find it done.
func (l *Lab) configure(ctx context.Context) error {
	c, err := l.Client(0)
	if err != nil {
		return err
	}
	exists := func(err error) bool {
		var se *api.StatusError
		return errors.As(err, &se) && se.Code == 409
	}
	if _, err := c.Pod(ctx, PodName); err != nil {
		if _, err := c.CreatePod(ctx, PodName); err != nil && !exists(err) {
			return fmt.Errorf("create pod: %w", err)
		}
	}
	if _, err := c.Volume(ctx, VolName); err != nil {
		if _, err := c.CreateVolume(ctx, VolName, l.opts.Size); err != nil && !exists(err) {
			return fmt.Errorf("create volume: %w", err)
		}
	}
	hosts, err := c.Hosts(ctx)
	if err != nil {
		return fmt.Errorf("list hosts: %w", err)
	}
	if !slices.ContainsFunc(hosts, func(h api.Host) bool { return h.Name == HostName }) {
		if _, err := c.CreateHost(ctx, api.HostCreate{Name: HostName, IQNs: l.opts.Initiators}); err != nil && !exists(err) {
			return fmt.Errorf("create host: %w", err)
		}
	}
	conns, err := c.Connections(ctx)
	if err != nil {
		return fmt.Errorf("list connections: %w", err)
	}
	lun := uint64(0)
	if i := slices.IndexFunc(conns, func(cn api.Connection) bool { return cn.Volume == VolName && cn.Host == HostName }); i >= 0 && conns[i].LUN != nil {
		lun = *conns[i].LUN
	} else if _, err := c.Connect(ctx, api.Connection{Volume: VolName, Host: HostName, LUN: &lun}); err != nil && !exists(err) {
		return fmt.Errorf("connect: %w", err)
	}
	l.Info.Pod, l.Info.Volume, l.Info.Host, l.Info.LUN = PodName, VolName, HostName, lun
	l.Info.Initiators = l.opts.Initiators
	l.Info.URLs = nil
	url := func(ai ArrayInfo, portal string) string {
		return fmt.Sprintf("iscsi://%s/%s/%d", portal, ai.Target, lun)
	}
	for i, ai := range l.Info.Arrays {
		l.Info.URLs = append(l.Info.URLs, url(ai, ai.Portal))
		for s, hp := range ai.HostPortals {
			l.Info.Arrays[i].HostPortals[s].URL = url(ai, hp.Portal)
		}
	}
	return nil
}

// readInfo reads the lab.json in dir, nil if there is none or it cannot
// be read.
func readInfo(dir string) *Info {
	data, err := os.ReadFile(filepath.Join(dir, "lab.json"))
	if err != nil {
		return nil
	}
	var info Info
	if json.Unmarshal(data, &info) != nil {
		return nil
	}
	return &info
}

// writeInfo writes lab.json atomically.
func (l *Lab) writeInfo() error {
	l.mu.Lock()
	data, err := json.MarshalIndent(l.Info, "", "  ")
	l.mu.Unlock()
	if err != nil {
		return err
	}
	return writePrivate(filepath.Join(l.opts.Dir, "lab.json"), append(data, '\n'))
}

// Kill kills array i (kill -9) and waits until it has died. It does
// nothing if the array is not running.
func (l *Lab) Kill(i int) error {
	if err := l.checkArray(i); err != nil {
		return err
	}
	l.ctl.Lock()
	defer l.ctl.Unlock()
	return l.kill(i)
}

func (l *Lab) kill(i int) error {
	l.mu.Lock()
	p := l.mu.procs[i]
	l.mu.Unlock()
	if !p.running() {
		return nil
	}
	l.stopped(i, p)
	return l.writeInfo()
}

// Restart kills array i (kill -9) and starts it again.
func (l *Lab) Restart(ctx context.Context, i int) error {
	if err := l.checkArray(i); err != nil {
		return err
	}
	l.ctl.Lock()
	defer l.ctl.Unlock()
	if err := l.kill(i); err != nil {
		return err
	}
	if err := l.start(ctx, i); err != nil {
		return err
	}
	return l.writeInfo()
}

// Stop closes the control socket, stops every process (SIGTERM, then
// SIGKILL after 10 s), waits for them and closes the proxies. It may be
// called again.
func (l *Lab) Stop() {
	l.closeControl()
	l.ctl.Lock()
	defer l.ctl.Unlock()
	defer l.unlockDir()
	defer l.stopProxies()
	defer l.releaseProxyLn()
	l.mu.Lock()
	procs := append([]*proc{l.mu.mediator}, l.mu.procs...)
	l.mu.Unlock()
	for _, p := range procs {
		if p.running() {
			p.told.Store(true)
			_ = p.cmd.Process.Signal(syscall.SIGTERM)
		}
	}
	for _, p := range procs {
		if p == nil {
			continue
		}
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
			p.kill()
		}
	}
}

// Exits reports each process of the lab that ends on its own, not by a
// fault control or Stop (reports beyond 16 unread are dropped).
func (l *Lab) Exits() <-chan Exit { return l.exits }
