package integration

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// TestBenchSmoke runs `scripts/bench --quick -t 1` end to end: a cluster,
// tgt, nbdkit, qemu-img bench, fio and the native load generator. It is an
// opt-in smoke test (GOSHEEP_BENCH_SMOKE=1), not a CI gate: it needs root
// for tgtd, takes about a minute, and its numbers mean little on a shared
// machine. It checks that the whole run works, finishes within two
// minutes, cleans up, and writes a complete report.
func TestBenchSmoke(t *testing.T) {
	if os.Getenv("GOSHEEP_BENCH_SMOKE") != "1" {
		t.Skip("opt-in benchmark smoke test: set GOSHEEP_BENCH_SMOKE=1")
	}
	needCluster(t)
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	// Build first, so that a cold build cache does not count against the
	// two minutes the run itself is allowed.
	build := exec.Command("go", "build", "-o", "bin/", "./cmd/...")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	out := filepath.Join(t.TempDir(), "bench.json")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(root, "scripts/bench"), "--quick", "-t", "1", "--json", out)
	cmd.Dir = root
	// On timeout, interrupt the whole group as Ctrl-C would, so that the
	// script's trap cleans up; kill only if that hangs.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGINT) }
	cmd.WaitDelay = 30 * time.Second
	logb, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("scripts/bench --quick -t 1 took more than 2 minutes:\n%s", tail(string(logb), 40))
	}
	if err != nil {
		t.Fatalf("scripts/bench --quick -t 1: %v\n%s", err, tail(string(logb), 40))
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	var rep struct {
		Complete    bool `json:"complete"`
		Comparisons []struct {
			Path  string  `json:"path"`
			Peer  string  `json:"peer"`
			MiBps float64 `json:"mib_s"`
			Ratio float64 `json:"ratio"`
		} `json:"comparisons"`
		Goals []struct {
			Copies int `json:"copies"`
			Tests  int `json:"tests"`
		} `json:"goals"`
	}
	if err := json.Unmarshal(b, &rep); err != nil {
		t.Fatal(err)
	}
	// --quick: one copy, QD 32, four patterns on three paths.
	if !rep.Complete || len(rep.Comparisons) != 12 {
		t.Fatalf("complete=%v, %d comparisons, want 12:\n%s", rep.Complete, len(rep.Comparisons), b)
	}
	peers := map[string]string{"iscsi": "tgt", "nbd": "nbdkit", "native": "raw-disk"}
	for _, c := range rep.Comparisons {
		if peers[c.Path] != c.Peer || c.MiBps <= 0 || c.Ratio <= 0 {
			t.Errorf("comparison %+v", c)
		}
	}
	if len(rep.Goals) != 1 || rep.Goals[0].Copies != 1 || rep.Goals[0].Tests != 4 {
		t.Errorf("goals %+v", rep.Goals)
	}
	t.Logf("scripts/bench --quick -t 1:\n%s", tail(string(logb), 25))
}
