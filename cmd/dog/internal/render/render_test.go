package render

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite the golden files")

// golden compares got with testdata/name, or rewrites it with -update.
func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs:\n--- got\n%s\n--- want\n%s", name, got, want)
	}
}

// both renders f in the human and the raw layout and checks each.
func both(t *testing.T, name string, f func(o Options) ([]byte, error)) {
	t.Helper()
	for _, raw := range []bool{false, true} {
		got, err := f(Options{Raw: raw, Loc: time.UTC})
		if err != nil {
			t.Fatal(err)
		}
		suffix := ".txt"
		if raw {
			suffix = ".raw"
		}
		golden(t, name+suffix, got)
	}
}

var t0 = time.Date(2024, 3, 5, 7, 8, 9, 0, time.UTC)

func TestVDIList(t *testing.T) {
	rows := []VDI{
		{Name: "alpine", SnapID: 1, Snapshot: true, Size: 10 << 30, Used: 1 << 30, Created: t0, VID: 0x7c2b25, Redundancy: "3", Tag: "golden", BSS: 22},
		{Name: "alpine", Size: 10 << 30, Used: 12 << 20, Shared: 1012 << 20, Created: t0.Add(time.Hour), VID: 0x7c2b26, Redundancy: "3", BSS: 22},
		{Name: "vm one", Clone: true, Size: 20 << 30, Shared: 1 << 30, Created: t0.Add(2 * time.Hour), VID: 0x1234, Redundancy: "4:2", BSS: 23},
		{Name: `odd\name`, Size: 1 << 40, Created: t0, VID: 0xabcdef, Redundancy: "1", BSS: 20},
	}
	both(t, "vdi_list", func(o Options) ([]byte, error) {
		var b bytes.Buffer
		err := VDIList(&b, rows, o)
		return b.Bytes(), err
	})
}

func TestNodeList(t *testing.T) {
	nodes := []Node{
		{ID: 0, Addr: "127.0.0.1:7000", Vnodes: 8192, Zone: 16777343, Status: "alive", Role: "leader"},
		{ID: 1, Addr: "127.0.0.2:7000", Vnodes: 8190, Zone: 33554559, Self: true, Status: "alive", Role: "voter"},
		{ID: 2, Addr: "[fd00::3]:7000", Vnodes: 0, Zone: 3, Status: "failed", Role: "nonvoter"},
	}
	for _, verbose := range []bool{false, true} {
		name := "node_list"
		if verbose {
			name += "_verbose"
		}
		both(t, name, func(o Options) ([]byte, error) {
			var b bytes.Buffer
			err := NodeList(&b, nodes, verbose, o)
			return b.Bytes(), err
		})
	}
}

func TestNodeInfo(t *testing.T) {
	nodes := []NodeUsage{
		{ID: 0, Size: 100 << 30, Used: 25 << 30, Avail: 74 << 30},
		{ID: 2, Size: 50 << 30, Used: 5 << 20, Avail: 49 << 30},
	}
	both(t, "node_info", func(o Options) ([]byte, error) {
		var b bytes.Buffer
		err := NodeInfo(&b, nodes, 3<<40, o)
		return b.Bytes(), err
	})
	var b bytes.Buffer
	if err := NodeInfo(&b, []NodeUsage{{ID: 0}}, 0, Options{}); err != nil {
		t.Fatal(err) // zero capacity must not divide by zero
	}
}

func clusterFixture() ClusterInfo {
	return ClusterInfo{
		Status: "running, auto-recovery enabled", Formatted: true, Store: "plain", Redundancy: "3", Created: t0,
		Epochs: []Epoch{
			{Epoch: 3, Time: t0.Add(2 * time.Minute), Nodes: []EpochNode{{"127.0.0.1:7000", 8192}, {"127.0.0.3:7000", 8192}}},
			{Epoch: 2, Time: t0.Add(time.Minute), Nodes: []EpochNode{{"127.0.0.1:7000", 8192}, {"127.0.0.2:7000", 8192}, {"127.0.0.3:7000", 8192}}},
			{Epoch: 1, Time: t0, Nodes: []EpochNode{{"127.0.0.1:7000", 8192}, {"127.0.0.2:7000", 8192}}},
		},
		Extra: []string{"Cluster leader: abc (127.0.0.1:7000)"},
	}
}

func TestCluster(t *testing.T) {
	for _, c := range []struct {
		name          string
		ci            ClusterInfo
		verbose, diff bool
	}{
		{"cluster_info", clusterFixture(), false, false},
		{"cluster_info_verbose", clusterFixture(), true, false},
		{"cluster_info_diff", clusterFixture(), false, true},
		{"cluster_info_unformatted", ClusterInfo{Status: "Waiting for cluster to be formatted"}, true, false},
	} {
		both(t, c.name, func(o Options) ([]byte, error) {
			var b bytes.Buffer
			err := Cluster(&b, c.ci, c.verbose, c.diff, o)
			return b.Bytes(), err
		})
	}
}

