package resv

import (
	"encoding/binary"
	"testing"
)

// FuzzApply drives the state machine with arbitrary operations (a
// CmdResv's operation arrives as JSON from any node or dog) and checks
// what must hold after each: no panic, registrations sorted, unique and
// within the limit, a non-all-registrants holder registered, Seq counting
// every operation, and a failed operation raising no unit attention.
func FuzzApply(f *testing.F) {
	f.Add([]byte{0, 0, 0, 1, 0, 0, 1, 1, 1, 0, 1, 5, 1})
	f.Add([]byte{4, 1, 0, 3, 7, 2, 1, 9, 4, 2, 5, 8, 0, 1})
	kinds := []string{OpPROut, OpPROut, OpPROut, OpReserve6, OpRelease6, OpNexusLost, OpReset, OpAdminClear, "bogus"}
	f.Fuzz(func(t *testing.T, b []byte) {
		s := &State{}
		for i := 0; len(b) >= 4; i++ {
			op := Op{
				Kind:  kinds[int(b[0])%len(kinds)],
				Nexus: string(rune('a' + b[1]%8)),
				SA:    b[2] % 9,
				Type:  b[3] % 10,
				Scope: b[3] >> 6,
			}
			b = b[4:]
			if len(b) >= 2 {
				op.Key, op.SAKey = uint64(b[0]%4), uint64(b[1]%4)
				b = b[2:]
			}
			if len(b) >= 8 && b[0] == 0xff {
				op.SAKey = binary.LittleEndian.Uint64(b)
				b = b[8:]
			}
			seq := s.Seq
			o := Apply(s, op)
			if s.Seq != seq+1 {
				t.Fatalf("op %d %+v: seq %d after %d", i, op, s.Seq, seq)
			}
			if o.Status != OK && len(s.UAs) > 0 && op.SA != 4 && op.SA != 5 {
				// Only a preempt may have removed registrations (and
				// told them) before finding its new type invalid.
				t.Fatalf("op %d %+v failed (%d) but raised %+v", i, op, o.Status, s.UAs)
			}
			if len(s.Regs) > MaxRegistrations {
				t.Fatalf("%d registrations", len(s.Regs))
			}
			for j := 1; j < len(s.Regs); j++ {
				if s.Regs[j-1].Nexus >= s.Regs[j].Nexus {
					t.Fatalf("registrations not sorted and unique: %+v", s.Regs)
				}
			}
			for _, r := range s.Regs {
				if r.Key == 0 {
					t.Fatalf("registration with key 0: %+v", s.Regs)
				}
			}
			if s.Active && !s.AllRegistrants() && s.Reg(s.Holder) == nil {
				t.Fatalf("op %d %+v: holder %q not registered: %+v", i, op, s.Holder, s)
			}
			if s.Active && !ValidType(s.Type) {
				t.Fatalf("reserved with type %d", s.Type)
			}
			if s.Active && s.AllRegistrants() && len(s.Regs) == 0 {
				t.Fatalf("all-registrants reservation without registrants: %+v", s)
			}
		}
	})
}
