package voltest

import (
	"context"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gosheep/gosheep/store"
	"github.com/gosheep/gosheep/volume"
)

// LendingDevice is a Device that lends reads (volume.Lender) as the store
// lends object files: from a file holding the range, which it counts
// lends and releases of. Dir holds the files.
type LendingDevice struct {
	volume.Device
	Dir      string
	Fail     error // set: every lend fails with it (before any use)
	lends    atomic.Int64
	releases atomic.Int64
}

// Lends and Releases count lends made and released so far.
func (d *LendingDevice) Lends() int64    { return d.lends.Load() }
func (d *LendingDevice) Releases() int64 { return d.releases.Load() }

// ReadLent implements volume.Lender. The range starts 4 KiB into its file,
// so a sender that ignores the offset is caught.
func (d *LendingDevice) ReadLent(ctx context.Context, off, n uint64) (*volume.Lent, error) {
	if d.Fail != nil {
		return nil, d.Fail
	}
	b := make([]byte, 4096+n)
	if err := d.ReadAt(ctx, b[4096:], off); err != nil {
		return nil, err
	}
	f, err := os.CreateTemp(d.Dir, "lent")
	if err != nil {
		return nil, err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		os.Remove(f.Name())
		return nil, err
	}
	d.lends.Add(1)
	return store.NewRaw(f, 4096, int(n), func() {
		f.Close()
		os.Remove(f.Name())
		d.releases.Add(1)
	}), nil
}

// WaitReleased waits (up to 5 s) until every lend is released: front ends
// release after the response is written.
func (d *LendingDevice) WaitReleased(t testing.TB) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for d.Releases() != d.Lends() {
		if time.Now().After(deadline) {
			t.Fatalf("%d lends, %d released", d.Lends(), d.Releases())
		}
		time.Sleep(time.Millisecond)
	}
}
