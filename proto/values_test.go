package proto

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

// Numeric values from sheepdog-protocol.md §2.1, §2.3, §2.4 and §1.6.

func TestOpcodeValues(t *testing.T) {
	want := map[Opcode]uint8{
		OpCreateAndWriteObj: 0x01, OpReadObj: 0x02, OpWriteObj: 0x03, OpRemoveObj: 0x04, OpDiscardObj: 0x05,
		OpNewVDI: 0x11, OpLockVDI: 0x12, OpReleaseVDI: 0x13, OpGetVDIInfo: 0x14, OpReadVDIs: 0x15,
		OpFlushVDI: 0x16, OpDelVDI: 0x17, OpGetClusterDefault: 0x18,
		OpGetNodeList: 0x82, OpMakeFS: 0x84, OpShutdown: 0x85, OpStatSheep: 0x86, OpStatCluster: 0x87,
		OpGetVDIAttr: 0x89, OpForceRecover: 0x8a, OpStatRecovery: 0x97, OpKillNode: 0x9a,
		OpGetObjList: 0xa1, OpGetEpoch: 0xa2, OpCreateAndWritePeer: 0xa3, OpReadPeer: 0xa4,
		OpWritePeer: 0xa5, OpRemovePeer: 0xa6, OpEnableRecover: 0xa8, OpDisableRecover: 0xa9,
		OpGetVDICopies: 0xab, OpCompleteRecovery: 0xac, OpGetHash: 0xb4, OpReweight: 0xb5, OpStat: 0xb8,
		OpExist: 0xbd, OpClusterInfo: 0xbe, OpRepairReplica: 0xc5, OpOIDsExist: 0xc6,
		OpGetRecovery: 0xca, OpSetRecovery: 0xcb,
	}
	for op, v := range want {
		if uint8(op) != v {
			t.Errorf("%s = %#x, want %#x", op, uint8(op), v)
		}
		if op.Internal() != (v >= 0x80) {
			t.Errorf("%s Internal() = %v", op, op.Internal())
		}
		if !op.Known() || strings.HasPrefix(op.String(), "OP_0x") {
			t.Errorf("%#x has no name", v)
		}
	}
	// Extension opcodes live in the range sheepdog never assigned.
	for _, op := range []Opcode{OpMeta, OpSyncPeer, OpClusterState, OpNodeInfo, OpObjInfo} {
		if op < 0xe0 || !op.Internal() || !op.Known() {
			t.Errorf("extension %s = %#x", op, uint8(op))
		}
	}
	if Opcode(0x7e).Known() || Opcode(0x7e).String() != "OP_0x7e" {
		t.Errorf("unknown opcode named %q", Opcode(0x7e).String())
	}
	peer := map[Opcode]Opcode{OpCreateAndWriteObj: 0xa3, OpReadObj: 0xa4, OpWriteObj: 0xa5, OpRemoveObj: 0xa6}
	for op, p := range peer {
		if got, ok := op.Peer(); !ok || got != p {
			t.Errorf("%s.Peer() = %s, %v", op, got, ok)
		}
	}
	if _, ok := OpNewVDI.Peer(); ok {
		t.Error("NEW_VDI has no peer opcode")
	}
}

func TestResultValues(t *testing.T) {
	want := map[Result]uint32{
		ResSuccess: 0x00, ResUnknown: 0x01, ResNoObj: 0x02, ResEIO: 0x03, ResVDIExist: 0x04,
		ResInvalidParms: 0x05, ResSystemError: 0x06, ResVDILocked: 0x07, ResNoVDI: 0x08,
		ResNoBaseVDI: 0x09, ResVDIRead: 0x0a, ResVDIWrite: 0x0b, ResBaseVDIRead: 0x0c,
		ResBaseVDIWrite: 0x0d, ResNoTag: 0x0e, ResStartup: 0x0f, ResVDINotLocked: 0x10,
		ResShutdown: 0x11, ResNoMem: 0x12, ResFullVDI: 0x13, ResVerMismatch: 0x14, ResNoSpace: 0x15,
		ResWaitForFormat: 0x16, ResWaitForJoin: 0x17, ResJoinFailed: 0x18, ResHalt: 0x19,
		ResReadonly: 0x1a, ResInodeInvalidated: 0x1d,
		ResOldNodeVer: 0x81, ResNewNodeVer: 0x82, ResNotFormatted: 0x83, ResInvalidCtime: 0x84,
		ResInvalidEpoch: 0x85, ResNetworkError: 0x86, ResNoCache: 0x87, ResBufferSmall: 0x88,
		ResForceRecover: 0x89, ResNoStore: 0x8a, ResNoSupport: 0x8b, ResNodeInRecovery: 0x8c,
		ResKilled: 0x8d, ResOIDExist: 0x8e, ResAgain: 0x8f, ResStaleObj: 0x90, ResClusterError: 0x91,
		ResVDINotEmpty: 0x92, ResNotFound: 0x93, ResIncomplete: 0x94, ResCollectingCinfo: 0x95,
		ResGatewayMode: 0x97, ResInvalidVnodes: 0x98, ResNoCheckpointEntry: 0x99,
	}
	for r, v := range want {
		if uint32(r) != v {
			t.Errorf("%v = %#x, want %#x", r, uint32(r), v)
		}
		if strings.HasPrefix(r.Error(), "Invalid error code") {
			t.Errorf("%#x has no text", v)
		}
	}
	if got := Result(0x1b).Error(); got != "Invalid error code 1b" {
		t.Errorf("unknown result text %q", got)
	}
}

