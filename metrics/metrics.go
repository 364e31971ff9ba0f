package metrics

import (
	"net/http"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

const namespace = "gosheep"

// latencyBuckets span a page-cache hit on a local store (~50µs) to a request
// that waited out an epoch change or a slow peer (10s), in 1-2.5-5 steps.
var latencyBuckets = []float64{
	50e-6, 100e-6, 250e-6, 500e-6,
	1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 500e-3,
	1, 2.5, 5, 10,
}

// Scrape limits: a scrape gathers everything in memory, so a flood of
// /metrics requests must not pile up gathers.
const (
	maxScrapesInFlight = 4
	scrapeTimeout      = 10 * time.Second
)

// Metrics is the Prometheus-backed Recorder plus the daemon's event
// counters. All methods are safe for concurrent use and are no-ops on a nil
// *Metrics, so a component can hold one unconditionally.
type Metrics struct {
	requests *prometheus.CounterVec
	latency  *prometheus.HistogramVec
	errs     *prometheus.CounterVec
	readB    *prometheus.CounterVec
	writtenB *prometheus.CounterVec
	sessions *prometheus.GaugeVec

	checksumErrors  prometheus.Counter
	scrubFindings   *prometheus.CounterVec
	recoveryObjects *prometheus.CounterVec
	recoveryBytes   prometheus.Counter
	readRepairs     prometheus.Counter
	lentReads       *prometheus.CounterVec
	comparisons     *prometheus.CounterVec
	epochChanges    prometheus.Counter
	panics          *prometheus.CounterVec

	// series caches the label children of each (front end, op) pair so the
	// hot path does no label hashing or allocation; filled on first use so
	// only pairs that occur are exported.
	series [numFrontends][numOps]atomic.Pointer[series]

	src     prometheus.Collector // scrape-time collector; nil without Sources
	handler http.Handler
}

type series struct {
	fe, op   string // label values, for the error counters made on demand
	requests prometheus.Counter
	latency  prometheus.Observer
	bytes    prometheus.Counter // read or written counter; nil for control ops
	errs     [numResults]atomic.Pointer[counter]
}

// counter boxes a Counter so it fits an atomic.Pointer.
type counter struct{ prometheus.Counter }

var _ Recorder = (*Metrics)(nil)

// New builds the collectors and registers them with reg. A nil reg gets a
// private registry. src, if not nil, is read on every scrape; a nil src
// exports only the event metrics. New panics, like prometheus.MustRegister,
// if reg already holds collectors with the same names (for instance a
// second New on the same registry): that is a wiring bug.
func New(reg prometheus.Registerer, src Sources) *Metrics {
	fe := []string{"frontend"}
	feOp := []string{"frontend", "op"}
	m := &Metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "requests_total",
			Help: "Requests completed by a front end, by op class; includes failed requests.",
		}, feOp),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: namespace, Name: "request_duration_seconds",
			Help:    "Time from a request's arrival to its response, by front end and op class.",
			Buckets: latencyBuckets,
		}, feOp),
		errs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "request_errors_total",
			Help: "Failed requests by front end, op class and result (sheepdog result name, or timeout, canceled, other).",
		}, []string{"frontend", "op", "result"}),
		sessions: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: namespace, Name: "sessions",
			Help: "Open sessions (iSCSI sessions, NBD and native connections) by front end.",
		}, fe),
		checksumErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: namespace, Name: "store_checksum_errors_total",
			Help: "Object blocks whose checksum did not match when the local store read them (bit rot, torn writes).",
		}),
		scrubFindings: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "scrub_findings_total",
			Help: "Bad object copies found by the scrubber, by kind: repaired, unrepairable, or differing (sound copies that disagree).",
		}, []string{"kind"}),
		recoveryObjects: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "recovery_objects_total",
			Help: "Objects handled by recovery, by outcome: done, failed or skipped.",
		}, []string{"outcome"}),
		recoveryBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: namespace, Name: "recovery_bytes_total",
			Help: "Object bytes copied onto this node by recovery.",
		}),
		readRepairs: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: namespace, Name: "read_repairs_total",
			Help: "Object copies healed (or erasure-coded objects whose strips were rebuilt) by the gateway after a read found them missing, stale or corrupt.",
		}),
		comparisons: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "copy_comparisons_total",
			Help: "Replicated objects whose copies the scrub or the converge pass compared, by what decided: fingerprint (the copies' checksum tables agreed, no data read) or data (the copies' data were hashed).",
		}, []string{"by"}),
		lentReads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "lent_reads_total",
			Help: "Large reads sent without copying them through this node: local (from this node's copy by sendfile) or relayed (another node's copy spliced through a pipe).",
		}, []string{"how"}),
		epochChanges: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: namespace, Name: "epoch_changes_total",
			Help: "Cluster epoch changes (membership changes) this node has applied.",
		}),
		panics: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "panics_recovered_total",
			Help: "Panics recovered (and survived) by a component; each one is a bug.",
		}, []string{"component"}),
	}
	m.readB = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "read_bytes_total",
		Help: "Data bytes returned by read requests, by front end.",
	}, fe)
	m.writtenB = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "written_bytes_total",
		Help: "Data bytes carried by write requests (write, write zeroes, compare-and-write, create, EC write), by front end.",
	}, fe)
	// Pre-create the series of the known label values so rate(), increase()
	// and alerts see the first event instead of a series appearing out of
	// nowhere. "other" appears only if someone reports it.
	for _, f := range frontendLabels[1:] {
		m.readB.WithLabelValues(f)
		m.writtenB.WithLabelValues(f)
		m.sessions.WithLabelValues(f)
	}
	for _, k := range []string{ScrubRepaired, ScrubUnrepairable, ScrubDiffering} {
		m.scrubFindings.WithLabelValues(k)
	}
	for _, o := range []string{RecoveryDone, RecoveryFailed, RecoverySkipped} {
		m.recoveryObjects.WithLabelValues(o)
	}
	for _, c := range panicComponents {
		m.panics.WithLabelValues(c)
	}
	for _, h := range []string{LentLocal, LentRelayed} {
		m.lentReads.WithLabelValues(h)
	}
	for _, b := range []string{CompareFingerprint, CompareData} {
		m.comparisons.WithLabelValues(b)
	}

	cs := []prometheus.Collector{
		m.requests, m.latency, m.errs, m.readB, m.writtenB, m.sessions,
		m.checksumErrors, m.scrubFindings, m.recoveryObjects, m.recoveryBytes,
		m.readRepairs, m.lentReads, m.comparisons, m.epochChanges, m.panics,
	}
	if src != nil {
		m.src = newSourceCollector(src, m)
		cs = append(cs, m.src)
	}

	// The handler needs a Gatherer. A registry does both; a bare Registerer
	// (say, a prefixing wrapper) gets a private registry that serves just
	// these collectors.
	var gath prometheus.Gatherer
	var hreg prometheus.Registerer // where the handler counts its own scrapes
	if g, ok := reg.(prometheus.Gatherer); ok {
		reg.MustRegister(cs...)
		gath, hreg = g, reg
	} else {
		priv := prometheus.NewRegistry()
		priv.MustRegister(cs...)
		if reg != nil {
			reg.MustRegister(cs...)
		}
		gath, hreg = priv, priv
	}
	h := promhttp.HandlerFor(gath, promhttp.HandlerOpts{
		// One broken source must not blank the whole page.
		ErrorHandling:       promhttp.ContinueOnError,
		Registry:            hreg,
		MaxRequestsInFlight: maxScrapesInFlight,
		Timeout:             scrapeTimeout,
	})
	m.handler = promhttp.InstrumentMetricHandler(hreg, h)
	return m
}

