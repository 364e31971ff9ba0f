package store

import (
	"container/list"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/gosheep/gosheep/proto"
	"github.com/gosheep/gosheep/store/vfs"
)

// Options configure a Disk store.
type Options struct {
	// Capacity is the most the store may use (0: what the file system has).
	Capacity uint64
	// Reserve is kept free: writes that would eat into it fail with
	// ErrNoSpace instead of hitting ENOSPC half way (default: 1% of
	// capacity, at most 256 MiB).
	Reserve uint64
	// NoSync skips fsync entirely (tests only).
	NoSync bool
	// MaxOpenFiles bounds cached file descriptors (default 256).
	MaxOpenFiles int
	// FS is the file system (default vfs.OS; tests inject faults).
	FS     vfs.FS
	Logger *slog.Logger
}

// StaleInfo describes a stashed (stale) copy.
type StaleInfo struct {
	Key      Key
	Epoch    uint32 // epoch it was stashed at
	Size     uint32
	ObjEpoch uint32 // epoch of its last mutation
}

// ErrExists is returned by an exclusive Create, or by Unstash, when a live
// copy is present.
var ErrExists = proto.NewError(proto.ResOIDExist, "store: object exists")

// Stasher is the stale-copy side of the store that recovery uses.
type Stasher interface {
	Stash(ctx context.Context, k Key, epoch uint32) error
	Unstash(ctx context.Context, k Key, epoch uint32) error
	ListStale(ctx context.Context) ([]StaleInfo, error)
	ReadStale(ctx context.Context, k Key, epoch uint32, off uint32, p []byte) error
	PurgeStale(ctx context.Context, k Key, epoch uint32) error
}

// meta is the in-memory index entry of a live object.
type meta struct {
	size      uint32
	epoch     uint32
	allocated uint64
}

// Disk is the file-per-object store.
type Disk struct {
	dir, objDir, staleDir, tmpDir string
	fs                            vfs.FS
	opts                          Options
	log                           *slog.Logger
	lock                          *os.File

	keyLocks [1024]sync.RWMutex

	idxMu sync.RWMutex
	index map[Key]meta

	fdMu     sync.Mutex
	fds      map[Key]*handle
	lru      *list.List
	retiring sync.WaitGroup

	dirtyMu  sync.Mutex
	dirty    map[*handle]struct{}
	dirDirty bool

	used       atomic.Int64 // bytes allocated by live and stale objects
	spaceCache atomic.Pointer[spaceSample]
	stale      atomic.Int64
	tmpSeq     atomic.Uint64
	closed     atomic.Bool
}

// handle is an open object file with its checksums cached.
type handle struct {
	key   Key
	path  string
	f     vfs.File
	hdr   header
	sums  []uint32 // 2 per block: current, previous
	known []uint64 // bitmap: block known to match its current slot
	clean bool     // header says clean (all blocks known)
	refs  int
	elem  *list.Element
	gone  bool // evicted or replaced while in use: close on release
}

var _ Store = (*Disk)(nil)
var _ Stasher = (*Disk)(nil)

