package metrics

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"

	"github.com/gosheep/gosheep/proto"
)

// exercise touches every method so every family (including the lazily
// created ones) has at least one series.
func exercise(m *Metrics) {
	m.Request(FrontendNBD, "read", 4096, time.Millisecond, nil)
	m.Request(FrontendISCSI, "WRITE(10)", 512, 2*time.Millisecond, errors.New("boom"))
	m.Request(FrontendNative, "READ_OBJ", 100, time.Microsecond, proto.ResNoObj)
	m.Request(FrontendPeer, "WRITE_PEER", 100, time.Microsecond, nil)
	m.Sessions(FrontendISCSI, 1)
	m.ChecksumError()
	m.ScrubFinding(ScrubRepaired)
	m.RecoveryObject(RecoveryDone)
	m.RecoveryBytes(1 << 20)
	m.ReadRepair()
	m.EpochChange()
	m.PanicRecovered("gateway")
}

func TestLintEveryMetric(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := New(reg, newFakeSources())
	exercise(m)
	// The handler's own metrics are registered too; lint them as well.
	problems, err := testutil.GatherAndLint(reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint: %s: %s", p.Metric, p.Text)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	// Every gosheep family: a known type, Help text, and 18 source gauges
	// plus 13 event families present.
	n := 0
	for _, mf := range mfs {
		if !strings.HasPrefix(mf.GetName(), "gosheep_") {
			continue
		}
		n++
		if mf.GetHelp() == "" {
			t.Errorf("%s has no help", mf.GetName())
		}
		if mf.GetType() == dto.MetricType_UNTYPED {
			t.Errorf("%s is untyped", mf.GetName())
		}
	}
	if n != 33 {
		t.Errorf("gathered %d gosheep families, want 33", n)
	}
	// The scrape-time collector on its own, too.
	problems, err = testutil.CollectAndLint(m.src)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint (sources): %s: %s", p.Metric, p.Text)
	}
}

func TestRequestCountsAndBytes(t *testing.T) {
	m := New(nil, nil)
	m.Request(FrontendNBD, "read", 4096, 3*time.Millisecond, nil)
	m.Request(FrontendNBD, "read", 4096, 3*time.Millisecond, nil)
	m.Request(FrontendNBD, "write", 512, time.Millisecond, context.DeadlineExceeded)
	m.Request(FrontendNBD, "flush", 0, time.Millisecond, nil)
	m.Request(FrontendNBD, "block_status", 999, time.Millisecond, nil) // control payload: not data
	m.Request(FrontendISCSI, "READ(16)", 8192, time.Millisecond, nil)
	m.Request(FrontendNative, "CREATE_AND_WRITE_OBJ", 1000, time.Millisecond, fmt.Errorf("wrapped: %w", proto.NewError(proto.ResNoSpace, "full")))
	m.Request(FrontendNBD, "read", -5, -time.Second, nil) // nonsense is tolerated, not counted

	check := func(c prometheus.Collector, want float64) {
		t.Helper()
		if got := testutil.ToFloat64(c); got != want {
			t.Errorf("got %v, want %v", got, want)
		}
	}
	check(m.requests.WithLabelValues("nbd", "read"), 3)
	check(m.requests.WithLabelValues("nbd", "write"), 1)
	check(m.requests.WithLabelValues("nbd", "lookup"), 1)
	check(m.requests.WithLabelValues("iscsi", "read"), 1)
	check(m.requests.WithLabelValues("native", "create_and_write"), 1)
	check(m.readB.WithLabelValues("nbd"), 8192)
	check(m.writtenB.WithLabelValues("nbd"), 512)
	check(m.readB.WithLabelValues("iscsi"), 8192)
	check(m.writtenB.WithLabelValues("native"), 1000)
	check(m.errs.WithLabelValues("nbd", "write", "timeout"), 1)
	check(m.errs.WithLabelValues("native", "create_and_write", "no_space"), 1)
	if n := testutil.CollectAndCount(m.errs); n != 2 {
		t.Errorf("%d error series, want 2", n)
	}

	// Histogram: 3 nbd reads, two of them in the 5ms bucket's range and one
	// clamped to 0.
	h := histogram(t, m, "nbd", "read")
	if h.GetSampleCount() != 3 {
		t.Errorf("sample count %d, want 3", h.GetSampleCount())
	}
	for _, b := range h.GetBucket() {
		want := uint64(1)
		if b.GetUpperBound() >= 5e-3 {
			want = 3
		}
		if b.GetCumulativeCount() != want {
			t.Errorf("bucket le=%g: %d, want %d", b.GetUpperBound(), b.GetCumulativeCount(), want)
		}
	}
}

