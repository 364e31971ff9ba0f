package sheep

import (
	"github.com/gosheep/gosheep/cluster"
	"github.com/gosheep/gosheep/metrics"
)

// Store implements metrics.Sources.
func (d *Daemon) Store() metrics.StoreStats {
	u, err := d.store.Usage()
	if err != nil {
		return metrics.StoreStats{}
	}
	return metrics.StoreStats{Capacity: u.Capacity, Used: u.Used, Free: u.Free, Objects: int64(u.Objects), StaleObjects: d.store.StaleCount()}
}

// Cluster implements metrics.Sources.
func (d *Daemon) Cluster() metrics.ClusterStats {
	st := metrics.ClusterStats{Leader: d.node.IsLeader(), Healthy: d.node.Healthy()}
	for _, m := range d.node.Members() {
		switch m.Status {
		case "alive":
			st.MembersAlive++
		case "failed":
			st.MembersFailed++
		case "left":
			st.MembersLeft++
		}
		if m.Voter {
			st.Voters++
		}
	}
	d.node.FSM().Read(func(s *cluster.State) {
		st.Epoch = s.Epoch()
		st.Formatted = s.Format != nil
		for _, v := range s.VDIs {
			switch {
			case v.Deleted:
			case v.IsSnapshot():
				st.Snapshots++
			default:
				st.VDIs++
			}
		}
	})
	return st
}

// Recovery implements metrics.Sources.
func (d *Daemon) Recovery() metrics.RecoveryStats {
	s := d.rec.Status()
	rate := 0.0
	if el := s.Finished.Sub(s.Started).Seconds(); s.Active || el <= 0 {
		if e := timeSince(s.Started); e > 0 {
			rate = float64(s.Bytes) / e
		}
	} else {
		rate = float64(s.Bytes) / el
	}
	return metrics.RecoveryStats{Active: s.Active, Epoch: s.Epoch, Queued: s.Queued, Done: s.Done, Failed: s.Failed, BytesDone: s.Bytes, Rate: rate}
}
