package obs_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/mrkrepl/mrkrepl/internal/obs"
	"github.com/mrkrepl/mrkrepl/messages"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func get(t *testing.T, h http.Handler, path string) (int, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	b, _ := io.ReadAll(rec.Result().Body)
	return rec.Code, string(b)
}

func TestHandler(t *testing.T) {
	reg := obs.NewRegistry()
	var notReady error = errors.New("not connected to nats")
	h := obs.Handler(reg, func(ctx context.Context) error {
		if _, ok := ctx.Deadline(); !ok {
			t.Error("readiness check has no deadline")
		}
		return notReady
	})
	if code, body := get(t, h, "/healthz"); code != 200 || body != "ok\n" {
		t.Errorf("/healthz: %d %q", code, body)
	}
	if code, body := get(t, h, "/readyz"); code != 503 || !strings.Contains(body, "not connected to nats") {
		t.Errorf("/readyz not ready: %d %q", code, body)
	}
	notReady = nil
	if code, body := get(t, h, "/readyz"); code != 200 || body != "ready\n" {
		t.Errorf("/readyz ready: %d %q", code, body)
	}
	code, body := get(t, h, "/metrics")
	if code != 200 || !strings.Contains(body, "mrkrepl_build_info{") || !strings.Contains(body, "go_goroutines") {
		t.Errorf("/metrics: %d %.200q", code, body)
	}
	if code, _ := get(t, h, "/nope"); code != 404 {
		t.Errorf("/nope: %d", code)
	}
}

func TestServe(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	addr, err := obs.Serve(ctx, "127.0.0.1:0", obs.NewRegistry(), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.Get("http://" + addr + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("/readyz without a check: %d", resp.StatusCode)
	}
	cancel()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, err := http.Get("http://" + addr + "/healthz"); err != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("server still up after its context ended")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestBuildInfo(t *testing.T) {
	c := obs.NewBuildInfoCollector()
	if got := testutil.ToFloat64(c); got != 1 {
		t.Errorf("build_info = %v", got)
	}
	if problems, err := testutil.CollectAndLint(c); err != nil || len(problems) > 0 {
		t.Errorf("lint: %v %v", err, problems)
	}
	bi := obs.ReadBuildInfo()
	if bi.GoVersion == "" || bi.Version == "" || bi.Revision == "" {
		t.Errorf("build info has empty fields: %+v", bi)
	}
	obs.Version = "v9.9.9"
	defer func() { obs.Version = "" }()
	if v := obs.ReadBuildInfo().Version; v != "v9.9.9" {
		t.Errorf("Version not used: %s", v)
	}
}

func TestRSKExpiry(t *testing.T) {
	// Two keys for one region: the later not_after counts. A region
	// without a key reports 0.
	now := time.Unix(1_790_000_000, 0)
	var keys []messages.BundleKey
	for _, validFor := range []time.Duration{24 * time.Hour, 102 * 24 * time.Hour} {
		k, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		keys = append(keys, messages.BundleKey{Region: "us-east-1", PublicKey: &k.PublicKey, NotBefore: now, NotAfter: now.Add(validFor)})
	}
	b, err := messages.NewBundle("p", []string{"us-east-1", "eu-west-1"}, keys)
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	c, err := obs.RegisterBundleCollector(reg)
	if err != nil {
		t.Fatal(err)
	}
	if n := testutil.CollectAndCount(c); n != 0 {
		t.Errorf("%d series before Set", n)
	}
	c.Set(b)
	// A second component on the same registry shares the collector.
	if c2, err := obs.RegisterBundleCollector(reg); err != nil || c2 != c {
		t.Errorf("second registration: %v, same collector: %v", err, c2 == c)
	}
	want := `
# HELP mrkrepl_bundle_rsk_expiry_timestamp_seconds Unix time at which the newest RSK of each region of the trust bundle expires (its latest not_after); 0 for a region without an RSK. Subtract time() for the expiry horizon.
# TYPE mrkrepl_bundle_rsk_expiry_timestamp_seconds gauge
mrkrepl_bundle_rsk_expiry_timestamp_seconds{region="eu-west-1"} 0
mrkrepl_bundle_rsk_expiry_timestamp_seconds{region="us-east-1"} 1.7988128e+09
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(want)); err != nil {
		t.Error(err)
	}
	if problems, err := testutil.CollectAndLint(c); err != nil || len(problems) > 0 {
		t.Errorf("lint: %v %v", err, problems)
	}
}

func TestNewLogger(t *testing.T) {
	var buf bytes.Buffer
	log, err := obs.NewLogger(&buf, "warn", "json")
	if err != nil {
		t.Fatal(err)
	}
	log.Info("hidden")
	log.Warn("shown", "component", "worker")
	if out := buf.String(); strings.Contains(out, "hidden") || !strings.Contains(out, `"msg":"shown"`) {
		t.Errorf("logger output: %s", out)
	}
	for _, bad := range [][2]string{{"loud", "text"}, {"info", "xml"}} {
		if _, err := obs.NewLogger(&buf, bad[0], bad[1]); err == nil {
			t.Errorf("NewLogger(%q, %q) accepted", bad[0], bad[1])
		}
	}
}
