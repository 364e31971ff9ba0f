package nbd

// BenchmarkFio drives fio's nbd engine against this server (backed by a
// fileDevice) and against nbdkit's file plugin (or qemu-nbd) serving the
// same file, alternating, and reports the median of each and their ratio.
// Each b.N iteration is one run of each server; on a shared machine use a
// few to tame the noise:
//
//	go test ./target/nbd/ -run '^$' -bench Fio -benchtime 3x
//
// NBD_BENCH_RUNTIME (seconds, default 3) sets each fio run's length and
// NBD_BENCH_SIZE (MiB, default 512) the file size.

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"
)

type fioResult struct {
	MiBps float64
	IOPS  float64
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

func runFio(b *testing.B, uri, rw, bs string, depth, runtime int, size uint64) fioResult {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(runtime+60)*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "fio", "--ioengine=nbd", "--uri="+uri, "--name=bench",
		"--rw="+rw, "--bs="+bs, "--iodepth="+strconv.Itoa(depth), "--size="+strconv.FormatUint(size, 10),
		"--time_based", "--runtime="+strconv.Itoa(runtime), "--ramp_time=1", "--output-format=json").Output()
	if err != nil {
		b.Fatalf("fio %s %s: %v\n%s", uri, rw, err, out)
	}
	// fio prints a line before the JSON ("fio: connected to NBD server").
	start := 0
	for start < len(out) && out[start] != '{' {
		start++
	}
	var res struct {
		Jobs []struct {
			Read, Write struct {
				BW   float64 `json:"bw_bytes"`
				IOPS float64 `json:"iops"`
			}
			Error int `json:"error"`
		} `json:"jobs"`
	}
	if err := json.Unmarshal(out[start:], &res); err != nil || len(res.Jobs) != 1 || res.Jobs[0].Error != 0 {
		b.Fatalf("fio output (%v):\n%s", err, out)
	}
	j := res.Jobs[0]
	return fioResult{MiBps: (j.Read.BW + j.Write.BW) / (1 << 20), IOPS: j.Read.IOPS + j.Write.IOPS}
}

func freePort(b *testing.B) int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// startPeer serves path with nbdkit's file plugin, or qemu-nbd, and
// returns its URI and name.
func startPeer(b *testing.B, path string) (string, string) {
	port := freePort(b)
	var cmd *exec.Cmd
	var name, uri string
	if p, err := exec.LookPath("nbdkit"); err == nil {
		name, uri = "nbdkit", fmt.Sprintf("nbd://127.0.0.1:%d", port)
		cmd = exec.Command(p, "-f", "--exit-with-parent", "-i", "127.0.0.1", "-p", strconv.Itoa(port), "file", path)
	} else if p, err := exec.LookPath("qemu-nbd"); err == nil {
		name, uri = "qemu-nbd", fmt.Sprintf("nbd://127.0.0.1:%d/disk", port)
		cmd = exec.Command(p, "-f", "raw", "-x", "disk", "-b", "127.0.0.1", "-p", strconv.Itoa(port), "-t", "-e", "8",
			"--cache=writeback", "--aio=threads", path)
	} else {
		b.Skip("neither nbdkit nor qemu-nbd is installed")
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	for i := 0; ; i++ {
		c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err == nil {
			c.Close()
			break
		}
		if i == 100 {
			b.Fatalf("%s did not start: %v", name, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return uri, name
}

func BenchmarkFio(b *testing.B) {
	if testing.Short() {
		b.Skip("fio benchmark skipped in -short mode")
	}
	if _, err := exec.LookPath("fio"); err != nil {
		b.Skip("fio is not installed")
	}
	runtime := envInt("NBD_BENCH_RUNTIME", 3)
	size := uint64(envInt("NBD_BENCH_SIZE", 512)) << 20

	// A file full of data, so reads exercise the data path, not holes.
	path := filepath.Join(b.TempDir(), "bench.img")
	dev, err := newFileDevice(path, size)
	if err != nil {
		b.Fatal(err)
	}
	defer dev.f.Close()
	buf := make([]byte, 4<<20)
	r := rand.NewChaCha8([32]byte{9})
	for off := uint64(0); off < size; off += uint64(len(buf)) {
		r.Read(buf)
		if err := dev.WriteAt(context.Background(), buf, off, false); err != nil {
			b.Fatal(err)
		}
	}
	dev.Flush(context.Background())

	exps := newTestExports()
	exps.add("disk", "", false, dev)
	addr, _ := startServer(b, Config{Exports: exps})
	ours := "nbd://" + addr + "/disk"
	peerURI, peer := startPeer(b, path)

	for _, w := range []struct {
		rw, bs string
		depth  int
	}{
		{"read", "1M", 1}, {"read", "1M", 32}, {"write", "1M", 1}, {"write", "1M", 32},
		{"randread", "4k", 1}, {"randread", "4k", 32}, {"randwrite", "4k", 1}, {"randwrite", "4k", 32},
	} {
		b.Run(fmt.Sprintf("%s-%s-qd%d", w.rw, w.bs, w.depth), func(b *testing.B) {
			unit := "MiB/s"
			if w.bs == "4k" {
				unit = "IOPS"
			}
			var gs, ps []float64
			for range b.N {
				g := runFio(b, ours, w.rw, w.bs, w.depth, runtime, size)
				p := runFio(b, peerURI, w.rw, w.bs, w.depth, runtime, size)
				if unit == "IOPS" {
					gs, ps = append(gs, g.IOPS), append(ps, p.IOPS)
				} else {
					gs, ps = append(gs, g.MiBps), append(ps, p.MiBps)
				}
			}
			gv, pv := median(gs), median(ps)
			b.ReportMetric(gv, "gosheep-"+unit)
			b.ReportMetric(pv, peer+"-"+unit)
			b.ReportMetric(gv/pv, "ratio")
			b.Logf("%-10s %-3s qd%-2d gosheep %9.0f %s  %s %9.0f %s  ratio %.2f",
				w.rw, w.bs, w.depth, gv, unit, peer, pv, unit, gv/pv)
		})
	}
}

func median(v []float64) float64 {
	slices.Sort(v)
	if n := len(v); n%2 == 1 {
		return v[n/2]
	} else {
		return (v[n/2-1] + v[n/2]) / 2
	}
}
