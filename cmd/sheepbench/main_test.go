package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/gosheep/gosheep/proto"
)

// needTool fails (or, with -short, skips) when a real client is missing.
func needTool(t *testing.T, name string) {
	t.Helper()
	if _, err := lookPath(name); err != nil {
		if testing.Short() {
			t.Skipf("%s not installed (scripts/deps installs it)", name)
		}
		t.Fatalf("%s not installed (scripts/deps installs it)", name)
	}
}

func TestGoldenStepVisitsEveryBlockOnce(t *testing.T) {
	// qemu-img bench sends request i to (i*step) mod size: over size/bs
	// requests every block must come up exactly once.
	for _, size := range []uint64{64 << 20, 256 << 20, 1 << 30} {
		const bs = 4096
		step := goldenStep(size, bs)
		if step%bs != 0 || step >= size {
			t.Fatalf("size %d: step %d not a block multiple below the size", size, step)
		}
		blocks := size / bs
		seen := make([]bool, blocks)
		off := uint64(0)
		for range blocks {
			b := off / bs
			if seen[b] {
				t.Fatalf("size %d: block %d visited twice within one cycle", size, b)
			}
			seen[b] = true
			off = (off + step) % size
		}
		// Consecutive requests land in different 4 MiB objects.
		if d := min(step, size-step); d < 4<<20 {
			t.Errorf("size %d: consecutive requests only %d bytes apart", size, d)
		}
	}
}

func TestParseFio(t *testing.T) {
	b, err := os.ReadFile("testdata/fio-3.33-randread.json")
	if err != nil {
		t.Fatal(err)
	}
	s, err := parseFio(b)
	if err != nil {
		t.Fatal(err)
	}
	// Values of that recorded run.
	if math.Abs(s.IOPS-24647.840532) > 1e-6 || math.Abs(s.MiBps-100957554.0/(1<<20)) > 1e-6 {
		t.Fatalf("got %+v", s)
	}
	for _, bad := range []string{``, `{}`, `{"jobs":[]}`, `{"jobs":[{"error":5}]}`, `{"jobs":[{"read":{"iops":0}}]}`} {
		if _, err := parseFio([]byte(bad)); err == nil {
			t.Errorf("parseFio(%q) accepted", bad)
		}
	}
}

func TestMedian(t *testing.T) {
	f := func(s sample) float64 { return s.MiBps }
	for _, c := range []struct {
		in   []float64
		want float64
	}{{nil, 0}, {[]float64{3}, 3}, {[]float64{5, 1, 3}, 3}, {[]float64{4, 1, 3, 2}, 2.5}} {
		var ss []sample
		for _, v := range c.in {
			ss = append(ss, sample{MiBps: v})
		}
		if got := median(ss, f); got != c.want {
			t.Errorf("median(%v) = %v, want %v", c.in, got, c.want)
		}
	}
}

