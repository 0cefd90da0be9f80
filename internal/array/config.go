package array

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/metro-storage/metro/internal/api"
	"github.com/metro-storage/metro/internal/iscsi"
	"github.com/metro-storage/metro/internal/link"
	"github.com/metro-storage/metro/internal/replication"
	"github.com/metro-storage/metro/internal/store"
	"github.com/metro-storage/metro/internal/units"
)

// Config is an array's configuration file (YAML).
//
//	name: array-a                 # unique among paired arrays
//	data_dir: /var/lib/metro      # store, identity, certificate, token; made 0700, files 0600
//	capacity: 100G                # usable space; empty: what the filesystem can hold (below)
//	filesystem_share: 40          # percent of data_dir's filesystem, after the store's
//	                              # reserve, that volume data may fill (see internal/store/space.go)
//	max_disk_stall: 20s           # a disk write or sync of the store's stalled this long stops
//	                              # the array, as a failed one does (fail-stop: the peer takes over)
//	eradication_window: 24h       # destroyed volumes stay recoverable
//	api:
//	  listen: 127.0.0.1:8443
//	  tls: true                   # false: plain HTTP, refused unless listen is loopback
//	  cert_file: ""               # default: self-signed, made at first start
//	  key_file: ""
//	  token: ""                   # default: generated at first start into data_dir/api-token;
//	                              # at least 128 bits (32 hex digits, 22 base64url characters)
//	  read_header_timeout: 10s    # TLS handshake and request headers
//	  read_timeout: 30s           # the whole request, body included
//	  write_timeout: 2m           # end of headers to end of the answer
//	  idle_timeout: 2m            # a kept-alive connection between requests
//	iscsi:
//	  listen: [127.0.0.1:3260]
//	  advertise: []               # portals for discovery; default: listen
//	  target: ""                  # default iqn.2026-11.io.metro:<name>
//	  limits:                     # against hosts that misbehave; 0 or empty: the default shown
//	    max_connections: 1024     # open at once; one more is closed as soon as it is accepted
//	    max_connections_per_source: 64  # from one IP address
//	    max_logins: 128           # still logging in
//	    max_logins_per_source: 8  # still logging in, from one IP address
//	    login_start_timeout: 5s   # for the first login request, from the connection
//	    login_timeout: 10s        # for the whole login
//	    max_write_bytes: 128M     # write data held for commands of all hosts (at least 64M)
//	    max_session_write_bytes: 32M  # of one session; a write beyond waits for its R2T
//	    max_read_bytes: 128M      # read data held for commands of all hosts (at least 64M)
//	    max_session_read_bytes: 32M   # of one session; a read beyond waits to start
//	    data_out_timeout: 30s     # a write whose asked-for data has not all come: terminated
//	replication:
//	  listen: 127.0.0.1:7443      # the link to the peer array
//	  advertise: ""               # address the peer dials; default: listen
//	  timeout: 1s                 # no heartbeat for this long: the peer is lost (see below)
//	  head_start: 1s              # a pod's non-preferred array waits this long before it races
//	  baseline_rate: ""           # limit baseline copies, e.g. 100M (per second)
//	  auth_timeout: 2s            # a link connection must authenticate within this
//	  max_handshakes: 64          # unauthenticated link connections held at once ...
//	  max_handshakes_per_address: 8 # ... and from one source address (the oldest are dropped beyond)
//	  remembered_outcomes: 256    # per volume: forwarded COMPARE AND WRITEs whose answers the link may
//	                              # have lost, kept to answer the host's retry as the first run (an eighth
//	                              # per host; negative: none; see package scsi, outcome.go)
//	mediator:                     # the arbiter of failover at a third site (metro mediator run)
//	  url: ""                     # https://HOST[:9095]; empty: no mediator
//	  authkey_file: ""            # file (0600) holding the mediator's auth key; required with url
//	  ca_file: ""                 # PEM the mediator's certificate chains to (its mediator.crt);
//	                              # empty: the system's roots
//	  heartbeat: 5s               # how often the array heartbeats the mediator
//	  timeout: 2s                 # each request to the mediator (heartbeat or elect attempt)
//
// A mediator set with `metro array setattr --mediator` (url, key and
// certificate) is kept in data_dir and replaces url, authkey_file and
// ca_file from then on; heartbeat and timeout still come from here.
//
// Failover timing (replication.timeout T, replication.head_start H; the
// arithmetic is in package pod's documentation): the link is declared
// lost T after the peer was last heard from (heartbeats every 100 ms),
// a mirrored write or reservation change waits at most T for the peer,
// a command forwarded to the sequencer at most 10T (then the link session
// ends as if lost, and the host gets a retryable NOT READY), a lost peer's read
// lease has surely ended T after it was last heard from, and the
// preferred array (or either, with no preference) races at once: a host
// writing through the winner pauses for about T plus one round trip to
// the mediator, about 1.1 s at the defaults. When the preferred array is
// gone, the other races after H: about T + H, 2.1 s. Both are far inside
// host I/O timeouts (30 s and more); a shorter T is detected faster but
// declares a slow link lost sooner.
//
// With the iscsi limits at their defaults a connection still logging in
// holds about 20 KiB (4 KiB buffers, at most 8 KiB of login text, as it
// arrives), so logins in progress hold at most about 2.5 MiB. A logged-in
// connection holds about 150 KiB (64 KiB read and write buffers, its
// goroutines); at most 64 KiB of answers queue for it (the reader stops
// reading beyond that, and a host that does not read them is dropped
// after 30s), plus the answer to one request and the request itself (a
// NOP-Out or text request of up to 256 KiB); so about 150 MiB for 1024
// typical connections, 730 MiB at worst when every one of them sends
// 256 KiB pings without reading. Command data adds, at most: write data
// hosts send unasked (immediate and unsolicited, at most 64 KiB per
// command), admitted into a pool of max_write_bytes that may reach twice
// that while sessions use their fair share of it (beyond it the command
// is answered TASK SET FULL and its data dropped); solicited write data,
// another such pool; read data, a pool of max_read_bytes, also up to
// twice that. Write buffers come in power-of-two sizes, so they may take
// up to twice the bytes counted. At the defaults command data is thus
// bounded by 4 x 128 MiB of write data (up to twice that in buffers) and
// 2 x 128 MiB of read data: about 1.3 GiB in the worst case, reached only
// by many sessions from several addresses each holding its fair share;
// lower the limits on a small machine. A host's data is reclaimed when it
// stops: write data it does not send within data_out_timeout, read data it
// does not read within 30s. The hostile-host end-to-end test measures an
// array under 2000 held logins (44 MiB resident, 826 MiB before these
// limits) and under 1000 sessions announcing 64 MiB writes (74 MiB
// resident and 219 MiB mapped, 154 MiB and 63 GiB before), against a
// bound of 256 MiB.
type Config struct {
	Name              string   `yaml:"name"`
	DataDir           string   `yaml:"data_dir"`
	Capacity          string   `yaml:"capacity"`
	FilesystemShare   int      `yaml:"filesystem_share"`
	MaxDiskStall      Duration `yaml:"max_disk_stall"`
	EradicationWindow Duration `yaml:"eradication_window"`
	API               struct {
		Listen   string `yaml:"listen"`
		TLS      *bool  `yaml:"tls"`
		CertFile string `yaml:"cert_file"`
		KeyFile  string `yaml:"key_file"`
		Token    string `yaml:"token"`

		ReadHeaderTimeout Duration `yaml:"read_header_timeout"`
		ReadTimeout       Duration `yaml:"read_timeout"`
		WriteTimeout      Duration `yaml:"write_timeout"`
		IdleTimeout       Duration `yaml:"idle_timeout"`
	} `yaml:"api"`
	ISCSI struct {
		Listen    []string    `yaml:"listen"`
		Advertise []string    `yaml:"advertise"`
		Target    string      `yaml:"target"`
		Limits    ISCSILimits `yaml:"limits"`
	} `yaml:"iscsi"`
	Replication struct {
		Listen       string   `yaml:"listen"`
		Advertise    string   `yaml:"advertise"`
		Timeout      Duration `yaml:"timeout"`
		HeadStart    Duration `yaml:"head_start"`
		BaselineRate string   `yaml:"baseline_rate"`
		// AuthTimeout, MaxHandshakes and MaxHandshakesPerAddress bound
		// the link listener's connections that have not authenticated
		// (see link.Config; defaults 2s, 64 and 8).
		AuthTimeout             Duration `yaml:"auth_timeout"`
		MaxHandshakes           int      `yaml:"max_handshakes"`
		MaxHandshakesPerAddress int      `yaml:"max_handshakes_per_address"`
		// RememberedOutcomes is scsi.LUConfig.RememberedOutcomes (0:
		// scsi.DefaultRememberedOutcomes).
		RememberedOutcomes int `yaml:"remembered_outcomes"`
	} `yaml:"replication"`
	Mediator MediatorConfig `yaml:"mediator"`
}

