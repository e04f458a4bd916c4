// Package bench is the engine of "mrkrepl bench": it starts a whole
// partition in the process (package mrkrepltest: an embedded nats-server
// per region on 127.0.0.1, a worker per region, one proxy), creates keys,
// replicates each to the other regions and measures what issue 7 and
// DESIGN §5 ask for:
//
//   - replications per second, end to end (request to source COMPLETED);
//   - latency percentiles to "replica usable" (the destination's
//     ReplicaCreated audit event) and to "confirmed" (the source's
//     ReplicationCompleted event), both from the client's replicate call;
//   - process CPU seconds per replication and peak RSS;
//   - the crypto bound, measured in the same run before the partition
//     starts: the protocol's cryptography alone (MeasureBound) on one
//     goroutine per core (internal/procs.Cores), through the same HSM backend, and the ratio of the
//     achieved rate to it.
//
// Timestamps of the two stages are the ones the workers put in their audit
// events (wall clock of the same process), so the benchmark's own event
// delivery does not add to the latency. Events are followed with ordered
// consumers on each region's events stream; nothing is polled.
//
// A run is bounded in count (Count, or Keys in scale mode), in time
// (Duration) and by Timeout; everything listens on loopback only.
//
// Run is not safe to call concurrently with itself in one process when
// HSM is "softhsm": SoftHSM2's token directory is process-wide (see
// internal/softhsm).
package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mrkrepl/mrkrepl/api"
	"github.com/mrkrepl/mrkrepl/client"
	"github.com/mrkrepl/mrkrepl/internal/layout"
	"github.com/mrkrepl/mrkrepl/internal/procs"
	"github.com/mrkrepl/mrkrepl/mrkrepltest"
	"github.com/nats-io/nats.go/jetstream"
)

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

// jobID names a job: the key and the destination region.
type jobID struct{ key, dst string }

// job is one replication: key, from its primary src to dst.
type job struct {
	key, src, dst string
	start         atomic.Int64 // Unix ns of the replicate call
	usable        atomic.Int64 // Unix ns of the destination's ReplicaCreated
	confirmed     atomic.Int64 // Unix ns of the source's ReplicationCompleted
	failed        atomic.Pointer[string]
	done          chan struct{}
	once          sync.Once
}

// finish ends the job; it reports whether this call did.
func (j *job) finish() (first bool) {
	j.once.Do(func() { close(j.done); first = true })
	return first
}

// run is the state of one benchmark.
type run struct {
	cfg     Config
	regions []string
	jobs    map[jobID]*job
	started atomic.Int64
	ended   atomic.Int64
	failed  atomic.Int64
	servers []*serverProc // with SeparateServers
}

// serverCPU returns the CPU time used so far by the server processes.
func (r *run) serverCPU() time.Duration {
	var t time.Duration
	for _, s := range r.servers {
		t += s.cpu()
	}
	return t
}

// cpu returns the CPU time used so far by the partition: this process, and
// the server processes with SeparateServers.
func (r *run) cpu() time.Duration {
	t := processCPU()
	for _, s := range r.servers {
		t += s.cpu()
	}
	return t
}

