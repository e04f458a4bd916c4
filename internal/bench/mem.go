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
