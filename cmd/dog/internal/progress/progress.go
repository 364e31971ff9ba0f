// Package progress draws sheepdog-style progress bars on a terminal:
//
//	45.0 % [===============>                  ] 180 MB / 400 MB
//
// A nil *Bar is valid and draws nothing, so callers need not check whether
// output goes to a terminal.
package progress

import (
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/gosheep/gosheep/units"
)

// Bar is a progress bar; its methods are safe for concurrent use.
type Bar struct {
	w     io.Writer
	width int
	count bool // units are objects, not bytes
	now   func() time.Time
	every time.Duration

	mu       sync.Mutex
	done     uint64
	total    uint64
	drawn    time.Time
	finished bool
}

// New returns a bar of the given screen width writing to w, which should be
// a terminal. Redraws are limited to ten a second.
func New(w io.Writer, width int, total uint64) *Bar {
	if width <= 0 {
		width = 80
	}
	return &Bar{w: w, width: width, total: total, now: time.Now, every: 100 * time.Millisecond}
}

// NewCount is New for a bar counting objects rather than bytes.
func NewCount(w io.Writer, width int, total uint64) *Bar {
	b := New(w, width, total)
	b.count = true
	return b
}

// Add records n more units done.
func (b *Bar) Add(n uint64) {
	if b == nil {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.done += n
	b.drawLocked(false)
}

// Set replaces the progress and the total.
func (b *Bar) Set(done, total uint64) {
	if b == nil {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.done, b.total = done, total
	b.drawLocked(false)
}

// Finish draws the final state and ends the line. Later calls do nothing.
func (b *Bar) Finish() {
	if b == nil {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.finished {
		return
	}
	b.drawLocked(true)
	fmt.Fprint(b.w, "\n")
	b.finished = true
}

func (b *Bar) drawLocked(force bool) {
	if b.finished {
		return
	}
	now := b.now()
	if !force && now.Sub(b.drawn) < b.every {
		return
	}
	b.drawn = now
	fmt.Fprint(b.w, "\r"+Line(b.done, b.total, b.width, b.count))
}

// Line renders one bar of exactly width columns (sheepdog's show_progress
// layout: percentage, a bar of width-30 cells, done / total as sizes, or
// as plain numbers when count).
func Line(done, total uint64, width int, count bool) string {
	if done > total {
		total = done
	}
	pct := 100.0
	if total > 0 {
		pct = float64(done) / float64(total) * 100
	}
	cells := max(width-30, 1)
	var bar strings.Builder
	for i := 0; i < cells; i++ {
		lo := float64(total) * float64(i) / float64(cells)
		hi := float64(total) * float64(i+1) / float64(cells)
		switch {
		case hi <= float64(done):
			bar.WriteByte('=')
		case lo <= float64(done) && float64(done) < hi:
			bar.WriteByte('>')
		default:
			bar.WriteByte(' ')
		}
	}
	s := fmt.Sprintf("%5.1f %% [%s] %s / %s", pct, bar.String(), units.Format(done, count), units.Format(total, count))
	if len(s) < width {
		s += strings.Repeat(" ", width-len(s))
	}
	if len(s) > width {
		s = s[:width]
	}
	return s
}
