package recovery

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/gosheep/gosheep/proto"
	"github.com/gosheep/gosheep/store"
)

// run is the background recovery of epoch e.
func (r *Recoverer) run(ctx context.Context, e *Epoch) {
	for r.cfg.Disabled != nil && r.cfg.Disabled() {
		r.setPaused("recovery disabled by the administrator")
		if !sleep(ctx, time.Second) {
			return
		}
	}
	r.setPaused("")
	holdings, err := r.gatherAll(ctx, e)
	if err != nil {
		return // cancelled
	}
	tasks := r.plan(ctx, e, holdings)
	r.log.Info("recovery planned", "epoch", e.Epoch, "objects", len(tasks))
	r.execute(ctx, e, tasks, holdings)
	if ctx.Err() != nil {
		return
	}
	for {
		if err := r.saveRecovered(e.Epoch); err != nil {
			r.log.Error("cannot persist recovered epoch", "err", err)
		}
		r.mu.Lock()
		if r.epoch == e {
			r.recovered = e.Epoch
			r.status.Active = false
			r.status.Finished = time.Now()
		}
		r.mu.Unlock()
		if r.cfg.Done == nil {
			break
		}
		dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := r.cfg.Done(dctx, e.Epoch)
		cancel()
		if err == nil || ctx.Err() != nil {
			break
		}
		r.log.Warn("cannot report recovery completion, retrying", "epoch", e.Epoch, "err", err)
		if !sleep(ctx, time.Second) {
			return
		}
	}
	r.log.Info("recovery complete", "epoch", e.Epoch, "objects", r.done.Load(), "bytes", r.bytes.Load())
}

func sleep(ctx context.Context, d time.Duration) bool {
	select {
	case <-ctx.Done():
		return false
	case <-time.After(d):
		return true
	}
}

func (r *Recoverer) setPaused(why string) {
	r.mu.Lock()
	r.status.Paused = why
	r.mu.Unlock()
}

