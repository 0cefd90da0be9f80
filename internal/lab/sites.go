package lab

import (
	"context"
	"fmt"
	"net"
	"strings"

	"github.com/metro-storage/metro/internal/netproxy"
)

// Sites. The lab puts each array at a site of its own, named by its
// letter: site A is array-a and the hosts beside it, site B array-b and
// its hosts. Hosts reach the arrays through host paths: one route of the
// lab's proxy per (site, array) pair, in front of the array's own portal.
// A host of site A uses the A routes: a uniform host the routes to both
// arrays, a non-uniform one only the route to array-a. Cutting a route
// cuts every host of that site from that array, as a cable cut would:
// bytes are lost silently both ways, the host notices by its own
// timeouts, and once the route is mended the connections that lost bytes
// are reset so that the host logs in again.
//
// The array's own portal (ArrayInfo.Portal) stays reachable directly:
// nothing the lab does cuts it.

// HostPath is the path from the hosts of a site to an array, by index:
// sites are numbered as the arrays (site 0, A, is array 0's).
type HostPath struct{ Site, Array int }

// HostPortal is one of an array's portals as the hosts of a site reach it,
// in lab.json.
type HostPortal struct {
	// Site is the hosts' site ("A").
	Site string `json:"site"`
	// Portal is the route's address (host:port), which hosts of the site
	// log in to.
	Portal string `json:"portal"`
	// URL is the libiscsi URL of the lab volume through it.
	URL string `json:"url"`
}

// SiteInfo is a site in lab.json.
type SiteInfo struct {
	// Name is the site's letter ("A").
	Name string `json:"name"`
	// Array is the array at the site.
	Array string `json:"array"`
}

// siteName is the name of site i: its array's letter, upper case.
func siteName(i int) string { return string(rune('A' + i)) }

// SiteIndex finds a site of the lab by name: its letter (A or a), or the
// name of the array at it (array-a).
func (l *Lab) SiteIndex(name string) (int, error) {
	for i := range l.Info.Arrays {
		if strings.EqualFold(name, siteName(i)) || strings.EqualFold(name, "site-"+siteName(i)) ||
			strings.EqualFold(name, l.Info.Arrays[i].Name) {
			return i, nil
		}
	}
	return 0, fmt.Errorf("no site %q in this lab: name one of %s (the site of array-a is A)", name, l.siteNames())
}

func (l *Lab) siteNames() string {
	names := make([]string, len(l.Info.Arrays))
	for i := range names {
		names[i] = siteName(i)
	}
	return strings.Join(names, ", ")
}

// hostPathName is p for people: "site A -> array-b".
func (l *Lab) hostPathName(p HostPath) string {
	return "site " + siteName(p.Site) + " -> " + l.Info.Arrays[p.Array].Name
}

func (l *Lab) checkHostPath(p HostPath) error {
	if p.Site < 0 || p.Site >= len(l.hostPaths) || p.Array < 0 || p.Array >= len(l.hostPaths[p.Site]) {
		return fmt.Errorf("no host path from site %d to array %d in this lab: it has %d sites and arrays", p.Site, p.Array, len(l.hostPaths))
	}
	return nil
}

// startHostPaths opens the host paths, in front of the arrays' portals: on
// the ports of the lab that ran in the directory before where they are
// free, else on free ones.
func (l *Lab) startHostPaths() error {
	n := len(l.Info.Arrays)
	l.hostPaths = make([][]*netproxy.Proxy, n)
	for s := range n {
		l.hostPaths[s] = make([]*netproxy.Proxy, n)
		for a := range n {
			ln, err := listenAgain(l.prevHostPortal(s, a))
			if err != nil {
				return fmt.Errorf("host path from site %s to %s: %w", siteName(s), arrayName(a), err)
			}
			l.hostPaths[s][a] = netproxy.Serve(ln, l.Info.Arrays[a].Portal, netproxy.Settings{},
				l.opts.Logger.With("component", "host-path", "site", siteName(s), "array", arrayName(a)))
		}
	}
	l.Info.Sites = make([]SiteInfo, n)
	for s := range n {
		l.Info.Sites[s] = SiteInfo{Name: siteName(s), Array: l.Info.Arrays[s].Name}
	}
	for a := range n {
		l.Info.Arrays[a].HostPortals = make([]HostPortal, n)
		for s := range n {
			l.Info.Arrays[a].HostPortals[s] = HostPortal{Site: siteName(s), Portal: l.hostPaths[s][a].Addr()}
		}
	}
	return nil
}

