package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/mrkrepl/mrkrepl/internal/bench"
)

// hiddenBenchFlags are for profiling the code, not for users; -h omits them.
var hiddenBenchFlags = map[string]bool{"cpuprofile": true, "memprofile": true}

func runBench(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("bench", "[flags]", stderr)
	var cfg bench.Config
	fs.IntVar(&cfg.Count, "count", 0, "stop after `N` replications")
	fs.DurationVar(&cfg.Duration, "duration", 0, "stop starting replications after this long (default 10s when neither --count nor --keys is given)")
	fs.IntVar(&cfg.Keys, "keys", 0, "scale mode: create `N` keys and replicate each to every other region (excludes --count and --duration)")
	fs.IntVar(&cfg.Concurrency, "concurrency", 32, "replications in flight")
	fs.Float64Var(&cfg.Rate, "rate", 0, "start this many replications per `second`, open loop (0: as fast as --concurrency allows)")
	fs.DurationVar(&cfg.Delay, "delay", 0, "injected one-way delay between every pair of regions (WAN emulation), e.g. 50ms")
	fs.StringVar(&cfg.HSM, "hsm", bench.HSMSoft, "HSM backend of every region: soft or softhsm (a throwaway SoftHSM2 token per region)")
	fs.IntVar(&cfg.Regions, "regions", 3, "number of regions")
	fs.IntVar(&cfg.WorkerConcurrency, "worker-concurrency", 0, "concurrency of the workers and the proxy (0: their defaults)")
	fs.DurationVar(&cfg.BoundTime, "bound-time", 2*time.Second, "how long to measure the crypto bound")
	fs.DurationVar(&cfg.Timeout, "timeout", 0, "give up after this long (default: --duration + 2m, or 10m)")
	fs.Func("memory-limit", "Go soft memory limit of the process while the benchmark runs, as `SIZE`, e.g. 200MiB (default: none, or GOMEMLIMIT); trades GC CPU for peak RSS", func(v string) error {
		n, err := bench.ParseSize(v)
		cfg.MemoryLimit = n
		return err
	})
	fs.BoolVar(&cfg.SeparateServers, "separate-servers", false, "run each region's nats-server in a process of its own, as in a deployment, and report its peak RSS and CPU apart (default: embedded in this process)")
	data := fs.String("data", "", "keep JetStream data and SoftHSM2 tokens in `DIR` (default: a temporary directory, removed at exit)")
	asJSON := fs.Bool("json", false, "print the result as one JSON object instead of a table")
	quiet := fs.Bool("quiet", false, "no progress on stderr")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of the replication phase to `FILE`")
	memProfile := fs.String("memprofile", "", "write a heap profile at the end of the replication phase to `FILE`")
	var dp bench.DataPlaneConfig
	fs.StringVar(&dp.Op, "op", "", "data plane: `OP` encrypt, decrypt or generate-data-key, instead of replication (see below)")
	fs.StringVar(&dp.API, "api", bench.APINATS, "data plane: nats (the request API through a service import) or kms (the KMS endpoint, AWS SDK for Go v2)")
	fs.IntVar(&dp.Rounds, "rounds", 3, "data plane: rounds of every target, interleaved")
	fs.DurationVar(&dp.Warmup, "warmup", 500*time.Millisecond, "data plane: warm-up before each phase, not counted")
	fs.IntVar(&dp.Keys, "data-keys", 8, "data plane: keys the requests use, round robin")
	fs.IntVar(&dp.PlaintextBytes, "plaintext-bytes", 64, "data plane: plaintext size of encrypt (and of the ciphertexts decrypt opens)")
	fs.BoolVar(&dp.CompareAudit, "compare-audit", false, "data plane: also run a second partition without data-plane audit events (target mrkrepl-noaudit)")
	fs.BoolVar(&dp.NoAudit, "no-audit", false, "data plane: the partition's workers publish no data-plane audit events")
	fs.StringVar(&dp.PeerURL, "peer-url", "", "data plane, kms: another KMS endpoint to compare, e.g. a local-kms at http://127.0.0.1:8080 (target peer)")
	fs.IntVar(&dp.PeerPID, "peer-pid", 0, "data plane: the peer's process id, to count its CPU")
	targets := fs.String("targets", "", "data plane: comma-separated targets to run (default all: mrkrepl, floor, floor-local for nats; mrkrepl, floor-http, floor-sigv4, peer for kms)")
	newLogger := logFlags(fs, "error")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: mrkrepl bench [flags]\n\n")
		fmt.Fprintf(stderr, "Start a partition in this process, replicate keys across it and report throughput,\n")
		fmt.Fprintf(stderr, "latency, CPU and memory against the crypto bound measured in the same run.\n\n")
		fmt.Fprintf(stderr, "With --op, measure the data plane instead: requests against one region (accounts and\n")
		fmt.Fprintf(stderr, "key policies on) with --concurrency in flight (default 64) or at --rate per second, for\n")
		fmt.Fprintf(stderr, "--duration (default 5s) or --count requests per phase, beside the request/reply floor,\n")
		fmt.Fprintf(stderr, "round after round in one run; it reports requests/s, latency, CPU per request and ratios.\n\n")
		fmt.Fprintf(stderr, "Like every mrkrepl command it runs two Ps per core unless GOMAXPROCS is set or a CPU\n")
		fmt.Fprintf(stderr, "quota applies (docs/OPERATIONS.md, \"CPU\"); the bound runs on one goroutine per core.\n\nflags:\n")
		shown := flag.NewFlagSet("", flag.ContinueOnError)
		shown.SetOutput(stderr)
		fs.VisitAll(func(f *flag.Flag) {
			if !hiddenBenchFlags[f.Name] {
				shown.Var(f.Value, f.Name, f.Usage)
			}
		})
		shown.PrintDefaults()
	}
	if err := parseFlags(fs, args, false); err != nil {
		return err
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if set["op"] {
		return runDataPlaneBench(ctx, fs, &dp, &cfg, set, *targets, *data, *asJSON, *quiet, *cpuProfile, newLogger, stdout, stderr)
	}
	for _, name := range []string{"api", "rounds", "warmup", "data-keys", "plaintext-bytes", "compare-audit", "no-audit", "peer-url", "peer-pid", "targets"} {
		if set[name] {
			return fmt.Errorf("--%s is a data-plane flag: give --op too", name)
		}
	}
	if !set["count"] && !set["duration"] && !set["keys"] {
		cfg.Duration = 10 * time.Second
	}
	for _, name := range []string{"count", "keys", "concurrency", "regions"} {
		if set[name] && fs.Lookup(name).Value.String() == "0" {
			return fmt.Errorf("--%s 0: want at least 1", name)
		}
	}
	if set["duration"] && cfg.Duration <= 0 {
		return fmt.Errorf("--duration %s: want a positive duration", cfg.Duration)
	}
	if err := cfg.Validate(); err != nil {
		return err
	}
	logger, err := newLogger(stderr)
	if err != nil {
		return err
	}
	cfg.Logger = logger
	cfg.Dir = *data
	if *data != "" {
		if err := os.MkdirAll(*data, 0o700); err != nil {
			return fmt.Errorf("--data: %w", err)
		}
	}
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			return fmt.Errorf("--cpuprofile: %w", err)
		}
		defer f.Close()
		cfg.CPUProfile = f
	}
	if *memProfile != "" {
		f, err := os.Create(*memProfile)
		if err != nil {
			return fmt.Errorf("--memprofile: %w", err)
		}
		defer f.Close()
		cfg.MemProfile = f
	}
	var pr *benchProgressLine
	if !*quiet {
		pr = newBenchProgressLine(stderr)
		cfg.Progress = pr.update
	}
	res, runErr := bench.Run(ctx, cfg)
	if pr != nil {
		pr.clear()
	}
	if res == nil {
		return runErr
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(res); err != nil {
			return err
		}
	} else if err := res.WriteTable(stdout); err != nil {
		return err
	}
	return runErr
}

