// Package lab runs metro on one machine: arrays as separate `metro array
// run` processes on loopback, configured with a pod, a volume and a host,
// and described in lab.json for initiators and tests. `metro lab up` is the
// demo; the end-to-end tests drive the same code, so the demo and the tests
// run the same cluster.
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
	"strconv"
	"strings"
	"sync"
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
	Logger       *slog.Logger
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
	// LinkListen is where the array's replication link listens, and
	// LinkAdvertise what it tells its peer to dial (the proxy).
	LinkListen    string `json:"link_listen,omitempty"`
	LinkAdvertise string `json:"link_advertise,omitempty"`
}

// Info is lab.json.
type Info struct {
	Arrays     []ArrayInfo `json:"arrays"`
	Pod        string      `json:"pod"`
	Volume     string      `json:"volume"`
	Host       string      `json:"host"`
	LUN        uint64      `json:"lun"`
	Initiators []string    `json:"initiators"`
	// URLs has one libiscsi URL per array for the volume.
	URLs []string `json:"urls"`
	// LinkProxy is the control address of the proxy on the link between
	// the arrays (http://HOST:PORT, API at /link).
	LinkProxy string `json:"link_proxy,omitempty"`
}

// Lab is a running lab.
type Lab struct {
	opts Options
	Info Info

	mu struct {
		sync.Mutex
		procs []*proc
	}
	proxy     *netproxy.Proxy
	proxySrv  *http.Server
	proxyDone chan struct{}
	// proxyLn holds each array's advertised link address (a pair only)
	// from the moment it is written in the config until the proxy serves
	// one of them, so that nothing else takes the port meanwhile.
	proxyLn []net.Listener
}

// proc is one array process.
type proc struct {
	cmd  *exec.Cmd
	done chan struct{}
	err  error
}

// Names of the lab's objects.
const (
	PodName  = "pod1"
	VolName  = "pod1::vol1"
	HostName = "lab-host"
)

