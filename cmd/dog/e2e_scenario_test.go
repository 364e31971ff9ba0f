package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gosheep/gosheep/cmd/dog/internal/render"
)

const mib = 1 << 20

// rawRow finds the raw `dog vdi list -r` row of name with snapshot id id.
func rawRow(t *testing.T, list []byte, name string, id int) []string {
	t.Helper()
	for _, line := range strings.Split(strings.TrimSpace(string(list)), "\n") {
		f := strings.Split(line, " ")
		if len(f) == 11 && f[1] == name && f[2] == strconv.Itoa(id) {
			return f
		}
	}
	t.Fatalf("no row for %s id %d in:\n%s", name, id, list)
	return nil
}

// TestEndToEnd drives a real one-node cluster through the life of a VDI.
// The steps share the cluster, so they run in order in one test.
func TestEndToEnd(t *testing.T) {
	t.Parallel()
	h := startSheep(t)

	// Before format.
	if out := h.ok(t, nil, "cluster", "info"); !bytes.Contains(out, []byte("Waiting for cluster to be formatted")) {
		t.Fatalf("cluster info before format: %q", out)
	}
	h.exit(t, exitSysFail, nil, "vdi", "list")

	// Format.
	if out := h.ok(t, nil, "cluster", "format", "-c", "1"); string(out) != "using backend plain store\n" {
		t.Fatalf("format printed %q", out)
	}
	info := string(h.ok(t, nil, "cluster", "info"))
	if !strings.HasPrefix(info, "Cluster status: running, auto-recovery enabled\n\nCluster created at ") ||
		!strings.Contains(info, "Epoch Time           Version [Host:Port:V-Nodes,,,]\n") ||
		!strings.Contains(info, "      1 ["+h.addr+":7000:") {
		t.Fatalf("cluster info:\n%s", info)
	}
	nodes := string(h.ok(t, nil, "-r", "node", "list"))
	if f := strings.Fields(nodes); len(f) != 4 || f[0] != "0" || f[1] != h.addr+":7000" {
		t.Fatalf("node list -r: %q", nodes)
	}
	if out := string(h.ok(t, nil, "node", "list")); !strings.Contains(out, "*  0   "+h.addr+":7000") {
		t.Fatalf("node list does not mark the node dog talks to:\n%s", out)
	}
	ni := strings.Split(strings.TrimSpace(string(h.ok(t, nil, "-r", "node", "info"))), "\n")
	if len(ni) != 2 || !strings.HasPrefix(ni[0], "0 4294967296 ") || !strings.HasPrefix(ni[1], "Total 4294967296 ") {
		t.Fatalf("node info -r: %q", ni)
	}
	h.ok(t, nil, "node", "recovery", "-P")

	// Create; 64 MiB of random data through a real dog process's stdin.
	h.ok(t, nil, "vdi", "create", "vol", "128M")
	h.exit(t, exitExists, nil, "vdi", "create", "vol", "1G")
	data1 := randomBytes(1, 64*mib)
	if r := h.exec(t, bytes.NewReader(data1), "-a", h.addr, "vdi", "write", "vol"); r.code != 0 {
		t.Fatalf("dog vdi write: %s", r)
	}
	if h.sum(t, "vdi", "read", "vol", "0", "64M") != sha256.Sum256(data1) {
		t.Fatal("read back differs from the 64 MiB written")
	}
	if got := h.ok(t, nil, "vdi", "read", "vol", "1M", "4k"); !bytes.Equal(got, data1[mib:mib+4096]) {
		t.Fatal("read at an offset differs")
	}
	f := rawRow(t, h.ok(t, nil, "-r", "vdi", "list"), "vol", 0)
	if f[0] != "=" || f[3] != strconv.Itoa(128*mib) || f[4] != strconv.Itoa(64*mib) || f[5] != "0" || f[8] != "1" || f[10] != "22" {
		t.Fatalf("vdi list -r row %q", f)
	}
	text := string(h.ok(t, nil, "vdi", "list", "vol"))
	if !strings.HasPrefix(text, "  Name        Id    Size    Used  Shared    Creation time   VDI id  Copies  Tag   Block Size Shift\n  vol          0  128 MB   64 MB  0.0 MB ") {
		t.Fatalf("vdi list:\n%s", text)
	}
	// LENGTH bounds a write; OFFSET places it.
	h.ok(t, []byte("hello, world"), "vdi", "write", "vol", "100M", "5")
	if got := h.ok(t, nil, "vdi", "read", "vol", "100M", "12"); string(got) != "hello\x00\x00\x00\x00\x00\x00\x00" {
		t.Fatalf("bounded write left %q", got)
	}
	h.exit(t, exitFailure, bytes.Repeat([]byte{1}, 2*mib), "vdi", "write", "vol", "127M")

	// Snapshot, write more: the snapshot keeps the old data.
	h.ok(t, nil, "vdi", "snapshot", "-s", "snap1", "vol")
	data2 := randomBytes(2, 8*mib)
	h.ok(t, data2, "vdi", "write", "vol", "4M")
	if h.sum(t, "vdi", "read", "-s", "snap1", "vol", "0", "64M") != sha256.Sum256(data1) {
		t.Fatal("snapshot snap1 changed after writing to the VDI")
	}
	if got := h.ok(t, nil, "vdi", "read", "vol", "4M", "8M"); !bytes.Equal(got, data2) {
		t.Fatal("the VDI does not read the new data")
	}
	list := h.ok(t, nil, "-r", "vdi", "list", "vol")
	if s := rawRow(t, list, "vol", 1); s[0] != "s" || s[9] != "snap1" {
		t.Fatalf("snapshot row %q", s)
	}
	// The working VDI owns the 2 rewritten objects and shares the other 16
	// (objects 0..15 of data1, 25 of "hello", 31 of the overlong write).
	if w := rawRow(t, list, "vol", 0); w[4] != strconv.Itoa(8*mib) || w[5] != strconv.Itoa(64*mib) {
		t.Fatalf("working row after snapshot %q", w)
	}

	// Clone the snapshot.
	h.exit(t, exitUsage, nil, "vdi", "clone", "vol", "cl")
	h.ok(t, nil, "vdi", "clone", "-s", "snap1", "vol", "cl")
	if h.sum(t, "vdi", "read", "cl", "0", "64M") != sha256.Sum256(data1) {
		t.Fatal("clone differs from its snapshot")
	}
	if c := rawRow(t, h.ok(t, nil, "-r", "vdi", "list", "cl"), "cl", 0); c[0] != "c" {
		t.Fatalf("clone row %q", c)
	}

	// Preallocation, and copies that share nothing.
	h.ok(t, nil, "vdi", "create", "-P", "pre", "16M")
	if p := rawRow(t, h.ok(t, nil, "-r", "vdi", "list", "pre"), "pre", 0); p[4] != strconv.Itoa(16*mib) {
		t.Fatalf("preallocated VDI row %q", p)
	}
	h.ok(t, nil, "vdi", "clone", "-n", "-s", "snap1", "vol", "solo")
	h.ok(t, nil, "vdi", "clone", "-P", "-s", "snap1", "vol", "full")
	for _, name := range []string{"solo", "full"} {
		if h.sum(t, "vdi", "read", name, "0", "64M") != sha256.Sum256(data1) {
			t.Fatalf("%s differs from the snapshot it copies", name)
		}
	}
	// snap1 holds 18 objects (0..15, 25, 31); -P allocates all 32.
	if s := rawRow(t, h.ok(t, nil, "-r", "vdi", "list", "solo"), "solo", 0); s[0] != "=" || s[4] != strconv.Itoa(72*mib) || s[5] != "0" {
		t.Fatalf("no-share clone row %q", s)
	}
	if s := rawRow(t, h.ok(t, nil, "-r", "vdi", "list", "full"), "full", 0); s[0] != "c" || s[4] != strconv.Itoa(128*mib) || s[5] != "0" {
		t.Fatalf("preallocated clone row %q", s)
	}

	// Rollback: refused without a terminal to confirm on, done with -f.
	r := h.exit(t, exitUsage, nil, "vdi", "rollback", "-s", "snap1", "vol")
	if !bytes.Contains(r.err, []byte("pass -f")) {
		t.Errorf("rollback refusal says %q", r.err)
	}
	h.exit(t, exitMissing, nil, "vdi", "rollback", "-f", "-s", "nosuch", "vol")
	h.ok(t, nil, "vdi", "rollback", "-f", "-s", "snap1", "vol")
	if h.sum(t, "vdi", "read", "vol", "0", "64M") != sha256.Sum256(data1) {
		t.Fatal("rollback did not restore the snapshot's data")
	}
	if tree := string(h.ok(t, nil, "vdi", "tree")); !strings.Contains(tree, "vol---[") || !strings.Contains(tree, "(you are here)") || !strings.Contains(tree, "cl---(you are here)") {
		t.Fatalf("vdi tree:\n%s", tree)
	}

	// Resize.
	h.ok(t, nil, "vdi", "resize", "vol", "256M")
	if w := rawRow(t, h.ok(t, nil, "-r", "vdi", "list", "vol"), "vol", 0); w[3] != strconv.Itoa(256*mib) {
		t.Fatalf("size after resize %q", w)
	}
	h.exit(t, exitUsage, nil, "vdi", "resize", "vol", "64M")

	// Attributes.
	h.ok(t, nil, "vdi", "setattr", "vol", "owner", "alice")
	h.ok(t, []byte("from\x00stdin"), "vdi", "setattr", "vol", "blob")
	if got := h.ok(t, nil, "vdi", "getattr", "vol", "owner"); string(got) != "alice" {
		t.Fatalf("getattr owner = %q", got)
	}
	if got := h.ok(t, nil, "vdi", "getattr", "vol", "blob"); string(got) != "from\x00stdin" {
		t.Fatalf("getattr blob = %q", got)
	}
	h.exit(t, exitExists, nil, "vdi", "setattr", "-x", "vol", "owner", "bob")
	h.ok(t, nil, "vdi", "setattr", "-d", "vol", "owner")
	h.exit(t, exitMissing, nil, "vdi", "getattr", "vol", "owner")
	h.exit(t, exitMissing, nil, "vdi", "setattr", "-d", "vol", "owner")
	h.exit(t, exitUsage, bytes.Repeat([]byte{'x'}, 65537), "vdi", "setattr", "vol", "big")

	// Export and import round trip; import stays thin.
	dir := t.TempDir()
	img := filepath.Join(dir, "vol.img")
	h.ok(t, nil, "vdi", "export", "vol", img)
	exported, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	if len(exported) != 256*mib || !bytes.Equal(exported[:64*mib], data1) {
		t.Fatalf("export wrote %d bytes, not the VDI", len(exported))
	}
	h.ok(t, nil, "vdi", "import", "imp", img)
	if h.sum(t, "vdi", "read", "imp") != sha256.Sum256(exported) {
		t.Fatal("imported VDI differs from the image")
	}
	// 18 objects hold data: 0..15, 25 and 31 (see above).
	if w := rawRow(t, h.ok(t, nil, "-r", "vdi", "list", "imp"), "imp", 0); w[3] != strconv.Itoa(256*mib) || w[4] != strconv.Itoa(72*mib) {
		t.Fatalf("import is not thin: %q", w)
	}
	// Importing zeros over data clears it.
	h.ok(t, make([]byte, 8*mib), "vdi", "import", "imp", "-")
	if got := h.ok(t, nil, "vdi", "read", "imp", "0", "8M"); !bytes.Equal(got, make([]byte, 8*mib)) {
		t.Fatal("importing zeros left data behind")
	}
	if w := rawRow(t, h.ok(t, nil, "-r", "vdi", "list", "imp"), "imp", 0); w[4] != strconv.Itoa(64*mib) {
		t.Fatalf("zeros were not discarded: %q", w)
	}
	h.exit(t, exitUsage, []byte("x"), "vdi", "import", "newvdi", "-")

	// Backup: full of snap1, incremental snap1 -> snap2; restore both into
	// another VDI and compare with the source.
	h.ok(t, randomBytes(3, 4*mib), "vdi", "write", "vol", "32M")
	h.ok(t, nil, "vdi", "snapshot", "-s", "snap2", "vol")
	full := h.ok(t, nil, "vdi", "backup", "-s", "snap1", "vol")
	incr := h.ok(t, nil, "vdi", "backup", "-F", "snap1", "-s", "snap2", "vol")
	if len(incr) > 5*mib || len(full) < 64*mib {
		t.Fatalf("full backup %d bytes, incremental %d: incremental is not a diff", len(full), len(incr))
	}
	h.exit(t, exitFailure, nil, "vdi", "restore", "copy") // an empty stream
	h.ok(t, full, "vdi", "restore", "copy")
	h.exit(t, exitUsage, full, "vdi", "restore", "copy")                 // replacing needs -f
	h.exit(t, exitUsage, incr, "vdi", "restore", "copy")                 // incremental needs -s
	h.exit(t, exitFailure, incr, "vdi", "restore", "-s", "snap2", "vol") // not the stream's base
	h.ok(t, incr, "vdi", "restore", "-s", "snap1", "copy")
	want := h.sum(t, "vdi", "read", "-s", "snap2", "vol")
	if h.sum(t, "vdi", "read", "copy") != want {
		t.Fatal("full + incremental restore differs from the source snapshot")
	}
	if h.sum(t, "vdi", "read", "-s", "snap2", "copy") != want {
		t.Fatal("the restore's snapshot differs from the source snapshot")
	}
	// A damaged stream is refused and the VDI returns to the base snapshot.
	bad := bytes.Clone(incr)
	bad[len(bad)/2] ^= 0x40
	h.ok(t, []byte("scribble"), "vdi", "write", "copy")
	r = h.exit(t, exitFailure, bad, "vdi", "restore", "-s", "snap1", "copy")
	if !bytes.Contains(r.err, []byte("corrupt backup stream")) {
		t.Errorf("damaged restore says %q", r.err)
	}
	if h.sum(t, "vdi", "read", "copy", "0", "64M") != sha256.Sum256(data1) {
		t.Fatal("after a failed restore the VDI is not back at its base snapshot")
	}
	// With -f a full backup replaces an existing VDI's content entirely.
	h.ok(t, randomBytes(5, 4*mib), "vdi", "write", "copy", "80M")
	h.ok(t, full, "vdi", "restore", "-f", "--tag", "again", "copy")
	if h.sum(t, "vdi", "read", "copy") != h.sum(t, "vdi", "read", "-s", "snap1", "vol") {
		t.Fatal("a forced full restore did not replace the VDI's content")
	}
	if row := rawRow(t, h.ok(t, nil, "-r", "vdi", "list", "copy"), "copy", 0); row[4] != "0" {
		t.Fatalf("the restored VDI should share everything with its new snapshot: %q", row)
	}

	// Object placement.
	loc := string(h.ok(t, nil, "vdi", "object", "-i", "0", "vol"))
	if !strings.Contains(loc, h.addr+":7000 has the object") || !strings.Contains(loc, "should be located at:\n"+h.addr+":7000\n") {
		t.Fatalf("vdi object:\n%s", loc)
	}
	if out := string(h.ok(t, nil, "vdi", "object", "-i", "60", "vol")); !strings.Contains(out, "is not allocated") {
		t.Fatalf("vdi object of a hole:\n%s", out)
	}

	// CHAP.
	h.ok(t, nil, "vdi", "chap", "set", "vol", "--user", "alice", "--secret", "twelve-bytes-secret")
	if out := string(h.ok(t, nil, "vdi", "chap", "show", "vol")); out != "vol: CHAP user alice\n" {
		t.Fatalf("chap show: %q", out)
	}
	h.exit(t, exitUsage, nil, "vdi", "chap", "set", "vol", "--user", "alice")
	h.ok(t, nil, "vdi", "chap", "clear", "vol")
	if out := string(h.ok(t, nil, "vdi", "chap", "show", "vol")); out != "vol: no CHAP\n" {
		t.Fatalf("chap show after clear: %q", out)
	}

	// Check: the server may not implement it yet.
	if r := h.dog(t, nil, "vdi", "check", "vol"); r.code != 0 {
		if !bytes.Contains(r.err, []byte("not supported by this server")) {
			t.Fatalf("vdi check: %s", r)
		}
		t.Logf("vdi check: %s", bytes.TrimSpace(r.err))
	}

	// JSON is the same data.
	var rows []render.VDI
	if err := json.Unmarshal(h.ok(t, nil, "-o", "json", "vdi", "list", "vol"), &rows); err != nil {
		t.Fatal(err)
	}
	if len(rows) != 3 || rows[2].Name != "vol" || rows[2].Size != 256*mib || !rows[0].Snapshot || rows[0].Tag != "snap1" {
		t.Fatalf("vdi list -o json: %+v", rows)
	}

	// Exit codes scripts rely on.
	h.exit(t, exitMissing, nil, "vdi", "read", "nosuch")
	h.exit(t, exitMissing, nil, "vdi", "read", "-s", "nosnap", "vol")
	h.exit(t, exitUsage, nil, "vdi", "create", "x", "12Q")
	h.exit(t, exitUsage, nil, "vdi", "create", "x")
	h.exit(t, exitUsage, nil, "vdi", "frobnicate")
	if r := h.exec(t, nil, "-a", "127.0.0.1", "-p", strconv.Itoa(closedPort(t)), "vdi", "list"); r.code != exitSysFail || !bytes.Contains(r.err, []byte("is sheep running?")) {
		t.Fatalf("no server: %s", r)
	}

	// Delete a snapshot, then the VDI.
	h.ok(t, nil, "vdi", "delete", "-s", "snap2", "vol")
	h.exit(t, exitMissing, nil, "vdi", "read", "-s", "snap2", "vol")
	h.ok(t, nil, "vdi", "delete", "cl")
	if out := h.ok(t, nil, "-r", "vdi", "list", "cl"); len(out) != 0 {
		t.Fatalf("deleted VDI still listed: %q", out)
	}
	h.exit(t, exitMissing, nil, "vdi", "delete", "cl")

	// Shut down: the node stops serving (and exits).
	h.ok(t, nil, "cluster", "shutdown")
	h.exit(t, exitSysFail, nil, "vdi", "read", "vol", "0", "1")
}

