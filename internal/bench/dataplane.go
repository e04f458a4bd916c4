package bench

// The data-plane benchmark ("mrkrepl bench --op …"): encrypt, decrypt or
// generate-data-key against an in-process partition with the production
// accounts and key policies, over the NATS API or the KMS endpoint, beside
// the request/reply floor measured in the same run. Targets run one after
// another, round after round (A B C A B C …), so that their ratios compare
// on a shared machine; each phase has a short warm-up that is not counted.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/mrkrepl/mrkrepl/api"
	"github.com/mrkrepl/mrkrepl/internal/procs"
	"github.com/mrkrepl/mrkrepl/mrkrepltest"
)

// Data-plane operations and APIs.
const (
	OpEncrypt         = "encrypt"
	OpDecrypt         = "decrypt"
	OpGenerateDataKey = "generate-data-key"
	APINATS           = "nats"
	APIKMS            = "kms"
)

// Targets of a data-plane run.
const (
	// TargetMrkrepl is the workers' API (NATS: through the application
	// account's service import; KMS: the worker's endpoint, SigV4).
	TargetMrkrepl = "mrkrepl"
	// TargetMrkreplNoAudit is the same on a second partition whose
	// workers publish no data-plane audit events.
	TargetMrkreplNoAudit = "mrkrepl-noaudit"
	// TargetFloor (NATS) is a responder that does no work, in the workers'
	// account, called through the same import with the same payloads.
	TargetFloor = "floor"
	// TargetFloorLocal (NATS) is that responder called from inside the
	// workers' account: no service import.
	TargetFloorLocal = "floor-local"
	// TargetFloorHTTP (KMS) is an HTTP handler that does no work, behind
	// an http.Server set up as the endpoint's, through the same AWS SDK
	// client: the HTTP floor.
	TargetFloorHTTP = "floor-http"
	// TargetFloorSigV4 (KMS) is the endpoint's own server (kmsapi: SigV4
	// verified, the operation routed, the reply encoded) with a handler
	// that does no work.
	TargetFloorSigV4 = "floor-sigv4"
	// TargetPeer (KMS) is another KMS-compatible endpoint (PeerURL), e.g.
	// nsmithuk/local-kms, through the same client.
	TargetPeer = "peer"
)

// DataPlaneConfig describes a data-plane run.
type DataPlaneConfig struct {
	Op  string // OpEncrypt, OpDecrypt or OpGenerateDataKey
	API string // APINATS or APIKMS
	// Concurrency is the number of requests in flight (default 64); with
	// Rate, the most in flight.
	Concurrency int
	// Rate starts requests at this many per second, open loop; latency is
	// then measured from each request's scheduled start (0: closed loop).
	Rate float64
	// Duration (default 5s) or Count bounds each phase.
	Duration time.Duration
	Count    int
	// Warmup runs before each phase, not counted (default 500ms; negative: none).
	Warmup time.Duration
	// Rounds of every target, interleaved (default 3).
	Rounds int
	// Targets to run (default: all of the API's, the peer when PeerURL is
	// set, mrkrepl-noaudit when CompareAudit).
	Targets []string
	// CompareAudit adds TargetMrkreplNoAudit (a second partition).
	CompareAudit bool
	// NoAudit runs the main partition without data-plane audit events.
	NoAudit bool
	// Keys used round robin (default 8); PlaintextBytes per request
	// (default 64; generate-data-key asks for 32-byte keys).
	Keys           int
	PlaintextBytes int
	// WorkerConcurrency is passed to the workers (0: their default).
	WorkerConcurrency int
	// PeerURL is a KMS endpoint to compare (TargetPeer); PeerPID, if set,
	// is its process, whose CPU is counted in its phases.
	PeerURL string
	PeerPID int
	// Timeout ends the whole run (default: enough for every phase + 2m).
	Timeout    time.Duration
	Dir        string
	CPUProfile io.Writer // a CPU profile of every measured phase
	Progress   func(Progress)
	Logger     *slog.Logger
}

