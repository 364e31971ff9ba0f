package metrics_test

import (
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/gosheep/gosheep/metrics"
	"github.com/gosheep/gosheep/proto"
)

type staticSources struct{}

func (staticSources) Store() metrics.StoreStats {
	return metrics.StoreStats{Capacity: 100 << 30, Used: 40 << 30, Free: 60 << 30, Objects: 900}
}

func (staticSources) Cluster() metrics.ClusterStats {
	return metrics.ClusterStats{Epoch: 7, MembersAlive: 3, Voters: 3, Leader: true, Healthy: true, Formatted: true, VDIs: 2}
}

func (staticSources) Recovery() metrics.RecoveryStats {
	return metrics.RecoveryStats{Epoch: 7, Done: 10, BytesDone: 40 << 20}
}

// scrape fetches url over a real TCP connection and parses the text format
// as Prometheus would.
func scrape(t *testing.T, url string) map[string]*dto.MetricFamily {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Accept", string(expfmt.NewFormat(expfmt.TypeTextPlain)))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("status %d: %s", resp.StatusCode, b)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
		t.Fatalf("content type %q", ct)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parse: %v", err)
	}
	return mfs
}

func TestHandlerOverHTTP(t *testing.T) {
	reg := metrics.NewRegistry()
	m := metrics.New(reg, staticSources{})
	srv := httptest.NewServer(m.Handler())
	defer srv.Close()

	m.Request(metrics.FrontendNBD, "read", 65536, 300*time.Microsecond, nil)
	m.Request(metrics.FrontendNBD, "write", 65536, 2*time.Millisecond, nil)
	m.Request(metrics.FrontendISCSI, "READ(10)", 4096, time.Millisecond, nil)
	m.Request(metrics.FrontendNative, "WRITE_OBJ", 4096, time.Millisecond, proto.ResNoSpace)
	m.Sessions(metrics.FrontendISCSI, 2)
	m.ChecksumError()
	m.ScrubFinding(metrics.ScrubUnrepairable)

	mfs := scrape(t, srv.URL+"/metrics")
	for name, typ := range map[string]dto.MetricType{
		"gosheep_requests_total":                 dto.MetricType_COUNTER,
		"gosheep_request_duration_seconds":       dto.MetricType_HISTOGRAM,
		"gosheep_request_errors_total":           dto.MetricType_COUNTER,
		"gosheep_read_bytes_total":               dto.MetricType_COUNTER,
		"gosheep_written_bytes_total":            dto.MetricType_COUNTER,
		"gosheep_sessions":                       dto.MetricType_GAUGE,
		"gosheep_store_used_bytes":               dto.MetricType_GAUGE,
		"gosheep_cluster_epoch":                  dto.MetricType_GAUGE,
		"gosheep_cluster_members":                dto.MetricType_GAUGE,
		"gosheep_recovery_run_objects":           dto.MetricType_GAUGE,
		"gosheep_recovery_rate_bytes_per_second": dto.MetricType_GAUGE,
		"gosheep_store_checksum_errors_total":    dto.MetricType_COUNTER,
		"gosheep_scrub_findings_total":           dto.MetricType_COUNTER,
		"gosheep_recovery_objects_total":         dto.MetricType_COUNTER,
		"gosheep_panics_recovered_total":         dto.MetricType_COUNTER,
		"gosheep_lent_reads_total":               dto.MetricType_COUNTER,
		"gosheep_copy_comparisons_total":         dto.MetricType_COUNTER,
		"go_goroutines":                          dto.MetricType_GAUGE,
		"process_cpu_seconds_total":              dto.MetricType_COUNTER,
		"promhttp_metric_handler_requests_total": dto.MetricType_COUNTER,
	} {
		mf := mfs[name]
		if mf == nil {
			t.Errorf("%s missing from /metrics", name)
			continue
		}
		if mf.GetType() != typ {
			t.Errorf("%s is %v, want %v", name, mf.GetType(), typ)
		}
	}

	value := func(name string, labels map[string]string) (float64, bool) {
		mf := mfs[name]
		if mf == nil {
			return 0, false
		}
	next:
		for _, m := range mf.GetMetric() {
			got := map[string]string{}
			for _, l := range m.GetLabel() {
				got[l.GetName()] = l.GetValue()
			}
			for k, v := range labels {
				if got[k] != v {
					continue next
				}
			}
			switch mf.GetType() {
			case dto.MetricType_COUNTER:
				return m.GetCounter().GetValue(), true
			case dto.MetricType_GAUGE:
				return m.GetGauge().GetValue(), true
			case dto.MetricType_HISTOGRAM:
				return float64(m.GetHistogram().GetSampleCount()), true
			}
		}
		return 0, false
	}
	for _, c := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"gosheep_requests_total", map[string]string{"frontend": "nbd", "op": "read"}, 1},
		{"gosheep_request_duration_seconds", map[string]string{"frontend": "iscsi", "op": "read"}, 1},
		{"gosheep_request_errors_total", map[string]string{"frontend": "native", "op": "write", "result": "no_space"}, 1},
		{"gosheep_read_bytes_total", map[string]string{"frontend": "nbd"}, 65536},
		{"gosheep_written_bytes_total", map[string]string{"frontend": "nbd"}, 65536},
		{"gosheep_sessions", map[string]string{"frontend": "iscsi"}, 2},
		{"gosheep_sessions", map[string]string{"frontend": "nbd"}, 0},
		{"gosheep_store_used_bytes", nil, 40 << 30},
		{"gosheep_cluster_epoch", nil, 7},
		{"gosheep_cluster_members", map[string]string{"state": "alive"}, 3},
		{"gosheep_recovery_run_objects", map[string]string{"state": "done"}, 10},
		{"gosheep_store_checksum_errors_total", nil, 1},
		{"gosheep_scrub_findings_total", map[string]string{"kind": "unrepairable"}, 1},
		{"gosheep_scrub_findings_total", map[string]string{"kind": "repaired"}, 0},
	} {
		got, ok := value(c.name, c.labels)
		if !ok || got != c.want {
			t.Errorf("%s%v = %v (present %v), want %v", c.name, c.labels, got, ok, c.want)
		}
	}

	// Buckets: the histogram is a real classic histogram with le labels.
	h := mfs["gosheep_request_duration_seconds"].GetMetric()[0].GetHistogram()
	if n := len(h.GetBucket()); n < 15 {
		t.Errorf("%d buckets", n)
	}

	// A second scrape sees the handler's own request counter move and new
	// observations, over the same socket-backed server.
	m.Request(metrics.FrontendNBD, "read", 1, time.Millisecond, nil)
	mfs = scrape(t, srv.URL+"/metrics")
	if got, _ := value("gosheep_requests_total", map[string]string{"frontend": "nbd", "op": "read"}); got != 2 {
		t.Errorf("after another read: %v", got)
	}
	if got, _ := value("promhttp_metric_handler_requests_total", map[string]string{"code": "200"}); got < 1 {
		t.Errorf("handler request counter %v", got)
	}
}