// TestFormatAndKill reformats a cluster that has VDIs, then stops a node
// by its id.
func TestFormatAndKill(t *testing.T) {
	t.Parallel()
	h := startSheep(t)
	// Three copies on one node need confirmation, which a script cannot give.
	r := h.exit(t, exitUsage, nil, "cluster", "format")
	if !bytes.Contains(r.err, []byte("3 copies need 3 zones, the cluster has 1")) {
		t.Errorf("format with too few zones: %q", r.err)
	}
	h.ok(t, nil, "cluster", "format", "-c", "1")
	h.ok(t, nil, "vdi", "create", "v", "4M")
	r = h.exit(t, exitUsage, nil, "cluster", "format", "-c", "1")
	if !bytes.Contains(r.err, []byte("formatting destroys the cluster's 1 VDIs")) {
		t.Errorf("format of a cluster with VDIs: %q", r.err)
	}
	h.ok(t, nil, "cluster", "format", "-f", "-c", "1", "-z", "23")
	if out := h.ok(t, nil, "-r", "vdi", "list"); len(out) != 0 {
		t.Fatalf("VDIs survived the format: %q", out)
	}
	if out := string(h.ok(t, nil, "cluster", "info", "-v")); !strings.Contains(out, "Cluster object size: 8388608 bytes") {
		t.Fatalf("cluster info after format -z 23:\n%s", out)
	}
	h.exit(t, exitUsage, nil, "node", "kill")
	h.exit(t, exitUsage, nil, "node", "kill", "1")
	h.exit(t, exitUsage, nil, "node", "kill", "-l", "0")
	h.ok(t, nil, "node", "kill", "0")
	select {
	case <-h.exited:
		h.exited <- nil // for the cleanup
	case <-time.After(20 * time.Second):
		t.Fatalf("sheep still running after dog node kill\n%s", h.logTail())
	}
	h.exit(t, exitSysFail, nil, "node", "list")
}