func TestFlags(t *testing.T) {
	o, err := parseFlags([]string{"--quick", "-c", "3,1", "-n", "4", "-t", "1"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if o.reps != 1 || len(o.copies) != 1 || o.copies[0] != copies(3) || len(o.qds) != 1 || o.qds[0] != 32 || o.size != 256<<20 {
		t.Fatalf("--quick: %+v", o)
	}
	if len(o.patterns) != 4 || len(o.paths) != 3 {
		t.Fatalf("defaults: %d patterns, %d paths", len(o.patterns), len(o.paths))
	}
	for _, bad := range [][]string{
		{"-c", "4", "-n", "3"}, {"-c", "4:2", "-n", "5"}, {"-c", "3:1"}, {"-c", "0"}, {"-n", "0"}, {"-t", "0"}, {"--size", "98M"}, {"--size", "32M"}, {"--size", "1T0"},
		{"--paths", "smb"}, {"--patterns", "zigzag"}, {"extra"}, {"-qd", "x"},
	} {
		if _, err := parseFlags(bad, io.Discard); err == nil {
			t.Errorf("parseFlags(%q) accepted", bad)
		}
	}
}

func TestGoals(t *testing.T) {
	r := newReport(&options{nodes: 6, copies: []shape{copies(1), copies(3), {proto.Redundancy{Copies: 6, Data: 4, Parity: 2}}}, qds: []int{32}})
	one, three, ec := r.Settings.Copies[0], r.Settings.Copies[1], r.Settings.Copies[2]
	seq := patterns()[0]
	rnd := patterns()[2]
	r.add(one, pathISCSI, srvGosheep, seq, 32, sample{MiBps: 120, IOPS: 120, MachineCPU: 400})
	r.add(one, pathISCSI, srvTgt, seq, 32, sample{MiBps: 100, IOPS: 100, MachineCPU: 300})
	r.add(one, pathISCSI, srvGosheep, rnd, 32, sample{MiBps: 9, IOPS: 9 * 256})
	r.add(one, pathISCSI, srvTgt, rnd, 32, sample{MiBps: 10, IOPS: 10 * 256})
	r.add(three, pathISCSI, srvGosheep, seq, 32, sample{MiBps: 60, IOPS: 60})
	r.add(three, pathISCSI, srvTgt, seq, 32, sample{MiBps: 100, IOPS: 100})
	r.add(three, pathNBD, srvGosheep, seq, 32, sample{MiBps: 1, IOPS: 1})
	r.add(three, pathNBD, srvNbdkit, seq, 32, sample{MiBps: 100, IOPS: 100})
	r.add(ec, pathISCSI, srvGosheep, seq, 32, sample{MiBps: 50, IOPS: 50})
	r.addStorage(three, 64<<20, 192<<20)
	r.addStorage(ec, 64<<20, 96<<20)
	r.summarize()
	if len(r.Comparisons) != 4 {
		t.Fatalf("%d comparisons, want 4", len(r.Comparisons))
	}
	if len(r.Goals) != 2 {
		t.Fatalf("goals: %+v", r.Goals)
	}
	if c := r.Comparisons[0]; c.MachineCPU != 400 || c.PeerMachineCPU != 300 || c.CPURatio != 0.75 {
		t.Errorf("CPU per request: %+v", c)
	}
	if c := r.Comparisons[1]; c.CPURatio != 0 {
		t.Errorf("CPU ratio without CPU samples: %+v", c)
	}
	if g := r.Goals[0]; g.Met || g.Tests != 2 || len(g.Missed) != 1 || !strings.HasPrefix(g.Missed[0], "rand-read 4k QD32") {
		t.Errorf("1-copy goal: %+v", g)
	}
	if g := r.Goals[1]; !g.Met || g.Tests != 1 {
		t.Errorf("3-copy goal (NBD must not count): %+v", g)
	}
	var buf bytes.Buffer
	r.printTable(&buf)
	if !strings.Contains(buf.String(), "PARTIAL") || !strings.Contains(buf.String(), "NOT MET in 1 of 2 tests") ||
		!strings.Contains(buf.String(), "storage: 192 MiB on disk for 64 MiB of data: 3.00x") || !strings.Contains(buf.String(), "c=4:2") ||
		!regexp.MustCompile(`storage overhead +- +3\.00x +1\.50x`).MatchString(buf.String()) ||
		!regexp.MustCompile(`iscsi +seq-read 1M +32 +120\.0 +60\.0 +50\.0`).MatchString(buf.String()) ||
		!regexp.MustCompile(`iscsi +seq-read 1M +32 +120\.0 +120 +400 +tgt +100\.0 +100 +300 +1\.20 +0\.75`).MatchString(buf.String()) ||
		!regexp.MustCompile(`iscsi +rand-read 4k +32 +9\.0 +2304 +- +tgt +10\.0 +2560 +- +0\.90 +-`).MatchString(buf.String()) {
		t.Errorf("table:\n%s", buf.String())
	}
	path := filepath.Join(t.TempDir(), "r.json")
	if err := r.writeJSON(path); err != nil {
		t.Fatal(err)
	}
	var back report
	b, _ := os.ReadFile(path)
	if err := json.Unmarshal(b, &back); err != nil || len(back.Results) != 9 || back.Results[0].Runs[0].MiBps != 120 {
		t.Fatalf("json round trip: %v %+v", err, back.Results)
	}
	if back.Results[0].Copies != one || back.Results[8].Copies != ec || len(back.Storage) != 2 || back.Storage[1].Overhead != 1.5 {
		t.Fatalf("json round trip of shapes: %+v %+v", back.Results, back.Storage)
	}
	if !bytes.Contains(b, []byte(`"copies": "4:2"`)) || !bytes.Contains(b, []byte(`"copies": 3`)) {
		t.Errorf("json: replicas as numbers, erasure coding as \"4:2\":\n%s", b)
	}
}

// The runners against real tools on a plain file: the arguments they
// build are accepted and their output parsed.
func TestRunnersOnFile(t *testing.T) {
	needTool(t, "qemu-img")
	needTool(t, "fio")
	dir := t.TempDir()
	img := filepath.Join(dir, "f.img")
	const size = 64 << 20
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := fillFile(ctx, img, size); err != nil {
		t.Fatal(err)
	}
	q := &qemuBench{counts: map[string]int{}}
	for _, p := range patterns() {
		s, err := q.run(ctx, p.Name, img, size, p, 4, 0.2)
		if err != nil {
			t.Fatalf("qemu-img %s: %v", p, err)
		}
		if s.IOPS <= 0 || math.Abs(s.MiBps*(1<<20)-s.IOPS*float64(p.BS)) > 1 {
			t.Fatalf("qemu-img %s: %+v", p, s)
		}
		s, err = runFio(ctx, dir, fioTarget{raw: newRawFile(img), size: size}, p, 4, 0.2)
		if err != nil {
			t.Fatalf("fio %s: %v", p, err)
		}
		if s.IOPS <= 0 {
			t.Fatalf("fio %s: %+v", p, s)
		}
	}
	// Writes carry the 0xa5 pattern, not zeros a target could shortcut.
	if _, err := q.once(ctx, img, size, patterns()[1], 1, 1); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	head := make([]byte, 4)
	if _, err := io.ReadFull(f, head); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(head, []byte{0xa5, 0xa5, 0xa5, 0xa5}) {
		t.Errorf("first bytes after a write: % x", head)
	}
}
