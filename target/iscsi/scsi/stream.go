package scsi

import (
	"context"

	"github.com/gosheep/gosheep/volume"
)

// WriteStream writes a plain WRITE's data in order while the rest of it
// is still arriving, so that the transport overlaps the medium's work
// with its round trips for more data (R2T). The blocks' range is locked
// from Stream to Close, as a whole write locks it. SAM leaves the medium
// undefined for a command that is aborted, so parts written before an
// abort may stay.
type WriteStream struct {
	c      *Cmd
	off    uint64 // byte offset of the write on the medium
	done   uint32 // bytes written
	err    error  // the first failed part: the rest is not written
	unlock func()
}

// Stream starts streaming c's data. It reports false (and the caller
// runs Execute) when c is not a plain WRITE without FUA (FUA asks every
// byte durable before GOOD, which one whole write does best; other
// commands need all their data first), or when the device does not want
// its writes in parts (volume.PartWriter).
func (c *Cmd) Stream(ctx context.Context) (*WriteStream, bool) {
	if pw, ok := c.lu.dev.(volume.PartWriter); !ok || !pw.WritesInParts() {
		return nil, false
	}
	switch c.CDB[0] {
	case opWrite6, opWrite10, opWrite12, opWrite16:
	default:
		return nil, false
	}
	if c.n == 0 || fuaBit(c.CDB) {
		return nil, false
	}
	off := c.lba * c.lu.bs
	unlock, err := c.lu.locks.lock(ctx, off, uint64(c.OutLen))
	if err != nil {
		return nil, false
	}
	return &WriteStream{c: c, off: off, unlock: unlock}, true
}

// Written is how many bytes of the data have been handed to the device.
func (s *WriteStream) Written() uint32 { return s.done }

// Write writes p, the data's next bytes. After a failure it only counts
// them: Finish reports the error.
func (s *WriteStream) Write(ctx context.Context, p []byte) {
	if s.err == nil {
		s.err = s.c.lu.dev.WriteAt(ctx, p, s.off+uint64(s.done), false)
	}
	s.done += uint32(len(p))
}

// Finish writes what is left of out, the whole data, and returns the
// command's result. It closes the stream.
func (s *WriteStream) Finish(ctx context.Context, out []byte) Result {
	defer s.Close()
	if uint32(len(out)) > s.c.OutLen {
		out = out[:s.c.OutLen]
	}
	if s.done < uint32(len(out)) {
		s.Write(ctx, out[s.done:])
	}
	if s.err != nil {
		return deviceError(s.err, true)
	}
	return good(nil)
}

// Close releases the range; idempotent.
func (s *WriteStream) Close() {
	if s.unlock != nil {
		s.unlock()
		s.unlock = nil
	}
}
