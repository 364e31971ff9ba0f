package metrics

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// Sources is implemented by the daemon. Its methods are called on every
// scrape (one call each), so the exported values are always current without
// a polling goroutine. They must be cheap and must not block for long: a
// scrape waits for them.
type Sources interface {
	Store() StoreStats
	Cluster() ClusterStats
	Recovery() RecoveryStats
}

// StoreStats describes this node's local object store.
type StoreStats struct {
	Capacity, Used, Free uint64 // bytes of the store's file system
	Objects              int64  // live objects (replicas and EC strips)
	StaleObjects         int64  // copies kept from older epochs, awaiting reclaim
}

// ClusterStats is this node's view of the cluster.
type ClusterStats struct {
	Epoch                                    uint32
	MembersAlive, MembersFailed, MembersLeft int
	Leader                                   bool // this node is the Raft leader
	Healthy                                  bool // enough members for every VDI's redundancy
	Voters                                   int  // Raft voters
	Formatted                                bool
	VDIs, Snapshots                          int // live (not deleted) VDIs and snapshots
}

// RecoveryStats describes the current, or else the last, recovery run.
type RecoveryStats struct {
	Active               bool
	Epoch                uint32 // epoch being recovered to
	Queued, Done, Failed int64  // objects
	BytesDone            uint64
	Rate                 float64 // bytes per second, recent
}

// sourceCollector turns Sources into const metrics at scrape time.
type sourceCollector struct {
	src Sources
	m   *Metrics // counts panics of src

	storeCapacity, storeUsed, storeFree, storeObjects, storeStale *prometheus.Desc

	epoch, members, leader, healthy, voters, formatted, vdis, snapshots *prometheus.Desc

	recActive, recEpoch, recObjects, recBytes, recRate *prometheus.Desc
}

func newSourceCollector(src Sources, m *Metrics) *sourceCollector {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(namespace+"_"+name, help, labels, nil)
	}
	return &sourceCollector{
		src: src, m: m,
		storeCapacity: d("store_capacity_bytes", "Size of the file system holding this node's object store."),
		storeUsed:     d("store_used_bytes", "Bytes in use on the file system holding this node's object store."),
		storeFree:     d("store_free_bytes", "Bytes available for new objects on this node's object store."),
		storeObjects:  d("store_objects", "Live objects (replicas and erasure-coded strips) in this node's store."),
		storeStale:    d("store_stale_objects", "Object copies kept from older epochs, awaiting reclaim."),

		epoch:     d("cluster_epoch", "Current cluster epoch (bumped on every membership change)."),
		members:   d("cluster_members", "Cluster members in this node's view, by state: alive, failed or left.", "state"),
		leader:    d("cluster_leader", "1 if this node is the Raft leader of the metadata cluster, else 0."),
		healthy:   d("cluster_healthy", "1 if enough members are alive to keep every VDI's redundancy, else 0."),
		voters:    d("cluster_voters", "Raft voters in the metadata cluster."),
		formatted: d("cluster_formatted", "1 once the cluster has been formatted, else 0."),
		vdis:      d("cluster_vdis", "Live (not deleted) VDIs, snapshots excluded."),
		snapshots: d("cluster_snapshots", "Live (not deleted) VDI snapshots."),

		recActive:  d("recovery_active", "1 while this node is recovering objects for a new epoch, else 0."),
		recEpoch:   d("recovery_epoch", "Epoch the current (or last) recovery run is recovering to."),
		recObjects: d("recovery_run_objects", "Objects of the current (or last) recovery run, by state: queued, done or failed.", "state"),
		recBytes:   d("recovery_run_bytes", "Bytes recovered so far by the current (or last) recovery run."),
		recRate:    d("recovery_rate_bytes_per_second", "Recent recovery throughput of this node."),
	}
}

// Describe implements prometheus.Collector.
func (c *sourceCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{
		c.storeCapacity, c.storeUsed, c.storeFree, c.storeObjects, c.storeStale,
		c.epoch, c.members, c.leader, c.healthy, c.voters, c.formatted, c.vdis, c.snapshots,
		c.recActive, c.recEpoch, c.recObjects, c.recBytes, c.recRate,
	} {
		ch <- d
	}
}

// Collect implements prometheus.Collector. A panicking source costs only its
// own metrics: the others are still exported and the scrape reports an error.
func (c *sourceCollector) Collect(ch chan<- prometheus.Metric) {
	g := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	if s, ok := call(c, ch, c.storeCapacity, "Store", c.src.Store); ok {
		g(c.storeCapacity, float64(s.Capacity))
		g(c.storeUsed, float64(s.Used))
		g(c.storeFree, float64(s.Free))
		g(c.storeObjects, float64(s.Objects))
		g(c.storeStale, float64(s.StaleObjects))
	}
	if s, ok := call(c, ch, c.epoch, "Cluster", c.src.Cluster); ok {
		g(c.epoch, float64(s.Epoch))
		g(c.members, float64(s.MembersAlive), "alive")
		g(c.members, float64(s.MembersFailed), "failed")
		g(c.members, float64(s.MembersLeft), "left")
		g(c.leader, b2f(s.Leader))
		g(c.healthy, b2f(s.Healthy))
		g(c.voters, float64(s.Voters))
		g(c.formatted, b2f(s.Formatted))
		g(c.vdis, float64(s.VDIs))
		g(c.snapshots, float64(s.Snapshots))
	}
	if s, ok := call(c, ch, c.recActive, "Recovery", c.src.Recovery); ok {
		g(c.recActive, b2f(s.Active))
		g(c.recEpoch, float64(s.Epoch))
		g(c.recObjects, float64(s.Queued), "queued")
		g(c.recObjects, float64(s.Done), "done")
		g(c.recObjects, float64(s.Failed), "failed")
		g(c.recBytes, float64(s.BytesDone))
		g(c.recRate, s.Rate)
	}
}

// call runs one Sources method, turning a panic into an invalid metric (a
// scrape error naming the method) and a count in panics_recovered_total.
func call[T any](c *sourceCollector, ch chan<- prometheus.Metric, d *prometheus.Desc, name string, f func() T) (v T, ok bool) {
	defer func() {
		if r := recover(); r != nil {
			c.m.PanicRecovered("metrics")
			ch <- prometheus.NewInvalidMetric(d, fmt.Errorf("metrics: Sources.%s panicked: %v", name, r))
			ok = false
		}
	}()
	return f(), true
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
