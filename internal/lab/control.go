package lab

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/metro-storage/metro/internal/fileperm"
)

// The control socket. `metro lab <verb> --dir D` asks the lab running in
// D for a change: the lab listens on D/lab.sock (0600, and it answers
// only its own user), one request per connection, a Request as one line
// of JSON answered by one Response line once the change is in effect.
// D/lab.lock, locked while the lab runs, keeps a second lab out of D.

// SocketName is the control socket's name in a lab's directory.
const SocketName = "lab.sock"

const lockName = "lab.lock"

// The verbs of the control protocol.
const (
	VerbStatus          = "status"
	VerbPartition       = "partition"
	VerbHeal            = "heal"
	VerbKill            = "kill"
	VerbStart           = "start"
	VerbIsolate         = "isolate"
	VerbRejoin          = "rejoin"
	VerbRTT             = "rtt"
	VerbMediatorStop    = "mediator-stop"
	VerbMediatorStart   = "mediator-start"
	VerbMediatorCut     = "mediator-cut"
	VerbMediatorRestore = "mediator-restore"
	VerbHostPathCut     = "hostpath-cut"
	VerbHostPathRestore = "hostpath-restore"
	VerbSiteDown        = "site-down"
	VerbSiteUp          = "site-up"
)

// Request asks a running lab for a change (or its status).
type Request struct {
	Verb string `json:"verb"`
	// Array names the array the verb acts on (kill, start, isolate,
	// rejoin, mediator-cut, mediator-restore); for partition, the array
	// whose traffic alone is cut (one way); for hostpath-cut and
	// hostpath-restore, the array whose host paths change.
	Array string `json:"array,omitempty"`
	// Site names the site the verb acts on (site-down, site-up); for
	// hostpath-cut and hostpath-restore, the site whose hosts' paths
	// change (with Array: only the path to that array).
	Site string `json:"site,omitempty"`
	// AndMediator makes partition and heal change both arrays' paths to
	// the mediator too, in the same instant as the link.
	AndMediator bool `json:"and_mediator,omitempty"`
	// Sites makes partition and heal change the host paths across sites
	// too (a data-center partition), in the same instant as the link.
	Sites bool `json:"sites,omitempty"`
	// RTT is rtt's round trip, a duration such as "5ms" ("0" clears it).
	RTT string `json:"rtt,omitempty"`
}

// Response is a lab's answer.
type Response struct {
	// Message says what the lab did, or that it was so already.
	Message string `json:"message,omitempty"`
	// Error says why it did nothing, and what to do.
	Error string `json:"error,omitempty"`
	// Status is the lab after the request (absent on a bad request).
	Status *Status `json:"status,omitempty"`
}

// Bounds of the protocol: the size of a request and of an answer, and how
// long the lab waits for a request and for its answer to be taken.
const (
	maxRequest      = 64 << 10
	maxResponse     = 1 << 20
	requestDeadline = 10 * time.Second
)

// controlServer serves a lab's control socket.
type controlServer struct {
	path string
	ln   net.Listener
	// ready is set once the lab is up: until then requests are refused.
	ready atomic.Bool
	// ctx is cancelled by close, ending the changes in progress.
	ctx    context.Context
	cancel context.CancelFunc
	// wg counts the accept loop and the requests being served.
	wg   sync.WaitGroup
	once sync.Once
}

// sockPath calls fn with a name for the socket file path that fits in a
// socket address (108 bytes): path itself, or for a longer one the same
// file reached through its directory's descriptor in /proc/self/fd.
func sockPath(path string, fn func(string) error) error {
	if len(path) < 100 {
		return fn(path)
	}
	d, err := os.Open(filepath.Dir(path))
	if err != nil {
		return err
	}
	defer d.Close()
	return fn("/proc/self/fd/" + strconv.Itoa(int(d.Fd())) + "/" + filepath.Base(path))
}

