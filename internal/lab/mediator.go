package lab

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/metro-storage/metro/internal/fileperm"
	"github.com/metro-storage/metro/internal/netproxy"
)

// mediator is the lab's mediator: a `metro mediator run` process whose
// data directory, with its auth key and certificate, is <lab>/mediator
// (its log <lab>/mediator.log), and one route of the lab's proxy per array to it, so that an array can
// be cut from the mediator alone.
type mediator struct {
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

// hasMediator reports whether bin has a mediator (`metro mediator run`).
func hasMediator(bin string) bool {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return exec.CommandContext(ctx, bin, "mediator", "run", "--help").Run() == nil
}

// startMediatorFirst sets up the lab's mediator and starts it, before the
// arrays, whose configurations name it.
func (l *Lab) startMediatorFirst(ctx context.Context) error {
	if !hasMediator(l.opts.Binary) {
		l.opts.Logger.Warn("this metro binary has no mediator (metro mediator run): the lab runs without one", "binary", l.opts.Binary)
		return nil
	}
	dir := filepath.Join(l.opts.Dir, "mediator")
	if err := mkdirPrivate(dir); err != nil {
		return err
	}
	m := &mediator{info: MediatorInfo{
		CA:          filepath.Join(dir, mediatorCert),
		AuthKeyFile: filepath.Join(dir, "authkey"),
		DataDir:     dir,
		Log:         filepath.Join(l.opts.Dir, "mediator.log"),
	}}
	if err := ensureAuthKey(m.info.AuthKeyFile); err != nil {
		return err
	}
	l.med = m
	err := l.onFreePorts("mediator", func() error {
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

// ensureAuthKey makes the mediator's auth key (32 random bytes, in hex)
// unless an earlier lab in the directory made one.
func ensureAuthKey(path string) error {
	if data, err := os.ReadFile(path); err == nil && len(data) > 0 {
		return os.Chmod(path, fileperm.File)
	}
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return err
	}
	return writePrivate(path, []byte(hex.EncodeToString(key)+"\n"))
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

// answers reports whether the mediator answers an HTTPS request, any
// answer, verified with its certificate.
func (m *mediator) answers(ctx context.Context) bool {
	pem, err := os.ReadFile(m.info.CA)
	if err != nil {
		return false
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return false
	}
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}
	defer tr.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, m.info.URL+"/", nil)
	if err != nil {
		return false
	}
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return true
}

// mediatorConfig is array i's configuration of the mediator ("" without
// one): its own route, the key and the certificate.
func (l *Lab) mediatorConfig(i int) string {
	if l.med == nil {
		return ""
	}
	return fmt.Sprintf("mediator:\n  url: https://%s\n  authkey_file: %s\n  ca_file: %s\n",
		l.med.routes[i].Addr(), l.med.info.AuthKeyFile, l.med.info.CA)
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