// MediatorConfig is the mediator section of an array's configuration
// (see Config; defaults mediator.DefaultHeartbeat and
// mediator.DefaultTimeout).
type MediatorConfig struct {
	URL         string   `yaml:"url"`
	AuthKeyFile string   `yaml:"authkey_file"`
	CAFile      string   `yaml:"ca_file"`
	Heartbeat   Duration `yaml:"heartbeat"`
	Timeout     Duration `yaml:"timeout"`
}

// ISCSILimits bound what hosts may hold of the array's iSCSI target (zero
// values take the defaults of package iscsi).
type ISCSILimits struct {
	MaxConnections          int      `yaml:"max_connections"`
	MaxConnectionsPerSource int      `yaml:"max_connections_per_source"`
	MaxLogins               int      `yaml:"max_logins"`
	MaxLoginsPerSource      int      `yaml:"max_logins_per_source"`
	LoginStartTimeout       Duration `yaml:"login_start_timeout"`
	LoginTimeout            Duration `yaml:"login_timeout"`
	MaxWriteBytes           string   `yaml:"max_write_bytes"`
	MaxSessionWriteBytes    string   `yaml:"max_session_write_bytes"`
	MaxReadBytes            string   `yaml:"max_read_bytes"`
	MaxSessionReadBytes     string   `yaml:"max_session_read_bytes"`
	DataOutTimeout          Duration `yaml:"data_out_timeout"`
}

