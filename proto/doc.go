// Package proto is sheepdog's wire format: the 48-byte request and response
// headers, opcodes, flags, result codes, object IDs, the inode layout and the
// node record, all little-endian and byte-compatible with sheepdog 1.0 and
// QEMU's sheepdog driver (see ../shared/reference/sheepdog-protocol.md).
//
// Every decoder here takes untrusted bytes: it checks lengths and never
// panics or allocates more than the input allows.
package proto
