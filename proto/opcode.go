package proto

import "fmt"

// Opcode is the request type at header byte 1.
type Opcode uint8

// Public opcodes (< 0x80), spoken by QEMU and dog.
const (
	OpCreateAndWriteObj Opcode = 0x01
	OpReadObj           Opcode = 0x02
	OpWriteObj          Opcode = 0x03
	OpRemoveObj         Opcode = 0x04
	OpDiscardObj        Opcode = 0x05

	OpNewVDI            Opcode = 0x11
	OpLockVDI           Opcode = 0x12
	OpReleaseVDI        Opcode = 0x13
	OpGetVDIInfo        Opcode = 0x14
	OpReadVDIs          Opcode = 0x15
	OpFlushVDI          Opcode = 0x16
	OpDelVDI            Opcode = 0x17
	OpGetClusterDefault Opcode = 0x18
)

// Internal opcodes (>= 0x80, proto_ver must be SheepProtoVer), sheepdog's numbering.
const (
	OpGetNodeList        Opcode = 0x82
	OpMakeFS             Opcode = 0x84
	OpShutdown           Opcode = 0x85
	OpStatSheep          Opcode = 0x86
	OpStatCluster        Opcode = 0x87
	OpGetVDIAttr         Opcode = 0x89
	OpForceRecover       Opcode = 0x8a
	OpStatRecovery       Opcode = 0x97
	OpKillNode           Opcode = 0x9a
	OpGetObjList         Opcode = 0xa1
	OpGetEpoch           Opcode = 0xa2
	OpCreateAndWritePeer Opcode = 0xa3
	OpReadPeer           Opcode = 0xa4
	OpWritePeer          Opcode = 0xa5
	OpRemovePeer         Opcode = 0xa6
	OpEnableRecover      Opcode = 0xa8
	OpDisableRecover     Opcode = 0xa9
	OpGetVDICopies       Opcode = 0xab
	OpCompleteRecovery   Opcode = 0xac
	OpGetHash            Opcode = 0xb4
	OpReweight           Opcode = 0xb5
	OpStat               Opcode = 0xb8
	OpExist              Opcode = 0xbd
	OpClusterInfo        Opcode = 0xbe
	OpRepairReplica      Opcode = 0xc5
	OpOIDsExist          Opcode = 0xc6
	OpGetRecovery        Opcode = 0xca
	OpSetRecovery        Opcode = 0xcb
)

// gosheep extensions. Sheepdog never assigned 0xe0..0xff; payloads of these are
// JSON documents defined next to their handlers, and their request header
// union is MetaArgs.
const (
	// OpMeta forwards a metadata command (JSON) to the Raft leader and
	// returns its JSON result.
	OpMeta Opcode = 0xe0
	// OpSyncPeer asks a node to make every object write it acknowledged durable.
	OpSyncPeer Opcode = 0xe1
	// OpClusterState returns the cluster metadata as JSON (dog's view).
	OpClusterState Opcode = 0xe2
	// OpNodeInfo returns this node's status as JSON.
	OpNodeInfo Opcode = 0xe3
	// OpObjInfo returns a local object's metadata (size, epoch) as JSON.
	OpObjInfo Opcode = 0xe4
	// OpECWrite forwards an erasure-coded mutation to the object's primary.
	// Obj args: OID, Copies/CopyPolicy (redundancy), ECIndex = the gateway
	// ECOp, Offset; CowOID carries object size << 32 | range length.
	OpECWrite Opcode = 0xe5
	// OpZeroPeer zeroes a range of a local object (length in PeerSize).
	OpZeroPeer Opcode = 0xe6
	// OpListObjs returns this node's objects (live and stale) as JSON, for recovery.
	OpListObjs Opcode = 0xe7
	// OpWritePeerSums is WRITE_PEER with the data's block checksums after
	// it: the payload is n×4096 data bytes, then n little-endian CRC32C
	// (store.BlockSums), and the offset is 4096-aligned. A separate opcode,
	// so a node without it refuses the request instead of writing the sums
	// as data.
	OpWritePeerSums Opcode = 0xe8
	// OpReadPeerSums is READ_PEER of whole 4096-byte blocks (offset and
	// length) that answers with each block's stored checksum first: the
	// payload is n little-endian CRC32C, then the n×4096 data bytes, which
	// the peer sends unread (sendfile) and the reader verifies. A block
	// that fails is read again with READ_PEER, which tells rot from a torn
	// write's remnant.
	OpReadPeerSums Opcode = 0xe9
	// OpHealPeer is WRITE_PEER for a repair: of the whole 4096-byte blocks
	// written (the offset aligned, the end too or at the object's end),
	// the peer replaces only those that fail their checksums
	// (store.Healer), so a repair cannot undo a write that reached the
	// copy after the repair read its source.
	OpHealPeer Opcode = 0xea
	// OpReplacePeer replaces a local object whole, if it still holds what
	// the sender saw: the payload is the SHA-1 the object must hash to
	// (GET_HASH), then the new content (offset 0). Otherwise nothing
	// changes and the answer is ResAgain (store.Replacer).
	OpReplacePeer Opcode = 0xeb
	// OpGetSumsHash is GET_HASH of the object's block checksums instead of
	// its data (store.SumsHash): a cheap first comparison of copies, which
	// reads no data. A node without it refuses it as unknown.
	OpGetSumsHash Opcode = 0xec
)