// listenControl opens the control socket (the lab holds the directory's
// lock, so a socket file there is a dead lab's) and serves it; requests
// are refused until ready is set.
func (l *Lab) listenControl() (*controlServer, error) {
	path := filepath.Join(l.opts.Dir, SocketName)
	_ = os.Remove(path)
	var ln *net.UnixListener
	err := sockPath(path, func(p string) error {
		var err error
		ln, err = net.ListenUnix("unix", &net.UnixAddr{Name: p, Net: "unix"})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("control socket %s: %w", path, err)
	}
	ln.SetUnlinkOnClose(false) // by its real path, in close
	if err := os.Chmod(path, fileperm.File); err != nil {
		ln.Close()
		return nil, err
	}
	cs := &controlServer{path: path, ln: ln}
	cs.ctx, cs.cancel = context.WithCancel(context.Background())
	cs.wg.Go(func() { cs.serve(l) })
	return cs, nil
}

func (cs *controlServer) serve(l *Lab) {
	for {
		c, err := cs.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			l.opts.Logger.Warn("lab control socket: accept failed; retrying", "err", err)
			select {
			case <-time.After(100 * time.Millisecond):
			case <-cs.ctx.Done():
				return
			}
			continue
		}
		cs.wg.Go(func() {
			defer c.Close()
			cs.answer(l, c)
		})
	}
}

// answer reads one request from c and answers it.
func (cs *controlServer) answer(l *Lab, c net.Conn) {
	var resp Response
	defer func() {
		_ = c.SetWriteDeadline(time.Now().Add(requestDeadline))
		_ = json.NewEncoder(c).Encode(resp)
	}()
	if err := sameUser(c); err != nil {
		resp.Error = err.Error()
		return
	}
	_ = c.SetReadDeadline(time.Now().Add(requestDeadline))
	req, err := readRequest(c)
	if err != nil {
		resp.Error = err.Error()
		return
	}
	_ = c.SetReadDeadline(time.Time{})
	if !cs.ready.Load() {
		resp.Error = fmt.Sprintf("the lab in %s is still starting: ask again once metro lab up says it is up", l.opts.Dir)
		return
	}
	if msg, err := l.do(cs.ctx, req); err != nil {
		resp.Error = err.Error()
	} else {
		resp.Message = msg
	}
	st := l.Status()
	resp.Status = &st
}

// readRequest reads one request: one JSON object, no unknown fields.
func readRequest(r io.Reader) (Request, error) {
	var req Request
	line, err := bufio.NewReaderSize(io.LimitReader(r, maxRequest), 4096).ReadBytes('\n')
	if err != nil && (!errors.Is(err, io.EOF) || len(line) == 0) {
		if errors.Is(err, io.EOF) {
			err = fmt.Errorf("no request, or one over %d bytes", maxRequest)
		}
		return req, fmt.Errorf("bad request: %w", err)
	}
	dec := json.NewDecoder(strings.NewReader(string(line)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		return req, fmt.Errorf("bad request: %w", err)
	}
	if dec.More() {
		return req, errors.New("bad request: more than one JSON object on the line")
	}
	return req, nil
}

// sameUser refuses a peer that is not the lab's own user (the socket is
// 0600, but in a directory that others can enter it is briefly open
// between its creation and its chmod).
func sameUser(c net.Conn) error {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return nil
	}
	sc, err := uc.SyscallConn()
	if err != nil {
		return err
	}
	var cred *syscall.Ucred
	var cerr error
	if err := sc.Control(func(fd uintptr) {
		cred, cerr = syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED)
	}); err != nil {
		return err
	}
	if cerr != nil {
		return fmt.Errorf("who is asking: %w", cerr)
	}
	if cred.Uid != uint32(os.Getuid()) {
		return fmt.Errorf("the lab answers only its own user (uid %d), not uid %d", os.Getuid(), cred.Uid)
	}
	return nil
}

