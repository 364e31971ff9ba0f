package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"
)

// report collects samples and turns them into medians, comparisons and
// the goal verdicts.
type report struct {
	Date        string       `json:"date"`
	Host        hostInfo     `json:"host"`
	Settings    settings     `json:"settings"`
	Results     []*result    `json:"results"`
	Comparisons []comparison `json:"comparisons"`
	Goals       []goal       `json:"goals"`
	Load        []loadWindow `json:"load"`
	Storage     []storageUse `json:"storage"`
	Complete    bool         `json:"complete"` // false: interrupted or failed; partial results
	mu          sync.Mutex   `json:"-"`
	index       map[string]*result
}

type hostInfo struct {
	Hostname string `json:"hostname"`
	CPUs     int    `json:"cpus"`
	CPU      string `json:"cpu"`
	Kernel   string `json:"kernel"`
	Go       string `json:"go"`
}

type settings struct {
	Nodes   int     `json:"nodes"`
	Copies  []shape `json:"copies"`
	Seconds float64 `json:"seconds_per_test"`
	Reps    int     `json:"repetitions"`
	Size    uint64  `json:"size_bytes"`
	QDs     []int   `json:"queue_depths"`
	Quick   bool    `json:"quick"`
	// StockTgt: tgt ran with its defaults rather than our target's
	// negotiation limits and a buffer-reusing malloc.
	StockTgt bool `json:"stock_tgt"`
}

// loadWindow is the machine's load average around one cluster's tests:
// other processes on the machine make every number noisier.
type loadWindow struct {
	Copies shape  `json:"copies"`
	Before string `json:"loadavg_before"`
	After  string `json:"loadavg_after"`
}

// storageUse is the disk space one cluster used for the filled volume:
// the storage overhead of its redundancy (3 copies: 3x, 4:2: 1.5x, plus
// the stores' checksums and metadata).
type storageUse struct {
	Copies   shape   `json:"copies"`
	Data     uint64  `json:"data_bytes"`   // the volume's size, every byte written
	Stored   uint64  `json:"stored_bytes"` // bytes allocated by objects on all nodes
	Overhead float64 `json:"overhead"`     // Stored / Data
}

// result is every sample of one server, pattern and queue depth.
type result struct {
	Copies  shape   `json:"copies"` // the cluster measured next to it (peers too)
	Path    string  `json:"path"`
	Server  string  `json:"server"`
	Pattern string  `json:"pattern"`
	BS      int     `json:"block_size"`
	QD      int     `json:"qd"`
	MiBps   float64 `json:"mib_s"` // medians
	IOPS    float64 `json:"iops"`
	// Medians of CPU microseconds per request (0: not measured).
	ServerCPU  float64  `json:"server_cpu_us_per_op,omitempty"`
	MachineCPU float64  `json:"machine_cpu_us_per_op,omitempty"`
	Runs       []sample `json:"runs"`
}

// comparison is gosheep against its peer on one test.
type comparison struct {
	Copies    shape   `json:"copies"`
	Path      string  `json:"path"`
	Pattern   string  `json:"pattern"`
	QD        int     `json:"qd"`
	MiBps     float64 `json:"mib_s"`
	IOPS      float64 `json:"iops"`
	Peer      string  `json:"peer"`
	PeerMiBps float64 `json:"peer_mib_s"`
	PeerIOPS  float64 `json:"peer_iops"`
	Ratio     float64 `json:"ratio"` // ours / peer
	// Machine CPU microseconds per request, ours and the peer's, and
	// peer / ours: like Ratio, above 1 when we do better.
	MachineCPU     float64 `json:"machine_cpu_us_per_op,omitempty"`
	PeerMachineCPU float64 `json:"peer_machine_cpu_us_per_op,omitempty"`
	CPURatio       float64 `json:"cpu_ratio,omitempty"`
}

// goal is one of the project's iSCSI targets: at least tgt's throughput
// with 1 copy, within 2x of it with 3 copies.
type goal struct {
	Copies   shape    `json:"copies"`
	Want     string   `json:"want"`
	MinRatio float64  `json:"min_ratio"`
	Met      bool     `json:"met"`
	Tests    int      `json:"tests"`
	Missed   []string `json:"missed,omitempty"`
}

func newReport(o *options) *report {
	r := &report{
		Date: time.Now().UTC().Format(time.RFC3339),
		Host: hostInfo{CPUs: runtime.NumCPU(), Go: runtime.Version(), Kernel: readTrim("/proc/sys/kernel/osrelease"), CPU: cpuModel()},
		Settings: settings{Nodes: o.nodes, Copies: o.copies, Seconds: o.seconds, Reps: o.reps,
			Size: o.size, QDs: o.qds, Quick: o.quick, StockTgt: o.stockTgt},
		index: map[string]*result{},
	}
	r.Host.Hostname, _ = os.Hostname()
	return r
}