// Run runs one benchmark and returns its result. A result is returned with
// an error when some replications failed.
func Run(ctx context.Context, cfg Config) (*Result, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.setDefaults()
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	defer setMemoryLimit(cfg.MemoryLimit)()
	r := &run{cfg: cfg, regions: regionNames(cfg.Regions), jobs: map[jobID]*job{}}

	dir := cfg.Dir
	if dir == "" {
		var err error
		if dir, err = os.MkdirTemp("", "mrkrepl-bench-"); err != nil {
			return nil, err
		}
		defer os.RemoveAll(dir)
	}
	res := &Result{
		Date: time.Now().UTC().Format(time.RFC3339), GoVersion: runtime.Version(),
		GOOS: runtime.GOOS, GOARCH: runtime.GOARCH, NumCPU: runtime.NumCPU(),
		GOMAXPROCS: runtime.GOMAXPROCS(0), Cores: procs.Cores(), Backend: cfg.HSM, Regions: cfg.Regions,
		Concurrency: cfg.Concurrency, WorkerConcurrency: cfg.WorkerConcurrency,
		DelayMS: ms(cfg.Delay), RateTarget: cfg.Rate,
		UsableFloorMS: ms(3 * cfg.Delay), ConfirmedFloorMS: ms(4 * cfg.Delay),
	}

	hsms, err := newHSMSetup(cfg.HSM, filepath.Join(dir, "softhsm"), cfg.Logger)
	if err != nil {
		return nil, err
	}

	// 1. The crypto bound, on idle cores, before anything else runs; it is
	// measured again after the run, and the mean is the bound (on a shared
	// machine the two differ, and the spread says by how much).
	res.LoadAverageStart = loadAverage()
	r.progress(Progress{Phase: "bound"})
	ba, bb, err := hsms.boundPair(ctx)
	if err != nil {
		return nil, err
	}
	defer func() { _ = ba.Close(); _ = bb.Close() }()
	before, err := MeasureBound(ctx, ba, bb, procs.Cores(), cfg.BoundTime)
	if err != nil {
		return nil, err
	}
	if err := r.measureOps(res); err != nil {
		return nil, err
	}

	// 2. The partition.
	r.progress(Progress{Phase: "start"})
	t0 := time.Now()
	hsmFor, hopts, err := hsms.partition(ctx, r.regions)
	if err != nil {
		return nil, err
	}
	hopts.Logger = cfg.Logger
	var urls map[string]string
	if cfg.SeparateServers {
		urls = map[string]string{}
		for _, name := range r.regions {
			s, err := startServerProc(ctx, name, filepath.Join(dir, "servers"))
			if err != nil {
				return nil, err
			}
			defer s.stop()
			r.servers = append(r.servers, s)
			urls[name] = s.hello.URL
		}
	}
	p, err := mrkrepltest.Start(ctx, mrkrepltest.Options{
		Partition: "bench", Regions: r.regions, Dir: filepath.Join(dir, "partition"),
		HSM: hsmFor, HSMOptions: hopts, Logger: cfg.Logger,
		ProxyDelay: cfg.Delay, Concurrency: cfg.WorkerConcurrency,
		ServerURLs: urls,
	})
	if err != nil {
		return nil, fmt.Errorf("start partition: %w", err)
	}
	defer p.Close()
	res.StartupSeconds = time.Since(t0).Seconds()
	clients := map[string]*client.Client{}
	for _, name := range r.regions {
		nc, err := p.Connect(name, "bench")
		if err != nil {
			return nil, err
		}
		clients[name] = client.New(nc, name)
	}

	// 3. The keys, before the clock starts.
	nKeys := r.keysNeeded(before.PerSecond)
	t0 = time.Now()
	keys, err := r.createKeys(ctx, clients, nKeys)
	if err != nil {
		return nil, err
	}
	res.Keys = len(keys)
	res.KeySetupSeconds = time.Since(t0).Seconds()
	var order []*job
	for i, k := range keys {
		src := r.regions[i%len(r.regions)]
		for _, dst := range r.regions {
			if dst != src {
				j := &job{key: k, src: src, dst: dst, done: make(chan struct{})}
				r.jobs[jobID{k, dst}] = j
				order = append(order, j)
			}
		}
	}
	if cfg.Count > 0 && len(order) > cfg.Count {
		order = order[:cfg.Count]
	}

	// 4. Follow every region's audit events.
	for _, name := range r.regions {
		if err := r.follow(ctx, p, name); err != nil {
			return nil, err
		}
	}

	// 5. Replicate.
	if cfg.CPUProfile != nil {
		if err := pprof.StartCPUProfile(cfg.CPUProfile); err != nil {
			return nil, fmt.Errorf("cpu profile: %w", err)
		}
	}
	in0, out0 := r.natsMsgs(p)
	runErr := r.replicate(ctx, clients, order, res)
	in1, out1 := r.natsMsgs(p)
	var mem runtime.MemStats
	runtime.ReadMemStats(&mem)
	res.HeapInuseBytes, res.GoSysBytes = mem.HeapInuse, mem.Sys
	st := readGC()
	res.GOGC, res.MemoryLimitBytes = st.gogc, memoryLimit(st)
	if cfg.MemProfile != nil && runErr == nil {
		runtime.GC()
		if err := pprof.WriteHeapProfile(cfg.MemProfile); err != nil {
			return nil, fmt.Errorf("heap profile: %w", err)
		}
	}
	if cfg.CPUProfile != nil {
		pprof.StopCPUProfile()
	}
	if runErr != nil {
		return nil, runErr
	}
	res.LoadAverageEnd = loadAverage()
	r.progress(Progress{Phase: "bound"})
	after, err := MeasureBound(ctx, ba, bb, procs.Cores(), cfg.BoundTime)
	if err != nil {
		return nil, err
	}
	res.setBound(before, after)
	r.collect(order, res)
	if res.Replications > 0 {
		res.NATSInMsgsPerReplication = float64(in1-in0) / float64(res.Replications)
		res.NATSOutMsgsPerReplication = float64(out1-out0) / float64(res.Replications)
	}
	res.PeakRSSBytes = peakRSS()
	if len(r.servers) > 0 {
		res.SeparateServers = true
		res.ServerPeakRSSBytes = map[string]uint64{}
		for _, s := range r.servers {
			res.ServerPeakRSSBytes[s.region] = s.peakRSS()
		}
	}
	// 6. Where the usable latency went, from the streams' time stamps.
	r.progress(Progress{Phase: "stages"})
	var since int64 = math.MaxInt64
	for _, j := range order[:res.Started] {
		if s := j.start.Load(); s != 0 {
			since = min(since, s)
		}
	}
	if since != math.MaxInt64 {
		st, err := r.stages(ctx, p, order[:res.Started], time.Unix(0, since).Add(-time.Second))
		if err != nil {
			return nil, fmt.Errorf("latency stages: %w", err)
		}
		res.UsableStages = st
	}
	if res.Failed > 0 {
		return res, fmt.Errorf("%d of %d replications failed (first: %s)", res.Failed, res.Started, res.FirstFailure)
	}
	return res, nil
}