// closeControl stops the control socket: no new requests, the changes in
// progress cancelled; it returns once they have ended and removes the
// socket file.
func (l *Lab) closeControl() {
	cs := l.ctlSrv
	if cs == nil {
		return
	}
	cs.once.Do(func() {
		cs.cancel()
		_ = cs.ln.Close()
		cs.wg.Wait()
		_ = os.Remove(cs.path)
	})
}

// lockDir takes dir's lab lock, or says which lab holds it.
func lockDir(dir string) (*os.File, error) {
	path := filepath.Join(dir, lockName)
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, fileperm.File)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		pid, _ := io.ReadAll(io.LimitReader(f, 32))
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("a lab is already running in %s (pid %s): stop it (Ctrl-C where metro lab up runs) or use another --dir",
				dir, strings.TrimSpace(string(pid)))
		}
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	if err := f.Chmod(fileperm.File); err != nil {
		f.Close()
		return nil, err
	}
	if err := f.Truncate(0); err == nil {
		_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return f, nil
}

// unlockDir releases the lab lock (the file stays: removing it could let
// two labs hold locks on different files of the same name).
func (l *Lab) unlockDir() {
	if l.lock != nil {
		_ = l.lock.Close()
		l.lock = nil
	}
}

// Ask sends req to the lab running in dir and waits for its answer. An
// error the lab answered is returned as an error, with the answer.
func Ask(ctx context.Context, dir string, req Request) (Response, error) {
	path := filepath.Join(dir, SocketName)
	var c net.Conn
	err := sockPath(path, func(p string) error {
		var d net.Dialer
		var err error
		c, err = d.DialContext(ctx, "unix", p)
		return err
	})
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ENOTDIR) {
			return Response{}, fmt.Errorf("no lab is running in %s: start one with metro lab up --dir %s", dir, dir)
		}
		return Response{}, fmt.Errorf("reach the lab in %s: %w", dir, err)
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { _ = c.SetDeadline(time.Now()) })
	defer stop()
	data, err := json.Marshal(req)
	if err != nil {
		return Response{}, err
	}
	if _, err := c.Write(append(data, '\n')); err != nil {
		return Response{}, fmt.Errorf("ask the lab in %s: %w", dir, err)
	}
	var resp Response
	if err := json.NewDecoder(io.LimitReader(c, maxResponse)).Decode(&resp); err != nil {
		if ctx.Err() != nil {
			return Response{}, fmt.Errorf("the lab in %s did not answer in time (%w); metro lab status --dir %s shows where it is", dir, ctx.Err(), dir)
		}
		return Response{}, fmt.Errorf("the lab in %s gave no answer (%v): has it stopped? See the terminal of metro lab up", dir, err)
	}
	if resp.Error != "" {
		return resp, errors.New(resp.Error)
	}
	return resp, nil
}

