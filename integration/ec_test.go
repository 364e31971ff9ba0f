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

	"github.com/gosheep/gosheep/proto"
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
	// No background scrub: the corruption injected below is for the check.
	c := newCluster(t, 6, "--voters", "5", "--scrub-rate", "0")
	c.waitAlive()
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

	check := func(what string) {
		t.Helper()
		out, err := a.dog(t, nil, "vdi", "check", "ec")
		if err != nil {
			t.Fatalf("vdi check %s: %v\n%s", what, err, out)
		}
		if !strings.Contains(out, " 0 missing, 0 mismatched, 0 corrupt, 0 repaired, 0 lost: fine") || strings.Contains(out, "unreachable") {
			t.Fatalf("vdi check %s does not find every strip in place:\n%s", what, out)
		}
		t.Logf("verified: %s: dog vdi check: %s", what, strings.TrimSpace(out))
	}
	// settle waits until the epoch's members are exactly alive, each of
	// them serves and has recovered that epoch, and checks every strip.
	settle := func(what string, alive ...*node) {
		t.Helper()
		for _, n := range alive {
			n.waitReady(t)
		}
		waitEpochMembers(t, a, alive...)
		e := c.waitRecovered(alive...)
		check(fmt.Sprintf("%s (epoch %d, %d nodes)", what, e, len(alive)))
	}
	kill := func(x, y *node) {
		t.Helper()
		waitVoters(t, a, 5)
		x.kill()
		y.kill()
		t.Logf("injected: SIGKILL to %s and %s", x.ip, y.ip)
	}

	// Bit rot in two strips: the check finds them, the primary repairs.
	var rotten []string
	for _, n := range c.nodes {
		files, _ := filepath.Glob(filepath.Join(n.dataDir(), "store", "obj", "*_[0-9]"))
		for _, f := range files {
			// Two strips of different objects, one of them a parity strip.
			if len(rotten) == 0 && strings.HasSuffix(f, "_1") || len(rotten) == 1 && strings.HasSuffix(f, "_5") && filepath.Base(f)[:16] != filepath.Base(rotten[0])[:16] {
				flipLastByte(t, f)
				rotten = append(rotten, f)
				t.Logf("injected: flipped the last byte of strip %s on %s", filepath.Base(f), n.ip)
			}
		}
	}
	if len(rotten) != 2 {
		t.Fatalf("found %d strip files to corrupt", len(rotten))
	}
	if rep := a.check(t, "ec", false); rep.Corrupt != 2 || rep.Missing != 0 || rep.Lost != 0 {
		t.Fatalf("check after the bit rot: %+v, want 2 corrupt strips", rep)
	}
	t.Logf("verified: check finds the 2 corrupt strips")
	out, err := a.dog(t, nil, "vdi", "check", "--repair", "ec")
	if err != nil || !strings.Contains(out, "2 repaired") {
		t.Fatalf("vdi check --repair: %v\n%s", err, out)
	}
	t.Logf("dog vdi check --repair:\n%s", out)
	check("after repairing the bit rot")
	readBack(c.nodes[3], "bit rot repaired")

	// Two strips of every stripe may go: kill -9 two nodes and read at
	// once (degraded reads from parity), then once the cluster moved on.
	kill(c.nodes[4], c.nodes[5])
	readBack(c.nodes[1], "two nodes just killed")
	four := []*node{c.nodes[0], c.nodes[1], c.nodes[2], c.nodes[3]}
	settle("lost strips rebuilt on the 4 nodes left", four...)
	readBack(c.nodes[2], "two nodes gone, strips rebuilt")

	// They return: every strip goes back to its place.
	c.nodes[4].start()
	c.nodes[5].start()
	c.nodes[4].waitListening()
	c.nodes[5].waitListening()
	t.Logf("restarted %s and %s", c.nodes[4].ip, c.nodes[5].ip)
	settle("the two nodes returned", c.nodes[:6]...)

	// Full redundancy again: any two other nodes may go now.
	kill(c.nodes[2], c.nodes[3])
	readBack(c.nodes[5], "two other nodes just killed")
	alive := []*node{c.nodes[0], c.nodes[1], c.nodes[4], c.nodes[5]}
	settle("rebuilt again on 4 nodes", alive...)

	// Two new nodes: the strips spread out over them.
	alive = append(alive, c.addNode("--voters", "5"), c.addNode("--voters", "5"))
	t.Logf("added %s and %s", c.nodes[6].ip, c.nodes[7].ip)
	settle("after adding two nodes", alive...)
	kill(c.nodes[4], c.nodes[5])
	readBack(c.nodes[6], "two more nodes killed, strips on the added nodes")
}

