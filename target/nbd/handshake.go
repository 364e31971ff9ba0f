package nbd

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"runtime/debug"
	"slices"
	"time"

	"github.com/gosheep/gosheep/volume"
)

// Handshake outcomes that end a connection without an error worth logging
// loudly.
var (
	errAbort    = errors.New("nbd: client aborted negotiation")
	errProtocol = errors.New("nbd: protocol violation")
)

// conn is one client connection.
type conn struct {
	s      *Server
	nc     net.Conn
	br     *bufio.Reader
	bw     *bufio.Writer
	ctx    context.Context
	cancel context.CancelFunc
	log    *slog.Logger

	export string // guarded by s.mu; set once in transmission, for Drop

	// Negotiated state.
	noZeroes   bool
	structured bool
	meta       bool   // base:allocation selected ...
	metaExport string // ... for this (canonical) export name
}

// abort hard-disconnects c and cancels its requests. Safe to call more than once.
func (c *conn) abort() {
	c.cancel()
	c.nc.Close()
}

func (s *Server) serveConn(ctx context.Context, nc net.Conn) {
	ctx, cancel := context.WithCancel(ctx)
	c := &conn{
		s:      s,
		nc:     nc,
		br:     bufio.NewReaderSize(nc, 64<<10),
		bw:     bufio.NewWriterSize(nc, 64<<10),
		ctx:    ctx,
		cancel: cancel,
		log:    s.log.With("remote", nc.RemoteAddr().String()),
	}
	if !s.track(c) {
		cancel()
		nc.Close()
		return
	}
	defer s.untrack(c)
	stop := context.AfterFunc(ctx, func() { nc.Close() })
	defer stop()
	defer c.abort()
	s.rec.Sessions("nbd", 1)
	defer s.rec.Sessions("nbd", -1)
	defer c.recoverPanic()

	dev, info, err := c.handshake()
	if err != nil {
		c.log.Debug("nbd: negotiation ended", "err", err)
		return
	}
	defer dev.Close()
	c.log.Debug("nbd: transmission", "export", info.Name)
	c.transmit(dev, info)
}

// recoverPanic is the last line of defence: a bug must cost one
// connection, not the daemon.
func (c *conn) recoverPanic() {
	if p := recover(); p != nil {
		c.s.panics.Add(1)
		c.log.Error("nbd: panic in connection", "panic", p, "stack", string(debug.Stack()))
		c.abort()
	}
}

// handshake runs fixed-newstyle negotiation and returns the device chosen
// by NBD_OPT_GO or NBD_OPT_EXPORT_NAME.
func (c *conn) handshake() (volume.Device, ExportInfo, error) {
	c.deadline()
	var b []byte
	b = binary.BigEndian.AppendUint64(b, magicNBD)
	b = binary.BigEndian.AppendUint64(b, magicIHaveOpt)
	b = binary.BigEndian.AppendUint16(b, flagFixedNewstyle|flagNoZeroes)
	if _, err := c.nc.Write(b); err != nil {
		return nil, ExportInfo{}, err
	}
	var cf [4]byte
	if _, err := io.ReadFull(c.br, cf[:]); err != nil {
		return nil, ExportInfo{}, err
	}
	flags := binary.BigEndian.Uint32(cf[:])
	if flags&^(cflagFixedNewstyle|cflagNoZeroes) != 0 {
		return nil, ExportInfo{}, fmt.Errorf("%w: unknown client flags %#x", errProtocol, flags)
	}
	if flags&cflagFixedNewstyle == 0 {
		return nil, ExportInfo{}, fmt.Errorf("%w: client does not speak fixed newstyle", errProtocol)
	}
	c.noZeroes = flags&cflagNoZeroes != 0

	var hdr [optHeaderSize]byte
	for {
		c.deadline()
		if _, err := io.ReadFull(c.br, hdr[:]); err != nil {
			return nil, ExportInfo{}, err
		}
		if m := binary.BigEndian.Uint64(hdr[:8]); m != magicIHaveOpt {
			return nil, ExportInfo{}, fmt.Errorf("%w: bad option magic %#x", errProtocol, m)
		}
		opt := binary.BigEndian.Uint32(hdr[8:12])
		n := binary.BigEndian.Uint32(hdr[12:16])
		if n > maxOptionLen {
			// Never buffer it. Skip a moderately large one so the client
			// can carry on; hang up on anything bigger.
			if opt == optExportName || n > maxOptionSkip {
				return nil, ExportInfo{}, fmt.Errorf("%w: option %d of %d bytes", errProtocol, opt, n)
			}
			if _, err := io.CopyN(io.Discard, c.br, int64(n)); err != nil {
				return nil, ExportInfo{}, err
			}
			if err := c.optError(opt, repErrTooBig, "option data too large"); err != nil {
				return nil, ExportInfo{}, err
			}
			continue
		}
		data, err := readGrow(c.br, int(n))
		if err != nil {
			return nil, ExportInfo{}, err
		}
		dev, info, done, err := c.option(opt, data)
		if err != nil || done {
			return dev, info, err
		}
	}
}

