// Package store is a node's local object store: one file per object (or EC
// strip) under a data directory, sparse, with a checksum per block so bit
// rot is caught on read, atomic creation (tmp file + rename) so a torn
// create is never visible as a whole object, and fsync on Sync or on a
// write that asks for it.
package store

import (
	"context"

	"github.com/gosheep/gosheep/internal/crc32c"
	"github.com/gosheep/gosheep/proto"
)

// Sentinel errors. Callers test with errors.Is; each wraps the sheepdog result
// it maps to on the wire so proto.ResultOf(err) gives the right code.
var (
	ErrNotFound   = proto.NewError(proto.ResNoObj, "store: object not found")
	ErrCorrupt    = proto.NewError(proto.ResEIO, "store: checksum mismatch")
	ErrNoSpace    = proto.NewError(proto.ResNoSpace, "store: no space left on device")
	ErrOutOfRange = proto.NewError(proto.ResInvalidParms, "store: offset or length beyond object size")
	ErrClosed     = proto.NewError(proto.ResShutdown, "store: closed")
	// ErrExists: the operation would overwrite a live object (Unstash).
	ErrExists = proto.NewError(proto.ResOIDExist, "store: object exists")
	// ErrLocked: another process (or store) has the data directory open.
	ErrLocked = proto.NewError(proto.ResSystemError, "store: data directory in use")
)

// Key names one stored object: a whole replica, or one strip of an
// erasure-coded object.
type Key struct {
	OID     proto.OID
	EC      bool  // an erasure-code strip
	ECIndex uint8 // which strip, when EC
}

// ReplicaKey is the key of a replicated object.
func ReplicaKey(oid proto.OID) Key { return Key{OID: oid} }

// StripKey is the key of EC strip i of oid.
func StripKey(oid proto.OID, i uint8) Key { return Key{OID: oid, EC: true, ECIndex: i} }

// WriteOpts qualify a mutation.
type WriteOpts struct {
	// Sync makes the mutation durable before returning (FUA).
	Sync bool
	// Epoch is the cluster epoch the mutation happened in; the store keeps
	// the highest one per object so recovery can tell which copies changed.
	Epoch uint32
	// Exclusive makes Create fail with ErrExists when the object exists
	// (allocation by two gateways at once must not wipe either's data).
	Exclusive bool
	// Sums, if not nil, are BlockSums of a Write's data, computed once by
	// the gateway for every copy; they are used when the write starts on a
	// block boundary. The store keeps them as given: a wrong one makes its
	// block read as corrupt, so data damaged on its way to this copy is
	// found by the next read or scrub instead of being checksummed as is.
	Sums []uint32
}

// SumBlock is the unit BlockSums checksums.
const SumBlock = blockSize

// BlockSums appends to dst the store's checksum (CRC32C) of each whole
// SumBlock-sized block of data, in order; a short tail is left out.
func BlockSums(dst []uint32, data []byte) []uint32 {
	for len(data) >= SumBlock {
		dst = append(dst, crc32c.Checksum(data[:SumBlock]))
		data = data[SumBlock:]
	}
	return dst
}

// ObjInfo describes a stored object.
type ObjInfo struct {
	Key   Key
	Size  uint32 // logical object size
	Epoch uint32 // highest WriteOpts.Epoch of any mutation
	// Dirty: mutated since the object's file was last closed cleanly. After
	// a crash these are the objects that may have been mid-write. Set by
	// List and Stat.
	Dirty bool
}

// Usage is the data directory's capacity.
type Usage struct {
	Capacity uint64 // bytes the store may use
	Used     uint64 // bytes allocated by objects
	Free     uint64 // bytes still available to objects
	Objects  uint64
}

// Store is the local object store. All methods are safe for concurrent use;
// mutations of one object are serialised, different objects proceed in parallel.
type Store interface {
	// Create makes an object of size bytes (zero-filled, sparse), writes data
	// at off, and publishes it atomically. An existing object is replaced:
	// creates are idempotent because clients re-send them after reconnects.
	Create(ctx context.Context, k Key, size uint32, off uint32, data []byte, o WriteOpts) error
	// Write writes data at off into an existing object.
	Write(ctx context.Context, k Key, off uint32, data []byte, o WriteOpts) error
	// Zero makes [off, off+n) read as zeros, freeing the space where it can.
	Zero(ctx context.Context, k Key, off, n uint32, o WriteOpts) error
	// Read fills p from off, verifying block checksums (ErrCorrupt on mismatch).
	Read(ctx context.Context, k Key, off uint32, p []byte) error
	// Remove deletes the object; removing a missing object is not an error.
	Remove(ctx context.Context, k Key) error
	// Stat describes the object.
	Stat(ctx context.Context, k Key) (ObjInfo, error)
	// List returns every object held (not stale ones).
	List(ctx context.Context) ([]ObjInfo, error)
	// Hash returns the SHA-1 of the object's logical content (holes read as zeros).
	Hash(ctx context.Context, k Key) ([20]byte, error)
	// SumsHash returns a fingerprint of the object's content read from its
	// block checksums alone (no data is read): equal content gives equal
	// fingerprints. Different content gives different ones unless a
	// changed block's CRC32C collides (2^-32 per block); a block still
	// holding a crash's remnant can make equal content differ. A cheap
	// first comparison of copies, confirmed with Hash.
	SumsHash(ctx context.Context, k Key) ([20]byte, error)
	// Verify reads the whole object and checks every block checksum.
	Verify(ctx context.Context, k Key) error
	// Sync makes every acknowledged mutation durable.
	Sync(ctx context.Context) error
	// Usage reports capacity.
	Usage() (Usage, error)
	// Close releases resources; later calls fail with ErrClosed.
	Close() error
}

// StaleInfo describes a stale copy: an object this node held in an earlier
// epoch, kept for recovery until the cluster has recovered everywhere.
type StaleInfo struct {
	Key      Key
	Epoch    uint32 // the epoch it was stashed for (part of its name)
	Size     uint32 // logical object size
	ObjEpoch uint32 // highest mutation epoch recorded in the object
}

// Stasher keeps stale copies for recovery (sheepdog's .stale directory).
type Stasher interface {
	// Stash atomically moves the live object k aside as the stale copy of
	// epoch; ErrNotFound if there is no live object.
	Stash(ctx context.Context, k Key, epoch uint32) error
	// ListStale returns every stale copy.
	ListStale(ctx context.Context) ([]StaleInfo, error)
	// ReadStale reads from a stale copy, verifying checksums.
	ReadStale(ctx context.Context, k Key, epoch uint32, off uint32, p []byte) error
	// HashStale is Hash of a stale copy.
	HashStale(ctx context.Context, k Key, epoch uint32) ([20]byte, error)
	// Unstash moves a stale copy back to live; ErrExists if a live copy exists.
	Unstash(ctx context.Context, k Key, epoch uint32) error
	// PurgeStale deletes a stale copy; a missing copy is not an error.
	PurgeStale(ctx context.Context, k Key, epoch uint32) error
}
