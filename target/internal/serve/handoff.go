package serve

import (
	"sync"
	"sync/atomic"
	"time"
)

// Handoff lets the goroutine holding a connection's read role run a
// request itself and keep the role, passing it on only if the request
// turns out slow.
//
// Passing the role on before every request costs a goroutine wake-up and
// a read that finds nothing: at queue depth 1, where the next request
// cannot arrive before this one is answered, that is pure latency. When
// more requests may follow (others in flight, bytes already buffered) the
// caller passes the role on at once instead. The Watch bounds what a
// request that turns out slow (a large transfer, a retry, a lock) costs
// the ones behind it, and guarantees progress to a request that waits for
// something only the connection can bring.
type Handoff[T any] struct {
	w     *Watch
	run   func(T)
	pass  func()
	gen   uint64        // of the current Run; only the reader writes it
	quiet int           // requests to see alone before running one; the reader's
	state atomic.Uint64 // gen<<2 | running or passed
	seen  uint64        // state at the Watch's last scan; the Watch's own
}

const (
	running = 1
	passed  = 2
)

// NewHandoff returns a Handoff whose Run(v) calls run(v), with w calling
// pass when that is slow; pass must start a new reader without blocking.
// (run is fixed here so that Run does not allocate a closure per
// request.) Close must be called when the connection ends.
func NewHandoff[T any](w *Watch, run func(T), pass func()) *Handoff[T] {
	h := &Handoff[T]{w: w, run: run, pass: pass}
	w.mu.Lock()
	w.hs[h] = struct{}{}
	w.mu.Unlock()
	return h
}

// Close stops watching h.
func (h *Handoff[T]) Close() {
	h.w.mu.Lock()
	delete(h.w.hs, h)
	h.w.mu.Unlock()
}

// quietRequests is how many requests in a row must arrive alone before one
// runs on the reader. Under load (queue depth above 1) requests are rarely
// but sometimes alone, and one that then blocks (on an object lock, say)
// would stall its connection's reading for a tick or two.
const quietRequests = 64

// Inline reports whether the request just read should run on the reader
// (Run), given whether it is alone: nothing else in flight on the
// connection and nothing more read. Only the current reader may call it.
func (h *Handoff[T]) Inline(alone bool) bool {
	if !alone {
		h.quiet = quietRequests
		return false
	}
	if h.quiet > 0 {
		h.quiet--
		return false
	}
	return true
}

// Run runs run(v) while holding the read role and reports whether the
// caller still holds it afterwards; if not, pass has started another
// reader and the caller must stop reading. Only the current reader may
// call Run.
func (h *Handoff[T]) Run(v T) (reader bool) {
	h.gen++
	g := h.gen << 2
	h.state.Store(g | running)
	h.w.active()
	h.run(v)
	// Passed on if this fails: the state then says passed for our run,
	// or belongs to a run of the new reader.
	return h.state.CompareAndSwap(g|running, g)
}

// check passes the role on if the run the last scan saw is still going,
// and reports whether a run is going or has happened since that scan.
// Only the Watch calls it.
func (h *Handoff[T]) check() (busy bool) {
	s := h.state.Load()
	busy = s != h.seen || s&3 == running
	if s&3 == running && s == h.seen && h.state.CompareAndSwap(s, s&^3|passed) {
		h.pass()
	}
	h.seen = s
	return busy
}

type watched interface{ check() bool }

// Watch passes on the read role of Handoffs whose run has lasted a whole
// tick, so a slow request holds up its connection's reading for one to
// two ticks. It is a goroutine that ticks while runs happen and sleeps
// once none has for idleTicks: a timer per run would cost more than the
// hand-off it saves (arming one wakes the runtime's network poller).
type Watch struct {
	tick     time.Duration
	mu       sync.Mutex
	hs       map[watched]struct{}
	sleeping atomic.Bool
	wake     chan struct{}
	quit     chan struct{}
	once     sync.Once
}

const idleTicks = 100

// Tick is the front ends' Watch period: a request that turns out slow holds
// up its connection's reading for one to two ticks.
const Tick = time.Millisecond

// NewWatch starts a Watch ticking every tick; Close stops it.
func NewWatch(tick time.Duration) *Watch {
	w := &Watch{tick: tick, hs: map[watched]struct{}{}, wake: make(chan struct{}, 1), quit: make(chan struct{})}
	go w.loop()
	return w
}

// Close stops the Watch's goroutine.
func (w *Watch) Close() { w.once.Do(func() { close(w.quit) }) }

// active wakes the Watch if it sleeps; a Run calls it after marking itself
// running, and the Watch scans after saying it sleeps, so one of the two
// sees the other.
func (w *Watch) active() {
	if w.sleeping.Load() && w.sleeping.CompareAndSwap(true, false) {
		w.wake <- struct{}{} // buffered; only the CAS winner sends
	}
}

func (w *Watch) scan() (busy bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for h := range w.hs {
		if h.check() {
			busy = true
		}
	}
	return busy
}

func (w *Watch) loop() {
	t := time.NewTicker(w.tick)
	defer t.Stop()
	idle := 0
	for {
		select {
		case <-t.C:
		case <-w.quit:
			return
		}
		if w.scan() {
			idle = 0
			continue
		}
		if idle++; idle < idleTicks {
			continue
		}
		w.sleeping.Store(true)
		if w.scan() {
			if !w.sleeping.CompareAndSwap(true, false) {
				<-w.wake // a Run woke us meanwhile
			}
			idle = 0
			continue
		}
		t.Stop()
		select {
		case <-w.wake:
		case <-w.quit:
			return
		}
		t.Reset(w.tick)
		idle = 0
	}
}