// NewRegistry returns a registry with the Go runtime and process collectors,
// as the daemon serves them next to gosheep's own metrics.
func NewRegistry() *prometheus.Registry {
	r := prometheus.NewRegistry()
	r.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return r
}

// Handler serves the registry New was given in the Prometheus exposition
// formats (text or protobuf, by content negotiation), at most 4 scrapes at
// once and 10 s each.
func (m *Metrics) Handler() http.Handler {
	if m == nil {
		return http.NotFoundHandler()
	}
	return m.handler
}

// Request implements Recorder. Unknown front ends and ops are counted as
// "other"; bytes of control ops are not counted as data.
func (m *Metrics) Request(frontend, op string, bytes int, d time.Duration, err error) {
	if m == nil {
		return
	}
	s := m.seriesFor(frontendIndex(frontend), opIndex(op))
	s.requests.Inc()
	if d < 0 {
		d = 0 // a clock step must not land in a nonsense bucket
	}
	s.latency.Observe(d.Seconds())
	if bytes > 0 && s.bytes != nil {
		s.bytes.Add(float64(bytes))
	}
	if err != nil {
		m.requestError(s, err)
	}
}

func (m *Metrics) seriesFor(f, o int) *series {
	p := &m.series[f][o]
	if s := p.Load(); s != nil {
		return s
	}
	fl, ol := frontendLabels[f], opLabels[o]
	s := &series{
		fe:       fl,
		op:       ol,
		requests: m.requests.WithLabelValues(fl, ol),
		latency:  m.latency.WithLabelValues(fl, ol),
	}
	switch dataDirection(o) {
	case +1:
		s.bytes = m.readB.WithLabelValues(fl)
	case -1:
		s.bytes = m.writtenB.WithLabelValues(fl)
	}
	if p.CompareAndSwap(nil, s) {
		return s
	}
	return p.Load() // another goroutine won; its children are the same ones
}

