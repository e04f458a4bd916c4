package bench

import (
	"math"
	"slices"
	"time"
)

// This file turns the jobs' stage times and CPU samples into the result's
// percentiles and deciles.

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
