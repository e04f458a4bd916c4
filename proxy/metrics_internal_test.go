package proxy

import (
	"testing"

	"github.com/mrkrepl/mrkrepl/messages"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestNewMetricsPreinitialisedAndLintClean(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, err := newMetrics(reg, []string{"a-1", "b-1", "c-1"})
	if err != nil {
		t.Fatal(err)
	}
	const pairs = 6
	for name, want := range map[string]int{
		"mrkrepl_proxy_forwarded_total":                          pairs * len(messages.Types()),
		"mrkrepl_proxy_duplicates_total":                         pairs * len(messages.Types()),
		"mrkrepl_proxy_refused_total":                            pairs * (len(messages.Reasons()) + len(messages.OptionReasons()) + 1), // + max_deliver
		"mrkrepl_proxy_retries_total":                            pairs,
		"mrkrepl_proxy_dead_lettered_total":                      3,
		"mrkrepl_proxy_forward_duration_seconds":                 pairs,
		"mrkrepl_proxy_last_forward_timestamp_seconds":           pairs,
		"mrkrepl_proxy_heartbeats_total":                         pairs,
		"mrkrepl_proxy_heartbeat_failures_total":                 pairs * 2,
		"mrkrepl_proxy_heartbeat_round_trip_seconds":             pairs,
		"mrkrepl_proxy_heartbeat_last_success_timestamp_seconds": pairs,
		"mrkrepl_proxy_bundle_reloads_total":                     2,
	} {
		if got := testutil.CollectAndCount(reg, name); got != want {
			t.Errorf("%s: %d series at start, want %d", name, got, want)
		}
	}
	for _, c := range []prometheus.Collector{m.forwarded, m.refused, m.retried, m.deadLettered, m.latency, m.lastForward, m.heartbeats, m.hbFailures, m.hbRoundTrip, m.hbLastSuccess} {
		if problems, err := testutil.CollectAndLint(c); err != nil || len(problems) > 0 {
			t.Errorf("lint: %v %v", err, problems)
		}
	}
	// Before Start, the scrape-time collector reports nothing.
	if n := testutil.CollectAndCount(m.view); n != 0 {
		t.Errorf("unstarted proxy reports %d scrape-time series", n)
	}
}

func TestHeartbeatConfigDefaults(t *testing.T) {
	for _, c := range []struct{ in, want HeartbeatConfig }{
		{HeartbeatConfig{}, HeartbeatConfig{Interval: 10e9, Timeout: 5e9}},
		{HeartbeatConfig{Interval: 1e9}, HeartbeatConfig{Interval: 1e9, Timeout: 1e9}},
		{HeartbeatConfig{Interval: -1}, HeartbeatConfig{Interval: -1, Timeout: 5e9}},
	} {
		if got := c.in.withDefaults(); got != c.want {
			t.Errorf("%+v.withDefaults() = %+v, want %+v", c.in, got, c.want)
		}
	}
	if HeartbeatStream("ap-southeast-2") != "MRK_AP_SOUTHEAST_2_HEARTBEAT" || HeartbeatSubject("eu-west-1", "us-east-1") != "mrk.eu-west-1.heartbeat.us-east-1" {
		t.Error("heartbeat names")
	}
}
