package parse

import (
	"errors"
	"strconv"
	"strings"
	"testing"

	"github.com/gosheep/gosheep/proto"
)

func TestSize(t *testing.T) {
	for in, want := range map[string]uint64{"0": 0, "4096": 4096, "4k": 4096, "10G": 10 << 30, "1.5T": 3 << 39} {
		got, err := Size("size", in)
		if err != nil || got != want {
			t.Errorf("Size(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "x", "-1", "1Q", "1e400G"} {
		_, err := Size("vdi size", bad)
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "vdi size") {
			t.Errorf("Size(%q): %v", bad, err)
		}
	}
	if _, err := PositiveSize("vdi size", "0"); !errors.Is(err, ErrInvalid) {
		t.Errorf("PositiveSize(0): %v", err)
	}
}

func TestRedundancy(t *testing.T) {
	for in, want := range map[string]proto.Redundancy{
		"1": {Copies: 1}, "3": {Copies: 3}, "31": {Copies: 31},
		"2:1": {Copies: 3, Data: 2, Parity: 1}, "4:2": {Copies: 6, Data: 4, Parity: 2}, "16:15": {Copies: 31, Data: 16, Parity: 15},
	} {
		got, err := Redundancy(in)
		if err != nil || got != want {
			t.Errorf("Redundancy(%q) = %+v, %v; want %+v", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "0", "32", "3:1", "4:0", "4:16", "x", "4:", ":2", "-1"} {
		if _, err := Redundancy(bad); !errors.Is(err, ErrInvalid) {
			t.Errorf("Redundancy(%q) accepted: %v", bad, err)
		}
	}
}

func TestSnapshot(t *testing.T) {
	for _, c := range []struct {
		in  string
		tag string
		id  uint32
	}{{"", "", 0}, {"3", "", 3}, {"nightly", "nightly", 0}, {"3a", "3a", 0}, {"-1", "-1", 0}} {
		tag, id, err := Snapshot(c.in)
		if err != nil || tag != c.tag || id != c.id {
			t.Errorf("Snapshot(%q) = %q, %d, %v", c.in, tag, id, err)
		}
	}
	for _, bad := range []string{"0", "4294967296", strings.Repeat("t", 256), "a\x00b"} {
		if _, _, err := Snapshot(bad); !errors.Is(err, ErrInvalid) {
			t.Errorf("Snapshot(%q) accepted: %v", bad, err)
		}
	}
}

func TestOthers(t *testing.T) {
	if z, err := BlockSizeShift("22"); err != nil || z != 22 {
		t.Errorf("BlockSizeShift(22) = %d, %v", z, err)
	}
	for _, bad := range []string{"19", "32", "x", ""} {
		if _, err := BlockSizeShift(bad); !errors.Is(err, ErrInvalid) {
			t.Errorf("BlockSizeShift(%q) accepted", bad)
		}
	}
	if i, err := NodeIndex("2", 3); err != nil || i != 2 {
		t.Errorf("NodeIndex(2, 3) = %d, %v", i, err)
	}
	for _, bad := range []string{"3", "-1", "x", "", "99999999999999999999"} {
		if _, err := NodeIndex(bad, 3); !errors.Is(err, ErrInvalid) {
			t.Errorf("NodeIndex(%q, 3) accepted", bad)
		}
	}
	if _, err := NodeIndex("0", 0); err == nil || !strings.Contains(err.Error(), "no nodes") {
		t.Errorf("NodeIndex with no nodes: %v", err)
	}
	if _, err := Index(strconv.Itoa(proto.MaxDataObjs)); !errors.Is(err, ErrInvalid) {
		t.Error("Index beyond the index accepted")
	}
	if err := VDIName(strings.Repeat("n", 255)); err != nil {
		t.Error(err)
	}
	for _, bad := range []string{"", strings.Repeat("n", 256), "a\x00"} {
		if err := VDIName(bad); !errors.Is(err, ErrInvalid) {
			t.Errorf("VDIName(%q) accepted", bad)
		}
		if err := AttrKey(bad); !errors.Is(err, ErrInvalid) {
			t.Errorf("AttrKey(%q) accepted", bad)
		}
	}
}

// The parsers take free-form input from the command line: any string gives
// a valid value or an ErrInvalid, and accepted values survive a round trip.
func FuzzSize(f *testing.F) {
	for _, s := range []string{"10G", "4k", "0", "1.5T", "-1", "1e30P", "NaNG", " 1g ", "99999999999999999999"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := Size("size", s)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("Size(%q): error %v is not ErrInvalid", s, err)
			}
			return
		}
		m, err := Size("size", strconv.FormatUint(n, 10))
		if err != nil || m != n {
			t.Fatalf("Size(%q) = %d, which does not round-trip: %d, %v", s, n, m, err)
		}
	})
}

func FuzzRedundancy(f *testing.F) {
	for _, s := range []string{"3", "4:2", "16:15", "0", "3:1", "4:", ":", "255:255", " 2 "} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		r, err := Redundancy(s)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("Redundancy(%q): error %v is not ErrInvalid", s, err)
			}
			return
		}
		if _, err := proto.FromPolicy(r.NrCopies(), r.Policy()); err != nil {
			t.Fatalf("Redundancy(%q) = %+v does not encode: %v", s, r, err)
		}
		back, err := Redundancy(r.String())
		if err != nil || back != r {
			t.Fatalf("Redundancy(%q) = %+v does not round-trip: %+v, %v", s, r, back, err)
		}
	})
}

func FuzzSnapshot(f *testing.F) {
	for _, s := range []string{"", "1", "0", "nightly", "4294967295", "4294967296", "12a"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		tag, id, err := Snapshot(s)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("Snapshot(%q): error %v is not ErrInvalid", s, err)
			}
			return
		}
		if tag != "" && id != 0 {
			t.Fatalf("Snapshot(%q) = both tag %q and id %d", s, tag, id)
		}
		if len(tag) >= proto.TagLen || strings.IndexByte(tag, 0) >= 0 {
			t.Fatalf("Snapshot(%q) accepted a tag the protocol cannot carry", s)
		}
	})
}
