package vfs

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// Default returns the operating system's file system.
func Default() FS { return osFS{} }

type osFS struct{}

// osFile issues pread/pwrite on the raw descriptor: the store already
// serialises Close against I/O, so os.File's per-call locking is overhead
// on the hottest path. The *os.File is kept for lifetime management.
type osFile struct {
	f  *os.File
	fd int
}

func (osFS) OpenFile(name string, flag int, perm fs.FileMode) (File, error) {
	f, err := os.OpenFile(name, flag, perm)
	if err != nil {
		return nil, err
	}
	return &osFile{f: f, fd: int(f.Fd())}, nil
}

func (osFS) Rename(oldname, newname string) error { return os.Rename(oldname, newname) }
func (osFS) Remove(name string) error             { return os.Remove(name) }

func (osFS) ReadDir(dir string) ([]string, error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return f.Readdirnames(-1)
}

func (osFS) MkdirAll(dir string, perm fs.FileMode) error { return os.MkdirAll(dir, perm) }

func (osFS) Stat(name string) (Info, error) {
	var st unix.Stat_t
	if err := unix.Stat(name, &st); err != nil {
		return Info{}, &fs.PathError{Op: "stat", Path: name, Err: err}
	}
	return infoOf(&st), nil
}

func (osFS) DiskUsage(dir string) (DiskUsage, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return DiskUsage{}, &fs.PathError{Op: "statfs", Path: dir, Err: err}
	}
	bs := uint64(st.Bsize)
	return DiskUsage{Total: st.Blocks * bs, Avail: st.Bavail * bs}, nil
}

func (osFS) SyncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = f.Sync()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// Lock uses flock, which conflicts between open file descriptions, so two
// stores in one process exclude each other too. The holder's pid is written
// into the file so the error can name it.
func (osFS) Lock(name string) (io.Closer, error) {
	f, err := os.OpenFile(name, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		var b [32]byte
		n, _ := f.ReadAt(b[:], 0)
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, &LockedError{Path: name, Holder: strings.TrimSpace(string(b[:n]))}
		}
		return nil, &fs.PathError{Op: "flock", Path: name, Err: err}
	}
	pid := strconv.Itoa(os.Getpid()) + "\n"
	if err := f.Truncate(0); err == nil {
		_, _ = f.WriteAt([]byte(pid), 0) // informational only
	}
	return f, nil
}

// LockedError reports a lock held by someone else.
type LockedError struct {
	Path   string
	Holder string // what the holder wrote into the lock file (its pid), if anything
}

func (e *LockedError) Error() string {
	if e.Holder != "" {
		return fmt.Sprintf("%s is locked by process %s", e.Path, e.Holder)
	}
	return e.Path + " is locked by another process"
}

func infoOf(st *unix.Stat_t) Info {
	return Info{Size: st.Size, Alloc: st.Blocks * 512, Dir: st.Mode&unix.S_IFMT == unix.S_IFDIR}
}

func (f *osFile) ReadAt(p []byte, off int64) (int, error) {
	n := 0
	for n < len(p) {
		m, err := unix.Pread(f.fd, p[n:], off+int64(n))
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return n, &fs.PathError{Op: "pread", Path: f.f.Name(), Err: err}
		}
		if m == 0 {
			return n, io.EOF
		}
		n += m
	}
	return n, nil
}

func (f *osFile) WriteAt(p []byte, off int64) (int, error) {
	n := 0
	for n < len(p) {
		m, err := unix.Pwrite(f.fd, p[n:], off+int64(n))
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return n, &fs.PathError{Op: "pwrite", Path: f.f.Name(), Err: err}
		}
		if m == 0 {
			return n, &fs.PathError{Op: "pwrite", Path: f.f.Name(), Err: io.ErrShortWrite}
		}
		n += m
	}
	return n, nil
}

func (f *osFile) Sync() error {
	for {
		err := unix.Fsync(f.fd)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return &fs.PathError{Op: "fsync", Path: f.f.Name(), Err: err}
		}
		return nil
	}
}

func (f *osFile) Truncate(size int64) error {
	if err := unix.Ftruncate(f.fd, size); err != nil {
		return &fs.PathError{Op: "ftruncate", Path: f.f.Name(), Err: err}
	}
	return nil
}

func (f *osFile) PunchHole(off, n int64) error {
	err := unix.Fallocate(f.fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, unix.EOPNOTSUPP), errors.Is(err, unix.ENOSYS):
		return errors.ErrUnsupported
	default:
		return &fs.PathError{Op: "fallocate", Path: f.f.Name(), Err: err}
	}
}

func (f *osFile) Stat() (Info, error) {
	var st unix.Stat_t
	if err := unix.Fstat(f.fd, &st); err != nil {
		return Info{}, &fs.PathError{Op: "fstat", Path: f.f.Name(), Err: err}
	}
	return infoOf(&st), nil
}

func (f *osFile) Close() error { return f.f.Close() }

// SyscallConn gives the descriptor to sendfile(2) (store.Raw.Src).
func (f *osFile) SyscallConn() (syscall.RawConn, error) { return f.f.SyscallConn() }
