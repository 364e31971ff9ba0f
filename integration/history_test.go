package integration

import (
	"context"
	"crypto/sha256"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/gosheep/gosheep/client/vdi"
)

// history is a per-block version log of a write stream: for every block,
// the last acknowledged write and every write attempted after it. Reading
// a block must return the last acknowledged version or one of those later
// attempts: anything else is a lost or reordered acknowledged write.
type history struct {
	mu      sync.Mutex
	bs      int
	acked   map[int][32]byte
	pending map[int][][32]byte
	writes  int
	failed  int
}

func newHistory(bs int) *history {
	return &history{bs: bs, acked: map[int][32]byte{}, pending: map[int][][32]byte{}}
}

// writer streams writes over blocks [lo, hi) (each block owned by one
// writer goroutine, so its versions are ordered) until stop is closed.
// open returns a VDI handle (reconnecting) or an error.
func (h *history) writer(t testing.TB, open func() (*vdi.VDI, error), lo, hi int, writers int, stop <-chan struct{}) *sync.WaitGroup {
	var wg sync.WaitGroup
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var v *vdi.VDI
			for seq := 0; ; seq++ {
				select {
				case <-stop:
					return
				default:
				}
				n := (hi - lo) / writers
				if n == 0 {
					return
				}
				idx := lo + w*n + seq%n
				data := block(idx, seq+1000*w, h.bs)
				sum := sha256.Sum256(data)
				if v == nil {
					var err error
					if v, err = open(); err != nil {
						time.Sleep(200 * time.Millisecond)
						continue
					}
				}
				h.mu.Lock()
				h.pending[idx] = append(h.pending[idx], sum)
				h.mu.Unlock()
				ctx, cancel := context.WithTimeout(context.Background(), 45*time.Second)
				err := v.WriteAt(ctx, data, uint64(idx*h.bs))
				cancel()
				h.mu.Lock()
				if err == nil {
					h.acked[idx] = sum
					h.pending[idx] = nil
					h.writes++
				} else {
					h.failed++
				}
				h.mu.Unlock()
				if err != nil {
					// The node we talk to may be gone: reopen and go on.
					v = nil
					time.Sleep(200 * time.Millisecond)
				}
			}
		}()
	}
	return &wg
}

// verify reads every acknowledged block through v.
func (h *history) verify(t testing.TB, v *vdi.VDI) {
	t.Helper()
	h.mu.Lock()
	defer h.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	buf := make([]byte, h.bs)
	for idx, want := range h.acked {
		if err := v.ReadAt(ctx, buf, uint64(idx*h.bs)); err != nil {
			t.Fatalf("history: read block %d: %v", idx, err)
		}
		got := sha256.Sum256(buf)
		ok := got == want
		for _, p := range h.pending[idx] {
			ok = ok || got == p
		}
		if !ok {
			t.Fatalf("history: block %d does not hold its last acknowledged write (lost or reordered)", idx)
		}
	}
	t.Logf("verified: %d acknowledged writes over %d blocks, %d unacknowledged; every block holds its last acknowledged version (or a later attempt)", h.writes, len(h.acked), h.failed)
}

func (h *history) counts() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return fmt.Sprintf("%d acked, %d failed", h.writes, h.failed)
}
