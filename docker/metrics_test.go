package docker_test

import (
	"encoding/json"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/mrkrepl/mrkrepl/internal/obs/obstest"
	dto "github.com/prometheus/client_model/go"
	"go.yaml.in/yaml/v3"
)

// query is one PromQL expression and where it comes from.
type query struct{ where, expr string }

func dashboardQueries(t *testing.T) []query {
	t.Helper()
	b, err := os.ReadFile("grafana/dashboards/mrkrepl.json")
	if err != nil {
		t.Fatal(err)
	}
	var d map[string]any
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatal(err)
	}
	var out []query
	for _, p := range d["panels"].([]any) {
		title, _ := p.(map[string]any)["title"].(string)
		for _, e := range exprs(p) {
			out = append(out, query{"dashboard panel " + strings.TrimSpace(title), e})
		}
	}
	tmpl, _ := d["templating"].(map[string]any)
	for _, v := range tmpl["list"].([]any) {
		vm := v.(map[string]any)
		if def, ok := vm["definition"].(string); ok {
			out = append(out, query{"dashboard variable " + vm["name"].(string), def})
		}
	}
	return out
}

func alertQueries(t *testing.T) []query {
	t.Helper()
	b, err := os.ReadFile("prometheus/alerts.yml")
	if err != nil {
		t.Fatal(err)
	}
	var f struct {
		Groups []struct {
			Rules []struct {
				Alert string `yaml:"alert"`
				Expr  string `yaml:"expr"`
			} `yaml:"rules"`
		} `yaml:"groups"`
	}
	if err := yaml.Unmarshal(b, &f); err != nil {
		t.Fatal(err)
	}
	var out []query
	for _, g := range f.Groups {
		for _, r := range g.Rules {
			out = append(out, query{"alert " + r.Alert, r.Expr})
		}
	}
	return out
}

var (
	stringRE       = regexp.MustCompile(`"(?:[^"\\]|\\.)*"`)
	metricRE       = regexp.MustCompile(`\b(mrkrepl_[a-z0-9_]+)\b`)
	groupingRE     = regexp.MustCompile(`\b(?:by|without)\s*\(([^)]*)\)`)
	matcherRE      = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)`)
	labelReplaceRE = regexp.MustCompile(`label_replace\(.*,\s*"([a-zA-Z_]+)",\s*"[^"]*",\s*"[^"]*",\s*"[^"]*"\)`)
	labelValuesRE  = regexp.MustCompile(`label_values\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)\s*,\s*([a-zA-Z_]+)\s*\)`)
	jobRE          = regexp.MustCompile(`job="([^"]+)"`)
	upRE           = regexp.MustCompile(`\bup\{`)
)

// TestQueriesNameRealMetrics starts a partition and checks every PromQL
// expression of the dashboard and of the alert rules: each mrkrepl_ metric
// it names is registered (histograms with _bucket, _sum, _count), each
// label it groups or filters by belongs to one of its metrics, and each
// job it names is a scrape job of prometheus.yml.
func TestQueriesNameRealMetrics(t *testing.T) {
	run := obstest.Start(t)
	mfs, err := run.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	// name → label names (what Prometheus would store, so without the
	// test's instance label, which the scrape target sets).
	labels := map[string][]string{}
	add := func(name string, ls ...string) {
		for _, l := range ls {
			if !slices.Contains(labels[name], l) {
				labels[name] = append(labels[name], l)
			}
		}
		if labels[name] == nil {
			labels[name] = []string{}
		}
	}
	for _, mf := range mfs {
		var ls []string
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetName() != "instance" {
					ls = append(ls, lp.GetName())
				}
			}
		}
		name := mf.GetName()
		add(name, ls...)
		if mf.GetType() == dto.MetricType_HISTOGRAM {
			add(name+"_bucket", append(ls, "le")...)
			add(name+"_sum", ls...)
			add(name+"_count", ls...)
		}
	}
	// Names registered without series yet would be missed by Gather.
	for _, n := range run.Families(t) {
		if _, ok := labels[n]; !ok {
			t.Errorf("%s is registered but has no series", n)
		}
	}
	jobs := map[string]bool{}
	for _, sc := range readPrometheus(t).ScrapeConfigs {
		jobs[sc.JobName] = true
	}

	qs := append(dashboardQueries(t), alertQueries(t)...)
	if len(qs) < 30 {
		t.Fatalf("only %d queries found", len(qs))
	}
	for _, q := range qs {
		for _, m := range jobRE.FindAllStringSubmatch(q.expr, -1) {
			if !jobs[m[1]] {
				t.Errorf("%s: job %q is not a scrape job of prometheus.yml", q.where, m[1])
			}
		}
		if m := labelValuesRE.FindStringSubmatch(q.expr); m != nil {
			if ls, ok := labels[m[1]]; !ok || !slices.Contains(ls, m[2]) {
				t.Errorf("%s: label_values(%s, %s): no such metric or label", q.where, m[1], m[2])
			}
			continue
		}
		allowed := []string{"job", "instance"}
		for _, m := range labelReplaceRE.FindAllStringSubmatch(q.expr, -1) {
			allowed = append(allowed, m[1])
		}
		expr := stringRE.ReplaceAllString(q.expr, `""`)
		names := metricRE.FindAllString(expr, -1)
		if len(names) == 0 && !upRE.MatchString(expr) {
			t.Errorf("%s: names no mrkrepl metric: %s", q.where, q.expr)
		}
		for _, n := range names {
			ls, ok := labels[n]
			if !ok {
				t.Errorf("%s: metric %s does not exist", q.where, n)
				continue
			}
			allowed = append(allowed, ls...)
		}
		var used []string
		for _, m := range groupingRE.FindAllStringSubmatch(expr, -1) {
			for l := range strings.SplitSeq(m[1], ",") {
				if l = strings.TrimSpace(l); l != "" {
					used = append(used, l)
				}
			}
		}
		for _, m := range matcherRE.FindAllStringSubmatch(expr, -1) {
			used = append(used, m[1])
		}
		for _, l := range used {
			if !slices.Contains(allowed, l) {
				t.Errorf("%s: label %q belongs to none of its metrics %v", q.where, l, names)
			}
		}
	}
}
