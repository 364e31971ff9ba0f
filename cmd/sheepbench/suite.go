package main

import (
	"context"
	"errors"
	"fmt"

	"github.com/gosheep/gosheep/client"
	"github.com/gosheep/gosheep/client/vdi"
)

// Servers, as they appear in the results.
const (
	srvGosheep = "gosheep"
	srvTgt     = "tgt"
	srvNbdkit  = "nbdkit"
	srvRaw     = "raw-disk"
)

// runSuite measures every pattern and queue depth on cl and on the peers,
// each pair back to back, o.reps times. Odd repetitions run the peer
// first, so neither side always gets the warmer cache.
func runSuite(ctx context.Context, o *options, rep *report, cl *localCluster, peers *peerSet, copies shape) error {
	rep.loadBefore(copies)
	defer rep.loadAfter(copies)
	qb := &qemuBench{counts: map[string]int{}}
	var v *vdi.VDI
	if o.paths[pathNative] {
		conn, err := client.Dial(ctx, cl.addrs[0])
		if err != nil {
			return err
		}
		defer conn.Close()
		if v, err = vdi.Open(ctx, conn, volName, "", 0); err != nil {
			return err
		}
	}
	type side struct {
		server string
		pids   []int // the serving processes, for CPU per request (none: raw disk)
		run    func() (sample, error)
	}
	var ourPids []int
	for _, n := range cl.nodes {
		ourPids = append(ourPids, n.pid())
	}
	var tgtPids, nbdkitPids []int
	if peers.tgt != nil {
		tgtPids = []int{peers.tgt.p.pid()}
	}
	if peers.nbdkit != nil {
		nbdkitPids = []int{peers.nbdkit.pid()}
	}
	type pair struct {
		path  string
		sides [2]side // ours, peer
	}
	for r := range o.reps {
		for _, p := range o.patterns {
			for _, qd := range o.qds {
				var pairs []pair
				if o.paths[pathISCSI] {
					pairs = append(pairs, pair{pathISCSI, [2]side{
						{srvGosheep, ourPids, func() (sample, error) {
							return qb.run(ctx, "ours"+p.Name+fmt.Sprint(qd), cl.iscsiURL(), o.size, p, qd, o.seconds)
						}},
						{srvTgt, tgtPids, func() (sample, error) {
							return qb.run(ctx, "tgt"+p.Name+fmt.Sprint(qd), peers.tgt.url, o.size, p, qd, o.seconds)
						}},
					}})
				}
				if o.paths[pathNBD] {
					pairs = append(pairs, pair{pathNBD, [2]side{
						{srvGosheep, ourPids, func() (sample, error) {
							return runFio(ctx, o.dir, fioTarget{uri: cl.nbdURI()}, p, qd, o.seconds)
						}},
						{srvNbdkit, nbdkitPids, func() (sample, error) {
							return runFio(ctx, o.dir, fioTarget{uri: peers.nbdURI}, p, qd, o.seconds)
						}},
					}})
				}
				if o.paths[pathNative] {
					pairs = append(pairs, pair{pathNative, [2]side{
						{srvGosheep, ourPids, func() (sample, error) {
							return runNative(ctx, v, o.size, p, qd, o.seconds)
						}},
						{srvRaw, nil, func() (sample, error) {
							return runFio(ctx, o.dir, fioTarget{raw: peers.raw, size: o.size}, p, qd, o.seconds)
						}},
					}})
				}
				for _, pr := range pairs {
					order := []int{0, 1}
					if r%2 == 1 {
						order = []int{1, 0}
					}
					var got [2]sample
					for _, k := range order {
						sd := pr.sides[k]
						before, cerr := readCPU(sd.pids)
						s, err := sd.run()
						if err != nil {
							return fmt.Errorf("copies=%s %s %s QD%d on %s: %w", copies, pr.path, p, qd, sd.server, err)
						}
						after, cerr2 := readCPU(sd.pids)
						if cerr == nil && cerr2 == nil {
							s.perOp(before, after, len(sd.pids) > 0)
						} else {
							logf(o, "CPU per request not measured: %v", errors.Join(cerr, cerr2))
						}
						got[k] = s
						rep.add(copies, pr.path, sd.server, p, qd, s)
					}
					logf(o, "copies=%s rep %d/%d %-6s %-14s QD%-2d  gosheep %8.1f MiB/s %8.0f IOPS   %-8s %8.1f MiB/s %8.0f IOPS",
						copies, r+1, o.reps, pr.path, p, qd, got[0].MiBps, got[0].IOPS, pr.sides[1].server, got[1].MiBps, got[1].IOPS)
				}
			}
		}
	}
	return nil
}
