package e2e

import (
	"fmt"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/metro-storage/metro/internal/lab"
)

// hostPath is a path of the lab's hosts: from site Site's hosts to array
// Array, by index (site A is 0).
type hostPath struct{ site, array int }

func (p hostPath) String() string { return fmt.Sprintf("site %c -> array-%c", 'A'+p.site, 'a'+p.array) }

// inquiry runs libiscsi's iscsi-inq as the lab's host through url, for at
// most timeout.
func inquiry(t *testing.T, url string, timeout time.Duration) (string, error) {
	return runTool(t, timeout, "iscsi-inq", "-i", lab.DefaultInitiator, url)
}

// expectPaths checks every host path of the lab at once, after step: the
// status (--json) says whether it is cut, and libiscsi's iscsi-inq
// through it, as a host of its site, gets no answer when it is cut (its
// bytes are lost: the tool waits until it is stopped) and an answer when
// it is whole: a successful inquiry when ok is set, else whatever the
// array says (a suspended pod's NOT READY at login is an answer too).
func (p *labProc) expectPaths(step string, ok bool, cut ...hostPath) {
	p.t.Helper()
	st := p.status()
	var wg sync.WaitGroup
	for s := range 2 {
		for a := range 2 {
			hp := hostPath{s, a}
			want := slices.Contains(cut, hp)
			if got := st.Sites[s].HostPaths[a]; got.Cut != want || got.Portal != p.info.Arrays[a].HostPortals[s].Portal {
				p.t.Errorf("%s: status --json of %s: %+v; want cut %v", step, hp, got, want)
			}
			url := p.info.Arrays[a].HostPortals[s].URL
			wg.Go(func() {
				if want {
					if out, err := inquiry(p.t, url, 4*time.Second); err == nil || !strings.Contains(err.Error(), "timed out") {
						p.t.Errorf("%s: iscsi-inq through the cut %s: %v; want no answer\n%s", step, hp, err, out)
					}
					return
				}
				out, err := inquiry(p.t, url, time.Minute)
				if err != nil && (ok || strings.Contains(err.Error(), "timed out") || strings.TrimSpace(out) == "") {
					p.t.Errorf("%s: iscsi-inq through the whole %s: %v\n%s", step, hp, err, out)
				}
				if err == nil && !strings.Contains(out, "DIRECT_ACCESS") {
					p.t.Errorf("%s: iscsi-inq through %s said:\n%s", step, hp, out)
				}
			})
		}
	}
	wg.Wait()
	if p.t.Failed() {
		p.t.FailNow()
	}
}

// TestLabSites runs metro lab up as a user does and drives the host path
// and site verbs from other processes, with libiscsi's iscsi-inq playing
// hosts at both sites through the four host paths lab.json lists: a verb
// cuts exactly the paths it names (no answer through them, an answer
// through the others, status --json saying which), restore and heal bring
// them back; partition --sites also cuts the link and site down also kills
// the site's array and cuts its mediator path, as the arrays see it; site
// up brings everything back in sync. The arrays' own portals are never
// cut. Verbs are idempotent and wrong ones say what to do.
func TestLabSites(t *testing.T) {
	needTool(t, "iscsi-inq")
	p := startLabProc(t)
	for i, a := range p.info.Arrays {
		if len(a.HostPortals) != 2 || len(p.info.Sites) != 2 || p.info.Sites[i].Array != a.Name {
			t.Fatalf("lab.json: %s host portals %+v, sites %+v", a.Name, a.HostPortals, p.info.Sites)
		}
	}
	if out := p.must("status"); !regexp.MustCompile(`site B -> array-a +127\.0\.0\.1:\d+ +whole`).MatchString(out) {
		t.Errorf("status for people:\n%s", out)
	}
	aa, ab, ba, bb := hostPath{0, 0}, hostPath{0, 1}, hostPath{1, 0}, hostPath{1, 1}
	p.expectPaths("at the start", true)

	// Every site's path to array-a; the array's own portal stays.
	if out := p.must("hostpath", "cut", "array-a"); !strings.Contains(out, "site A -> array-a, site B -> array-a") {
		t.Errorf("hostpath cut array-a said %q", out)
	}
	p.must("hostpath", "cut", "a") // idempotent
	p.expectPaths("hostpath cut array-a", true, aa, ba)
	if out, err := inquiry(t, p.info.URLs[0], time.Minute); err != nil {
		t.Fatalf("iscsi-inq through array-a's own portal while its host paths are cut: %v\n%s", err, out)
	}
	p.must("hostpath", "restore", "array-a")
	p.expectPaths("hostpath restore array-a", true)

	// One site's hosts' paths, then one path.
	p.must("hostpath", "cut", "--site", "B")
	p.expectPaths("hostpath cut --site B", true, ba, bb)
	p.must("hostpath", "restore", "b", "--site", "B")
	p.expectPaths("hostpath restore b --site B", true, ba)
	p.must("hostpath", "restore", "--site", "b")
	p.expectPaths("hostpath restore --site b", true)

	// A data-center partition: the link and the paths across sites.
	p.must("partition", "--sites")
	if st := p.status(); len(st.Link.Cut) != 2 {
		t.Fatalf("after partition --sites: link %+v", st.Link)
	}
	p.waitLink(0, "disconnected")
	p.waitLink(1, "disconnected")
	p.expectPaths("partition --sites", false, ab, ba)
	if out := p.must("heal"); !strings.Contains(out, "Host paths still cut: site A -> array-b, site B -> array-a") {
		t.Errorf("heal after partition --sites said %q", out)
	}
	p.must("heal", "--sites")
	p.waitLink(0, "connected")
	p.waitInSync()
	p.expectPaths("heal --sites", true)

	// Site A lost, then back.
	pid := p.status().Arrays[0].PID
	if out := p.must("site", "down", "A"); !strings.Contains(out, "Site A is down") {
		t.Errorf("site down A said %q", out)
	}
	if !gone(pid) {
		t.Fatalf("array-a (pid %d) still exists after site down A", pid)
	}
	if out := p.must("site", "down", "a"); out != "Site A was down already." {
		t.Errorf("site down a again said %q", out)
	}
	st := p.status()
	if st.Arrays[0].Running || !st.Arrays[0].MediatorCut || st.Arrays[1].MediatorCut || len(st.Link.Cut) != 2 {
		t.Fatalf("status after site down A: %+v, link %+v", st.Arrays, st.Link)
	}
	p.waitLink(1, "disconnected")
	p.waitMediator(1, "online")
	p.expectPaths("site down A", false, aa, ab, ba)
	if out := p.must("site", "up", "A"); !strings.Contains(out, "Site A is up") {
		t.Errorf("site up A said %q", out)
	}
	if out := p.must("site", "up", "array-a"); out != "Site A was up already." {
		t.Errorf("site up array-a again said %q", out)
	}
	if a := p.status().Arrays[0]; !a.Running || a.PID == pid || a.MediatorCut || gone(a.PID) {
		t.Fatalf("status after site up A: %+v (old pid %d)", a, pid)
	}
	p.waitMediator(0, "online")
	p.waitInSync()
	p.expectPaths("site up A", true)

	// Wrong requests say what to do.
	p.refused("name an array (every site's path to it), --site", "hostpath", "cut")
	p.refused(`no array "array-c"`, "hostpath", "restore", "array-c")
	p.refused(`no site "C" in this lab: name one of A, B`, "site", "down", "C")
	p.refused("missing a site", "site", "up")
	p.refused("--one-way and --and-mediator or --sites do not go together", "partition", "--sites", "--one-way", "a")
}