// natsMsgs sums the messages the regions' servers received from and sent
// to their clients: JetStream API calls, publishes, acks and deliveries
// all count, which makes it a measure of how chatty a replication is.
func (r *run) natsMsgs(p *mrkrepltest.Partition) (in, out int64) {
	for _, s := range r.servers {
		if i, o, err := s.msgs(); err == nil {
			in += i
			out += o
		}
	}
	for _, r := range p.Regions() {
		if r.Server == nil {
			continue
		}
		if v, err := r.Server.Varz(nil); err == nil {
			in += v.InMsgs
			out += v.OutMsgs
		}
	}
	return in, out
}

func (r *run) progress(p Progress) {
	if r.cfg.Progress != nil {
		r.cfg.Progress(p)
	}
}

// measureOps times the public-key primitives alone, on one core.
func (r *run) measureOps(res *Result) error {
	ops, err := MeasureOpCosts(min(r.cfg.BoundTime/8, 250*time.Millisecond))
	if err != nil {
		return fmt.Errorf("measure crypto operations: %w", err)
	}
	res.CryptoOpsUS = OpsUS{
		Sign: us(ops.Sign), Verify: us(ops.Verify), ECDHKeyGen: us(ops.KeyGen), ECDH: us(ops.ECDH),
	}
	res.PrimitivesCPUMSPerReplication = ms(ops.PerReplication())
	res.PrimitivesBoundPerSecond = float64(procs.Cores()) / ops.PerReplication().Seconds()
	return nil
}

// setBound records the two measurements of the bound and their mean.
func (res *Result) setBound(before, after *Bound) {
	res.CryptoBoundBeforePerSecond = before.PerSecond
	res.CryptoBoundAfterPerSecond = after.PerSecond
	res.CryptoBoundPerSecond = (before.PerSecond + after.PerSecond) / 2
	res.BoundSpread = math.Abs(before.PerSecond-after.PerSecond) / res.CryptoBoundPerSecond
	res.BoundCPUMSPerReplication = ms((before.CPUPerReplication + after.CPUPerReplication) / 2)
	res.BoundSeconds = (before.Elapsed + after.Elapsed).Seconds()
	res.BoundIterations = before.Iterations + after.Iterations
}

