package bench

import (
	"fmt"
	"math"
	"runtime/debug"
	"runtime/metrics"
	"strconv"
	"strings"
	"sync"
)

// gcState is the Go runtime's own account of its heap and collector.
type gcState struct {
	live   uint64  // bytes of heap the last GC found reachable
	cycles uint64  // completed GC cycles
	cpu    float64 // CPU seconds the collector used (estimate of the runtime)
	gogc   uint64  // GOGC in effect
	limit  uint64  // memory limit in effect (math.MaxInt64: none)
}

var gcMetrics = []string{
	"/gc/heap/live:bytes",
	"/gc/cycles/total:gc-cycles",
	"/cpu/classes/gc/total:cpu-seconds",
	"/gc/gogc:percent",
	"/gc/gomemlimit:bytes",
}

func readGC() gcState {
	s := make([]metrics.Sample, len(gcMetrics))
	for i, name := range gcMetrics {
		s[i].Name = name
	}
	metrics.Read(s)
	u := func(i int) uint64 {
		if s[i].Value.Kind() == metrics.KindUint64 {
			return s[i].Value.Uint64()
		}
		return 0
	}
	var cpu float64
	if s[2].Value.Kind() == metrics.KindFloat64 {
		cpu = s[2].Value.Float64()
	}
	return gcState{live: u(0), cycles: u(1), cpu: cpu, gogc: u(3), limit: u(4)}
}

// liveMax tracks the largest live heap seen by the samples.
type liveMax struct {
	mu  sync.Mutex
	max uint64
}

func (m *liveMax) sample() {
	v := readGC().live
	m.mu.Lock()
	m.max = max(m.max, v)
	m.mu.Unlock()
}

func (m *liveMax) get() uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.max
}

// setMemoryLimit sets the Go runtime's soft memory limit to n bytes (n > 0)
// and returns a function that restores the previous one.
func setMemoryLimit(n int64) (restore func()) {
	if n <= 0 {
		return func() {}
	}
	prev := debug.SetMemoryLimit(n)
	return func() { debug.SetMemoryLimit(prev) }
}

// memoryLimit reports the limit in effect, 0 when there is none.
func memoryLimit(st gcState) uint64 {
	if st.limit == 0 || st.limit >= math.MaxInt64 {
		return 0
	}
	return st.limit
}

// ParseSize parses a size as GOMEMLIMIT writes it: a non-negative integer
// with an optional unit B, KiB, MiB, GiB or TiB ("200MiB").
func ParseSize(s string) (int64, error) {
	num, mult := s, int64(1)
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1 << 40}, {"B", 1}} {
		if n, ok := strings.CutSuffix(s, u.suffix); ok {
			num, mult = n, u.mult
			break
		}
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n < 0 || n > math.MaxInt64/mult {
		return 0, fmt.Errorf("size %q: want a whole number of bytes, KiB, MiB, GiB or TiB (e.g. 200MiB)", s)
	}
	return n * mult, nil
}

// schedLatencies reads the Go scheduler's histogram of the time goroutines
// spent runnable before they ran (runtime/metrics /sched/latencies:seconds):
// the wait for a P, cumulative since the process started.
func schedLatencies() *metrics.Float64Histogram {
	s := []metrics.Sample{{Name: "/sched/latencies:seconds"}}
	metrics.Read(s)
	if s[0].Value.Kind() != metrics.KindFloat64Histogram {
		return nil
	}
	return s[0].Value.Float64Histogram()
}

// schedWait is the wait for a P between two readings of schedLatencies: the
// quantiles (0.5, 0.99, 0.999) in milliseconds, each the upper bound of its
// histogram bucket (the lower for the open last one), and the number of
// waits. Zero without readings.
type schedWait struct {
	P50, P99, P999 float64
	Count          uint64
}

func schedWaitBetween(a, b *metrics.Float64Histogram) schedWait {
	if a == nil || b == nil || len(a.Counts) != len(b.Counts) {
		return schedWait{}
	}
	counts := make([]uint64, len(b.Counts))
	var total uint64
	for i := range counts {
		counts[i] = b.Counts[i] - a.Counts[i]
		total += counts[i]
	}
	if total == 0 {
		return schedWait{}
	}
	q := func(f float64) float64 {
		want := uint64(math.Ceil(f * float64(total)))
		var seen uint64
		for i, c := range counts {
			if seen += c; seen >= want {
				if up := b.Buckets[i+1]; !math.IsInf(up, 1) {
					return up * 1000
				}
				return b.Buckets[i] * 1000 // the last bucket's lower bound
			}
		}
		return b.Buckets[len(b.Buckets)-2] * 1000
	}
	return schedWait{P50: q(0.5), P99: q(0.99), P999: q(0.999), Count: total}
}
