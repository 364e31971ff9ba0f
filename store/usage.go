package store

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// Space accounting. Used is the sum, over object and stale files, of the
// allocation we last observed for each (st_blocks*512). It changes
// incrementally: every change of a file's allocation we cause or observe
// (fstat after allocating writes, punches, fsyncs, at close) is passed to
// account under that object's lock. File systems also allocate on their
// own schedule (extent blocks at writeback), which makes the sum drift a
// little; Rescan recomputes it exactly, without stopping I/O, and Usage
// runs one in the background every Options.RescanInterval.

// rescanState tracks a running rescan. Files are visited in (dir, name)
// order over the listing taken when it started; a change accounted to a
// file already visited, or to one not in the listing (created since), is
// one the sum misses, collected in adj.
type rescanState struct {
	active   bool
	lists    [2][]string // sorted names of obj/ and stale/ at the start
	any      bool        // the position below is valid
	dir      int         // 0 obj/, 1 stale/
	name     string
	adjAlloc int64
	adjObjs  int64
}

func (r *rescanState) missed(dir int, name string) bool {
	l := r.lists[dir]
	if i, ok := slices.BinarySearch(l, name); !ok || i < 0 {
		return true // not listed: the sum never sees it
	}
	return r.any && (dir < r.dir || dir == r.dir && name <= r.name)
}

// account applies a change of allocation (and of the live object count)
// of one file: obj/<k> or, if stale, stale/<k>.<epoch>. The caller holds
// k's object lock, which orders it against a rescan's visit of the file,
// and, if the change comes with a create, rename or remove, nsMu for
// reading around both, which orders it against the rescan's listing.
func (d *Disk) account(k Key, stale bool, epoch uint32, dAlloc, dObjs int64) {
	if dAlloc == 0 && dObjs == 0 {
		return
	}
	if !d.rescanning.Load() {
		d.used.Add(dAlloc)
		d.objects.Add(dObjs)
		return
	}
	dir, name := 0, k.String()
	if stale {
		dir, name = 1, staleName(k, epoch)
	}
	d.rescanMu.Lock()
	d.used.Add(dAlloc)
	d.objects.Add(dObjs)
	if d.rs.active && d.rs.missed(dir, name) {
		d.rs.adjAlloc += dAlloc
		d.rs.adjObjs += dObjs
	}
	d.rescanMu.Unlock()
}

// Rescan recomputes Used and Objects from the files. It runs alongside
// normal I/O (creates and removes pause only while it lists the
// directories); changes during the scan are accounted exactly.
func (d *Disk) Rescan(ctx context.Context) error {
	if err := d.begin(ctx); err != nil {
		return err
	}
	defer d.exit()
	return d.rescan(ctx)
}

func (d *Disk) rescan(ctx context.Context) error {
	d.rescanRun.Lock()
	defer d.rescanRun.Unlock()
	var lists [2][]string
	d.nsMu.Lock()
	for i, dir := range []string{d.objDir, d.staleDir} {
		names, err := d.fs.ReadDir(dir)
		if err != nil {
			d.nsMu.Unlock()
			return fmt.Errorf("store: rescan: %w", err)
		}
		slices.Sort(names)
		lists[i] = names
	}
	// Activate before letting namespace changes resume, so each file is
	// either in the listing or has its whole history accounted to adj.
	d.rescanMu.Lock()
	d.rs = rescanState{active: true, lists: lists}
	d.rescanning.Store(true)
	d.rescanMu.Unlock()
	d.nsMu.Unlock()
	defer func() {
		d.rescanMu.Lock()
		d.rs = rescanState{}
		d.rescanning.Store(false)
		d.rescanMu.Unlock()
	}()

	var sum, count int64
	for dir, names := range lists {
		for _, n := range names {
			if err := ctx.Err(); err != nil {
				return err
			}
			var k Key
			var ok bool
			if dir == 0 {
				k, ok = parseName(n)
			} else {
				k, _, ok = parseStaleName(n)
			}
			if !ok {
				continue // junk (logged at open), or a temp file of a Create in flight
			}
			alloc, found, err := d.visit(k, dir, n)
			if err != nil {
				return err
			}
			if found {
				sum += alloc
				if dir == 0 {
					count++
				}
			}
		}
	}
	d.rescanMu.Lock()
	d.used.Store(sum + d.rs.adjAlloc)
	d.objects.Store(count + d.rs.adjObjs)
	d.rescanMu.Unlock()
	d.lastRescan.Store(time.Now().UnixNano())
	return nil
}

