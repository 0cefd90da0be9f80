package array

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"time"

	"github.com/metro-storage/metro/internal/api"
	"github.com/metro-storage/metro/internal/catalog"
	"github.com/metro-storage/metro/internal/link"
	"github.com/metro-storage/metro/internal/replication"
	"github.com/metro-storage/metro/internal/scsi"
	"github.com/metro-storage/metro/internal/store"
)

var _ api.Replication = (*Array)(nil)

const peerKey = "array/peer"

// replEnv is the array as the replicator sees it.
type replEnv struct{ a *Array }

func (e replEnv) Catalog() *catalog.Catalog { return e.a.cat }
func (e replEnv) Store() *store.Store       { return e.a.store }
func (e replEnv) Target() *scsi.Target      { return e.a.target }
func (e replEnv) LU(uuid string) *scsi.LogicalUnit {
	e.a.luMu.Lock()
	defer e.a.luMu.Unlock()
	return e.a.byUUID[uuid]
}

// setupReplication loads the link certificate and the peer and makes the
// replicator.
func (a *Array) setupReplication() error {
	certFile := filepath.Join(a.cfg.DataDir, "link-cert.pem")
	keyFile := filepath.Join(a.cfg.DataDir, "link-key.pem")
	if a.fsIsReal {
		if _, err := os.Stat(certFile); errors.Is(err, os.ErrNotExist) {
			if err := makeSelfSigned(a.cfg, certFile, keyFile, a.now()); err != nil {
				return fmt.Errorf("link certificate: %w", err)
			}
		}
		cert, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return fmt.Errorf("link certificate: %w", err)
		}
		a.linkCert = cert
	} else {
		cert, err := link.NewCertificate("metro array " + a.cfg.Name)
		if err != nil {
			return err
		}
		a.linkCert = cert
	}
	a.repl = replication.New(replication.Config{
		Name: a.cfg.Name, ID: a.id.ID, Env: replEnv{a},
		PortOf: func(id string) uint16 { return Identity{ID: id}.RelativePortID() },
		Link: link.Config{Cert: a.linkCert, AuthTimeout: a.cfg.Replication.AuthTimeout.Duration,
			MaxHandshakes: a.cfg.Replication.MaxHandshakes, MaxHandshakesPerAddress: a.cfg.Replication.MaxHandshakesPerAddress},
		Logger:       a.log.With("component", "replication"),
		Now:          a.now,
		Timeout:      a.cfg.Replication.Timeout.Duration,
		HeadStart:    a.cfg.Replication.HeadStart.Duration,
		Mediator:     arrayMediator{a},
		BaselineRate: int64(a.cfg.baselineRate()),
	})
	data, ok, err := a.store.GetMeta(peerKey)
	if err != nil {
		return err
	}
	if ok {
		var p replication.Peer
		if err := json.Unmarshal(data, &p); err != nil {
			return fmt.Errorf("peer: %w", err)
		}
		a.repl.SetPeer(&p)
	}
	return nil
}

// linkAddress is the address the peer should dial.
func (a *Array) linkAddress() string {
	if a.cfg.Replication.Advertise != "" {
		return a.cfg.Replication.Advertise
	}
	if a.linkLn != nil {
		return a.linkLn.Addr().String()
	}
	return a.cfg.Replication.Listen
}

func (a *Array) pairing() api.Pairing {
	return api.Pairing{Name: a.cfg.Name, ID: a.id.ID, API: a.Info().API, LinkAddress: a.linkAddress(),
		LinkCert: a.linkCert.Certificate[0], LinkVersion: link.ProtocolVersion, Version: Version}
}

// savePeer records the paired array durably and starts the link. Pairing
// again with the array this one is paired with changes nothing when its
// details are those recorded (changed is false: the link stays up); new
// details of it (a link address, certificate, name or API URL) replace
// the old ones and restart the link. An array pairs with one peer only.
func (a *Array) savePeer(p api.Pairing) (changed bool, err error) {
	if p.Name == a.cfg.Name {
		return false, fmt.Errorf("the peer is also named %s: %w: arrays of a pair need different names", p.Name, catalog.ErrConflict)
	}
	if p.ID == a.id.ID {
		return false, fmt.Errorf("that is this array: %w", catalog.ErrConflict)
	}
	pid := Identity{ID: p.ID}
	if pid.TargetPortGroup() == a.id.TargetPortGroup() || pid.RelativePortID() == a.id.RelativePortID() {
		return false, fmt.Errorf("array %s's ALUA port numbers collide with this array's: %w: re-create one of them", p.Name, catalog.ErrConflict)
	}
	if p.LinkVersion != link.ProtocolVersion {
		return false, fmt.Errorf("array %s speaks replication protocol %d and this array %d: %w: run compatible metro releases on both", p.Name, p.LinkVersion, link.ProtocolVersion, catalog.ErrConflict)
	}
	peer := &replication.Peer{Name: p.Name, ID: p.ID, LinkAddress: p.LinkAddress, Cert: p.LinkCert, API: p.API}
	cur, _, _ := a.repl.PeerInfo()
	if cur != nil && cur.ID != p.ID {
		return false, a.otherPeer(cur, p.Name, p.ID)
	}
	if cur != nil && reflect.DeepEqual(cur, peer) {
		return false, nil
	}
	data, _ := json.Marshal(peer)
	b := a.store.NewBatch()
	b.SetMeta(peerKey, data)
	if err := b.Commit(); err != nil {
		return false, err
	}
	a.repl.SetPeer(peer)
	if cur != nil {
		a.log.Info("the peer's pairing details changed; the link restarts with the new ones", "peer", p.Name, "link", p.LinkAddress)
	} else {
		a.log.Info("paired", "peer", p.Name, "link", p.LinkAddress)
	}
	return true, nil
}

