// Package errorfs wraps a vfs.FS and injects errors, in the style of
// pebble's errorfs: every file-system call becomes an Op that an Injector
// inspects before the call runs; a non-nil error is returned instead of
// running it. Injectors compose from predicates (which op, which path,
// after N calls, at random with a seed) and a Crasher simulates kill -9 or
// power loss by failing every mutation after a point, optionally tearing
// the write that crosses it.
package errorfs

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"sync"
	"sync/atomic"

	"github.com/gosheep/gosheep/store/vfs"
)

// Kind says which file-system call an Op is.
type Kind uint8

// The operations the wrapper reports.
const (
	OpOpen      Kind = iota // OpenFile without O_CREATE/O_TRUNC
	OpCreate                // OpenFile with O_CREATE or O_TRUNC
	OpRead                  // File.ReadAt
	OpWrite                 // File.WriteAt
	OpSync                  // File.Sync
	OpTruncate              // File.Truncate
	OpPunch                 // File.PunchHole
	OpFileStat              // File.Stat
	OpClose                 // File.Close
	OpRename                // FS.Rename
	OpRemove                // FS.Remove
	OpReadDir               // FS.ReadDir
	OpMkdirAll              // FS.MkdirAll
	OpStat                  // FS.Stat
	OpDiskUsage             // FS.DiskUsage
	OpSyncDir               // FS.SyncDir
	OpLock                  // FS.Lock
	numKinds
)

var kindNames = [numKinds]string{"open", "create", "read", "write", "sync", "truncate", "punch",
	"fstat", "close", "rename", "remove", "readdir", "mkdirall", "stat", "diskusage", "syncdir", "lock"}

func (k Kind) String() string {
	if k < numKinds {
		return kindNames[k]
	}
	return fmt.Sprintf("op(%d)", uint8(k))
}

// Mutates reports whether the op changes file contents or the namespace:
// those are what a crash drops.
func (k Kind) Mutates() bool {
	switch k {
	case OpCreate, OpWrite, OpTruncate, OpPunch, OpRename, OpRemove, OpMkdirAll:
		return true
	}
	return false
}

// Durability reports whether the op only makes earlier mutations durable.
func (k Kind) Durability() bool { return k == OpSync || k == OpSyncDir }

// Op is one call about to be made.
type Op struct {
	Kind Kind
	Path string // the file's or directory's name (Rename: the old name)
	Off  int64  // ReadAt/WriteAt/PunchHole offset
	Len  int64  // ReadAt/WriteAt/PunchHole length
}

func (o Op) String() string {
	switch o.Kind {
	case OpRead, OpWrite, OpPunch:
		return fmt.Sprintf("%s %s [%d,+%d)", o.Kind, o.Path, o.Off, o.Len)
	}
	return o.Kind.String() + " " + o.Path
}

// ErrInjected is what Inject returns when given a nil error.
var ErrInjected = errors.New("errorfs: injected error")

// ErrCrashed is returned for every mutation after a Crasher fired.
var ErrCrashed = errors.New("errorfs: crashed")

// InjectedError is an injected failure. It unwraps to the injected error
// (so errors.Is(err, syscall.ENOSPC) works) and to ErrInjected.
type InjectedError struct {
	Op  Op
	Err error
}

func (e *InjectedError) Error() string { return fmt.Sprintf("errorfs: %s: %v", e.Op, e.Err) }

// Unwrap returns the injected error and ErrInjected.
func (e *InjectedError) Unwrap() []error {
	if e.Err == ErrInjected {
		return []error{e.Err}
	}
	return []error{e.Err, ErrInjected}
}

// TornError asks the wrapper to carry out only the first Keep bytes of a
// write and then fail with Err.
type TornError struct {
	Keep int64
	Err  error
}

func (e *TornError) Error() string {
	return fmt.Sprintf("errorfs: torn write after %d bytes: %v", e.Keep, e.Err)
}
func (e *TornError) Unwrap() error { return e.Err }

// Injector decides whether an op fails. It must be safe for concurrent use.
type Injector interface {
	MaybeError(Op) error
}

// InjectorFunc adapts a function to Injector.
type InjectorFunc func(Op) error

// MaybeError implements Injector.
func (f InjectorFunc) MaybeError(o Op) error { return f(o) }

// Inject returns an injector failing the ops `when` selects with err
// (ErrInjected if nil), wrapped in an *InjectedError.
func Inject(err error, when Predicate) Injector {
	if err == nil {
		err = ErrInjected
	}
	return InjectorFunc(func(o Op) error {
		if when.Evaluate(o) {
			return &InjectedError{Op: o, Err: err}
		}
		return nil
	})
}

// Any consults injectors in order and returns the first error.
func Any(injs ...Injector) Injector {
	return InjectorFunc(func(o Op) error {
		for _, in := range injs {
			if err := in.MaybeError(o); err != nil {
				return err
			}
		}
		return nil
	})
}

// FS is a vfs.FS with injected errors. Ops on an open file carry the name
// the file has now: a rename of an open file (as the store does to
// publish a temp file) renames its later ops too, so path predicates keep
// matching what the file is.
type FS struct {
	fs  vfs.FS
	inj Injector

	mu   sync.Mutex
	open map[*file]struct{}
}

