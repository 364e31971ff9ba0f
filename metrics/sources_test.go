package metrics

import (
	"strings"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// fakeSources is the daemon seam: settable stats, optional panics.
type fakeSources struct {
	mu    sync.Mutex
	st    StoreStats
	cl    ClusterStats
	rec   RecoveryStats
	panic string // method name to panic in
	calls int
}

func newFakeSources() *fakeSources {
	return &fakeSources{
		st: StoreStats{Capacity: 1 << 40, Used: 3 << 30, Free: 1<<40 - 3<<30, Objects: 12345, StaleObjects: 7},
		cl: ClusterStats{Epoch: 42, MembersAlive: 5, MembersFailed: 1, MembersLeft: 2, Leader: true,
			Healthy: true, Voters: 3, Formatted: true, VDIs: 10, Snapshots: 4},
		rec: RecoveryStats{Active: true, Epoch: 42, Queued: 100, Done: 50, Failed: 2, BytesDone: 200 << 20, Rate: 1.5e6},
	}
}

func (f *fakeSources) Store() StoreStats {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	if f.panic == "Store" {
		panic("store on fire")
	}
	return f.st
}

func (f *fakeSources) Cluster() ClusterStats {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	if f.panic == "Cluster" {
		panic("split brain")
	}
	return f.cl
}

func (f *fakeSources) Recovery() RecoveryStats {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	if f.panic == "Recovery" {
		panic("recovery confused")
	}
	return f.rec
}

const wantSources = `
# HELP gosheep_cluster_epoch Current cluster epoch (bumped on every membership change).
# TYPE gosheep_cluster_epoch gauge
gosheep_cluster_epoch 42
# HELP gosheep_cluster_formatted 1 once the cluster has been formatted, else 0.
# TYPE gosheep_cluster_formatted gauge
gosheep_cluster_formatted 1
# HELP gosheep_cluster_healthy 1 if enough members are alive to keep every VDI's redundancy, else 0.
# TYPE gosheep_cluster_healthy gauge
gosheep_cluster_healthy 1
# HELP gosheep_cluster_leader 1 if this node is the Raft leader of the metadata cluster, else 0.
# TYPE gosheep_cluster_leader gauge
gosheep_cluster_leader 1
# HELP gosheep_cluster_members Cluster members in this node's view, by state: alive, failed or left.
# TYPE gosheep_cluster_members gauge
gosheep_cluster_members{state="alive"} 5
gosheep_cluster_members{state="failed"} 1
gosheep_cluster_members{state="left"} 2
# HELP gosheep_cluster_snapshots Live (not deleted) VDI snapshots.
# TYPE gosheep_cluster_snapshots gauge
gosheep_cluster_snapshots 4
# HELP gosheep_cluster_vdis Live (not deleted) VDIs, snapshots excluded.
# TYPE gosheep_cluster_vdis gauge
gosheep_cluster_vdis 10
# HELP gosheep_cluster_voters Raft voters in the metadata cluster.
# TYPE gosheep_cluster_voters gauge
gosheep_cluster_voters 3
# HELP gosheep_recovery_active 1 while this node is recovering objects for a new epoch, else 0.
# TYPE gosheep_recovery_active gauge
gosheep_recovery_active 1
# HELP gosheep_recovery_epoch Epoch the current (or last) recovery run is recovering to.
# TYPE gosheep_recovery_epoch gauge
gosheep_recovery_epoch 42
# HELP gosheep_recovery_rate_bytes_per_second Recent recovery throughput of this node.
# TYPE gosheep_recovery_rate_bytes_per_second gauge
gosheep_recovery_rate_bytes_per_second 1.5e+06
# HELP gosheep_recovery_run_bytes Bytes recovered so far by the current (or last) recovery run.
# TYPE gosheep_recovery_run_bytes gauge
gosheep_recovery_run_bytes 2.097152e+08
# HELP gosheep_recovery_run_objects Objects of the current (or last) recovery run, by state: queued, done or failed.
# TYPE gosheep_recovery_run_objects gauge
gosheep_recovery_run_objects{state="done"} 50
gosheep_recovery_run_objects{state="failed"} 2
gosheep_recovery_run_objects{state="queued"} 100
# HELP gosheep_store_capacity_bytes Size of the file system holding this node's object store.
# TYPE gosheep_store_capacity_bytes gauge
gosheep_store_capacity_bytes 1.099511627776e+12
# HELP gosheep_store_free_bytes Bytes available for new objects on this node's object store.
# TYPE gosheep_store_free_bytes gauge
gosheep_store_free_bytes 1.096290402304e+12
# HELP gosheep_store_objects Live objects (replicas and erasure-coded strips) in this node's store.
# TYPE gosheep_store_objects gauge
gosheep_store_objects 12345
# HELP gosheep_store_stale_objects Object copies kept from older epochs, awaiting reclaim.
# TYPE gosheep_store_stale_objects gauge
gosheep_store_stale_objects 7
# HELP gosheep_store_used_bytes Bytes in use on the file system holding this node's object store.
# TYPE gosheep_store_used_bytes gauge
gosheep_store_used_bytes 3.221225472e+09
`

func TestSourcesCollectAndCompare(t *testing.T) {
	f := newFakeSources()
	m := New(nil, f)
	if err := testutil.CollectAndCompare(m.src, strings.NewReader(wantSources)); err != nil {
		t.Fatal(err)
	}
	// Values are read at scrape time: a change shows in the next scrape
	// without anything polling.
	f.mu.Lock()
	f.cl.Epoch, f.cl.Leader, f.cl.MembersFailed = 43, false, 0
	f.rec.Active = false
	f.mu.Unlock()
	want := strings.NewReplacer(
		"\ngosheep_cluster_epoch 42", "\ngosheep_cluster_epoch 43",
		"\ngosheep_cluster_leader 1", "\ngosheep_cluster_leader 0",
		"\n"+`gosheep_cluster_members{state="failed"} 1`, "\n"+`gosheep_cluster_members{state="failed"} 0`,
		"\ngosheep_recovery_active 1", "\ngosheep_recovery_active 0",
	).Replace(wantSources)
	if err := testutil.CollectAndCompare(m.src, strings.NewReader(want)); err != nil {
		t.Fatal(err)
	}
	// One call per source per scrape.
	f.mu.Lock()
	calls := f.calls
	f.mu.Unlock()
	if calls != 6 {
		t.Errorf("%d Sources calls for 2 scrapes, want 6", calls)
	}
}

// TestSourcesPanic: a panicking source loses only its own metrics, the
// scrape reports an error naming it, and the panic is counted.
func TestSourcesPanic(t *testing.T) {
	for _, which := range []string{"Store", "Cluster", "Recovery"} {
		t.Run(which, func(t *testing.T) {
			f := newFakeSources()
			f.panic = which
			reg := prometheus.NewRegistry()
			m := New(reg, f)
			mfs, err := reg.Gather()
			if err == nil || !strings.Contains(err.Error(), "Sources."+which+" panicked") {
				t.Fatalf("gather error %v, want one naming Sources.%s", err, which)
			}
			have := map[string]bool{}
			for _, mf := range mfs {
				have[mf.GetName()] = true
			}
			for name, from := range map[string]string{
				"gosheep_store_used_bytes": "Store", "gosheep_cluster_epoch": "Cluster", "gosheep_recovery_active": "Recovery",
			} {
				if have[name] == (from == which) {
					t.Errorf("%s present=%v with %s panicking", name, have[name], which)
				}
			}
			if got := testutil.ToFloat64(m.panics.WithLabelValues("metrics")); got != 1 {
				t.Errorf("panics_recovered_total{component=metrics} = %v, want 1", got)
			}
		})
	}
}

func TestNoSources(t *testing.T) {
	reg := prometheus.NewRegistry()
	New(reg, nil)
	n, err := testutil.GatherAndCount(reg, "gosheep_cluster_epoch", "gosheep_store_used_bytes")
	if err != nil || n != 0 {
		t.Errorf("without Sources: %d source series, err %v", n, err)
	}
}