// Up starts the arrays, configures them and writes lab.json. On error
// everything started is stopped again.
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
	_ = os.Remove(filepath.Join(opts.Dir, "lab.json"))
	lab := &Lab{opts: opts}
	l = lab
	l.mu.procs = make([]*proc, opts.Arrays)
	defer func() {
		if err != nil {
			lab.Stop()
		}
	}()
	l.Info.Arrays = make([]ArrayInfo, opts.Arrays)
	l.proxyLn = make([]net.Listener, opts.Arrays)
	for i := 0; i < opts.Arrays; i++ {
		// The ports are picked free but bound by the array a moment
		// later, so another process (another lab, an outgoing
		// connection) can take one first: then the array stops at once,
		// and is started again on fresh ports.
		for attempt := 1; ; attempt++ {
			ai, err := l.writeConfig(i)
			if err != nil {
				return nil, err
			}
			l.Info.Arrays[i] = ai
			err = l.Start(ctx, i)
			if err == nil {
				break
			}
			if !errors.Is(err, errPortTaken) || attempt == 3 {
				return nil, err
			}
			l.opts.Logger.Warn("a port of the array was taken before it bound it; starting it on other ports", "array", ai.Name, "err", err)
		}
	}
	if opts.Arrays == 1 {
		l.releaseProxyLn() // no link
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
	return l, nil
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

// writeConfig writes array i's config (once; a restarted lab reuses it).
func (l *Lab) writeConfig(i int) (ArrayInfo, error) {
	name := arrayName(i)
	dir := filepath.Join(l.opts.Dir, name)
	if err := mkdirPrivate(dir); err != nil {
		return ArrayInfo{}, err
	}
	apiPort, err := freePort()
	if err != nil {
		return ArrayInfo{}, err
	}
	iscsiPort, err := freePort()
	if err != nil {
		return ArrayInfo{}, err
	}
	linkPort, err := freePort()
	if err != nil {
		return ArrayInfo{}, err
	}
	// The advertised address is the proxy's (for a pair), which this
	// process binds now and keeps.
	if l.proxyLn[i] == nil {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
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

// Start starts array i's process and waits until its API answers.
func (l *Lab) Start(ctx context.Context, i int) error {
	ai := l.Info.Arrays[i]
	logf, err := os.OpenFile(ai.Log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, fileperm.File)
	if err != nil {
		return err
	}
	if err := logf.Chmod(fileperm.File); err != nil {
		logf.Close()
		return err
	}
	cmd := exec.Command(l.opts.Binary, "array", "run", "--config", ai.Config)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start %s: %w", ai.Name, err)
	}
	p := &proc{cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		logf.Close()
		close(p.done)
	}()
	l.mu.Lock()
	l.mu.procs[i] = p
	l.Info.Arrays[i].PID = cmd.Process.Pid
	l.mu.Unlock()
	return l.waitReady(ctx, i, p)
}

// errPortTaken marks an array that stopped during its start because an
// address of its configuration was in use.
var errPortTaken = errors.New("an address of the array is in use")

// waitReady polls the array's API until it answers.
func (l *Lab) waitReady(ctx context.Context, i int, p *proc) error {
	ai := l.Info.Arrays[i]
	deadline := time.Now().Add(60 * time.Second)
	for {
		select {
		case <-p.done:
			log, _ := os.ReadFile(ai.Log)
			err := fmt.Errorf("%s exited during start (%v); its log:\n%s", ai.Name, p.err, tail(log, 2000))
			if bytes.Contains(log, []byte("address already in use")) {
				err = fmt.Errorf("%w: %w", errPortTaken, err)
			}
			return err
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		// The array writes its token before its certificate.
		if _, err := os.Stat(ai.CA); err == nil && l.readToken(i) == nil {
			c, err := l.Client(i)
			if err == nil {
				if _, err = c.Array(ctx); err == nil {
					return nil
				}
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s did not answer on %s within 60s; see %s", ai.Name, ai.API, ai.Log)
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
// only when missing, so a restarted lab keeps its data).
func (l *Lab) configure(ctx context.Context) error {
	c, err := l.Client(0)
	if err != nil {
		return err
	}
	exists := func(err error) bool {
		var se *api.StatusError
		return errors.As(err, &se) && se.Code == 409
	}
	if _, err := c.CreatePod(ctx, PodName); err != nil && !exists(err) {
		return fmt.Errorf("create pod: %w", err)
	}
	if _, err := c.CreateVolume(ctx, VolName, l.opts.Size); err != nil && !exists(err) {
		return fmt.Errorf("create volume: %w", err)
	}
	if _, err := c.CreateHost(ctx, api.HostCreate{Name: HostName, IQNs: l.opts.Initiators}); err != nil && !exists(err) {
		return fmt.Errorf("create host: %w", err)
	}
	lun := uint64(0)
	if _, err := c.Connect(ctx, api.Connection{Volume: VolName, Host: HostName, LUN: &lun}); err != nil && !exists(err) {
		return fmt.Errorf("connect: %w", err)
	}
	l.Info.Pod, l.Info.Volume, l.Info.Host, l.Info.LUN = PodName, VolName, HostName, lun
	l.Info.Initiators = l.opts.Initiators
	l.Info.URLs = nil
	for _, ai := range l.Info.Arrays {
		l.Info.URLs = append(l.Info.URLs, fmt.Sprintf("iscsi://%s/%s/%d", ai.Portal, ai.Target, lun))
	}
	return nil
}

// writeInfo writes lab.json atomically.
func (l *Lab) writeInfo() error {
	data, err := json.MarshalIndent(l.Info, "", "  ")
	if err != nil {
		return err
	}
	return writePrivate(filepath.Join(l.opts.Dir, "lab.json"), append(data, '\n'))
}

// Kill sends SIGKILL to array i and waits for it to die.
func (l *Lab) Kill(i int) error {
	l.mu.Lock()
	p := l.mu.procs[i]
	l.mu.Unlock()
	if p == nil {
		return nil
	}
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
	return nil
}

// Restart kills array i (kill -9) and starts it again.
func (l *Lab) Restart(ctx context.Context, i int) error {
	if err := l.Kill(i); err != nil {
		return err
	}
	if err := l.Start(ctx, i); err != nil {
		return err
	}
	return l.writeInfo()
}

// Stop stops every array (SIGTERM, then SIGKILL after 10 s) and waits.
func (l *Lab) Stop() {
	defer l.stopProxy()
	defer l.releaseProxyLn()
	l.mu.Lock()
	procs := append([]*proc(nil), l.mu.procs...)
	l.mu.Unlock()
	for _, p := range procs {
		if p != nil {
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
			_ = p.cmd.Process.Signal(syscall.SIGKILL)
			<-p.done
		}
	}
}

// Exited returns a channel closed when any array process exits.
func (l *Lab) Exited() <-chan int {
	ch := make(chan int, 1)
	l.mu.Lock()
	procs := append([]*proc(nil), l.mu.procs...)
	l.mu.Unlock()
	for i, p := range procs {
		go func() {
			<-p.done
			select {
			case ch <- i:
			default:
			}
		}()
	}
	return ch
}
