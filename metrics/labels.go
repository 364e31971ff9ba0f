package metrics

import (
	"context"
	"errors"
	"os"

	"github.com/gosheep/gosheep/proto"
)

// Label values are drawn from the fixed tables in this file only: front ends
// and clients choose the strings passed to Request, and a hostile client that
// could mint label values would grow the registry without bound.

// Front-end label values.
const (
	FrontendNative = "native"
	FrontendISCSI  = "iscsi"
	FrontendNBD    = "nbd"
	FrontendPeer   = "peer"
)

// Index 0 is the catch-all for any other string.
var frontendLabels = [...]string{"other", FrontendNative, FrontendISCSI, FrontendNBD, FrontendPeer}

const numFrontends = len(frontendLabels)

func frontendIndex(s string) int {
	switch s {
	case FrontendNative:
		return 1
	case FrontendISCSI:
		return 2
	case FrontendNBD:
		return 3
	case FrontendPeer:
		return 4
	}
	return 0
}

// Op classes. Every front end's command names map onto this one vocabulary
// so dashboards can compare "read" on NBD with "read" on iSCSI, and so the
// op label has a fixed, small set of values.
const (
	opOther = iota
	opRead
	opWrite
	opFlush
	opDiscard
	opWriteZeroes
	opCompareAndWrite
	opCreateAndWrite
	opRemove
	opECWrite
	opPrefetch
	opLookup
	opVDI
	opCluster
	opControl
	numOps
)

var opLabels = [numOps]string{
	opOther:           "other",
	opRead:            "read",
	opWrite:           "write",
	opFlush:           "flush",
	opDiscard:         "discard",
	opWriteZeroes:     "write_zeroes",
	opCompareAndWrite: "compare_and_write",
	opCreateAndWrite:  "create_and_write",
	opRemove:          "remove",
	opECWrite:         "ec_write",
	opPrefetch:        "prefetch",
	opLookup:          "lookup",
	opVDI:             "vdi",
	opCluster:         "cluster",
	opControl:         "control",
}

// opIndex maps a command name as the front ends report it (sheepdog opcode
// names from proto.Opcode.String, SCSI command names from target/iscsi, NBD
// command names from target/nbd, or a class name itself) to its op class.
// A switch keeps the table immutable and the lookup allocation-free.
func opIndex(op string) int {
	switch op {
	case "read",
		"READ_OBJ", "READ_PEER",
		"READ(6)", "READ(10)", "READ(12)", "READ(16)":
		return opRead
	case "write",
		"WRITE_OBJ", "WRITE_PEER",
		"WRITE(6)", "WRITE(10)", "WRITE(12)", "WRITE(16)",
		"WRITE AND VERIFY(10)", "WRITE AND VERIFY(12)", "WRITE AND VERIFY(16)", "ORWRITE(16)":
		return opWrite
	case "flush",
		"FLUSH_VDI", "SYNC_PEER",
		"SYNCHRONIZE CACHE(10)", "SYNCHRONIZE CACHE(16)":
		return opFlush
	case "discard", "trim",
		"DISCARD_OBJ",
		"UNMAP":
		return opDiscard
	case "write_zeroes",
		"ZERO_PEER",
		"WRITE SAME(10)", "WRITE SAME(16)":
		return opWriteZeroes
	case "compare_and_write", "COMPARE AND WRITE":
		return opCompareAndWrite
	case "create_and_write", "CREATE_AND_WRITE_OBJ", "CREATE_AND_WRITE_PEER":
		return opCreateAndWrite
	case "remove", "REMOVE_OBJ", "REMOVE_PEER":
		return opRemove
	case "ec_write", "EC_WRITE":
		return opECWrite
	case "prefetch", "cache", "PRE-FETCH(10)", "PRE-FETCH(16)":
		return opPrefetch
	case "lookup", "block_status", "GET LBA STATUS",
		"GET_OBJ_LIST", "GET_HASH", "STAT", "EXIST", "OIDS_EXIST", "OBJ_INFO", "LIST_OBJS":
		return opLookup
	case "vdi",
		"NEW_VDI", "LOCK_VDI", "RELEASE_VDI", "GET_VDI_INFO", "READ_VDIS", "DEL_VDI",
		"GET_VDI_ATTR", "GET_VDI_COPIES":
		return opVDI
	case "cluster",
		"GET_CLUSTER_DEFAULT", "GET_NODE_LIST", "MAKE_FS", "SHUTDOWN", "STAT_SHEEP", "STAT_CLUSTER",
		"FORCE_RECOVER", "STAT_RECOVERY", "KILL_NODE", "GET_EPOCH", "ENABLE_RECOVER",
		"DISABLE_RECOVER", "COMPLETE_RECOVERY", "REWEIGHT", "CLUSTER_INFO", "REPAIR_REPLICA",
		"GET_RECOVERY", "SET_RECOVERY", "META", "CLUSTER_STATE", "NODE_INFO":
		return opCluster
	case "control", "disc",
		"TEST UNIT READY", "REQUEST SENSE", "INQUIRY", "MODE SELECT(6)", "MODE SELECT(10)",
		"MODE SENSE(6)", "MODE SENSE(10)", "RESERVE(6)", "RESERVE(10)", "RELEASE(6)", "RELEASE(10)",
		"START STOP UNIT", "PREVENT ALLOW MEDIUM REMOVAL", "READ CAPACITY(10)", "READ CAPACITY(16)",
		"PERSISTENT RESERVE IN", "PERSISTENT RESERVE OUT", "REPORT LUNS",
		"REPORT SUPPORTED OPERATION CODES", "VERIFY(10)", "VERIFY(12)", "VERIFY(16)":
		return opControl
	}
	return opOther
}

