package store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gosheep/gosheep/internal/crc32c"
	"github.com/gosheep/gosheep/store/vfs"
)

// Options configure a Disk.
type Options struct {
	// Capacity is how many bytes the store may allocate; 0 means whatever
	// the file system has free.
	Capacity uint64
	// Reserve is a free-space margin: a mutation that would leave less
	// than Reserve bytes free (of Capacity, or on the file system) fails
	// with ErrNoSpace up front instead of running into ENOSPC half way.
	Reserve uint64
	// NoSync turns every fsync into a no-op. For tests only: nothing is
	// durable against power loss.
	NoSync bool
	// FS is the file-system seam; nil means the operating system's.
	FS vfs.FS
	// Logger receives warnings (junk files, failed closes); nil discards.
	Logger *slog.Logger
	// MaxOpenFiles bounds the cache of open object files; 0 means 256.
	MaxOpenFiles int
	// MapBudget bounds the bytes of object files kept mapped for checking
	// lent reads in place (ReadPinned); mapped pages count towards the
	// process's resident set. 0 means 1 GiB (256 objects of 4 MiB, the
	// open-file cache's default); at least one object is always mapped.
	MapBudget int64
	// RescanInterval: Used is kept incrementally, but file systems
	// allocate metadata (extent blocks) at writeback, after we looked.
	// Usage starts a background Rescan when the last one is older than
	// this; 0 means one hour, negative never.
	RescanInterval time.Duration
}

// DefaultMaxOpenFiles is the default size of the open-file cache.
const DefaultMaxOpenFiles = 256

// DefaultMapBudget is the default MapBudget.
const DefaultMapBudget = 1 << 30

// Lock file name inside the data directory.
const lockName = "store.lock"

// Disk is the on-disk Store: dir/obj holds live objects, dir/stale stale
// copies. See format.go for the file layout and the crash-safety argument.
type Disk struct {
	dir, objDir, staleDir string
	fs                    vfs.FS
	log                   *slog.Logger
	noSync                bool
	capacity, reserve     uint64
	maxOpen               int
	mapBudget             int64
	zeroCRC               uint32 // CRC32C of a zero block of blockSize bytes
	zeros                 []byte // blockSize zero bytes; never written
	lock                  io.Closer

	// mapMu guards maps, the objects with a mapping (oldest first), and
	// mappedBytes, their total size.
	mapMu       sync.Mutex
	maps        []*object
	mappedBytes int64

	// life excludes Close from in-flight operations.
	life   sync.RWMutex
	closed bool

	// mu guards the object table, the LRU of open files, the set of
	// objects with unsynced mutations and the dirty-directory flags.
	mu     sync.Mutex
	objs   map[Key]*object
	lru    object // sentinel of a circular list; lru.next is the most recent
	lruLen int
	// unsynced maps objects with mutations not yet fsynced to the
	// allocation we accounted when the file was closed (-1 while open), so
	// a reopen can account what writeback allocated meanwhile.
	unsynced map[Key]int64
	objDirty bool // obj/ entries changed since the last Sync
	stDirty  bool // stale/ entries changed since the last Sync

	evictPending atomic.Bool
	noCachestat  atomic.Bool // cachestat(2) failed: write in pieces (writeData)

	used    atomic.Int64 // bytes allocated by object and stale files
	objects atomic.Int64 // live objects

	space         sync.Mutex // guards the fields below
	fsAvail       uint64     // file system's free bytes at the last refresh
	usedAtRefresh int64      // used at the last refresh

	nsMu           sync.RWMutex // creates/renames/removes (read) vs a rescan's listing
	rescanning     atomic.Bool  // a rescan is in progress (see account)
	rescanMu       sync.Mutex   // guards rs
	rs             rescanState
	rescanRun      sync.Mutex // one rescan at a time
	rescanInterval time.Duration
	lastRescan     atomic.Int64 // unix nanoseconds
	bgCtx          context.Context
	bgCancel       context.CancelFunc
	bg             sync.WaitGroup

	blocks  sync.Pool // *[]byte of blockSize
	scratch sync.Pool // *writeScratch
}

