package integration

import (
	"bytes"
	"strings"
	"testing"
)

// TestDogWriteRestartRead is the foundation's end-to-end check with the
// real binaries: format with dog, create a VDI, write 64 MiB of random data
// with `dog vdi write`, restart the daemon, read it back identical with
// `dog vdi read`.
func TestDogWriteRestartRead(t *testing.T) {
	c := newCluster(t, 1)
	n := c.nodes[0]
	waitFor(t, "member alive", 30e9, func() bool { return len(n.state(t).Members) == 1 })
	if out, err := n.dog(t, nil, "cluster", "format", "--copies", "1"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if out, err := n.dog(t, nil, "vdi", "create", "vol", "128M"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	data := randomBytes(64 << 20)
	if out, err := n.dog(t, data, "vdi", "write", "vol", "1048576", "67108864"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	list, err := n.dog(t, nil, "vdi", "list")
	if err != nil || !strings.Contains(list, "vol") || !strings.Contains(list, "68 MB") { // 17 objects touched
		t.Fatalf("vdi list after write (%v):\n%s", err, list)
	}
	t.Logf("injecting: restart sheep")
	n.restart()
	n.waitReady(t)
	out, err := n.dog(t, nil, "vdi", "read", "vol", "1048576", "67108864")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal([]byte(out), data) {
		t.Fatalf("dog vdi read returned %d bytes that differ from the 64 MiB written", len(out))
	}
	t.Logf("verified: 64 MiB written with dog read back identical after a restart")
}

// TestDogClusterCommands drives a 3-node cluster with dog only: node list
// marks the node dog talks to, two concurrent `vdi create` of one name on
// two nodes yield exactly one VDI, `node kill` takes a node out and
// `cluster info` shows the new epoch.
func TestDogClusterCommands(t *testing.T) {
	c := newCluster(t, 3)
	a, b, cc := c.nodes[0], c.nodes[1], c.nodes[2]
	waitFor(t, "members alive", 30e9, func() bool { return len(a.state(t).Members) == 3 })
	if out, err := a.dog(t, nil, "cluster", "format", "--copies", "2"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	out, err := b.dog(t, nil, "node", "list")
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	stars := 0
	for _, l := range lines[1:] {
		if strings.HasPrefix(l, "*") {
			stars++
			if !strings.Contains(l, b.ip+":7000") {
				t.Fatalf("the * marks another node:\n%s", out)
			}
		}
	}
	if len(lines) != 4 || stars != 1 {
		t.Fatalf("node list:\n%s", out)
	}
	// Concurrent creates of one name on two nodes.
	type res struct {
		out string
		err error
	}
	ch := make(chan res, 2)
	for _, n := range []*node{b, cc} {
		go func() {
			o, err := n.dog(t, nil, "vdi", "create", "race", "1G")
			ch <- res{o, err}
		}()
	}
	r1, r2 := <-ch, <-ch
	if (r1.err == nil) == (r2.err == nil) {
		t.Fatalf("want exactly one success: %v / %v", r1.err, r2.err)
	}
	list, _ := a.dog(t, nil, "vdi", "list", "-r")
	if strings.Count(list, "race ") != 1 {
		t.Fatalf("vdi list after the race:\n%s", list)
	}
	t.Logf("verified: concurrent dog vdi create on two nodes: one succeeded, one failed (%v)", append([]error{}, r1.err, r2.err))
	// node kill by id: find cc's id in node list.
	var ccID string
	for _, l := range lines[1:] {
		if strings.Contains(l, cc.ip+":7000") {
			ccID = strings.Fields(strings.TrimPrefix(l, "*"))[0]
		}
	}
	before, _ := a.dog(t, nil, "cluster", "info")
	if out, err := a.dog(t, nil, "node", "kill", ccID); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	t.Logf("injecting: dog node kill %s (%s)", ccID, cc.ip)
	waitFor(t, "killed node gone from node list", 30e9, func() bool {
		out, err := a.dog(t, nil, "node", "list")
		return err == nil && !strings.Contains(out, cc.ip+":7000")
	})
	after, _ := a.dog(t, nil, "cluster", "info")
	if strings.Count(after, "\n") <= strings.Count(before, "\n") {
		t.Fatalf("cluster info shows no new epoch:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	t.Logf("verified: node list, concurrent create, node kill and the epoch history through dog")
}
