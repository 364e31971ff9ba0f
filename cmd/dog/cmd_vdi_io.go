package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"sync/atomic"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sync/errgroup"

	"github.com/gosheep/gosheep/api"
	"github.com/gosheep/gosheep/client/vdi"
	"github.com/gosheep/gosheep/cmd/dog/internal/parse"
	"github.com/gosheep/gosheep/cmd/dog/internal/progress"
	"github.com/gosheep/gosheep/units"
)

// Transfers move data in pieces of at most maxChunk bytes that never cross
// an object boundary, with ioDepth pieces in flight.
const (
	maxChunk = 4 << 20
	ioDepth  = 4
)

// chunkLen is the length of the piece at pos: up to the object's end, at
// most maxChunk, at most end-pos.
func chunkLen(pos, end uint64, objSize uint32) int {
	os := uint64(objSize)
	return int(min(end-pos, os-pos%os, maxChunk))
}

// span parses the optional OFFSET and LENGTH arguments of read and write.
func span(args []string) (off uint64, length uint64, hasLen bool, err error) {
	if len(args) > 0 {
		if off, err = parse.Size("offset", args[0]); err != nil {
			return
		}
	}
	if len(args) > 1 {
		if length, err = parse.Size("length", args[1]); err != nil {
			return
		}
		hasLen = true
	}
	return
}

// spanOf is a piece of a VDI for readSpans; marker pieces read nothing.
type spanOf struct {
	pos    uint64
	n      int
	idx    uint32
	first  bool // the object's first piece
	marker bool // an object with nothing to read
}

// readSpans reads the pieces next yields, ioDepth at a time, and hands
// them to sink in order (the bytes are valid until sink returns).
func readSpans(ctx context.Context, v *vdi.VDI, next func() (spanOf, bool), bar *progress.Bar, sink func(s spanOf, p []byte) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	type piece struct {
		s    spanOf
		buf  []byte
		done chan error
	}
	free := make(chan []byte, ioDepth+1)
	for range ioDepth + 1 {
		free <- make([]byte, min(uint64(v.ObjectSize()), maxChunk))
	}
	queue := make(chan *piece, ioDepth)
	go func() {
		defer close(queue)
		for {
			s, ok := next()
			if !ok {
				return
			}
			var buf []byte
			select {
			case buf = <-free:
			case <-ctx.Done():
				return
			}
			p := &piece{s: s, buf: buf[:s.n], done: make(chan error, 1)}
			if s.marker {
				p.done <- nil
			} else {
				go func() { p.done <- v.ReadAt(ctx, p.buf, p.s.pos) }()
			}
			select {
			case queue <- p:
			case <-ctx.Done():
				<-p.done
				return
			}
		}
	}()
	var first error
	for p := range queue {
		err := <-p.done
		if first == nil && err != nil {
			first = fmt.Errorf("read at %d: %w", p.s.pos, err)
			cancel()
		}
		if first == nil {
			if err := sink(p.s, p.buf); err != nil {
				first = err
				cancel()
			}
			bar.Add(uint64(len(p.buf)))
		}
		free <- p.buf[:cap(p.buf)]
	}
	if first == nil {
		first = ctx.Err()
	}
	return first
}

// readTo copies [off, off+n) of v to sink in order, reading ioDepth pieces
// at once. sink gets each piece's position and bytes (valid until it returns).
func readTo(ctx context.Context, v *vdi.VDI, off, n uint64, bar *progress.Bar, sink func(pos uint64, p []byte) error) error {
	objSize := v.ObjectSize()
	pos, end := off, off+n
	next := func() (spanOf, bool) {
		if pos >= end {
			return spanOf{}, false
		}
		s := spanOf{pos: pos, n: chunkLen(pos, end, objSize)}
		pos += uint64(s.n)
		return s, true
	}
	return readSpans(ctx, v, next, bar, func(s spanOf, p []byte) error { return sink(s.pos, p) })
}