// runDataPlaneBench is "mrkrepl bench --op …".
func runDataPlaneBench(ctx context.Context, fs *flag.FlagSet, dp *bench.DataPlaneConfig, cfg *bench.Config, set map[string]bool, targets, data string,
	asJSON, quiet bool, cpuProfile string, newLogger func(io.Writer) (*slog.Logger, error), stdout, stderr io.Writer) error {
	for _, name := range []string{"keys", "delay", "hsm", "regions", "separate-servers", "memory-limit", "bound-time", "memprofile"} {
		if set[name] {
			return fmt.Errorf("--%s is a replication flag: not with --op", name)
		}
	}
	for _, name := range []string{"count", "concurrency", "rounds", "data-keys", "plaintext-bytes"} {
		if set[name] && fs.Lookup(name).Value.String() == "0" {
			return fmt.Errorf("--%s 0: want at least 1", name)
		}
	}
	if set["concurrency"] {
		dp.Concurrency = cfg.Concurrency
	}
	if set["duration"] && cfg.Duration <= 0 {
		return fmt.Errorf("--duration %s: want a positive duration", cfg.Duration)
	}
	dp.Duration, dp.Count, dp.Rate, dp.Timeout = cfg.Duration, cfg.Count, cfg.Rate, cfg.Timeout
	dp.WorkerConcurrency = cfg.WorkerConcurrency
	if set["warmup"] && dp.Warmup == 0 {
		dp.Warmup = -1
	}
	if targets != "" {
		dp.Targets = strings.Split(targets, ",")
	}
	if err := dp.Validate(); err != nil {
		return err
	}
	logger, err := newLogger(stderr)
	if err != nil {
		return err
	}
	dp.Logger = logger
	dp.Dir = data
	if data != "" {
		if err := os.MkdirAll(data, 0o700); err != nil {
			return fmt.Errorf("--data: %w", err)
		}
	}
	if cpuProfile != "" {
		f, err := os.Create(cpuProfile)
		if err != nil {
			return fmt.Errorf("--cpuprofile: %w", err)
		}
		defer f.Close()
		dp.CPUProfile = f
	}
	var pr *benchProgressLine
	if !quiet {
		pr = newBenchProgressLine(stderr)
		dp.Progress = pr.update
	}
	res, runErr := bench.RunDataPlane(ctx, *dp)
	if pr != nil {
		pr.clear()
	}
	if res == nil {
		return runErr
	}
	if asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(res); err != nil {
			return err
		}
	} else if err := res.WriteTable(stdout); err != nil {
		return err
	}
	return runErr
}

