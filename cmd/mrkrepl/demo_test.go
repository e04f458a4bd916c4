package main

import (
	"context"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
)

// TestDemoServeMetrics runs "mrkrepl demo --serve" and scrapes what it
// prints: the metrics of every process of the demo, lint-clean, with each
// component's series, and a ready /readyz.
func TestDemoServeMetrics(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	stdout, stderr := &syncBuffer{}, &syncBuffer{}
	done := make(chan int, 1)
	go func() { done <- run(ctx, []string{"demo", "--serve"}, stdout, stderr) }()

	urlRE := regexp.MustCompile(`(?m)^  (worker \S+|proxy)\s+(http://\S+/metrics)\s+instance=(\S+)$`)
	var found [][]string
	for len(found) < 4 {
		select {
		case code := <-done:
			t.Fatalf("demo exited %d:\n%s\n%s", code, stdout.String(), stderr.String())
		case <-time.After(50 * time.Millisecond):
		}
		found = urlRE.FindAllStringSubmatch(stdout.String(), -1)
	}
	instances := map[string]bool{}
	for _, f := range found {
		instances[f[3]] = true
	}
	for _, want := range []string{"worker-us-east-1", "worker-eu-west-1", "worker-ap-southeast-2", "proxy"} {
		if !instances[want] {
			t.Errorf("no metrics URL printed for %s:\n%s", want, stdout.String())
		}
	}
	metricsURL := found[0][2]
	base := strings.TrimSuffix(metricsURL, "/metrics")
	waitReady(t, base)
	code, body := httpGet(t, metricsURL)
	if code != 200 {
		t.Fatalf("GET %s: %d", metricsURL, code)
	}
	problems, err := promlint.New(strings.NewReader(body)).Lint()
	if err != nil || len(problems) > 0 {
		t.Errorf("lint: %v %v", err, problems)
	}
	for _, want := range []string{
		`mrkrepl_worker_replications_total{instance="worker-us-east-1",region="us-east-1",result="completed",role="source"} 4`, // v1 to two regions, then v2 (rotation)
		`mrkrepl_proxy_heartbeats_total{dst="eu-west-1",instance="proxy",src="us-east-1"}`,
		`mrkrepl_build_info{`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	cancel()
	if code := <-done; code != 0 {
		t.Errorf("demo --serve exited %d after interrupt: %s", code, stderr.String())
	}
}
