package metrics

import (
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

const dashboardPath = "../scripts/grafana-dashboard.json"

type dashPanel struct {
	ID      int    `json:"id"`
	Type    string `json:"type"`
	Title   string `json:"title"`
	GridPos struct {
		H, W, X, Y int
	} `json:"gridPos"`
	Datasource *struct {
		Type, UID string
	} `json:"datasource"`
	Targets []struct {
		Expr  string `json:"expr"`
		RefID string `json:"refId"`
	} `json:"targets"`
	Panels []dashPanel `json:"panels"` // collapsed rows nest their panels
}

type dashboard struct {
	UID           string      `json:"uid"`
	Title         string      `json:"title"`
	SchemaVersion int         `json:"schemaVersion"`
	Panels        []dashPanel `json:"panels"`
	Templating    struct {
		List []struct {
			Name       string          `json:"name"`
			Type       string          `json:"type"`
			Definition string          `json:"definition"`
			Query      json.RawMessage `json:"query"`
		} `json:"list"`
	} `json:"templating"`
}

// registeredNames gathers every series name the package exports, with the
// _bucket/_sum/_count series of histograms, after exercising every method.
func registeredNames(t *testing.T) map[string]dto.MetricType {
	t.Helper()
	reg := prometheus.NewRegistry()
	m := New(reg, newFakeSources())
	exercise(m)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]dto.MetricType{}
	for _, mf := range mfs {
		if !strings.HasPrefix(mf.GetName(), namespace+"_") {
			continue // promhttp's own metrics: not ours to chart
		}
		names[mf.GetName()] = mf.GetType()
		if mf.GetType() == dto.MetricType_HISTOGRAM {
			for _, s := range []string{"_bucket", "_sum", "_count"} {
				names[mf.GetName()+s] = mf.GetType()
			}
		}
	}
	return names
}

// promqlKeywords are PromQL words that are neither functions called with
// "(" directly nor metric names.
var promqlKeywords = map[string]bool{
	"sum": true, "min": true, "max": true, "avg": true, "group": true, "stddev": true, "stdvar": true,
	"count": true, "count_values": true, "bottomk": true, "topk": true, "quantile": true,
	"limitk": true, "limit_ratio": true,
	"by": true, "without": true, "on": true, "ignoring": true, "group_left": true, "group_right": true,
	"bool": true, "and": true, "or": true, "unless": true, "offset": true, "atan2": true,
	"inf": true, "nan": true,
}

var (
	promqlToken = regexp.MustCompile(`\$\{?[A-Za-z0-9_]+\}?|[A-Za-z_:][A-Za-z0-9_:]*|[0-9][0-9A-Za-z.]*|[()]|\S`)
	labelValues = regexp.MustCompile(`^\s*label_values\(\s*([A-Za-z_:][A-Za-z0-9_:]*)\s*,\s*[A-Za-z_][A-Za-z0-9_]*\s*\)\s*$`)
)

// metricNamesIn returns the metric names a PromQL expression selects. It is
// a small lexer, not a parser: string literals, label matchers and range
// brackets are dropped, then every identifier that is not a keyword, a
// function call or a grouping label list is a metric name.
func metricNamesIn(expr string) ([]string, error) {
	var b strings.Builder
	depthBrace, depthBracket := 0, 0
	for i := 0; i < len(expr); i++ {
		c := expr[i]
		switch {
		case c == '"' || c == '\'' || c == '`':
			j := i + 1
			for j < len(expr) && expr[j] != c {
				if expr[j] == '\\' && c != '`' {
					j++
				}
				j++
			}
			if j >= len(expr) {
				return nil, fmt.Errorf("unterminated string in %q", expr)
			}
			i = j
			b.WriteByte(' ')
			continue
		case c == '{':
			depthBrace++
		case c == '}':
			depthBrace--
		case c == '[':
			depthBracket++
		case c == ']':
			depthBracket--
		default:
			if depthBrace == 0 && depthBracket == 0 {
				b.WriteByte(c)
			}
			continue
		}
		if depthBrace < 0 || depthBracket < 0 {
			return nil, fmt.Errorf("unbalanced brackets in %q", expr)
		}
		b.WriteByte(' ')
	}
	if depthBrace != 0 || depthBracket != 0 {
		return nil, fmt.Errorf("unbalanced brackets in %q", expr)
	}
	toks := promqlToken.FindAllString(b.String(), -1)
	var names []string
	for i := 0; i < len(toks); i++ {
		tk := toks[i]
		next := ""
		if i+1 < len(toks) {
			next = toks[i+1]
		}
		isIdent := tk[0] == '_' || tk[0] == ':' || (tk[0]|0x20 >= 'a' && tk[0]|0x20 <= 'z')
		switch {
		case !isIdent:
			continue
		case tk == "by" || tk == "without" || tk == "on" || tk == "ignoring" || tk == "group_left" || tk == "group_right":
			if next == "(" { // a label list, not metrics
				for i < len(toks) && toks[i] != ")" {
					i++
				}
			}
		case promqlKeywords[strings.ToLower(tk)]:
		case next == "(": // function call
		default:
			names = append(names, tk)
		}
	}
	return names, nil
}

