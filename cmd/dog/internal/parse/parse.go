// Package parse turns dog's free-form arguments (sizes, redundancy, snapshot
// selectors, node ids) into values, with error messages that say what was
// expected. Every function is total: any input yields a value or an error.
package parse

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/gosheep/gosheep/proto"
	"github.com/gosheep/gosheep/units"
)

// ErrInvalid is the sentinel every parse error matches (errors.Is).
var ErrInvalid = errors.New("invalid argument")

// Error is a parse error: its message says what was wrong and what was
// expected.
type Error struct{ msg string }

func (e *Error) Error() string { return e.msg }

// Is makes every Error match ErrInvalid.
func (e *Error) Is(target error) bool { return target == ErrInvalid }

func invalid(format string, a ...any) error { return &Error{msg: fmt.Sprintf(format, a...)} }

// Size parses a byte count with an optional binary suffix: "4096", "4k",
// "512M", "10G", "1.5T".
func Size(what, s string) (uint64, error) {
	n, err := units.ParseSize(s)
	if err != nil {
		return 0, invalid("%s %q: want a number of bytes with an optional K, M, G, T or P suffix (e.g. 10G)", what, s)
	}
	return n, nil
}

// PositiveSize is Size that also refuses zero.
func PositiveSize(what, s string) (uint64, error) {
	n, err := Size(what, s)
	if err == nil && n == 0 {
		return 0, invalid("%s must be greater than zero", what)
	}
	return n, err
}

// Redundancy parses -c: "3" replicas or "4:2" erasure coding (data:parity).
func Redundancy(s string) (proto.Redundancy, error) {
	r, err := proto.ParseRedundancy(s)
	if err != nil {
		return proto.Redundancy{}, invalid("copies %q: want 1..%d replicas (e.g. 3), or DATA:PARITY erasure coding with DATA 2, 4, 8 or 16 and PARITY 1..%d (e.g. 4:2)",
			s, proto.MaxCopies, proto.MaxParity)
	}
	return r, nil
}

// BlockSizeShift parses -z: the object size as a power of two (20..31).
func BlockSizeShift(s string) (uint8, error) {
	n, err := strconv.ParseUint(strings.TrimSpace(s), 10, 8)
	if err != nil || n < proto.MinBSS || n > proto.MaxBSS {
		return 0, invalid("block size shift %q: want %d..%d (objects of 1 MiB..2 GiB; 22 = 4 MiB)", s, proto.MinBSS, proto.MaxBSS)
	}
	return uint8(n), nil
}

// Snapshot parses -s as sheepdog does: all digits is a snapshot id,
// anything else a tag. The empty string selects nothing (tag "", id 0).
func Snapshot(s string) (tag string, id uint32, err error) {
	if s == "" {
		return "", 0, nil
	}
	if isDigits(s) {
		n, err := strconv.ParseUint(s, 10, 32)
		if err != nil || n == 0 {
			return "", 0, invalid("snapshot id %q: want 1..%d or a tag", s, uint32(1<<32-1))
		}
		return "", uint32(n), nil
	}
	if err := Tag(s); err != nil {
		return "", 0, err
	}
	return s, 0, nil
}

// Tag checks a snapshot tag: 1..255 bytes without NUL.
func Tag(s string) error {
	if s == "" || len(s) >= proto.TagLen || strings.IndexByte(s, 0) >= 0 {
		return invalid("snapshot tag %q: want 1..%d bytes without NUL", s, proto.TagLen-1)
	}
	return nil
}

// VDIName checks a VDI name: 1..255 bytes without NUL.
func VDIName(s string) error {
	if s == "" || len(s) >= proto.NameLen || strings.IndexByte(s, 0) >= 0 {
		return invalid("vdi name %q: want 1..%d bytes without NUL", s, proto.NameLen-1)
	}
	return nil
}

// AttrKey checks an attribute key: 1..255 bytes without NUL.
func AttrKey(s string) error {
	if s == "" || len(s) >= 256 || strings.IndexByte(s, 0) >= 0 {
		return invalid("attribute key %q: want 1..255 bytes without NUL", s)
	}
	return nil
}

// NodeIndex parses a node id of `dog node list` (0..n-1).
func NodeIndex(s string, n int) (int, error) {
	if !isDigits(s) {
		return 0, invalid("node id %q: want a number from 'dog node list'", s)
	}
	v, err := strconv.ParseUint(s, 10, 31)
	if err != nil || int(v) >= n {
		if n == 0 {
			return 0, invalid("node id %s: the cluster has no nodes", s)
		}
		return 0, invalid("node id %s: the cluster has %d node(s), ids 0..%d", s, n, n-1)
	}
	return int(v), nil
}

// Index parses an object index (-i).
func Index(s string) (uint32, error) {
	if !isDigits(s) {
		return 0, invalid("object index %q: want a number", s)
	}
	v, err := strconv.ParseUint(s, 10, 32)
	if err != nil || v >= proto.MaxDataObjs {
		return 0, invalid("object index %s: want 0..%d", s, proto.MaxDataObjs-1)
	}
	return uint32(v), nil
}

func isDigits(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}