// keysNeeded is how many keys the run replicates: Keys, enough for Count,
// or, when only Duration bounds the run, twice what the crypto bound
// allows in Duration plus the keys in flight.
func (r *run) keysNeeded(bound float64) int {
	per := r.cfg.Regions - 1
	switch {
	case r.cfg.Keys > 0:
		return r.cfg.Keys
	case r.cfg.Count > 0:
		return (r.cfg.Count + per - 1) / per
	}
	rate := bound
	if r.cfg.Rate > 0 {
		rate = min(rate, r.cfg.Rate)
	}
	n := int(2*rate*r.cfg.Duration.Seconds())/per + r.cfg.Concurrency
	return min(n, MaxKeys)
}

// createKeys creates n keys, spread over the regions as primaries.
func (r *run) createKeys(ctx context.Context, clients map[string]*client.Client, n int) ([]string, error) {
	keys := make([]string, n)
	var next, done atomic.Int64
	start := time.Now()
	stop := r.ticker(func() Progress {
		return Progress{Phase: "keys", Done: int(done.Load()), Total: n, Elapsed: time.Since(start)}
	})
	defer stop()
	errs := make([]error, min(r.cfg.Concurrency, 64))
	var wg sync.WaitGroup
	for w := range errs {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				region := r.regions[i%len(r.regions)]
				k, err := clients[region].CreateKey(ctx, api.CreateKeyRequest{Description: "bench"})
				if err != nil {
					errs[w] = fmt.Errorf("create key in %s: %w", region, err)
					return
				}
				keys[i] = k.KeyID
				done.Add(1)
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return keys, nil
}

// follow starts an ordered consumer on region's audit events that records
// the stage times of the benchmark's jobs.
func (r *run) follow(ctx context.Context, p *mrkrepltest.Partition, region string) error {
	nc, err := p.Connect(region, "bench-events")
	if err != nil {
		return err
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	cons, err := js.OrderedConsumer(ctx, layout.EventsStream(region), jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{
			layout.EventSubject(region, api.EventReplicaCreated),
			layout.EventSubject(region, api.EventReplicationCompleted),
			layout.EventSubject(region, api.EventReplicationFailed),
		},
		DeliverPolicy: jetstream.DeliverNewPolicy,
	})
	if err != nil {
		return fmt.Errorf("follow events of %s: %w", region, err)
	}
	_, err = cons.Consume(func(msg jetstream.Msg) {
		var ev api.Event
		if err := json.Unmarshal(msg.Data(), &ev); err != nil {
			return
		}
		r.onEvent(&ev)
	})
	if err != nil {
		return fmt.Errorf("follow events of %s: %w", region, err)
	}
	return nil
}

func (r *run) onEvent(ev *api.Event) {
	switch ev.Type {
	case api.EventReplicaCreated: // in the destination
		if j := r.jobs[jobID{ev.KeyID, ev.Region}]; j != nil && j.src == ev.Peer {
			j.usable.Store(ev.Time.UnixNano())
		}
	case api.EventReplicationCompleted: // in the source
		if j := r.jobs[jobID{ev.KeyID, ev.Peer}]; j != nil && j.src == ev.Region {
			j.confirmed.Store(ev.Time.UnixNano())
			if j.finish() {
				r.ended.Add(1)
			}
		}
	case api.EventReplicationFailed: // in either
		j := r.jobs[jobID{ev.KeyID, ev.Peer}]
		if j == nil || j.src != ev.Region {
			j = r.jobs[jobID{ev.KeyID, ev.Region}]
		}
		if j != nil {
			reason := fmt.Sprintf("%s: %s (reported by %s)", j.src+"→"+j.dst, ev.Reason, ev.Region)
			if j.confirmed.Load() == 0 && j.failed.CompareAndSwap(nil, &reason) {
				r.failed.Add(1)
			}
			if j.finish() {
				r.ended.Add(1)
			}
		}
	}
}

// ticker calls r.progress with snap() every 200ms until stop is called;
// snap is called even without a Progress callback: it may sample.
func (r *run) ticker(snap func() Progress) (stop func()) {
	r.progress(snap())
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(200 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-done:
				r.progress(snap())
				return
			case <-t.C:
				r.progress(snap())
			}
		}
	})
	return func() { close(done); wg.Wait() }
}

// cpuSample is the process CPU time when ended replications reached done.
type cpuSample struct {
	done int
	cpu  time.Duration
}