// object is the in-memory state of one key: its lock, and while it is in
// the open-file cache its file, header and checksum area.
type object struct {
	key  Key
	refs atomic.Int32 // holders, plus one while in the LRU

	// Guarded by Disk.mu.
	prev, next *object
	inLRU      bool

	// mu serialises mutations and lets reads share. The fields below are
	// written under mu.Lock and read under mu.RLock.
	mu       sync.RWMutex
	f        vfs.File // nil when not open
	h        header
	sums     []byte   // mirror of the on-disk checksum area
	alloc    int64    // bytes allocated by the file at the last fstat
	known    []uint64 // bitmap: blocks known to be allocated
	hdrDirty bool     // the on-disk record has recDirty set
	// trusted: every block's data matches its cur slot (or neither slot,
	// if rotten). Full-block writes rely on it to record the old checksum
	// without reading the block. False after a crash left recDirty set;
	// a scrub restores it.
	trusted bool

	sawPrev  atomic.Bool // a reader found data matching only prev: scrub
	unsynced atomic.Bool // mutated since the last fsync
	// mapped is a read-only mapping of f's data area, made by the first
	// ReadPinned and unmapped (under mu.Lock) before f closes.
	mapped atomic.Pointer[[]byte]
}

var _ Store = (*Disk)(nil)
var _ Stasher = (*Disk)(nil)

// Open opens (creating if needed) the store in dir. It takes a lock on the
// directory, removes temp files left by an interrupted Create and measures
// how much space the objects use. Object headers are validated lazily, on
// first access.
func Open(dir string, opts Options) (*Disk, error) {
	d := &Disk{
		dir:       dir,
		objDir:    filepath.Join(dir, "obj"),
		staleDir:  filepath.Join(dir, "stale"),
		fs:        opts.FS,
		log:       opts.Logger,
		noSync:    opts.NoSync,
		capacity:  opts.Capacity,
		reserve:   opts.Reserve,
		maxOpen:   opts.MaxOpenFiles,
		mapBudget: opts.MapBudget,
		zeros:     make([]byte, blockSize),
		objs:      make(map[Key]*object),
		unsynced:  make(map[Key]int64),
	}
	if d.fs == nil {
		d.fs = vfs.Default()
	}
	if d.log == nil {
		d.log = slog.New(slog.DiscardHandler)
	}
	if d.mapBudget <= 0 {
		d.mapBudget = DefaultMapBudget
	}
	if d.maxOpen <= 0 {
		d.maxOpen = DefaultMaxOpenFiles
	}
	d.rescanInterval = opts.RescanInterval
	if d.rescanInterval == 0 {
		d.rescanInterval = time.Hour
	}
	d.bgCtx, d.bgCancel = context.WithCancel(context.Background())
	d.zeroCRC = crc32c.Checksum(d.zeros)
	d.lru.next, d.lru.prev = &d.lru, &d.lru
	d.blocks.New = func() any { b := make([]byte, blockSize); return &b }
	d.scratch.New = func() any { return new(writeScratch) }

	for _, p := range []string{dir, d.objDir, d.staleDir} {
		if err := d.fs.MkdirAll(p, 0o755); err != nil {
			return nil, fmt.Errorf("store: open %s: %w", dir, err)
		}
	}
	lock, err := d.fs.Lock(filepath.Join(dir, lockName))
	if err != nil {
		var le *vfs.LockedError
		if errors.As(err, &le) {
			return nil, fmt.Errorf("%w: %s: %w", ErrLocked, dir, err)
		}
		return nil, fmt.Errorf("store: lock %s: %w", dir, err)
	}
	d.lock = lock
	if err := d.removeTemps(); err != nil {
		lock.Close()
		return nil, err
	}
	if err := d.rescan(context.Background()); err != nil {
		lock.Close()
		return nil, err
	}
	if err := d.refreshSpace(); err != nil {
		lock.Close()
		return nil, err
	}
	return d, nil
}

