// Command sheepbench measures a local gosheep cluster against the peers a
// user would otherwise run: tgt (iSCSI), nbdkit (NBD) and the raw disk. It
// starts the cluster and the peers itself, runs every test in one go, prints
// a table and writes the results as JSON. scripts/bench builds and runs it.
//
//	sheepbench [-n nodes] [-c 1,3] [-t seconds] [-r reps] [--quick] [--dir DIR] [--json FILE]
//
// Every measurement of ours is taken right next to the same measurement of
// its peer, so that load from other processes on the machine hits both
// alike; each pair is repeated -r times and the median is reported.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// options are the command-line settings.
type options struct {
	nodes    int
	copies   []shape
	seconds  float64
	reps     int
	quick    bool
	dir      string
	jsonPath string
	size     uint64
	qds      []int
	paths    map[string]bool
	patterns []pattern
	cpuprof  string
	keep     bool
	stockTgt bool
	selfProf string
	log      io.Writer
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	o, err := parseFlags(args, stderr)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintln(stderr, "sheepbench:", err)
		return 64
	}
	o.log = stderr
	// A signal cancels the run; everything started is stopped on the way out.
	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigs)
	go func() {
		if s, ok := <-sigs; ok {
			cancel(fmt.Errorf("%v received", s))
		}
	}()
	if o.selfProf != "" {
		f, err := os.Create(o.selfProf)
		if err != nil {
			fmt.Fprintln(stderr, "sheepbench:", err)
			return 1
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			fmt.Fprintln(stderr, "sheepbench:", err)
			return 1
		}
		defer pprof.StopCPUProfile()
	}
	rep, err := benchmark(ctx, o)
	if rep != nil && len(rep.Results) > 0 {
		rep.printTable(stdout)
		if werr := rep.writeJSON(o.jsonPath); werr != nil {
			fmt.Fprintln(stderr, "sheepbench:", werr)
			if err == nil {
				err = werr
			}
		} else {
			fmt.Fprintf(stdout, "\nresults written to %s\n", o.jsonPath)
		}
	}
	if ctx.Err() != nil {
		fmt.Fprintf(stderr, "sheepbench: interrupted (%v)\n", context.Cause(ctx))
		return 130
	}
	if err != nil {
		fmt.Fprintln(stderr, "sheepbench:", err)
		return 1
	}
	return 0
}

func parseFlags(args []string, stderr io.Writer) (*options, error) {
	fs := flag.NewFlagSet("sheepbench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	o := &options{}
	var copies, qds, paths, pats, size string
	fs.IntVar(&o.nodes, "n", 3, "nodes in the local cluster")
	fs.StringVar(&copies, "c", "1,3", `redundancy: one cluster per value, comma-separated: N copies, or DATA:PARITY erasure coding such as "4:2" (needs DATA+PARITY nodes)`)
	fs.Float64Var(&o.seconds, "t", 5, "seconds per test")
	fs.IntVar(&o.reps, "r", 3, "repetitions of every test (the median is reported)")
	fs.BoolVar(&o.quick, "quick", false, "smoke run: one repetition, QD 32 only, the first -c value, a 256 MiB volume")
	fs.StringVar(&o.dir, "dir", "", "work directory for data dirs, peer images and logs (default: a new directory under $TMPDIR)")
	fs.StringVar(&o.jsonPath, "json", "bench-results.json", "write the results here")
	fs.StringVar(&size, "size", "", "volume and peer image size (default 1G; 256M with --quick)")
	fs.StringVar(&qds, "qd", "1,32", "queue depths")
	fs.StringVar(&paths, "paths", "iscsi,nbd,native", "front ends to measure (each with its peer)")
	fs.StringVar(&pats, "patterns", "seq-read,seq-write,rand-read,rand-write", "access patterns to measure")
	fs.StringVar(&o.cpuprof, "cpuprofile", "", "directory for a CPU profile of every sheep (node<i>-c<copies>.pprof)")
	fs.BoolVar(&o.stockTgt, "stock-tgt", false, "run tgt with its defaults (8 KiB segments, mmap per command buffer) instead of our target's negotiation limits")
	fs.StringVar(&o.selfProf, "selfprofile", "", "write a CPU profile of sheepbench itself (the native load generator) to this file")
	fs.BoolVar(&o.keep, "keep", false, "keep the work directory (logs, images) after the run")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: sheepbench [-n nodes] [-c 1,3,4:2] [-t seconds] [-r reps] [--quick] [options]")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	var err error
	if o.copies, err = shapeList(copies); err != nil {
		return nil, fmt.Errorf("-c: %w", err)
	}
	if o.qds, err = intList(qds); err != nil {
		return nil, fmt.Errorf("-qd: %w", err)
	}
	o.paths = map[string]bool{}
	for _, p := range strings.Split(paths, ",") {
		switch p = strings.TrimSpace(p); p {
		case pathISCSI, pathNBD, pathNative:
			o.paths[p] = true
		case "":
		default:
			return nil, fmt.Errorf("-paths: unknown path %q (want iscsi, nbd, native)", p)
		}
	}
	for _, name := range strings.Split(pats, ",") {
		name = strings.TrimSpace(name)
		found := false
		for _, p := range patterns() {
			if p.Name == name {
				o.patterns = append(o.patterns, p)
				found = true
			}
		}
		if !found && name != "" {
			return nil, fmt.Errorf("-patterns: unknown pattern %q", name)
		}
	}
	if len(o.patterns) == 0 || len(o.paths) == 0 {
		return nil, fmt.Errorf("nothing to measure")
	}
	if o.nodes < 1 || o.nodes > 50 {
		return nil, fmt.Errorf("-n %d: want 1..50", o.nodes)
	}
	for _, c := range o.copies {
		if int(c.NrCopies()) > o.nodes {
			return nil, fmt.Errorf("-c %s: needs %d nodes, -n is %d", c, c.NrCopies(), o.nodes)
		}
	}
	if o.seconds <= 0 || o.reps < 1 {
		return nil, fmt.Errorf("-t and -r must be positive")
	}
	if o.quick {
		o.reps = 1
		o.copies = o.copies[:1]
		o.qds = []int{32}
	}
	if size == "" {
		size = "1G"
		if o.quick {
			size = "256M"
		}
	}
	if o.size, err = parseSize(size); err != nil {
		return nil, fmt.Errorf("-size: %w", err)
	}
	if o.size < 64<<20 || o.size%(4<<20) != 0 {
		return nil, fmt.Errorf("-size %s: want a multiple of 4 MiB, at least 64 MiB", size)
	}
	if o.cpuprof != "" {
		if o.cpuprof, err = filepath.Abs(o.cpuprof); err != nil {
			return nil, err
		}
	}
	return o, nil
}

func intList(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		n, err := strconv.Atoi(f)
		if err != nil || n < 1 {
			return nil, fmt.Errorf("bad number %q", f)
		}
		out = append(out, n)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("empty list")
	}
	return out, nil
}

