// Package api defines the JSON documents of gosheep's extension opcodes
// (proto.OpMeta, OpClusterState, OpNodeInfo, OpObjInfo, OpListObjs): what
// dog and the nodes exchange beyond sheepdog's binary protocol.
package api

import (
	"github.com/gosheep/gosheep/cluster"
	"github.com/gosheep/gosheep/proto"
	"github.com/gosheep/gosheep/recovery"
	"github.com/gosheep/gosheep/store"
)

// MetaRequest is the payload of OpMeta: a command forwarded to the Raft
// leader (Forward), a command any node commits on dog's behalf (Propose),
// or a volume-level operation (Volume). The answer is a cluster.Result.
type MetaRequest struct {
	Forward *cluster.Command `json:"forward,omitempty"`
	Volume  *VolumeOp        `json:"volume,omitempty"`
	Propose *cluster.Command `json:"propose,omitempty"`
	// WaitApplied asks the node to answer once its metadata has applied
	// this Raft index (and its watchers ran): a reservation change is
	// enforced by every node before its requester gets GOOD.
	WaitApplied uint64 `json:"wait_applied,omitempty"`
}

// Volume operations (VolumeOp.Op).
const (
	VolCreate   = "create"
	VolSnapshot = "snapshot"
	VolClone    = "clone"
	VolRollback = "rollback"
	VolResize   = "resize"
	VolDelete   = "delete"
	VolCheck    = "check" // Result.Value holds a JSON CheckReport
)

// VolumeOp is a VDI lifecycle operation.
type VolumeOp struct {
	Op         string `json:"op"`
	Name       string `json:"name"`
	Tag        string `json:"tag,omitempty"`
	SnapID     uint32 `json:"snap_id,omitempty"`
	Dest       string `json:"dest,omitempty"`
	Size       uint64 `json:"size,omitempty"`
	Redundancy string `json:"redundancy,omitempty"` // "3" or "4:2"; empty: cluster default
	BSS        uint8  `json:"block_size_shift,omitempty"`
	Repair     bool   `json:"repair,omitempty"` // check: fix what is wrong
}

// CheckReport is what a VDI check found and did.
type CheckReport struct {
	VDI      string `json:"vdi"`
	Objects  int    `json:"objects"`  // objects examined
	Copies   int    `json:"copies"`   // copies or strips examined
	Missing  int    `json:"missing"`  // copies/strips absent where placement wants them
	Mismatch int    `json:"mismatch"` // copies differing from the majority / failing parity
	Corrupt  int    `json:"corrupt"`  // copies failing their checksums
	Repaired int    `json:"repaired"`
	Lost     int    `json:"lost"` // objects with no good copy left
	// Unreachable copies/strips could not be examined (their node did not
	// answer): the check is incomplete.
	Unreachable int      `json:"unreachable,omitempty"`
	Details     []string `json:"details,omitempty"`
}

// ClusterState is dog's view of the cluster (OpClusterState).
type ClusterState struct {
	State   *cluster.State         `json:"state"`
	Members []cluster.MemberStatus `json:"members"`
	Leader  string                 `json:"leader"`
	Self    string                 `json:"self"`
}

// NodeInfo is one node's status (OpNodeInfo).
type NodeInfo struct {
	ID       string            `json:"id"`
	Addr     string            `json:"addr"`
	Zone     uint32            `json:"zone"`
	Usage    store.Usage       `json:"usage"`
	Epoch    uint32            `json:"epoch"`
	Leader   bool              `json:"leader"`
	Healthy  bool              `json:"healthy"`
	Uptime   float64           `json:"uptime_seconds"`
	Tags     map[string]string `json:"tags,omitempty"`
	Recovery recovery.Status   `json:"recovery"`
}

// ObjInfoRequest asks OpObjInfo about one oid; the answer is []recovery.Entry.
type ObjInfoRequest struct {
	OID proto.OID `json:"oid"`
}