// TestThreeNodes exercises what needs several nodes: numbering, capacity,
// placement of copies and erasure-coded strips, and waiting for the
// recovery a node's departure causes.
func TestThreeNodes(t *testing.T) {
	t.Parallel()
	nodes := startCluster(t, 3)
	h := nodes[0]
	h.ok(t, nil, "cluster", "format", "-c", "2")
	list := strings.Split(strings.TrimSpace(string(h.ok(t, nil, "-r", "node", "list"))), "\n")
	if len(list) != 3 {
		t.Fatalf("node list -r: %q", list)
	}
	addrs := map[string]bool{}
	for i, line := range list {
		f := strings.Fields(line)
		if f[0] != strconv.Itoa(i) {
			t.Fatalf("node ids are not 0..2: %q", list)
		}
		addrs[f[1]] = true
	}
	for _, n := range nodes {
		if !addrs[n.addr+":7000"] {
			t.Fatalf("node %s missing from %q", n.addr, list)
		}
	}
	if ni := strings.Split(strings.TrimSpace(string(h.ok(t, nil, "-r", "node", "info"))), "\n"); len(ni) != 4 || !strings.HasPrefix(ni[3], "Total 12884901888 ") {
		t.Fatalf("node info -r: %q", ni)
	}

	// Two copies: object 0 is on the two nodes the ring names.
	h.ok(t, nil, "vdi", "create", "v", "32M")
	data := randomBytes(4, 32*mib)
	h.ok(t, data, "vdi", "write", "v")
	var loc struct {
		Holders []struct {
			Addr string `json:"addr"`
			Live bool   `json:"live"`
		} `json:"holders"`
		Expected []string `json:"expected"`
	}
	if err := json.Unmarshal(h.ok(t, nil, "-o", "json", "vdi", "object", "-i", "0", "v"), &loc); err != nil {
		t.Fatal(err)
	}
	holders := map[string]bool{}
	for _, x := range loc.Holders {
		if x.Live {
			holders[x.Addr] = true
		}
	}
	if len(loc.Expected) != 2 || len(holders) != 2 || !holders[loc.Expected[0]] || !holders[loc.Expected[1]] {
		t.Fatalf("object 0 of a 2-copy VDI: expected on %v, held by %v", loc.Expected, holders)
	}

	// Erasure coding 2:1 spreads strips 0, 1, 2 over the three nodes.
	h.ok(t, nil, "vdi", "create", "-c", "2:1", "ec", "8M")
	h.ok(t, data[:8*mib], "vdi", "write", "ec")
	if h.sum(t, "vdi", "read", "ec") != sha256.Sum256(data[:8*mib]) {
		t.Fatal("erasure-coded VDI reads back differently")
	}
	if out := string(h.ok(t, nil, "vdi", "object", "-i", "1", "ec")); strings.Count(out, " has strip ") != 3 {
		t.Fatalf("strips of an erasure-coded object:\n%s", out)
	}
	if row := rawRow(t, h.ok(t, nil, "-r", "vdi", "list", "ec"), "ec", 0); row[8] != "2:1" {
		t.Fatalf("erasure-coded row %q", row)
	}

	// Kill a node holding a copy (not the one dog talks to); recovery
	// makes a second copy again.
	victim := -1
	for i, line := range list {
		a := strings.Fields(line)[1]
		if a != h.addr+":7000" && (victim < 0 || holders[a]) {
			victim = i
		}
	}
	h.ok(t, nil, "node", "kill", strconv.Itoa(victim))
	h.ok(t, nil, "node", "recovery", "-P")
	if got := strings.Count(strings.TrimSpace(string(h.ok(t, nil, "-r", "node", "list"))), "\n") + 1; got != 2 {
		t.Fatalf("%d nodes after the kill", got)
	}
	if h.sum(t, "vdi", "read", "v") != sha256.Sum256(data) {
		t.Fatal("data changed after a node left")
	}
	if err := json.Unmarshal(h.ok(t, nil, "-o", "json", "vdi", "object", "-i", "0", "v"), &loc); err != nil {
		t.Fatal(err)
	}
	live := 0
	for _, x := range loc.Holders {
		if x.Live {
			live++
		}
	}
	if live != 2 {
		t.Fatalf("after recovery object 0 has %d copies, want 2: %+v", live, loc)
	}
	if info := string(h.ok(t, nil, "cluster", "info", "-d")); !strings.Contains(info, "      2 [-") {
		t.Fatalf("cluster info -d does not show the departure:\n%s", info)
	}
}