// Open opens (creating) a store in dir.
func Open(dir string, opts Options) (*Disk, error) {
	if opts.FS == nil {
		opts.FS = vfs.OS{}
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.MaxOpenFiles <= 0 {
		opts.MaxOpenFiles = 256
	}
	d := &Disk{
		dir: dir, objDir: filepath.Join(dir, "obj"), staleDir: filepath.Join(dir, "stale"), tmpDir: filepath.Join(dir, "tmp"),
		fs: opts.FS, opts: opts, log: opts.Logger, index: map[Key]meta{}, fds: map[Key]*handle{}, lru: list.New(),
		dirty: map[*handle]struct{}{},
	}
	for _, p := range []string{d.objDir, d.staleDir, d.tmpDir} {
		if err := d.fs.MkdirAll(p, 0o755); err != nil {
			return nil, fmt.Errorf("store: %w", err)
		}
	}
	if err := d.lockDir(); err != nil {
		return nil, err
	}
	if err := d.load(); err != nil {
		d.unlockDir()
		return nil, err
	}
	return d, nil
}

func (d *Disk) lockDir() error {
	if _, ok := d.fs.(vfs.OS); !ok {
		return nil // fault-injection file systems: single process by construction
	}
	f, err := os.OpenFile(filepath.Join(d.dir, "LOCK"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return fmt.Errorf("store: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		return fmt.Errorf("store: data directory %s is in use by another sheep: %w", d.dir, err)
	}
	d.lock = f
	return nil
}

func (d *Disk) unlockDir() {
	if d.lock != nil {
		d.lock.Close()
	}
}

// load builds the in-memory index and removes leftover temp files.
func (d *Disk) load() error {
	tmps, err := d.fs.ReadDir(d.tmpDir)
	if err != nil {
		return fmt.Errorf("store: %w", err)
	}
	for _, t := range tmps {
		d.fs.Remove(filepath.Join(d.tmpDir, t.Name()))
	}
	ents, err := d.fs.ReadDir(d.objDir)
	if err != nil {
		return fmt.Errorf("store: %w", err)
	}
	for _, e := range ents {
		k, ok := parseName(e.Name())
		if !ok {
			d.log.Warn("store: ignoring unknown file", "name", e.Name())
			continue
		}
		p := filepath.Join(d.objDir, e.Name())
		h, alloc, err := d.readHeaderFile(p)
		if err != nil {
			// Kept, so a read reports the corruption and recovery replaces it.
			d.log.Warn("store: unreadable object header", "name", e.Name(), "err", err)
			d.index[k] = meta{allocated: alloc}
			d.used.Add(int64(alloc))
			continue
		}
		d.index[k] = meta{size: h.size, epoch: h.epoch, allocated: alloc}
		d.used.Add(int64(alloc))
	}
	stale, err := d.fs.ReadDir(d.staleDir)
	if err != nil {
		return fmt.Errorf("store: %w", err)
	}
	for _, e := range stale {
		if _, _, ok := parseStaleName(e.Name()); ok {
			if fi, err := e.Info(); err == nil {
				d.used.Add(int64(vfs.Allocated(fi)))
			}
			d.stale.Add(1)
		}
	}
	return nil
}

func (d *Disk) readHeaderFile(p string) (header, uint64, error) {
	f, err := d.fs.OpenFile(p, os.O_RDONLY, 0)
	if err != nil {
		return header{}, 0, err
	}
	defer f.Close()
	var alloc uint64
	if fi, err := f.Stat(); err == nil {
		alloc = vfs.Allocated(fi)
	}
	b := make([]byte, hdrFieldsLen)
	if _, err := f.ReadAt(b, 0); err != nil {
		return header{}, alloc, fmt.Errorf("read header: %w: %w", err, ErrCorrupt)
	}
	h, err := parseHeader(b)
	return h, alloc, err
}

func (d *Disk) keyLock(k Key) *sync.RWMutex {
	h := uint64(k.OID)*0x9e3779b97f4a7c15 + uint64(k.ECIndex)
	if k.EC {
		h ^= 0x5bd1e995
	}
	return &d.keyLocks[(h>>32)%uint64(len(d.keyLocks))]
}

func (d *Disk) path(k Key) string { return filepath.Join(d.objDir, fileName(k)) }

func (d *Disk) check(ctx context.Context) error {
	if d.closed.Load() {
		return ErrClosed
	}
	return ctx.Err()
}

// mapErr turns OS errors into the store's sentinels.
func mapErr(k Key, op string, err error) error {
	if err == nil {
		return nil
	}
	switch {
	case errors.Is(err, ErrNotFound), errors.Is(err, ErrCorrupt), errors.Is(err, ErrNoSpace),
		errors.Is(err, ErrOutOfRange), errors.Is(err, ErrClosed):
		return err
	case errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("store: %s %s: %w", op, fileName(k), ErrNotFound)
	case errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EDQUOT):
		return fmt.Errorf("store: %s %s: %v: %w", op, fileName(k), err, ErrNoSpace)
	}
	return fmt.Errorf("store: %s %s: %w", op, fileName(k), err)
}

// acquire returns the open handle for k (opening it), counted as in use.
// Callers hold k's lock.
func (d *Disk) acquire(k Key) (*handle, error) {
	d.fdMu.Lock()
	if h, ok := d.fds[k]; ok {
		h.refs++
		d.lru.MoveToFront(h.elem)
		d.fdMu.Unlock()
		return h, nil
	}
	d.fdMu.Unlock()
	h, err := d.openHandle(k)
	if err != nil {
		return nil, err
	}
	d.fdMu.Lock()
	defer d.fdMu.Unlock()
	if other, ok := d.fds[k]; ok { // raced with another reader
		h.f.Close()
		other.refs++
		d.lru.MoveToFront(other.elem)
		return other, nil
	}
	h.refs = 1
	h.elem = d.lru.PushFront(h)
	d.fds[k] = h
	var evicted []*handle
	for d.lru.Len() > d.opts.MaxOpenFiles {
		old := d.lru.Back().Value.(*handle)
		d.lru.Remove(old.elem)
		delete(d.fds, old.key)
		old.gone = true
		if old.refs == 0 {
			evicted = append(evicted, old)
		}
	}
	if len(evicted) > 0 {
		// Closing does I/O: not under fdMu.
		d.retiring.Add(1)
		go func() {
			defer d.retiring.Done()
			for _, old := range evicted {
				d.retire(old, false)
			}
		}()
	}
	return h, nil
}

func (d *Disk) release(h *handle) {
	d.fdMu.Lock()
	h.refs--
	closeIt := h.refs == 0 && h.gone
	d.fdMu.Unlock()
	if closeIt {
		d.retire(h, false)
	}
}

// forget drops the cached handle of k (after replace or remove).
func (d *Disk) forget(k Key) {
	d.fdMu.Lock()
	h, ok := d.fds[k]
	if ok {
		d.lru.Remove(h.elem)
		delete(d.fds, k)
		h.gone = true
	}
	closeIt := ok && h.refs == 0
	d.fdMu.Unlock()
	if closeIt {
		// The caller holds k's write lock.
		d.retire(h, true)
	}
}

// retire syncs and closes a handle nobody uses any more. When the key's
// write lock is held (locked) or can be taken, a file whose blocks all
// match their current checksums is marked clean first, so the next open
// trusts its slots without re-reading blocks.
func (d *Disk) retire(h *handle, locked bool) {
	d.dirtyMu.Lock()
	_, dirty := d.dirty[h]
	delete(d.dirty, h)
	d.dirtyMu.Unlock()
	if dirty && !d.opts.NoSync {
		if err := h.f.Sync(); err != nil {
			d.log.Error("store: fsync on close failed", "object", fileName(h.key), "err", err)
		}
	}
	if !locked {
		l := d.keyLock(h.key)
		if l.TryLock() {
			defer l.Unlock()
			locked = true
		}
	}
	if locked && !h.clean && h.allKnown() {
		h.hdr.flags |= flagClean
		h.f.WriteAt(h.hdr.marshal(), 0)
	}
	h.f.Close()
}

func (d *Disk) openHandle(k Key) (*handle, error) {
	p := d.path(k)
	f, err := d.fs.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		return nil, mapErr(k, "open", err)
	}
	b := make([]byte, hdrFieldsLen)
	if _, err := f.ReadAt(b, 0); err != nil {
		f.Close()
		return nil, fmt.Errorf("store: %s: header: %w: %w", fileName(k), err, ErrCorrupt)
	}
	hdr, err := parseHeader(b)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("store: %s: %w", fileName(k), err)
	}
	sb := make([]byte, hdr.sumsLen())
	if _, err := f.ReadAt(sb, headerSize); err != nil && !errors.Is(err, io.EOF) {
		f.Close()
		return nil, fmt.Errorf("store: %s: checksums: %w: %w", fileName(k), err, ErrCorrupt)
	}
	h := &handle{key: k, path: p, f: f, hdr: hdr, sums: make([]uint32, 2*hdr.nblocks())}
	for i := range h.sums {
		h.sums[i] = binary.LittleEndian.Uint32(sb[4*i:])
	}
	h.known = make([]uint64, (hdr.nblocks()+63)/64)
	if hdr.flags&flagClean != 0 {
		h.clean = true
		for b := uint32(0); b < hdr.nblocks(); b++ {
			h.setKnown(b)
		}
	}
	return h, nil
}