func (r *report) add(copies shape, path, server string, p pattern, qd int, s sample) {
	r.mu.Lock()
	defer r.mu.Unlock()
	key := fmt.Sprint(copies, path, server, p.Name, qd)
	res, ok := r.index[key]
	if !ok {
		res = &result{Copies: copies, Path: path, Server: server, Pattern: p.String(), BS: p.BS, QD: qd}
		r.index[key] = res
		r.Results = append(r.Results, res)
	}
	res.Runs = append(res.Runs, s)
	res.MiBps = median(res.Runs, func(s sample) float64 { return s.MiBps })
	res.IOPS = median(res.Runs, func(s sample) float64 { return s.IOPS })
	res.ServerCPU = median(res.Runs, func(s sample) float64 { return s.ServerCPU })
	res.MachineCPU = median(res.Runs, func(s sample) float64 { return s.MachineCPU })
}

func (r *report) addStorage(copies shape, data, stored uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	u := storageUse{Copies: copies, Data: data, Stored: stored}
	if data > 0 {
		u.Overhead = float64(stored) / float64(data)
	}
	r.Storage = append(r.Storage, u)
}

func (r *report) loadBefore(copies shape) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.Load = append(r.Load, loadWindow{Copies: copies, Before: loadavg()})
}

func (r *report) loadAfter(copies shape) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i := range r.Load {
		if r.Load[i].Copies == copies {
			r.Load[i].After = loadavg()
		}
	}
}

func median(ss []sample, f func(sample) float64) float64 {
	v := make([]float64, len(ss))
	for i, s := range ss {
		v[i] = f(s)
	}
	slices.Sort(v)
	if len(v) == 0 {
		return 0
	}
	if len(v)%2 == 1 {
		return v[len(v)/2]
	}
	return (v[len(v)/2-1] + v[len(v)/2]) / 2
}

// summarize pairs ours with the peers and judges the goals. It is
// idempotent and also used on a partial report.
func (r *report) summarize() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.Comparisons = r.Comparisons[:0]
	for _, ours := range r.Results {
		if ours.Server != srvGosheep {
			continue
		}
		for _, peer := range r.Results {
			if peer.Server == srvGosheep || peer.Copies != ours.Copies || peer.Path != ours.Path ||
				peer.Pattern != ours.Pattern || peer.QD != ours.QD {
				continue
			}
			c := comparison{Copies: ours.Copies, Path: ours.Path, Pattern: ours.Pattern, QD: ours.QD,
				MiBps: ours.MiBps, IOPS: ours.IOPS, Peer: peer.Server, PeerMiBps: peer.MiBps, PeerIOPS: peer.IOPS}
			if peer.MiBps > 0 {
				c.Ratio = ours.MiBps / peer.MiBps
			}
			c.MachineCPU, c.PeerMachineCPU = ours.MachineCPU, peer.MachineCPU
			if ours.MachineCPU > 0 {
				c.CPURatio = peer.MachineCPU / ours.MachineCPU
			}
			r.Comparisons = append(r.Comparisons, c)
		}
	}
	r.Goals = r.Goals[:0]
	for _, g := range []goal{
		{Copies: copies(1), Want: "iSCSI at least tgt's throughput with 1 copy", MinRatio: 1},
		{Copies: copies(3), Want: "iSCSI within 2x of tgt with 3 copies", MinRatio: 0.5},
	} {
		for _, c := range r.Comparisons {
			if c.Copies != g.Copies || c.Path != pathISCSI {
				continue
			}
			g.Tests++
			if c.Ratio < g.MinRatio {
				g.Missed = append(g.Missed, fmt.Sprintf("%s QD%d (%.2f)", c.Pattern, c.QD, c.Ratio))
			}
		}
		if g.Tests > 0 {
			g.Met = len(g.Missed) == 0
			r.Goals = append(r.Goals, g)
		}
	}
}