// readGrow reads n bytes, growing the buffer as they arrive, so a length
// the peer merely claims costs no memory until the bytes are sent.
func readGrow(r io.Reader, n int) ([]byte, error) {
	b := make([]byte, 0, min(n, 4096))
	for len(b) < n {
		if len(b) == cap(b) {
			b = slices.Grow(b, min(cap(b), n-len(b)))
		}
		k, err := r.Read(b[len(b):min(cap(b), n)])
		b = b[:len(b)+k]
		if err != nil && len(b) < n {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return nil, err
		}
	}
	return b, nil
}

// deadline bounds the wait for the client's next negotiation message.
func (c *conn) deadline() {
	c.nc.SetDeadline(time.Now().Add(c.s.cfg.HandshakeTimeout))
}

// option handles one option. done reports that transmission starts with dev.
func (c *conn) option(opt uint32, data []byte) (dev volume.Device, info ExportInfo, done bool, err error) {
	switch opt {
	case optExportName:
		return c.optExportName(data)
	case optAbort:
		// Data is to be ignored, says the protocol. The client may already
		// have gone, so a failed ACK is not an error.
		c.optReply(opt, repAck, nil)
		c.bw.Flush()
		return nil, ExportInfo{}, true, errAbort
	case optList:
		err = c.optList(data)
	case optStartTLS:
		if len(data) != 0 {
			err = c.optError(opt, repErrInvalid, "STARTTLS takes no data")
		} else {
			err = c.optError(opt, repErrPolicy, "TLS is not supported by this server")
		}
	case optInfo, optGo:
		return c.optInfoGo(opt, data)
	case optStructuredReply:
		if len(data) != 0 {
			err = c.optError(opt, repErrInvalid, "STRUCTURED_REPLY takes no data")
			break
		}
		c.structured = true
		err = c.optDone(opt, repAck, nil)
	case optListMetaContext, optSetMetaContext:
		err = c.optMetaContext(opt, data)
	default:
		err = c.optError(opt, repErrUnsup, fmt.Sprintf("option %d is not supported", opt))
	}
	return nil, ExportInfo{}, false, err
}

// optReply buffers one option reply; optDone also flushes it.
func (c *conn) optReply(opt, typ uint32, data []byte) error {
	var h [20]byte
	c.bw.Write(putOptReply(h[:0], opt, typ, len(data)))
	_, err := c.bw.Write(data)
	return err
}

func (c *conn) optDone(opt, typ uint32, data []byte) error {
	if err := c.optReply(opt, typ, data); err != nil {
		return err
	}
	return c.bw.Flush()
}

func (c *conn) optError(opt, typ uint32, msg string) error {
	if len(msg) > maxStringLen {
		msg = msg[:maxStringLen]
	}
	return c.optDone(opt, typ, []byte(msg))
}

// openErr answers an option whose export could not be opened.
func (c *conn) openErr(opt uint32, name string, err error) error {
	switch {
	case c.ctx.Err() != nil:
		return c.optError(opt, repErrShutdown, "server is shutting down")
	case errors.Is(err, volume.ErrNoVolume):
		return c.optError(opt, repErrUnknown, fmt.Sprintf("no export named %q", name))
	}
	c.log.Warn("nbd: open export", "export", name, "err", err)
	return c.optError(opt, repErrUnknown, fmt.Sprintf("export %q is not available: %v", name, err))
}