// replicate runs the jobs with at most Concurrency in flight, paced by
// Rate, until Count, Duration or the jobs run out, then waits for those
// in flight.
func (r *run) replicate(ctx context.Context, clients map[string]*client.Client, order []*job, res *Result) error {
	cfg := r.cfg
	total := len(order)
	if cfg.Duration > 0 && cfg.Count == 0 {
		total = 0 // bounded by time: no known total
	}
	var (
		phase    atomic.Value
		samples  []cpuSample
		sampleMu sync.Mutex
	)
	phase.Store("replicate")
	var live liveMax
	gc0, sched0 := readGC(), schedLatencies()
	start := time.Now()
	cpu0, srv0 := r.cpu(), r.serverCPU()
	sampleMu.Lock()
	samples = append(samples, cpuSample{0, cpu0})
	sampleMu.Unlock()
	stop := r.ticker(func() Progress {
		ended := int(r.ended.Load())
		live.sample()
		sampleMu.Lock()
		samples = append(samples, cpuSample{ended, r.cpu()})
		sampleMu.Unlock()
		p := Progress{
			Phase: phase.Load().(string), Done: ended, Total: total,
			InFlight: int(r.started.Load()) - ended, Failed: int(r.failed.Load()),
			Elapsed: time.Since(start),
		}
		if cfg.Duration > 0 {
			p.Remaining = max(cfg.Duration-p.Elapsed, 0)
		}
		return p
	})

	sem := make(chan struct{}, cfg.Concurrency)
	var (
		wg       sync.WaitGroup
		callErr  atomic.Pointer[error]
		stopped  = "count"
		deadline time.Time
	)
	if cfg.Keys > 0 {
		stopped = "keys"
	}
	if cfg.Duration > 0 {
		deadline = start.Add(cfg.Duration)
	}
loop:
	for i, j := range order {
		if cfg.Rate > 0 {
			next := start.Add(time.Duration(float64(i) / cfg.Rate * float64(time.Second)))
			if d := time.Until(next); d > 0 {
				select {
				case <-time.After(d):
				case <-ctx.Done():
					break loop
				}
			}
		}
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			break loop
		}
		if !deadline.IsZero() && !time.Now().Before(deadline) {
			<-sem
			stopped = "duration"
			break loop
		}
		if callErr.Load() != nil {
			<-sem
			break loop
		}
		r.started.Add(1)
		wg.Go(func() {
			defer func() { <-sem }()
			j.start.Store(time.Now().UnixNano())
			if _, err := clients[j.src].ReplicateKey(ctx, j.key, j.dst); err != nil {
				err = fmt.Errorf("replicate %s from %s to %s: %w", j.key, j.src, j.dst, err)
				callErr.CompareAndSwap(nil, &err)
				if j.finish() {
					r.ended.Add(1)
				}
				return
			}
			select {
			case <-j.done:
			case <-ctx.Done():
			}
		})
		if i == len(order)-1 && cfg.Duration > 0 && cfg.Count == 0 {
			stopped = "key pool exhausted"
		}
	}
	launchEnd := time.Now()
	phase.Store("drain")
	wg.Wait()
	cpu1, srv1 := r.cpu(), r.serverCPU()
	stop()
	gc1, sched1 := readGC(), schedLatencies()
	if e := callErr.Load(); e != nil {
		return *e
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("run did not finish within --timeout %s: %d of %d replications ended (raise --timeout or lower --count/--duration): %w",
			cfg.Timeout, r.ended.Load(), r.started.Load(), err)
	}
	// The usable events of the last runs may trail their confirmations.
	waitUsable(order[:r.started.Load()], 2*time.Second)

	res.StoppedBy = stopped
	res.Started = int(r.started.Load())
	res.LaunchSeconds = launchEnd.Sub(start).Seconds()
	res.CPUSeconds = (cpu1 - cpu0).Seconds()
	res.ServerCPUSeconds = (srv1 - srv0).Seconds()
	res.GCCycles = gc1.cycles - gc0.cycles
	res.GCCPUSeconds = gc1.cpu - gc0.cpu
	res.PeakHeapLiveBytes = max(live.get(), gc1.live)
	if w := schedWaitBetween(sched0, sched1); w.Count > 0 {
		res.SchedWait = &SchedWait{P50MS: w.P50, P99MS: w.P99, P999MS: w.P999, Count: w.Count}
	}
	sampleMu.Lock()
	samples = append(samples, cpuSample{int(r.ended.Load()), cpu1})
	res.CPUMSPerReplicationByDecile = deciles(samples, res.Started)
	sampleMu.Unlock()
	return nil
}