// apply sets the limits in an iSCSI server's configuration.
func (l ISCSILimits) apply(c *iscsi.Config) {
	c.MaxConnections, c.MaxConnectionsPerSource = l.MaxConnections, l.MaxConnectionsPerSource
	c.MaxLogins, c.MaxLoginsPerSource = l.MaxLogins, l.MaxLoginsPerSource
	c.LoginStartTimeout, c.LoginTimeout = l.LoginStartTimeout.Duration, l.LoginTimeout.Duration
	w, _ := units.ParseSize(l.MaxWriteBytes)
	sw, _ := units.ParseSize(l.MaxSessionWriteBytes)
	c.MaxWriteBytes, c.MaxSessionWriteBytes = int64(min(w, 1<<62)), int64(min(sw, 1<<62))
	r, _ := units.ParseSize(l.MaxReadBytes)
	sr, _ := units.ParseSize(l.MaxSessionReadBytes)
	c.MaxReadBytes, c.MaxSessionReadBytes = int64(min(r, 1<<62)), int64(min(sr, 1<<62))
	c.DataOutTimeout = l.DataOutTimeout.Duration
}

func (l ISCSILimits) check() error {
	for name, v := range map[string]int{"max_connections": l.MaxConnections, "max_connections_per_source": l.MaxConnectionsPerSource,
		"max_logins": l.MaxLogins, "max_logins_per_source": l.MaxLoginsPerSource} {
		if v < 0 {
			return fmt.Errorf("iscsi: limits: %s: %d is negative; give a positive number, or 0 for the default", name, v)
		}
	}
	for name, d := range map[string]time.Duration{"login_start_timeout": l.LoginStartTimeout.Duration, "login_timeout": l.LoginTimeout.Duration,
		"data_out_timeout": l.DataOutTimeout.Duration} {
		if d < 0 {
			return fmt.Errorf("iscsi: limits: %s: %v is negative; give a duration such as 10s, or leave it out for the default", name, d)
		}
	}
	for name, v := range map[string]string{"max_write_bytes": l.MaxWriteBytes, "max_session_write_bytes": l.MaxSessionWriteBytes,
		"max_read_bytes": l.MaxReadBytes, "max_session_read_bytes": l.MaxSessionReadBytes} {
		if v == "" {
			continue
		}
		if _, err := units.ParseSize(v); err != nil {
			return fmt.Errorf("iscsi: limits: %s: %w", name, err)
		}
	}
	return nil
}

// baselineRate returns the baseline copy limit in bytes per second (0:
// unlimited).
func (c *Config) baselineRate() uint64 {
	n, _ := units.ParseSize(c.Replication.BaselineRate)
	return n
}

// Duration is a time.Duration written as "24h" in YAML.
type Duration struct{ time.Duration }

// UnmarshalYAML parses a Go duration string.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	var s string
	if err := n.Decode(&s); err != nil {
		return err
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("duration %q: %w (e.g. 24h, 30m)", s, err)
	}
	d.Duration = v
	return nil
}

// MarshalYAML writes the duration as a string.
func (d Duration) MarshalYAML() (any, error) { return d.String(), nil }

// TargetPrefix starts the default target name of every array.
const TargetPrefix = "iqn.2026-11.io.metro:"

var arrayNameRE = regexp.MustCompile(`^[a-z][a-z0-9-]{0,30}$`)

// LoadConfig reads and checks a configuration file.
func LoadConfig(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	var c Config
	dec := yaml.NewDecoder(strings.NewReader(string(data)))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	for _, p := range []*string{&c.DataDir, &c.Mediator.AuthKeyFile, &c.Mediator.CAFile} {
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(filepath.Dir(path), *p)
		}
	}
	if err := c.setDefaults(); err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	return &c, nil
}

