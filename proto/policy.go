package proto

import (
	"fmt"
	"strconv"
	"strings"
)

// Limits on redundancy (sheepdog's SD_MAX_COPIES and EC shapes).
const (
	MaxCopies     = 31
	DefaultCopies = 3
	MaxParity     = 15
	DefaultBSS    = 22 // 4 MiB objects
	MinBSS        = 20
	MaxBSS        = 31
	ECStripeSize  = 512 // bytes of data in one EC stripe
	DefaultVnodes = 128
	DefaultPort   = 7000
)

// Redundancy is a VDI's protection: plain copies, or Reed-Solomon data:parity.
type Redundancy struct {
	Copies uint8 // replicas; for EC, Data+Parity
	Data   uint8 // EC data strips (0 = replication)
	Parity uint8 // EC parity strips
}

// IsEC reports whether r is erasure coded.
func (r Redundancy) IsEC() bool { return r.Data > 0 }

// Policy encodes the copy_policy byte: high nibble data/2, low nibble parity.
func (r Redundancy) Policy() uint8 {
	if !r.IsEC() {
		return 0
	}
	return (r.Data/2)<<4 | r.Parity
}

// NrCopies is the value stored in nr_copies: replicas, or data+parity.
func (r Redundancy) NrCopies() uint8 {
	if r.IsEC() {
		return r.Data + r.Parity
	}
	return r.Copies
}

func (r Redundancy) String() string {
	if r.IsEC() {
		return fmt.Sprintf("%d:%d", r.Data, r.Parity)
	}
	return strconv.Itoa(int(r.Copies))
}

// FromPolicy decodes (nr_copies, copy_policy) as stored in an inode or header.
func FromPolicy(copies, policy uint8) (Redundancy, error) {
	if policy == 0 {
		if copies == 0 || copies > MaxCopies {
			return Redundancy{}, fmt.Errorf("copies %d out of range 1..%d: %w", copies, MaxCopies, ResInvalidParms)
		}
		return Redundancy{Copies: copies}, nil
	}
	r := Redundancy{Data: (policy >> 4) * 2, Parity: policy & 0x0f}
	if err := r.validEC(); err != nil {
		return Redundancy{}, err
	}
	r.Copies = r.Data + r.Parity
	return r, nil
}

func (r Redundancy) validEC() error {
	switch r.Data {
	case 2, 4, 8, 16:
	default:
		return fmt.Errorf("erasure data strips must be 2, 4, 8 or 16, not %d: %w", r.Data, ResInvalidParms)
	}
	if r.Parity < 1 || r.Parity > MaxParity {
		return fmt.Errorf("erasure parity strips must be 1..%d, not %d: %w", MaxParity, r.Parity, ResInvalidParms)
	}
	return nil
}

// ParseRedundancy parses dog's -c syntax: "3" or "4:2".
func ParseRedundancy(s string) (Redundancy, error) {
	d, p, ec := strings.Cut(strings.TrimSpace(s), ":")
	if !ec {
		n, err := strconv.ParseUint(d, 10, 8)
		if err != nil || n == 0 || n > MaxCopies {
			return Redundancy{}, fmt.Errorf("invalid copies %q: want 1..%d or DATA:PARITY: %w", s, MaxCopies, ResInvalidParms)
		}
		return Redundancy{Copies: uint8(n)}, nil
	}
	dn, err1 := strconv.ParseUint(d, 10, 8)
	pn, err2 := strconv.ParseUint(p, 10, 8)
	if err1 != nil || err2 != nil {
		return Redundancy{}, fmt.Errorf("invalid erasure code %q: want DATA:PARITY such as 4:2: %w", s, ResInvalidParms)
	}
	r := Redundancy{Data: uint8(dn), Parity: uint8(pn)}
	if err := r.validEC(); err != nil {
		return Redundancy{}, err
	}
	r.Copies = r.Data + r.Parity
	return r, nil
}