// dataDirection says which byte counter an op class's payload feeds:
// +1 read, -1 written, 0 neither (control payloads are not I/O).
func dataDirection(op int) int {
	switch op {
	case opRead:
		return +1
	case opWrite, opWriteZeroes, opCompareAndWrite, opCreateAndWrite, opECWrite:
		return -1
	}
	return 0
}

// Result label values: sheepdog's SD_RES_* names in lower case. Errors that
// carry no proto.Result are "timeout", "canceled" or "other".
const (
	resOther = iota
	resTimeout
	resCanceled
	resFirstCode
)

type resultLabel struct {
	code proto.Result
	name string
}

var resultLabels = [...]resultLabel{
	{proto.ResUnknown, "unknown"},
	{proto.ResNoObj, "no_obj"},
	{proto.ResEIO, "eio"},
	{proto.ResVDIExist, "vdi_exist"},
	{proto.ResInvalidParms, "invalid_parms"},
	{proto.ResSystemError, "system_error"},
	{proto.ResVDILocked, "vdi_locked"},
	{proto.ResNoVDI, "no_vdi"},
	{proto.ResNoBaseVDI, "no_base_vdi"},
	{proto.ResVDIRead, "vdi_read"},
	{proto.ResVDIWrite, "vdi_write"},
	{proto.ResBaseVDIRead, "base_vdi_read"},
	{proto.ResBaseVDIWrite, "base_vdi_write"},
	{proto.ResNoTag, "no_tag"},
	{proto.ResStartup, "startup"},
	{proto.ResVDINotLocked, "vdi_not_locked"},
	{proto.ResShutdown, "shutdown"},
	{proto.ResNoMem, "no_mem"},
	{proto.ResFullVDI, "full_vdi"},
	{proto.ResVerMismatch, "ver_mismatch"},
	{proto.ResNoSpace, "no_space"},
	{proto.ResWaitForFormat, "wait_for_format"},
	{proto.ResWaitForJoin, "wait_for_join"},
	{proto.ResJoinFailed, "join_failed"},
	{proto.ResHalt, "halt"},
	{proto.ResReadonly, "readonly"},
	{proto.ResInodeInvalidated, "inode_invalidated"},
	{proto.ResOldNodeVer, "old_node_ver"},
	{proto.ResNewNodeVer, "new_node_ver"},
	{proto.ResNotFormatted, "not_formatted"},
	{proto.ResInvalidCtime, "invalid_ctime"},
	{proto.ResInvalidEpoch, "invalid_epoch"},
	{proto.ResNetworkError, "network_error"},
	{proto.ResNoCache, "no_cache"},
	{proto.ResBufferSmall, "buffer_small"},
	{proto.ResForceRecover, "force_recover"},
	{proto.ResNoStore, "no_store"},
	{proto.ResNoSupport, "no_support"},
	{proto.ResNodeInRecovery, "node_in_recovery"},
	{proto.ResKilled, "killed"},
	{proto.ResOIDExist, "oid_exist"},
	{proto.ResAgain, "again"},
	{proto.ResStaleObj, "stale_obj"},
	{proto.ResClusterError, "cluster_error"},
	{proto.ResVDINotEmpty, "vdi_not_empty"},
	{proto.ResNotFound, "not_found"},
	{proto.ResIncomplete, "incomplete"},
	{proto.ResCollectingCinfo, "collecting_cinfo"},
	{proto.ResGatewayMode, "gateway_mode"},
	{proto.ResInvalidVnodes, "invalid_vnodes"},
	{proto.ResNoCheckpointEntry, "no_checkpoint_entry"},
}

