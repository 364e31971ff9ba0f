package store

import (
	"errors"
	"fmt"
	"io/fs"
	"strings"

	"golang.org/x/sys/unix"
)

// maxReported bounds how many bad block offsets a CorruptError lists.
const maxReported = 64

// CorruptError reports data that fails verification: bad block checksums
// or an unreadable header. It wraps ErrCorrupt.
type CorruptError struct {
	Key        Key
	Stale      bool   // a stale copy
	StaleEpoch uint32 // its epoch, when Stale
	// Reason is set when the file itself is bad (header, length); then
	// Offsets is empty.
	Reason string
	// Offsets are the logical byte offsets of bad blocks, ascending, at
	// most maxReported of them; Count is the total.
	Offsets []uint64
	Count   int
}

func (e *CorruptError) name() string {
	if e.Stale {
		return fmt.Sprintf("stale object %v.%d", e.Key, e.StaleEpoch)
	}
	return fmt.Sprintf("object %v", e.Key)
}

func (e *CorruptError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "store: %s: ", e.name())
	switch {
	case e.Reason != "":
		b.WriteString(e.Reason)
	case e.Count == 1 && len(e.Offsets) == 1:
		fmt.Fprintf(&b, "checksum mismatch in block at offset %d", e.Offsets[0])
	default:
		fmt.Fprintf(&b, "checksum mismatch in %d blocks (offsets", e.Count)
		for _, o := range e.Offsets {
			fmt.Fprintf(&b, " %d", o)
		}
		if e.Count > len(e.Offsets) {
			b.WriteString(" ...")
		}
		b.WriteString(")")
	}
	return b.String()
}

// Unwrap makes errors.Is(err, ErrCorrupt) true.
func (e *CorruptError) Unwrap() error { return ErrCorrupt }

// isNoSpace reports an out-of-space condition from the OS.
func isNoSpace(err error) bool { return errors.Is(err, unix.ENOSPC) || errors.Is(err, unix.EDQUOT) }

func isNotExist(err error) bool { return errors.Is(err, fs.ErrNotExist) }

// ioError decorates a file-system error with the operation and object;
// out-of-space errors additionally wrap ErrNoSpace so callers and the wire
// code see it.
func ioError(op string, k Key, err error) error {
	if isNoSpace(err) {
		return fmt.Errorf("store: %s %v: %w: %w", op, k, ErrNoSpace, err)
	}
	return fmt.Errorf("store: %s %v: %w", op, k, err)
}
