package proto

import (
	"errors"
	"fmt"
)

// Result is a sheepdog result code (response header byte 16). A non-zero
// Result is an error; compare with errors.Is against the constants.
type Result uint32

// Public result codes.
const (
	ResSuccess          Result = 0x00
	ResUnknown          Result = 0x01
	ResNoObj            Result = 0x02
	ResEIO              Result = 0x03
	ResVDIExist         Result = 0x04
	ResInvalidParms     Result = 0x05
	ResSystemError      Result = 0x06
	ResVDILocked        Result = 0x07
	ResNoVDI            Result = 0x08
	ResNoBaseVDI        Result = 0x09
	ResVDIRead          Result = 0x0a
	ResVDIWrite         Result = 0x0b
	ResBaseVDIRead      Result = 0x0c
	ResBaseVDIWrite     Result = 0x0d
	ResNoTag            Result = 0x0e
	ResStartup          Result = 0x0f
	ResVDINotLocked     Result = 0x10
	ResShutdown         Result = 0x11
	ResNoMem            Result = 0x12
	ResFullVDI          Result = 0x13
	ResVerMismatch      Result = 0x14
	ResNoSpace          Result = 0x15
	ResWaitForFormat    Result = 0x16
	ResWaitForJoin      Result = 0x17
	ResJoinFailed       Result = 0x18
	ResHalt             Result = 0x19
	ResReadonly         Result = 0x1a
	ResInodeInvalidated Result = 0x1d
)

// Internal result codes.
const (
	ResOldNodeVer        Result = 0x81
	ResNewNodeVer        Result = 0x82
	ResNotFormatted      Result = 0x83
	ResInvalidCtime      Result = 0x84
	ResInvalidEpoch      Result = 0x85
	ResNetworkError      Result = 0x86
	ResNoCache           Result = 0x87
	ResBufferSmall       Result = 0x88
	ResForceRecover      Result = 0x89
	ResNoStore           Result = 0x8a
	ResNoSupport         Result = 0x8b
	ResNodeInRecovery    Result = 0x8c
	ResKilled            Result = 0x8d
	ResOIDExist          Result = 0x8e
	ResAgain             Result = 0x8f
	ResStaleObj          Result = 0x90
	ResClusterError      Result = 0x91
	ResVDINotEmpty       Result = 0x92
	ResNotFound          Result = 0x93
	ResIncomplete        Result = 0x94
	ResCollectingCinfo   Result = 0x95
	ResGatewayMode       Result = 0x97
	ResInvalidVnodes     Result = 0x98
	ResNoCheckpointEntry Result = 0x99
)

var resNames = map[Result]string{
	ResSuccess: "Success", ResUnknown: "Unknown error", ResNoObj: "No object found",
	ResEIO: "I/O error", ResVDIExist: "VDI exists already", ResInvalidParms: "Invalid parameters",
	ResSystemError: "System error", ResVDILocked: "VDI is already locked", ResNoVDI: "No VDI found",
	ResNoBaseVDI: "No base VDI found", ResVDIRead: "Failed to read from requested VDI",
	ResVDIWrite: "Failed to write to requested VDI", ResBaseVDIRead: "Failed to read from base VDI",
	ResBaseVDIWrite: "Failed to write to base VDI", ResNoTag: "Failed to find requested tag",
	ResStartup: "System is still booting", ResVDINotLocked: "VDI is not locked",
	ResShutdown: "System is shutting down", ResNoMem: "Out of memory on server",
	ResFullVDI: "Maximum number of VDIs reached", ResVerMismatch: "Protocol version mismatch",
	ResNoSpace: "Server has no space for new objects", ResWaitForFormat: "Waiting for cluster to be formatted",
	ResWaitForJoin: "Waiting for other nodes to join cluster", ResJoinFailed: "Node has failed to join cluster",
	ResHalt: "IO has halted as there are not enough living nodes", ResReadonly: "Object is read-only",
	ResInodeInvalidated: "Inode object is invalidated",
	ResOldNodeVer:       "Request has an old epoch", ResNewNodeVer: "Request has a new epoch",
	ResNotFormatted: "Cluster has not been formatted", ResInvalidCtime: "Creation time is different",
	ResInvalidEpoch: "Invalid epoch", ResNetworkError: "Network error between sheep",
	ResNoCache: "No cache object found", ResBufferSmall: "The buffer is too small",
	ResForceRecover: "Cluster is running/halted and cannot be force recovered",
	ResNoStore:      "Targeted backend store is not found", ResNoSupport: "Operation is not supported",
	ResNodeInRecovery: "Targeted node is in recovery", ResKilled: "Node is killed",
	ResOIDExist: "Object ID exists already", ResAgain: "Ask to try again",
	ResStaleObj: "Object may be stale", ResClusterError: "Cluster driver error",
	ResVDINotEmpty: "VDI is not empty", ResNotFound: "Cannot found target",
	ResIncomplete: "Incomplete request", ResCollectingCinfo: "Collecting cluster info",
	ResGatewayMode: "Node is in gateway mode", ResInvalidVnodes: "Invalid vnodes strategy",
	ResNoCheckpointEntry: "No checkpoint entry",
}

// Error implements error; the text is sheepdog's sd_strerror wording.
func (r Result) Error() string {
	if n, ok := resNames[r]; ok {
		return n
	}
	return fmt.Sprintf("Invalid error code %x", uint32(r))
}

// Err returns nil for ResSuccess and r otherwise.
func (r Result) Err() error {
	if r == ResSuccess {
		return nil
	}
	return r
}

// ResultOf maps an error to the code that best describes it on the wire:
// a Result anywhere in the chain is used as is, anything else is ResEIO.
func ResultOf(err error) Result {
	if err == nil {
		return ResSuccess
	}
	var r Result
	if errors.As(err, &r) {
		return r
	}
	return ResEIO
}

// codedError is a sentinel error that carries the Result it maps to on the wire.
type codedError struct {
	msg  string
	code Result
}

func (e *codedError) Error() string { return e.msg }
func (e *codedError) Unwrap() error { return e.code }

// NewError returns a sentinel error with text msg that errors.Is matches
// against code, and that ResultOf maps to code.
func NewError(code Result, msg string) error { return &codedError{msg: msg, code: code} }