// writeFrom reads r in pieces from off up to end (or r's end), handing up
// to ioDepth pieces at once to write. It returns the bytes read and whether
// r had more beyond end.
func writeFrom(ctx context.Context, r io.Reader, off, end uint64, objSize uint32, bar *progress.Bar, write func(ctx context.Context, pos uint64, p []byte) error) (uint64, bool, error) {
	g, gctx := errgroup.WithContext(ctx)
	free := make(chan []byte, ioDepth)
	for range ioDepth {
		free <- make([]byte, min(uint64(objSize), maxChunk))
	}
	pos := off
	var rerr error
	eof := false
	for pos < end && !eof {
		var buf []byte
		select {
		case buf = <-free:
		case <-gctx.Done():
		}
		if buf == nil {
			break
		}
		n, err := io.ReadFull(r, buf[:chunkLen(pos, end, objSize)])
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			eof = true
		} else if err != nil {
			rerr = fmt.Errorf("read input: %w", err)
			free <- buf
			break
		}
		if n == 0 {
			free <- buf
			break
		}
		p, at := buf[:n], pos
		g.Go(func() error {
			defer func() { free <- buf }()
			if err := write(gctx, at, p); err != nil {
				return fmt.Errorf("write at %d: %w", at, err)
			}
			bar.Add(uint64(len(p)))
			return nil
		})
		pos += uint64(n)
	}
	werr := g.Wait()
	if werr == nil {
		werr = rerr
	}
	if werr == nil {
		werr = ctx.Err()
	}
	more := false
	if werr == nil && !eof {
		var b [1]byte
		n, _ := io.ReadFull(r, b[:])
		more = n > 0
	}
	return pos - off, more, werr
}

// openVDI opens a VDI (a snapshot with tag/id) for I/O.
func (a *app) openVDI(ctx context.Context, name, tag string, id uint32) (*vdi.VDI, error) {
	vc, err := a.vconn(ctx)
	if err != nil {
		return nil, err
	}
	v, err := vdi.Open(ctx, vc, name, tag, id)
	if err != nil {
		return nil, failf(err, "Failed to open VDI %s", vdiDesc(name, tag, id))
	}
	return v, nil
}

func (a *app) vdiReadCmd() *cobra.Command {
	var snap string
	cmd := &cobra.Command{
		Use:   "read VDI [OFFSET [LENGTH]]",
		Short: "copy a VDI's data to stdout",
		Long: `read writes LENGTH bytes of the VDI (or snapshot -s) from OFFSET (default:
all of it) to stdout. OFFSET and LENGTH take K, M, G suffixes.`,
		Example: "  dog vdi read vol0 > vol0.img\n  dog vdi read -s 2 vol0 1M 4k | hexdump -C",
		Args:    args(1, 3, "VDI"),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			name := args[0]
			off, length, hasLen, err := span(args[1:])
			if err != nil {
				return err
			}
			tag, id, err := parse.Snapshot(snap)
			if err != nil {
				return err
			}
			v, err := a.openVDI(ctx, name, tag, id)
			if err != nil {
				return err
			}
			size := v.Size()
			if off > size {
				return fmt.Errorf("Read offset is beyond the end of the VDI (%s is %d bytes)", name, size)
			}
			n := size - off
			if hasLen {
				n = min(n, length)
			}
			bar := a.bar(n, false)
			defer bar.Finish()
			err = readTo(ctx, v, off, n, bar, func(_ uint64, p []byte) error {
				if _, err := a.stdout.Write(p); err != nil {
					return failf(err, "Failed to write to stdout")
				}
				return nil
			})
			return failf(err, "Failed to read VDI %s", name)
		},
	}
	snapFlag(cmd, &snap, "read this snapshot (id or tag)")
	return cmd
}

func (a *app) vdiWriteCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "write VDI [OFFSET [LENGTH]]",
		Short: "copy stdin into a VDI",
		Long: `write stores stdin in the VDI from OFFSET (default 0), at most LENGTH bytes
(default: up to the VDI's end; more input than fits is an error). OFFSET and
LENGTH take K, M, G suffixes.`,
		Example: "  dog vdi write vol0 < vol0.img\n  echo hello | dog vdi write vol0 1M",
		Args:    args(1, 3, "VDI"),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			name := args[0]
			off, length, hasLen, err := span(args[1:])
			if err != nil {
				return err
			}
			v, err := a.openVDI(ctx, name, "", 0)
			if err != nil {
				return err
			}
			size := v.Size()
			if off > size {
				return fmt.Errorf("Write offset is beyond the end of the VDI (%s is %d bytes)", name, size)
			}
			end := size
			if hasLen {
				end = off + min(length, size-off)
			}
			bar := a.bar(end-off, false)
			defer bar.Finish()
			n, more, err := writeFrom(ctx, a.stdin, off, end, v.ObjectSize(), bar, func(ctx context.Context, pos uint64, p []byte) error {
				return v.WriteAt(ctx, p, pos)
			})
			if err != nil {
				return failf(err, "Failed to write VDI %s", name)
			}
			if more && !hasLen {
				return fmt.Errorf("the input is larger than VDI %s: wrote %d bytes, up to its end (%s); grow it with 'dog vdi resize'", name, n, units.FormatSize(size))
			}
			if a.json() {
				return a.emit(map[string]any{"vdi": name, "offset": off, "written": n}, nil)
			}
			return nil
		},
	}
	return cmd
}