func histogram(t *testing.T, m *Metrics, fe, op string) *dto.Histogram {
	t.Helper()
	var out dto.Metric
	if err := m.latency.WithLabelValues(fe, op).(prometheus.Metric).Write(&out); err != nil {
		t.Fatal(err)
	}
	return out.GetHistogram()
}

func TestBuckets(t *testing.T) {
	if latencyBuckets[0] > 50e-6 || latencyBuckets[len(latencyBuckets)-1] < 10 {
		t.Errorf("buckets %v do not span 50µs..10s", latencyBuckets)
	}
	for i := 1; i < len(latencyBuckets); i++ {
		if latencyBuckets[i] <= latencyBuckets[i-1] {
			t.Errorf("buckets not increasing at %d", i)
		}
	}
}

func TestSessions(t *testing.T) {
	m := New(nil, nil)
	m.Sessions(FrontendISCSI, 1)
	m.Sessions(FrontendISCSI, 1)
	m.Sessions(FrontendISCSI, -1)
	m.Sessions("carrier-pigeon", 3)
	if got := testutil.ToFloat64(m.sessions.WithLabelValues("iscsi")); got != 1 {
		t.Errorf("iscsi sessions %v, want 1", got)
	}
	if got := testutil.ToFloat64(m.sessions.WithLabelValues("other")); got != 3 {
		t.Errorf("other sessions %v, want 3", got)
	}
	// Known front ends exist from the start (at 0), plus "other".
	if n := testutil.CollectAndCount(m.sessions); n != 5 {
		t.Errorf("%d session series, want 5", n)
	}
}

func TestEventCounters(t *testing.T) {
	m := New(nil, nil)
	m.ChecksumError()
	m.ChecksumError()
	m.ScrubFinding(ScrubRepaired)
	m.ScrubFinding(ScrubUnrepairable)
	m.ScrubFinding(ScrubUnrepairable)
	m.ScrubFinding(ScrubDiffering)
	m.ScrubFinding("x\xff{}\"")
	m.RecoveryObject(RecoveryDone)
	m.RecoveryObject(RecoveryFailed)
	m.RecoveryObject("nonsense")
	m.RecoveryBytes(100)
	m.RecoveryBytes(-7)
	m.ReadRepair()
	m.LentRead(LentRelayed)
	m.LentRead(LentRelayed)
	m.LentRead(LentLocal)
	m.LentRead("nonsense")
	m.CopiesCompared(CompareFingerprint)
	m.CopiesCompared(CompareFingerprint)
	m.CopiesCompared(CompareData)
	m.CopiesCompared("nonsense")
	m.EpochChange()
	m.EpochChange()
	m.EpochChange()
	m.PanicRecovered("iscsi")
	m.PanicRecovered("somewhere/else")
	for _, c := range []struct {
		c    prometheus.Collector
		want float64
	}{
		{m.checksumErrors, 2},
		{m.scrubFindings.WithLabelValues("repaired"), 1},
		{m.scrubFindings.WithLabelValues("unrepairable"), 2},
		{m.scrubFindings.WithLabelValues("differing"), 1},
		{m.lentReads.WithLabelValues("relayed"), 2},
		{m.lentReads.WithLabelValues("local"), 1},
		{m.comparisons.WithLabelValues("fingerprint"), 2},
		{m.comparisons.WithLabelValues("data"), 1},
		{m.scrubFindings.WithLabelValues("other"), 1},
		{m.recoveryObjects.WithLabelValues("done"), 1},
		{m.recoveryObjects.WithLabelValues("failed"), 1},
		{m.recoveryObjects.WithLabelValues("skipped"), 0},
		{m.recoveryObjects.WithLabelValues("other"), 1},
		{m.recoveryBytes, 100},
		{m.readRepairs, 1},
		{m.epochChanges, 3},
		{m.panics.WithLabelValues("iscsi"), 1},
		{m.panics.WithLabelValues("other"), 1},
		{m.panics.WithLabelValues("gateway"), 0},
	} {
		if got := testutil.ToFloat64(c.c); got != c.want {
			t.Errorf("%v: got %v, want %v", c.c, got, c.want)
		}
	}
}

