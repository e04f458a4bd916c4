package workers

import (
	"testing"

	"github.com/mrkrepl/mrkrepl/messages"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestNewMetricsPreinitialisedAndLintClean(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, err := newMetrics(reg, "us-east-1")
	if err != nil {
		t.Fatal(err)
	}
	m.initBackend("soft")
	for _, c := range []prometheus.Collector{m.received, m.refused, m.requests.vec, m.replications, m.duration, m.hsmOps, m.hsmErrors, m.lastCompleted} {
		if problems, err := testutil.CollectAndLint(c); err != nil || len(problems) > 0 {
			t.Errorf("lint: %v %v", err, problems)
		}
	}
	for name, want := range map[string]int{
		"mrkrepl_worker_messages_received_total":        len(messages.Types())*4 + 2,
		"mrkrepl_worker_messages_refused_total":         16 + len(messages.OptionReasons()) + len(workerReasons),
		"mrkrepl_worker_requests_total":                 2 * (len(apiOps) + len(eventOps) + 2),
		"mrkrepl_worker_replications_total":             4,
		"mrkrepl_worker_replication_duration_seconds":   2,
		"mrkrepl_worker_hsm_operation_duration_seconds": len(hsmOpNames),
		"mrkrepl_worker_hsm_operation_errors_total":     len(hsmOpNames),
	} {
		if got := testutil.CollectAndCount(reg, name); got != want {
			t.Errorf("%s: %d series at start, want %d", name, got, want)
		}
	}
	// A second worker of another region registers beside it; one of the
	// same region on the same registry is refused.
	if _, err := newMetrics(reg, "eu-west-1"); err != nil {
		t.Errorf("second region: %v", err)
	}
	if _, err := newMetrics(reg, "us-east-1"); err == nil {
		t.Error("the same region registered twice")
	}
	// No registerer: metrics work, nothing is exposed.
	if _, err := newMetrics(nil, "us-east-1"); err != nil {
		t.Error(err)
	}
}

func TestRequestOpLabelBounded(t *testing.T) {
	m, err := newMetrics(nil, "r")
	if err != nil {
		t.Fatal(err)
	}
	m.requests.WithLabelValues("create-key", "ok").Inc()
	m.requests.WithLabelValues("event:replicate-key", "error").Inc()
	m.requests.WithLabelValues("drop-table", "error").Inc()
	m.requests.WithLabelValues("event:../../etc", "error").Inc()
	m.requests.WithLabelValues("event:x", "error").Inc()
	for _, c := range []struct {
		op, result string
		want       float64
	}{
		{"create-key", "ok", 1},
		{"event:replicate-key", "error", 1},
		{otherOp, "error", 1},
		{otherEventOp, "error", 2},
	} {
		if got := testutil.ToFloat64(m.requests.vec.WithLabelValues(c.op, c.result)); got != c.want {
			t.Errorf("requests{op=%q,result=%q} = %v, want %v", c.op, c.result, got, c.want)
		}
	}
	if n := testutil.CollectAndCount(m.requests.vec); n != 2*(len(apiOps)+len(eventOps)+2) {
		t.Errorf("unknown ops created series: %d", n)
	}
}