func isZero(p []byte) bool {
	for len(p) >= 8 {
		if p[0]|p[1]|p[2]|p[3]|p[4]|p[5]|p[6]|p[7] != 0 {
			return false
		}
		p = p[8:]
	}
	for _, b := range p {
		if b != 0 {
			return false
		}
	}
	return true
}

func (a *app) vdiExportCmd() *cobra.Command {
	var snap string
	cmd := &cobra.Command{
		Use:   "export VDI FILE|-",
		Short: "save a VDI as a raw image file (sparse), or to stdout with -",
		Long: `export writes the whole VDI (or snapshot -s) as a raw disk image. A regular
FILE is written sparse: unallocated and all-zero regions are left as holes.
A block device gets every byte.`,
		Example: "  dog vdi export vol0 vol0.img\n  dog vdi export -s nightly vol0 - | gzip > vol0.img.gz",
		Args:    args(2, 2, "VDI", "FILE"),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			name, path := args[0], args[1]
			tag, id, err := parse.Snapshot(snap)
			if err != nil {
				return err
			}
			v, err := a.openVDI(ctx, name, tag, id)
			if err != nil {
				return err
			}
			size := v.Size()
			bar := a.bar(size, false)
			defer bar.Finish()
			if path == "-" {
				err := readTo(ctx, v, 0, size, bar, func(_ uint64, p []byte) error {
					_, err := a.stdout.Write(p)
					return err
				})
				return failf(err, "Failed to export %s", name)
			}
			f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE, 0o644)
			if err != nil {
				return failf(err, "Failed to export %s", name)
			}
			// A regular file is written sparse; a device gets every byte,
			// zeros included, as it holds other data.
			fi, err := f.Stat()
			sparse := err == nil && fi.Mode().IsRegular()
			if sparse {
				err = f.Truncate(0)
			}
			var written uint64
			if err == nil {
				err = readTo(ctx, v, 0, size, bar, func(pos uint64, p []byte) error {
					if sparse && isZero(p) {
						return nil
					}
					written += uint64(len(p))
					_, err := f.WriteAt(p, int64(pos))
					return err
				})
			}
			if err == nil && sparse {
				err = f.Truncate(int64(size))
			}
			if err == nil {
				err = f.Sync()
			}
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return failf(err, "Failed to export %s to %s", name, path)
			}
			if a.json() {
				return a.emit(map[string]any{"vdi": name, "file": path, "size": size, "data": written}, nil)
			}
			return nil
		},
	}
	snapFlag(cmd, &snap, "export this snapshot (id or tag)")
	return cmd
}

