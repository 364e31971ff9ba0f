package proto

import (
	"errors"
	"testing"
)

func TestVDIBitmapBitOrder(t *testing.T) {
	if VDIBitmapSize != 2<<20 {
		t.Fatalf("VDIBitmapSize %d", VDIBitmapSize)
	}
	m := NewVDIBitmap()
	// vid v is bit v%8 of byte v/8 (unsigned long words, little-endian).
	cases := []struct {
		vid  uint32
		byt  int
		mask byte
	}{{0, 0, 0x01}, {9, 1, 0x02}, {63, 7, 0x80}, {64, 8, 0x01}, {0x7c2b25, 0xf8564, 0x20}, {MaxVID, VDIBitmapSize - 1, 0x80}}
	for _, c := range cases {
		raw := make([]byte, VDIBitmapSize)
		raw[c.byt] = c.mask
		pm, err := ParseVDIBitmap(raw)
		if err != nil {
			t.Fatal(err)
		}
		if !pm.Test(c.vid) {
			t.Errorf("vid %#x not set by byte %#x mask %#x", c.vid, c.byt, c.mask)
		}
		if c.vid > 0 && pm.Test(c.vid-1) || c.vid < MaxVID && pm.Test(c.vid+1) {
			t.Errorf("neighbours of %#x set", c.vid)
		}
		m.Set(c.vid)
		if m[c.byt]&c.mask == 0 {
			t.Errorf("Set(%#x) did not set byte %#x mask %#x", c.vid, c.byt, c.mask)
		}
		m.Clear(c.vid)
		if m[c.byt] != 0 {
			t.Errorf("Clear(%#x) left %#x", c.vid, m[c.byt])
		}
	}
	for _, n := range []int{0, VDIBitmapSize - 1, VDIBitmapSize + 1} {
		if _, err := ParseVDIBitmap(make([]byte, n)); !errors.Is(err, ResInvalidParms) {
			t.Errorf("%d bytes: %v", n, err)
		}
	}
}

func TestVDIBitmapNextFree(t *testing.T) {
	m := NewVDIBitmap()
	for v := uint32(1); v <= 5; v++ {
		m.Set(v)
	}
	check := func(start, want uint32, ok bool) {
		t.Helper()
		got, gotOK := m.NextFree(start)
		if got != want || gotOK != ok {
			t.Errorf("NextFree(%#x) = %#x, %v; want %#x, %v", start, got, gotOK, want, ok)
		}
	}
	check(1, 6, true)
	check(3, 6, true)
	check(0, 6, true) // vid 0 is reserved: start at 1
	check(7, 7, true)
	check(MaxVID, MaxVID, true)
	m.Set(MaxVID)
	m.Set(MaxVID - 1)
	check(MaxVID-1, 6, true) // wraps to 1 and skips the used 1..5
	check(MaxVID+1, 6, true) // masked to 24 bits: 0 -> 1

	full := make([]byte, VDIBitmapSize)
	for i := range full {
		full[i] = 0xff
	}
	fm := VDIBitmap(full)
	fm.Clear(0) // vid 0 free does not count
	if v, ok := fm.NextFree(0x7c2b25); ok {
		t.Errorf("full bitmap gave %#x", v)
	}
	fm.Clear(0x10)
	if v, ok := fm.NextFree(0x7c2b25); !ok || v != 0x10 {
		t.Errorf("only-free 0x10: got %#x %v", v, ok)
	}
}

func TestRedundancyPolicyByte(t *testing.T) {
	cases := []struct {
		d, p   uint8
		policy uint8
	}{{2, 1, 0x11}, {4, 2, 0x22}, {8, 4, 0x44}, {4, 15, 0x2f}, {16, 15, 0x8f}, {16, 1, 0x81}}
	for _, c := range cases {
		r, err := ParseRedundancy(itoa(c.d) + ":" + itoa(c.p))
		if err != nil {
			t.Fatal(err)
		}
		if !r.IsEC() || r.Policy() != c.policy || r.NrCopies() != c.d+c.p || r.Copies != c.d+c.p {
			t.Errorf("%d:%d -> %+v policy %#x", c.d, c.p, r, r.Policy())
		}
		back, err := FromPolicy(0, c.policy)
		if err != nil || back != r {
			t.Errorf("FromPolicy(%#x) = %+v, %v", c.policy, back, err)
		}
		if r.String() != itoa(c.d)+":"+itoa(c.p) {
			t.Errorf("String %q", r.String())
		}
	}
	r := Redundancy{Copies: 3}
	if r.IsEC() || r.Policy() != 0 || r.NrCopies() != 3 || r.String() != "3" {
		t.Errorf("replication %+v", r)
	}
	if got, err := FromPolicy(3, 0); err != nil || got != r {
		t.Errorf("FromPolicy(3,0) = %+v %v", got, err)
	}
	for _, bad := range [][2]uint8{{0, 0}, {32, 0}, {0, 0x02}, {0, 0x30}, {0, 0x20}, {0, 0x90}, {0, 0x50}} {
		if _, err := FromPolicy(bad[0], bad[1]); !errors.Is(err, ResInvalidParms) {
			t.Errorf("FromPolicy(%d, %#x): %v", bad[0], bad[1], err)
		}
	}
}

func TestParseRedundancy(t *testing.T) {
	good := map[string]Redundancy{
		"1": {Copies: 1}, "3": {Copies: 3}, "31": {Copies: 31}, " 2 ": {Copies: 2},
		"4:2": {Copies: 6, Data: 4, Parity: 2}, "2:1": {Copies: 3, Data: 2, Parity: 1},
	}
	for s, want := range good {
		if got, err := ParseRedundancy(s); err != nil || got != want {
			t.Errorf("ParseRedundancy(%q) = %+v, %v", s, got, err)
		}
	}
	for _, s := range []string{"", "0", "32", "256", "abc", "-1", "+3", "4:0", "4:16", "3:1", "6:2",
		"32:1", "4:", ":2", "4:2:1", "4:2x", "4 :2", "0x3"} {
		if r, err := ParseRedundancy(s); !errors.Is(err, ResInvalidParms) {
			t.Errorf("ParseRedundancy(%q) = %+v, %v; want ResInvalidParms", s, r, err)
		}
	}
}

func itoa(v uint8) string {
	if v >= 10 {
		return string(rune('0'+v/10)) + string(rune('0'+v%10))
	}
	return string(rune('0' + v))
}