// Wrap returns fs with inj consulted before every call.
func Wrap(fs vfs.FS, inj Injector) *FS { return &FS{fs: fs, inj: inj, open: make(map[*file]struct{})} }

func (e *FS) check(o Op) error { return e.inj.MaybeError(o) }

// OpenFile implements vfs.FS.
func (e *FS) OpenFile(name string, flag int, perm fs.FileMode) (vfs.File, error) {
	k := OpOpen
	if flag&(osCreate|osTrunc) != 0 {
		k = OpCreate
	}
	if err := e.check(Op{Kind: k, Path: name}); err != nil {
		return nil, err
	}
	f, err := e.fs.OpenFile(name, flag, perm)
	if err != nil {
		return nil, err
	}
	ef := &file{f: f, fs: e}
	ef.name.Store(&name)
	e.mu.Lock()
	e.open[ef] = struct{}{}
	e.mu.Unlock()
	return ef, nil
}

// Rename implements vfs.FS.
func (e *FS) Rename(oldname, newname string) error {
	if err := e.check(Op{Kind: OpRename, Path: oldname}); err != nil {
		return err
	}
	if err := e.fs.Rename(oldname, newname); err != nil {
		return err
	}
	e.mu.Lock()
	for f := range e.open {
		if *f.name.Load() == oldname {
			f.name.Store(&newname)
		}
	}
	e.mu.Unlock()
	return nil
}

// Remove implements vfs.FS.
func (e *FS) Remove(name string) error {
	if err := e.check(Op{Kind: OpRemove, Path: name}); err != nil {
		return err
	}
	return e.fs.Remove(name)
}

// ReadDir implements vfs.FS.
func (e *FS) ReadDir(dir string) ([]string, error) {
	if err := e.check(Op{Kind: OpReadDir, Path: dir}); err != nil {
		return nil, err
	}
	return e.fs.ReadDir(dir)
}

// MkdirAll implements vfs.FS.
func (e *FS) MkdirAll(dir string, perm fs.FileMode) error {
	if err := e.check(Op{Kind: OpMkdirAll, Path: dir}); err != nil {
		return err
	}
	return e.fs.MkdirAll(dir, perm)
}

// Stat implements vfs.FS.
func (e *FS) Stat(name string) (vfs.Info, error) {
	if err := e.check(Op{Kind: OpStat, Path: name}); err != nil {
		return vfs.Info{}, err
	}
	return e.fs.Stat(name)
}

// DiskUsage implements vfs.FS.
func (e *FS) DiskUsage(dir string) (vfs.DiskUsage, error) {
	if err := e.check(Op{Kind: OpDiskUsage, Path: dir}); err != nil {
		return vfs.DiskUsage{}, err
	}
	return e.fs.DiskUsage(dir)
}

// SyncDir implements vfs.FS.
func (e *FS) SyncDir(dir string) error {
	if err := e.check(Op{Kind: OpSyncDir, Path: dir}); err != nil {
		return err
	}
	return e.fs.SyncDir(dir)
}

// Lock implements vfs.FS.
func (e *FS) Lock(name string) (io.Closer, error) {
	if err := e.check(Op{Kind: OpLock, Path: name}); err != nil {
		return nil, err
	}
	return e.fs.Lock(name)
}

type file struct {
	f    vfs.File
	name atomic.Pointer[string]
	fs   *FS
}

func (f *file) op(k Kind, off, n int64) Op {
	return Op{Kind: k, Path: *f.name.Load(), Off: off, Len: n}
}

func (f *file) ReadAt(p []byte, off int64) (int, error) {
	if err := f.fs.check(f.op(OpRead, off, int64(len(p)))); err != nil {
		return 0, err
	}
	return f.f.ReadAt(p, off)
}

func (f *file) WriteAt(p []byte, off int64) (int, error) {
	err := f.fs.check(f.op(OpWrite, off, int64(len(p))))
	if err == nil {
		return f.f.WriteAt(p, off)
	}
	var torn *TornError
	if errors.As(err, &torn) && torn.Keep > 0 {
		keep := min(torn.Keep, int64(len(p)))
		n, werr := f.f.WriteAt(p[:keep], off)
		if werr != nil {
			return n, werr
		}
		return n, err
	}
	return 0, err
}

func (f *file) Sync() error {
	if err := f.fs.check(f.op(OpSync, 0, 0)); err != nil {
		return err
	}
	return f.f.Sync()
}

func (f *file) Truncate(size int64) error {
	if err := f.fs.check(f.op(OpTruncate, size, 0)); err != nil {
		return err
	}
	return f.f.Truncate(size)
}

func (f *file) PunchHole(off, n int64) error {
	if err := f.fs.check(f.op(OpPunch, off, n)); err != nil {
		return err
	}
	return f.f.PunchHole(off, n)
}

func (f *file) Stat() (vfs.Info, error) {
	if err := f.fs.check(f.op(OpFileStat, 0, 0)); err != nil {
		return vfs.Info{}, err
	}
	return f.f.Stat()
}

// Close always closes the underlying file, so injected close errors do not
// leak descriptors.
func (f *file) Close() error {
	err := f.fs.check(f.op(OpClose, 0, 0))
	f.fs.mu.Lock()
	delete(f.fs.open, f)
	f.fs.mu.Unlock()
	if cerr := f.f.Close(); err == nil {
		err = cerr
	}
	return err
}
