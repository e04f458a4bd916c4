package bench

import (
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
)

// Result is what one run measured. Its JSON form is what "mrkrepl bench
// --json" prints; the field names are a compatibility promise.
type Result struct {
	// The machine and the run.
	Date       string `json:"date"` // RFC 3339, UTC
	GoVersion  string `json:"go_version"`
	GOOS       string `json:"goos"`
	GOARCH     string `json:"goarch"`
	NumCPU     int    `json:"num_cpu"`
	GOMAXPROCS int    `json:"gomaxprocs"`
	// Cores are the CPUs the process may use (internal/procs.Cores: GOMAXPROCS
	// as the runtime set it at start). The crypto bound runs on that many
	// goroutines and cpu_utilization is of that many cores; mrkrepl runs
	// with twice as many Ps unless GOMAXPROCS is set (internal/procs).
	Cores             int     `json:"cores"`
	Backend           string  `json:"backend"`
	Regions           int     `json:"regions"`
	Concurrency       int     `json:"concurrency"`
	WorkerConcurrency int     `json:"worker_concurrency"` // 0: the workers' and proxy's defaults
	DelayMS           float64 `json:"delay_ms"`           // injected one-way delay per pair
	RateTarget        float64 `json:"rate_target"`        // replications/s started; 0: unpaced
	StoppedBy         string  `json:"stopped_by"`         // count, duration, keys, key pool exhausted
	LoadAverageStart  float64 `json:"load_average_start"` // 1-minute load average (Linux), other load on the machine shows here
	LoadAverageEnd    float64 `json:"load_average_end"`

	// Setup.
	StartupSeconds  float64 `json:"startup_seconds"`
	Keys            int     `json:"keys"`
	KeySetupSeconds float64 `json:"key_setup_seconds"`

	// Throughput.
	Started               int     `json:"started"`
	Replications          int     `json:"replications"` // completed (source COMPLETED)
	Failed                int     `json:"failed"`
	FirstFailure          string  `json:"first_failure,omitempty"`
	UsableMissing         int     `json:"usable_missing"` // completed without a ReplicaCreated event seen
	ElapsedSeconds        float64 `json:"elapsed_seconds"`
	LaunchSeconds         float64 `json:"launch_seconds"`
	ReplicationsPerSecond float64 `json:"replications_per_second"`

	// The crypto bound, measured in the same run.
	CryptoBoundPerSecond          float64 `json:"crypto_bound_per_second"` // mean of before and after
	CryptoBoundBeforePerSecond    float64 `json:"crypto_bound_before_per_second"`
	CryptoBoundAfterPerSecond     float64 `json:"crypto_bound_after_per_second"`
	BoundSpread                   float64 `json:"bound_spread"` // |before − after| / mean
	RatioToBound                  float64 `json:"ratio_to_bound"`
	BoundCPUMSPerReplication      float64 `json:"bound_cpu_ms_per_replication"`
	BoundSeconds                  float64 `json:"bound_seconds"`
	BoundIterations               int     `json:"bound_iterations"`
	PrimitivesBoundPerSecond      float64 `json:"primitives_bound_per_second"`
	PrimitivesCPUMSPerReplication float64 `json:"primitives_cpu_ms_per_replication"`
	CryptoOpsUS                   OpsUS   `json:"crypto_ops_us"`

	// Latency from the replicate call, in milliseconds.
	P50UsableMS    float64     `json:"p50_usable_ms"`
	P90UsableMS    float64     `json:"p90_usable_ms"`
	P99UsableMS    float64     `json:"p99_usable_ms"`
	MaxUsableMS    float64     `json:"max_usable_ms"`
	P50ConfirmedMS float64     `json:"p50_confirmed_ms"`
	P90ConfirmedMS float64     `json:"p90_confirmed_ms"`
	P99ConfirmedMS float64     `json:"p99_confirmed_ms"`
	MaxConfirmedMS float64     `json:"max_confirmed_ms"`
	Usable         Percentiles `json:"usable"`
	// UsableStages splits the usable latency at the times the run's
	// messages were stored in the outboxes and inboxes (JetStream's time
	// stamps, read after the run): the source's and destination's steps
	// and the proxy's hops (with the injected delay).
	UsableStages     []Stage     `json:"usable_stages,omitempty"`
	Confirmed        Percentiles `json:"confirmed"`
	UsableFloorMS    float64     `json:"usable_floor_ms"`    // 3 × delay
	ConfirmedFloorMS float64     `json:"confirmed_floor_ms"` // 4 × delay

	// Cost.
	CPUSeconds                  float64   `json:"cpu_seconds"`
	CPUMSPerReplication         float64   `json:"cpu_ms_per_replication"`
	CPUMSPerReplicationByDecile []float64 `json:"cpu_ms_per_replication_by_decile,omitempty"`
	CPUUtilization              float64   `json:"cpu_utilization"` // of Cores
	// CryptoCPUShare is bound_cpu_ms_per_replication / cpu_ms_per_replication:
	// the part of the system's CPU per replication that is the protocol's
	// crypto. It is what ratio_to_bound would be with every core busy, and it
	// hardly moves when other processes share the machine.
	CryptoCPUShare float64 `json:"crypto_cpu_share"`
	// PeakRSSBytes is this process's peak RSS: the whole partition, or,
	// with separate_servers, the workers, the proxy and the benchmark
	// (each server's is in server_peak_rss_bytes).
	PeakRSSBytes       uint64            `json:"peak_rss_bytes"`
	SeparateServers    bool              `json:"separate_servers"`
	ServerPeakRSSBytes map[string]uint64 `json:"server_peak_rss_bytes,omitempty"` // by region
	// ServerCPUSeconds is the server processes' part of cpu_seconds (with
	// separate_servers).
	ServerCPUSeconds float64 `json:"server_cpu_seconds,omitempty"`
	HeapInuseBytes   uint64  `json:"heap_inuse_bytes"` // Go heap in use at the end of the run
	GoSysBytes       uint64  `json:"go_sys_bytes"`     // memory the Go runtime holds from the OS at the end
	// PeakHeapLiveBytes is the largest heap the collector found reachable
	// during the replication phase (runtime/metrics /gc/heap/live:bytes,
	// sampled with the progress): the floor under the heap, before GOGC's
	// headroom for garbage.
	PeakHeapLiveBytes uint64 `json:"peak_heap_live_bytes"`
	// GC cycles and the collector's CPU during the replication phase (the
	// runtime's estimate; it is part of cpu_seconds).
	GCCycles              uint64  `json:"gc_cycles"`
	GCCPUSeconds          float64 `json:"gc_cpu_seconds"`
	GCCPUMSPerReplication float64 `json:"gc_cpu_ms_per_replication"`
	GOGC                  uint64  `json:"gogc"` // percent; 0: off
	// SchedWait is how long goroutines of this process waited, runnable,
	// for a P during the replication phase (the Go scheduler's own
	// histogram): the part of latency that is queueing to run.
	SchedWait        *SchedWait `json:"sched_wait,omitempty"`
	MemoryLimitBytes uint64     `json:"memory_limit_bytes,omitempty"` // the soft limit in effect (--memory-limit or GOMEMLIMIT)
	// NATS messages the regions' servers received and sent per replication
	// (client traffic of workers, proxy and benchmark, JetStream API included).
	NATSInMsgsPerReplication  float64 `json:"nats_in_msgs_per_replication"`
	NATSOutMsgsPerReplication float64 `json:"nats_out_msgs_per_replication"`
}