// progressLine shows a benchmark's progress on stderr: redrawn in place on
// a terminal, a line every few seconds (and at each phase) otherwise.
type benchProgressLine struct {
	w     io.Writer
	tty   bool
	mu    sync.Mutex
	phase string
	last  time.Time
	drawn bool
}

func newBenchProgressLine(w io.Writer) *benchProgressLine {
	tty := false
	if f, ok := w.(*os.File); ok {
		if st, err := f.Stat(); err == nil && st.Mode()&os.ModeCharDevice != 0 {
			tty = true
		}
	}
	return &benchProgressLine{w: w, tty: tty}
}

func (p *benchProgressLine) update(s bench.Progress) {
	p.mu.Lock()
	defer p.mu.Unlock()
	line := benchProgressText(s)
	switch {
	case p.tty:
		fmt.Fprintf(p.w, "\r%s\x1b[K", line)
		p.drawn = true
	case s.Phase != p.phase || time.Since(p.last) >= 5*time.Second:
		fmt.Fprintln(p.w, line)
		p.last = time.Now()
	}
	p.phase = s.Phase
}

func (p *benchProgressLine) clear() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.drawn {
		fmt.Fprint(p.w, "\r\x1b[K")
		p.drawn = false
	}
}

func benchProgressText(s bench.Progress) string {
	el := s.Elapsed.Round(100 * time.Millisecond)
	switch s.Phase {
	case "bound":
		return "bench: measuring the crypto bound…"
	case "start":
		return "bench: starting the partition…"
	case "keys":
		return fmt.Sprintf("bench: creating keys %s %d/%d  %s", benchBar(benchFrac(s.Done, s.Total)), s.Done, s.Total, el)
	}
	f := benchFrac(s.Done, s.Total)
	total := fmt.Sprint(s.Total)
	if s.Total == 0 && s.Elapsed+s.Remaining > 0 {
		f = float64(s.Elapsed) / float64(s.Elapsed+s.Remaining)
		total = "?"
	}
	rate := 0.0
	if s.Elapsed > 0 {
		rate = float64(s.Done) / s.Elapsed.Seconds()
	}
	var b strings.Builder
	fmt.Fprintf(&b, "bench: %s %s %d/%s  %.0f/s  in flight %d", s.Phase, benchBar(f), s.Done, total, rate, s.InFlight)
	if s.Failed > 0 {
		fmt.Fprintf(&b, "  failed %d", s.Failed)
	}
	fmt.Fprintf(&b, "  %s", el)
	if s.Remaining > 0 {
		fmt.Fprintf(&b, " (%s left)", s.Remaining.Round(time.Second))
	}
	return b.String()
}

func benchFrac(done, total int) float64 {
	if total <= 0 {
		return 0
	}
	return min(float64(done)/float64(total), 1)
}

func benchBar(f float64) string {
	const width = 20
	n := int(f * width)
	return "[" + strings.Repeat("#", n) + strings.Repeat(".", width-n) + "]"
}
