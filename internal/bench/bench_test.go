package bench

import (
	"context"
	"errors"
	"math"
	"runtime/debug"
	"runtime/metrics"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mrkrepl/mrkrepl/hsmsvc"
	"github.com/mrkrepl/mrkrepl/internal/procs"
	"github.com/mrkrepl/mrkrepl/internal/softhsm"
)

func TestValidate(t *testing.T) {
	ok := Config{Count: 1}
	if err := ok.Validate(); err != nil {
		t.Fatalf("Config{Count: 1}: %v", err)
	}
	for _, tc := range []struct {
		cfg  Config
		want string
	}{
		{Config{}, "nothing bounds the run"},
		{Config{Count: -1}, "--count -1: want 1 to"},
		{Config{Count: MaxCount + 1}, "--count 10000001"},
		{Config{Duration: -time.Second}, "--duration -1s"},
		{Config{Duration: 25 * time.Hour}, "--duration 25h0m0s"},
		{Config{Keys: 10, Count: 5}, "excludes --count and --duration"},
		{Config{Keys: 10, Duration: time.Second}, "excludes --count and --duration"},
		{Config{Keys: -3}, "--keys -3"},
		{Config{Count: 1, HSM: "tpm"}, `--hsm "tpm": want soft or softhsm`},
		{Config{Count: 1, Regions: 1}, "--regions 1: want 2 to 8"},
		{Config{Count: 1, Concurrency: -1}, "--concurrency -1"},
		{Config{Count: 1, Concurrency: MaxConcurrency + 1}, "--concurrency 4097"},
		{Config{Count: 1, Rate: -1}, "--rate -1"},
		{Config{Count: 1, Delay: -time.Millisecond}, "--delay -1ms"},
		{Config{Count: 1, Delay: time.Minute}, "--delay 1m0s: want 0 to 10s"},
		{Config{Count: 1, WorkerConcurrency: -2}, "--worker-concurrency -2"},
		{Config{Count: 1, BoundTime: time.Millisecond}, "--bound-time 1ms"},
		{Config{Count: 1, Timeout: -time.Second}, "--timeout -1s"},
		{Config{Count: 1, MemoryLimit: -1}, "--memory-limit -1"},
	} {
		err := tc.cfg.Validate()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: error %v, want one containing %q", tc.cfg, err, tc.want)
		}
	}
	// Every problem is reported at once.
	err := (&Config{Count: -1, HSM: "x"}).Validate()
	if err == nil || !strings.Contains(err.Error(), "--count") || !strings.Contains(err.Error(), "--hsm") {
		t.Errorf("two problems: %v, want both named", err)
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{
		"0": 0, "123": 123, "123B": 123, "2KiB": 2 << 10, "200MiB": 200 << 20, "1GiB": 1 << 30, "3TiB": 3 << 40,
	} {
		if got, err := ParseSize(in); err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "MiB", "-1", "1.5GiB", "200MB", "12XB", "9999999TiB"} {
		if _, err := ParseSize(in); err == nil {
			t.Errorf("ParseSize(%q): no error", in)
		}
	}
}

func TestSetMemoryLimit(t *testing.T) {
	prev := debug.SetMemoryLimit(-1)
	restore := setMemoryLimit(1 << 40)
	if got := memoryLimit(readGC()); got != 1<<40 {
		t.Errorf("limit in effect %d, want %d", got, int64(1<<40))
	}
	restore()
	if got := debug.SetMemoryLimit(-1); got != prev {
		t.Errorf("limit after restore %d, want %d", got, prev)
	}
	setMemoryLimit(0)() // no limit asked: nothing changes
	if got := debug.SetMemoryLimit(-1); got != prev {
		t.Errorf("limit after setMemoryLimit(0) %d, want %d", got, prev)
	}
}

func TestPercentiles(t *testing.T) {
	var ds []time.Duration
	for i := 100; i >= 1; i-- {
		ds = append(ds, time.Duration(i)*time.Millisecond)
	}
	got := percentiles(ds)
	want := Percentiles{P50: 50, P90: 90, P99: 99, Max: 100, N: 100}
	if got != want {
		t.Errorf("percentiles(1..100ms) = %+v, want %+v", got, want)
	}
	if got := percentiles([]time.Duration{7 * time.Millisecond}); got.P50 != 7 || got.P99 != 7 || got.Max != 7 {
		t.Errorf("percentiles of one value = %+v", got)
	}
	if got := percentiles(nil); got != (Percentiles{}) {
		t.Errorf("percentiles(nil) = %+v, want zero", got)
	}
}

func TestDeciles(t *testing.T) {
	var s []cpuSample
	for i := 0; i <= 100; i += 5 {
		s = append(s, cpuSample{done: i, cpu: time.Duration(i) * 2 * time.Millisecond})
	}
	got := deciles(s, 100)
	if len(got) != 10 {
		t.Fatalf("deciles = %v, want 10 values", got)
	}
	for _, v := range got {
		if v != 2 {
			t.Errorf("deciles = %v, want 2 ms each", got)
			break
		}
	}
	if got := deciles(s[:1], 100); got != nil {
		t.Errorf("one sample: %v, want nil", got)
	}
}

