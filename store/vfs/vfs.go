// Package vfs is the file-system seam of the object store: the store does
// all file I/O through FS so tests can inject faults (package errorfs).
package vfs

import (
	"errors"
	"io/fs"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// File is an open file.
type File interface {
	ReadAt(p []byte, off int64) (int, error)
	WriteAt(p []byte, off int64) (int, error)
	Sync() error
	Close() error
	Stat() (fs.FileInfo, error)
	Truncate(size int64) error
	// Punch frees [off, off+n) keeping the size; reads return zeros.
	Punch(off, n int64) error
	Name() string
}

// FS is a file system.
type FS interface {
	OpenFile(name string, flag int, perm fs.FileMode) (File, error)
	Rename(from, to string) error
	Remove(name string) error
	ReadDir(name string) ([]fs.DirEntry, error)
	MkdirAll(name string, perm fs.FileMode) error
	Stat(name string) (fs.FileInfo, error)
	// SyncDir makes renames and removals in dir durable.
	SyncDir(dir string) error
	// Space returns the bytes available to unprivileged users and the
	// total size of the file system holding dir.
	Space(dir string) (avail, total uint64, err error)
}

// OS is the real file system.
type OS struct{}

type osFile struct{ *os.File }

func (f osFile) Punch(off, n int64) error {
	err := unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n)
	if errors.Is(err, syscall.EOPNOTSUPP) || errors.Is(err, syscall.ENOSYS) {
		// No hole punching here: write zeros instead.
		zero := make([]byte, min(n, 1<<20))
		for n > 0 {
			k := min(n, int64(len(zero)))
			if _, err := f.WriteAt(zero[:k], off); err != nil {
				return err
			}
			off += k
			n -= k
		}
		return nil
	}
	return err
}

func (OS) OpenFile(name string, flag int, perm fs.FileMode) (File, error) {
	f, err := os.OpenFile(name, flag, perm)
	if err != nil {
		return nil, err
	}
	return osFile{f}, nil
}

func (OS) Rename(from, to string) error                 { return os.Rename(from, to) }
func (OS) Remove(name string) error                     { return os.Remove(name) }
func (OS) ReadDir(name string) ([]fs.DirEntry, error)   { return os.ReadDir(name) }
func (OS) MkdirAll(name string, perm fs.FileMode) error { return os.MkdirAll(name, perm) }
func (OS) Stat(name string) (fs.FileInfo, error)        { return os.Stat(name) }

func (OS) SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

func (OS) Space(dir string) (uint64, uint64, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return 0, 0, err
	}
	return st.Bavail * uint64(st.Bsize), st.Blocks * uint64(st.Bsize), nil
}

// Allocated returns the bytes a file occupies on disk (0 when unknown).
func Allocated(fi fs.FileInfo) uint64 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return uint64(st.Blocks) * 512
	}
	return uint64(fi.Size())
}
