package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gosheep/gosheep/api"
)

var update = flag.Bool("update", false, "rewrite the golden files")

// The golden tests render fixed documents, as a sheep sends them
// (testdata/state.json: OpClusterState; nodes.json: OpNodeInfo of each node,
// null for one that does not answer; index.json: inode indexes), in each
// output mode and compare with testdata/golden/*.

func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", "golden", name)
	if *update {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
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

// testApp is an app writing to buffers, in UTC, never on a terminal.
func testApp(mode string, verbose bool) (*app, *bytes.Buffer, *bytes.Buffer) {
	var out, errb bytes.Buffer
	a := &app{
		env: env{stdin: strings.NewReader(""), stdout: &out, stderr: &errb, loc: time.UTC,
			now:      func() time.Time { return time.Date(2024, 3, 6, 0, 0, 0, 0, time.UTC) },
			terminal: func(any) (bool, int) { return false, 0 }},
		output: outText, raw: mode == "raw", verbose: verbose, timeout: defaultTimeout,
		conns: nil,
	}
	if mode == "json" {
		a.output = outJSON
	}
	return a, &out, &errb
}

func loadJSON(t *testing.T, name string, v any) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
}

func fixture(t *testing.T) (*api.ClusterState, map[uint32][]uint32, []nodeStatus) {
	var st api.ClusterState
	loadJSON(t, "state.json", &st)
	var sparse map[string]map[string]uint32
	loadJSON(t, "index.json", &sparse)
	index := map[uint32][]uint32{}
	for k, entries := range sparse {
		vid, _ := strconv.ParseUint(k, 10, 32)
		v := st.State.VDIs[uint32(vid)]
		idx := make([]uint32, nrObjects(v.Size, v.BlockSizeShift))
		for i, o := range entries {
			n, _ := strconv.Atoi(i)
			idx[n] = o
		}
		index[uint32(vid)] = idx
	}
	// Indexes of VDIs without entries are all holes.
	for vid, v := range st.State.VDIs {
		if _, ok := index[vid]; !ok && !v.Deleted {
			index[vid] = make([]uint32, nrObjects(v.Size, v.BlockSizeShift))
		}
	}
	var infos []*api.NodeInfo
	loadJSON(t, "nodes.json", &infos)
	var nodes []nodeStatus
	for i, m := range members(&st) {
		ns := nodeStatus{ID: i, Addr: m.Addr.String(), Info: infos[i], m: m}
		if ns.Info == nil {
			ns.Err = "cannot connect to sheep at " + ns.Addr + ": connection refused"
		}
		nodes = append(nodes, ns)
	}
	return &st, index, nodes
}

func TestGolden(t *testing.T) {
	st, index, nodes := fixture(t)
	views := []struct {
		name    string
		verbose bool
		print   func(a *app) error
	}{
		{"cluster_info", false, func(a *app) error { return a.printClusterInfo(st, false) }},
		{"cluster_info_v", true, func(a *app) error { return a.printClusterInfo(st, false) }},
		{"cluster_info_d", false, func(a *app) error { return a.printClusterInfo(st, true) }},
		{"node_list", false, func(a *app) error { return a.printNodeList(st) }},
		{"node_list_v", true, func(a *app) error { return a.printNodeList(st) }},
		{"node_info", false, func(a *app) error { return a.printNodeInfo(st, nodes) }},
		{"node_recovery", false, func(a *app) error { return a.printRecovery(recoveryRowsOf(st, nodes)) }},
		{"vdi_list", false, func(a *app) error { return a.printVDIList(st.State, index, "") }},
		{"vdi_list_db", false, func(a *app) error { return a.printVDIList(st.State, index, "db") }},
		{"vdi_list_missing", false, func(a *app) error { return a.printVDIList(st.State, index, "nosuch") }},
		{"vdi_tree", false, func(a *app) error { return a.printTree(st.State) }},
		{"throttle", false, func(a *app) error {
			t := st.State.Throttle
			return a.emit(t, func(w io.Writer) error { return printThrottle(w, t, a.raw) })
		}},
	}
	for _, v := range views {
		for _, mode := range []string{"text", "raw", "json"} {
			a, out, errb := testApp(mode, v.verbose)
			if err := v.print(a); err != nil {
				t.Fatalf("%s %s: %v", v.name, mode, err)
			}
			golden(t, v.name+"."+mode, out.Bytes())
			if v.name == "node_info" && mode != "json" && !strings.Contains(errb.String(), "node 1 (127.0.0.2:7000): cannot connect") {
				t.Errorf("node_info %s: no warning about the silent node: %q", mode, errb.String())
			}
		}
	}
}

// The derived tables follow the documents' meaning, not only their layout.
func TestDerivedTables(t *testing.T) {
	st, index, nodes := fixture(t)
	rows := vdiRows(st.State, index, "")
	byVID := map[uint32]int{}
	for i, r := range rows {
		byVID[r.VID] = i
	}
	if _, ok := byVID[0x102]; ok {
		t.Error("a deleted VDI is listed")
	}
	w := rows[byVID[0x7c2b26]]
	if w.Used != 3<<22 || w.Shared != 253<<22 || w.Snapshot || w.Clone || w.SnapID != 0 {
		t.Errorf("alpine working row %+v", w)
	}
	if c := rows[byVID[0x1234]]; !c.Clone || c.Used != 0 || c.Shared != 256<<22 {
		t.Errorf("clone row %+v", c)
	}
	if s := rows[byVID[0x7c2b25]]; !s.Snapshot || s.SnapID != 1 || s.Tag != "golden" {
		t.Errorf("snapshot row %+v", s)
	}
	if ec := rows[byVID[0xabcdef]]; ec.Redundancy != "4:2" || ec.Used != 10<<23 {
		t.Errorf("erasure-coded row %+v", ec)
	}
	nl := nodeRows(st)
	if len(nl) != 3 || !nl[2].Self || nl[0].Self || nl[0].Role != "leader" || nl[1].Status != "failed" || nl[2].Role != "nonvoter" {
		t.Errorf("node rows %+v", nl)
	}
	// Weighted vnodes: c3 offers half the space of a1.
	if nl[2].Vnodes*2 > nl[0].Vnodes+nl[0].Vnodes/10 || nl[2].Vnodes*2 < nl[0].Vnodes-nl[0].Vnodes/10 {
		t.Errorf("vnodes %d and %d are not about 2:1", nl[0].Vnodes, nl[2].Vnodes)
	}
	rec := recoveryRowsOf(st, nodes)
	if !rec[0].Active || rec[0].Done != 100 || rec[0].Total != 400 || rec[1].Err == "" || rec[2].Active || rec[2].Err != "" {
		t.Errorf("recovery rows %+v", rec)
	}
	ci := clusterInfoOf(st)
	if ci.Redundancy != "3" || !ci.Locking || ci.Strict || len(ci.Epochs) != 3 || ci.Epochs[0].Epoch != 3 {
		t.Errorf("cluster info %+v", ci)
	}
}
