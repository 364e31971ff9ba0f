package main

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gosheep/gosheep/client/vdi"
)

// Front ends, each measured against its peer.
const (
	pathISCSI  = "iscsi"  // qemu-img bench (libiscsi) vs tgt
	pathNBD    = "nbd"    // fio's nbd engine vs nbdkit
	pathNative = "native" // our load generator through client/vdi vs fio on the raw disk
)

// pattern is one access pattern.
type pattern struct {
	Name   string
	Write  bool
	Random bool
	BS     int
}

func (p pattern) String() string {
	if p.BS >= 1<<20 {
		return fmt.Sprintf("%s %dM", p.Name, p.BS>>20)
	}
	return fmt.Sprintf("%s %dk", p.Name, p.BS>>10)
}

func patterns() []pattern {
	return []pattern{
		{Name: "seq-read", BS: 1 << 20},
		{Name: "seq-write", Write: true, BS: 1 << 20},
		{Name: "rand-read", Random: true, BS: 4096},
		{Name: "rand-write", Write: true, Random: true, BS: 4096},
	}
}

// sample is one measurement.
type sample struct {
	MiBps float64 `json:"mib_s"`
	IOPS  float64 `json:"iops"`
	Ops   float64 `json:"ops"` // requests completed
	// CPU microseconds per request (cpu.go): the serving processes, and
	// the whole machine.
	ServerCPU  float64 `json:"server_cpu_us_per_op,omitempty"`
	MachineCPU float64 `json:"machine_cpu_us_per_op,omitempty"`
}

func rate(bytes, ops uint64, secs float64) sample {
	return sample{MiBps: float64(bytes) / secs / (1 << 20), IOPS: float64(ops) / secs, Ops: float64(ops)}
}

// qemuBench runs `qemu-img bench`, which counts requests rather than
// time: the first run of each test is a short calibration that sets the
// count for the wanted duration (and warms up).
type qemuBench struct {
	mu     sync.Mutex
	counts map[string]int
}

var completedRE = regexp.MustCompile(`Run completed in ([0-9.]+) seconds`)

// goldenStep is qemu-img bench's -S for "random" 4 KiB I/O. qemu-img bench
// has no random mode: request i goes to (i × step) mod size. A step of
// about 0.618 × size (golden ratio), rounded to an odd number of blocks,
// is coprime with the power-of-two block count, so every block is visited
// once per size/bs requests, and consecutive requests land far apart —
// in different 4 MiB objects, with no sequential run to merge or read
// ahead. It is a fixed permutation, not random, but it defeats the same
// optimisations randomness does.
func goldenStep(size uint64, bs int) uint64 {
	blocks := size / uint64(bs)
	s := uint64(float64(blocks) * 0.6180339887)
	if s%2 == 0 {
		s++
	}
	return s * uint64(bs)
}

func (q *qemuBench) run(ctx context.Context, key, url string, size uint64, p pattern, qd int, secs float64) (sample, error) {
	q.mu.Lock()
	count, ok := q.counts[key]
	q.mu.Unlock()
	if !ok {
		c0 := max(4*qd, 64)
		if p.BS < 1<<20 {
			c0 = max(c0, 2000)
		}
		for {
			el, err := q.once(ctx, url, size, p, qd, c0)
			if err != nil {
				return sample{}, err
			}
			if el >= 0.2 || c0 > 1<<24 {
				count = max(int(float64(c0)*secs/el), 2*qd)
				break
			}
			c0 *= 4
		}
		q.mu.Lock()
		q.counts[key] = count
		q.mu.Unlock()
	}
	el, err := q.once(ctx, url, size, p, qd, count)
	if err != nil {
		return sample{}, err
	}
	return rate(uint64(count)*uint64(p.BS), uint64(count), el), nil
}

// once runs qemu-img bench and returns the run time it reports.
func (q *qemuBench) once(ctx context.Context, url string, size uint64, p pattern, qd, count int) (float64, error) {
	args := []string{"bench", "-f", "raw", "-t", "none", "-c", strconv.Itoa(count), "-d", strconv.Itoa(qd), "-s", strconv.Itoa(p.BS)}
	if p.Write {
		// Not zeros: no target may take a shortcut on them.
		args = append(args, "-w", "--pattern=0xa5")
	}
	if p.Random {
		args = append(args, "-S", strconv.FormatUint(goldenStep(size, p.BS), 10))
	}
	args = append(args, url)
	out, err := exec.CommandContext(ctx, "qemu-img", args...).CombinedOutput()
	if err != nil {
		return 0, fmt.Errorf("qemu-img %s: %w: %s", strings.Join(args, " "), err, tailStr(string(out), 600))
	}
	m := completedRE.FindSubmatch(out)
	if m == nil {
		return 0, fmt.Errorf("qemu-img bench: no run time in %q", tailStr(string(out), 300))
	}
	el, err := strconv.ParseFloat(string(m[1]), 64)
	if err != nil || el <= 0 {
		return 0, fmt.Errorf("qemu-img bench: bad run time %q", m[1])
	}
	return el, nil
}

// fioTarget is where fio does its I/O: an NBD URI or the raw file.
type fioTarget struct {
	uri  string // nbd://...
	raw  rawFile
	size uint64
}

