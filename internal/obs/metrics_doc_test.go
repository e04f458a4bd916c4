package obs_test

import (
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/mrkrepl/mrkrepl/internal/obs/obstest"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
)

// docRow is one metric in docs/METRICS.md.
type docRow struct {
	typ    string
	labels []string
	text   string // the meaning column
}

var (
	docRowRE   = regexp.MustCompile("(?m)^\\| `(mrkrepl_[a-z0-9_]+)` \\| (counter|gauge|histogram) \\| ([^|]*) \\|(.*)$")
	docLabelRE = regexp.MustCompile("`([a-z_]+)`")
)

func readMetricsDoc(t *testing.T) map[string]docRow {
	t.Helper()
	b, err := os.ReadFile("../../docs/METRICS.md")
	if err != nil {
		t.Fatal(err)
	}
	rows := map[string]docRow{}
	for _, m := range docRowRE.FindAllStringSubmatch(string(b), -1) {
		if _, dup := rows[m[1]]; dup {
			t.Errorf("docs/METRICS.md lists %s twice", m[1])
		}
		var labels []string
		for _, l := range docLabelRE.FindAllStringSubmatch(m[3], -1) {
			labels = append(labels, l[1])
		}
		slices.Sort(labels)
		rows[m[1]] = docRow{typ: m[2], labels: labels, text: m[4]}
	}
	if len(rows) < 20 {
		t.Fatalf("docs/METRICS.md: found only %d metric rows; has the table format changed?", len(rows))
	}
	return rows
}

// TestMetricsDocumented: every metric family a running partition registers
// is in docs/METRICS.md with its type and labels, and the page lists
// nothing else. It also checks that every registered family already has
// series (pre-initialised) and that the whole scrape is lint-clean.
func TestMetricsDocumented(t *testing.T) {
	run := obstest.Start(t)
	doc := readMetricsDoc(t)
	families := run.Families(t)

	mfs, err := run.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	gathered := map[string]*dto.MetricFamily{}
	for _, mf := range mfs {
		gathered[mf.GetName()] = mf
	}
	for _, name := range families {
		row, ok := doc[name]
		if !ok {
			t.Errorf("%s is registered but not documented in docs/METRICS.md", name)
			continue
		}
		mf, ok := gathered[name]
		if !ok {
			t.Errorf("%s is registered but has no series after start (pre-initialise it)", name)
			continue
		}
		if typ := strings.ToLower(mf.GetType().String()); typ != row.typ {
			t.Errorf("%s: docs/METRICS.md says %s, registry says %s", name, row.typ, typ)
		}
		var labels []string
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				// instance is added by mrkrepltest, as Prometheus adds it
				// to every target.
				if n := lp.GetName(); n != "instance" && !slices.Contains(labels, n) {
					labels = append(labels, n)
				}
			}
		}
		slices.Sort(labels)
		if !slices.Equal(labels, row.labels) {
			t.Errorf("%s: docs/METRICS.md lists labels %v, the series have %v", name, row.labels, labels)
		}
		checkLabelValues(t, name, row, mf)
	}
	for name := range doc {
		if !slices.Contains(families, name) {
			t.Errorf("docs/METRICS.md lists %s, which no component registers", name)
		}
	}

	problems, err := testutil.GatherAndLint(run.Registry)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint: %s: %s", p.Metric, p.Text)
	}
}

// openLabels have values the page cannot list: names of regions and
// builds, and sets it describes by where they come from (refusal reasons
// are messages.Reason values; ops are the API's; HSM ops are hsmsvc's).
var openLabels = []string{"instance", "region", "src", "dst", "peer", "version", "revision", "goversion", "reason", "op", "kid"}

// checkLabelValues: each value a pre-initialised series of mf has for a
// label with a closed set of values is in the row's meaning, in backticks.
func checkLabelValues(t *testing.T, name string, row docRow, mf *dto.MetricFamily) {
	t.Helper()
	missing := map[string][]string{}
	for _, m := range mf.GetMetric() {
		for _, lp := range m.GetLabel() {
			n, v := lp.GetName(), lp.GetValue()
			if slices.Contains(openLabels, n) || strings.Contains(row.text, "`"+v+"`") || slices.Contains(missing[n], v) {
				continue
			}
			missing[n] = append(missing[n], v)
		}
	}
	for n, vs := range missing {
		t.Errorf("%s: docs/METRICS.md does not list %s values %v", name, n, vs)
	}
}