// OpsUS are single-core timings of the public-key primitives, in µs.
type OpsUS struct {
	Sign       float64 `json:"sign"`
	Verify     float64 `json:"verify"`
	ECDHKeyGen float64 `json:"ecdh_keygen"`
	ECDH       float64 `json:"ecdh"`
}

// SchedWait summarises runtime/metrics /sched/latencies:seconds over a run.
// Quantiles are the upper bounds of the histogram's buckets (which are
// about 6 % wide at these magnitudes).
type SchedWait struct {
	P50MS  float64 `json:"p50_ms"`
	P99MS  float64 `json:"p99_ms"`
	P999MS float64 `json:"p999_ms"`
	Count  uint64  `json:"count"` // goroutine wake-ups counted
}

// WriteTable writes r for people.
func (r *Result) WriteTable(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	p := func(format string, args ...any) { fmt.Fprintf(tw, format+"\n", args...) }
	p("mrkrepl bench\t%s, %s/%s, %s, %d cores (GOMAXPROCS %d; %d CPUs on the machine)", r.Date, r.GOOS, r.GOARCH, r.GoVersion, r.Cores, r.GOMAXPROCS, r.NumCPU)
	wc := "default"
	if r.WorkerConcurrency > 0 {
		wc = fmt.Sprint(r.WorkerConcurrency)
	}
	rate := "unpaced"
	if r.RateTarget > 0 {
		rate = fmt.Sprintf("%.1f/s", r.RateTarget)
	}
	p("setup\t%s backend, %d regions, concurrency %d (workers/proxy: %s), delay %s one way, %s", r.Backend, r.Regions, r.Concurrency, wc, fmtMS(r.DelayMS), rate)
	p("\t%d keys created in %.2fs (partition up in %.2fs)", r.Keys, r.KeySetupSeconds, r.StartupSeconds)
	p("replications\t%d completed, %d failed, in %.2fs (stopped by %s)", r.Replications, r.Failed, r.ElapsedSeconds, r.StoppedBy)
	if r.FirstFailure != "" {
		p("first failure\t%s", r.FirstFailure)
	}
	if r.UsableMissing > 0 {
		p("warning\t%d completed replications had no ReplicaCreated event", r.UsableMissing)
	}
	p("throughput\t%.1f replications/s", r.ReplicationsPerSecond)
	p("crypto bound\t%.1f replications/s (%s backend, %d goroutines; %.1f before the run, %.1f after; %.2f ms CPU per replication)",
		r.CryptoBoundPerSecond, r.Backend, r.Cores, r.CryptoBoundBeforePerSecond, r.CryptoBoundAfterPerSecond, r.BoundCPUMSPerReplication)
	p("ratio to bound\t%.2f", r.RatioToBound)
	p("primitives\tsign %.0fµs, verify %.0fµs, ECDH keygen %.0fµs, ECDH %.0fµs on one core: %.2f ms per replication, %.1f/s on %d cores",
		r.CryptoOpsUS.Sign, r.CryptoOpsUS.Verify, r.CryptoOpsUS.ECDHKeyGen, r.CryptoOpsUS.ECDH, r.PrimitivesCPUMSPerReplication, r.PrimitivesBoundPerSecond, r.Cores)
	p("cpu\t%.2fs, %.2f ms per replication (%.0f%% of %d cores); crypto is %.0f%% of it", r.CPUSeconds, r.CPUMSPerReplication, 100*r.CPUUtilization, r.Cores, 100*r.CryptoCPUShare)
	if len(r.CPUMSPerReplicationByDecile) > 0 {
		var ds []string
		for _, d := range r.CPUMSPerReplicationByDecile {
			ds = append(ds, fmt.Sprintf("%.2f", d))
		}
		p("cpu by tenth\t%s ms per replication", strings.Join(ds, " "))
	}
	if r.SeparateServers {
		p("cpu of servers\t%.2fs of it in the %d nats-server processes", r.ServerCPUSeconds, len(r.ServerPeakRSSBytes))
		p("peak rss\t%.1f MiB in this process: workers, proxy, benchmark (at the end: Go heap in use %.1f MiB, held from the OS %.1f MiB)", float64(r.PeakRSSBytes)/(1<<20), float64(r.HeapInuseBytes)/(1<<20), float64(r.GoSysBytes)/(1<<20))
		var ss []string
		for _, name := range slices.Sorted(maps.Keys(r.ServerPeakRSSBytes)) {
			ss = append(ss, fmt.Sprintf("%s %.1f MiB", name, float64(r.ServerPeakRSSBytes[name])/(1<<20)))
		}
		p("peak rss servers\t%s (each its own process)", strings.Join(ss, ", "))
	} else {
		p("peak rss\t%.1f MiB (at the end: Go heap in use %.1f MiB, held from the OS %.1f MiB)", float64(r.PeakRSSBytes)/(1<<20), float64(r.HeapInuseBytes)/(1<<20), float64(r.GoSysBytes)/(1<<20))
	}
	limit := "no memory limit"
	if r.MemoryLimitBytes > 0 {
		limit = fmt.Sprintf("memory limit %.0f MiB", float64(r.MemoryLimitBytes)/(1<<20))
	}
	if r.SchedWait != nil {
		p("wait for a P\tp50 %s, p99 %s, p99.9 %s ms (%d goroutine wake-ups; this process's goroutines)", msQ(r.SchedWait.P50MS), msQ(r.SchedWait.P99MS), msQ(r.SchedWait.P999MS), r.SchedWait.Count)
	}
	p("gc\tlive heap up to %.1f MiB; %d cycles, %.2f ms CPU per replication (GOGC %d, %s)", float64(r.PeakHeapLiveBytes)/(1<<20), r.GCCycles, r.GCCPUMSPerReplication, r.GOGC, limit)
	p("nats\t%.1f messages in, %.1f out per replication (all regions' servers)", r.NATSInMsgsPerReplication, r.NATSOutMsgsPerReplication)
	if r.LoadAverageStart > 0 || r.LoadAverageEnd > 0 {
		p("load average\t%.2f at start, %.2f at end (1 min)", r.LoadAverageStart, r.LoadAverageEnd)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "latency (ms)\tp50\tp90\tp99\tmax\tfloor\t")
	for _, l := range []struct {
		name  string
		p     Percentiles
		floor float64
	}{{"usable", r.Usable, r.UsableFloorMS}, {"confirmed", r.Confirmed, r.ConfirmedFloorMS}} {
		fmt.Fprintf(tw, "%s\t%.1f\t%.1f\t%.1f\t%.1f\t%.0f\t\n", l.name, l.p.P50, l.p.P90, l.p.P99, l.p.Max, l.floor)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(r.UsableStages) == 0 {
		return nil
	}
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "usable, by stage (ms)\tp50\tp90\tp99\tmax\t")
	for _, s := range r.UsableStages {
		fmt.Fprintf(tw, "%s\t%.1f\t%.1f\t%.1f\t%.1f\t\n", s.Stage, s.P50, s.P90, s.P99, s.Max)
	}
	return tw.Flush()
}

func fmtMS(v float64) string {
	if v == 0 {
		return "0"
	}
	return fmt.Sprintf("%gms", v)
}

// msQ formats a quantile in milliseconds with three significant digits.
func msQ(v float64) string { return strconv.FormatFloat(v, 'g', 3, 64) }
