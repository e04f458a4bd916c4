package workers_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/mrkrepl/mrkrepl/api"
	"github.com/mrkrepl/mrkrepl/internal/layout"
	"github.com/mrkrepl/mrkrepl/internal/obs/obstest"
	"github.com/mrkrepl/mrkrepl/messages"
	"github.com/mrkrepl/mrkrepl/mrkrepltest"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
)

// value returns the value of the one series of family name whose labels
// include want, failing if there is not exactly one.
func value(t *testing.T, g prometheus.Gatherer, name string, want map[string]string) float64 {
	t.Helper()
	v, n := find(t, g, name, want)
	if n != 1 {
		t.Fatalf("%s%v: %d series, want 1", name, want, n)
	}
	return v
}

func find(t *testing.T, g prometheus.Gatherer, name string, want map[string]string) (float64, int) {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var v float64
	n := 0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	series:
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, lp := range m.GetLabel() {
				labels[lp.GetName()] = lp.GetValue()
			}
			for k, wv := range want {
				if labels[k] != wv {
					continue series
				}
			}
			n++
			v = metricValue(m)
		}
	}
	return v, n
}

func metricValue(m *dto.Metric) float64 {
	switch {
	case m.Counter != nil:
		return m.GetCounter().GetValue()
	case m.Gauge != nil:
		return m.GetGauge().GetValue()
	case m.Histogram != nil:
		return float64(m.GetHistogram().GetSampleCount())
	}
	return 0
}

func TestWorkerMetricsAfterReplication(t *testing.T) {
	run := obstest.Start(t) // replicated one key us-east-1 → eu-west-1
	reg := run.Registry
	us := map[string]string{"instance": "worker-us-east-1"}
	eu := map[string]string{"instance": "worker-eu-west-1"}
	with := func(base map[string]string, kv ...string) map[string]string {
		m := map[string]string{}
		for k, v := range base {
			m[k] = v
		}
		for i := 0; i+1 < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return m
	}
	for _, c := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"mrkrepl_worker_replications_total", with(us, "role", "source", "result", "completed"), 1},
		{"mrkrepl_worker_replications_total", with(us, "role", "source", "result", "failed"), 0},
		{"mrkrepl_worker_replications_total", with(eu, "role", "destination", "result", "completed"), 1},
		{"mrkrepl_worker_replication_duration_seconds", with(us, "role", "source", "stage", "confirmed"), 1},
		{"mrkrepl_worker_replication_duration_seconds", with(eu, "role", "destination", "stage", "usable"), 1},
		{"mrkrepl_worker_messages_received_total", with(eu, "type", string(messages.TypeInit), "result", "accepted"), 1},
		{"mrkrepl_worker_messages_received_total", with(us, "type", string(messages.TypeReceipt), "result", "accepted"), 1},
		{"mrkrepl_worker_requests_total", with(us, "op", api.OpCreateKey, "result", "ok"), 1},
		{"mrkrepl_worker_requests_total", with(us, "op", api.OpReplicateKey, "result", "ok"), 1},
		{"mrkrepl_worker_replications_in_flight", us, 0},
		{"mrkrepl_worker_replications_in_flight", eu, 0},
		{"mrkrepl_worker_oldest_in_flight_start_timestamp_seconds", us, 0},
		{"mrkrepl_worker_consumer_pending_messages", with(eu, "stream", "inbox"), 0},
		{"mrkrepl_worker_consumer_pending_messages", with(us, "stream", "requests"), 0},
		{"mrkrepl_worker_stream_messages", with(us, "stream", "outbox"), 2}, // init, material
		{"mrkrepl_worker_stream_messages", with(eu, "stream", "outbox"), 2}, // offer, receipt
		{"mrkrepl_worker_stream_messages", with(us, "stream", "dlq"), 0},
		{"mrkrepl_worker_nats_connected", us, 1},
		{"mrkrepl_worker_hsm_operation_errors_total", with(us, "op", "sign", "backend", "soft"), 0},
	} {
		if got := value(t, reg, c.name, c.labels); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
	// Every HSM operation of the source's run is timed: init and material
	// are signed, the key made, wrapped and confirmed.
	for _, op := range []string{"sign", "generate_key", "wrap_for_peer", "key_confirmation"} {
		if got := value(t, reg, "mrkrepl_worker_hsm_operation_duration_seconds", with(us, "op", op, "backend", "soft")); got < 1 {
			t.Errorf("hsm op %s observed %v times", op, got)
		}
	}
	// The RSK expiry is the bundle's not_after, for the worker's own RSK and
	// for every region's newest.
	for _, k := range run.Partition.Bundle.Keys() {
		want := float64(k.NotAfter.Unix())
		if got := value(t, reg, "mrkrepl_bundle_rsk_expiry_timestamp_seconds", with(us, "region", k.Region)); got != want {
			t.Errorf("bundle expiry of %s = %v, want %v", k.Region, got, want)
		}
		inst := map[string]string{"instance": "worker-" + k.Region}
		if got := value(t, reg, "mrkrepl_worker_rsk_expiry_timestamp_seconds", inst); got != want {
			t.Errorf("own rsk expiry of %s = %v, want %v", k.Region, got, want)
		}
	}
	if last := value(t, reg, "mrkrepl_worker_last_replication_completed_timestamp_seconds", us); time.Since(time.Unix(int64(last), 0)) > time.Minute {
		t.Errorf("last completed timestamp %v is not recent", last)
	}
	problems, err := testutil.GatherAndLint(reg)
	if err != nil || len(problems) > 0 {
		t.Errorf("lint: %v %v", err, problems)
	}
}