func (h *handle) setKnown(b uint32)     { h.known[b/64] |= 1 << (b % 64) }
func (h *handle) isKnown(b uint32) bool { return h.known[b/64]&(1<<(b%64)) != 0 }
func (h *handle) cur(b uint32) uint32   { return h.sums[2*b] }
func (h *handle) prev(b uint32) uint32  { return h.sums[2*b+1] }
func (h *handle) allKnown() bool {
	for b := uint32(0); b < h.hdr.nblocks(); b++ {
		if !h.isKnown(b) {
			return false
		}
	}
	return true
}

// markDirty records a mutation for Sync, clearing the clean flag first so
// a crash makes the next open re-check blocks before trusting slots.
func (d *Disk) markDirty(h *handle) error {
	if h.clean {
		h.hdr.flags &^= flagClean
		if _, err := h.f.WriteAt(h.hdr.marshal(), 0); err != nil {
			return err
		}
		h.clean = false
	}
	d.dirtyMu.Lock()
	d.dirty[h] = struct{}{}
	d.dirtyMu.Unlock()
	return nil
}

func (d *Disk) syncFile(h *handle) error {
	if d.opts.NoSync {
		return nil
	}
	if err := h.f.Sync(); err != nil {
		return err
	}
	d.dirtyMu.Lock()
	delete(d.dirty, h)
	d.dirtyMu.Unlock()
	return nil
}

