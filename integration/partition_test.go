package integration

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gosheep/gosheep/proto"
)

func run(t testing.TB, args ...string) error {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %v: %s", strings.Join(args, " "), err, out)
	}
	return nil
}

// netns builds n network namespaces on a bridge (10.77.<net>.i/24, the test
// reaches them from 10.77.<net>.254) and returns their names and addresses.
func netns(t testing.TB, net, n int) ([]string, []string) {
	t.Helper()
	br := fmt.Sprintf("gsbr%d", net)
	if err := run(t, "ip", "link", "add", br, "type", "bridge"); err != nil {
		t.Skipf("network namespaces unavailable here (%v): partition test needs CAP_NET_ADMIN", err)
	}
	t.Cleanup(func() { exec.Command("ip", "link", "del", br).Run() })
	must := func(args ...string) {
		if err := run(t, args...); err != nil {
			t.Fatal(err)
		}
	}
	must("ip", "addr", "add", fmt.Sprintf("10.77.%d.254/24", net), "dev", br)
	must("ip", "link", "set", br, "up")
	var names, ips []string
	for i := 1; i <= n; i++ {
		ns := fmt.Sprintf("gs%d_%d", net, i)
		veth, peer := fmt.Sprintf("gsv%d_%d", net, i), fmt.Sprintf("gsp%d_%d", net, i)
		exec.Command("ip", "netns", "del", ns).Run()
		must("ip", "netns", "add", ns)
		t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
		must("ip", "link", "add", veth, "type", "veth", "peer", "name", peer)
		must("ip", "link", "set", peer, "netns", ns)
		must("ip", "link", "set", veth, "master", br)
		must("ip", "link", "set", veth, "up")
		ip := fmt.Sprintf("10.77.%d.%d", net, i)
		must("ip", "netns", "exec", ns, "ip", "addr", "add", ip+"/24", "dev", peer)
		must("ip", "netns", "exec", ns, "ip", "link", "set", peer, "up")
		must("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
		names = append(names, ns)
		ips = append(ips, ip)
	}
	return names, ips
}

// TestPartitionMinorityRefusesMetadata cuts one of three nodes off from the
// other two (each in its own network namespace; the test still reaches all)
// and checks that the minority accepts neither metadata changes nor I/O,
// the majority carries on, and after healing the cluster agrees on the
// majority's history.
func TestPartitionMinorityRefusesMetadata(t *testing.T) {
	needCluster(t)
	nss, ips := netns(t, 9, 3)
	c := &cluster{t: t}
	for i := range nss {
		args := []string{"--listen", ips[i] + ":7000", "--dir", filepath.Join(t.TempDir(), "d"), "--log-level", "debug"}
		if i > 0 {
			args = append(args, "--join", ips[0]+":7002")
		}
		nd := &node{t: t, ip: ips[i], args: args, log: &bytes.Buffer{}, prefix: []string{"ip", "netns", "exec", nss[i]}}
		c.nodes = append(c.nodes, nd)
		nd.start()
	}
	t.Cleanup(func() {
		for _, nd := range c.nodes {
			nd.kill()
		}
		if t.Failed() {
			for i, nd := range c.nodes {
				t.Logf("---- node %d log tail ----\n%s", i, nd.logTail())
			}
		}
	})
	for _, nd := range c.nodes {
		nd.waitListening()
	}
	c.format("3")
	a, b, m := c.nodes[0], c.nodes[1], c.nodes[2]
	createVDI(t, a, "before", 8<<20)
	qemuIO(t, nbdURL(a, "before"), "write -P 0x11 0 64k", "flush")

	// Partition: m cannot reach a or b, nor they m (blackhole routes).
	block := func(add bool) {
		verb := "add"
		if !add {
			verb = "del"
		}
		for _, pair := range [][2]int{{2, 0}, {2, 1}, {0, 2}, {1, 2}} {
			if err := run(t, "ip", "netns", "exec", nss[pair[0]], "ip", "route", verb, "blackhole", ips[pair[1]]+"/32"); err != nil {
				t.Fatal(err)
			}
		}
	}
	t.Logf("injecting: partition %s away from %s and %s", m.ip, a.ip, b.ip)
	block(true)
	waitFor(t, "minority fenced", 30*time.Second, func() bool { return !m.info(t).Healthy })
	waitFor(t, "majority epoch without the minority", 30*time.Second, func() bool {
		return len(a.state(t).State.Current().Members) == 2
	})

	// The minority refuses metadata changes and I/O.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := m.conn(t).NewVDI(ctx, "minority", proto.VDIArgs{VDISize: 1 << 20}); err == nil {
		t.Fatal("the minority created a VDI")
	} else {
		t.Logf("minority NEW_VDI refused: %v", err)
	}
	// Object I/O too: a write of the VDI's inode through the minority.
	wreq := proto.Request{Opcode: proto.OpWriteObj, Flags: proto.FlagWrite}
	wreq.SetObj(proto.ObjArgs{OID: uint64(proto.InodeOID(proto.NameToVID("before"))), Offset: proto.InodeIndexOffset})
	if _, _, err := m.conn(t).Do(ctx, wreq, make([]byte, 4), nil); !errors.Is(err, proto.ResHalt) {
		t.Fatalf("minority write: %v, want HALT", err)
	} else {
		t.Logf("minority write refused: %v", err)
	}
	// The majority carries on.
	qemuIO(t, nbdURL(a, "before"), "write -P 0x22 0 64k", "flush")
	// Nor does the minority serve reads over NBD (or iSCSI): its copy of
	// what the majority just rewrote is outdated. It waits for the quorum
	// instead (until its I/O timeout): no answer within 5 s.
	rctx, rcancel := context.WithTimeout(ctx, 5*time.Second)
	out, _ := exec.CommandContext(rctx, "qemu-io", "-f", "raw", "-r", "-c", "read -v 0 4k", nbdURL(m, "before")).CombinedOutput()
	rcancel()
	if strings.Contains(string(out), "read 4096/4096") {
		t.Fatalf("the minority served a read (outdated: the majority has rewritten it):\n%s", out)
	}
	createVDI(t, a, "majority", 8<<20)
	data := randomBytes(4 << 20)
	if err := openVDI(t, b, "majority").WriteAt(ctx, data, 0); err != nil {
		t.Fatal(err)
	}

	t.Logf("injecting: heal the partition")
	block(false)
	waitFor(t, "three-member epoch again", 60*time.Second, func() bool {
		return len(a.state(t).State.Current().Members) == 3 && m.info(t).Healthy
	})
	for _, n := range c.nodes {
		st := n.state(t).State
		if _, err := st.Lookup("minority", "", 0); err == nil {
			t.Fatalf("%s knows the VDI the minority tried to create", n.ip)
		}
		if _, err := st.Lookup("majority", "", 0); err != nil {
			t.Fatalf("%s misses the majority's VDI: %v", n.ip, err)
		}
	}
	got := make([]byte, len(data))
	waitFor(t, "minority node serves the majority's data", 60*time.Second, func() bool {
		v := openVDIOr(t, m, "majority")
		return v != nil && v.ReadAt(ctx, got, 0) == nil
	})
	if !bytes.Equal(got, data) {
		t.Fatal("the healed node reads different data")
	}
	qemuIO(t, nbdURL(m, "before"), "read -P 0x22 0 64k")
	t.Logf("verified: minority refused metadata and I/O; after healing every node agrees and serves the majority's writes")
}
