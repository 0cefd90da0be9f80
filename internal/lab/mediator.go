package lab

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/metro-storage/metro/internal/fileperm"
	"github.com/metro-storage/metro/internal/mediator"
	"github.com/metro-storage/metro/internal/netproxy"
)

// labMediator is the lab's mediator: a `metro mediator run` process whose
// data directory, with its auth key and certificate, is <lab>/mediator
// (its log <lab>/mediator.log), and one route of the lab's proxy per array to it, so that an array can
// be cut from the mediator alone.
type labMediator struct {
	info MediatorInfo
	// addr is where the process listens (127.0.0.1:port); it keeps it
	// across a stop and start, since the routes forward to it.
	addr string
	// routes are the arrays' paths to it, by array index.
	routes []*netproxy.Proxy
}

// mediatorCert is the certificate the mediator makes in its data
// directory at its first start.
const mediatorCert = "mediator.crt"

// startMediatorFirst sets up the lab's mediator and starts it, before the
// arrays, whose configurations name it.
func (l *Lab) startMediatorFirst(ctx context.Context) error {
	dir := filepath.Join(l.opts.Dir, "mediator")
	if err := mkdirPrivate(dir); err != nil {
		return err
	}
	m := &labMediator{info: MediatorInfo{
		CA:          filepath.Join(dir, mediatorCert),
		AuthKeyFile: filepath.Join(dir, "authkey"),
		DataDir:     dir,
		Log:         filepath.Join(l.opts.Dir, "mediator.log"),
	}}
	if err := ensureAuthKey(m.info.AuthKeyFile); err != nil {
		return err
	}
	l.med = m
	err := l.onFreePorts("mediator", func(int) error {
		port, err := freePort()
		if err != nil {
			return err
		}
		m.addr = fmt.Sprintf("127.0.0.1:%d", port)
		m.info.URL = "https://" + m.addr
		return l.startMediator(ctx)
	})
	if err != nil {
		return err
	}
	for i := range l.opts.Arrays {
		px, err := netproxy.New("127.0.0.1:0", m.addr, netproxy.Settings{},
			l.opts.Logger.With("component", "mediator-route", "array", arrayName(i)))
		if err != nil {
			return err
		}
		m.routes = append(m.routes, px)
	}
	l.Info.Mediator = &m.info
	return nil
}

// ensureAuthKey makes the mediator's auth key (mediator.NewKey) unless an
// earlier lab in the directory made one.
func ensureAuthKey(path string) error {
	if data, err := os.ReadFile(path); err == nil && len(data) > 0 {
		return os.Chmod(path, fileperm.File)
	}
	return writePrivate(path, []byte(mediator.NewKey()+"\n"))
}

// startMediator starts the mediator process and waits until it answers
// over TLS with its certificate; if it does not, the process is killed.
func (l *Lab) startMediator(ctx context.Context) error {
	m := l.med
	p, err := l.spawn("mediator", m.info.Log, "mediator", "run", "--listen", m.addr,
		"--data-dir", m.info.DataDir, "--authkey-file", m.info.AuthKeyFile)
	if err != nil {
		return err
	}
	l.mu.Lock()
	l.mu.mediator = p
	l.Info.MediatorPID = p.cmd.Process.Pid
	l.mu.Unlock()
	if err = l.waitUp(ctx, p, m.info.URL, func() bool { return m.answers(ctx) }); err != nil {
		p.kill()
		l.mu.Lock()
		l.Info.MediatorPID = 0
		l.mu.Unlock()
	}
	return err
}

// answers reports whether the mediator answers its status request,
// authenticated with the lab's key over TLS verified with its certificate.
func (m *labMediator) answers(ctx context.Context) bool {
	ca, err := os.ReadFile(m.info.CA)
	if err != nil {
		return false
	}
	key, err := mediator.ReadKeyFile(m.info.AuthKeyFile)
	if err != nil {
		return false
	}
	_, _, err = mediator.QueryStatus(ctx, mediator.ClientConfig{URL: m.info.URL, AuthKey: key, CA: ca, Timeout: 2 * time.Second})
	return err == nil
}

// mediatorConfig is array i's configuration of the mediator ("" without
// one): its own route, the key and the certificate.
func (l *Lab) mediatorConfig(i int) string {
	if l.med == nil {
		return ""
	}
	cfg := fmt.Sprintf("mediator:\n  url: https://%s\n  authkey_file: %s\n  ca_file: %s\n",
		l.med.routes[i].Addr(), l.med.info.AuthKeyFile, l.med.info.CA)
	if l.opts.MediatorHeartbeat > 0 {
		cfg += "  heartbeat: " + l.opts.MediatorHeartbeat.String() + "\n"
	}
	return cfg
}

// closeRoutes closes the arrays' routes to the mediator.
func (l *Lab) closeRoutes() {
	if l.med == nil {
		return
	}
	for _, r := range l.med.routes {
		_ = r.Close()
	}
}
