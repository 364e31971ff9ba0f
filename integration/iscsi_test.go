package integration

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func needTool(t testing.TB, name string) {
	t.Helper()
	if _, err := exec.LookPath(name); err != nil {
		if testing.Short() {
			t.Skipf("%s not installed", name)
		}
		t.Fatalf("%s not installed (scripts/deps installs it)", name)
	}
}

func iscsiURL(n *node, vdi string) string {
	return fmt.Sprintf("iscsi://%s:3260/iqn.2026-11.io.gosheep:%s/0", n.ip, vdi)
}

func runCmd(t testing.TB, timeout time.Duration, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// TestISCSIOnCluster: every node exports every VDI; iscsi-ls discovers them
// on each node; a 256 MiB random image goes in through one node with
// qemu-img convert and comes back identical through another; a VDI
// created later appears on every node without a restart and a deleted one
// goes away.
func TestISCSIOnCluster(t *testing.T) {
	needTool(t, "iscsi-ls")
	needTool(t, "qemu-img")
	c := newCluster(t, 3)
	c.format("3")
	createVDI(t, c.nodes[0], "disk", 256<<20)
	createVDI(t, c.nodes[1], "other", 64<<20)
	for _, n := range c.nodes {
		waitFor(t, "targets on "+n.ip, 60*time.Second, func() bool {
			out, err := exec.Command("iscsi-ls", "-s", fmt.Sprintf("iscsi://%s:3260/", n.ip)).CombinedOutput()
			return err == nil && strings.Contains(string(out), "iqn.2026-11.io.gosheep:disk") && strings.Contains(string(out), "iqn.2026-11.io.gosheep:other")
		})
	}
	dir := t.TempDir()
	src, back := filepath.Join(dir, "src.img"), filepath.Join(dir, "back.img")
	if err := os.WriteFile(src, randomBytes(256<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	runCmd(t, 5*time.Minute, "qemu-img", "convert", "-n", "-O", "raw", "-t", "none", "-m", "16", "-W", src, iscsiURL(c.nodes[0], "disk"))
	runCmd(t, 5*time.Minute, "qemu-img", "convert", "-O", "raw", "-m", "16", iscsiURL(c.nodes[2], "disk"), back)
	a, _ := os.ReadFile(src)
	b, _ := os.ReadFile(back)
	if !bytes.Equal(a, b) {
		t.Fatal("image read back through another node differs")
	}
	t.Logf("verified: 256 MiB written through %s read back identical through %s", c.nodes[0].ip, c.nodes[2].ip)
	// The logical unit's identity is the same on every node (multipath
	// sees one disk); each node is a target port of its own.
	var lus []string
	ports := map[string]string{}
	for _, n := range c.nodes {
		// iscsi-inq takes the page code in decimal: 131 is 0x83.
		out := runCmd(t, time.Minute, "iscsi-inq", "-e", "1", "-c", "131", iscsiURL(n, "disk"))
		var lu []string
		port := ""
		for _, d := range strings.Split(out, "DEVICE DESIGNATOR #")[1:] {
			_, d, _ = strings.Cut(d, "\n") // the designator's number
			switch {
			case strings.Contains(d, "Association:(0) LOGICAL_UNIT"):
				lu = append(lu, d)
			case strings.Contains(d, "Association:(1) TARGET_PORT") && strings.Contains(d, "SCSI_NAME_STRING"):
				port = d
			}
		}
		if len(lu) < 2 || port == "" {
			t.Fatalf("VPD 0x83 through %s lacks LU designators or the target port name:\n%s", n.ip, out)
		}
		if o, dup := ports[port]; dup {
			t.Fatalf("%s and %s report the same target port:\n%s", o, n.ip, port)
		}
		ports[port] = n.ip
		slices.Sort(lu)
		lus = append(lus, strings.Join(lu, ""))
	}
	if lus[0] != lus[1] || lus[1] != lus[2] {
		t.Fatalf("logical unit designators differ between nodes:\n%s", strings.Join(lus, "\n---\n"))
	}
	// A VDI created through one node is there at once on every node, to a
	// login, to discovery and to NBD's export list: a script that creates a VDI and then logs
	// in through another node must not need to wait (it used to find no
	// such target until that node had applied the creation and exported
	// it, some tens of milliseconds).
	for i := range 4 {
		name := fmt.Sprintf("new%d", i)
		createVDI(t, c.nodes[i%3], name, 16<<20)
		for k := range c.nodes {
			n := c.nodes[(i+1+k)%3]
			if out, err := exec.Command("iscsi-inq", iscsiURL(n, name)).CombinedOutput(); err != nil {
				t.Fatalf("login to %s through %s right after its creation through %s: %v\n%s", name, n.ip, c.nodes[i%3].ip, err, out)
			}
		}
		name = fmt.Sprintf("found%d", i)
		createVDI(t, c.nodes[i%3], name, 16<<20)
		n := c.nodes[(i+1)%3]
		if out := runCmd(t, time.Minute, "iscsi-ls", "-s", fmt.Sprintf("iscsi://%s:3260/", n.ip)); !strings.Contains(out, "iqn.2026-11.io.gosheep:"+name) {
			t.Fatalf("discovery through %s right after creating %s through %s misses it:\n%s", n.ip, name, c.nodes[i%3].ip, out)
		}
		// NBD's export list too.
		name = fmt.Sprintf("listed%d", i)
		createVDI(t, c.nodes[i%3], name, 16<<20)
		if out := runCmd(t, time.Minute, "nbdinfo", "--list", "--json", fmt.Sprintf("nbd://%s:10809", n.ip)); !strings.Contains(out, `"`+name+`"`) {
			t.Fatalf("NBD export list through %s right after creating %s through %s misses it:\n%s", n.ip, name, c.nodes[i%3].ip, out)
		}
	}
	// Delete: the target goes away everywhere.
	if _, err := c.nodes[0].meta(t, metaDelete("other")); err != nil {
		t.Fatal(err)
	}
	for _, n := range c.nodes {
		waitFor(t, "target removed on "+n.ip, 60*time.Second, func() bool {
			out, err := exec.Command("iscsi-ls", "-s", fmt.Sprintf("iscsi://%s:3260/", n.ip)).CombinedOutput()
			return err == nil && !strings.Contains(string(out), "iqn.2026-11.io.gosheep:other")
		})
	}
}

// TestISCSIComplianceOnCluster runs libiscsi's iscsi-test-cu against a VDI
// of a 3-node cluster and fails on any failure outside
// target/iscsi/testdata/iscsi-test-cu.expected, then again with the
// second multipath path on another node.
func TestISCSIComplianceOnCluster(t *testing.T) {
	needTool(t, "iscsi-test-cu")
	c := newCluster(t, 3)
	c.format("3")
	// Fresh VDIs for each run: libiscsi 1.19's MultipathIO.CompareAndWrite
	// initialises 256 blocks and then compares 257, so it needs block 256
	// untouched by earlier tests.
	createVDI(t, c.nodes[0], "cu", 128<<20)
	createVDI(t, c.nodes[0], "mp", 128<<20)
	for _, n := range c.nodes {
		waitFor(t, "targets on "+n.ip, 60*time.Second, func() bool { return n.tryISCSI("cu") && n.tryISCSI("mp") })
	}
	runCompliance(t, "ALL", iscsiURL(c.nodes[0], "cu"), iscsiURL(c.nodes[0], "cu"))
	// Again with the second path on another node: the tests that take a
	// second initiator or path (multipath I/O, COMPARE AND WRITE, resets,
	// RESERVE(6), persistent reservations) then cross nodes, so
	// reservations and unit attentions must be shared by every node.
	runCompliance(t, "ALL", iscsiURL(c.nodes[2], "mp"), iscsiURL(c.nodes[1], "mp"))
}

func runCompliance(t testing.TB, sel, url, url2 string) {
	t.Helper()
	cmd := exec.Command("go", "test", "-count=1", "-run", "^TestLibiscsiCompliance$", "-v", "../target/iscsi/")
	cmd.Env = append(os.Environ(),
		"GOSHEEP_ISCSI_TEST_SELECT="+sel,
		"GOSHEEP_ISCSI_TEST_URL="+url,
		"GOSHEEP_ISCSI_TEST_URL2="+url2)
	out, err := cmd.CombinedOutput()
	for _, line := range strings.Split(string(out), "\n") {
		if strings.Contains(line, "iscsi-test-cu:") || strings.Contains(line, "unexpected") || strings.Contains(line, "passes now") {
			t.Logf("%s: %s", sel, strings.TrimSpace(line))
		}
	}
	if err != nil {
		t.Fatalf("compliance suite %s against the cluster (%s, %s) failed: %v\n%s", sel, url, url2, err, tail(string(out), 80))
	}
}

func mustAbs(t testing.TB, p string) string {
	a, err := filepath.Abs(p)
	if err != nil {
		t.Fatal(err)
	}
	return a
}
