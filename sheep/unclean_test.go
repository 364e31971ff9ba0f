package sheep

import (
	"log/slog"
	"testing"
)

// TestStableSpace: a restart advertises the capacity it advertised before
// unless the measured one moved by more than spaceDrift, so drift (the Raft
// log, file-system metadata) does not make every restart a new epoch.
func TestStableSpace(t *testing.T) {
	d := &Daemon{cfg: Config{Dir: t.TempDir()}, log: slog.New(slog.DiscardHandler)}
	const gib = 1 << 30
	for _, c := range []struct {
		measured, want uint64
	}{
		{100 * gib, 100 * gib}, // first start: as measured
		{97 * gib, 100 * gib},  // drift: as before
		{104 * gib, 100 * gib},
		{90 * gib, 90 * gib}, // a real change (a smaller file system)
		{91 * gib, 90 * gib},
		{200 * gib, 200 * gib},
	} {
		if got := d.stableSpace(c.measured); got != c.want {
			t.Fatalf("measured %d GiB: advertised %d GiB, want %d", c.measured/gib, got/gib, c.want/gib)
		}
	}
}

// TestMarkRunning: the marker tells a start after an unclean stop.
func TestMarkRunning(t *testing.T) {
	dir := t.TempDir()
	if unclean, err := markRunning(dir); err != nil || unclean {
		t.Fatalf("first start: unclean=%v err=%v", unclean, err)
	}
	if unclean, err := markRunning(dir); err != nil || !unclean {
		t.Fatalf("start without a clean stop: unclean=%v err=%v, want unclean", unclean, err)
	}
}
