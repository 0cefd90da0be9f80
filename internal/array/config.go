package array

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/metro-storage/metro/internal/store"
	"github.com/metro-storage/metro/internal/units"
)

// Config is an array's configuration file (YAML).
//
//	name: array-a                 # unique among paired arrays
//	data_dir: /var/lib/metro      # store, identity, certificate, token
//	capacity: 100G                # usable space; empty: what the filesystem can hold (below)
//	filesystem_share: 40          # percent of data_dir's filesystem, after the store's
//	                              # reserve, that volume data may fill (see internal/store/space.go)
//	eradication_window: 24h       # destroyed volumes stay recoverable
//	api:
//	  listen: 127.0.0.1:8443
//	  tls: true                   # false: plain HTTP (loopback labs only)
//	  cert_file: ""               # default: self-signed, made at first start
//	  key_file: ""
//	  token: ""                   # default: generated at first start into data_dir/api-token
//	iscsi:
//	  listen: [127.0.0.1:3260]
//	  advertise: []               # portals for discovery; default: listen
//	  target: ""                  # default iqn.2026-11.io.metro:<name>
//	replication:
//	  listen: 127.0.0.1:7443      # the link to the peer array
//	  advertise: ""               # address the peer dials; default: listen
//	  timeout: 4s                 # no heartbeat for this long: the peer is lost
//	  baseline_rate: ""           # limit baseline copies, e.g. 100M (per second)
type Config struct {
	Name              string   `yaml:"name"`
	DataDir           string   `yaml:"data_dir"`
	Capacity          string   `yaml:"capacity"`
	FilesystemShare   int      `yaml:"filesystem_share"`
	EradicationWindow Duration `yaml:"eradication_window"`
	API               struct {
		Listen   string `yaml:"listen"`
		TLS      *bool  `yaml:"tls"`
		CertFile string `yaml:"cert_file"`
		KeyFile  string `yaml:"key_file"`
		Token    string `yaml:"token"`
	} `yaml:"api"`
	ISCSI struct {
		Listen    []string `yaml:"listen"`
		Advertise []string `yaml:"advertise"`
		Target    string   `yaml:"target"`
	} `yaml:"iscsi"`
	Replication struct {
		Listen       string   `yaml:"listen"`
		Advertise    string   `yaml:"advertise"`
		Timeout      Duration `yaml:"timeout"`
		BaselineRate string   `yaml:"baseline_rate"`
	} `yaml:"replication"`
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
	if c.DataDir != "" && !filepath.IsAbs(c.DataDir) {
		c.DataDir = filepath.Join(filepath.Dir(path), c.DataDir)
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
	if len(c.ISCSI.Listen) == 0 {
		c.ISCSI.Listen = []string{"127.0.0.1:3260"}
	}
	if len(c.ISCSI.Advertise) == 0 {
		c.ISCSI.Advertise = c.ISCSI.Listen
	}
	if c.ISCSI.Target == "" {
		c.ISCSI.Target = TargetPrefix + c.Name
	}
	if c.Replication.BaselineRate != "" {
		if _, err := units.ParseSize(c.Replication.BaselineRate); err != nil {
			return fmt.Errorf("replication: baseline_rate: %w", err)
		}
	}
	if c.Replication.Timeout.Duration == 0 {
		c.Replication.Timeout.Duration = 4 * time.Second
	}
	return nil
}

// CapacityBytes returns the configured capacity (0: unlimited).
func (c *Config) CapacityBytes() uint64 {
	n, _ := units.ParseSize(c.Capacity)
	return n
}
