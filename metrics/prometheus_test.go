package metrics

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gosheep/gosheep/proto"
)

// needTool returns the path of a real tool, skipping only in -short mode.
func needTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		if testing.Short() {
			t.Skipf("%s not installed (apt-get install prometheus); skipped in -short mode", name)
		}
		t.Fatalf("%s not installed: apt-get install prometheus (scripts/deps)", name)
	}
	return p
}

// traffic drives every Recorder path and event counter the way the front
// ends and the daemon do.
func traffic(m *Metrics) {
	for i := range 50 {
		d := time.Duration(50+i*40) * time.Microsecond
		m.Request(FrontendNBD, "read", 65536, d, nil)
		m.Request(FrontendNBD, "write", 65536, 2*d, nil)
		m.Request(FrontendISCSI, "READ(10)", 4096, d, nil)
		m.Request(FrontendISCSI, "WRITE(10)", 4096, 3*d, nil)
		m.Request(FrontendNative, "READ_OBJ", 4096, d, nil)
		m.Request(FrontendNative, "WRITE_OBJ", 4096, d, nil)
		m.Request(FrontendPeer, "WRITE_PEER", 4096, d, nil)
		m.Request(FrontendPeer, "READ_PEER", 4096, d, nil)
		if i%10 == 0 {
			m.Request(FrontendNBD, "write", 0, d, context.DeadlineExceeded)
			m.Request(FrontendNative, "WRITE_OBJ", 0, d, proto.ResNoSpace)
			m.Request(FrontendISCSI, "WRITE(10)", 0, d, proto.ResEIO)
			m.Request(FrontendPeer, "WRITE_PEER", 0, d, proto.ResOldNodeVer)
		}
	}
	m.ChecksumError()
	m.ScrubFinding(ScrubRepaired)
	m.RecoveryObject(RecoveryDone)
	m.RecoveryBytes(4 << 20)
	m.ReadRepair()
	m.EpochChange()
}

// TestPromtoolCheckMetrics lints a real scrape with Prometheus' own promtool.
func TestPromtoolCheckMetrics(t *testing.T) {
	promtool := needTool(t, "promtool")
	m := New(NewRegistry(), newFakeSources())
	exercise(m)
	srv := httptest.NewServer(m.Handler())
	defer srv.Close()
	resp, err := http.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(promtool, "check", "metrics")
	cmd.Stdin = bytes.NewReader(body)
	out, err := cmd.CombinedOutput()
	t.Logf("promtool check metrics: %v\n%s", err, out)
	// Exit 3 means lint problems, listed one per line; anything else
	// non-zero means promtool could not parse the page.
	if ee, ok := err.(*exec.ExitError); err != nil && (!ok || ee.ExitCode() != 3) {
		t.Fatalf("promtool check metrics: %v: %s", err, out)
	}
	// The Go runtime collector's metrics are not ours to fix; ours must be clean.
	for _, line := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(line, "gosheep_") || strings.HasPrefix(line, "promhttp_") {
			t.Errorf("promtool: %s", line)
		}
	}
	if !bytes.Contains(body, []byte("gosheep_requests_total")) {
		t.Fatal("scrape has no gosheep metrics")
	}
}

// TestRealPrometheusEvaluatesDashboard runs a real Prometheus server that
// scrapes Handler over TCP, then evaluates every query of the Grafana
// dashboard through its HTTP API: each must parse and return data.
func TestRealPrometheusEvaluatesDashboard(t *testing.T) {
	bin := needTool(t, "prometheus")
	m := New(NewRegistry(), newFakeSources())
	srv := httptest.NewServer(m.Handler())
	defer srv.Close()

	// Traffic keeps flowing so rate() has something to see.
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	wg.Go(func() {
		tick := time.NewTicker(200 * time.Millisecond)
		defer tick.Stop()
		for {
			traffic(m)
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	})

	dir := t.TempDir()
	cfg := fmt.Sprintf(`global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: gosheep
    static_configs:
      - targets: [%q]
`, strings.TrimPrefix(srv.URL, "http://"))
	if err := os.WriteFile(filepath.Join(dir, "prometheus.yml"), []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	addr := freeAddr(t)
	var logs bytes.Buffer
	cmd := exec.CommandContext(ctx, bin,
		"--config.file="+filepath.Join(dir, "prometheus.yml"),
		"--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+addr,
		"--log.level=warn")
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("prometheus log:\n%s", logs.String())
		}
	}()
	api := "http://" + addr + "/api/v1/query"
	query := func(q string) (int, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, api+"?query="+url.QueryEscape(q), nil)
		if err != nil {
			return 0, err
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return 0, err
		}
		defer resp.Body.Close()
		var r struct {
			Status, Error string
			Data          struct {
				Result []json.RawMessage
			}
		}
		if err := json.NewDecoder(io.LimitReader(resp.Body, 16<<20)).Decode(&r); err != nil {
			return 0, err
		}
		if r.Status != "success" {
			return 0, fmt.Errorf("%s: %s", r.Status, r.Error)
		}
		return len(r.Data.Result), nil
	}

	// Wait for enough scrapes that a 30s rate() has several samples.
	for {
		n, err := query(`count_over_time(gosheep_cluster_epoch[30s]) >= 4`)
		if err == nil && n == 1 {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("prometheus never scraped 4 times: last %d, %v", n, err)
		case <-time.After(250 * time.Millisecond):
		}
	}

	d := loadDashboard(t)
	vars := strings.NewReplacer("$__rate_interval", "30s", "$__range", "1h", "$instance", ".*")
	var walk func([]dashPanel)
	walk = func(ps []dashPanel) {
		for _, p := range ps {
			walk(p.Panels)
			for _, tg := range p.Targets {
				q := vars.Replace(tg.Expr)
				n, err := query(q)
				switch {
				case err != nil:
					t.Errorf("panel %q/%s: %s: %v", p.Title, tg.RefID, q, err)
				case n == 0:
					t.Errorf("panel %q/%s: %s: no data", p.Title, tg.RefID, q)
				}
			}
		}
	}
	walk(d.Panels)
	for _, v := range d.Templating.List {
		if v.Type == "query" {
			if mm := labelValues.FindStringSubmatch(v.Definition); mm != nil {
				if n, err := query(mm[1]); err != nil || n == 0 {
					t.Errorf("variable %s: %s: %d series, %v", v.Name, mm[1], n, err)
				}
			}
		}
	}
}

// freeAddr returns a loopback address nothing listens on right now.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}