// listenAgain listens on addr (127.0.0.1:port) if it is free now, else on
// a free port.
func listenAgain(addr string) (net.Listener, error) {
	if addr != "" {
		if ln, err := net.Listen("tcp", addr); err == nil {
			return ln, nil
		}
	}
	return net.Listen("tcp", "127.0.0.1:0")
}

// prevHostPortal is the portal of the host path from site s to array a in
// the lab that ran in the directory before ("" if none).
func (l *Lab) prevHostPortal(s, a int) string {
	if l.prev == nil || a >= len(l.prev.Arrays) || s >= len(l.prev.Arrays[a].HostPortals) {
		return ""
	}
	return l.prev.Arrays[a].HostPortals[s].Portal
}

// closeHostPaths closes the host paths.
func (l *Lab) closeHostPaths() {
	for _, row := range l.hostPaths {
		for _, px := range row {
			if px != nil {
				_ = px.Close()
			}
		}
	}
}

// PathsTo is every site's host path to array i.
func (l *Lab) PathsTo(i int) []HostPath {
	var ps []HostPath
	for s := range l.hostPaths {
		ps = append(ps, HostPath{Site: s, Array: i})
	}
	return ps
}

// PathsFrom is the host paths of site s's hosts, to every array.
func (l *Lab) PathsFrom(s int) []HostPath {
	var ps []HostPath
	for a := range l.hostPaths {
		ps = append(ps, HostPath{Site: s, Array: a})
	}
	return ps
}

// CrossSitePaths is every host path from a site to another site's array.
func (l *Lab) CrossSitePaths() []HostPath {
	var ps []HostPath
	for s := range l.hostPaths {
		for a := range l.hostPaths {
			if s != a {
				ps = append(ps, HostPath{Site: s, Array: a})
			}
		}
	}
	return ps
}

// sitePaths is every host path into or out of site s: its hosts' paths to
// every array and every site's path to its array.
func (l *Lab) sitePaths(s int) []HostPath {
	ps := l.PathsFrom(s)
	for _, p := range l.PathsTo(s) {
		if p.Site != s {
			ps = append(ps, p)
		}
	}
	return ps
}

// setPaths is a change of paths, all cut or all mended.
func setPaths(cut bool, paths ...HostPath) map[HostPath]bool {
	m := make(map[HostPath]bool, len(paths))
	for _, p := range paths {
		m[p] = cut
	}
	return m
}

// CutHostPaths cuts host paths, all in the same instant: the bytes of
// every connection through them are lost silently both ways, new
// connections are accepted and their bytes lost too, until
// RestoreHostPaths. The hosts notice by their own timeouts.
func (l *Lab) CutHostPaths(paths ...HostPath) error {
	return l.change(cables{paths: setPaths(true, paths...)})
}

// RestoreHostPaths mends host paths, all in the same instant. The
// connections that lost bytes are reset, so their hosts log in again.
func (l *Lab) RestoreHostPaths(paths ...HostPath) error {
	return l.change(cables{paths: setPaths(false, paths...)})
}

// PartitionSites cuts the sites from each other (a data-center
// partition): the replication link, both ways, and every cross-site host
// path (site B's hosts to array-a and site A's to array-b), in the same
// instant. Each site keeps its own host paths, and its path to the
// mediator, which is at a third site.
func (l *Lab) PartitionSites() error {
	return l.change(cables{link: partition, paths: setPaths(true, l.CrossSitePaths()...)})
}

// HealSites undoes PartitionSites: the link, both ways, and every
// cross-site host path are mended in the same instant.
func (l *Lab) HealSites() error {
	return l.change(cables{link: heal, paths: setPaths(false, l.CrossSitePaths()...)})
}

// PartitionSitesAndMediator is PartitionSites with both arrays' paths to
// the mediator cut too, in the same instant.
func (l *Lab) PartitionSitesAndMediator() error {
	return l.change(cables{link: partition, med: both(true), paths: setPaths(true, l.CrossSitePaths()...)})
}

// HealSitesAndMediator undoes PartitionSitesAndMediator.
func (l *Lab) HealSitesAndMediator() error {
	return l.change(cables{link: heal, med: both(false), paths: setPaths(false, l.CrossSitePaths()...)})
}

