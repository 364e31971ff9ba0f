package nbd

import (
	"context"
	"encoding/binary"
	"errors"

	"github.com/gosheep/gosheep/proto"
)

// Wire constants, named after the NBD protocol document (doc/proto.md in
// github.com/NetworkBlockDevice/nbd). All integers are big-endian.
const (
	magicNBD       = 0x4e42444d41474943 // "NBDMAGIC"
	magicIHaveOpt  = 0x49484156454F5054 // "IHAVEOPT"
	magicOptReply  = 0x0003e889045565a9
	magicRequest   = 0x25609513
	magicSimple    = 0x67446698
	magicStructred = 0x668e33ef

	// Handshake flags (server) and client flags.
	flagFixedNewstyle  = 1 << 0
	flagNoZeroes       = 1 << 1
	cflagFixedNewstyle = 1 << 0
	cflagNoZeroes      = 1 << 1

	// Transmission flags.
	tflagHasFlags        = 1 << 0
	tflagReadOnly        = 1 << 1
	tflagSendFlush       = 1 << 2
	tflagSendFUA         = 1 << 3
	tflagSendTrim        = 1 << 5
	tflagSendWriteZeroes = 1 << 6
	tflagSendDF          = 1 << 7
	tflagCanMultiConn    = 1 << 8
	tflagSendCache       = 1 << 10
	tflagSendFastZero    = 1 << 11

	// Options.
	optExportName      = 1
	optAbort           = 2
	optList            = 3
	optStartTLS        = 5
	optInfo            = 6
	optGo              = 7
	optStructuredReply = 8
	optListMetaContext = 9
	optSetMetaContext  = 10

	// Option reply types.
	repAck         = 1
	repServer      = 2
	repInfo        = 3
	repMetaContext = 4
	repErrUnsup    = 1<<31 + 1
	repErrPolicy   = 1<<31 + 2
	repErrInvalid  = 1<<31 + 3
	repErrUnknown  = 1<<31 + 6
	repErrShutdown = 1<<31 + 7
	repErrTooBig   = 1<<31 + 9

	// NBD_INFO types.
	infoExport      = 0
	infoName        = 1
	infoDescription = 2
	infoBlockSize   = 3

	// Commands.
	cmdRead        = 0
	cmdWrite       = 1
	cmdDisc        = 2
	cmdFlush       = 3
	cmdTrim        = 4
	cmdCache       = 5
	cmdWriteZeroes = 6
	cmdBlockStatus = 7

	// Command flags.
	cmdFlagFUA      = 1 << 0
	cmdFlagNoHole   = 1 << 1
	cmdFlagDF       = 1 << 2
	cmdFlagReqOne   = 1 << 3
	cmdFlagFastZero = 1 << 4

	// Structured reply chunk flags and types.
	replyFlagDone        = 1 << 0
	replyTypeNone        = 0
	replyTypeOffsetData  = 1
	replyTypeOffsetHole  = 2
	replyTypeBlockStatus = 5
	replyTypeError       = 1<<15 + 1

	// base:allocation state bits.
	stateHole = 1 << 0
	stateZero = 1 << 1

	// NBD error values (not host errnos: the protocol fixes them).
	errPerm     = 1
	errIO       = 5
	errInval    = 22
	errNoSpc    = 28
	errOverflow = 75
	errNotSup   = 95
	errShutdown = 108
)

// Sizes and limits.
const (
	requestSize      = 28
	simpleReplySize  = 16
	chunkHeaderSize  = 20
	optHeaderSize    = 16
	maxStringLen     = 4096     // the protocol's hard limit for names and messages
	maxOptionLen     = 64 << 10 // largest option payload we buffer
	maxOptionSkip    = 1 << 20  // largest oversized option we skip rather than hang up on
	contextAllocName = "base:allocation"
	contextAllocID   = 1
)

// errnoOf maps a device error to the NBD error value a client sees.
func errnoOf(err error) uint32 {
	switch {
	case err == nil:
		return 0
	case errors.Is(err, context.Canceled), errors.Is(err, proto.ResShutdown):
		return errShutdown
	case errors.Is(err, proto.ResNoSpace):
		return errNoSpc
	case errors.Is(err, proto.ResReadonly):
		return errPerm
	case errors.Is(err, proto.ResInvalidParms):
		return errInval
	}
	return errIO
}

func putOptReply(b []byte, opt, typ uint32, n int) []byte {
	b = binary.BigEndian.AppendUint64(b, magicOptReply)
	b = binary.BigEndian.AppendUint32(b, opt)
	b = binary.BigEndian.AppendUint32(b, typ)
	return binary.BigEndian.AppendUint32(b, uint32(n))
}

func appendSimple(b []byte, errno uint32, cookie uint64) []byte {
	b = binary.BigEndian.AppendUint32(b, magicSimple)
	b = binary.BigEndian.AppendUint32(b, errno)
	return binary.BigEndian.AppendUint64(b, cookie)
}

func appendChunk(b []byte, flags, typ uint16, cookie uint64, n int) []byte {
	b = binary.BigEndian.AppendUint32(b, magicStructred)
	b = binary.BigEndian.AppendUint16(b, flags)
	b = binary.BigEndian.AppendUint16(b, typ)
	b = binary.BigEndian.AppendUint64(b, cookie)
	return binary.BigEndian.AppendUint32(b, uint32(n))
}

// appendErrorChunk appends a final NBD_REPLY_TYPE_ERROR chunk.
func appendErrorChunk(b []byte, cookie uint64, errno uint32, msg string) []byte {
	if len(msg) > maxStringLen {
		msg = msg[:maxStringLen]
	}
	b = appendChunk(b, replyFlagDone, replyTypeError, cookie, 6+len(msg))
	b = binary.BigEndian.AppendUint32(b, errno)
	b = binary.BigEndian.AppendUint16(b, uint16(len(msg)))
	return append(b, msg...)
}

func cmdName(t uint16) string {
	switch t {
	case cmdRead:
		return "read"
	case cmdWrite:
		return "write"
	case cmdDisc:
		return "disc"
	case cmdFlush:
		return "flush"
	case cmdTrim:
		return "trim"
	case cmdCache:
		return "cache"
	case cmdWriteZeroes:
		return "write_zeroes"
	case cmdBlockStatus:
		return "block_status"
	}
	return "unknown"
}