func TestMetricNamesIn(t *testing.T) {
	for _, c := range []struct {
		expr string
		want []string
	}{
		{`sum by (frontend, le) (rate(gosheep_request_duration_seconds_bucket{instance=~"$instance", op="read"}[$__rate_interval]))`,
			[]string{"gosheep_request_duration_seconds_bucket"}},
		{`histogram_quantile(0.99, sum without (op) (rate(a_bucket[5m])))`, []string{"a_bucket"}},
		{`x / on (instance) group_left y offset 5m`, []string{"x", "y"}},
		{`sum(rate(gosheep_nope_total{a="}{[]"}[1m])) > bool 0`, []string{"gosheep_nope_total"}},
		{`max by (state) (m)`, []string{"m"}},
	} {
		got, err := metricNamesIn(c.expr)
		if err != nil || !slices.Equal(got, c.want) {
			t.Errorf("%s: got %v (%v), want %v", c.expr, got, err, c.want)
		}
	}
	for _, bad := range []string{`rate(x{a="b}[5m])`, `rate(x[5m)`} {
		if _, err := metricNamesIn(bad); err == nil {
			t.Errorf("%s: no error", bad)
		}
	}
}

func loadDashboard(t *testing.T) dashboard {
	t.Helper()
	raw, err := os.ReadFile(dashboardPath)
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard
	dec := json.NewDecoder(strings.NewReader(string(raw)))
	if err := dec.Decode(&d); err != nil {
		t.Fatalf("dashboard JSON: %v", err)
	}
	return d
}

// TestDashboardUsesOnlyRegisteredMetrics keeps scripts/grafana-dashboard.json
// from drifting: every metric it queries must be one this package exports
// (with the right type for histogram series), and every gosheep metric must
// be charted somewhere.
func TestDashboardUsesOnlyRegisteredMetrics(t *testing.T) {
	d := loadDashboard(t)
	names := registeredNames(t)
	if d.SchemaVersion < 36 || d.UID == "" || d.Title == "" {
		t.Errorf("schemaVersion %d uid %q title %q", d.SchemaVersion, d.UID, d.Title)
	}

	used := map[string]bool{}
	check := func(where, expr string) {
		got, err := metricNamesIn(expr)
		if err != nil {
			t.Errorf("%s: %v", where, err)
			return
		}
		if len(got) == 0 {
			t.Errorf("%s: %q selects no metric", where, expr)
		}
		for _, n := range got {
			if _, ok := names[n]; !ok {
				t.Errorf("%s: %q uses %s, which the metrics package does not export", where, expr, n)
			}
			if strings.HasSuffix(n, "_bucket") && !strings.Contains(expr, "histogram_quantile") {
				t.Errorf("%s: %s outside histogram_quantile", where, n)
			}
			used[strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(n, "_bucket"), "_sum"), "_count")] = true
		}
	}

	ids := map[int]string{}
	var occupied [][4]int
	var walk func([]dashPanel)
	walk = func(ps []dashPanel) {
		for _, p := range ps {
			if prev, dup := ids[p.ID]; dup || p.ID == 0 {
				t.Errorf("panel %q: id %d (duplicate of %q)", p.Title, p.ID, prev)
			}
			ids[p.ID] = p.Title
			g := p.GridPos
			if g.W <= 0 || g.H <= 0 || g.X < 0 || g.X+g.W > 24 {
				t.Errorf("panel %q: bad gridPos %+v", p.Title, g)
			}
			for _, o := range occupied {
				if g.X < o[0]+o[2] && o[0] < g.X+g.W && g.Y < o[1]+o[3] && o[1] < g.Y+g.H {
					t.Errorf("panel %q overlaps another at %+v", p.Title, g)
				}
			}
			occupied = append(occupied, [4]int{g.X, g.Y, g.W, g.H})
			if p.Type == "row" {
				walk(p.Panels)
				continue
			}
			if p.Datasource == nil || p.Datasource.UID != "${datasource}" {
				t.Errorf("panel %q does not use the datasource variable", p.Title)
			}
			if len(p.Targets) == 0 {
				t.Errorf("panel %q has no queries", p.Title)
			}
			for _, tg := range p.Targets {
				check(fmt.Sprintf("panel %q/%s", p.Title, tg.RefID), tg.Expr)
			}
		}
	}
	walk(d.Panels)
	if len(ids) < 10 {
		t.Errorf("only %d panels", len(ids))
	}

	for _, v := range d.Templating.List {
		if v.Type != "query" {
			continue
		}
		m := labelValues.FindStringSubmatch(v.Definition)
		if m == nil {
			t.Errorf("variable %s: unexpected query %q", v.Name, v.Definition)
			continue
		}
		if _, ok := names[m[1]]; !ok {
			t.Errorf("variable %s uses %s, which the metrics package does not export", v.Name, m[1])
		}
	}

	var missing []string
	for n, typ := range names {
		if typ == dto.MetricType_HISTOGRAM && n != strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(n, "_bucket"), "_sum"), "_count") {
			continue
		}
		if !used[n] {
			missing = append(missing, n)
		}
	}
	sort.Strings(missing)
	if len(missing) > 0 {
		t.Errorf("metrics not on the dashboard (add a panel): %v", missing)
	}
}

// TestDashboardCheckerCatchesDrift: the checker above must flag a renamed
// metric, or it proves nothing.
func TestDashboardCheckerCatchesDrift(t *testing.T) {
	names := registeredNames(t)
	for _, expr := range []string{
		`sum(rate(gosheep_request_total[5m]))`,      // typo: requests
		`gosheep_store_used{instance=~"$instance"}`, // missing unit suffix
		`histogram_quantile(0.5, rate(gosheep_requests_total_bucket[5m]))`,
	} {
		got, err := metricNamesIn(expr)
		if err != nil {
			t.Fatal(err)
		}
		bad := false
		for _, n := range got {
			if _, ok := names[n]; !ok {
				bad = true
			}
		}
		if !bad {
			t.Errorf("%s: drift not detected", expr)
		}
	}
}