func checkRange(size uint32, off uint32, n int) error {
	if uint64(off)+uint64(n) > uint64(size) {
		return fmt.Errorf("%d+%d beyond object size %d: %w", off, n, size, ErrOutOfRange)
	}
	return nil
}

// zeroCRC returns the checksum of a block of n zero bytes.
func zeroCRC(n uint32) uint32 {
	return crc(make([]byte, n))
}

// space returns the file system's free and total bytes, refreshed at
// most every spaceTTL so the write path does not statfs on every call.
func (d *Disk) space() (avail, total uint64, err error) {
	now := time.Now().UnixNano()
	if c := d.spaceCache.Load(); c != nil && now-c.at < int64(spaceTTL) {
		return c.avail, c.total, nil
	}
	avail, total, err = d.fs.Space(d.dir)
	if err != nil {
		return 0, 0, err
	}
	d.spaceCache.Store(&spaceSample{at: now, avail: avail, total: total})
	return avail, total, nil
}

const spaceTTL = 100 * time.Millisecond

type spaceSample struct {
	at           int64
	avail, total uint64
}

// Usage reports capacity and use.
func (d *Disk) Usage() (Usage, error) {
	avail, total, err := d.space()
	if err != nil {
		return Usage{}, fmt.Errorf("store: %w", err)
	}
	used := uint64(max(d.used.Load(), 0))
	capacity := d.opts.Capacity
	if capacity == 0 {
		capacity = min(used+avail, total)
	}
	reserve := d.opts.Reserve
	if reserve == 0 {
		reserve = min(capacity/100, 256<<20)
	}
	free := uint64(0)
	if capacity > used+reserve {
		free = capacity - used - reserve
	}
	if avail > reserve {
		free = min(free, avail-reserve)
	} else {
		free = 0
	}
	d.idxMu.RLock()
	n := uint64(len(d.index))
	d.idxMu.RUnlock()
	return Usage{Capacity: capacity, Used: used, Free: free, Objects: n}, nil
}

// reserveSpace fails with ErrNoSpace when n more bytes would not fit.
func (d *Disk) reserveSpace(k Key, n uint64) error {
	u, err := d.Usage()
	if err != nil {
		return err
	}
	if n > u.Free {
		return fmt.Errorf("store: %s: need %d bytes, %d free: %w", fileName(k), n, u.Free, ErrNoSpace)
	}
	return nil
}

func (d *Disk) account(k Key, h *handle) {
	fi, err := h.f.Stat()
	if err != nil {
		return
	}
	alloc := vfs.Allocated(fi)
	d.idxMu.Lock()
	m := d.index[k]
	d.used.Add(int64(alloc) - int64(m.allocated))
	m.allocated = alloc
	m.size = h.hdr.size
	m.epoch = h.hdr.epoch
	d.index[k] = m
	d.idxMu.Unlock()
}

func (d *Disk) tmpPath(k Key) string {
	return filepath.Join(d.tmpDir, fileName(k)+"."+strconv.FormatUint(d.tmpSeq.Add(1), 10))
}
