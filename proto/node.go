package proto

import (
	"fmt"
	"net/netip"
)

// NodeSize is the size of struct sd_node on the wire and in epoch files.
const NodeSize = 80

// Node is sheepdog's struct sd_node (non-diskvnodes build).
type Node struct {
	Addr   netip.Addr
	Port   uint16
	IOAddr netip.Addr
	IOPort uint16
	Vnodes uint16
	Zone   uint32
	Space  uint64
}

// AddrPort is the node's protocol address.
func (n Node) AddrPort() netip.AddrPort { return netip.AddrPortFrom(n.Addr, n.Port) }

func (n Node) String() string { return n.AddrPort().String() }

// Marshal encodes the 80-byte record. IPv4 is stored as 12 zero bytes then
// the 4 address bytes, as sheep does (not ::ffff-mapped).
func (n Node) Marshal() []byte {
	b := make([]byte, NodeSize)
	putAddr(b[24:40], n.Addr)
	le.PutUint16(b[40:], n.Port)
	putAddr(b[42:58], n.IOAddr)
	le.PutUint16(b[58:], n.IOPort)
	le.PutUint16(b[64:], n.Vnodes)
	le.PutUint32(b[68:], n.Zone)
	le.PutUint64(b[72:], n.Space)
	return b
}

// Unmarshal decodes an 80-byte record.
func (n *Node) Unmarshal(b []byte) error {
	if len(b) < NodeSize {
		return fmt.Errorf("proto: node record of %d bytes, need %d: %w", len(b), NodeSize, ResInvalidParms)
	}
	n.Addr = getAddr(b[24:40])
	n.Port = le.Uint16(b[40:])
	n.IOAddr = getAddr(b[42:58])
	n.IOPort = le.Uint16(b[58:])
	n.Vnodes = le.Uint16(b[64:])
	n.Zone = le.Uint32(b[68:])
	n.Space = le.Uint64(b[72:])
	return nil
}

// IDBytes is the 18-byte node_id prefix (addr[16] + port LE) that seeds the node's ring hash.
func (n Node) IDBytes() []byte { return n.Marshal()[24:42] }

// DefaultZone is sheep's default zone: the last 4 address bytes as a LE u32.
func DefaultZone(a netip.Addr) uint32 {
	b := a.As16()
	return le.Uint32(b[12:])
}

func putAddr(dst []byte, a netip.Addr) {
	clear(dst)
	if !a.IsValid() {
		return
	}
	a = a.Unmap() // ::ffff:a.b.c.d is IPv4 to sheep: 12 zero bytes, not a v4-mapped v6
	if a.Is4() {
		v := a.As4()
		copy(dst[12:], v[:])
		return
	}
	v := a.As16()
	copy(dst, v[:])
}

func getAddr(b []byte) netip.Addr {
	var v [16]byte
	copy(v[:], b)
	if v == [16]byte{} {
		return netip.Addr{} // unset, e.g. io_addr when sheep has no -i
	}
	// Sheep's IPv4 form (12 zero bytes) and a v4-mapped address both decode
	// as IPv4, so one node always has one encoding (and one ring position).
	if a := netip.AddrFrom16(v); a.Is4In6() || [12]byte(v[:12]) == [12]byte{} {
		return netip.AddrFrom4([4]byte(v[12:16]))
	}
	return netip.AddrFrom16(v)
}

// MarshalNodes encodes a node list.
func MarshalNodes(ns []Node) []byte {
	b := make([]byte, 0, len(ns)*NodeSize)
	for _, n := range ns {
		b = append(b, n.Marshal()...)
	}
	return b
}

// UnmarshalNodes decodes a node list; len(b) must be a multiple of NodeSize.
func UnmarshalNodes(b []byte) ([]Node, error) {
	if len(b)%NodeSize != 0 {
		return nil, fmt.Errorf("proto: node list of %d bytes is not a multiple of %d: %w", len(b), NodeSize, ResInvalidParms)
	}
	ns := make([]Node, len(b)/NodeSize)
	for i := range ns {
		if err := ns[i].Unmarshal(b[i*NodeSize:]); err != nil {
			return nil, err
		}
	}
	return ns, nil
}
