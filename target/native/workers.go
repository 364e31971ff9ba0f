package native

import (
	"sync"
	"time"
)

// workers runs request handlers on goroutines kept for reuse. A handler's
// call chain (handler → recovery guard → store) grows a fresh goroutine's
// stack several times; a worker keeps its grown stack for the next
// request. Requests in flight are bounded per connection (MaxInflight),
// so there is no bound here. A worker idle for workerIdle exits, as do
// all idle ones once the server is closed.
type workers struct {
	work chan func()
	quit chan struct{}
	once sync.Once
}

const workerIdle = 10 * time.Second

func newWorkers() *workers {
	return &workers{work: make(chan func()), quit: make(chan struct{})}
}

// run starts fn on an idle worker, or on a new one if none is idle.
func (w *workers) run(fn func()) {
	select {
	case w.work <- fn:
	default:
		go w.loop(fn)
	}
}

func (w *workers) loop(fn func()) {
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

// close makes idle workers exit; busy ones exit when their request ends.
func (w *workers) close() { w.once.Do(func() { close(w.quit) }) }