func TestRecoveryList(t *testing.T) {
	rows := []Recovery{
		{ID: 0, Addr: "127.0.0.1:7000", Vnodes: 8192, Zone: 1, Active: true, Done: 10, Total: 40},
		{ID: 1, Addr: "127.0.0.2:7000", Vnodes: 8192, Zone: 2},
		{ID: 2, Addr: "127.0.0.3:7000", Vnodes: 8192, Zone: 3, Active: true},
	}
	both(t, "recovery", func(o Options) ([]byte, error) {
		var b bytes.Buffer
		err := RecoveryList(&b, rows, o)
		return b.Bytes(), err
	})
}

func TestTree(t *testing.T) {
	m := time.Minute
	vdis := []TreeVDI{
		// vol: s1 -> s2 -> (rolled back to s1) -> s3 -> working; s2 -> s2b
		{Name: "vol", VID: 10, Created: t0},
		{Name: "vol", VID: 11, Parent: 10, Created: t0.Add(m)},
		{Name: "vol", VID: 12, Parent: 10, Created: t0.Add(2 * m)},
		{Name: "vol", VID: 13, Parent: 12, Created: t0.Add(3 * m), Current: true},
		{Name: "vol", VID: 14, Parent: 11, Created: t0.Add(4 * m)},
		// a clone of vol's first snapshot starts its own tree
		{Name: "clone", VID: 20, Parent: 10, Created: t0.Add(5 * m), Current: true},
		// broken parent links must not loop
		{Name: "loop", VID: 30, Parent: 31, Created: t0},
		{Name: "loop", VID: 31, Parent: 30, Created: t0},
		{Name: "self", VID: 40, Parent: 40, Created: t0, Current: true},
	}
	var b bytes.Buffer
	if err := Tree(&b, vdis, Options{Loc: time.UTC}); err != nil {
		t.Fatal(err)
	}
	golden(t, "tree.txt", b.Bytes())
}

func TestObjectLocation(t *testing.T) {
	for name, l := range map[string]Location{
		"object_inode": {OID: "807c2b2500000000", VID: 0x7c2b25, Inode: true, Allocated: true, Copies: 3, Epoch: 4, Nodes: 3,
			Holders:  []Holder{{Addr: "127.0.0.1:7000", Live: true}, {Addr: "127.0.0.2:7000", Live: true, Stale: []uint32{2}}, {Addr: "127.0.0.3:7000", Err: "connection refused"}},
			Expected: []string{"127.0.0.1:7000", "127.0.0.2:7000", "127.0.0.3:7000"}},
		"object_ec": {OID: "007c2b2500000007", VID: 0x7c2b26, Index: 7, Allocated: true, Copies: 3, EC: true, Epoch: 1, Nodes: 3,
			Holders:  []Holder{{Addr: "127.0.0.1:7000", Live: true, Strips: []int{1}}, {Addr: "127.0.0.2:7000", Live: true, Strips: []int{0, 2}}, {Addr: "127.0.0.3:7000"}},
			Expected: []string{"127.0.0.2:7000", "127.0.0.1:7000", "127.0.0.3:7000"}},
		"object_hole": {VID: 0x7c2b26, Index: 9, Copies: 3},
		"object_few_nodes": {OID: "007c2b2600000001", VID: 0x7c2b26, Index: 1, Allocated: true, Copies: 3, Epoch: 1, Nodes: 1,
			Holders: []Holder{{Addr: "127.0.0.1:7000", Live: true}}, Expected: []string{"127.0.0.1:7000"}},
	} {
		var b bytes.Buffer
		if err := ObjectLocation(&b, l); err != nil {
			t.Fatal(err)
		}
		golden(t, name+".txt", b.Bytes())
	}
	var b bytes.Buffer
	if err := ObjectMap(&b, []uint32{0x7c2b25, 0, 0x7c2b26}, -1); err != nil {
		t.Fatal(err)
	}
	if err := ObjectMap(&b, []uint32{0x7c2b25, 0, 0x7c2b26}, 1); err != nil {
		t.Fatal(err)
	}
	golden(t, "object_map.txt", b.Bytes())
}

func TestEscapeName(t *testing.T) {
	for in, want := range map[string]string{"plain": "plain", "a b": `a\ b`, `a\b`: `a\\b`, "t\tn\n": "t\\\tn\\\n"} {
		if got := escapeName(in); got != want {
			t.Errorf("escapeName(%q) = %q, want %q", in, got, want)
		}
	}
}