func (c *Config) setDefaults() error {
	if !arrayNameRE.MatchString(c.Name) {
		return fmt.Errorf("name %q: use 1-31 lower-case letters, digits or dashes, starting with a letter", c.Name)
	}
	if c.DataDir == "" {
		return fmt.Errorf("data_dir is required")
	}
	if c.Capacity != "" {
		if _, err := units.ParseSize(c.Capacity); err != nil {
			return fmt.Errorf("capacity: %w", err)
		}
	}
	if c.FilesystemShare < 0 || c.FilesystemShare > 100 {
		return fmt.Errorf("filesystem_share %d: give a percentage from 1 to 100 (0 or none: the default, %d)",
			c.FilesystemShare, store.DefaultFilesystemShare)
	}
	if c.MaxDiskStall.Duration < 0 {
		return fmt.Errorf("max_disk_stall %s: give a positive duration (none: the default, %s)",
			c.MaxDiskStall.Duration, store.DefaultMaxDiskStall)
	}
	if c.MaxDiskStall.Duration == 0 {
		c.MaxDiskStall.Duration = store.DefaultMaxDiskStall
	}
	if c.EradicationWindow.Duration == 0 {
		c.EradicationWindow.Duration = 24 * time.Hour
	}
	if c.API.Listen == "" {
		c.API.Listen = "127.0.0.1:8443"
	}
	if c.API.TLS == nil {
		t := true
		c.API.TLS = &t
	}
	if (c.API.CertFile == "") != (c.API.KeyFile == "") {
		return fmt.Errorf("api: give both cert_file and key_file, or neither")
	}
	if !*c.API.TLS {
		if err := checkPlainAPI(c.API.Listen); err != nil {
			return err
		}
	}
	if c.API.Token != "" {
		if err := checkToken(c.API.Token); err != nil {
			return err
		}
	}
	t := c.apiTimeouts()
	c.API.ReadHeaderTimeout.Duration, c.API.ReadTimeout.Duration = t.ReadHeader, t.Read
	c.API.WriteTimeout.Duration, c.API.IdleTimeout.Duration = t.Write, t.Idle
	if len(c.ISCSI.Listen) == 0 {
		c.ISCSI.Listen = []string{"127.0.0.1:3260"}
	}
	if len(c.ISCSI.Advertise) == 0 {
		c.ISCSI.Advertise = c.ISCSI.Listen
	}
	if c.ISCSI.Target == "" {
		c.ISCSI.Target = TargetPrefix + c.Name
	}
	if err := c.ISCSI.Limits.check(); err != nil {
		return err
	}
	if c.Replication.BaselineRate != "" {
		if _, err := units.ParseSize(c.Replication.BaselineRate); err != nil {
			return fmt.Errorf("replication: baseline_rate: %w", err)
		}
	}
	if c.Replication.Timeout.Duration == 0 {
		c.Replication.Timeout.Duration = replication.DefaultTimeout
	}
	if c.Replication.HeadStart.Duration == 0 {
		c.Replication.HeadStart.Duration = replication.DefaultHeadStart
	}
	if c.Replication.Timeout.Duration < 0 || c.Replication.HeadStart.Duration < 0 {
		return fmt.Errorf("replication: timeout and head_start must be positive durations such as 1s (none: the defaults, %s and %s)",
			replication.DefaultTimeout, replication.DefaultHeadStart)
	}
	if c.Replication.AuthTimeout.Duration == 0 {
		c.Replication.AuthTimeout.Duration = link.DefaultAuthTimeout
	}
	if c.Replication.MaxHandshakes == 0 {
		c.Replication.MaxHandshakes = link.DefaultMaxHandshakes
	}
	if c.Replication.MaxHandshakesPerAddress == 0 {
		c.Replication.MaxHandshakesPerAddress = min(link.DefaultMaxHandshakesPerAddress, c.Replication.MaxHandshakes)
	}
	r := &c.Replication
	if r.AuthTimeout.Duration < 0 || r.MaxHandshakes < 0 || r.MaxHandshakesPerAddress < 0 || r.MaxHandshakesPerAddress > r.MaxHandshakes {
		return fmt.Errorf("replication: auth_timeout, max_handshakes and max_handshakes_per_address must be positive, max_handshakes_per_address at most max_handshakes")
	}
	return c.Mediator.setDefaults()
}

// CapacityBytes returns the configured capacity (0: unlimited).
func (c *Config) CapacityBytes() uint64 {
	n, _ := units.ParseSize(c.Capacity)
	return n
}

// apiTimeouts returns the API server's timeouts (defaults for those not
// configured).
func (c *Config) apiTimeouts() api.Timeouts {
	return api.Timeouts{ReadHeader: c.API.ReadHeaderTimeout.Duration, Read: c.API.ReadTimeout.Duration,
		Write: c.API.WriteTimeout.Duration, Idle: c.API.IdleTimeout.Duration}.WithDefaults()
}