// panicky fails one source: the page must still be served (ContinueOnError).
type panicky struct{ staticSources }

func (panicky) Cluster() metrics.ClusterStats { panic("no quorum") }

func TestHandlerContinuesOnError(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := metrics.New(reg, panicky{})
	srv := httptest.NewServer(m.Handler())
	defer srv.Close()
	mfs := scrape(t, srv.URL)
	if mfs["gosheep_store_used_bytes"] == nil {
		t.Error("store metrics missing after a Cluster panic")
	}
	if mfs["gosheep_cluster_epoch"] != nil {
		t.Error("cluster metrics present although Cluster panicked")
	}
	// The registry collects in parallel, so the panic counter may have been
	// read before the source panicked: it shows by the next scrape.
	mfs = scrape(t, srv.URL)
	mf := mfs["gosheep_panics_recovered_total"]
	var found bool
	for _, mt := range mf.GetMetric() {
		for _, l := range mt.GetLabel() {
			if l.GetName() == "component" && l.GetValue() == "metrics" && mt.GetCounter().GetValue() >= 1 {
				found = true
			}
		}
	}
	if !found {
		t.Error("panic not counted under component=metrics")
	}
	if mfs["promhttp_metric_handler_errors_total"] == nil {
		t.Error("handler error counter missing")
	}
}

// TestHandlerWrappedRegisterer: a Registerer that cannot Gather (a prefixing
// wrapper) still gets a working handler serving gosheep's collectors, and
// the collectors also land in the wrapped registry.
func TestHandlerWrappedRegisterer(t *testing.T) {
	outer := prometheus.NewRegistry()
	m := metrics.New(prometheus.WrapRegistererWith(prometheus.Labels{"node": "n1"}, outer), staticSources{})
	m.Request(metrics.FrontendNBD, "read", 1, time.Millisecond, nil)
	srv := httptest.NewServer(m.Handler())
	defer srv.Close()
	if mfs := scrape(t, srv.URL); mfs["gosheep_cluster_epoch"] == nil || mfs["gosheep_requests_total"] == nil {
		t.Error("private registry does not serve gosheep metrics")
	}
	mfs, err := outer.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var ok bool
	for _, mf := range mfs {
		if mf.GetName() != "gosheep_requests_total" {
			continue
		}
		for _, l := range mf.GetMetric()[0].GetLabel() {
			ok = ok || (l.GetName() == "node" && l.GetValue() == "n1")
		}
	}
	if !ok {
		t.Error("gosheep_requests_total{node=\"n1\"} not in the wrapped registry")
	}
}

// TestHandlerConcurrentScrapes: many scrapers at once get either the page
// or a quick 503 from the in-flight limit, never an error or a hang.
func TestHandlerConcurrentScrapes(t *testing.T) {
	m := metrics.New(nil, staticSources{})
	srv := httptest.NewServer(m.Handler())
	defer srv.Close()
	var wg sync.WaitGroup
	var mu sync.Mutex
	codes := map[int]int{}
	for range 16 {
		wg.Go(func() {
			resp, err := http.Get(srv.URL)
			if err != nil {
				t.Error(err)
				return
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			mu.Lock()
			codes[resp.StatusCode]++
			mu.Unlock()
		})
	}
	wg.Wait()
	for c := range codes {
		if c != http.StatusOK && c != http.StatusServiceUnavailable {
			t.Errorf("status %d", c)
		}
	}
	if codes[http.StatusOK] == 0 {
		t.Errorf("no scrape succeeded: %v", codes)
	}
}

func TestRecorderInterface(t *testing.T) {
	var r metrics.Recorder = metrics.New(nil, nil)
	r.Request("nbd", "read", 1, time.Millisecond, errors.New("x"))
	r.Sessions("nbd", 1)
}