func TestNilMetricsIsNop(t *testing.T) {
	var m *Metrics
	var r Recorder = m
	r.Request("nbd", "read", 1, time.Second, errors.New("x"))
	r.Sessions("nbd", 1)
	m.ChecksumError()
	m.ScrubFinding(ScrubRepaired)
	m.RecoveryObject(RecoveryDone)
	m.RecoveryBytes(1)
	m.ReadRepair()
	m.EpochChange()
	m.PanicRecovered("x")
	if m.Handler() == nil {
		t.Fatal("nil handler")
	}
}

// TestOpClasses pins the mapping of the names the front ends actually send.
func TestOpClasses(t *testing.T) {
	cases := map[string]string{
		// sheepdog opcodes (proto.Opcode.String)
		"READ_OBJ": "read", "READ_PEER": "read", "WRITE_OBJ": "write", "WRITE_PEER": "write",
		"CREATE_AND_WRITE_OBJ": "create_and_write", "REMOVE_PEER": "remove", "DISCARD_OBJ": "discard",
		"FLUSH_VDI": "flush", "SYNC_PEER": "flush", "ZERO_PEER": "write_zeroes", "EC_WRITE": "ec_write",
		"NEW_VDI": "vdi", "LOCK_VDI": "vdi", "GET_NODE_LIST": "cluster", "META": "cluster",
		"LIST_OBJS": "lookup", "OP_0x7f": "other",
		// SCSI command names (target/iscsi)
		"READ(10)": "read", "WRITE(16)": "write", "SYNCHRONIZE CACHE(10)": "flush", "UNMAP": "discard",
		"WRITE SAME(16)": "write_zeroes", "COMPARE AND WRITE": "compare_and_write",
		"INQUIRY": "control", "REPORT LUNS": "control", "PRE-FETCH(10)": "prefetch",
		"GET LBA STATUS": "lookup", "REJECTED": "other", "UNKNOWN": "other",
		// NBD command names (target/nbd)
		"read": "read", "write": "write", "flush": "flush", "trim": "discard", "write_zeroes": "write_zeroes",
		"cache": "prefetch", "block_status": "lookup", "disc": "control", "unknown": "other",
		// hostile
		"": "other", "read ": "other", "READ": "other", "\x00": "other",
	}
	for in, want := range cases {
		if got := opLabels[opIndex(in)]; got != want {
			t.Errorf("op %q -> %q, want %q", in, got, want)
		}
	}
	// Every class name maps to itself, so callers may pass classes directly.
	for i, l := range opLabels {
		if opIndex(l) != i {
			t.Errorf("class %q does not map to itself", l)
		}
	}
}

