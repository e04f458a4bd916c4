package e2e

import (
	"sync"
	"testing"
	"time"

	"github.com/mrkrepl/mrkrepl/api"
	"github.com/mrkrepl/mrkrepl/internal/layout"
	"github.com/mrkrepl/mrkrepl/mrkrepltest"
	"github.com/mrkrepl/mrkrepl/workers"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
)

// TestTwoWorkersPerRegion runs a second worker in each of two regions, on
// the same HSM, so that the messages of a run are shared at random between
// two workers. Each worker's run cache then goes stale now and then (the
// other worker moved the run on): every replication must still complete,
// in both directions, with nothing dead-lettered; and the stale path must
// have been taken (with 2 × 16 runs, each with about one chance in four at
// each end, not taking it would be a one-in-a-million draw).
func TestTwoWorkersPerRegion(t *testing.T) {
	reg := prometheus.NewRegistry()
	p := mrkrepltest.New(t, mrkrepltest.Options{Regions: []string{"us-east-1", "eu-west-1"}, Registerer: reg})
	ctx := ctxT(t, 2*time.Minute)
	const a, b = "us-east-1", "eu-west-1"
	for i, r := range []string{a, b} {
		nc, err := p.Connect(r, "second-worker")
		if err != nil {
			t.Fatal(err)
		}
		w, err := workers.New(workers.Config{
			Region: r, Bundle: p.Bundle, HSM: p.Region(r).HSM, Conn: nc,
			Registerer: prometheus.WrapRegistererWith(prometheus.Labels{"instance": "second-" + string(rune('a'+i))}, reg),
			// The partition's own workers' authorization.
			Admins: []string{mrkrepltest.AdminPrincipal}, LocalPrincipal: mrkrepltest.AdminPrincipal, RegionPolicy: p.RegionPolicy(),
		})
		if err != nil {
			t.Fatal(err)
		}
		if err := w.Start(ctx); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(w.Stop)
	}

	const perDirection = 16
	var wg sync.WaitGroup
	for _, dir := range [][2]string{{a, b}, {b, a}} {
		c := p.Region(dir[0]).Client
		for range perDirection {
			wg.Go(func() {
				key, err := c.CreateKey(ctx, api.CreateKeyRequest{})
				if err != nil {
					t.Errorf("create key in %s: %v", dir[0], err)
					return
				}
				rep, err := c.ReplicateKey(ctx, key.KeyID, dir[1])
				if err != nil {
					t.Errorf("replicate %s to %s: %v", key.KeyID, dir[1], err)
					return
				}
				if rep, err = c.WaitReplication(ctx, rep.ReplicationID); err != nil || rep.State != api.StateCompleted {
					t.Errorf("replication %s from %s: %v %+v", rep.ReplicationID, dir[0], err, rep)
				}
			})
		}
	}
	wg.Wait()

	for _, r := range []string{a, b} {
		nc, err := p.Connect(r, "check")
		if err != nil {
			t.Fatal(err)
		}
		js, _ := jetstream.New(nc)
		st, err := js.Stream(ctx, layout.DLQStream(r))
		if err != nil {
			t.Fatal(err)
		}
		info, err := st.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if info.State.Msgs != 0 {
			t.Errorf("%d messages dead-lettered in %s", info.State.Msgs, r)
		}
	}
	hit, stale := runCacheLookups(t, reg, "hit"), runCacheLookups(t, reg, "stale")
	t.Logf("run cache: %v hits, %v stale", hit, stale)
	if hit == 0 || stale == 0 {
		t.Errorf("run cache: %v hits, %v stale; want both taken", hit, stale)
	}
}

// runCacheLookups sums mrkrepl_worker_run_cache_lookups_total{result} over
// every worker registered on reg.
func runCacheLookups(t *testing.T, reg *prometheus.Registry, result string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != "mrkrepl_worker_run_cache_lookups_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "result" && l.GetValue() == result {
					sum += m.GetCounter().GetValue()
				}
			}
		}
	}
	return sum
}
