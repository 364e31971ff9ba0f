// Package errorfs wraps a vfs.FS and injects faults, in the manner of
// pebble's errorfs: an Injector decides, per operation, whether it fails.
// Injectors compose (Any, After, OnPath, Probability) and a Crash switch
// models a process dying: after it trips, every write-like call fails and
// nothing more reaches the disk.
package errorfs

import (
	"errors"
	"io/fs"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/gosheep/gosheep/store/vfs"
)

// Op is a kind of file-system operation.
type Op int

const (
	OpOpen Op = iota
	OpRead
	OpWrite
	OpSync
	OpRename
	OpRemove
	OpPunch
	OpReadDir
	OpMkdir
	OpStat
	OpSpace
)

func (o Op) String() string {
	return [...]string{"open", "read", "write", "sync", "rename", "remove", "punch", "readdir", "mkdir", "stat", "space"}[o]
}

// Mutating reports whether the op changes the disk.
func (o Op) Mutating() bool {
	switch o {
	case OpWrite, OpSync, OpRename, OpRemove, OpPunch, OpMkdir:
		return true
	}
	return false
}

// Injector returns a non-nil error to make an operation fail.
type Injector interface {
	Inject(op Op, path string) error
}

// InjectorFunc adapts a function.
type InjectorFunc func(op Op, path string) error

func (f InjectorFunc) Inject(op Op, path string) error { return f(op, path) }

// ErrInjected is the default injected error.
var ErrInjected = errors.New("errorfs: injected error")

// ErrCrashed is returned by every mutation after a Crash tripped.
var ErrCrashed = errors.New("errorfs: crashed")

// On fails op (on any path) with err.
func On(op Op, err error) Injector {
	return InjectorFunc(func(o Op, _ string) error {
		if o == op {
			return err
		}
		return nil
	})
}

// OnPath restricts in to paths containing substr.
func OnPath(substr string, in Injector) Injector {
	return InjectorFunc(func(o Op, p string) error {
		if strings.Contains(p, substr) {
			return in.Inject(o, p)
		}
		return nil
	})
}

// After lets the first n operations that in would fail pass.
func After(n int64, in Injector) Injector {
	var count atomic.Int64
	return InjectorFunc(func(o Op, p string) error {
		err := in.Inject(o, p)
		if err != nil && count.Add(1) <= n {
			return nil
		}
		return err
	})
}

// Probability fails operations in would fail with probability p (seeded).
func Probability(p float64, seed uint64, in Injector) Injector {
	var mu sync.Mutex
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	return InjectorFunc(func(o Op, path string) error {
		err := in.Inject(o, path)
		if err == nil {
			return nil
		}
		mu.Lock()
		hit := r.Float64() < p
		mu.Unlock()
		if hit {
			return err
		}
		return nil
	})
}

// Any fails when any of ins fails (first error wins).
func Any(ins ...Injector) Injector {
	return InjectorFunc(func(o Op, p string) error {
		for _, in := range ins {
			if err := in.Inject(o, p); err != nil {
				return err
			}
		}
		return nil
	})
}

// ENOSPC and EIO are handy injected errors.
var (
	ENOSPC error = syscall.ENOSPC
	EIO    error = syscall.EIO
)

// Crash counts mutating operations and, once Arm(n) has been called,
// lets n more through and then fails every later one: the disk keeps
// exactly what was written before the "crash".
type Crash struct {
	armed   atomic.Bool
	left    atomic.Int64
	crashed atomic.Bool
}

// Arm makes the crash happen after n more mutating operations.
func (c *Crash) Arm(n int64) { c.left.Store(n); c.armed.Store(true) }

// Crashed reports whether the crash happened.
func (c *Crash) Crashed() bool { return c.crashed.Load() }

// Inject implements Injector.
func (c *Crash) Inject(op Op, _ string) error {
	if !op.Mutating() || !c.armed.Load() {
		return nil
	}
	if c.crashed.Load() || c.left.Add(-1) < 0 {
		c.crashed.Store(true)
		return ErrCrashed
	}
	return nil
}

// FS is a vfs.FS with injected faults.
type FS struct {
	inner vfs.FS
	in    Injector
}

// Wrap returns fs with faults from in.
func Wrap(inner vfs.FS, in Injector) *FS { return &FS{inner: inner, in: in} }

func (f *FS) check(op Op, path string) error {
	if f.in == nil {
		return nil
	}
	if err := f.in.Inject(op, path); err != nil {
		return &fs.PathError{Op: op.String(), Path: path, Err: err}
	}
	return nil
}

func (f *FS) OpenFile(name string, flag int, perm fs.FileMode) (vfs.File, error) {
	op := OpOpen
	if flag&(1|2|0x40) != 0 { // O_WRONLY|O_RDWR|O_CREATE may create
		if err := f.check(OpWrite, name); err != nil && flag&0x40 != 0 {
			return nil, err
		}
	}
	if err := f.check(op, name); err != nil {
		return nil, err
	}
	file, err := f.inner.OpenFile(name, flag, perm)
	if err != nil {
		return nil, err
	}
	return &errFile{File: file, fs: f}, nil
}

func (f *FS) Rename(from, to string) error {
	if err := f.check(OpRename, to); err != nil {
		return err
	}
	return f.inner.Rename(from, to)
}

func (f *FS) Remove(name string) error {
	if err := f.check(OpRemove, name); err != nil {
		return err
	}
	return f.inner.Remove(name)
}

func (f *FS) ReadDir(name string) ([]fs.DirEntry, error) {
	if err := f.check(OpReadDir, name); err != nil {
		return nil, err
	}
	return f.inner.ReadDir(name)
}

func (f *FS) MkdirAll(name string, perm fs.FileMode) error {
	if err := f.check(OpMkdir, name); err != nil {
		return err
	}
	return f.inner.MkdirAll(name, perm)
}

func (f *FS) Stat(name string) (fs.FileInfo, error) {
	if err := f.check(OpStat, name); err != nil {
		return nil, err
	}
	return f.inner.Stat(name)
}

func (f *FS) SyncDir(dir string) error {
	if err := f.check(OpSync, dir); err != nil {
		return err
	}
	return f.inner.SyncDir(dir)
}

func (f *FS) Space(dir string) (uint64, uint64, error) {
	if err := f.check(OpSpace, dir); err != nil {
		return 0, 0, err
	}
	return f.inner.Space(dir)
}

type errFile struct {
	vfs.File
	fs *FS
}

func (e *errFile) ReadAt(p []byte, off int64) (int, error) {
	if err := e.fs.check(OpRead, e.Name()); err != nil {
		return 0, err
	}
	return e.File.ReadAt(p, off)
}

func (e *errFile) WriteAt(p []byte, off int64) (int, error) {
	if err := e.fs.check(OpWrite, e.Name()); err != nil {
		return 0, err
	}
	return e.File.WriteAt(p, off)
}

func (e *errFile) Sync() error {
	if err := e.fs.check(OpSync, e.Name()); err != nil {
		return err
	}
	return e.File.Sync()
}

func (e *errFile) Truncate(size int64) error {
	if err := e.fs.check(OpWrite, e.Name()); err != nil {
		return err
	}
	return e.File.Truncate(size)
}

func (e *errFile) Punch(off, n int64) error {
	if err := e.fs.check(OpPunch, e.Name()); err != nil {
		return err
	}
	return e.File.Punch(off, n)
}

var _ vfs.FS = (*FS)(nil)
