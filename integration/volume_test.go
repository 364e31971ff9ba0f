package integration

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gosheep/gosheep/api"
)

func nbdURL(n *node, export string) string {
	return fmt.Sprintf("nbd://%s:10809/%s", n.ip, export)
}

// qemuIO runs qemu-io commands against a URL.
func qemuIO(t testing.TB, url string, cmds ...string) string {
	t.Helper()
	args := []string{"-f", "raw"}
	if strings.Contains(url, "@") {
		args = append(args, "-r") // snapshot exports are read-only
	}
	for _, c := range cmds {
		args = append(args, "-c", c)
	}
	args = append(args, url)
	out := runCmd(t, 2*time.Minute, "qemu-io", args...)
	if strings.Contains(out, "failed") || strings.Contains(out, "Pattern verification failed") {
		t.Fatalf("qemu-io %v on %s:\n%s", cmds, url, out)
	}
	return out
}

// readAll reads a whole export or target into memory with qemu-img.
func readAll(t testing.TB, url string) []byte {
	t.Helper()
	p := filepath.Join(t.TempDir(), "out.img")
	runCmd(t, 5*time.Minute, "qemu-img", "convert", "-O", "raw", url, p)
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestThreePathsAgree writes through sheepdog's protocol (QEMU's write
// path), iSCSI and NBD on three different nodes, then reads the whole
// volume through each path: all must equal the model.
func TestThreePathsAgree(t *testing.T) {
	needTool(t, "qemu-io")
	c := newCluster(t, 3)
	c.format("3")
	a, b, cc := c.nodes[0], c.nodes[1], c.nodes[2]
	const size = 24 << 20
	createVDI(t, a, "vol", size)
	model := make([]byte, size)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	// Native (QEMU path), spanning objects 0-1.
	nat := randomBytes(5 << 20)
	if err := openVDI(t, a, "vol").WriteAt(ctx, nat, 1<<20); err != nil {
		t.Fatal(err)
	}
	copy(model[1<<20:], nat)
	// iSCSI overwrites part of it and a fresh object.
	qemuIO(t, iscsiURL(b, "vol"), "write -P 0x5a 4M 6M")
	for i := 4 << 20; i < 10<<20; i++ {
		model[i] = 0x5a
	}
	// NBD: another object, unaligned.
	qemuIO(t, nbdURL(cc, "vol"), "write -P 0xc3 15000000 3000000")
	for i := 15000000; i < 18000000; i++ {
		model[i] = 0xc3
	}
	for _, u := range []string{iscsiURL(a, "vol"), iscsiURL(cc, "vol"), nbdURL(a, "vol"), nbdURL(b, "vol")} {
		if got := readAll(t, u); !bytes.Equal(got, model) {
			t.Fatalf("%s reads differently", u)
		}
	}
	got := make([]byte, size)
	if err := openVDI(t, cc, "vol").ReadAt(ctx, got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, model) {
		t.Fatal("native path reads differently")
	}
	t.Logf("verified: writes through native, iSCSI and NBD on three nodes read back identically through all three paths")
}

// TestSnapshotCloneRollbackOverFrontEnds: snapshot, keep writing, read the
// snapshot (NBD export vol@tag) -> old data; clone -> independent writes;
// rollback -> the snapshot's data, seen through the same iSCSI target.
// Replicated and erasure-coded.
func TestSnapshotCloneRollbackOverFrontEnds(t *testing.T) {
	needTool(t, "qemu-io")
	for _, tc := range []struct {
		nodes  int
		copies string
	}{{3, "2"}, {6, "4:2"}} {
		t.Run(tc.copies, func(t *testing.T) { snapshotCloneRollback(t, tc.nodes, tc.copies) })
	}
}

func snapshotCloneRollback(t *testing.T, nodes int, copies string) {
	c := newCluster(t, nodes)
	c.format(copies)
	a, b := c.nodes[0], c.nodes[1]
	createVDI(t, a, "vol", 16<<20)
	qemuIO(t, nbdURL(a, "vol"), "write -P 0x11 0 16M")
	if _, err := b.meta(t, api.MetaRequest{Volume: &api.VolumeOp{Op: api.VolSnapshot, Name: "vol", Tag: "s1"}}); err != nil {
		t.Fatal(err)
	}
	qemuIO(t, iscsiURL(a, "vol"), "write -P 0x22 4M 4M")
	qemuIO(t, nbdURL(b, "vol@s1"), "read -P 0x11 0 16M")
	qemuIO(t, nbdURL(a, "vol"), "read -P 0x11 0 4M", "read -P 0x22 4M 4M", "read -P 0x11 8M 8M")
	t.Logf("verified: the snapshot keeps the old data while the volume moves on")

	if _, err := a.meta(t, api.MetaRequest{Volume: &api.VolumeOp{Op: api.VolClone, Name: "vol", Tag: "s1", Dest: "cl"}}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "clone exported", 30*time.Second, func() bool { return exec.Command("iscsi-inq", iscsiURL(b, "cl")).Run() == nil })
	qemuIO(t, iscsiURL(b, "cl"), "write -P 0x33 0 1M")
	qemuIO(t, nbdURL(a, "cl"), "read -P 0x33 0 1M", "read -P 0x11 1M 15M")
	qemuIO(t, nbdURL(a, "vol"), "read -P 0x11 0 1M")
	t.Logf("verified: the clone shares the snapshot's data and writes independently")

	if _, err := a.meta(t, api.MetaRequest{Volume: &api.VolumeOp{Op: api.VolRollback, Name: "vol", Tag: "s1"}}); err != nil {
		t.Fatal(err)
	}
	qemuIO(t, iscsiURL(a, "vol"), "read -P 0x11 0 16M")
	qemuIO(t, nbdURL(b, "vol"), "read -P 0x11 0 16M")
	t.Logf("verified: rollback restores the snapshot's data through the same target names")
}

// TestResizeSeenByInitiator grows a VDI and checks READ CAPACITY reports it
// on every node.
func TestResizeSeenByInitiator(t *testing.T) {
	needTool(t, "iscsi-readcapacity16")
	c := newCluster(t, 2)
	c.format("2")
	createVDI(t, c.nodes[0], "vol", 64<<20)
	waitFor(t, "target exported", 60*time.Second, func() bool {
		out, _ := exec.Command("iscsi-readcapacity16", "-s", iscsiURL(c.nodes[1], "vol")).CombinedOutput()
		return strings.Contains(string(out), "67108864")
	})
	if _, err := c.nodes[0].meta(t, api.MetaRequest{Volume: &api.VolumeOp{Op: api.VolResize, Name: "vol", Size: 96 << 20}}); err != nil {
		t.Fatal(err)
	}
	for _, n := range c.nodes {
		var last string
		defer func() {
			if t.Failed() && last != "" {
				t.Logf("last iscsi-readcapacity16 through %s:\n%s", n.ip, last)
			}
		}()
		waitFor(t, "new capacity on "+n.ip, 30*time.Second, func() bool {
			out, err := exec.Command("iscsi-readcapacity16", "-s", iscsiURL(n, "vol")).CombinedOutput()
			last = fmt.Sprintf("%s(%v)", out, err)
			return strings.Contains(string(out), "100663296")
		})
	}
	qemuIO(t, nbdURL(c.nodes[1], "vol"), "write -P 0x44 90M 6M", "read -P 0x44 90M 6M")
	t.Logf("verified: resize to 96 MiB seen by iSCSI READ CAPACITY on every node and usable over NBD")
}

// TestDiscardFreesSpaceAndMaps: NBD trim of whole objects frees them (map
// shows holes, node usage drops), partial trims read as zeros, and deleting
// the VDI reclaims the rest.
func TestDiscardFreesSpaceAndMaps(t *testing.T) {
	needTool(t, "nbdinfo")
	c := newCluster(t, 1)
	c.format("1")
	n := c.nodes[0]
	createVDI(t, n, "vol", 32<<20)
	qemuIO(t, nbdURL(n, "vol"), "write -P 0x77 0 32M")
	used := n.info(t).Usage.Used
	qemuIO(t, nbdURL(n, "vol"), "discard 8M 16M", "discard 100 1000")
	qemuIO(t, nbdURL(n, "vol"), "read -P 0 8M 16M", "read -P 0x77 0 100", "read -P 0 100 1000", "read -P 0x77 1100 1M")
	out := runCmd(t, time.Minute, "nbdinfo", "--map", nbdURL(n, "vol"))
	if !strings.Contains(out, "hole") {
		t.Fatalf("nbdinfo --map shows no hole:\n%s", out)
	}
	after := n.info(t).Usage.Used
	if used-after < 15<<20 {
		t.Fatalf("discarding 16 MiB freed only %d bytes (%d -> %d)", used-after, used, after)
	}
	if _, err := n.meta(t, metaDelete("vol")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "space reclaimed after delete", 60*time.Second, func() bool { return n.info(t).Usage.Used < 2<<20 })
	// Discarded objects stay behind as holes (so they win recovery over an
	// old copy); once the VDI is reclaimed they go too.
	waitFor(t, "no data objects left after delete", 30*time.Second, func() bool { return n.objects(t) == 0 })
	t.Logf("verified: map shows holes; discard freed %d MiB; delete reclaimed the rest, discarded objects included", (used-after)>>20)
}

// TestFioOverNBD runs fio's nbd engine with verification against a cluster VDI.
func TestFioOverNBD(t *testing.T) {
	needTool(t, "fio")
	c := newCluster(t, 3)
	c.format("3")
	createVDI(t, c.nodes[0], "vol", 64<<20)
	out := runCmd(t, 3*time.Minute, "fio", "--name=verify", "--ioengine=nbd", "--uri="+nbdURL(c.nodes[1], "vol"),
		"--rw=randwrite", "--bs=4k", "--bssplit=4k/50:64k/30:1m/20", "--size=48M", "--iodepth=16",
		"--verify=crc32c", "--do_verify=1", "--time_based=0", "--verify_state_save=0", "--directory="+t.TempDir())
	if !strings.Contains(out, "err= 0") {
		t.Fatalf("fio reported errors:\n%s", out)
	}
	t.Logf("verified: fio randwrite+verify over NBD completed without errors")
}
