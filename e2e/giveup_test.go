package e2e

import (
	"strings"
	"testing"
	"time"

	"github.com/mrkrepl/mrkrepl/api"
	"github.com/mrkrepl/mrkrepl/mrkrepltest"
	"github.com/prometheus/client_golang/prometheus"
)

// TestRunsRetriedThenGivenUp: with no proxy, nothing ever reaches the
// destination. Each run times out, is retried with a fresh run, and after
// MaxAttempts the replica is FAILED with the reason — never left CREATING.
func TestRunsRetriedThenGivenUp(t *testing.T) {
	reg := prometheus.NewRegistry()
	p := mrkrepltest.New(t, mrkrepltest.Options{
		NoProxy: true, Registerer: reg,
		RunTimeout: 500 * time.Millisecond, MaxAttempts: 3, SweepInterval: 50 * time.Millisecond,
	})
	ctx := ctxT(t, time.Minute)
	us := p.Region("us-east-1").Client
	key, err := us.CreateKey(ctx, api.CreateKeyRequest{})
	if err != nil {
		t.Fatal(err)
	}
	first, err := us.ReplicateKey(ctx, key.KeyID, "eu-west-1")
	if err != nil {
		t.Fatal(err)
	}
	var replica api.Replica
	waitFor(t, ctx, func() bool {
		k, err := us.DescribeKey(ctx, key.KeyID)
		if err != nil || len(k.Replicas) != 1 {
			return false
		}
		replica = k.Replicas[0]
		return replica.State == api.ReplicaFailed
	})
	if !strings.Contains(replica.Reason, "gave up after 3 attempts") || replica.ReplicationID == first.ReplicationID {
		t.Errorf("replica %+v, want FAILED after 3 attempts with the last run's id", replica)
	}
	if r, err := us.DescribeReplication(ctx, first.ReplicationID); err != nil || r.State != api.StateFailed || !strings.Contains(r.Reason, "timed out in INIT_SENT") {
		t.Errorf("first run: %v %+v", err, r)
	}
	lbl := prometheus.Labels{"instance": "worker-us-east-1", "region": "us-east-1"}
	for name, want := range map[string]float64{
		"mrkrepl_worker_replication_retries_total": 2,
		"mrkrepl_worker_replicas_given_up_total":   1,
	} {
		if got := gathered(t, reg, name, lbl); got != want {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
	if got := gathered(t, reg, "mrkrepl_worker_runs_timed_out_total", prometheus.Labels{"instance": "worker-us-east-1", "role": "source"}); got != 3 {
		t.Errorf("source runs timed out = %v, want 3", got)
	}
	// Asking again starts afresh.
	again, err := us.ReplicateKey(ctx, key.KeyID, "eu-west-1")
	if err != nil || again.State != api.StateInitSent || again.ReplicationID == replica.ReplicationID {
		t.Errorf("replicate after give-up: %v %+v", err, again)
	}
}

// gathered returns the value of the counter or gauge series of name whose
// labels include lbl.
func gathered(t *testing.T, reg *prometheus.Registry, name string, lbl prometheus.Labels) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	series:
		for _, m := range mf.GetMetric() {
			have := map[string]string{}
			for _, lp := range m.GetLabel() {
				have[lp.GetName()] = lp.GetValue()
			}
			for k, v := range lbl {
				if have[k] != v {
					continue series
				}
			}
			if m.Counter != nil {
				return m.Counter.GetValue()
			}
			return m.Gauge.GetValue()
		}
	}
	t.Fatalf("no series %s%v", name, lbl)
	return 0
}
