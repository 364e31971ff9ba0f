package voltest

import (
	"context"
	"sync"

	"github.com/gosheep/gosheep/volume"
)

// Write is one WriteAt a PartsDevice saw.
type Write struct{ Off, Len uint64 }

// PartsDevice wraps a Device, says whether it takes writes in parts
// (volume.PartWriter) and records every WriteAt, for tests of streamed
// writes.
type PartsDevice struct {
	volume.Device
	Parts bool

	mu     sync.Mutex
	writes []Write
}

// WritesInParts implements volume.PartWriter.
func (d *PartsDevice) WritesInParts() bool { return d.Parts }

// WriteAt records the write, then passes it on.
func (d *PartsDevice) WriteAt(ctx context.Context, p []byte, off uint64, fua bool) error {
	d.mu.Lock()
	d.writes = append(d.writes, Write{off, uint64(len(p))})
	d.mu.Unlock()
	return d.Device.WriteAt(ctx, p, off, fua)
}

// Writes returns the writes seen so far, in order.
func (d *PartsDevice) Writes() []Write {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]Write(nil), d.writes...)
}

// Written is the total length of the writes seen so far.
func (d *PartsDevice) Written() uint64 {
	var n uint64
	for _, w := range d.Writes() {
		n += w.Len
	}
	return n
}
