// Package serve holds what the native and iSCSI front ends share in
// running a connection's requests: a pool of reusable goroutines and the
// rule for when the goroutine reading a connection runs a request itself.
package serve

import (
	"sync"
	"time"
)

// Workers runs functions on goroutines kept for reuse. A request's call
// chain (front end → volume → gateway → store) grows a fresh goroutine's
// stack several times (runtime.newstack and copystack were 6% of a node's
// CPU under 4 KiB I/O); a worker keeps its grown stack for the next
// request. There is no bound here: the front ends bound requests in flight
// per connection. A worker idle for workerIdle exits, as do all idle ones
// once Close is called.
type Workers struct {
	work chan func()
	quit chan struct{}
	once sync.Once
}

const workerIdle = 10 * time.Second

// NewWorkers returns an empty pool.
func NewWorkers() *Workers {
	return &Workers{work: make(chan func()), quit: make(chan struct{})}
}

// Run starts fn on an idle worker, or on a new one if none is idle.
func (w *Workers) Run(fn func()) {
	select {
	case w.work <- fn:
	default:
		go w.loop(fn)
	}
}

func (w *Workers) loop(fn func()) {
	idle := time.NewTimer(workerIdle)
	defer idle.Stop()
	for {
		fn()
		fn = nil
		idle.Reset(workerIdle)
		select {
		case fn = <-w.work:
		case <-idle.C:
			return
		case <-w.quit:
			return
		}
	}
}

// Close makes idle workers exit; busy ones exit when their function ends.
func (w *Workers) Close() { w.once.Do(func() { close(w.quit) }) }