// do performs one request and says what it did.
func (l *Lab) do(ctx context.Context, req Request) (string, error) {
	array := func() (int, string, error) {
		if req.Array == "" {
			return 0, "", fmt.Errorf("%s: name an array of the lab (%s)", req.Verb, l.arrayNames())
		}
		i, err := l.ArrayIndex(req.Array)
		if err != nil {
			return 0, "", err
		}
		return i, l.Info.Arrays[i].Name, nil
	}
	if req.Verb != VerbPartition && req.Verb != VerbHeal && (req.AndMediator || req.Sites) {
		return "", fmt.Errorf("%s: and_mediator and sites go with partition and heal only", req.Verb)
	}
	if req.Site != "" && !slices.Contains([]string{VerbHostPathCut, VerbHostPathRestore, VerbSiteDown, VerbSiteUp}, req.Verb) {
		return "", fmt.Errorf("%s: site goes with hostpath-cut, hostpath-restore, site-down and site-up only", req.Verb)
	}
	switch req.Verb {
	case VerbStatus:
		return "", nil
	case VerbPartition:
		if req.Array != "" {
			if req.AndMediator {
				return "", errors.New("partition: a one-way cut is of the link only; cut the mediator paths with metro lab mediator cut")
			}
			if req.Sites {
				return "", errors.New("partition: a one-way cut is of the link only; partition --sites cuts the link both ways and the host paths across sites")
			}
			i, name, err := array()
			if err != nil {
				return "", err
			}
			if err := l.PartitionFrom(i); err != nil {
				return "", err
			}
			return fmt.Sprintf("%s's traffic to its peer is lost (a one-way cut); its peer's still arrives.", name), nil
		}
		switch {
		case req.Sites && req.AndMediator:
			return fmt.Sprintf("The sites are cut from each other and from the mediator: the link, both ways, the host paths across sites (%s) and both arrays' paths to the mediator.",
				l.pathNames(l.CrossSitePaths())), l.PartitionSitesAndMediator()
		case req.Sites:
			return fmt.Sprintf("The sites are cut from each other: the link, both ways, and the host paths across sites (%s). Each site keeps its own host paths and its path to the mediator.",
				l.pathNames(l.CrossSitePaths())), l.PartitionSites()
		case req.AndMediator:
			return "The link, both ways, and both arrays' paths to the mediator are cut.", l.PartitionAndMediator()
		}
		return "The link is cut both ways.", l.Partition()
	case VerbHeal:
		msg, err := "The link is whole again.", error(nil)
		switch {
		case req.Sites && req.AndMediator:
			msg, err = "The link, the host paths across sites and both arrays' paths to the mediator are whole again.", l.HealSitesAndMediator()
		case req.Sites:
			msg, err = "The link and the host paths across sites are whole again.", l.HealSites()
		case req.AndMediator:
			msg, err = "The link and both arrays' paths to the mediator are whole again.", l.HealAndMediator()
		default:
			err = l.Heal()
		}
		if cut := l.cutPaths(); err == nil && len(cut) > 0 {
			msg += fmt.Sprintf(" Host paths still cut: %s (metro lab hostpath restore mends them; heal --sites those across sites).", l.pathNames(cut))
		}
		return msg, err
	case VerbKill, VerbStart:
		i, name, err := array()
		if err != nil {
			return "", err
		}
		was := l.arrayRunning(i)
		if req.Verb == VerbKill {
			if !was {
				return name + " was not running.", nil
			}
			return name + " is killed (kill -9).", l.Kill(i)
		}
		if err := l.Start(ctx, i); err != nil {
			return "", err
		}
		if was {
			return name + " is already running.", nil
		}
		return name + " runs again and answers.", nil
	case VerbIsolate, VerbRejoin:
		i, name, err := array()
		if err != nil {
			return "", err
		}
		paths := "the link, both ways"
		if l.med != nil {
			paths += ", and its path to the mediator"
		}
		if req.Verb == VerbIsolate {
			return fmt.Sprintf("%s is cut off: %s.", name, paths), l.Isolate(i)
		}
		return fmt.Sprintf("%s is back: %s, whole again.", name, paths), l.Rejoin(i)
	case VerbRTT:
		d, err := parseRTT(req.RTT)
		if err != nil {
			return "", err
		}
		if d == 0 {
			return "The link adds no delay.", l.SetRTT(0)
		}
		return fmt.Sprintf("The link adds a round trip of %v.", d), l.SetRTT(d)
	case VerbMediatorStop:
		return "The mediator is stopped (kill -9).", l.StopMediator()
	case VerbMediatorStart:
		return "The mediator runs and answers.", l.StartMediator(ctx)
	case VerbMediatorCut, VerbMediatorRestore:
		i, name, err := array()
		if err != nil {
			return "", err
		}
		if req.Verb == VerbMediatorCut {
			return name + "'s path to the mediator is cut.", l.CutMediator(i)
		}
		return name + "'s path to the mediator is whole again.", l.RestoreMediator(i)
	case VerbHostPathCut, VerbHostPathRestore:
		paths, err := l.requestPaths(req)
		if err != nil {
			return "", err
		}
		if req.Verb == VerbHostPathCut {
			return fmt.Sprintf("Host paths cut: %s. Their hosts' bytes are lost silently, as at a cable cut.", l.pathNames(paths)), l.CutHostPaths(paths...)
		}
		return fmt.Sprintf("Host paths whole again: %s.", l.pathNames(paths)), l.RestoreHostPaths(paths...)
	case VerbSiteDown, VerbSiteUp:
		if req.Site == "" {
			return "", fmt.Errorf("%s: name a site of the lab (%s)", req.Verb, l.siteNames())
		}
		s, err := l.SiteIndex(req.Site)
		if err != nil {
			return "", err
		}
		name, array := siteName(s), l.Info.Arrays[s].Name
		down, up := l.siteState(s)
		if req.Verb == VerbSiteDown {
			if down {
				return "Site " + name + " was down already.", nil
			}
			return fmt.Sprintf("Site %s is down: %s cut in one instant, then %s killed (kill -9).", name, l.siteCablesText(s), array), l.SiteDown(s)
		}
		if err := l.SiteUp(ctx, s); err != nil {
			return "", err
		}
		if up {
			return "Site " + name + " was up already.", nil
		}
		return fmt.Sprintf("Site %s is up: %s whole again, and %s runs and answers.", name, l.siteCablesText(s), array), nil
	}
	return "", fmt.Errorf("unknown verb %q: the lab knows partition, heal, kill, start, isolate, rejoin, rtt, mediator-stop, mediator-start, mediator-cut, mediator-restore, hostpath-cut, hostpath-restore, site-down, site-up and status", req.Verb)
}