// flipLastByte corrupts the last byte of a strip file (its data is the
// file's tail), bypassing sheep.
func flipLastByte(t testing.TB, path string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, fi.Size()-1); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0xff
	if _, err := f.WriteAt(b, fi.Size()-1); err != nil {
		t.Fatal(err)
	}
}

// waitVoters waits until n Raft voters are alive, so that killing two
// nodes of a 5-voter cluster keeps a quorum.
func waitVoters(t testing.TB, via *node, n int) {
	t.Helper()
	waitFor(t, fmt.Sprint(n, " live voters"), 60*time.Second, func() bool {
		v := 0
		for _, m := range via.state(t).Members {
			if m.Status == "alive" && m.Voter {
				v++
			}
		}
		return v >= n
	})
}

// waitTarget waits until n exports the VDI "ec" over iSCSI.
func waitTarget(t testing.TB, n *node) {
	t.Helper()
	waitFor(t, "iSCSI target on "+n.ip, 60*time.Second, func() bool {
		out, err := exec.Command("iscsi-ls", "-s", fmt.Sprintf("iscsi://%s:3260/", n.ip)).CombinedOutput()
		return err == nil && strings.Contains(string(out), "iqn.2026-11.io.gosheep:ec")
	})
}

// waitEpochMembers waits until the current epoch's members are exactly
// nodes (the cluster noticed every death and join).
func waitEpochMembers(t testing.TB, via *node, nodes ...*node) {
	t.Helper()
	want := map[string]bool{}
	for _, n := range nodes {
		want[n.addr()] = true
	}
	waitFor(t, fmt.Sprintf("an epoch of exactly %d members", len(nodes)), 60*time.Second, func() bool {
		st := via.state(t).State
		if len(st.Epochs) == 0 {
			return false
		}
		ms := st.Epochs[len(st.Epochs)-1].Members
		if len(ms) != len(want) {
			return false
		}
		for _, m := range ms {
			if !want[m.Addr.String()] {
				return false
			}
		}
		return true
	})
}

// TestECScrubRepairsStrip: bit rot in a strip nobody reads is found by the
// background scrub and rebuilt through the object's primary: the strip's
// holder finds it (its checksums), or the primary does first (its pass
// reads every strip of the objects it is primary of).
func TestECScrubRepairsStrip(t *testing.T) {
	c := newCluster(t, 6, "--scrub-interval", "2s", "--scrub-rate", "1G")
	c.format("4:2")
	a := c.nodes[0]
	vid := createVDI(t, a, "vol", 16<<20)
	data := randomBytes(8 << 20)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := openVDI(t, a, "vol").WriteAt(ctx, data, 0); err != nil {
		t.Fatal(err)
	}
	name := proto.DataOID(vid, 1).String() + "_2"
	var holder *node
	for _, n := range c.nodes {
		p := filepath.Join(n.dataDir(), "store", "obj", name)
		if _, err := os.Stat(p); err == nil {
			flipLastByte(t, p)
			holder = n
			t.Logf("injected: flipped the last byte of strip %s on %s", name, n.ip)
			break
		}
	}
	if holder == nil {
		t.Fatalf("no node holds strip %s", name)
	}
	oid := proto.DataOID(vid, 1).String()
	waitFor(t, "scrub repair", 60*time.Second, func() bool {
		for _, n := range c.nodes {
			n.mu.Lock()
			log := n.log.String()
			n.mu.Unlock()
			if n == holder && strings.Contains(log, "scrub: repaired copy") {
				return true
			}
			for _, line := range strings.Split(log, "\n") {
				if strings.Contains(line, "ec repair: rebuilding strips") && strings.Contains(line, oid) {
					return true
				}
			}
		}
		return false
	})
	if rep := a.check(t, "vol", false); rep.Corrupt != 0 || rep.Missing != 0 || rep.Mismatch != 0 || rep.Unreachable != 0 {
		t.Fatalf("check after the scrub: %+v", rep)
	}
	got := make([]byte, len(data))
	if err := openVDI(t, c.nodes[4], "vol").ReadAt(ctx, got, 0); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read after the scrub repair: err %v, data right %v", err, bytes.Equal(got, data))
	}
	t.Logf("verified: the scrub rebuilt the strip on %s, check finds every strip clean, data reads back identical", holder.ip)
}