func runFio(ctx context.Context, dir string, t fioTarget, p pattern, qd int, secs float64) (sample, error) {
	rw := map[[2]bool]string{{false, false}: "read", {true, false}: "write", {false, true}: "randread", {true, true}: "randwrite"}[[2]bool{p.Write, p.Random}]
	out := filepath.Join(dir, "fio.json")
	args := []string{
		"--name=bench", "--rw=" + rw, "--bs=" + strconv.Itoa(p.BS),
		fmt.Sprintf("--runtime=%dms", int(secs*1000)), "--time_based",
		"--norandommap", "--randrepeat=0",
		"--output-format=json", "--output=" + out,
	}
	switch {
	case t.uri != "":
		args = append(args, "--ioengine=nbd", "--uri="+t.uri, "--iodepth="+strconv.Itoa(qd))
	case t.raw.direct:
		args = append(args, "--filename="+t.raw.path, "--size="+strconv.FormatUint(t.size, 10),
			"--ioengine=libaio", "--direct=1", "--iodepth="+strconv.Itoa(qd))
	default:
		// No O_DIRECT on this filesystem (tmpfs): synchronous I/O from
		// qd threads through the page cache.
		args = append(args, "--filename="+t.raw.path, "--size="+strconv.FormatUint(t.size, 10),
			"--ioengine=psync", "--numjobs="+strconv.Itoa(qd), "--group_reporting", "--thread")
	}
	os.Remove(out)
	if msg, err := exec.CommandContext(ctx, "fio", args...).CombinedOutput(); err != nil {
		return sample{}, fmt.Errorf("fio %s: %w: %s", strings.Join(args, " "), err, tailStr(string(msg), 600))
	}
	b, err := os.ReadFile(out)
	if err != nil {
		return sample{}, err
	}
	sm, err := parseFio(b)
	if err != nil {
		return sample{}, err
	}
	sm.Ops = sm.IOPS * secs // fio reports rates; its runs are time-based
	return sm, nil
}

// parseFio sums read and write rates of the (single, or grouped) job.
func parseFio(b []byte) (sample, error) {
	var r struct {
		Jobs []struct {
			Error int `json:"error"`
			Read  struct {
				BW   float64 `json:"bw_bytes"`
				IOPS float64 `json:"iops"`
			} `json:"read"`
			Write struct {
				BW   float64 `json:"bw_bytes"`
				IOPS float64 `json:"iops"`
			} `json:"write"`
		} `json:"jobs"`
	}
	if err := json.Unmarshal(b, &r); err != nil {
		return sample{}, fmt.Errorf("fio output: %w", err)
	}
	if len(r.Jobs) == 0 {
		return sample{}, fmt.Errorf("fio output: no jobs")
	}
	var s sample
	for _, j := range r.Jobs {
		if j.Error != 0 {
			return sample{}, fmt.Errorf("fio job error %d", j.Error)
		}
		s.MiBps += (j.Read.BW + j.Write.BW) / (1 << 20)
		s.IOPS += j.Read.IOPS + j.Write.IOPS
	}
	if s.IOPS == 0 {
		return sample{}, fmt.Errorf("fio did no I/O")
	}
	return s, nil
}

// runNative drives v the way QEMU's sheepdog driver did: one connection,
// qd requests in flight. Random requests go to block k·qd + worker, so no
// two workers ever write the same block at once (QEMU never overlaps
// writes either); sequential requests take the next offset in turn and
// wrap at the end.
func runNative(ctx context.Context, v *vdi.VDI, size uint64, p pattern, qd int, secs float64) (sample, error) {
	bs := uint64(p.BS)
	blocks := size / bs
	var next, ops atomic.Uint64
	end := time.Now().Add(time.Duration(secs * float64(time.Second)))
	start := time.Now()
	errs := make([]error, qd)
	var wg sync.WaitGroup
	for w := range qd {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := randomBuf(p.BS)
			rng := rand.New(rand.NewPCG(uint64(w), uint64(time.Now().UnixNano())))
			for time.Now().Before(end) && ctx.Err() == nil {
				var blk uint64
				if p.Random {
					blk = rng.Uint64N(blocks/uint64(qd))*uint64(qd) + uint64(w)
				} else {
					blk = (next.Add(1) - 1) % blocks
				}
				var err error
				if p.Write {
					err = v.WriteAt(ctx, buf, blk*bs)
				} else {
					err = v.ReadAt(ctx, buf, blk*bs)
				}
				if err != nil {
					errs[w] = err
					return
				}
				ops.Add(1)
			}
		}()
	}
	wg.Wait()
	el := time.Since(start).Seconds()
	for _, err := range errs {
		if err != nil {
			return sample{}, fmt.Errorf("native %s QD%d: %w", p, qd, err)
		}
	}
	if err := ctx.Err(); err != nil {
		return sample{}, err
	}
	n := ops.Load()
	return rate(n*bs, n, el), nil
}

// parallel runs fn(0..n-1) with at most k in flight, stopping at the first error.
func parallel(ctx context.Context, k int, n uint64, fn func(uint64) error) error {
	var (
		next     atomic.Uint64
		wg       sync.WaitGroup
		mu       sync.Mutex
		firstErr error
	)
	for range k {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1) - 1
				if i >= n || ctx.Err() != nil {
					return
				}
				if err := fn(i); err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
					next.Store(n)
					return
				}
			}
		}()
	}
	wg.Wait()
	if firstErr != nil {
		return firstErr
	}
	return ctx.Err()
}

func tailStr(s string, n int) string {
	s = strings.TrimSpace(s)
	if len(s) > n {
		s = "..." + s[len(s)-n:]
	}
	return s
}
