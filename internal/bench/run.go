package bench

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mrkrepl/mrkrepl/api"
	"github.com/mrkrepl/mrkrepl/client"
	"github.com/mrkrepl/mrkrepl/internal/procs"
	"github.com/mrkrepl/mrkrepl/mrkrepltest"
)

// This file is Run: the partition, the keys, the crypto bound before and
// after, and the result.

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