// otherPeer is the error for pairing with an array (name, id) other than
// cur, the peer this array is paired with.
func (a *Array) otherPeer(cur *replication.Peer, name, id string) error {
	return fmt.Errorf("array %s is already paired with array %s (id %s, API %s), and an array pairs with one peer only: %w: "+
		"array %s (id %s) can be paired with an array that has no peer yet; stretch pods between %s and %s ('metro pod add --array %s POD')",
		a.cfg.Name, cur.Name, cur.ID, cur.API, catalog.ErrConflict, name, id, a.cfg.Name, cur.Name, cur.Name)
}

// ConnectPeer implements api.Replication. The array at req.PeerURL is
// asked who it is first: if this array is paired with another one, it is
// refused before anything is sent to it (which would pair it, alone,
// with this array).
func (a *Array) ConnectPeer(ctx context.Context, req api.ArrayConnect) (api.PeerConnected, error) {
	if err := api.RequireHTTPS(req.PeerURL); err != nil {
		return api.PeerConnected{}, fmt.Errorf("pair: %w: %w", catalog.ErrInvalid, err)
	}
	caFile := ""
	if req.CA != "" {
		f, err := os.CreateTemp("", "metro-peer-ca-*.pem")
		if err != nil {
			return api.PeerConnected{}, err
		}
		defer os.Remove(f.Name())
		if blk, _ := pem.Decode([]byte(req.CA)); blk == nil {
			f.Close()
			return api.PeerConnected{}, fmt.Errorf("ca: %w: not a PEM certificate", catalog.ErrInvalid)
		}
		_, err = f.WriteString(req.CA)
		f.Close()
		if err != nil {
			return api.PeerConnected{}, err
		}
		caFile = f.Name()
	}
	c, err := api.NewClient(req.PeerURL, req.Token, caFile)
	if err != nil {
		return api.PeerConnected{}, fmt.Errorf("peer %s: %w: %v", req.PeerURL, catalog.ErrInvalid, err)
	}
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	unreachable := func(err error) error {
		var se *api.StatusError
		if errors.As(err, &se) {
			return fmt.Errorf("the peer refused to pair: %s: %w", se.Message, catalog.ErrConflict)
		}
		return fmt.Errorf("cannot reach the peer's API at %s: %v: %w", req.PeerURL, err, catalog.ErrInvalid)
	}
	if cur, _, _ := a.repl.PeerInfo(); cur != nil {
		them, err := c.Array(ctx)
		if err != nil {
			return api.PeerConnected{}, unreachable(err)
		}
		if them.ID != cur.ID {
			return api.PeerConnected{}, a.otherPeer(cur, them.Name, them.ID)
		}
	}
	theirs, err := c.Pair(ctx, a.pairing())
	if err != nil {
		return api.PeerConnected{}, unreachable(err)
	}
	changed, err := a.savePeer(theirs)
	if err != nil {
		return api.PeerConnected{}, err
	}
	peers := a.Peers()
	if len(peers) == 0 {
		return api.PeerConnected{}, fmt.Errorf("paired, but the peer is not listed")
	}
	return api.PeerConnected{ArrayInfo: peers[0], AlreadyPaired: !changed}, nil
}

// Pair implements api.Replication.
func (a *Array) Pair(ctx context.Context, req api.Pairing) (api.Pairing, error) {
	if _, err := a.savePeer(req); err != nil {
		return api.Pairing{}, err
	}
	return a.pairing(), nil
}

// StretchPod implements api.Replication.
func (a *Array) StretchPod(ctx context.Context, pod, array string) error {
	return a.repl.Stretch(ctx, pod, array)
}

// UnstretchPod implements api.Replication.
func (a *Array) UnstretchPod(ctx context.Context, pod, array string) error {
	return a.repl.Unstretch(ctx, pod, array)
}

// EradicatePod implements api.Replication: delete a pod copy pending
// eradication with its volumes' blocks.
func (a *Array) EradicatePod(ctx context.Context, name string) error {
	st := a.cat.View()
	p, ok := st.Pods[name]
	if !ok {
		return fmt.Errorf("pod %s: %w", name, catalog.ErrNotFound)
	}
	if p.Pending == nil {
		return fmt.Errorf("pod %s: %w: only a copy pending eradication can be eradicated; destroy a live pod instead", name, catalog.ErrConflict)
	}
	if err := a.cat.Apply(catalog.EradicatePod{Name: name}); err != nil {
		return err
	}
	if err := a.repl.ForgetPod(p.ID); err != nil {
		a.log.Warn("forget the eradicated pod's protocol record", "pod", name, "err", err)
	}
	a.log.Info("pod copy eradicated", "pod", name)
	return nil
}

// PodReplication implements api.Replication.
func (a *Array) PodReplication(p *catalog.Pod) *api.PodReplication {
	ps := a.repl.Status(p)
	if ps == nil {
		return nil
	}
	out := &api.PodReplication{Error: ps.Error}
	if pr := ps.Progress; pr != nil {
		out.Copying = true
		out.Percent = pr.Percent()
		out.BytesDone, out.BytesTotal, out.Rate = pr.Done, pr.Total, pr.Rate
		out.ETASeconds = pr.ETA().Seconds()
	}
	return out
}

// listenLink opens the replication listener.
func (a *Array) listenLink() error {
	if a.cfg.Replication.Listen == "" {
		return nil
	}
	l, err := net.Listen("tcp", a.cfg.Replication.Listen)
	if err != nil {
		return fmt.Errorf("replication listen %s: %w", a.cfg.Replication.Listen, err)
	}
	a.linkLn = l
	return nil
}

// Replicator returns the array's replication engine.
func (a *Array) Replicator() *replication.Replicator { return a.repl }
