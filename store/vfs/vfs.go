// Package vfs is the file-system seam of the object store: the few file and
// directory operations the store needs, an OS implementation, and nothing
// else. Fault injection (store/errorfs) wraps it.
package vfs

import (
	"io"
	"io/fs"
)

// File is an open regular file. Implementations need not make Close safe
// to call concurrently with other methods; the store serialises that.
type File interface {
	// ReadAt has io.ReaderAt semantics: n < len(p) only with an error
	// (io.EOF at the end of the file).
	ReadAt(p []byte, off int64) (n int, err error)
	// WriteAt has io.WriterAt semantics.
	WriteAt(p []byte, off int64) (n int, err error)
	// Sync flushes the file's data and metadata to stable storage.
	Sync() error
	// Truncate sets the file length; growing it leaves a hole.
	Truncate(size int64) error
	// PunchHole deallocates [off, off+n) without changing the length; the
	// range then reads as zeros. errors.ErrUnsupported if the file system
	// cannot.
	PunchHole(off, n int64) error
	// Stat describes the open file.
	Stat() (Info, error)
	io.Closer
}

// Info is the part of a file's metadata the store uses.
type Info struct {
	Size  int64 // length in bytes
	Alloc int64 // bytes allocated on disk (st_blocks*512)
	Dir   bool
}

// DiskUsage is a file system's capacity as seen by an unprivileged user.
type DiskUsage struct {
	Total uint64 // bytes
	Avail uint64 // bytes available to unprivileged writers
}

// FS is a file system.
type FS interface {
	// OpenFile opens name with os.OpenFile flags.
	OpenFile(name string, flag int, perm fs.FileMode) (File, error)
	// Rename atomically replaces newname with oldname.
	Rename(oldname, newname string) error
	// Remove deletes a file or an empty directory.
	Remove(name string) error
	// ReadDir lists the names in dir, unsorted.
	ReadDir(dir string) ([]string, error)
	// MkdirAll creates dir and any missing parents.
	MkdirAll(dir string, perm fs.FileMode) error
	// Stat describes name without opening it.
	Stat(name string) (Info, error)
	// DiskUsage reports the capacity of the file system holding dir.
	DiskUsage(dir string) (DiskUsage, error)
	// SyncDir makes dir's entries (creates, renames, removes) durable.
	SyncDir(dir string) error
	// Lock takes an exclusive advisory lock on name (created if missing)
	// without blocking; closing the result releases it.
	Lock(name string) (io.Closer, error)
}
