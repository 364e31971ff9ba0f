package cluster

import (
	"context"
	"strconv"

	"github.com/hashicorp/serf/serf"
)

// MetaVersion is the version of the metadata command set this build
// applies. Every node advertises it (Serf tag "mv"; a node without the tag
// is version 1). A command newer nodes know and older ones do not would
// leave their states apart, so such a command works only once the
// cluster's version (State.MetaVersion) is at least the one that brought
// it, and the cluster's version rises only when every live member runs a
// build that applies it; a member older than the cluster's version is
// then kept out of Raft and of the epoch until it is upgraded.
//
//	1: everything before SCSI reservations
//	2: CmdResv (SCSI reservations), CmdMetaVersion
const MetaVersion uint32 = 2

const metaVersionTag = "mv"

// tagMetaVersion is the metadata version a member advertises.
func tagMetaVersion(tags map[string]string) uint32 {
	v, err := strconv.ParseUint(tags[metaVersionTag], 10, 32)
	if err != nil || v == 0 {
		return 1
	}
	return uint32(v)
}

// AliveMetaVersion is the lowest metadata version among live members
// (this node's own when it is alone): what a format may start the cluster
// at.
func (n *Node) AliveMetaVersion() uint32 { return aliveMetaVersion(n.serf.Members()) }

// aliveMetaVersion is the lowest metadata version among the live members,
// at most this build's.
func aliveMetaVersion(members []serf.Member) uint32 {
	v := MetaVersion
	for _, m := range members {
		if m.Status == serf.StatusAlive {
			v = min(v, tagMetaVersion(m.Tags))
		}
	}
	return v
}

// reconcileMetaVersion raises the cluster's metadata version once every
// live member advertises a newer one (the leader only).
func (n *Node) reconcileMetaVersion(ctx context.Context, members []serf.Member) {
	var formatted bool
	var cur uint32
	n.fsm.Read(func(s *State) { formatted, cur = s.Format != nil, s.MetaVersion })
	if !formatted {
		return
	}
	want := aliveMetaVersion(members)
	if want <= cur {
		return
	}
	r, err := n.ApplyAsLeader(ctx, &Command{Op: CmdMetaVersion, MetaVersion: want})
	if err == nil {
		err = r.Err()
	}
	if err != nil {
		n.log.Warn("raising the metadata version failed", "from", cur, "to", want, "err", err)
		return
	}
	n.log.Info("metadata version raised: every live member runs it", "from", cur, "to", want)
}

// tooOld reports a live member whose build is older than the cluster's
// metadata version (logged once per member): it must not apply the log.
func (n *Node) tooOld(m serf.Member, clusterVersion uint32) bool {
	v := tagMetaVersion(m.Tags)
	if v >= clusterVersion {
		return false
	}
	n.mu.Lock()
	warned := n.warnedOld[m.Name]
	if n.warnedOld == nil {
		n.warnedOld = map[string]bool{}
	}
	n.warnedOld[m.Name] = true
	n.mu.Unlock()
	if !warned {
		n.log.Warn("member runs an older build than the cluster's metadata needs: kept out until upgraded",
			"node", m.Name, "member_version", v, "cluster_version", clusterVersion)
	}
	return true
}