// parseSize reads 256M, 1G, 1073741824.
func parseSize(s string) (uint64, error) {
	mult := uint64(1)
	switch {
	case strings.HasSuffix(s, "G"):
		mult, s = 1<<30, strings.TrimSuffix(s, "G")
	case strings.HasSuffix(s, "M"):
		mult, s = 1<<20, strings.TrimSuffix(s, "M")
	}
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil || n == 0 || n > (1<<44)/mult {
		return 0, fmt.Errorf("bad size %q", s)
	}
	return n * mult, nil
}

// benchmark runs everything and returns the report, also on error (with
// what was measured so far).
func benchmark(ctx context.Context, o *options) (*report, error) {
	for _, tool := range neededTools(o) {
		if _, err := lookPath(tool); err != nil {
			return nil, fmt.Errorf("%s not found (install: scripts/deps): %w", tool, err)
		}
	}
	sheepBin, err := findSheep()
	if err != nil {
		return nil, err
	}
	if o.dir == "" {
		if o.dir, err = os.MkdirTemp("", "gosheep-bench-"); err != nil {
			return nil, err
		}
	} else if err := os.MkdirAll(o.dir, 0o755); err != nil {
		return nil, err
	}
	if o.dir, err = filepath.Abs(o.dir); err != nil {
		return nil, err
	}
	if !o.keep {
		defer os.RemoveAll(o.dir)
	}
	pr := newProcs(o.dir, o.log)
	defer pr.stopAll()

	rep := newReport(o)
	sn, err := pickSubnet(o.nodes)
	if err != nil {
		return rep, err
	}
	logf(o, "work dir %s, cluster on %s1..%d, peers on %s", o.dir, sn.base, o.nodes, sn.peer)

	peerImg := filepath.Join(o.dir, "peer.img")
	rawImg := filepath.Join(o.dir, "raw.img")
	for _, f := range []string{peerImg, rawImg} {
		if err := fillFile(ctx, f, o.size); err != nil {
			return rep, err
		}
	}
	var peers peerSet
	if o.paths[pathISCSI] {
		if peers.tgt, err = startTgt(ctx, pr, o.dir, sn.peer, peerImg, o.stockTgt); err != nil {
			return rep, err
		}
		defer peers.tgt.stop()
	}
	if o.paths[pathNBD] {
		if peers.nbdkit, peers.nbdURI, err = startNbdkit(ctx, pr, sn.peer, peerImg); err != nil {
			return rep, err
		}
	}
	peers.raw = newRawFile(rawImg)

	for _, copies := range o.copies {
		if err := ctx.Err(); err != nil {
			return rep, err
		}
		cl, err := startCluster(ctx, pr, o, sheepBin, sn, copies)
		if err != nil {
			return rep, err
		}
		rep.addStorage(copies, o.size, cl.stored)
		err = runSuite(ctx, o, rep, cl, &peers, copies)
		cl.stop()
		if err != nil {
			return rep, err
		}
	}
	rep.Complete = true
	return rep, nil
}

func logf(o *options, format string, args ...any) {
	fmt.Fprintf(o.log, "%s  %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
}

func neededTools(o *options) []string {
	tools := []string{"fio"}
	if o.paths[pathISCSI] {
		tools = append(tools, "qemu-img", "tgtd", "tgtadm")
	}
	if o.paths[pathNBD] {
		tools = append(tools, "nbdkit")
	}
	return tools
}

// findSheep is the sheep binary next to this one (go build -o bin/ ./cmd/...).
func findSheep() (string, error) {
	self, err := os.Executable()
	if err != nil {
		return "", err
	}
	p := filepath.Join(filepath.Dir(self), "sheep")
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("no sheep binary next to %s (build with: go build -o bin/ ./cmd/...)", self)
	}
	return p, nil
}
