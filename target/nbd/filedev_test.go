package nbd

import (
	"context"
	"errors"
	"io"
	"os"
	"sync/atomic"
	"syscall"

	"github.com/gosheep/gosheep/volume"
)

// fileDevice is a volume.Device over a local file (pread, pwrite,
// fdatasync, fallocate to punch holes), so benchmarks compare the protocol
// server with nbdkit's file plugin over the same store. Like a sheepdog
// volume, it tracks allocation per object in memory (its "inode"): an
// object is allocated once written and freed when wholly discarded.
type fileDevice struct {
	f       *os.File
	size    uint64
	objSize uint32
	alloc   []atomic.Bool
}

const (
	fallocKeepSize = 0x01
	fallocPunch    = 0x02
)

func newFileDevice(path string, size uint64) (*fileDevice, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, err
	}
	if err := f.Truncate(int64(size)); err != nil {
		f.Close()
		return nil, err
	}
	const objSize = 4 << 20
	return &fileDevice{f: f, size: size, objSize: objSize, alloc: make([]atomic.Bool, (size+objSize-1)/objSize)}, nil
}

func (d *fileDevice) check(off, n uint64) error {
	if off+n < off || off+n > d.size {
		return volume.ErrOutOfRange
	}
	return nil
}

func (d *fileDevice) Size() uint64       { return d.size }
func (d *fileDevice) ObjectSize() uint32 { return d.objSize }
func (d *fileDevice) Close() error       { return nil } // the test owns the file

func (d *fileDevice) ReadAt(ctx context.Context, p []byte, off uint64) error {
	if err := d.check(off, uint64(len(p))); err != nil {
		return err
	}
	n, err := d.f.ReadAt(p, int64(off))
	if errors.Is(err, io.EOF) {
		clear(p[n:])
		err = nil
	}
	return err
}

func (d *fileDevice) WriteAt(ctx context.Context, p []byte, off uint64, fua bool) error {
	if err := d.check(off, uint64(len(p))); err != nil {
		return err
	}
	if _, err := d.f.WriteAt(p, int64(off)); err != nil {
		return err
	}
	os := uint64(d.objSize)
	for i := off / os; i*os < off+uint64(len(p)); i++ {
		if !d.alloc[i].Load() {
			d.alloc[i].Store(true)
		}
	}
	if fua {
		return d.Flush(ctx)
	}
	return nil
}

func (d *fileDevice) Flush(ctx context.Context) error {
	return syscall.Fdatasync(int(d.f.Fd()))
}

func (d *fileDevice) Discard(ctx context.Context, off, n uint64) error {
	if err := d.check(off, n); err != nil {
		return err
	}
	if n == 0 {
		return nil
	}
	if err := syscall.Fallocate(int(d.f.Fd()), fallocPunch|fallocKeepSize, int64(off), int64(n)); err != nil {
		return err
	}
	os := uint64(d.objSize)
	for i := (off + os - 1) / os; (i+1)*os <= off+n || (i*os < off+n && off+n == d.size); i++ {
		d.alloc[i].Store(false)
	}
	return nil
}

func (d *fileDevice) WriteZeroes(ctx context.Context, off, n uint64, fua bool) error {
	if err := d.Discard(ctx, off, n); err != nil {
		return err
	}
	if fua {
		return d.Flush(ctx)
	}
	return nil
}

func (d *fileDevice) Extents(ctx context.Context, off, n uint64) ([]volume.Extent, error) {
	if err := d.check(off, n); err != nil {
		return nil, err
	}
	var out []volume.Extent
	os := uint64(d.objSize)
	for pos := off; pos < off+n; {
		i := pos / os
		end := min(off+n, (i+1)*os)
		a := d.alloc[i].Load()
		if k := len(out) - 1; k >= 0 && out[k].Allocated == a {
			out[k].Length += end - pos
		} else {
			out = append(out, volume.Extent{Offset: pos, Length: end - pos, Allocated: a})
		}
		pos = end
	}
	return out, nil
}

var _ volume.Device = (*fileDevice)(nil)
