package array

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/metro-storage/metro/internal/iscsi"
)

func TestISCSILimitsConfig(t *testing.T) {
	load := func(limits string) (*Config, error) {
		dir := t.TempDir()
		p := filepath.Join(dir, "array.yaml")
		y := "name: a\ndata_dir: d\niscsi:\n  limits:\n" + limits
		if err := os.WriteFile(p, []byte(y), 0o600); err != nil {
			t.Fatal(err)
		}
		return LoadConfig(p)
	}
	c, err := load("    max_connections: 10\n    max_connections_per_source: 3\n    max_logins: 4\n    max_logins_per_source: 2\n" +
		"    login_start_timeout: 2s\n    login_timeout: 7s\n    max_write_bytes: 256M\n    max_session_write_bytes: 16M\n" +
		"    max_read_bytes: 96M\n    max_session_read_bytes: 8M\n    data_out_timeout: 12s\n")
	if err != nil {
		t.Fatal(err)
	}
	var ic iscsi.Config
	c.ISCSI.Limits.apply(&ic)
	want := iscsi.Config{MaxConnections: 10, MaxConnectionsPerSource: 3, MaxLogins: 4, MaxLoginsPerSource: 2,
		LoginStartTimeout: 2 * time.Second, LoginTimeout: 7 * time.Second, MaxWriteBytes: 256 << 20, MaxSessionWriteBytes: 16 << 20,
		MaxReadBytes: 96 << 20, MaxSessionReadBytes: 8 << 20, DataOutTimeout: 12 * time.Second}
	if ic.MaxConnections != want.MaxConnections || ic.MaxConnectionsPerSource != want.MaxConnectionsPerSource ||
		ic.MaxLogins != want.MaxLogins || ic.MaxLoginsPerSource != want.MaxLoginsPerSource ||
		ic.LoginStartTimeout != want.LoginStartTimeout || ic.LoginTimeout != want.LoginTimeout ||
		ic.MaxWriteBytes != want.MaxWriteBytes || ic.MaxSessionWriteBytes != want.MaxSessionWriteBytes ||
		ic.MaxReadBytes != want.MaxReadBytes || ic.MaxSessionReadBytes != want.MaxSessionReadBytes || ic.DataOutTimeout != want.DataOutTimeout {
		t.Fatalf("limits applied as %+v", ic)
	}
	for _, bad := range []string{"    max_logins: -1\n", "    login_timeout: -3s\n", "    max_write_bytes: lots\n", "    max_read_bytes: 1X\n", "    data_out_timeout: -1s\n", "    max_sessions: 3\n"} {
		if _, err := load(bad); err == nil || !strings.Contains(err.Error(), "iscsi") && !strings.Contains(err.Error(), "max_sessions") {
			t.Errorf("%q: err %v", strings.TrimSpace(bad), err)
		}
	}
}