// visit measures one file under its object's lock and moves the rescan
// position past it. Whatever we had accounted for the file is replaced by
// the measurement, so cached per-file values are reset to it too.
func (d *Disk) visit(k Key, dir int, name string) (int64, bool, error) {
	o := d.acquire(k)
	defer d.release(o)
	o.mu.Lock()
	defer o.mu.Unlock()
	var alloc int64
	found := true
	if dir == 0 && o.f != nil {
		info, err := o.f.Stat()
		if err != nil {
			return 0, false, ioError("rescan", k, err)
		}
		alloc, o.alloc = info.Alloc, info.Alloc
	} else {
		base := d.objDir
		if dir == 1 {
			base = d.staleDir
		}
		info, err := d.fs.Stat(filepath.Join(base, name))
		switch {
		case err == nil:
			alloc = info.Alloc
		case isNotExist(err):
			found = false
		default:
			return 0, false, fmt.Errorf("store: rescan: %w", err)
		}
		if dir == 0 {
			d.mu.Lock()
			if acct, ok := d.unsynced[k]; ok && acct >= 0 {
				d.unsynced[k] = alloc
			}
			d.mu.Unlock()
		}
	}
	d.rescanMu.Lock()
	d.rs.any, d.rs.dir, d.rs.name = true, dir, name
	d.rescanMu.Unlock()
	return alloc, found, nil
}

// maybeRescan starts a background rescan if the last one is too old.
func (d *Disk) maybeRescan() {
	if d.rescanInterval < 0 || time.Since(time.Unix(0, d.lastRescan.Load())) < d.rescanInterval {
		return
	}
	if !d.rescanRun.TryLock() {
		return // one is running
	}
	d.rescanRun.Unlock()
	// Mark now so concurrent Usage calls do not start more.
	d.lastRescan.Store(time.Now().UnixNano())
	d.bg.Go(func() {
		if err := d.Rescan(d.bgCtx); err != nil && d.bgCtx.Err() == nil {
			d.log.Warn("store: background rescan failed", "err", err)
		}
	})
}

// removeTemps deletes temp files left by a Create that died.
func (d *Disk) removeTemps() error {
	names, err := d.fs.ReadDir(d.objDir)
	if err != nil {
		return fmt.Errorf("store: open: %w", err)
	}
	for _, n := range names {
		p := filepath.Join(d.objDir, n)
		switch {
		case strings.HasSuffix(n, tmpSuffix):
			// Only Create makes temp files, under the object lock, and we hold
			// the directory lock: this one is from a dead process.
			if err := d.fs.Remove(p); err != nil && !isNotExist(err) {
				return fmt.Errorf("store: open: removing temp file: %w", err)
			}
			d.log.Info("store: removed leftover temp file", "path", p)
		default:
			if _, ok := parseName(n); !ok {
				d.log.Warn("store: ignoring junk file", "path", p)
			}
		}
	}
	names, err = d.fs.ReadDir(d.staleDir)
	if err != nil {
		return fmt.Errorf("store: open: %w", err)
	}
	for _, n := range names {
		if _, _, ok := parseStaleName(n); !ok {
			d.log.Warn("store: ignoring junk file", "path", filepath.Join(d.staleDir, n))
		}
	}
	return nil
}

// Usage reports capacity, refreshing the file system's free space.
func (d *Disk) Usage() (Usage, error) {
	if err := d.enter(); err != nil {
		return Usage{}, err
	}
	defer d.exit()
	d.maybeRescan()
	if err := d.refreshSpace(); err != nil {
		return Usage{}, err
	}
	used := uint64(max(d.used.Load(), 0))
	d.space.Lock()
	avail := d.fsAvail
	d.space.Unlock()
	u := Usage{Used: used, Objects: uint64(max(d.objects.Load(), 0))}
	if d.capacity == 0 {
		u.Capacity = used + avail
		u.Free = satSub(avail, d.reserve)
	} else {
		u.Capacity = d.capacity
		u.Free = satSub(min(satSub(d.capacity, used), avail), d.reserve)
	}
	return u, nil
}

func satSub(a, b uint64) uint64 {
	if a < b {
		return 0
	}
	return a - b
}

func (d *Disk) refreshSpace() error {
	du, err := d.fs.DiskUsage(d.dir)
	if err != nil {
		return fmt.Errorf("store: disk usage: %w", err)
	}
	d.space.Lock()
	d.fsAvail, d.usedAtRefresh = du.Avail, d.used.Load()
	d.space.Unlock()
	return nil
}

// admit fails with ErrNoSpace if allocating growth more bytes would leave
// less than Reserve free, of Capacity or of the file system. The file
// system's free space is estimated from the last statfs minus what we
// allocated since, and re-read before refusing.
func (d *Disk) admit(k Key, growth uint64) error {
	if growth == 0 {
		return nil
	}
	used := uint64(max(d.used.Load(), 0))
	if d.capacity > 0 && used+growth+d.reserve > d.capacity {
		return fmt.Errorf("store: %v: %w: capacity %d, used %d, reserve %d, need %d",
			k, ErrNoSpace, d.capacity, used, d.reserve, growth)
	}
	d.space.Lock()
	defer d.space.Unlock()
	for refreshed := false; ; refreshed = true {
		est := int64(d.fsAvail) - (d.used.Load() - d.usedAtRefresh)
		if est >= 0 && uint64(est) >= growth+d.reserve {
			return nil
		}
		if refreshed {
			return fmt.Errorf("store: %v: %w: file system has %d bytes free, reserve %d, need %d",
				k, ErrNoSpace, max(est, 0), d.reserve, growth)
		}
		du, err := d.fs.DiskUsage(d.dir)
		if err != nil {
			return fmt.Errorf("store: disk usage: %w", err)
		}
		d.fsAvail, d.usedAtRefresh = du.Avail, d.used.Load()
	}
}