func (c *conn) optExportName(data []byte) (volume.Device, ExportInfo, bool, error) {
	if len(data) > maxStringLen {
		return nil, ExportInfo{}, true, fmt.Errorf("%w: export name too long", errProtocol)
	}
	dev, info, err := c.openExport(string(data), true)
	if err != nil {
		// NBD_OPT_EXPORT_NAME cannot fail politely: hang up.
		return nil, ExportInfo{}, true, err
	}
	c.dropMetaUnless(string(data), info)
	var b []byte
	b = binary.BigEndian.AppendUint64(b, dev.Size())
	b = binary.BigEndian.AppendUint16(b, c.transmissionFlags(info))
	if !c.noZeroes {
		b = append(b, make([]byte, 124)...)
	}
	c.bw.Write(b)
	if err := c.bw.Flush(); err != nil {
		dev.Close()
		return nil, ExportInfo{}, true, err
	}
	return dev, info, true, nil
}

func (c *conn) optList(data []byte) error {
	if len(data) != 0 {
		return c.optError(optList, repErrInvalid, "LIST takes no data")
	}
	exps, err := c.s.cfg.Exports.List(c.ctx)
	if err != nil {
		if c.ctx.Err() != nil {
			return c.optError(optList, repErrShutdown, "server is shutting down")
		}
		c.log.Warn("nbd: list exports", "err", err)
		return c.optError(optList, repErrUnknown, "cannot list exports: "+err.Error())
	}
	for _, e := range exps {
		if len(e.Name) > maxStringLen {
			continue // unreachable through the protocol anyway
		}
		desc := e.Description
		if len(desc) > maxStringLen {
			desc = desc[:maxStringLen]
		}
		b := binary.BigEndian.AppendUint32(nil, uint32(len(e.Name)))
		b = append(b, e.Name...)
		b = append(b, desc...)
		if err := c.optReply(optList, repServer, b); err != nil {
			return err
		}
	}
	return c.optDone(optList, repAck, nil)
}

func (c *conn) optInfoGo(opt uint32, data []byte) (volume.Device, ExportInfo, bool, error) {
	fail := func(typ uint32, msg string) (volume.Device, ExportInfo, bool, error) {
		return nil, ExportInfo{}, false, c.optError(opt, typ, msg)
	}
	if len(data) < 6 {
		return fail(repErrInvalid, "option data too short")
	}
	nl := binary.BigEndian.Uint32(data)
	if uint64(nl) > uint64(len(data)-6) {
		return fail(repErrInvalid, "export name length exceeds option")
	}
	if nl > maxStringLen {
		return fail(repErrInvalid, "export name too long")
	}
	name := string(data[4 : 4+nl])
	rest := data[4+nl:]
	nr := int(binary.BigEndian.Uint16(rest))
	if len(rest) != 2+2*nr {
		return fail(repErrInvalid, "information request count does not match option length")
	}
	var want [4]bool
	for i := range nr {
		if t := binary.BigEndian.Uint16(rest[2+2*i:]); int(t) < len(want) {
			want[t] = true
		}
	}

	dev, info, err := c.openExport(name, opt == optGo)
	if err != nil {
		return nil, ExportInfo{}, false, c.openErr(opt, name, err)
	}
	tflags := c.transmissionFlags(info)
	b := binary.BigEndian.AppendUint16(nil, infoExport)
	b = binary.BigEndian.AppendUint64(b, dev.Size())
	b = binary.BigEndian.AppendUint16(b, tflags)
	c.optReply(opt, repInfo, b)
	if want[infoName] || name != info.Name {
		c.optReply(opt, repInfo, append(binary.BigEndian.AppendUint16(nil, infoName), info.Name...))
	}
	if want[infoDescription] && info.Description != "" {
		d := info.Description
		if len(d) > maxStringLen {
			d = d[:maxStringLen]
		}
		c.optReply(opt, repInfo, append(binary.BigEndian.AppendUint16(nil, infoDescription), d...))
	}
	// Always sent: clients that did not ask ignore it, and it tells those
	// that did about our payload limit.
	b = binary.BigEndian.AppendUint16(nil, infoBlockSize)
	b = binary.BigEndian.AppendUint32(b, 1)
	b = binary.BigEndian.AppendUint32(b, 4096)
	b = binary.BigEndian.AppendUint32(b, c.s.cfg.MaxPayload)
	c.optReply(opt, repInfo, b)
	if err := c.optDone(opt, repAck, nil); err != nil {
		dev.Close()
		return nil, ExportInfo{}, true, err
	}
	if opt == optInfo {
		dev.Close()
		return nil, ExportInfo{}, false, nil
	}
	c.dropMetaUnless(name, info)
	return dev, info, true, nil
}

// dropMetaUnless forgets metadata contexts that were selected for another
// export than the one transmission uses (name as the client gave it).
func (c *conn) dropMetaUnless(name string, info ExportInfo) {
	if name == "" {
		name = info.Name
	}
	if c.metaExport != name {
		c.meta = false
	}
}

