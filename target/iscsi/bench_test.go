package iscsi

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gosheep/gosheep/volume"
)

// fileDevice is a volume.Device over a plain file, so that the benchmark
// compares like with like against tgt serving the same kind of file.
type fileDevice struct {
	f    *os.File
	size uint64
}

func (d *fileDevice) Size() uint64       { return d.size }
func (d *fileDevice) ObjectSize() uint32 { return 4 << 20 }
func (d *fileDevice) Close() error       { return d.f.Close() }

func (d *fileDevice) check(off, n uint64) error {
	if off+n < off || off+n > d.size {
		return volume.ErrOutOfRange
	}
	return nil
}

func (d *fileDevice) ReadAt(ctx context.Context, p []byte, off uint64) error {
	if err := d.check(off, uint64(len(p))); err != nil {
		return err
	}
	_, err := d.f.ReadAt(p, int64(off))
	return err
}

func (d *fileDevice) WriteAt(ctx context.Context, p []byte, off uint64, fua bool) error {
	if err := d.check(off, uint64(len(p))); err != nil {
		return err
	}
	if _, err := d.f.WriteAt(p, int64(off)); err != nil {
		return err
	}
	if fua {
		return syscall.Fdatasync(int(d.f.Fd()))
	}
	return nil
}

func (d *fileDevice) Flush(ctx context.Context) error { return d.f.Sync() }

func (d *fileDevice) Discard(ctx context.Context, off, n uint64) error {
	if err := d.check(off, n); err != nil {
		return err
	}
	const punchHole, keepSize = 0x02, 0x01
	return syscall.Fallocate(int(d.f.Fd()), punchHole|keepSize, int64(off), int64(n))
}

func (d *fileDevice) WriteZeroes(ctx context.Context, off, n uint64, fua bool) error {
	return d.Discard(ctx, off, n)
}

func (d *fileDevice) Extents(ctx context.Context, off, n uint64) ([]volume.Extent, error) {
	if err := d.check(off, n); err != nil {
		return nil, err
	}
	return []volume.Extent{{Offset: off, Length: n, Allocated: true}}, nil
}

func newFileDevice(tb testing.TB, path string, size uint64) *fileDevice {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		tb.Fatal(err)
	}
	if err := f.Truncate(int64(size)); err != nil {
		tb.Fatal(err)
	}
	return &fileDevice{f: f, size: size}
}

// tgtd runs a tgt daemon serving one file as LUN 1 on 127.0.0.1:port.
func startTgt(b *testing.B, file string) (url string) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	ctl := strconv.Itoa(1000 + rand.IntN(8000))
	os.MkdirAll("/var/run/tgtd", 0o755)
	cmd := exec.Command(tool(b, "tgtd"), "-f", "-C", ctl, "--iscsi", fmt.Sprintf("portal=127.0.0.1:%d", port))
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	adm := func(args ...string) error {
		out, err := exec.Command(tool(b, "tgtadm"), append([]string{"-C", ctl, "--lld", "iscsi"}, args...)...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("tgtadm %v: %v %s", args, err, out)
		}
		return nil
	}
	b.Cleanup(func() {
		adm("--mode", "system", "--op", "delete")
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	})
	iqn := "iqn.2026-11.io.gosheep:tgtbench"
	var aerr error
	for range 50 { // tgtd needs a moment to open its control socket
		if aerr = adm("--op", "new", "--mode", "target", "--tid", "1", "-T", iqn); aerr == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if aerr != nil {
		b.Fatal(aerr)
	}
	for _, args := range [][]string{
		{"--op", "new", "--mode", "logicalunit", "--tid", "1", "--lun", "1", "-b", file},
		{"--op", "bind", "--mode", "target", "--tid", "1", "-I", "ALL"},
	} {
		if err := adm(args...); err != nil {
			b.Fatal(err)
		}
	}
	return fmt.Sprintf("iscsi://127.0.0.1:%d/%s/1", port, iqn)
}

var benchRe = regexp.MustCompile(`Run completed in ([0-9.]+) seconds`)