// TestResultLabels keeps the result table in step with proto: every code
// proto names has a distinct snake_case label.
func TestResultLabels(t *testing.T) {
	seen := map[string]bool{"other": true, "timeout": true, "canceled": true}
	for _, l := range resultLabels {
		if seen[l.name] {
			t.Errorf("duplicate result label %q", l.name)
		}
		seen[l.name] = true
		if l.name != strings.ToLower(l.name) || strings.ContainsAny(l.name, " -") {
			t.Errorf("result label %q is not snake_case", l.name)
		}
	}
	for c := proto.Result(1); c < 0x100; c++ {
		named := !strings.HasPrefix(c.Error(), "Invalid error code")
		got := resultName(resultIndex(c))
		if named && got == "other" {
			t.Errorf("proto names result %#x (%q) but it has no label", uint32(c), c.Error())
		}
		if !named && got != "other" {
			t.Errorf("unnamed result %#x labelled %q", uint32(c), got)
		}
	}
	for _, c := range []struct {
		err  error
		want string
	}{
		{proto.ResEIO, "eio"},
		{fmt.Errorf("x: %w", proto.NewError(proto.ResNoVDI, "no such vdi")), "no_vdi"},
		{fmt.Errorf("x: %w", context.DeadlineExceeded), "timeout"},
		{os.ErrDeadlineExceeded, "timeout"},
		{context.Canceled, "canceled"},
		{errors.New("x"), "other"},
		// The wire code wins over the cause, as in proto.ResultOf.
		{fmt.Errorf("%w: %w", proto.ResNetworkError, context.DeadlineExceeded), "network_error"},
	} {
		if got := resultName(resultIndex(c.err)); got != c.want {
			t.Errorf("%v -> %q, want %q", c.err, got, c.want)
		}
	}
}

// TestCardinalityBounded feeds hostile front-end, op and error values and
// checks the series count stays within the fixed label tables.
func TestCardinalityBounded(t *testing.T) {
	m := New(nil, nil)
	rng := rand.New(rand.NewPCG(1, 2))
	randName := func() string {
		b := make([]byte, 1+rng.IntN(24))
		for i := range b {
			b[i] = byte(rng.IntN(256))
		}
		return string(b)
	}
	fes := []string{FrontendNative, FrontendISCSI, FrontendNBD, FrontendPeer}
	for i := range 1000 {
		fe := fes[i%len(fes)]
		if i%7 == 0 {
			fe = randName()
		}
		err := error(proto.Result(rng.IntN(0x100)))
		if i%3 == 0 {
			err = errors.New(randName())
		}
		m.Request(fe, randName(), rng.IntN(1<<20), time.Duration(rng.IntN(1e9)), err)
		m.Sessions(randName(), 1)
		m.ScrubFinding(randName())
		m.RecoveryObject(randName())
		m.CopiesCompared(randName())
		m.PanicRecovered(randName())
	}
	// Random names all land in "other" (a valid name by chance is fine too).
	maxReq := numFrontends * numOps
	if n := testutil.CollectAndCount(m.requests); n > maxReq || n < 5 {
		t.Errorf("%d request series, want 5..%d", n, maxReq)
	}
	if n := testutil.CollectAndCount(m.latency); n > maxReq {
		t.Errorf("%d latency series, want <= %d", n, maxReq)
	}
	if n := testutil.CollectAndCount(m.errs); n > maxReq*numResults {
		t.Errorf("%d error series, want <= %d", n, maxReq*numResults)
	}
	for _, c := range []struct {
		c   prometheus.Collector
		max int
	}{
		{m.sessions, numFrontends},
		{m.readB, numFrontends},
		{m.writtenB, numFrontends},
		{m.scrubFindings, 4},
		{m.comparisons, 2},
		{m.recoveryObjects, 4},
		{m.panics, len(panicComponents) + 1},
	} {
		if n := testutil.CollectAndCount(c.c); n > c.max {
			t.Errorf("%d series, want <= %d", n, c.max)
		}
	}
	// And the values that did appear are all from the tables.
	allowed := map[string]bool{}
	for _, l := range opLabels {
		allowed["op="+l] = true
	}
	for _, l := range frontendLabels {
		allowed["frontend="+l] = true
	}
	for i := range numResults {
		allowed["result="+resultName(i)] = true
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(m.requests, m.errs)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		for _, mt := range mf.GetMetric() {
			for _, lp := range mt.GetLabel() {
				if k := lp.GetName() + "=" + lp.GetValue(); !allowed[k] {
					t.Errorf("%s has label %q outside the tables", mf.GetName(), k)
				}
			}
		}
	}
}

