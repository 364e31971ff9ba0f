package integration

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// BenchmarkRecoveryRate measures how fast the survivors restore redundancy
// after a node loss (MiB/s of objects recovered and seconds until every
// survivor finished) next to the raw speed of copying the same bytes
// within the data directory's file system, in the same run.
//
//	go test ./integration -run XXX -bench RecoveryRate -benchtime 1x
func BenchmarkRecoveryRate(b *testing.B) {
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		rt := b
		c := newCluster(rt, 3)
		c.format("2")
		const size = 256 << 20
		createVDI(rt, c.nodes[0], "vol", size)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		if err := openVDI(rt, c.nodes[0], "vol").WriteAt(ctx, randomBytes(size), 0); err != nil {
			b.Fatal(err)
		}
		cancel()
		c.waitRecovered(c.nodes...)
		// Raw baseline: copy 256 MiB in the same file system.
		dir := filepath.Dir(c.nodes[1].dataDir())
		src, dst := filepath.Join(dir, "raw.src"), filepath.Join(dir, "raw.dst")
		os.WriteFile(src, randomBytes(size), 0o644)
		start := time.Now()
		in, _ := os.ReadFile(src)
		os.WriteFile(dst, in, 0o644)
		f, _ := os.Open(dst)
		f.Sync()
		f.Close()
		raw := float64(size) / (1 << 20) / time.Since(start).Seconds()

		b.StartTimer()
		killed := time.Now()
		c.nodes[2].kill()
		waitFor(rt, "two-member epoch", time.Minute, func() bool { return len(c.nodes[0].state(rt).State.Current().Members) == 2 })
		detected := time.Since(killed)
		c.waitRecovered(c.nodes[0], c.nodes[1])
		total := time.Since(killed)
		b.StopTimer()
		var bytes uint64
		for _, n := range c.nodes[:2] {
			bytes += n.info(rt).Recovery.Bytes
		}
		rate := float64(bytes) / (1 << 20) / (total - detected).Seconds()
		b.ReportMetric(rate, "recovery-MiB/s")
		b.ReportMetric(raw, "raw-copy-MiB/s")
		b.ReportMetric(rate/raw, "ratio")
		b.ReportMetric(total.Seconds(), "s-to-full-redundancy")
		b.ReportMetric(detected.Seconds(), "s-to-detect")
	}
}