func (a *app) vdiImportCmd() *cobra.Command {
	var copies, bss, sizeArg string
	cmd := &cobra.Command{
		Use:   "import VDI FILE|-",
		Short: "load a raw image file (or stdin with -) into a VDI",
		Long: `import copies a raw disk image into the VDI, creating the VDI with the
image's size if it does not exist (from stdin, give --size). All-zero
regions are not written, so the VDI stays thin; where the VDI had data they
are cleared. An image larger than the VDI is refused; a smaller one leaves
the rest of the VDI as it was.`,
		Example: "  dog vdi import vol0 vol0.img\n  zcat vol0.img.gz | dog vdi import --size 10G vol0 -",
		Args:    args(2, 2, "VDI", "FILE"),
		RunE: func(cmd *cobra.Command, args []string) (err error) {
			ctx := cmd.Context()
			name, path := args[0], args[1]
			if err := vdiArg(name); err != nil {
				return err
			}
			op := api.VolumeOp{Op: api.VolCreate, Name: name}
			if copies != "" {
				r, err := parse.Redundancy(copies)
				if err != nil {
					return err
				}
				op.Redundancy = r.String()
			}
			if bss != "" {
				if op.BSS, err = parse.BlockSizeShift(bss); err != nil {
					return err
				}
			}
			var want uint64 // size of the image, when known
			if sizeArg != "" {
				if want, err = parse.PositiveSize("--size", sizeArg); err != nil {
					return err
				}
			}
			in := a.stdin
			if path != "-" {
				f, err := os.Open(path)
				if err != nil {
					return failf(err, "Failed to import %s", path)
				}
				defer f.Close()
				end, err := f.Seek(0, io.SeekEnd)
				if err == nil {
					_, err = f.Seek(0, io.SeekStart)
				}
				if err != nil {
					return failf(err, "Failed to import %s", path)
				}
				if sizeArg == "" {
					want = uint64(end)
				}
				in = f
			}
			st, err := a.formatted(ctx)
			if err != nil {
				return err
			}
			_, lerr := lookup(st, name, "", 0)
			created := false
			switch {
			case lerr == nil:
			case want == 0:
				return usageErrorf("VDI %s does not exist: give --size to create it (the size of stdin is unknown)", name)
			default:
				op.Size = want
				if _, err := a.volume(ctx, op); err != nil {
					return failf(err, "Failed to create VDI %s", name)
				}
				created = true
				defer func() {
					if err != nil {
						a.cleanup(name)
					}
				}()
			}
			v, err := a.openVDI(ctx, name, "", 0)
			if err != nil {
				return err
			}
			size := v.Size()
			if want > size {
				return fmt.Errorf("the image (%s) is larger than VDI %s (%s): grow the VDI first with 'dog vdi resize'", units.FormatSize(want), name, units.FormatSize(size))
			}
			objSize := uint64(v.ObjectSize())
			var bar *progress.Bar
			if want > 0 {
				bar = a.bar(want, false)
			}
			defer bar.Finish()
			// Which objects held data before: zeros need clearing only there.
			owners := slices.Clone(v.Inode().DataVDIID)
			var skipped atomic.Uint64
			n, more, err := writeFrom(ctx, in, 0, size, v.ObjectSize(), bar, func(ctx context.Context, pos uint64, p []byte) error {
				if !isZero(p) {
					return v.WriteAt(ctx, p, pos)
				}
				skipped.Add(uint64(len(p)))
				if idx := pos / objSize; created || idx >= uint64(len(owners)) || owners[idx] == 0 {
					return nil // reads zeros already
				}
				if pos%objSize == 0 && (uint64(len(p)) == objSize || pos+uint64(len(p)) == size) {
					if err := v.Discard(ctx, pos, uint64(len(p))); err != nil {
						return err
					}
					if uint64(len(p)) == objSize {
						return nil
					}
				}
				return v.WriteAt(ctx, p, pos)
			})
			if err != nil {
				return failf(err, "Failed to import into %s", name)
			}
			if more {
				return fmt.Errorf("the image is larger than VDI %s (%s): grow the VDI first with 'dog vdi resize'", name, units.FormatSize(size))
			}
			if a.json() {
				return a.emit(map[string]any{"vdi": name, "created": created, "size": size, "imported": n}, nil)
			}
			if a.verbose {
				fmt.Fprintf(a.stdout, "imported %d bytes into %s (%d bytes of zeros left thin)\n", n, name, skipped.Load())
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVarP(&copies, "copies", "c", "", "redundancy of a VDI import creates (default: the cluster's)")
	f.StringVarP(&bss, "block_size_shift", "z", "", "object size shift of a VDI import creates (default: the cluster's)")
	f.StringVar(&sizeArg, "size", "", "size of the VDI to create when importing from stdin")
	return cmd
}

// cleanup deletes a VDI dog created for a command that then failed.
func (a *app) cleanup(name string) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := a.volume(ctx, api.VolumeOp{Op: api.VolDelete, Name: name}); err != nil && !errors.Is(err, context.Canceled) {
		a.warnf("could not delete the partly written VDI %s: %s", name, firstMsg(a, err))
	}
}