// optMetaContext handles NBD_OPT_LIST_META_CONTEXT and
// NBD_OPT_SET_META_CONTEXT. The only context is base:allocation; queries
// for anything else are ignored, as the protocol requires.
func (c *conn) optMetaContext(opt uint32, data []byte) error {
	if opt == optSetMetaContext {
		c.meta = false // replaced even when the option fails
	}
	if !c.structured {
		return c.optError(opt, repErrInvalid, "structured replies must be negotiated first")
	}
	bad := func(msg string) error { return c.optError(opt, repErrInvalid, msg) }
	if len(data) < 8 {
		return bad("option data too short")
	}
	nl := binary.BigEndian.Uint32(data)
	if uint64(nl) > uint64(len(data)-8) {
		return bad("export name length exceeds option")
	}
	if nl > maxStringLen {
		return bad("export name too long")
	}
	name := string(data[4 : 4+nl])
	p := 4 + int(nl)
	nq := binary.BigEndian.Uint32(data[p:])
	p += 4
	matched := false
	// Every query takes at least 4 bytes, so this loop ends after at
	// most len(data)/4 rounds whatever nq says.
	for range nq {
		if len(data)-p < 4 {
			return bad("query count exceeds option")
		}
		ql := binary.BigEndian.Uint32(data[p:])
		p += 4
		if uint64(ql) > uint64(len(data)-p) {
			return bad("query length exceeds option")
		}
		q := string(data[p : p+int(ql)])
		p += int(ql)
		if q == contextAllocName || (opt == optListMetaContext && q == "base:") {
			matched = true
		}
	}
	if p != len(data) {
		return bad("trailing bytes after queries")
	}
	if opt == optListMetaContext {
		if nq == 0 || matched {
			// The context ID of a list reply is reserved: zero.
			c.optReply(opt, repMetaContext, append(binary.BigEndian.AppendUint32(nil, 0), contextAllocName...))
		}
		return c.optDone(opt, repAck, nil)
	}
	if matched {
		c.optReply(opt, repMetaContext, append(binary.BigEndian.AppendUint32(nil, contextAllocID), contextAllocName...))
		c.meta = true
		c.metaExport = c.canonicalName(name)
	}
	return c.optDone(opt, repAck, nil)
}

// canonicalName resolves the default export "" to the only export, if
// there is exactly one.
func (c *conn) canonicalName(name string) string {
	if name != "" {
		return name
	}
	exps, err := c.s.cfg.Exports.List(c.ctx)
	if err == nil && len(exps) == 1 {
		return exps[0].Name
	}
	return ""
}

// openExport opens name (or the default export). With register, the
// connection is recorded as using the export so Drop finds it; an open
// that races with Drop is retried, so it fails once the export is gone.
func (c *conn) openExport(name string, register bool) (volume.Device, ExportInfo, error) {
	if name == "" {
		if name = c.canonicalName(""); name == "" {
			return nil, ExportInfo{}, fmt.Errorf("%w: no default export (there is not exactly one export)", volume.ErrNoVolume)
		}
	}
	s := c.s
	for range 3 {
		s.mu.Lock()
		seq := s.dropSeq
		s.mu.Unlock()
		dev, info, err := s.cfg.Exports.Open(c.ctx, name)
		if err != nil {
			return nil, ExportInfo{}, err
		}
		if dev == nil {
			return nil, ExportInfo{}, fmt.Errorf("nbd: catalog returned no device for %q", name)
		}
		if info.Name == "" {
			info.Name = name
		}
		if !register {
			return dev, info, nil
		}
		s.mu.Lock()
		if s.dropSeq == seq {
			c.export = info.Name
			s.mu.Unlock()
			return dev, info, nil
		}
		s.mu.Unlock()
		dev.Close()
	}
	return nil, ExportInfo{}, fmt.Errorf("nbd: export %q kept being dropped while opening", name)
}

func (c *conn) transmissionFlags(info ExportInfo) uint16 {
	f := uint16(tflagHasFlags | tflagSendFlush | tflagCanMultiConn | tflagSendCache)
	if c.structured {
		f |= tflagSendDF
	}
	if info.ReadOnly {
		f |= tflagReadOnly
	} else {
		f |= tflagSendFUA | tflagSendTrim | tflagSendWriteZeroes | tflagSendFastZero
	}
	return f
}
