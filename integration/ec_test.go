package integration

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestECOverISCSISurvivesTwoNodes: a 6-node cluster formatted with
// `dog cluster format --copies=4:2`, a `dog vdi create -c 4:2` VDI filled
// with 64 MiB of random data through iSCSI (qemu-img). Two nodes are
// killed with SIGKILL and every byte reads back identical through iSCSI
// (degraded reads rebuild from parity); the two come back, recovery ends,
// `dog vdi check` finds every strip present, and after killing two other
// nodes the data still reads back identical — redundancy was restored.
func TestECOverISCSISurvivesTwoNodes(t *testing.T) {
	needTool(t, "qemu-img")
	needTool(t, "iscsi-ls")
	// Five Raft voters: metadata keeps a quorum with any two nodes down.
	c := newCluster(t, 6, "--voters", "5")
	waitFor(t, "all members alive", 30*time.Second, func() bool {
		alive := 0
		for _, m := range c.nodes[0].state(t).Members {
			if m.Status == "alive" {
				alive++
			}
		}
		return alive == len(c.nodes)
	})
	a := c.nodes[0]
	if out, err := a.dog(t, nil, "cluster", "format", "--copies=4:2"); err != nil {
		t.Fatalf("format: %v\n%s", err, out)
	}
	waitFor(t, "every node formatted", 20*time.Second, func() bool {
		for _, n := range c.nodes {
			if n.state(t).State.Format == nil {
				return false
			}
		}
		return true
	})
	if out, err := a.dog(t, nil, "vdi", "create", "-c", "4:2", "ec", "64M"); err != nil {
		t.Fatalf("vdi create: %v\n%s", err, out)
	}
	list, err := a.dog(t, nil, "vdi", "list")
	if err != nil || !strings.Contains(list, "4:2") {
		t.Fatalf("vdi list does not show a 4:2 VDI (err %v):\n%s", err, list)
	}
	waitTarget(t, a)

	dir := t.TempDir()
	src := filepath.Join(dir, "src.img")
	data := randomBytes(64 << 20)
	if err := os.WriteFile(src, data, 0o644); err != nil {
		t.Fatal(err)
	}
	runCmd(t, 3*time.Minute, "qemu-img", "convert", "-n", "-O", "raw", "-t", "none", "-m", "16", "-W", src, iscsiURL(a, "ec"))
	t.Logf("wrote 64 MiB of random data through iSCSI on %s into a 4:2 VDI", a.ip)

	readBack := func(via *node, what string) {
		t.Helper()
		waitTarget(t, via)
		back := filepath.Join(dir, "back.img")
		os.Remove(back)
		runCmd(t, 3*time.Minute, "qemu-img", "convert", "-O", "raw", "-m", "16", iscsiURL(via, "ec"), back)
		got, err := os.ReadFile(back)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, data) {
			n := 0
			for i := range min(len(got), len(data)) {
				if got[i] != data[i] {
					n++
				}
			}
			t.Fatalf("%s: image read through %s differs (%d of %d bytes wrong, length %d)", what, via.ip, n, len(data), len(got))
		}
		t.Logf("verified: %s: all 64 MiB read back identical through iSCSI on %s", what, via.ip)
	}

	// Two strips of every stripe may go: kill -9 two nodes.
	c.nodes[4].kill()
	c.nodes[5].kill()
	t.Logf("injected: SIGKILL to %s and %s", c.nodes[4].ip, c.nodes[5].ip)
	readBack(c.nodes[1], "two nodes down")

	// They return: recovery brings every strip back to its place.
	c.nodes[4].start()
	c.nodes[5].start()
	c.nodes[4].waitListening()
	c.nodes[5].waitListening()
	t.Logf("restarted %s and %s", c.nodes[4].ip, c.nodes[5].ip)
	waitFor(t, "all members alive again", 60*time.Second, func() bool {
		alive := 0
		for _, m := range a.state(t).Members {
			if m.Status == "alive" {
				alive++
			}
		}
		return alive == len(c.nodes)
	})
	c.waitRecovered(c.nodes...)
	out, err := a.dog(t, nil, "vdi", "check", "ec")
	if err != nil {
		t.Fatalf("vdi check after recovery: %v\n%s", err, out)
	}
	if !strings.Contains(out, " 0 missing, 0 mismatched, 0 corrupt, 0 repaired, 0 lost: fine") {
		t.Fatalf("vdi check after recovery does not find every strip in place:\n%s", out)
	}
	t.Logf("verified: dog vdi check: %s", strings.TrimSpace(out))

	// Full redundancy again: any two other nodes may go now.
	c.nodes[2].kill()
	c.nodes[3].kill()
	t.Logf("injected: SIGKILL to %s and %s", c.nodes[2].ip, c.nodes[3].ip)
	readBack(c.nodes[5], "two other nodes down after recovery")
}

// waitTarget waits until n exports the VDI "ec" over iSCSI.
func waitTarget(t testing.TB, n *node) {
	t.Helper()
	waitFor(t, "iSCSI target on "+n.ip, 60*time.Second, func() bool {
		out, err := exec.Command("iscsi-ls", "-s", fmt.Sprintf("iscsi://%s:3260/", n.ip)).CombinedOutput()
		return err == nil && strings.Contains(string(out), "iqn.2026-11.io.gosheep:ec")
	})
}