func (m *Metrics) requestError(s *series, err error) {
	r := resultIndex(err)
	p := &s.errs[r]
	c := p.Load()
	if c == nil {
		c = &counter{m.errs.WithLabelValues(s.fe, s.op, resultName(r))}
		if !p.CompareAndSwap(nil, c) {
			c = p.Load()
		}
	}
	c.Inc()
}

// Sessions implements Recorder.
func (m *Metrics) Sessions(frontend string, delta int) {
	if m == nil {
		return
	}
	// Once per connection, not per request: the label lookup is fine here.
	m.sessions.WithLabelValues(frontendLabels[frontendIndex(frontend)]).Add(float64(delta))
}

// ChecksumError counts one block whose stored checksum did not match.
func (m *Metrics) ChecksumError() {
	if m != nil {
		m.checksumErrors.Inc()
	}
}

// ScrubFinding counts one bad copy found by the scrubber; kind is
// ScrubRepaired, ScrubUnrepairable or ScrubDiffering (anything else
// counts as "other").
func (m *Metrics) ScrubFinding(kind string) {
	if m != nil {
		m.scrubFindings.WithLabelValues(oneOf(kind, ScrubRepaired, ScrubUnrepairable, ScrubDiffering)).Inc()
	}
}

// RecoveryObject counts one object handled by recovery; outcome is
// RecoveryDone, RecoveryFailed or RecoverySkipped.
func (m *Metrics) RecoveryObject(outcome string) {
	if m != nil {
		m.recoveryObjects.WithLabelValues(oneOf(outcome, RecoveryDone, RecoveryFailed, RecoverySkipped)).Inc()
	}
}

// RecoveryBytes adds n bytes copied by recovery; n <= 0 is ignored.
func (m *Metrics) RecoveryBytes(n int64) {
	if m != nil && n > 0 {
		m.recoveryBytes.Add(float64(n))
	}
}

// ReadRepair counts one object copy rewritten after a failed or stale read.
func (m *Metrics) ReadRepair() {
	if m != nil {
		m.readRepairs.Inc()
	}
}

// LentRead counts one large read sent without a copy: how is LentLocal
// or LentRelayed (anything else is not counted).
func (m *Metrics) LentRead(how string) {
	if m != nil && (how == LentLocal || how == LentRelayed) {
		m.lentReads.WithLabelValues(how).Inc()
	}
}

// CopiesCompared counts one object whose copies were compared: by is
// CompareFingerprint or CompareData (anything else is not counted).
func (m *Metrics) CopiesCompared(by string) {
	if m != nil && (by == CompareFingerprint || by == CompareData) {
		m.comparisons.WithLabelValues(by).Inc()
	}
}

// EpochChange counts one cluster epoch change applied by this node.
func (m *Metrics) EpochChange() {
	if m != nil {
		m.epochChanges.Inc()
	}
}

// PanicRecovered counts one panic recovered in component: a front end name,
// "gateway", "volume", "store", "cluster", "recovery", "scrub", "sheep" or
// "metrics"; anything else counts as "other".
func (m *Metrics) PanicRecovered(component string) {
	if m != nil {
		m.panics.WithLabelValues(oneOf(component, panicComponents[:]...)).Inc()
	}
}