// qemuBench runs one qemu-img bench and returns its wall time.
func qemuBench(b *testing.B, url string, write bool, size, count, depth int, step int) time.Duration {
	args := []string{"bench", "-f", "raw", "-t", "none", "-c", strconv.Itoa(count), "-s", strconv.Itoa(size), "-d", strconv.Itoa(depth)}
	if step > 0 {
		args = append(args, "-S", strconv.Itoa(step))
	}
	if write {
		args = append(args, "-w")
	}
	out, err := exec.Command(tool(b, "qemu-img"), append(args, url)...).CombinedOutput()
	if err != nil {
		b.Fatalf("qemu-img %v: %v\n%s", args, err, out)
	}
	m := benchRe.FindStringSubmatch(string(out))
	if m == nil {
		b.Fatalf("no result in:\n%s", out)
	}
	s, _ := strconv.ParseFloat(m[1], 64)
	return time.Duration(s * float64(time.Second))
}

// BenchmarkVsTgt compares this target (file-backed Device) with tgt
// serving a plain file, using qemu-img bench: sequential 1 MiB and
// strided ("random") 4 KiB reads and writes at queue depth 1 and 32.
// Run with: go test ./target/iscsi -run XXX -bench VsTgt -benchtime 1x
func BenchmarkVsTgt(b *testing.B) {
	const size = 1 << 30
	dir := b.TempDir()
	ours := newFileDevice(b, filepath.Join(dir, "ours.img"), size)
	theirs := filepath.Join(dir, "tgt.img")
	newFileDevice(b, theirs, size).Close()
	// Fill both so reads hit data, not holes.
	chunk := make([]byte, 4<<20)
	for i := range chunk {
		chunk[i] = byte(i * 7)
	}
	tf, _ := os.OpenFile(theirs, os.O_RDWR, 0)
	for off := int64(0); off < size; off += int64(len(chunk)) {
		ours.f.WriteAt(chunk, off)
		tf.WriteAt(chunk, off)
	}
	tf.Close()

	ts := startServer(b, Config{})
	if err := ts.AddTarget(TargetSpec{Name: "bench", VID: 1, Device: ours}); err != nil {
		b.Fatal(err)
	}
	ourURL := ts.url("bench")
	tgtURL := startTgt(b, theirs)

	type bcase struct {
		name         string
		write        bool
		bs, n, depth int
		step         int
	}
	var cases []bcase
	for _, w := range []bool{false, true} {
		rw := "read"
		if w {
			rw = "write"
		}
		for _, d := range []int{1, 32} {
			cases = append(cases,
				bcase{fmt.Sprintf("seq1M-%s-qd%d", rw, d), w, 1 << 20, 1024, d, 0},
				bcase{fmt.Sprintf("rand4k-%s-qd%d", rw, d), w, 4096, 20000, d, 4096 * 7919})
		}
	}
	var report []string
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			var tOurs, tTgt time.Duration
			for range b.N {
				tOurs += qemuBench(b, ourURL, c.write, c.bs, c.n, c.depth, c.step)
				tTgt += qemuBench(b, tgtURL, c.write, c.bs, c.n, c.depth, c.step)
			}
			ops := float64(c.n * b.N)
			mib := ops * float64(c.bs) / (1 << 20)
			oursIOPS, tgtIOPS := ops/tOurs.Seconds(), ops/tTgt.Seconds()
			b.ReportMetric(mib/tOurs.Seconds(), "MiB/s")
			b.ReportMetric(oursIOPS, "IOPS")
			b.ReportMetric(mib/tTgt.Seconds(), "tgt-MiB/s")
			b.ReportMetric(oursIOPS/tgtIOPS, "ratio")
			report = append(report, fmt.Sprintf("| %-18s | %9.0f MiB/s %8.0f IOPS | %9.0f MiB/s %8.0f IOPS | %5.2f |",
				c.name, mib/tOurs.Seconds(), oursIOPS, mib/tTgt.Seconds(), tgtIOPS, oursIOPS/tgtIOPS))
		})
	}
	fmt.Printf("\n| case               | gosheep                        | tgt                            | ratio |\n|---|---|---|---|\n%s\n",
		strings.Join(report, "\n"))
}
