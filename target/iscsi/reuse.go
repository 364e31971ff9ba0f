package iscsi

import (
	"math/bits"
	"sync"
	"time"
)

// bufPool recycles command data buffers (Data-Out collected for a write,
// Data-In read for a read). Fresh megabyte buffers per command were most
// of the target's allocations: the GC, page faults on new spans and the
// scavenger returning them cost more CPU than the copies themselves.
// Buffers come in power-of-two classes from minPooled to maxPooled bytes;
// larger ones are allocated and left to the GC.
type bufPool struct {
	classes [nClasses]sync.Pool
}

const (
	minPoolShift = 12 // 4 KiB
	maxPoolShift = 22 // 4 MiB
	nClasses     = maxPoolShift - minPoolShift + 1
)

// class returns the pool class for n bytes, or -1 when n is not pooled.
func class(n int) int {
	if n <= 0 || n > 1<<maxPoolShift {
		return -1
	}
	c := bits.Len(uint(n-1)) - minPoolShift
	return max(c, 0)
}

// get returns a buffer of length n. Its contents are arbitrary: callers
// overwrite all of it before anyone reads it.
func (bp *bufPool) get(n int) []byte {
	c := class(n)
	if c < 0 {
		return make([]byte, n)
	}
	if v := bp.classes[c].Get(); v != nil {
		return (*(v.(*[]byte)))[:n]
	}
	return make([]byte, n, 1<<(c+minPoolShift))
}

// put returns a buffer obtained from get; nobody may use it afterwards.
func (bp *bufPool) put(b []byte) {
	c := class(cap(b))
	if c < 0 || cap(b) != 1<<(c+minPoolShift) {
		return
	}
	b = b[:cap(b)]
	bp.classes[c].Put(&b)
}

// workers runs commands on goroutines kept for reuse. A command's call
// chain (SCSI → volume → gateway → store) grows a fresh goroutine's stack
// several times (runtime.newstack and copystack were 6% of a node's CPU
// under 4 KiB I/O); a worker keeps its grown stack for the next command.
// There is no bound here: commands in flight are bounded by the sessions'
// CmdSN windows. A worker idle for workerIdle exits, as do all on close.
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

// close makes idle workers exit; busy ones exit when their command ends.
func (w *workers) close() { w.once.Do(func() { close(w.quit) }) }
