package proto

import "testing"

func TestNameToVIDTest(t *testing.T) {
	if got := NameToVID("test"); got != 0x7c2b25 {
		t.Fatalf("NameToVID(test) = %#x, want 0x7c2b25", got)
	}
	if got := InodeOID(0x7c2b25).String(); got != "807c2b2500000000" {
		t.Fatalf("inode oid %s", got)
	}
	if got := DataOID(0x7c2b25, 1).String(); got != "007c2b2500000001" {
		t.Fatalf("data oid %s", got)
	}
}