// Validate checks c.
func (c *DataPlaneConfig) Validate() error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	switch c.Op {
	case OpEncrypt, OpDecrypt, OpGenerateDataKey:
	default:
		bad("--op %q: want %s, %s or %s", c.Op, OpEncrypt, OpDecrypt, OpGenerateDataKey)
	}
	switch c.API {
	case "", APINATS, APIKMS:
	default:
		bad("--api %q: want %s or %s", c.API, APINATS, APIKMS)
	}
	if c.Concurrency < 0 || c.Concurrency > MaxConcurrency {
		bad("--concurrency %d: want 1 to %d", c.Concurrency, MaxConcurrency)
	}
	if c.Rate < 0 || math.IsNaN(c.Rate) || math.IsInf(c.Rate, 0) {
		bad("--rate %v: want requests per second ≥ 0", c.Rate)
	}
	if c.Duration < 0 || c.Duration > MaxDuration {
		bad("--duration %s: want a positive duration of at most %s", c.Duration, MaxDuration)
	}
	if c.Count < 0 || c.Count > MaxCount {
		bad("--count %d: want 1 to %d", c.Count, MaxCount)
	}
	if c.Rounds < 0 || c.Rounds > 100 {
		bad("--rounds %d: want 1 to 100", c.Rounds)
	}
	if c.Keys < 0 || c.Keys > 10_000 {
		bad("--data-keys %d: want 1 to 10000", c.Keys)
	}
	if c.PlaintextBytes < 0 || c.PlaintextBytes > api.MaxPlaintext {
		bad("--plaintext-bytes %d: want 1 to %d", c.PlaintextBytes, api.MaxPlaintext)
	}
	if c.PeerURL != "" && c.API != APIKMS {
		bad("--peer-url needs --api kms")
	}
	for _, t := range c.Targets {
		if !slices.Contains(c.allTargets(), t) {
			bad("target %q: want one of %s", t, strings.Join(c.allTargets(), ", "))
		}
	}
	return errors.Join(errs...)
}

func (c *DataPlaneConfig) allTargets() []string {
	ts := []string{TargetMrkrepl}
	if c.CompareAudit {
		ts = append(ts, TargetMrkreplNoAudit)
	}
	if c.API == APIKMS {
		ts = append(ts, TargetFloorHTTP, TargetFloorSigV4)
		if c.PeerURL != "" {
			ts = append(ts, TargetPeer)
		}
	} else {
		ts = append(ts, TargetFloor, TargetFloorLocal)
	}
	return ts
}

