// Package obstest starts a partition whose every component registers its
// metrics on one registry, for tests that check metric names against
// documentation, dashboards and alert rules.
package obstest

import (
	"context"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mrkrepl/mrkrepl/api"
	"github.com/mrkrepl/mrkrepl/internal/obs"
	"github.com/mrkrepl/mrkrepl/mrkrepltest"
	"github.com/prometheus/client_golang/prometheus"
)

// Recorder is a Registerer that remembers the name of every metric family
// registered through it (from the collectors' descriptions), so that
// families without any series yet are seen too.
type Recorder struct {
	reg   prometheus.Registerer
	mu    sync.Mutex
	names map[string]bool
}

// NewRecorder records what is registered on reg.
func NewRecorder(reg prometheus.Registerer) *Recorder {
	return &Recorder{reg: reg, names: map[string]bool{}}
}

var fqNameRE = regexp.MustCompile(`fqName: "([^"]+)"`)

// Register records c's families and registers it.
func (r *Recorder) Register(c prometheus.Collector) error {
	ch := make(chan *prometheus.Desc)
	go func() { c.Describe(ch); close(ch) }()
	var names []string
	for d := range ch {
		// Desc has no accessor for its name; its String form is stable:
		// Desc{fqName: "…", help: "…", …}.
		if m := fqNameRE.FindStringSubmatch(d.String()); m != nil {
			names = append(names, m[1])
		}
	}
	if err := r.reg.Register(c); err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, n := range names {
		r.names[n] = true
	}
	return nil
}

// MustRegister registers cs or panics, as prometheus.Registerer requires.
func (r *Recorder) MustRegister(cs ...prometheus.Collector) {
	for _, c := range cs {
		if err := r.Register(c); err != nil {
			panic(err)
		}
	}
}

// Unregister unregisters c (its names stay recorded).
func (r *Recorder) Unregister(c prometheus.Collector) bool { return r.reg.Unregister(c) }

// Names returns the recorded family names, sorted.
func (r *Recorder) Names() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for n := range r.names {
		out = append(out, n)
	}
	slices.Sort(out)
	return out
}

// Running is a started partition with its metrics.
type Running struct {
	Partition *mrkrepltest.Partition
	Registry  *prometheus.Registry // obs.NewRegistry(), every component on it
	Recorder  *Recorder
}

// Families returns the name of every mrkrepl_ family: registered
// (described) or gathered.
func (r *Running) Families(t testing.TB) []string {
	t.Helper()
	set := map[string]bool{}
	for _, n := range r.Recorder.Names() {
		set[n] = true
	}
	mfs, err := r.Registry.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	for _, mf := range mfs {
		set[mf.GetName()] = true
	}
	var out []string
	for n := range set {
		if strings.HasPrefix(n, "mrkrepl_") {
			out = append(out, n)
		}
	}
	slices.Sort(out)
	return out
}

// Start starts a partition (mrkrepltest defaults, per-role NATS users)
// with every component on one registry, replicates one key from the first region to the second,
// and waits until the scrape-time gauges (in-flight index, heartbeats) have
// values. The partition stops with the test.
func Start(t testing.TB) *Running {
	t.Helper()
	reg := obs.NewRegistry()
	rec := NewRecorder(reg)
	// With the production NATS accounts (mrkrepltest's default), so that
	// what the metrics read on scrape is checked against the users'
	// permissions too.
	p := mrkrepltest.New(t, mrkrepltest.Options{Registerer: rec, KMS: true}) // KMS: the endpoints register their metrics
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	regions := p.Regions()
	src := regions[0].Client
	key, err := src.CreateKey(ctx, api.CreateKeyRequest{})
	if err != nil {
		t.Fatalf("create key: %v", err)
	}
	rep, err := src.ReplicateKey(ctx, key.KeyID, regions[1].Name)
	if err != nil {
		t.Fatalf("replicate: %v", err)
	}
	if rep, err = src.WaitReplication(ctx, rep.ReplicationID); err != nil || rep.State != api.StateCompleted {
		t.Fatalf("replication: %v %+v", err, rep)
	}
	r := &Running{Partition: p, Registry: reg, Recorder: rec}
	WaitFor(t, 10*time.Second, "in-flight gauges and heartbeats", func() bool {
		mfs, err := reg.Gather()
		if err != nil {
			return false
		}
		var inflight, heartbeats int
		for _, mf := range mfs {
			switch mf.GetName() {
			case "mrkrepl_worker_replications_in_flight":
				inflight = len(mf.GetMetric())
			case "mrkrepl_proxy_heartbeat_last_success_timestamp_seconds":
				for _, m := range mf.GetMetric() {
					if m.GetGauge().GetValue() > 0 {
						heartbeats++
					}
				}
			}
		}
		n := len(regions)
		return inflight == n && heartbeats == n*(n-1)
	})
	return r
}

// WaitFor polls cond every 20 ms until it holds, failing the test after
// timeout.
func WaitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
