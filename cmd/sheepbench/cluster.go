package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/gosheep/gosheep/api"
	"github.com/gosheep/gosheep/client"
	"github.com/gosheep/gosheep/client/vdi"
	"github.com/gosheep/gosheep/proto"
)

const volName = "vol0"

// localCluster is one gosheep cluster of this run, formatted with copies.
type localCluster struct {
	copies shape
	addrs  []string // native addresses, node 1 first
	nodes  []*proc
	ip1    string
	stored uint64 // bytes the nodes' stores allocated once the volume was filled
}

func (c *localCluster) iscsiURL() string {
	return "iscsi://" + c.ip1 + ":3260/iqn.2026-11.io.gosheep:" + volName + "/0"
}

func (c *localCluster) nbdURI() string { return "nbd://" + c.ip1 + ":10809/" + volName }

// stop ends every node cleanly (SIGTERM: CPU profiles get written).
func (c *localCluster) stop() {
	for i := len(c.nodes) - 1; i >= 0; i-- {
		c.nodes[i].stop(syscall.SIGTERM, 15*time.Second)
	}
}

// startCluster starts nodes sheep processes, waits for them to be members,
// formats with copies (as `dog cluster format` does), creates the volume
// and fills it, so that reads hit data rather than holes.
func startCluster(ctx context.Context, pr *procs, o *options, sheepBin string, sn subnet, copies shape) (*localCluster, error) {
	c := &localCluster{copies: copies, ip1: sn.base + "1"}
	for i := 1; i <= o.nodes; i++ {
		ip := sn.base + strconv.Itoa(i)
		dir := filepath.Join(o.dir, fmt.Sprintf("c%s-node%d", copies.tag(), i))
		if err := os.RemoveAll(dir); err != nil {
			return nil, err
		}
		args := []string{"--dir", dir, "--listen", ip + ":7000", "--log-level", "warn"}
		if i > 1 {
			args = append(args, "--join", sn.base+"1:7002")
		}
		if o.cpuprof != "" {
			if err := os.MkdirAll(o.cpuprof, 0o755); err != nil {
				return nil, err
			}
			args = append(args, "--cpuprofile", filepath.Join(o.cpuprof, fmt.Sprintf("node%d-c%s.pprof", i, copies.tag())))
		}
		p, err := pr.start(fmt.Sprintf("c%s-node%d.log", copies.tag(), i), sheepBin, args...)
		if err != nil {
			c.stop()
			return nil, err
		}
		c.nodes = append(c.nodes, p)
		c.addrs = append(c.addrs, ip+":7000")
	}
	if err := c.setup(ctx, o); err != nil {
		c.stop()
		return nil, err
	}
	return c, nil
}

func (c *localCluster) setup(ctx context.Context, o *options) error {
	for i, a := range c.addrs {
		if err := waitListening(ctx, c.nodes[i], a, 30*time.Second); err != nil {
			return err
		}
	}
	logf(o, "copies=%s: %d nodes listening; waiting for membership", c.copies, len(c.addrs))
	conn, err := client.Dial(ctx, c.addrs[0])
	if err != nil {
		return err
	}
	defer conn.Close()
	if err := poll(ctx, 60*time.Second, "every node a live member", func() (bool, error) {
		var st api.ClusterState
		if err := conn.Meta(ctx, proto.OpClusterState, struct{}{}, &st); err != nil {
			return false, nil
		}
		alive := 0
		for _, m := range st.Members {
			if m.Status == "alive" {
				alive++
			}
		}
		return alive == len(c.addrs) && st.Leader != "", nil
	}); err != nil {
		return err
	}
	fmtArgs := proto.ClusterArgs{Copies: c.copies.NrCopies(), CopyPolicy: c.copies.Policy(), BlockSizeShift: proto.DefaultBSS}
	if err := poll(ctx, 30*time.Second, "format", func() (bool, error) {
		err := conn.MakeFS(ctx, fmtArgs, "plain")
		return err == nil, nil
	}); err != nil {
		return err
	}
	// Every node must have applied the format (and wiped its store for
	// it) before objects are written, or it would wipe them.
	for i, a := range c.addrs {
		nc, err := client.Dial(ctx, a)
		if err != nil {
			return err
		}
		err = poll(ctx, 30*time.Second, fmt.Sprintf("node %d formatted", i+1), func() (bool, error) {
			var st api.ClusterState
			if err := nc.Meta(ctx, proto.OpClusterState, struct{}{}, &st); err != nil {
				return false, nil
			}
			return st.State != nil && st.State.Format != nil, nil
		})
		nc.Close()
		if err != nil {
			return err
		}
	}
	// A node that has just formatted may still be catching up with the
	// metadata (STARTUP) for a moment.
	var verr error
	if err := poll(ctx, 30*time.Second, "volume creation", func() (bool, error) {
		_, verr = conn.NewVDI(ctx, volName, proto.VDIArgs{VDISize: o.size})
		switch proto.ResultOf(verr) {
		case proto.ResStartup, proto.ResWaitForFormat:
			return false, nil
		}
		return true, verr
	}); err != nil {
		return fmt.Errorf("create %s: %w", volName, err)
	}
	logf(o, "copies=%s: formatted, %s created (%d MiB); filling it", c.copies, volName, o.size>>20)
	v, err := vdi.Open(ctx, conn, volName, "", 0)
	if err != nil {
		return err
	}
	if err := fillVDI(ctx, v, o.size); err != nil {
		return fmt.Errorf("fill %s: %w", volName, err)
	}
	if err := v.Flush(ctx); err != nil {
		return fmt.Errorf("flush %s: %w", volName, err)
	}
	if c.stored, err = c.usedBytes(ctx); err != nil {
		return err
	}
	logf(o, "copies=%s: %d MiB stored for the %d MiB volume: %.2fx", c.copies, c.stored>>20, o.size>>20, float64(c.stored)/float64(o.size))
	// The front ends learn about the new volume from the metadata they
	// watch; wait until they serve it.
	var urls []string
	if o.paths[pathISCSI] {
		urls = append(urls, c.iscsiURL())
	}
	if o.paths[pathNBD] {
		urls = append(urls, c.nbdURI())
	}
	for _, u := range urls {
		if err := waitServed(ctx, u, o.size); err != nil {
			return err
		}
	}
	return nil
}

// fillVDI writes every byte of v with incompressible data, 1 MiB at a
// time, 16 writes in flight.
func fillVDI(ctx context.Context, v *vdi.VDI, size uint64) error {
	const chunk = 1 << 20
	buf := randomBuf(chunk)
	return parallel(ctx, 16, size/chunk, func(i uint64) error {
		return v.WriteAt(ctx, buf, i*chunk)
	})
}

// poll calls cond until it is true, fails, or d passes.
func poll(ctx context.Context, d time.Duration, what string, cond func() (bool, error)) error {
	deadline := time.Now().Add(d)
	for {
		ok, err := cond()
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out after %v waiting for %s", d, what)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// usedBytes sums the space the nodes' stores allocated for objects.
func (c *localCluster) usedBytes(ctx context.Context) (uint64, error) {
	var sum uint64
	for _, a := range c.addrs {
		nc, err := client.Dial(ctx, a)
		if err != nil {
			return 0, err
		}
		var ni api.NodeInfo
		err = nc.Meta(ctx, proto.OpNodeInfo, struct{}{}, &ni)
		nc.Close()
		if err != nil {
			return 0, fmt.Errorf("node info of %s: %w", a, err)
		}
		sum += ni.Usage.Used
	}
	return sum, nil
}