func (c *DataPlaneConfig) setDefaults() {
	if c.API == "" {
		c.API = APINATS
	}
	if c.Concurrency == 0 {
		c.Concurrency = 64
	}
	if c.Duration == 0 && c.Count == 0 {
		c.Duration = 5 * time.Second
	}
	if c.Warmup == 0 {
		c.Warmup = 500 * time.Millisecond
	}
	if c.Rounds == 0 {
		c.Rounds = 3
	}
	if c.Keys == 0 {
		c.Keys = 8
	}
	if c.PlaintextBytes == 0 {
		c.PlaintextBytes = 64
	}
	if len(c.Targets) == 0 {
		c.Targets = c.allTargets()
	}
	if c.Timeout == 0 {
		per := c.Duration + max(c.Warmup, 0) + 5*time.Second
		if c.Count > 0 {
			per = time.Minute
		}
		c.Timeout = time.Duration(c.Rounds*len(c.Targets))*per + 2*time.Minute
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

// DataPlaneResult is what a data-plane run measured ("mrkrepl bench --op
// … --json").
type DataPlaneResult struct {
	Date             string  `json:"date"`
	GoVersion        string  `json:"go_version"`
	NumCPU           int     `json:"num_cpu"`
	GOMAXPROCS       int     `json:"gomaxprocs"`
	Cores            int     `json:"cores"`
	Op               string  `json:"op"`
	API              string  `json:"api"`
	Client           string  `json:"client"` // what calls the targets
	Concurrency      int     `json:"concurrency"`
	RateTarget       float64 `json:"rate_target"` // requests/s started; 0: closed loop
	Rounds           int     `json:"rounds"`
	PhaseSeconds     float64 `json:"phase_seconds,omitempty"`
	PhaseCount       int     `json:"phase_count,omitempty"`
	WarmupSeconds    float64 `json:"warmup_seconds"`
	Keys             int     `json:"keys"`
	PlaintextBytes   int     `json:"plaintext_bytes"`
	RequestBytes     int     `json:"request_bytes"` // one request's body (NATS: JSON; KMS: JSON, before HTTP)
	ReplyBytes       int     `json:"reply_bytes"`
	Audit            bool    `json:"audit"` // data-plane audit events of the mrkrepl target
	LoadAverageStart float64 `json:"load_average_start"`
	LoadAverageEnd   float64 `json:"load_average_end"`
	StartupSeconds   float64 `json:"startup_seconds"`
	// Phases in the order they ran.
	Phases []DataPlanePhase `json:"phases"`
	// Targets summarises each target over its rounds.
	Targets []DataPlaneTarget `json:"targets"`
	// Ratios of throughput, round by round (each against the phase of the
	// same round).
	Ratios []DataPlaneRatio `json:"ratios"`
}

// DataPlanePhase is one target's phase in one round.
type DataPlanePhase struct {
	Target            string  `json:"target"`
	Round             int     `json:"round"`
	Requests          int     `json:"requests"`
	Errors            int     `json:"errors"`
	FirstError        string  `json:"first_error,omitempty"`
	ElapsedSeconds    float64 `json:"elapsed_seconds"`
	RequestsPerSecond float64 `json:"requests_per_second"`
	P50MS             float64 `json:"p50_ms"`
	P90MS             float64 `json:"p90_ms"`
	P99MS             float64 `json:"p99_ms"`
	MaxMS             float64 `json:"max_ms"`
	// CPUUSPerRequest is the process's CPU (servers, workers, client; and
	// the peer's process when its pid is known) per request, in µs.
	CPUUSPerRequest float64 `json:"cpu_us_per_request"`
	PeerCPUUS       float64 `json:"peer_cpu_us_per_request,omitempty"`
	CPUUtilization  float64 `json:"cpu_utilization"` // of Cores
}

// DataPlaneTarget summarises a target over the rounds.
type DataPlaneTarget struct {
	Target            string  `json:"target"`
	What              string  `json:"what"`
	RequestsPerSecond Spread  `json:"requests_per_second"`
	P50MS             Spread  `json:"p50_ms"`
	P99MS             Spread  `json:"p99_ms"`
	MaxMS             float64 `json:"max_ms"`
	CPUUSPerRequest   Spread  `json:"cpu_us_per_request"`
	Errors            int     `json:"errors"`
}

// Spread is a figure over rounds: its median, lowest and highest.
type Spread struct {
	Median float64 `json:"median"`
	Min    float64 `json:"min"`
	Max    float64 `json:"max"`
}

// DataPlaneRatio is Of's throughput over To's, per round.
type DataPlaneRatio struct {
	Of       string    `json:"of"`
	To       string    `json:"to"`
	Ratio    Spread    `json:"ratio"`
	PerRound []float64 `json:"per_round"`
	// CPURatio is Of's CPU per request over To's (median of the rounds).
	CPURatio float64 `json:"cpu_ratio"`
}

func spread(vs []float64) Spread {
	if len(vs) == 0 {
		return Spread{}
	}
	s := slices.Clone(vs)
	slices.Sort(s)
	m := s[len(s)/2]
	if len(s)%2 == 0 {
		m = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return Spread{Median: m, Min: s[0], Max: s[len(s)-1]}
}

// dpTarget is something to call: call(i) makes the i-th request.
type dpTarget struct {
	name    string
	what    string
	call    func(ctx context.Context, i int) error
	peerPID int
}

// dpSetup is what a run's API set up: its targets and how to stop them.
type dpSetup struct {
	targets             map[string]*dpTarget
	client              string
	reqBytes, respBytes int
	closers             []func()
}

func (s *dpSetup) close() {
	for _, c := range slices.Backward(s.closers) {
		c()
	}
}

// RunDataPlane runs a data-plane benchmark.
func RunDataPlane(ctx context.Context, cfg DataPlaneConfig) (*DataPlaneResult, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.setDefaults()
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	dir := cfg.Dir
	if dir == "" {
		var err error
		if dir, err = os.MkdirTemp("", "mrkrepl-bench-dp-"); err != nil {
			return nil, err
		}
		defer os.RemoveAll(dir)
	}
	res := &DataPlaneResult{
		Date: time.Now().UTC().Format(time.RFC3339), GoVersion: runtime.Version(), NumCPU: runtime.NumCPU(),
		GOMAXPROCS: runtime.GOMAXPROCS(0), Cores: procs.Cores(), Op: cfg.Op, API: cfg.API,
		Concurrency: cfg.Concurrency, RateTarget: cfg.Rate, Rounds: cfg.Rounds,
		PhaseSeconds: cfg.Duration.Seconds(), PhaseCount: cfg.Count, WarmupSeconds: max(cfg.Warmup, 0).Seconds(),
		Keys: cfg.Keys, PlaintextBytes: cfg.PlaintextBytes, Audit: !cfg.NoAudit,
		LoadAverageStart: loadAverage(),
	}
	if cfg.Progress != nil {
		cfg.Progress(Progress{Phase: "start"})
	}
	t0 := time.Now()
	start := func(name string, noAudit bool) (*mrkrepltest.Partition, error) {
		p, err := mrkrepltest.Start(ctx, mrkrepltest.Options{
			Partition: "bench", Regions: []string{dpRegion, "eu-west-1"}, Dir: filepath.Join(dir, name),
			Logger: cfg.Logger, NoProxy: true, NoDataPlaneAudit: noAudit,
			Concurrency: cfg.WorkerConcurrency, KMS: cfg.API == APIKMS,
		})
		if err != nil {
			return nil, fmt.Errorf("start partition: %w", err)
		}
		return p, nil
	}
	var parts []*mrkrepltest.Partition
	defer func() {
		for _, p := range parts {
			p.Close()
		}
	}()
	p, err := start("partition", cfg.NoAudit)
	if err != nil {
		return nil, err
	}
	parts = append(parts, p)
	var pNoAudit *mrkrepltest.Partition
	if slices.Contains(cfg.Targets, TargetMrkreplNoAudit) {
		if pNoAudit, err = start("partition-noaudit", true); err != nil {
			return nil, err
		}
		parts = append(parts, pNoAudit)
	}
	var setup *dpSetup
	if cfg.API == APIKMS {
		setup, err = setupKMS(ctx, &cfg, p, pNoAudit)
	} else {
		setup, err = setupNATS(ctx, &cfg, p, pNoAudit)
	}
	if setup != nil {
		defer setup.close()
	}
	if err != nil {
		return nil, err
	}
	res.Client, res.RequestBytes, res.ReplyBytes = setup.client, setup.reqBytes, setup.respBytes
	res.StartupSeconds = time.Since(t0).Seconds()

	if cfg.CPUProfile != nil {
		if err := pprof.StartCPUProfile(cfg.CPUProfile); err != nil {
			return nil, fmt.Errorf("cpu profile: %w", err)
		}
		defer pprof.StopCPUProfile()
	}
	for round := 1; round <= cfg.Rounds; round++ {
		for _, name := range cfg.Targets {
			t := setup.targets[name]
			ph, err := runPhase(ctx, &cfg, t, round)
			if err != nil {
				return nil, err
			}
			res.Phases = append(res.Phases, *ph)
		}
	}
	res.LoadAverageEnd = loadAverage()
	res.summarise(cfg.Targets, setup.targets)
	for _, ph := range res.Phases {
		if ph.Errors > 0 {
			return res, fmt.Errorf("%s: %d requests failed (first: %s)", ph.Target, ph.Errors, ph.FirstError)
		}
	}
	return res, nil
}

const dpRegion = "us-east-1"

// runPhase runs one target for a warm-up and then for the phase.
func runPhase(ctx context.Context, cfg *DataPlaneConfig, t *dpTarget, round int) (*DataPlanePhase, error) {
	progress := func(phase string, done, inFlight, failed int, el, rem time.Duration) {
		if cfg.Progress != nil {
			cfg.Progress(Progress{Phase: phase, Done: done, Total: cfg.Count, InFlight: inFlight, Failed: failed, Elapsed: el, Remaining: rem})
		}
	}
	label := fmt.Sprintf("%s %s round %d/%d", cfg.Op, t.name, round, cfg.Rounds)
	if cfg.Warmup > 0 {
		if _, err := load(ctx, cfg, t, cfg.Warmup, 0, nil); err != nil {
			return nil, err
		}
	}
	runtime.GC() // the garbage of the warm-up and of other targets is not this phase's
	var peer0 time.Duration
	if t.peerPID > 0 {
		peer0 = procCPU(t.peerPID)
	}
	cpu0 := processCPU()
	st, err := load(ctx, cfg, t, cfg.Duration, cfg.Count, func(done, inFlight, failed int, el time.Duration) {
		rem := time.Duration(0)
		if cfg.Duration > 0 {
			rem = max(cfg.Duration-el, 0)
		}
		progress(label, done, inFlight, failed, el, rem)
	})
	if err != nil {
		return nil, err
	}
	cpu := processCPU() - cpu0
	var peer time.Duration
	if t.peerPID > 0 {
		peer = procCPU(t.peerPID) - peer0
	}
	ph := &DataPlanePhase{Target: t.name, Round: round, Requests: len(st.lat), Errors: st.errors, FirstError: st.firstErr,
		ElapsedSeconds: st.elapsed.Seconds()}
	if st.elapsed > 0 {
		ph.RequestsPerSecond = float64(len(st.lat)) / st.elapsed.Seconds()
		ph.CPUUtilization = (cpu + peer).Seconds() / (st.elapsed.Seconds() * float64(procs.Cores()))
	}
	pc := percentiles(st.lat)
	ph.P50MS, ph.P90MS, ph.P99MS, ph.MaxMS = pc.P50, pc.P90, pc.P99, pc.Max
	if n := len(st.lat) + st.errors; n > 0 {
		ph.CPUUSPerRequest = us(cpu+peer) / float64(n)
		if t.peerPID > 0 {
			ph.PeerCPUUS = us(peer) / float64(n)
		}
	}
	return ph, nil
}

type loadStats struct {
	lat      []time.Duration
	errors   int
	firstErr string
	elapsed  time.Duration
}

// load calls t with cfg.Concurrency in flight (or at cfg.Rate) for d or
// count requests, whichever ends first.
func load(ctx context.Context, cfg *DataPlaneConfig, t *dpTarget, d time.Duration, count int, tick func(done, inFlight, failed int, el time.Duration)) (*loadStats, error) {
	var (
		next, done, failed, inFlight atomic.Int64
		mu                           sync.Mutex
		st                           loadStats
		wg                           sync.WaitGroup
	)
	start := time.Now()
	deadline := time.Time{}
	if d > 0 {
		deadline = start.Add(d)
	}
	more := func(i int64) bool {
		return (count == 0 || i < int64(count)) && (deadline.IsZero() || time.Now().Before(deadline)) && ctx.Err() == nil
	}
	record := func(lats []time.Duration, err error) {
		mu.Lock()
		st.lat = append(st.lat, lats...)
		if err != nil {
			st.errors++
			if st.firstErr == "" {
				st.firstErr = err.Error()
			}
		}
		mu.Unlock()
	}
	stopTick := make(chan struct{})
	var tickWG sync.WaitGroup
	if tick != nil {
		tickWG.Go(func() {
			tk := time.NewTicker(200 * time.Millisecond)
			defer tk.Stop()
			for {
				select {
				case <-stopTick:
					return
				case <-tk.C:
					tick(int(done.Load()), int(inFlight.Load()), int(failed.Load()), time.Since(start))
				}
			}
		})
	}
	if cfg.Rate <= 0 {
		// Closed loop: Concurrency callers, each one request at a time.
		for range cfg.Concurrency {
			wg.Go(func() {
				lats := make([]time.Duration, 0, 1024)
				for {
					i := next.Add(1) - 1
					if !more(i) {
						break
					}
					inFlight.Add(1)
					t0 := time.Now()
					err := t.call(ctx, int(i))
					el := time.Since(t0)
					inFlight.Add(-1)
					if err != nil {
						failed.Add(1)
						record(nil, err)
						continue
					}
					done.Add(1)
					lats = append(lats, el)
				}
				record(lats, nil)
			})
		}
	} else {
		// Open loop: request i is due at start + i/Rate; its latency runs
		// from then, so a queue in front of it counts.
		sem := make(chan struct{}, cfg.Concurrency)
		for i := int64(0); ; i++ {
			due := start.Add(time.Duration(float64(i) / cfg.Rate * float64(time.Second)))
			if dl := time.Until(due); dl > 0 {
				time.Sleep(dl)
			}
			if !more(i) {
				break
			}
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
			}
			if ctx.Err() != nil {
				break
			}
			inFlight.Add(1)
			wg.Go(func() {
				defer func() { <-sem }()
				err := t.call(ctx, int(i))
				el := time.Since(due)
				inFlight.Add(-1)
				if err != nil {
					failed.Add(1)
					record(nil, err)
					return
				}
				done.Add(1)
				record([]time.Duration{el}, nil)
			})
		}
	}
	wg.Wait()
	st.elapsed = time.Since(start)
	close(stopTick)
	tickWG.Wait()
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("%s: run did not finish within --timeout: %w", t.name, err)
	}
	return &st, nil
}

func (res *DataPlaneResult) summarise(names []string, targets map[string]*dpTarget) {
	by := map[string][]DataPlanePhase{}
	for _, ph := range res.Phases {
		by[ph.Target] = append(by[ph.Target], ph)
	}
	for _, name := range names {
		var rps, p50, p99, cpu []float64
		s := DataPlaneTarget{Target: name, What: targets[name].what}
		for _, ph := range by[name] {
			rps = append(rps, ph.RequestsPerSecond)
			p50 = append(p50, ph.P50MS)
			p99 = append(p99, ph.P99MS)
			cpu = append(cpu, ph.CPUUSPerRequest)
			s.MaxMS = max(s.MaxMS, ph.MaxMS)
			s.Errors += ph.Errors
		}
		s.RequestsPerSecond, s.P50MS, s.P99MS, s.CPUUSPerRequest = spread(rps), spread(p50), spread(p99), spread(cpu)
		res.Targets = append(res.Targets, s)
	}
	pairs := [][2]string{
		{TargetMrkrepl, TargetFloor}, {TargetFloor, TargetFloorLocal}, {TargetMrkrepl, TargetFloorLocal},
		{TargetMrkrepl, TargetMrkreplNoAudit},
		{TargetMrkrepl, TargetFloorHTTP}, {TargetMrkrepl, TargetFloorSigV4}, {TargetFloorSigV4, TargetFloorHTTP},
		{TargetMrkrepl, TargetPeer},
	}
	for _, pr := range pairs {
		a, b := by[pr[0]], by[pr[1]]
		if len(a) == 0 || len(a) != len(b) {
			continue
		}
		r := DataPlaneRatio{Of: pr[0], To: pr[1]}
		var cpus []float64
		for i := range a {
			if b[i].RequestsPerSecond > 0 {
				r.PerRound = append(r.PerRound, a[i].RequestsPerSecond/b[i].RequestsPerSecond)
			}
			if b[i].CPUUSPerRequest > 0 {
				cpus = append(cpus, a[i].CPUUSPerRequest/b[i].CPUUSPerRequest)
			}
		}
		r.Ratio, r.CPURatio = spread(r.PerRound), spread(cpus).Median
		res.Ratios = append(res.Ratios, r)
	}
}

// WriteTable writes r for people.
func (r *DataPlaneResult) WriteTable(w io.Writer) error {
	p := func(format string, args ...any) { fmt.Fprintf(w, format+"\n", args...) }
	mode := fmt.Sprintf("%d in flight", r.Concurrency)
	if r.RateTarget > 0 {
		mode = fmt.Sprintf("open loop at %.0f/s (at most %d in flight; latency from each request's due time)", r.RateTarget, r.Concurrency)
	}
	bound := fmt.Sprintf("%.1fs", r.PhaseSeconds)
	if r.PhaseCount > 0 {
		bound = fmt.Sprintf("%d requests", r.PhaseCount)
	}
	p("mrkrepl bench --op %s --api %s\t%s, %s, %d cores (GOMAXPROCS %d)", r.Op, r.API, r.Date, r.GoVersion, r.Cores, r.GOMAXPROCS)
	p("setup: %s; %d rounds of %s per target (after %.1fs of warm-up), interleaved; %d keys, %d-byte plaintexts; request %d B, reply %d B; audit events %v",
		mode, r.Rounds, bound, r.WarmupSeconds, r.Keys, r.PlaintextBytes, r.RequestBytes, r.ReplyBytes, r.Audit)
	p("client: %s", r.Client)
	p("load average %.2f at start, %.2f at end", r.LoadAverageStart, r.LoadAverageEnd)
	p("")
	tw := newTable(w)
	fmt.Fprintln(tw, "target\treq/s (median)\tmin – max\tp50 ms\tp99 ms\tp99 min – max\tmax ms\tCPU µs/req\terrors\t")
	for _, t := range r.Targets {
		fmt.Fprintf(tw, "%s\t%.0f\t%.0f – %.0f\t%.3f\t%.3f\t%.3f – %.3f\t%.1f\t%.0f\t%d\t\n", t.Target, t.RequestsPerSecond.Median,
			t.RequestsPerSecond.Min, t.RequestsPerSecond.Max, t.P50MS.Median, t.P99MS.Median, t.P99MS.Min, t.P99MS.Max, t.MaxMS, t.CPUUSPerRequest.Median, t.Errors)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	p("")
	tw = newTable(w)
	fmt.Fprintln(tw, "ratio of req/s\tmedian\tmin – max\tper round\tCPU/req ratio\t")
	for _, x := range r.Ratios {
		var rs []string
		for _, v := range x.PerRound {
			rs = append(rs, fmt.Sprintf("%.3f", v))
		}
		fmt.Fprintf(tw, "%s / %s\t%.3f\t%.3f – %.3f\t%s\t%.2f\t\n", x.Of, x.To, x.Ratio.Median, x.Ratio.Min, x.Ratio.Max, strings.Join(rs, " "), x.CPURatio)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	p("")
	for _, t := range r.Targets {
		p("%-16s %s", t.Target, t.What)
	}
	return nil
}

func newTable(w io.Writer) *tabwriter.Writer {
	return tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
}

// requestID is an X-Amzn-RequestId as the endpoint makes them.
func requestID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	h := hex.EncodeToString(b[:])
	return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

// loopbackListener listens on 127.0.0.1, a random port.
func loopbackListener() (net.Listener, string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, "", err
	}
	return l, "http://" + l.Addr().String(), nil
}

// httpServer is an http.Server set up as kmsapi.Server.Serve sets its own.
func httpServer(h http.Handler) *http.Server {
	return &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 30 * time.Second,
		IdleTimeout: 2 * time.Minute, MaxHeaderBytes: 64 << 10}
}