const numResults = resFirstCode + len(resultLabels)

func resultName(i int) string {
	switch i {
	case resOther:
		return "other"
	case resTimeout:
		return "timeout"
	case resCanceled:
		return "canceled"
	}
	return resultLabels[i-resFirstCode].name
}

// resultIndex classifies a non-nil error. A proto.Result in the chain wins,
// as it does for proto.ResultOf: it is what the client saw on the wire.
func resultIndex(err error) int {
	r, ok := err.(proto.Result) // the native server's case: no allocation
	if !ok {
		r, ok = asResult(err)
	}
	if ok {
		for i, l := range resultLabels {
			if l.code == r {
				return resFirstCode + i
			}
		}
		return resOther
	}
	switch {
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded):
		return resTimeout
	case errors.Is(err, context.Canceled):
		return resCanceled
	}
	return resOther
}

// asResult is errors.As in its own frame: its target escapes to the heap,
// and resultIndex's fast path should not pay for that.
func asResult(err error) (proto.Result, bool) {
	var r proto.Result
	ok := errors.As(err, &r)
	return r, ok
}

// Label values of the daemon's event counters.
const (
	ScrubRepaired     = "repaired"     // a bad copy was rewritten from a good one
	ScrubUnrepairable = "unrepairable" // no good copy left
	// ScrubDiffering: copies of an object that verify but differ (a write
	// torn by its writer's crash); converging them counts as repaired.
	ScrubDiffering = "differing"

	RecoveryDone    = "done"    // object recovered onto this node
	RecoveryFailed  = "failed"  // gave up on the object this run
	RecoverySkipped = "skipped" // already present and current
)

// Components that may report a recovered panic; others count as "other".
var panicComponents = [...]string{
	FrontendNative, FrontendISCSI, FrontendNBD, FrontendPeer,
	"gateway", "volume", "store", "cluster", "recovery", "scrub", "sheep", "metrics",
}

// oneOf returns s if it is in allowed and "other" otherwise.
func oneOf(s string, allowed ...string) string {
	for _, a := range allowed {
		if s == a {
			return s
		}
	}
	return "other"
}

// How a lent read was served (gosheep_lent_reads_total's label).
const (
	// LentLocal: from this node's copy, checked in place, by sendfile.
	LentLocal = "local"
	// LentRelayed: another node's copy, spliced through a pipe.
	LentRelayed = "relayed"

	// CompareFingerprint: copies compared by their checksum tables alone.
	CompareFingerprint = "fingerprint"
	// CompareData: copies compared by hashing their data.
	CompareData = "data"
)
