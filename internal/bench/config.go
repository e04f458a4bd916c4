package bench

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"slices"
	"time"

	"github.com/mrkrepl/mrkrepl/mrkrepltest"
)

// This file is the benchmark's configuration: backends, limits, Config
// with its checks and defaults.

// Backends the benchmark can run on.
const (
	HSMSoft    = "soft"    // in-memory software HSM (the embedded default)
	HSMSoftHSM = "softhsm" // a throwaway SoftHSM2 token per region
)

// Limits checked by Config.Validate.
const (
	MaxConcurrency = 4096
	MaxCount       = 10_000_000
	MaxKeys        = 1_000_000
	MaxDuration    = 24 * time.Hour
	MaxDelay       = 10 * time.Second
	MaxRegions     = 8
)

// Config describes one run. The zero value is not valid: set Count,
// Duration or Keys.
type Config struct {
	// HSM is the backend of every region: HSMSoft (default) or HSMSoftHSM.
	HSM string
	// Regions is the number of regions (default 3, at least 2). Each key
	// is replicated from its primary to every other region.
	Regions int
	// Concurrency is the number of replications in flight (default 32).
	Concurrency int
	// Count stops the run after this many replications (0: no limit).
	Count int
	// Duration stops starting replications after this long (0: no limit).
	// With Count too, the first limit reached ends the run.
	Duration time.Duration
	// Keys, in scale mode, creates Keys keys and replicates each to every
	// other region; it excludes Count and Duration.
	Keys int
	// Rate starts replications at this many per second, open loop, still
	// at most Concurrency in flight (0: as fast as Concurrency allows).
	Rate float64
	// Delay is the injected one-way delay between every pair of regions.
	Delay time.Duration
	// WorkerConcurrency is passed to the workers and the proxy (0: their
	// defaults).
	WorkerConcurrency int
	// BoundTime is how long the crypto bound is measured (default 2s).
	BoundTime time.Duration
	// MemoryLimit, if positive, is the Go runtime's soft memory limit
	// (debug.SetMemoryLimit) while Run runs, in bytes; 0 leaves the limit
	// alone (GOMEMLIMIT, if set, applies). The whole partition shares this
	// process's heap: a limit trades GC CPU for peak RSS, and both are
	// reported.
	MemoryLimit int64
	// SeparateServers runs each region's nats-server in a process of its
	// own (this executable started again; its main must call
	// ServeNATSIfChild first), as in a deployment, instead of embedding
	// them: PeakRSSBytes is then this process's alone (workers, proxy,
	// benchmark) and each server's peak RSS is reported apart. CPU figures
	// include the servers' CPU either way.
	SeparateServers bool
	// Timeout ends a run that has not finished (default: Duration + 2
	// minutes, or 10 minutes).
	Timeout time.Duration
	// Dir holds JetStream data and SoftHSM2 tokens; empty means a
	// temporary directory, removed at the end.
	Dir string
	// CPUProfile, if set, receives a CPU profile of the replication phase.
	CPUProfile io.Writer
	// MemProfile, if set, receives a heap profile taken at the end of the
	// replication phase (after a GC).
	MemProfile io.Writer
	// Progress, if set, is called about every 200ms, and at each change of
	// phase, from one goroutine.
	Progress func(Progress)
	// Logger receives the partition's logs; nil discards them.
	Logger *slog.Logger
}

// Progress is the state of a running benchmark.
type Progress struct {
	Phase     string // "bound", "start", "keys", "replicate", "drain"
	Done      int    // keys created (keys) or replications ended (replicate, drain)
	Total     int    // the target of Done, or 0 when bounded by time only
	InFlight  int
	Failed    int
	Elapsed   time.Duration // since the phase began
	Remaining time.Duration // of Duration, when bounded by time
}

// Validate checks c and says precisely what is wrong.
func (c *Config) Validate() error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	switch c.HSM {
	case "", HSMSoft, HSMSoftHSM:
	default:
		bad("--hsm %q: want %s or %s", c.HSM, HSMSoft, HSMSoftHSM)
	}
	if c.Regions != 0 && (c.Regions < 2 || c.Regions > MaxRegions) {
		bad("--regions %d: want 2 to %d", c.Regions, MaxRegions)
	}
	if c.Concurrency < 0 || c.Concurrency > MaxConcurrency {
		bad("--concurrency %d: want 1 to %d", c.Concurrency, MaxConcurrency)
	}
	if c.Count < 0 || c.Count > MaxCount {
		bad("--count %d: want 1 to %d replications", c.Count, MaxCount)
	}
	if c.Duration < 0 || c.Duration > MaxDuration {
		bad("--duration %s: want a positive duration of at most %s", c.Duration, MaxDuration)
	}
	if c.Keys < 0 || c.Keys > MaxKeys {
		bad("--keys %d: want 1 to %d", c.Keys, MaxKeys)
	}
	if c.Keys > 0 && (c.Count > 0 || c.Duration > 0) {
		bad("--keys runs exactly keys×(regions−1) replications: it excludes --count and --duration")
	}
	if c.Keys == 0 && c.Count == 0 && c.Duration == 0 {
		bad("nothing bounds the run: give --count, --duration or --keys")
	}
	if c.Rate < 0 || math.IsNaN(c.Rate) || math.IsInf(c.Rate, 0) {
		bad("--rate %v: want replications per second ≥ 0 (0: no pacing)", c.Rate)
	}
	if c.Delay < 0 || c.Delay > MaxDelay {
		bad("--delay %s: want 0 to %s", c.Delay, MaxDelay)
	}
	if c.WorkerConcurrency < 0 || c.WorkerConcurrency > MaxConcurrency {
		bad("--worker-concurrency %d: want 0 (defaults) to %d", c.WorkerConcurrency, MaxConcurrency)
	}
	if c.BoundTime != 0 && (c.BoundTime < 50*time.Millisecond || c.BoundTime > time.Minute) {
		bad("--bound-time %s: want 50ms to 1m", c.BoundTime)
	}
	if c.Timeout < 0 {
		bad("--timeout %s: want a positive duration", c.Timeout)
	}
	if c.MemoryLimit < 0 {
		bad("--memory-limit %d: want a positive size, or 0 for none", c.MemoryLimit)
	}
	return errors.Join(errs...)
}

func (c *Config) setDefaults() {
	if c.HSM == "" {
		c.HSM = HSMSoft
	}
	if c.Regions == 0 {
		c.Regions = 3
	}
	if c.Concurrency == 0 {
		c.Concurrency = 32
	}
	if c.BoundTime == 0 {
		c.BoundTime = 2 * time.Second
	}
	if c.Timeout == 0 {
		c.Timeout = 10 * time.Minute
		if c.Duration > 0 {
			c.Timeout = c.Duration + 2*time.Minute
		}
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

// regionNames returns n region names, the default ones first.
func regionNames(n int) []string {
	names := slices.Clone(mrkrepltest.DefaultRegions)
	for i := len(names); i < n; i++ {
		names = append(names, fmt.Sprintf("region-%d", i+1))
	}
	return names[:n]
}