// Internal reports whether the opcode belongs to the sheep-to-sheep/dog protocol.
func (o Opcode) Internal() bool { return o >= 0x80 }

// Extension reports whether o is in gosheep's extension range 0xe0..0xff.
func (o Opcode) Extension() bool { return o >= 0xe0 }

// Peer maps a gateway opcode to the opcode sent to a replica.
func (o Opcode) Peer() (Opcode, bool) {
	switch o {
	case OpCreateAndWriteObj:
		return OpCreateAndWritePeer, true
	case OpReadObj:
		return OpReadPeer, true
	case OpWriteObj:
		return OpWritePeer, true
	case OpRemoveObj:
		return OpRemovePeer, true
	}
	return 0, false
}

var opNames = map[Opcode]string{
	OpCreateAndWriteObj: "CREATE_AND_WRITE_OBJ", OpReadObj: "READ_OBJ", OpWriteObj: "WRITE_OBJ",
	OpRemoveObj: "REMOVE_OBJ", OpDiscardObj: "DISCARD_OBJ", OpNewVDI: "NEW_VDI", OpLockVDI: "LOCK_VDI",
	OpReleaseVDI: "RELEASE_VDI", OpGetVDIInfo: "GET_VDI_INFO", OpReadVDIs: "READ_VDIS",
	OpFlushVDI: "FLUSH_VDI", OpDelVDI: "DEL_VDI", OpGetClusterDefault: "GET_CLUSTER_DEFAULT",
	OpGetNodeList: "GET_NODE_LIST", OpMakeFS: "MAKE_FS", OpShutdown: "SHUTDOWN",
	OpStatSheep: "STAT_SHEEP", OpStatCluster: "STAT_CLUSTER", OpGetVDIAttr: "GET_VDI_ATTR",
	OpForceRecover: "FORCE_RECOVER", OpStatRecovery: "STAT_RECOVERY", OpKillNode: "KILL_NODE",
	OpGetObjList: "GET_OBJ_LIST", OpGetEpoch: "GET_EPOCH", OpCreateAndWritePeer: "CREATE_AND_WRITE_PEER",
	OpReadPeer: "READ_PEER", OpWritePeer: "WRITE_PEER", OpRemovePeer: "REMOVE_PEER",
	OpEnableRecover: "ENABLE_RECOVER", OpDisableRecover: "DISABLE_RECOVER",
	OpGetVDICopies: "GET_VDI_COPIES", OpCompleteRecovery: "COMPLETE_RECOVERY", OpGetHash: "GET_HASH",
	OpReweight: "REWEIGHT", OpStat: "STAT", OpExist: "EXIST", OpClusterInfo: "CLUSTER_INFO",
	OpRepairReplica: "REPAIR_REPLICA", OpOIDsExist: "OIDS_EXIST", OpGetRecovery: "GET_RECOVERY",
	OpSetRecovery: "SET_RECOVERY", OpMeta: "META", OpSyncPeer: "SYNC_PEER",
	OpClusterState: "CLUSTER_STATE", OpNodeInfo: "NODE_INFO", OpObjInfo: "OBJ_INFO", OpECWrite: "EC_WRITE", OpZeroPeer: "ZERO_PEER", OpListObjs: "LIST_OBJS", OpWritePeerSums: "WRITE_PEER_SUMS", OpReadPeerSums: "READ_PEER_SUMS", OpHealPeer: "HEAL_PEER", OpReplacePeer: "REPLACE_PEER", OpGetSumsHash: "GET_SUMS_HASH",
}

func (o Opcode) String() string {
	if n, ok := opNames[o]; ok {
		return n
	}
	return fmt.Sprintf("OP_0x%02x", uint8(o))
}

// Known reports whether o is an opcode this package names.
func (o Opcode) Known() bool { _, ok := opNames[o]; return ok }