func (d *Disk) objPath(k Key) string { return filepath.Join(d.objDir, k.String()) }
func (d *Disk) stalePath(k Key, epoch uint32) string {
	return filepath.Join(d.staleDir, staleName(k, epoch))
}

// enter admits an operation unless the store is closed; exit ends it.
func (d *Disk) enter() error {
	d.life.RLock()
	if d.closed {
		d.life.RUnlock()
		return ErrClosed
	}
	return nil
}

func (d *Disk) exit() { d.life.RUnlock() }

// begin is enter plus a context check, the prologue of every operation.
func (d *Disk) begin(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return d.enter()
}

// Close syncs (unless NoSync), closes every open file and releases the
// directory lock. Later calls fail with ErrClosed.
func (d *Disk) Close() error {
	d.bgCancel() // a background rescan stops early
	err := d.close()
	d.bg.Wait()
	return err
}

func (d *Disk) close() error {
	d.life.Lock()
	defer d.life.Unlock()
	if d.closed {
		return nil
	}
	d.closed = true
	err := d.syncAll(context.Background())
	d.mu.Lock()
	var open []*object
	for o := d.lru.next; o != &d.lru; o = o.next {
		open = append(open, o)
	}
	d.mu.Unlock()
	for _, o := range open {
		o.mu.Lock()
		if cerr := d.closeFileLocked(o, true); cerr != nil {
			err = errors.Join(err, cerr)
		}
		o.mu.Unlock()
	}
	if cerr := d.lock.Close(); cerr != nil {
		err = errors.Join(err, cerr)
	}
	return err
}

// closedAlloc is the allocation accounted for k's file while it is not
// open: what we saw at its last close if writeback may have changed it
// since, else fresh (a stat taken now).
func (d *Disk) closedAlloc(k Key, fresh int64) int64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	if acct, ok := d.unsynced[k]; ok && acct >= 0 {
		return acct
	}
	return fresh
}

// acquire returns k's object with a reference held; release drops it.
func (d *Disk) acquire(k Key) *object {
	d.mu.Lock()
	o := d.objs[k]
	if o == nil {
		o = &object{key: k}
		d.objs[k] = o
	} else if o.inLRU && d.lru.next != o {
		d.unlinkLocked(o)
		d.pushFrontLocked(o)
	}
	o.refs.Add(1)
	d.mu.Unlock()
	return o
}

func (d *Disk) release(o *object) {
	d.put(o)
	if d.evictPending.Load() {
		d.evict()
	}
}

// put drops a reference; the last one removes the object from the table,
// which keeps the table bounded by open files plus operations in flight.
func (d *Disk) put(o *object) {
	if o.refs.Add(-1) != 0 {
		return
	}
	d.mu.Lock()
	if o.refs.Load() == 0 && d.objs[o.key] == o {
		delete(d.objs, o.key)
	}
	d.mu.Unlock()
}

func (d *Disk) pushFrontLocked(o *object) {
	o.prev, o.next = &d.lru, d.lru.next
	o.next.prev, d.lru.next = o, o
	o.inLRU = true
	d.lruLen++
}

func (d *Disk) unlinkLocked(o *object) {
	o.prev.next, o.next.prev = o.next, o.prev
	o.prev, o.next = nil, nil
	o.inLRU = false
	d.lruLen--
}

// addLRU registers a newly opened file; the LRU holds a reference.
func (d *Disk) addLRU(o *object) {
	d.mu.Lock()
	if !o.inLRU {
		d.pushFrontLocked(o)
		o.refs.Add(1)
	}
	if d.lruLen > d.maxOpen {
		d.evictPending.Store(true)
	}
	d.mu.Unlock()
}