// requestPaths are the host paths a hostpath request names: every site's
// path to its array, its site's hosts' paths to every array, or with both
// the one path between them.
func (l *Lab) requestPaths(req Request) ([]HostPath, error) {
	if req.Array == "" && req.Site == "" {
		return nil, fmt.Errorf("%s: name an array (every site's path to it: %s), a site (its hosts' paths to every array: %s), or both (the one path)",
			req.Verb, l.arrayNames(), l.siteNames())
	}
	site, array := -1, -1
	var err error
	if req.Site != "" {
		if site, err = l.SiteIndex(req.Site); err != nil {
			return nil, err
		}
	}
	if req.Array != "" {
		if array, err = l.ArrayIndex(req.Array); err != nil {
			return nil, err
		}
	}
	switch {
	case site < 0:
		return l.PathsTo(array), nil
	case array < 0:
		return l.PathsFrom(site), nil
	}
	return []HostPath{{Site: site, Array: array}}, nil
}

// siteCablesText names, for people, the cables SiteDown cuts at site s.
func (l *Lab) siteCablesText(s int) string {
	var parts []string
	if l.proxy != nil {
		parts = append(parts, "the link")
	}
	if l.med != nil {
		parts = append(parts, l.Info.Arrays[s].Name+"'s path to the mediator")
	}
	parts = append(parts, "every host path into or out of site "+siteName(s))
	if len(parts) == 1 {
		return parts[0]
	}
	return strings.Join(parts[:len(parts)-1], ", ") + " and " + parts[len(parts)-1]
}

// parseRTT reads a round trip: a duration ("5ms"), or "0".
func parseRTT(v string) (time.Duration, error) {
	d, err := time.ParseDuration(strings.TrimSpace(v))
	if err != nil {
		return 0, fmt.Errorf("round trip %q: not a duration; give one such as 5ms, or 0 to clear it", v)
	}
	if d < 0 {
		return 0, fmt.Errorf("round trip %q: negative; give 0 or more", v)
	}
	return d, nil
}

func (l *Lab) arrayNames() string {
	names := make([]string, len(l.Info.Arrays))
	for i, ai := range l.Info.Arrays {
		names[i] = ai.Name
	}
	return strings.Join(names, ", ")
}
