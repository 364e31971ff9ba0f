// Command sheep is the gosheep daemon: one per node.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime/pprof"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/gosheep/gosheep/sheep"
	"github.com/gosheep/gosheep/units"
)

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	var (
		cfg       sheep.Config
		capacity  string
		scrubRate string
		logLevel  string
		join      string
		cpuprof   string
	)
	cmd := &cobra.Command{
		Use:   "sheep [flags]",
		Short: "gosheep storage daemon",
		Long: `sheep is the gosheep daemon. Run one on every node: it stores objects in
its data directory, joins the cluster over Serf gossip, keeps the cluster
metadata with Raft, and serves volumes over sheepdog's protocol (port 7000),
iSCSI and NBD.`,
		Example: `  # a one-node cluster with a 10 GiB volume, exported over iSCSI and NBD
  sheep --dir /var/lib/gosheep --format 1 --create vol0:10G

  # three nodes on one machine, one loopback address each
  sheep --dir /srv/s1 --listen 127.0.0.1:7000
  sheep --dir /srv/s2 --listen 127.0.0.2:7000 --join 127.0.0.1:7002
  sheep --dir /srv/s3 --listen 127.0.0.3:7000 --join 127.0.0.1:7002
  dog cluster format --copies 3`,
		SilenceUsage: true,
		Args:         cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var lvl slog.Level
			if err := lvl.UnmarshalText([]byte(logLevel)); err != nil {
				return fmt.Errorf("--log-level %q: want debug, info, warn or error", logLevel)
			}
			cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lvl}))
			if capacity != "" {
				n, err := units.ParseSize(capacity)
				if err != nil {
					return fmt.Errorf("--capacity: %w", err)
				}
				cfg.Capacity = n
			}
			if scrubRate != "" && scrubRate != "0" {
				n, err := units.ParseSize(scrubRate)
				if err != nil {
					return fmt.Errorf("--scrub-rate: %w", err)
				}
				cfg.ScrubRate = n
			}
			if cfg.Voters < 0 || (cfg.Voters > 0 && cfg.Voters%2 == 0) {
				return fmt.Errorf("--voters %d: want an odd number (1, 3, 5, ...), or 0 for automatic", cfg.Voters)
			}
			for _, j := range strings.Split(join, ",") {
				if j = strings.TrimSpace(j); j != "" {
					cfg.Join = append(cfg.Join, j)
				}
			}
			host := cfg.Listen
			if i := strings.LastIndex(host, ":"); i >= 0 {
				host = host[:i]
			}
			for _, f := range []struct {
				flag string
				dst  *string
				port string
			}{{"iscsi", &cfg.ISCSI, "3260"}, {"nbd", &cfg.NBD, "10809"}, {"metrics-listen", &cfg.Metrics, "9100"}} {
				if !cmd.Flags().Changed(f.flag) {
					*f.dst = host + ":" + f.port
				}
			}
			if cpuprof != "" {
				// A profile of the whole run, written on a clean stop
				// (SIGTERM/SIGINT); scripts/bench --cpuprofile uses it.
				pf, err := os.Create(cpuprof)
				if err != nil {
					return fmt.Errorf("--cpuprofile: %w", err)
				}
				if err := pprof.StartCPUProfile(pf); err != nil {
					pf.Close()
					return fmt.Errorf("--cpuprofile: %w", err)
				}
				defer func() {
					pprof.StopCPUProfile()
					pf.Close()
				}()
			}
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			d, err := sheep.Start(ctx, cfg)
			if err != nil {
				return err
			}
			select {
			case <-ctx.Done():
				cfg.Logger.Info("signal received, stopping")
				d.Stop()
			case <-d.Done():
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.Dir, "dir", sheep.DefaultDir(), "data directory (objects, raft log, node id)")
	f.StringVar(&cfg.Listen, "listen", "127.0.0.1:7000", "address for sheepdog's protocol (clients, dog and peers); peers reach the node here")
	f.StringVar(&cfg.Raft, "raft", "", "address for Raft (default: listen address, port+1)")
	f.StringVar(&cfg.Gossip, "gossip", "", "address for Serf gossip, TCP and UDP (default: listen address, port+2)")
	f.StringVar(&join, "join", "", "comma-separated gossip addresses of cluster members to join")
	f.StringVar(&cfg.ISCSI, "iscsi", "", `iSCSI portal address (default: listen host, port 3260; "" disables)`)
	f.StringVar(&cfg.NBD, "nbd", "", `NBD address (default: listen host, port 10809; "" disables)`)
	f.StringVar(&cfg.Metrics, "metrics-listen", "", `Prometheus /metrics address (default: listen host, port 9100; "" disables)`)
	f.Int64Var(&cfg.Zone, "zone", -1, "failure zone of this node; copies go to distinct zones (default: derived from the listen address, one zone per host)")
	f.StringVar(&capacity, "capacity", "", "storage this node offers, e.g. 100G (default: free space of --dir)")
	f.BoolVar(&cfg.Gateway, "gateway", false, "gateway only: join and serve clients but store no data")
	f.StringVar(&cfg.EncryptKey, "encrypt", "", "base64 key (16, 24 or 32 bytes) encrypting gossip traffic; the same on every node")
	f.IntVar(&cfg.Voters, "voters", 0, "Raft voters the cluster keeps, odd; other nodes are non-voters (default: five once five or more nodes are up, else three)")
	f.StringVar(&cfg.AutoFormat, "format", "", `format the cluster at start if unformatted, with these copies ("1", "3", "4:2")`)
	f.StringVar(&cfg.CreateVDI, "create", "", "create this volume at start if missing, NAME:SIZE (e.g. vol0:10G)")
	f.StringVar(&scrubRate, "scrub-rate", "32M", `bytes per second the background scrub verifies ("0" disables)`)
	f.DurationVar(&cfg.ScrubInterval, "scrub-interval", 24*time.Hour, "pause between background scrub passes")
	f.DurationVar(&cfg.ConvergeInterval, "converge-interval", 5*time.Minute, `pause between passes that compare the copies of replicated objects by their checksums (reading no data) and give copies left different by a crashed writer the majority's content ("0" disables)`)
	f.StringVar(&logLevel, "log-level", "info", "log level: debug, info, warn, error")
	f.StringVar(&cpuprof, "cpuprofile", "", "write a CPU profile of the run to this file (for developers)")
	f.MarkHidden("cpuprofile")
	cmd.SetArgs(args)
	if err := cmd.Execute(); err != nil {
		return 1
	}
	return 0
}