// A request event for an operation that does not exist is counted under a
// bounded label, never under the subject's last token.
func TestWorkerRequestOpBounded(t *testing.T) {
	run := obstest.Start(t)
	nc, err := run.Partition.ConnectApp("us-east-1", mrkrepltest.DefaultApp.Account, mrkrepltest.DefaultApp.Users[0])
	if err != nil {
		t.Fatal(err)
	}
	for _, op := range []string{"frobnicate", "x1", "x2"} {
		if err := nc.Publish(layout.RequestSubject("us-east-1", op), []byte("{}")); err != nil {
			t.Fatal(err)
		}
	}
	labels := map[string]string{"instance": "worker-us-east-1", "op": "event:other", "result": "error"}
	obstest.WaitFor(t, 10*time.Second, "3 bad request events", func() bool {
		v, _ := find(t, run.Registry, "mrkrepl_worker_requests_total", labels)
		return v == 3
	})
	if _, n := find(t, run.Registry, "mrkrepl_worker_requests_total", map[string]string{"op": "event:frobnicate"}); n != 0 {
		t.Error("an op label took a value from the request subject")
	}
	obstest.WaitFor(t, 10*time.Second, "the dead letters in stream_messages", func() bool {
		v, _ := find(t, run.Registry, "mrkrepl_worker_stream_messages", map[string]string{"instance": "worker-us-east-1", "stream": "dlq"})
		return v == 3
	})
}

// A run whose peer never answers is in flight, with its start time, until
// it ends.
func TestWorkerInFlight(t *testing.T) {
	reg := prometheus.NewRegistry()
	p := mrkrepltest.New(t, mrkrepltest.Options{Registerer: reg, NoProxy: true})
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	us := p.Region("us-east-1").Client
	key, err := us.CreateKey(ctx, api.CreateKeyRequest{})
	if err != nil {
		t.Fatal(err)
	}
	before := time.Now()
	for _, dst := range []string{"eu-west-1", "ap-southeast-2"} {
		if _, err := us.ReplicateKey(ctx, key.KeyID, dst); err != nil {
			t.Fatal(err)
		}
	}
	// A key pending deletion has lifecycle work in the same index
	// ("lc.<key id>"): it is not a run in flight.
	other, err := us.CreateKey(ctx, api.CreateKeyRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := us.ScheduleKeyDeletion(ctx, other.KeyID, 7); err != nil {
		t.Fatal(err)
	}
	inst := map[string]string{"instance": "worker-us-east-1"}
	obstest.WaitFor(t, 10*time.Second, "2 runs in flight", func() bool {
		v, n := find(t, reg, "mrkrepl_worker_replications_in_flight", inst)
		return n == 1 && v == 2
	})
	oldest := value(t, reg, "mrkrepl_worker_oldest_in_flight_start_timestamp_seconds", inst)
	if d := time.Unix(0, int64(oldest*1e9)).Sub(before); d < -time.Second || d > 5*time.Second {
		t.Errorf("oldest in-flight start %v is %v from the request", oldest, d)
	}
	// Nothing leaves without a proxy: the outbox holds both inits, and the
	// destinations have nothing in flight.
	if got := value(t, reg, "mrkrepl_worker_stream_messages", map[string]string{"instance": "worker-us-east-1", "stream": "outbox"}); got != 2 {
		t.Errorf("outbox holds %v messages, want 2", got)
	}
	if got := value(t, reg, "mrkrepl_worker_replications_in_flight", map[string]string{"instance": "worker-eu-west-1"}); got != 0 {
		t.Errorf("eu-west-1 has %v runs in flight, want 0", got)
	}
}

func TestWorkerReady(t *testing.T) {
	p := mrkrepltest.New(t, mrkrepltest.Options{NoProxy: true})
	r := p.Region("eu-west-1")
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if err := r.Worker.Ready(ctx); err != nil {
		t.Fatalf("Ready: %v", err)
	}
	// Ready checks the HSM with a signature verified against the bundle;
	// that is counted as the self_test operation.
	reg := prometheus.NewRegistry()
	p2 := mrkrepltest.New(t, mrkrepltest.Options{Registerer: reg, NoProxy: true, Regions: []string{"a-1", "b-1"}})
	if err := p2.Region("a-1").Worker.Ready(ctx); err != nil {
		t.Fatalf("Ready: %v", err)
	}
	if got := value(t, reg, "mrkrepl_worker_hsm_operation_duration_seconds", map[string]string{"instance": "worker-a-1", "op": "self_test"}); got != 1 {
		t.Errorf("self_test observed %v times, want 1", got)
	}

	r.Server.Shutdown()
	r.Server.WaitForShutdown()
	var err error
	obstest.WaitFor(t, 10*time.Second, "Ready to see the server gone", func() bool {
		rctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
		defer cancel()
		err = r.Worker.Ready(rctx)
		return err != nil && strings.Contains(err.Error(), "not connected to nats")
	})
}