func TestFlagValues(t *testing.T) {
	want := map[string][2]Flags{
		"WRITE": {FlagWrite, 0x01}, "COW": {FlagCOW, 0x02}, "CACHE": {FlagCache, 0x04},
		"DIRECT": {FlagDirect, 0x08}, "PIGGYBACK": {FlagPiggyback, 0x10}, "TGT": {FlagTgt, 0x20},
		"FWD": {FlagFwd, 0x40}, "RECOVERY": {FlagRecovery, 0x80}, "WILDCARD": {FlagWildcard, 0x100},
		"CREAT": {FlagCreat, 0x100}, "EXCL": {FlagExcl, 0x200}, "DEL": {FlagDel, 0x400},
	}
	for n, v := range want {
		if v[0] != v[1] {
			t.Errorf("%s = %#x, want %#x", n, v[0], v[1])
		}
	}
	if FlagSync&(FlagWrite|FlagCOW|FlagCache|FlagDirect|FlagPiggyback|FlagTgt|FlagFwd|FlagRecovery|FlagWildcard|FlagExcl|FlagDel) != 0 {
		t.Errorf("FlagSync %#x overlaps a sheepdog flag", FlagSync)
	}
	if ProtoVer != 0x02 || SheepProtoVer != 0x0a || HeaderSize != 48 {
		t.Error("protocol constants changed")
	}
	cf := []uint16{ClusterFlagStrict, ClusterFlagDiskMode, ClusterFlagAutoVnodes, ClusterFlagUseLock, ClusterFlagRecycleVID, ClusterFlagAvoidDiskFull}
	for i, f := range cf {
		if f != 1<<i {
			t.Errorf("cluster flag %d = %#x", i, f)
		}
	}
}

func TestResultOfAndNewError(t *testing.T) {
	errLocked := NewError(ResVDILocked, "vdi is locked by another client")
	other := NewError(ResVDILocked, "a different sentinel")
	cases := []struct {
		err  error
		want Result
	}{
		{nil, ResSuccess},
		{ResNoObj, ResNoObj},
		{fmt.Errorf("read %s: %w", OID(1), ResNoVDI), ResNoVDI},
		{errors.New("disk on fire"), ResEIO},
		{errLocked, ResVDILocked},
		{fmt.Errorf("open: %w", errLocked), ResVDILocked},
		{fmt.Errorf("a: %w", fmt.Errorf("b: %w", NewError(ResNoSpace, "full"))), ResNoSpace},
		{errors.Join(errors.New("x"), ResHalt), ResHalt},
		{ResSuccess, ResSuccess},
	}
	for i, c := range cases {
		if got := ResultOf(c.err); got != c.want {
			t.Errorf("case %d: ResultOf(%v) = %#x, want %#x", i, c.err, uint32(got), uint32(c.want))
		}
	}
	if errLocked.Error() != "vdi is locked by another client" {
		t.Errorf("text %q", errLocked.Error())
	}
	if !errors.Is(errLocked, ResVDILocked) || !errors.Is(fmt.Errorf("w: %w", errLocked), errLocked) {
		t.Error("NewError does not match its code or itself")
	}
	if errors.Is(errLocked, ResNoVDI) || errors.Is(errLocked, other) || errors.Is(other, errLocked) {
		t.Error("distinct sentinels must not match each other")
	}
	if ResSuccess.Err() != nil || ResNoObj.Err() == nil || !errors.Is(ResNoObj.Err(), ResNoObj) {
		t.Error("Result.Err")
	}
}