// TestConcurrentRecorder hammers one Metrics from many goroutines (run with
// -race) and checks no observation is lost.
func TestConcurrentRecorder(t *testing.T) {
	m := New(nil, newFakeSources())
	const workers, per = 8, 2000
	ops := []string{"read", "write", "READ(10)", "WRITE_OBJ", "flush", "bogus"}
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			fe := frontendLabels[1+w%(numFrontends-1)]
			for i := range per {
				var err error
				if i%10 == 0 {
					err = proto.ResEIO
				}
				m.Request(fe, ops[i%len(ops)], 100, time.Duration(i)*time.Microsecond, err)
				m.Sessions(fe, 1)
				m.Sessions(fe, -1)
				if i%100 == 0 {
					m.ChecksumError()
					m.ReadRepair()
				}
			}
		})
	}
	// Scrape while writers run: the collectors must be race-free too.
	stop := make(chan struct{})
	var sw sync.WaitGroup
	sw.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
				rec := httptest.NewRecorder()
				m.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
				if rec.Code != http.StatusOK {
					t.Errorf("scrape: %d %s", rec.Code, rec.Body)
					return
				}
			}
		}
	})
	wg.Wait()
	close(stop)
	sw.Wait()

	var total, count uint64
	var errs, read, written float64
	for _, fe := range frontendLabels {
		read += testutil.ToFloat64(m.readB.WithLabelValues(fe))
		written += testutil.ToFloat64(m.writtenB.WithLabelValues(fe))
		if s := testutil.ToFloat64(m.sessions.WithLabelValues(fe)); s != 0 {
			t.Errorf("%s sessions %v after balanced +1/-1", fe, s)
		}
		for o, ol := range opLabels {
			if m.series[frontendIndex(fe)][o].Load() == nil {
				continue
			}
			total += uint64(testutil.ToFloat64(m.requests.WithLabelValues(fe, ol)))
			count += histogram(t, m, fe, ol).GetSampleCount()
			errs += testutil.ToFloat64(m.errs.WithLabelValues(fe, ol, "eio"))
		}
	}
	if total != workers*per || count != workers*per {
		t.Errorf("requests %d, histogram count %d, want %d", total, count, workers*per)
	}
	if errs != workers*per/10 {
		t.Errorf("errors %v, want %d", errs, workers*per/10)
	}
	// Per worker: of each 6 ops, 2 read-class and 2 write-class carry data.
	if read != written || read == 0 {
		t.Errorf("read %v written %v bytes", read, written)
	}
	if got := testutil.ToFloat64(m.checksumErrors); got != workers*per/100 {
		t.Errorf("checksum errors %v", got)
	}
}

func TestRequestAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector allocates")
	}
	m := New(nil, nil)
	m.Request(FrontendNBD, "read", 4096, time.Millisecond, nil) // warm the cache
	m.Request(FrontendNBD, "write", 4096, time.Millisecond, proto.ResEIO)
	if n := testing.AllocsPerRun(1000, func() {
		m.Request(FrontendNBD, "read", 4096, 200*time.Microsecond, nil)
	}); n != 0 {
		t.Errorf("Request allocates %v times per call on success", n)
	}
	if n := testing.AllocsPerRun(1000, func() {
		m.Request(FrontendNBD, "write", 4096, 200*time.Microsecond, proto.ResEIO)
	}); n != 0 {
		t.Errorf("Request allocates %v times per call failing with a proto.Result", n)
	}
}

func TestNewPanicsOnDoubleRegistration(t *testing.T) {
	reg := prometheus.NewRegistry()
	New(reg, nil)
	defer func() {
		if recover() == nil {
			t.Error("second New on one registry did not panic")
		}
	}()
	New(reg, nil)
}

func TestNewRegistry(t *testing.T) {
	reg := NewRegistry()
	New(reg, nil)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	have := map[string]bool{}
	for _, mf := range mfs {
		have[mf.GetName()] = true
	}
	for _, n := range []string{"go_goroutines", "process_resident_memory_bytes", "gosheep_sessions"} {
		if !have[n] {
			t.Errorf("%s missing", n)
		}
	}
}
