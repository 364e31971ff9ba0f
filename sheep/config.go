package sheep

import (
	"encoding/base64"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/gosheep/gosheep/proto"
)

// Config is everything `sheep` takes from flags.
type Config struct {
	Dir        string   // data directory
	Listen     string   // native protocol host:port
	Raft       string   // raft host:port ("" = listen port+1)
	Gossip     string   // serf host:port ("" = listen port+2)
	ISCSI      string   // iSCSI portal ("" disables)
	NBD        string   // NBD listener ("" disables)
	Metrics    string   // Prometheus listener ("" disables)
	Join       []string // gossip addresses of members to join
	Zone       int64    // failure zone (-1: derived from the address, as sheep does)
	Capacity   uint64   // bytes this node offers (0: free space of Dir)
	Gateway    bool     // hold no data (weight 0)
	EncryptKey string   // base64 serf key
	Voters     int      // raft voters to keep

	// Embedded defaults for a one-command start.
	AutoFormat string // "" or a redundancy ("1", "3", "4:2"): format if unformatted
	CreateVDI  string // "NAME:SIZE": create the VDI if it does not exist

	Logger *slog.Logger

	ScrubRate     uint64        // bytes per second a background scrub verifies (0 disables)
	ScrubInterval time.Duration // pause between scrub passes
	// ConvergeInterval is the pause between passes comparing replicated
	// copies by their checksums (0 disables).
	ConvergeInterval time.Duration

	// Test hooks.
	EpochDelay time.Duration
}

// DefaultDir is the data directory used when none is given.
func DefaultDir() string {
	if d := os.Getenv("XDG_DATA_HOME"); d != "" {
		return filepath.Join(d, "gosheep")
	}
	if h, err := os.UserHomeDir(); err == nil {
		return filepath.Join(h, ".local", "share", "gosheep")
	}
	return "/var/lib/gosheep"
}

// resolved holds the parsed addresses.
type resolved struct {
	listen, raft, gossip netip.AddrPort
	key                  []byte
	zone                 uint32
}

func parseHostPort(s string) (netip.AddrPort, error) {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return netip.AddrPort{}, err
	}
	if host == "" || host == "localhost" {
		host = "127.0.0.1"
	}
	a, err := netip.ParseAddr(host)
	if err != nil {
		ips, lerr := net.LookupIP(host)
		if lerr != nil || len(ips) == 0 {
			return netip.AddrPort{}, fmt.Errorf("cannot resolve %q", host)
		}
		a, _ = netip.AddrFromSlice(ips[0])
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("bad port %q", port)
	}
	return netip.AddrPortFrom(a.Unmap(), uint16(p)), nil
}

func (c *Config) resolve() (*resolved, error) {
	var r resolved
	var err error
	if r.listen, err = parseHostPort(c.Listen); err != nil {
		return nil, fmt.Errorf("--listen %q: %w", c.Listen, err)
	}
	if r.listen.Addr().IsUnspecified() {
		return nil, fmt.Errorf("--listen %q: give the address peers reach this node on, not a wildcard", c.Listen)
	}
	derive := func(s string, delta uint16, flag string) (netip.AddrPort, error) {
		if s == "" {
			return netip.AddrPortFrom(r.listen.Addr(), r.listen.Port()+delta), nil
		}
		ap, err := parseHostPort(s)
		if err != nil {
			return ap, fmt.Errorf("%s %q: %w", flag, s, err)
		}
		return ap, nil
	}
	if r.raft, err = derive(c.Raft, 1, "--raft"); err != nil {
		return nil, err
	}
	if r.gossip, err = derive(c.Gossip, 2, "--gossip"); err != nil {
		return nil, err
	}
	if c.EncryptKey != "" {
		r.key, err = base64.StdEncoding.DecodeString(c.EncryptKey)
		if err != nil || (len(r.key) != 16 && len(r.key) != 24 && len(r.key) != 32) {
			return nil, fmt.Errorf("--encrypt: want a base64 key of 16, 24 or 32 bytes")
		}
	}
	if c.Zone >= 0 {
		r.zone = uint32(c.Zone)
	} else {
		r.zone = proto.DefaultZone(r.listen.Addr())
	}
	return &r, nil
}