// gatherAll lists every member's copies, retrying until all answered:
// deciding from an incomplete list could lose the newest copy.
func (r *Recoverer) gatherAll(ctx context.Context, e *Epoch) (map[proto.OID][]holding, error) {
	backoff := 200 * time.Millisecond
	for {
		out, err := r.gatherAllOnce(ctx, e)
		if err == nil {
			return out, nil
		}
		r.log.Warn("recovery: cannot list every member yet", "epoch", e.Epoch, "err", err)
		r.setPaused("waiting for object lists: " + err.Error())
		if !sleep(ctx, backoff) {
			return nil, ctx.Err()
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

func (r *Recoverer) gatherAllOnce(ctx context.Context, e *Epoch) (map[proto.OID][]holding, error) {
	out := map[proto.OID][]holding{}
	live, err := r.cfg.Local.List(ctx)
	if err != nil {
		return nil, err
	}
	for _, o := range live {
		out[o.Key.OID] = append(out[o.Key.OID], holding{e: Entry{Key: o.Key, Size: o.Size, Epoch: o.Epoch}})
	}
	stale, err := r.cfg.Local.ListStale(ctx)
	if err != nil {
		return nil, err
	}
	for _, st := range stale {
		out[st.Key.OID] = append(out[st.Key.OID], holding{e: Entry{Key: st.Key, Size: st.Size, Epoch: st.ObjEpoch, Stale: st.Epoch}})
	}
	var mu sync.Mutex
	var wg sync.WaitGroup
	var errs []error
	for _, m := range e.Members {
		if m.ID == r.cfg.Self {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			es, err := r.cfg.Remote.List(ctx, m.Addr.String())
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", m.ID, err))
				return
			}
			for _, x := range es {
				out[x.Key.OID] = append(out[x.Key.OID], holding{addr: m.Addr.String(), e: x})
			}
		}()
	}
	wg.Wait()
	return out, errors.Join(errs...)
}

type task struct {
	key   store.Key
	shape Shape
}

// plan decides, for every object known anywhere, what this node must
// fetch; it stashes local copies this node no longer holds and settles
// the rest at once.
func (r *Recoverer) plan(ctx context.Context, e *Epoch, holdings map[proto.OID][]holding) []task {
	var tasks []task
	pending := map[store.Key]bool{}
	oids := make([]proto.OID, 0, len(holdings))
	for oid := range holdings {
		oids = append(oids, oid)
	}
	// Inodes first: volumes need them before any data object.
	sort.Slice(oids, func(i, j int) bool {
		if oids[i].IsInode() != oids[j].IsInode() {
			return oids[i].IsInode()
		}
		return oids[i] < oids[j]
	})
	for _, oid := range oids {
		hs := holdings[oid]
		s, ok, garbage := r.cfg.Shape(oid)
		if !ok && !garbage {
			continue
		}
		want := map[store.Key]bool{}
		if !garbage {
			for _, k := range r.wanted(e, oid, s) {
				want[k] = true
			}
		}
		best := targetEpoch(hs, s)
		for _, h := range hs {
			if h.addr == "" && h.e.Stale == 0 && !want[h.e.Key] {
				if err := r.cfg.Local.Stash(ctx, h.e.Key, e.Epoch); err != nil && !errors.Is(err, store.ErrNotFound) {
					r.log.Warn("recovery: cannot stash copy", "oid", oid, "err", err)
				} else if err == nil {
					r.stashed.Add(1)
				}
			}
		}
		for k := range want {
			current := false
			for _, h := range hs {
				if h.addr == "" && h.e.Stale == 0 && h.e.Key == k && isCurrent(h.e.Epoch, best, s) {
					current = true
				}
			}
			if !current {
				r.log.Debug("recovery: need copy", "oid", oid, "strip", k.ECIndex, "best", best, "holdings", fmtHoldings(hs))
				pending[k] = true
				tasks = append(tasks, task{key: k, shape: s})
			}
		}
	}
	r.mu.Lock()
	if r.epoch == e {
		for k := range r.verified {
			delete(pending, k) // Guard got there first
		}
		r.pending = pending
		r.planned = true
	}
	r.mu.Unlock()
	r.queued.Store(int64(len(tasks)))
	return tasks
}

// execute recovers tasks with bounded concurrency and rate, retrying
// failures until they succeed or the epoch changes.
func (r *Recoverer) execute(ctx context.Context, e *Epoch, tasks []task, holdings map[proto.OID][]holding) {
	for len(tasks) > 0 && ctx.Err() == nil {
		rate, workers := uint64(0), 4
		if r.cfg.Throttle != nil {
			rate, workers = r.cfg.Throttle()
			workers = max(workers, 1)
		}
		ch := make(chan task)
		var mu sync.Mutex
		var retry []task
		var wg sync.WaitGroup
		for w := 0; w < workers; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for t := range ch {
					err := r.one(ctx, e, t, holdings[t.key.OID])
					if err != nil {
						if ctx.Err() != nil {
							return
						}
						r.failed.Add(1)
						r.log.Warn("recovery: object failed, will retry", "oid", t.key.OID, "strip", t.key.ECIndex, "err", err)
						if errors.Is(err, store.ErrNoSpace) {
							r.setPaused("disk full: recovery waits for free space")
						}
						mu.Lock()
						retry = append(retry, t)
						mu.Unlock()
						continue
					}
					r.done.Add(1)
				}
			}()
		}
		start := time.Now()
		var sent uint64
		for _, t := range tasks {
			if rate > 0 {
				// Token bucket over the whole run: stay under rate bytes/s.
				due := time.Duration(float64(sent) / float64(rate) * float64(time.Second))
				if d := due - time.Since(start); d > 0 && !sleep(ctx, d) {
					break
				}
				sent += uint64(t.shape.Size)
			}
			select {
			case ch <- t:
			case <-ctx.Done():
			}
		}
		close(ch)
		wg.Wait()
		tasks = retry
		if len(tasks) > 0 {
			// Lists may be outdated after failures: refresh them.
			if !sleep(ctx, time.Second) {
				return
			}
			if h, err := r.gatherAll(ctx, e); err == nil {
				holdings = h
			}
			r.setPaused("")
		}
	}
}

func (r *Recoverer) one(ctx context.Context, e *Epoch, t task, hs []holding) error {
	unlock := r.lockKey(t.key)
	defer unlock()
	if ok, _ := r.settled(t.key); ok {
		return nil
	}
	if err := r.recoverKey(ctx, e, t.key, t.shape, hs); err != nil {
		return err
	}
	r.settle(e, t.key)
	return nil
}

// PurgeThrough deletes stale copies stashed at or before epoch e; call it
// once every member of e has finished recovering e.
func (r *Recoverer) PurgeThrough(ctx context.Context, e uint32) (int, error) {
	stale, err := r.cfg.Local.ListStale(ctx)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, st := range stale {
		if st.Epoch > e {
			continue
		}
		if err := r.cfg.Local.PurgeStale(ctx, st.Key, st.Epoch); err != nil {
			return n, err
		}
		n++
	}
	return n, nil
}

func fmtHoldings(hs []holding) string {
	out := ""
	for _, h := range hs {
		who := h.addr
		if who == "" {
			who = "local"
		}
		out += fmt.Sprintf("%s:e%d", who, h.e.Epoch)
		if h.e.Stale != 0 {
			out += fmt.Sprintf("(stale@%d)", h.e.Stale)
		}
		out += " "
	}
	return out
}