// evict closes least recently used files until the cache is within bounds.
// It runs with no object lock held, so waiting for a victim's lock cannot
// deadlock.
func (d *Disk) evict() {
	for {
		d.mu.Lock()
		if d.lruLen <= d.maxOpen {
			d.evictPending.Store(false)
			d.mu.Unlock()
			return
		}
		v := d.lru.prev
		// Prefer an idle victim (only the LRU's reference) near the tail.
		for c, i := v, 0; c != &d.lru && i < 8; c, i = c.prev, i+1 {
			if c.refs.Load() == 1 {
				v = c
				break
			}
		}
		d.unlinkLocked(v) // the LRU's reference is now ours
		d.mu.Unlock()

		v.mu.Lock()
		d.mu.Lock()
		back := v.inLRU // reopened (e.g. re-created) meanwhile
		d.mu.Unlock()
		if !back {
			if err := d.closeFileLocked(v, true); err != nil {
				d.log.Warn("store: closing evicted object", "key", v.key.String(), "err", err)
			}
		}
		v.mu.Unlock()
		d.put(v)
	}
}

// closeFileLocked closes o's file (o.mu held for writing). With clean set
// and the object consistent it first clears the on-disk dirty flag so the
// next open trusts the checksums; unsynced mutations stay in d.unsynced
// and a later Sync reopens the file to fsync it.
func (d *Disk) closeFileLocked(o *object, clean bool) error {
	if o.f == nil {
		return nil
	}
	var err error
	if clean && o.hdrDirty && o.trusted && !o.sawPrev.Load() {
		r := o.h.rec
		r.seq++
		r.flags &^= recDirty
		if werr := d.writeRecord(o.f, r); werr == nil {
			o.h.rec, o.hdrDirty = r, false
		} else {
			err = werr
		}
	}
	// Catch allocation done since our last look (writeback of this file
	// allocating extent blocks, say).
	if info, serr := o.f.Stat(); serr == nil {
		d.account(o.key, false, 0, info.Alloc-o.alloc, 0)
		o.alloc = info.Alloc
	}
	d.unmap(o)
	if cerr := o.f.Close(); cerr != nil {
		err = errors.Join(err, cerr)
	}
	o.f, o.sums, o.known = nil, nil, nil
	d.mu.Lock()
	if _, ok := d.unsynced[o.key]; ok {
		d.unsynced[o.key] = o.alloc
	}
	if o.inLRU {
		d.unlinkLocked(o)
		o.refs.Add(-1) // the caller holds another reference
	}
	d.mu.Unlock()
	if err != nil {
		return ioError("close", o.key, err)
	}
	return nil
}

func (d *Disk) writeRecord(f vfs.File, r record) error {
	var b [recordLen]byte
	encodeRecord(b[:], r)
	_, err := f.WriteAt(b[:], recordSlot(r.seq))
	return err
}

// openLocked opens o's file if it is not open (o.mu held for writing).
func (d *Disk) openLocked(o *object) error {
	if o.f != nil {
		return nil
	}
	f, err := d.fs.OpenFile(d.objPath(o.key), os.O_RDWR, 0)
	if err != nil {
		if isNotExist(err) {
			return fmt.Errorf("store: %v: %w", o.key, ErrNotFound)
		}
		return ioError("open", o.key, err)
	}
	h, sums, info, err := d.load(f, o.key, false, 0)
	if err != nil {
		f.Close()
		return err
	}
	o.f, o.h, o.sums, o.alloc = f, h, sums, info.Alloc
	d.mu.Lock()
	if acct, ok := d.unsynced[o.key]; ok && acct >= 0 {
		// Closed with writeback pending: account what it allocated since.
		d.unsynced[o.key] = -1
		d.mu.Unlock()
		d.account(o.key, false, 0, info.Alloc-acct, 0)
	} else {
		d.mu.Unlock()
	}
	o.known = make([]uint64, (h.nblocks()+63)/64)
	o.hdrDirty = h.rec.flags&recDirty != 0
	o.trusted = !o.hdrDirty
	o.sawPrev.Store(false)
	d.addLRU(o)
	return nil
}