func (r *report) printTable(w io.Writer) {
	r.summarize()
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.Complete {
		fmt.Fprintf(w, "\nPARTIAL RESULTS: the run did not finish")
	}
	fmt.Fprintf(w, "\ngosheep benchmark, %s, %s (%d CPUs, %s, Linux %s), %d MiB volume\n",
		r.Date, r.Host.Hostname, r.Host.CPUs, r.Host.CPU, r.Host.Kernel, r.Settings.Size>>20)
	fmt.Fprintf(w, "medians of %d run(s) of %gs each; iSCSI: qemu-img bench, NBD: fio nbd engine, native: client/vdi load generator; raw disk: fio\n",
		r.Settings.Reps, r.Settings.Seconds)
	for _, copies := range r.Settings.Copies {
		var rows []comparison
		for _, c := range r.Comparisons {
			if c.Copies == copies {
				rows = append(rows, c)
			}
		}
		if len(rows) == 0 {
			continue
		}
		load := ""
		for _, l := range r.Load {
			if l.Copies == copies {
				load = fmt.Sprintf(", load average %s -> %s", l.Before, l.After)
			}
		}
		fmt.Fprintf(w, "\n%d nodes, %s%s\n", r.Settings.Nodes, copies.describe(), load)
		for _, u := range r.Storage {
			if u.Copies == copies {
				fmt.Fprintf(w, "storage: %d MiB on disk for %d MiB of data: %.2fx\n", u.Stored>>20, u.Data>>20, u.Overhead)
			}
		}
		fmt.Fprintf(w, "%-7s %-14s %3s %10s %9s %8s   %-9s %10s %9s %8s %7s %7s\n",
			"path", "pattern", "QD", "MiB/s", "IOPS", "cpu/op", "peer", "MiB/s", "IOPS", "cpu/op", "ratio", "cpu")
		fmt.Fprintln(w, strings.Repeat("-", 113))
		for _, c := range rows {
			fmt.Fprintf(w, "%-7s %-14s %3d %10.1f %9.0f %8s   %-9s %10.1f %9.0f %8s %7.2f %7s\n",
				c.Path, c.Pattern, c.QD, c.MiBps, c.IOPS, cpuCell(c.MachineCPU), c.Peer, c.PeerMiBps, c.PeerIOPS,
				cpuCell(c.PeerMachineCPU), c.Ratio, ratioCell(c.CPURatio))
		}
		fmt.Fprintln(w, "cpu/op: machine CPU microseconds per request (all processes and the kernel); cpu: peer's / ours")
	}
	r.printAcross(w)
	if len(r.Goals) > 0 {
		fmt.Fprintln(w)
	}
	for _, g := range r.Goals {
		verdict := "MET"
		if !g.Met {
			verdict = fmt.Sprintf("NOT MET in %d of %d tests: %s", len(g.Missed), g.Tests, strings.Join(g.Missed, ", "))
		}
		if !r.Complete {
			verdict += " (so far)"
		}
		fmt.Fprintf(w, "goal: %s (ratio >= %.1f): %s\n", g.Want, g.MinRatio, verdict)
	}
}

// printAcross puts gosheep's own numbers for every redundancy side by side
// (e.g. sequential writes with 3 copies against 4:2), with the storage
// each used. The caller holds r.mu.
func (r *report) printAcross(w io.Writer) {
	shapes := r.Settings.Copies
	if len(shapes) < 2 {
		return
	}
	type row struct {
		path, pattern string
		qd            int
	}
	var rows []row
	val := map[row]map[shape]float64{}
	for _, res := range r.Results {
		if res.Server != srvGosheep {
			continue
		}
		k := row{res.Path, res.Pattern, res.QD}
		if val[k] == nil {
			val[k] = map[shape]float64{}
			rows = append(rows, k)
		}
		val[k][res.Copies] = res.MiBps
	}
	if len(rows) == 0 {
		return
	}
	fmt.Fprintf(w, "\ngosheep MiB/s by redundancy, %d nodes\n", r.Settings.Nodes)
	fmt.Fprintf(w, "%-7s %-14s %3s", "path", "pattern", "QD")
	for _, s := range shapes {
		fmt.Fprintf(w, " %10s", "c="+s.String())
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, strings.Repeat("-", 26+11*len(shapes)))
	for _, k := range rows {
		fmt.Fprintf(w, "%-7s %-14s %3d", k.path, k.pattern, k.qd)
		for _, s := range shapes {
			if v, ok := val[k][s]; ok {
				fmt.Fprintf(w, " %10.1f", v)
			} else {
				fmt.Fprintf(w, " %10s", "-")
			}
		}
		fmt.Fprintln(w)
	}
	fmt.Fprintf(w, "%-26s", "storage overhead")
	for _, s := range shapes {
		cell := "-"
		for _, u := range r.Storage {
			if u.Copies == s {
				cell = fmt.Sprintf("%.2fx", u.Overhead)
			}
		}
		fmt.Fprintf(w, " %10s", cell)
	}
	fmt.Fprintln(w)
}

func (r *report) writeJSON(path string) error {
	r.summarize()
	r.mu.Lock()
	defer r.mu.Unlock()
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

func cpuCell(us float64) string {
	if us <= 0 {
		return "-"
	}
	return fmt.Sprintf("%.0f", us)
}

func ratioCell(r float64) string {
	if r <= 0 {
		return "-"
	}
	return fmt.Sprintf("%.2f", r)
}

func readTrim(p string) string {
	b, _ := os.ReadFile(p)
	return strings.TrimSpace(string(b))
}

func loadavg() string {
	f := strings.Fields(readTrim("/proc/loadavg"))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

func cpuModel() string {
	for _, l := range strings.Split(readTrim("/proc/cpuinfo"), "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return runtime.GOARCH
}
