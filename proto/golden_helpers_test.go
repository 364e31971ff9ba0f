package proto

import (
	"bytes"
	"encoding/hex"
	"strings"
	"testing"
)

// unhex decodes a hex string that may contain spaces and "|" separators, so
// goldens can be laid out field by field as the reference tables are.
func unhex(t testing.TB, s string) []byte {
	t.Helper()
	s = strings.NewReplacer(" ", "", "|", "", "\n", "", "\t", "").Replace(s)
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatalf("bad golden %q: %v", s, err)
	}
	return b
}

// The put helpers write little-endian integers with shifts, independent of
// the encoding/binary calls the code under test uses.
func put16(b []byte, off int, v uint16) { b[off], b[off+1] = byte(v), byte(v>>8) }

func put32(b []byte, off int, v uint32) {
	for i := 0; i < 4; i++ {
		b[off+i] = byte(v >> (8 * i))
	}
}

func put64(b []byte, off int, v uint64) {
	for i := 0; i < 8; i++ {
		b[off+i] = byte(v >> (8 * i))
	}
}

func diffBytes(t testing.TB, what string, got, want []byte) {
	t.Helper()
	if bytes.Equal(got, want) {
		return
	}
	if len(got) != len(want) {
		t.Fatalf("%s: got %d bytes, want %d", what, len(got), len(want))
	}
	for i := range got {
		if got[i] != want[i] {
			t.Fatalf("%s: first difference at byte %d: got %#02x, want %#02x\n got: % x\nwant: % x",
				what, i, got[i], want[i], got[:min(len(got), 64)], want[:min(len(want), 64)])
		}
	}
}