// TestQEMUSeesDogsData checks dog against another client of the same VDI:
// qemu-img over the sheep's NBD server reads what dog wrote, and dog reads
// what qemu-img wrote.
func TestQEMUSeesDogsData(t *testing.T) {
	t.Parallel()
	qemuImg, err := exec.LookPath("qemu-img")
	if err != nil {
		if testing.Short() {
			t.Skip("qemu-img not installed (apt install qemu-utils)")
		}
		t.Fatal("qemu-img not installed (apt install qemu-utils)")
	}
	h := startNode(t, "", func(addr string) []string { return []string{"--nbd", addr + ":10809"} })
	h.ok(t, nil, "cluster", "format", "-c", "1")
	h.ok(t, nil, "vdi", "create", "vol", "64M")
	dir := t.TempDir()
	img := filepath.Join(dir, "dog.img")
	data := append(randomBytes(6, 24*mib), make([]byte, 40*mib)...)
	if err := os.WriteFile(img, data, 0o644); err != nil {
		t.Fatal(err)
	}
	h.ok(t, data[:24*mib], "vdi", "write", "vol")
	nbd := "nbd://" + h.addr + ":10809/vol"
	// NBD exports appear asynchronously after the VDI is created.
	var out []byte
	for i := 0; i < 50; i++ {
		if out, err = exec.Command(qemuImg, "compare", "-f", "raw", "-F", "raw", img, nbd).CombinedOutput(); err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("qemu-img compare of dog's data over NBD: %v\n%s", err, out)
	}
	other := filepath.Join(dir, "qemu.img")
	if err := os.WriteFile(other, randomBytes(7, 64*mib), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(qemuImg, "convert", "-n", "-f", "raw", "-O", "raw", other, nbd).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img convert into the NBD export: %v\n%s", err, out)
	}
	want, err := os.ReadFile(other)
	if err != nil {
		t.Fatal(err)
	}
	if h.sum(t, "vdi", "read", "vol") != sha256.Sum256(want) {
		t.Fatal("dog does not read what qemu-img wrote through NBD")
	}
}