func TestMeasureBoundSoft(t *testing.T) {
	ctx := t.Context()
	a, err := hsmsvc.Open(ctx, "soft:", hsmsvc.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := hsmsvc.Open(ctx, "soft:", hsmsvc.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	bound, err := MeasureBound(ctx, a, b, 2, 100*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if bound.Iterations < 1 || bound.PerSecond <= 0 || bound.Procs != 2 {
		t.Errorf("bound = %+v", bound)
	}
	if _, err := MeasureBound(ctx, a, b, 0, time.Millisecond); err == nil {
		t.Error("procs 0: no error")
	}
}

func TestMeasureOpCosts(t *testing.T) {
	c, err := MeasureOpCosts(5 * time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if c.Sign <= 0 || c.Verify <= 0 || c.KeyGen <= 0 || c.ECDH <= 0 {
		t.Errorf("op costs %+v, want all positive", c)
	}
	if c.PerReplication() != 4*c.Sign+8*c.Verify+2*c.KeyGen+2*c.ECDH {
		t.Error("PerReplication does not add up")
	}
}

func TestSchedWaitBetween(t *testing.T) {
	// Buckets in seconds: [0,1ms) [1ms,2ms) [2ms,4ms) [4ms,+Inf).
	buckets := []float64{0, 0.001, 0.002, 0.004, math.Inf(1)}
	a := &metrics.Float64Histogram{Buckets: buckets, Counts: []uint64{100, 5, 5, 5}}
	b := &metrics.Float64Histogram{Buckets: buckets, Counts: []uint64{1090, 6, 5, 6}}
	// Between them: 990, 1, 0, 1 — 992 waits.
	w := schedWaitBetween(a, b)
	if w.Count != 992 || w.P50 != 1 || w.P99 != 1 || w.P999 != 4 {
		t.Errorf("got %+v, want 992 waits, p50 1 ms, p99 1 ms, p99.9 4 ms (the open bucket's lower bound)", w)
	}
	b.Counts = []uint64{1000, 50, 50, 16}
	if w := schedWaitBetween(a, b); w.Count != 1001 || w.P50 != 1 || w.P99 != 4 || w.P999 != 4 {
		t.Errorf("got %+v, want 1001 waits, p50 1, p99 4, p99.9 4", w)
	}
	if w := schedWaitBetween(a, a); w.Count != 0 {
		t.Errorf("no waits between equal readings: got %+v", w)
	}
	if w := schedWaitBetween(nil, b); w.Count != 0 {
		t.Errorf("no reading: got %+v", w)
	}
}

// runSmall runs a few replications and checks that every figure is there.
func runSmall(t *testing.T, cfg Config) *Result {
	t.Helper()
	var mu sync.Mutex
	phases := map[string]bool{}
	cfg.Progress = func(p Progress) { mu.Lock(); phases[p.Phase] = true; mu.Unlock() }
	cfg.BoundTime = 100 * time.Millisecond
	cfg.Dir = t.TempDir()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	res, err := Run(ctx, cfg)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	for _, ph := range []string{"bound", "start", "keys", "replicate"} {
		if !phases[ph] {
			t.Errorf("no progress in phase %q (saw %v)", ph, phases)
		}
	}
	if res.Failed != 0 || res.UsableMissing != 0 {
		t.Errorf("failed %d, usable missing %d", res.Failed, res.UsableMissing)
	}
	for name, v := range map[string]float64{
		"replications_per_second": res.ReplicationsPerSecond, "crypto_bound_per_second": res.CryptoBoundPerSecond,
		"ratio_to_bound": res.RatioToBound, "p99_usable_ms": res.P99UsableMS, "p99_confirmed_ms": res.P99ConfirmedMS,
		"peak_rss_bytes": float64(res.PeakRSSBytes), "cpu_ms_per_replication": res.CPUMSPerReplication,
	} {
		if !(v > 0) {
			t.Errorf("%s = %v, want > 0", name, v)
		}
	}
	// (A short run may end inside a GC cycle: collector CPU without a
	// completed cycle is possible; and the runtime's GC CPU is an estimate
	// that runtime/metrics says not to compare with the process's CPU.)
	if res.PeakHeapLiveBytes == 0 || res.GCCPUSeconds < 0 {
		t.Errorf("gc figures: live heap %d, %d cycles, %.3fs of GC CPU", res.PeakHeapLiveBytes, res.GCCycles, res.GCCPUSeconds)
	}
	if res.Cores != procs.Cores() || res.Cores < 1 || res.GOMAXPROCS < 1 {
		t.Errorf("cores %d, gomaxprocs %d; want cores = %d (procs.Cores)", res.Cores, res.GOMAXPROCS, procs.Cores())
	}
	if w := res.SchedWait; w == nil || w.Count == 0 || w.P50MS > w.P99MS || w.P99MS > w.P999MS {
		t.Errorf("sched_wait %+v, want wake-ups counted and ordered quantiles", w)
	}
	if len(res.UsableStages) != len(usableStages) {
		t.Errorf("%d usable stages, want %d", len(res.UsableStages), len(usableStages))
	}
	for _, s := range res.UsableStages {
		if s.N != res.Replications || s.P50 < 0 {
			t.Errorf("stage %q: %d replications (want %d), p50 %.2fms", s.Stage, s.N, res.Replications, s.P50)
		}
	}
	if res.P50UsableMS > res.P50ConfirmedMS {
		t.Errorf("p50 usable %.1fms after p50 confirmed %.1fms", res.P50UsableMS, res.P50ConfirmedMS)
	}
	var sb strings.Builder
	if err := res.WriteTable(&sb); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"throughput", "crypto bound", "ratio to bound", "usable", "confirmed", "peak rss", "live heap up to", "wait for a P", "usable, by stage"} {
		if !strings.Contains(sb.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, sb.String())
		}
	}
	return res
}

func TestRunCount(t *testing.T) {
	res := runSmall(t, Config{Count: 5, Concurrency: 3})
	if res.Replications != 5 || res.Keys != 3 || res.StoppedBy != "count" {
		t.Errorf("replications %d from %d keys, stopped by %s; want 5 from 3, count", res.Replications, res.Keys, res.StoppedBy)
	}
}

func TestRunMemoryLimit(t *testing.T) {
	prev := debug.SetMemoryLimit(-1)
	res := runSmall(t, Config{Count: 2, Concurrency: 2, MemoryLimit: 1 << 40})
	if res.MemoryLimitBytes != 1<<40 {
		t.Errorf("memory_limit_bytes %d, want %d", res.MemoryLimitBytes, int64(1<<40))
	}
	if got := debug.SetMemoryLimit(-1); got != prev {
		t.Errorf("limit after Run %d, want the previous %d", got, prev)
	}
}

func TestRunKeysWithDelay(t *testing.T) {
	const delay = 20 * time.Millisecond
	res := runSmall(t, Config{Keys: 2, Regions: 2, Delay: delay, Rate: 50})
	if res.Replications != 2 || res.StoppedBy != "keys" {
		t.Errorf("replications %d, stopped by %s; want 2, keys", res.Replications, res.StoppedBy)
	}
	// Three crossings before the replica is usable, four before confirmed.
	if res.Usable.P50 < 3*20 || res.Confirmed.P50 < 4*20 {
		t.Errorf("latency usable %.1fms, confirmed %.1fms: below the floors 60ms and 80ms", res.Usable.P50, res.Confirmed.P50)
	}
	// The delay is in the proxy's three hops, not in the regions' steps.
	var hops float64
	for _, s := range res.UsableStages {
		if strings.HasPrefix(s.Stage, "proxy:") {
			if s.P50 < 20 {
				t.Errorf("stage %q p50 %.1fms, below the injected 20ms", s.Stage, s.P50)
			}
			hops++
		} else if s.Max >= float64(res.Usable.Max) {
			t.Errorf("stage %q max %.1fms, not below the whole usable latency's max %.1fms", s.Stage, s.Max, res.Usable.Max)
		}
	}
	if hops != 3 {
		t.Errorf("%v proxy stages, want 3", hops)
	}
}

func TestRunDuration(t *testing.T) {
	res := runSmall(t, Config{Duration: 300 * time.Millisecond, Concurrency: 4})
	if res.Replications < 1 || res.StoppedBy != "duration" {
		t.Errorf("replications %d, stopped by %s; want some, duration", res.Replications, res.StoppedBy)
	}
}

func TestRunSoftHSM(t *testing.T) {
	if err := softhsm.Available(); err != nil {
		softhsm.Unavailable(t, err)
	}
	if testing.Short() {
		t.Skip("SoftHSM2 run is slow; skipped with -short")
	}
	res := runSmall(t, Config{Count: 2, HSM: HSMSoftHSM, Regions: 2})
	if res.Backend != HSMSoftHSM || res.Replications != 2 {
		t.Errorf("backend %s, %d replications", res.Backend, res.Replications)
	}
}

func TestRunInvalid(t *testing.T) {
	_, err := Run(t.Context(), Config{})
	if err == nil || !strings.Contains(err.Error(), "nothing bounds the run") {
		t.Errorf("Run(Config{}) = %v", err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	_, err = Run(ctx, Config{Count: 1, BoundTime: 50 * time.Millisecond, Dir: t.TempDir()})
	if !errors.Is(err, context.Canceled) {
		t.Errorf("Run with a cancelled context = %v, want context.Canceled", err)
	}
}
