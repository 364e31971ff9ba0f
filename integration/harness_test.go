package integration

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gosheep/gosheep/api"
	"github.com/gosheep/gosheep/client"
	"github.com/gosheep/gosheep/client/vdi"
	"github.com/gosheep/gosheep/proto"
)

// bin holds the binaries built once for the whole package.
var bin string

func TestMain(m *testing.M) {
	flag.Parse()
	if testing.Short() {
		os.Exit(m.Run())
	}
	dir, err := os.MkdirTemp("", "gosheep-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	// Race-checked binaries for tests; plain ones when benchmarking.
	args := []string{"build", "-race", "-o", dir + "/", "../cmd/sheep", "../cmd/dog"}
	if f := flag.Lookup("test.bench"); f != nil && f.Value.String() != "" {
		args = []string{"build", "-o", dir + "/", "../cmd/sheep", "../cmd/dog"}
	}
	cmd := exec.Command("go", args...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building binaries:", err)
		os.Exit(1)
	}
	bin = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func needCluster(t testing.TB) {
	t.Helper()
	if testing.Short() {
		t.Skip("multi-process test (skipped with -short)")
	}
}

// node is one sheep process.
type node struct {
	t      testing.TB
	ip     string
	prefix []string // command prefix, e.g. ip netns exec NS
	dir    string
	args   []string
	cmd    *exec.Cmd
	log    *bytes.Buffer
	mu     sync.Mutex
	done   chan struct{}
}

// cluster is a set of nodes on 127.0.0.<base+i>.
type cluster struct {
	t     testing.TB
	nodes []*node
}

// lockedBuf is a goroutine-safe log sink.
type lockedBuf struct {
	mu  *sync.Mutex
	buf *bytes.Buffer
}

func (w lockedBuf) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.Write(p)
}

// addrBase picks a /24-free loopback block per test so parallel packages
// don't collide: 127.<a>.<b>.x.
func loopback(t testing.TB) string {
	h := 0
	for _, c := range t.Name() {
		h = h*31 + int(c)
	}
	if h < 0 {
		h = -h
	}
	base := fmt.Sprintf("127.%d.%d.", 10+h%200, h/200%250)
	// Another run of the same test (another checkout on this machine) would
	// get the same block: talking to its cluster would format it under it.
	if c, err := net.DialTimeout("tcp", base+"1:7000", 200*time.Millisecond); err == nil {
		c.Close()
		t.Fatalf("%s1:7000 is in use: another run of %s is on this machine", base, t.Name())
	}
	return base
}

func newCluster(t testing.TB, n int, extra ...string) *cluster {
	t.Helper()
	needCluster(t)
	base := loopback(t)
	c := &cluster{t: t}
	for i := 0; i < n; i++ {
		ip := fmt.Sprintf("%s%d", base, i+1)
		args := []string{"--listen", ip + ":7000", "--dir", filepath.Join(t.TempDir(), "d"), "--log-level", "debug"}
		if i > 0 {
			args = append(args, "--join", base+"1:7002")
		}
		args = append(args, extra...)
		nd := &node{t: t, ip: ip, args: args, log: &bytes.Buffer{}}
		c.nodes = append(c.nodes, nd)
		nd.start()
	}
	t.Cleanup(func() {
		for _, nd := range c.nodes {
			nd.kill()
		}
		if t.Failed() {
			for i, nd := range c.nodes {
				nd.mu.Lock()
				t.Logf("---- node %d (%s) log tail ----\n%s", i, nd.ip, tail(nd.log.String(), 60))
				nd.mu.Unlock()
			}
		}
	})
	for _, nd := range c.nodes {
		nd.waitListening()
	}
	return c
}

func tail(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func (n *node) start() {
	argv := append(append([]string{}, n.prefix...), filepath.Join(bin, "sheep"))
	argv = append(argv, n.args...)
	n.cmd = exec.Command(argv[0], argv[1:]...)
	w := lockedBuf{&n.mu, n.log}
	n.cmd.Stdout, n.cmd.Stderr = w, w
	if err := n.cmd.Start(); err != nil {
		n.t.Fatal(err)
	}
	n.done = make(chan struct{})
	cmd, done := n.cmd, n.done
	go func() { cmd.Wait(); close(done) }()
}

func (n *node) addr() string { return n.ip + ":7000" }

func (n *node) waitListening() {
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if c, err := net.DialTimeout("tcp", n.addr(), 200*time.Millisecond); err == nil {
			c.Close()
			return
		}
		select {
		case <-n.done:
			n.t.Fatalf("sheep %s exited during start-up:\n%s", n.ip, n.logTail())
		default:
		}
		time.Sleep(50 * time.Millisecond)
	}
	n.t.Fatalf("sheep %s did not listen", n.ip)
}

func (n *node) logTail() string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return tail(n.log.String(), 40)
}

// kill sends SIGKILL (kill -9) and waits.
func (n *node) kill() {
	if n.cmd == nil || n.cmd.Process == nil {
		return
	}
	select {
	case <-n.done:
		return
	default:
	}
	n.cmd.Process.Signal(syscall.SIGKILL)
	<-n.done
}

// stop stops the node cleanly (SIGTERM) and waits for it to exit.
func (n *node) stop() {
	if n.cmd == nil || n.cmd.Process == nil {
		return
	}
	n.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-n.done:
	case <-time.After(30 * time.Second):
		n.t.Fatalf("sheep %s did not stop within 30 s of SIGTERM:\n%s", n.ip, n.logTail())
	}
}