// load reads and validates a file's header and checksum area.
func (d *Disk) load(f vfs.File, k Key, stale bool, epoch uint32) (header, []byte, vfs.Info, error) {
	corrupt := func(reason string) error {
		return &CorruptError{Key: k, Stale: stale, StaleEpoch: epoch, Reason: reason}
	}
	info, err := f.Stat()
	if err != nil {
		return header{}, nil, info, ioError("stat", k, err)
	}
	bp := d.blocks.Get().(*[]byte)
	defer d.blocks.Put(bp)
	first := (*bp)[:min(int64(pageSize), max(info.Size, 0))]
	if _, err := f.ReadAt(first, 0); err != nil {
		return header{}, nil, info, ioError("read header", k, err)
	}
	h, err := parseHeader(first)
	if err != nil {
		return header{}, nil, info, corrupt("bad header: " + err.Error())
	}
	if h.key != k {
		return header{}, nil, info, corrupt(fmt.Sprintf("header names object %v", h.key))
	}
	if info.Size != h.fileSize() {
		return header{}, nil, info, corrupt(fmt.Sprintf("file is %d bytes, header says %d", info.Size, h.fileSize()))
	}
	// Bounded: at most 2^20 blocks of 4 KiB, 8 MiB of checksums, and the
	// file was checked to be that long.
	sums := make([]byte, int(h.nblocks())*pairLen)
	n := copy(sums, first[sumOff:])
	if n < len(sums) {
		if _, err := f.ReadAt(sums[n:], int64(sumOff+n)); err != nil {
			return header{}, nil, info, ioError("read checksums", k, err)
		}
	}
	return h, sums, info, nil
}

// lockRead locks o for reading with its file open. It returns true if it
// had to take the write lock instead (the file needed opening); unlock
// with unlockRead.
func (d *Disk) lockRead(o *object) (exclusive bool, err error) {
	o.mu.RLock()
	if o.f != nil {
		return false, nil
	}
	o.mu.RUnlock()
	o.mu.Lock()
	if err := d.openLocked(o); err != nil {
		o.mu.Unlock()
		return false, err
	}
	return true, nil
}

func unlockRead(o *object, exclusive bool) {
	if exclusive {
		o.mu.Unlock()
	} else {
		o.mu.RUnlock()
	}
}

// pinRead enters the store and locks k's object for reading with its file
// open: the prologue of every read. unpin undoes it all.
func (d *Disk) pinRead(ctx context.Context, k Key) (o *object, unpin func(), err error) {
	if err := d.begin(ctx); err != nil {
		return nil, nil, err
	}
	o = d.acquire(k)
	excl, err := d.lockRead(o)
	if err != nil {
		d.release(o)
		d.exit()
		return nil, nil, err
	}
	return o, func() {
		unlockRead(o, excl)
		d.release(o)
		d.exit()
	}, nil
}

// lockWrite enters the store and locks k's object for writing (its file
// not necessarily open): the prologue of every mutation. unlockWrite
// undoes it. (No closure, as pinRead's: this is every write's path.)
func (d *Disk) lockWrite(ctx context.Context, k Key) (*object, error) {
	if err := d.begin(ctx); err != nil {
		return nil, err
	}
	o := d.acquire(k)
	o.mu.Lock()
	return o, nil
}

func (d *Disk) unlockWrite(o *object) {
	o.mu.Unlock()
	d.release(o)
	d.exit()
}

// markUnsynced records that o has mutations a Sync must fsync.
func (d *Disk) markUnsynced(o *object) {
	if d.noSync || o.unsynced.Load() {
		return
	}
	o.unsynced.Store(true)
	d.mu.Lock()
	if _, ok := d.unsynced[o.key]; !ok {
		d.unsynced[o.key] = -1
	}
	d.mu.Unlock()
}

// markSynced records that o's file was just fsynced (o.mu held).
func (d *Disk) markSynced(o *object) {
	o.unsynced.Store(false)
	d.mu.Lock()
	delete(d.unsynced, o.key)
	d.mu.Unlock()
}

func (d *Disk) markDirDirty(obj, stale bool) {
	d.mu.Lock()
	d.objDirty = d.objDirty || obj
	d.stDirty = d.stDirty || stale
	d.mu.Unlock()
}

// fsync syncs f unless NoSync.
func (d *Disk) fsync(f vfs.File) error {
	if d.noSync {
		return nil
	}
	return f.Sync()
}