// siteCables is the change of every cable of site s: the link (both
// ways), the path of s's array to the mediator, and every host path into
// or out of s, all cut or all mended.
func (l *Lab) siteCables(s int, cut bool) cables {
	c := cables{med: l.mediatorPath(s, cut), paths: setPaths(cut, l.sitePaths(s)...)}
	if l.proxy != nil {
		c.link = heal
		if cut {
			c.link = partition
		}
	}
	return c
}

// SiteDown loses site s whole, as at a power cut: in one instant the link
// (both ways), the path of its array to the mediator and every host path
// into or out of the site (its hosts' paths to every array, and other
// sites' hosts' paths to its array) are cut, then its array is killed
// (kill -9). The cables are cut first so that nothing of the site is
// heard again, not even the resets of its array's end: the other array
// and the hosts notice the loss by their own timeouts. It does nothing to
// what is down already.
func (l *Lab) SiteDown(s int) error { return l.setSite(context.Background(), s, true) }

// SiteUp undoes SiteDown: the site's cables are mended in one instant (the
// link of every cut, one-way ones too), then its array is started, with
// its configuration and data, and waited for until it answers.
func (l *Lab) SiteUp(ctx context.Context, s int) error { return l.setSite(ctx, s, false) }

// setSite is SiteDown (down) or SiteUp.
func (l *Lab) setSite(ctx context.Context, s int, down bool) error {
	if err := l.checkArray(s); err != nil {
		return err
	}
	l.ctl.Lock()
	defer l.ctl.Unlock()
	if err := l.changeLocked(l.siteCables(s, down)); err != nil {
		return err
	}
	if down {
		return l.kill(s)
	}
	if l.arrayRunning(s) {
		return nil
	}
	if err := l.start(ctx, s); err != nil {
		return fmt.Errorf("site %s's cables are mended but %s did not start (metro lab start %s tries again): %w",
			siteName(s), l.Info.Arrays[s].Name, l.Info.Arrays[s].Name, err)
	}
	return l.writeInfo()
}

// siteState reports whether everything SiteDown does to site s is so
// (down), and whether none of it is (up: the array runs, and no cut of
// the link or of the site's other cables remains).
func (l *Lab) siteState(s int) (down, up bool) {
	running := l.arrayRunning(s)
	down, up = !running, running
	if l.proxy != nil {
		ls := l.proxy.Settings()
		down = down && ls.Partitioned
		up = up && !ls.Partitioned && !ls.CutAToB && !ls.CutBToA
	}
	var routes []*netproxy.Proxy
	if l.med != nil {
		routes = append(routes, l.med.routes[s])
	}
	for _, p := range l.sitePaths(s) {
		routes = append(routes, l.hostPaths[p.Site][p.Array])
	}
	for _, r := range routes {
		cut := r.Settings().Partitioned
		down = down && cut
		up = up && !cut
	}
	return down, up
}

// cutPaths lists the host paths that are cut now.
func (l *Lab) cutPaths() []HostPath {
	var ps []HostPath
	for s, row := range l.hostPaths {
		for a, px := range row {
			if px.Settings().Partitioned {
				ps = append(ps, HostPath{Site: s, Array: a})
			}
		}
	}
	return ps
}

// pathNames is paths for people.
func (l *Lab) pathNames(paths []HostPath) string {
	names := make([]string, len(paths))
	for i, p := range paths {
		names[i] = l.hostPathName(p)
	}
	return strings.Join(names, ", ")
}

// SiteStatus is a site in Status.
type SiteStatus struct {
	Name  string `json:"name"`
	Array string `json:"array"`
	// HostPaths are the paths of the site's hosts, one per array.
	HostPaths []HostPathStatus `json:"host_paths"`
}

// HostPathStatus is a host path in Status.
type HostPathStatus struct {
	// Array is the array it leads to, Portal the address hosts use.
	Array  string `json:"array"`
	Portal string `json:"portal"`
	Cut    bool   `json:"cut"`
}

// siteStatus is the sites' part of Status.
func (l *Lab) siteStatus() []SiteStatus {
	sites := make([]SiteStatus, len(l.hostPaths))
	for s, row := range l.hostPaths {
		sites[s] = SiteStatus{Name: siteName(s), Array: l.Info.Arrays[s].Name, HostPaths: make([]HostPathStatus, len(row))}
		for a, px := range row {
			sites[s].HostPaths[a] = HostPathStatus{Array: l.Info.Arrays[a].Name, Portal: px.Addr(), Cut: px.Settings().Partitioned}
		}
	}
	return sites
}
