package main

import (
	"context"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/mrkrepl/mrkrepl/client"
	"github.com/nats-io/nats.go"
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

// TestDemoDataKeepsHSM runs "mrkrepl demo --data DIR --serve" twice on one
// directory: a ciphertext made with the first run's key during the first
// run decrypts in every region during the second, and the key still
// encrypts there, with no material missing. The soft HSMs and their RSKs
// are kept in DIR beside the JetStream data.
func TestDemoDataKeepsHSM(t *testing.T) {
	dir := t.TempDir()
	var keyID string
	var blob []byte
	serveDemo(t, dir, func(ctx context.Context, out string, regions map[string]*client.Client) {
		m := regexp.MustCompile(`(?m)^created (mrk-[0-9a-f]{32}) in us-east-1$`).FindStringSubmatch(out)
		if m == nil {
			t.Fatalf("no key id in the demo's output:\n%s", out)
		}
		keyID = m[1]
		ct, err := regions["ap-southeast-2"].Encrypt(ctx, keyID, []byte("before the restart"), []byte("run=1"))
		if err != nil {
			t.Fatalf("encrypt in the first run: %v", err)
		}
		blob = ct.CiphertextBlob
	})
	serveDemo(t, dir, func(ctx context.Context, out string, regions map[string]*client.Client) {
		for name, c := range regions {
			k, err := c.DescribeKey(ctx, keyID)
			if err != nil || len(k.MaterialMissing) != 0 {
				t.Errorf("describe %s in %s after the restart: %v, material missing %v", keyID, name, err, k.MaterialMissing)
				continue
			}
			got, err := c.Decrypt(ctx, blob, []byte("run=1"))
			if err != nil || string(got.Plaintext) != "before the restart" {
				t.Errorf("decrypt in %s after the restart: %v", name, err)
			}
			ct, err := c.Encrypt(ctx, keyID, []byte("after"), nil)
			if err != nil {
				t.Errorf("encrypt in %s after the restart: %v", name, err)
				continue
			}
			if got, err := c.Decrypt(ctx, ct.CiphertextBlob, nil); err != nil || string(got.Plaintext) != "after" {
				t.Errorf("decrypt in %s of what it encrypted after the restart: %v", name, err)
			}
		}
	})
}

// serveDemo runs "demo --data dir --serve" until it serves, calls f with
// its output and a client per region, then interrupts it.
func serveDemo(t *testing.T, dir string, f func(ctx context.Context, out string, regions map[string]*client.Client)) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	stdout, stderr := &syncBuffer{}, &syncBuffer{}
	done := make(chan int, 1)
	go func() { done <- run(ctx, []string{"demo", "--data", dir, "--serve"}, stdout, stderr) }()
	for !strings.Contains(stdout.String(), "\ntry:\n") {
		select {
		case code := <-done:
			t.Fatalf("demo exited %d:\n%s\n%s", code, stdout.String(), stderr.String())
		case <-time.After(50 * time.Millisecond):
		}
	}
	out := stdout.String()
	regions := map[string]*client.Client{}
	for _, m := range regexp.MustCompile(`(?m)^  (\S+) +(nats://\S+)$`).FindAllStringSubmatch(out, -1) {
		nc, err := nats.Connect(m[2])
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		regions[m[1]] = client.New(nc, m[1])
	}
	if len(regions) != 3 {
		t.Fatalf("found %d region URLs in the demo's output, want 3:\n%s", len(regions), out)
	}
	f(ctx, out, regions)
	cancel()
	if code := <-done; code != 0 {
		t.Errorf("demo --serve exited %d after interrupt: %s", code, stderr.String())
	}
}

// TestDemoUsageErrors: a bad flag value of demo is a usage error (exit 2).
func TestDemoUsageErrors(t *testing.T) {
	for _, args := range [][]string{{"--hsm", "bogus"}, {"--log-level", "loud"}, {"extra"}} {
		var stdout, stderr strings.Builder
		if code := run(t.Context(), append([]string{"demo"}, args...), &stdout, &stderr); code != 2 {
			t.Errorf("demo %v exited %d, want 2: %s", args, code, stderr.String())
		}
	}
}