// logText is everything the node has logged so far.
func (n *node) logText() string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.log.String()
}

func (n *node) restart() {
	n.kill()
	n.start()
	n.waitListening()
}

// conn dials a node.
func (n *node) conn(t testing.TB) *client.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := client.Dial(ctx, n.addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// state fetches the cluster state through node n.
func (n *node) state(t testing.TB) *api.ClusterState {
	t.Helper()
	var st api.ClusterState
	n.status(t, proto.OpClusterState, &st)
	return &st
}

// status asks n for a status document over a fresh connection, closed
// after. A node busy recovering under -race on a loaded machine may drop
// or stall one request: that is retried for 10 s before the test fails.
func (n *node) status(t testing.TB, op proto.Opcode, out any) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := n.tryStatus(op, out)
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s on %s: %v", op, n.ip, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (n *node) tryStatus(op proto.Opcode, out any) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := client.Dial(ctx, n.addr())
	if err != nil {
		return err
	}
	defer c.Close()
	return c.Meta(ctx, op, struct{}{}, out)
}

func waitFor(t testing.TB, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// format waits for every node to be a live member, then formats.
// waitAlive waits until gossip reports every node alive.
func (c *cluster) waitAlive() {
	t := c.t
	t.Helper()
	waitFor(t, "all members alive", 30*time.Second, func() bool {
		alive := 0
		for _, m := range c.nodes[0].state(t).Members {
			if m.Status == "alive" {
				alive++
			}
		}
		return alive == len(c.nodes)
	})
}

func (c *cluster) format(copies string) {
	t := c.t
	t.Helper()
	c.waitAlive()
	red, err := proto.ParseRedundancy(copies)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req := proto.ClusterArgs{Copies: red.NrCopies(), CopyPolicy: red.Policy(), BlockSizeShift: proto.DefaultBSS}
	if err := c.nodes[0].conn(t).MakeFS(ctx, req, "plain"); err != nil {
		t.Fatalf("format: %v", err)
	}
	waitFor(t, "every node formatted", 10*time.Second, func() bool {
		for _, n := range c.nodes {
			if n.state(t).State.Format == nil {
				return false
			}
		}
		return true
	})
}

// dog runs the dog binary against node n.
func (n *node) dog(t testing.TB, stdin []byte, args ...string) (string, error) {
	t.Helper()
	host, port, _ := net.SplitHostPort(n.addr())
	cmd := exec.Command(filepath.Join(bin, "dog"), append(args, "-a", host, "-p", port)...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if err != nil {
		return out.String(), fmt.Errorf("dog %s: %w: %s", strings.Join(args, " "), err, errb.String())
	}
	return out.String(), nil
}

// info fetches a node's status.
func (n *node) info(t testing.TB) *api.NodeInfo {
	t.Helper()
	var ni api.NodeInfo
	n.status(t, proto.OpNodeInfo, &ni)
	return &ni
}

// waitRecovered waits until every given node finished recovering the
// current epoch.
func (c *cluster) waitRecovered(nodes ...*node) uint32 {
	t := c.t
	t.Helper()
	var e uint32
	waitFor(t, "recovery complete", 90*time.Second, func() bool {
		e = nodes[0].state(t).State.Epoch()
		for _, n := range nodes {
			ni := n.info(t)
			if ni.Epoch != e || ni.Recovery.Recovered < e {
				return false
			}
		}
		return true
	})
	return e
}

// opener returns a function that opens name through n on a fresh
// connection (safe from any goroutine).
func (n *node) opener(name string) func() (*vdi.VDI, error) {
	return func() (*vdi.VDI, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		c, err := client.Dial(ctx, n.addr())
		if err != nil {
			return nil, err
		}
		v, err := vdi.Open(ctx, c, name, "", 0)
		if err != nil {
			c.Close()
			return nil, err
		}
		return v, nil
	}
}

// addNode starts one more node joining the cluster.
func (c *cluster) addNode(extra ...string) *node {
	t := c.t
	t.Helper()
	base := strings.TrimSuffix(c.nodes[0].ip, "1")
	ip := fmt.Sprintf("%s%d", base, len(c.nodes)+1)
	args := append([]string{"--listen", ip + ":7000", "--dir", filepath.Join(t.TempDir(), "d"), "--log-level", "debug",
		"--join", c.nodes[0].ip + ":7002"}, extra...)
	nd := &node{t: t, ip: ip, args: args, log: &bytes.Buffer{}}
	c.nodes = append(c.nodes, nd)
	nd.start()
	nd.waitListening()
	return nd
}

// objects counts the data objects (copies and strips) a node holds.
func (n *node) objects(t testing.TB) int { return len(n.dataObjects(t)) }

// dataObjects lists the data objects (copies and strips) a node holds.
func (n *node) dataObjects(t testing.TB) []proto.OID {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	oids, err := n.conn(t).GetObjList(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	var data []proto.OID
	for _, o := range oids {
		if o.IsData() {
			data = append(data, o)
		}
	}
	return data
}

// waitReady waits until the node serves client I/O again.
func (n *node) waitReady(t testing.TB) {
	t.Helper()
	waitFor(t, n.ip+" ready", 60*time.Second, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		var ni api.NodeInfo
		c, err := client.Dial(ctx, n.addr())
		if err != nil {
			return false
		}
		defer c.Close()
		return c.Meta(ctx, proto.OpNodeInfo, struct{}{}, &ni) == nil && ni.Healthy
	})
}
