package nbd

import (
	"context"
	"errors"
	"io"
	"os"
	"syscall"

	"github.com/gosheep/gosheep/volume"
)

// fileDevice is a volume.Device over a local file (pread/pwrite/fdatasync,
// holes via fallocate and SEEK_DATA/SEEK_HOLE), so benchmarks compare the
// protocol server, not the backing store, with nbdkit's file plugin.
type fileDevice struct {
	f       *os.File
	size    uint64
	objSize uint32
}

const (
	seekData       = 3 // SEEK_DATA
	seekHole       = 4 // SEEK_HOLE
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
	return &fileDevice{f: f, size: size, objSize: 4 << 20}, nil
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
	return syscall.Fallocate(int(d.f.Fd()), fallocPunch|fallocKeepSize, int64(off), int64(n))
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
	fd := int(d.f.Fd())
	end := off + n
	var out []volume.Extent
	for pos := off; pos < end; {
		data, err := syscall.Seek(fd, int64(pos), seekData)
		if errors.Is(err, syscall.ENXIO) {
			data = int64(end) // no data after pos
		} else if err != nil {
			return []volume.Extent{{Offset: off, Length: n, Allocated: true}}, nil
		}
		if ds := min(uint64(data), end); ds > pos {
			out = append(out, volume.Extent{Offset: pos, Length: ds - pos})
			pos = ds
			continue
		}
		hole, err := syscall.Seek(fd, int64(pos), seekHole)
		if err != nil {
			hole = int64(end)
		}
		h := min(uint64(hole), end)
		out = append(out, volume.Extent{Offset: pos, Length: h - pos, Allocated: true})
		pos = h
	}
	return out, nil
}

var _ volume.Device = (*fileDevice)(nil)