func waitUsable(jobs []*job, max time.Duration) {
	deadline := time.Now().Add(max)
	for _, j := range jobs {
		for j.usable.Load() == 0 && j.failed.Load() == nil && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
	}
}

// deciles returns the CPU ms per replication in each tenth of the run,
// from the progress samples (a decile with no sample boundary inside is
// merged into the next).
func deciles(samples []cpuSample, total int) []float64 {
	if total < 10 || len(samples) < 2 {
		return nil
	}
	var out []float64
	prev := samples[0]
	k := 1
	for _, s := range samples[1:] {
		for k <= 10 && s.done >= k*total/10 {
			if s.done > prev.done {
				out = append(out, ms(s.cpu-prev.cpu)/float64(s.done-prev.done))
				prev = s
			}
			k++
		}
	}
	return out
}

// collect computes the result's figures from the jobs.
func (r *run) collect(order []*job, res *Result) {
	var usable, confirmed []time.Duration
	var first, last int64 = math.MaxInt64, 0
	for _, j := range order[:res.Started] {
		s := j.start.Load()
		if s == 0 {
			continue
		}
		first = min(first, s)
		if f := j.failed.Load(); f != nil {
			res.Failed++
			if res.FirstFailure == "" {
				res.FirstFailure = *f
			}
			continue
		}
		if u := j.usable.Load(); u != 0 {
			usable = append(usable, time.Duration(u-s))
		} else {
			res.UsableMissing++
		}
		if c := j.confirmed.Load(); c != 0 {
			confirmed = append(confirmed, time.Duration(c-s))
			last = max(last, c)
			res.Replications++
		}
	}
	if res.Replications > 0 && last > first {
		res.ElapsedSeconds = time.Duration(last - first).Seconds()
		res.ReplicationsPerSecond = float64(res.Replications) / res.ElapsedSeconds
		res.CPUMSPerReplication = res.CPUSeconds * 1000 / float64(res.Replications)
		res.CPUUtilization = res.CPUSeconds / (res.ElapsedSeconds * float64(res.Cores))
		res.GCCPUMSPerReplication = res.GCCPUSeconds * 1000 / float64(res.Replications)
	}
	if res.CryptoBoundPerSecond > 0 {
		res.RatioToBound = res.ReplicationsPerSecond / res.CryptoBoundPerSecond
	}
	if res.CPUMSPerReplication > 0 {
		res.CryptoCPUShare = res.BoundCPUMSPerReplication / res.CPUMSPerReplication
	}
	res.Usable = percentiles(usable)
	res.Confirmed = percentiles(confirmed)
	res.P50UsableMS, res.P90UsableMS, res.P99UsableMS, res.MaxUsableMS = res.Usable.P50, res.Usable.P90, res.Usable.P99, res.Usable.Max
	res.P50ConfirmedMS, res.P90ConfirmedMS, res.P99ConfirmedMS, res.MaxConfirmedMS = res.Confirmed.P50, res.Confirmed.P90, res.Confirmed.P99, res.Confirmed.Max
}

// Percentiles of a latency, in milliseconds.
type Percentiles struct {
	P50 float64 `json:"p50"`
	P90 float64 `json:"p90"`
	P99 float64 `json:"p99"`
	Max float64 `json:"max"`
	N   int     `json:"n"`
}

// percentiles uses the nearest-rank method.
func percentiles(ds []time.Duration) Percentiles {
	if len(ds) == 0 {
		return Percentiles{}
	}
	slices.Sort(ds)
	rank := func(p float64) float64 {
		i := int(math.Ceil(p*float64(len(ds)))) - 1
		return ms(ds[max(i, 0)])
	}
	return Percentiles{P50: rank(0.50), P90: rank(0.90), P99: rank(0.99), Max: ms(ds[len(ds)-1]), N: len(ds)}
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
func us(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }
