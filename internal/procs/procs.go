// Package procs sets how many goroutines the Go runtime runs at once in a
// mrkrepl process (GOMAXPROCS), and remembers how many cores it has.
//
// A worker or proxy mixes long CPU-bound steps (a P-384 verification is
// about 0.75 ms, a signature 0.3 ms) with many short ones (each NATS round
// trip crosses about six goroutines). Go's scheduler does not preempt a
// running goroutine for about 10 ms, so with one P per core a short step
// that becomes runnable waits until a long one ends on some core; along a
// replication's path those waits add up to most of the latency above the
// floor. With twice as many Ps as cores the kernel's scheduler, which
// preempts on wake-up, runs the short step at once. Measured on 2 cores
// at 55 replications/s with a 50 ms delay (docs/PERFORMANCE.md, "Session
// 4"): p99 to "replica usable" 224 – 238 ms with 2 Ps, 188 – 202 with 3,
// 190 – 208 with 4, 205 – 208 with 6, for 4 – 10 % more CPU per
// replication; peak throughput unchanged within the noise.
//
// Not under a CPU quota: where a cgroup limit holds the process to fewer
// CPUs than the machine shows (the runtime then starts with GOMAXPROCS
// below runtime.NumCPU), more runnable threads than the quota would be
// throttled for the rest of each period, which is worse for latency than
// waiting for a P. Nor when the GOMAXPROCS environment variable is set.
package procs

import (
	"os"
	"runtime"
)

// cores is GOMAXPROCS as the runtime set it when the process started: the
// CPUs the process may use (affinity and cgroup limits applied), or the
// GOMAXPROCS environment variable.
var cores = runtime.GOMAXPROCS(0)

// Cores returns the number of CPUs the process may use, as the runtime
// counted them at start, whatever GOMAXPROCS is now.
func Cores() int { return cores }

// PerCore is how many Ps Oversubscribe gives each core.
const PerCore = 2

// Oversubscribe sets GOMAXPROCS to PerCore × Cores(), unless the
// GOMAXPROCS environment variable is set (then the operator's value
// stays) or a CPU quota holds the process below the machine's CPUs. It
// returns the value in force. Call it first in main; it is for the
// processes that replicate (demo, worker, proxy, bench), not for
// libraries.
func Oversubscribe() int {
	n := procsFor(os.Getenv("GOMAXPROCS"), cores, runtime.NumCPU())
	runtime.GOMAXPROCS(n)
	return n
}

// procsFor is the GOMAXPROCS Oversubscribe sets for the environment
// variable's value env, the runtime's starting value start and the CPUs
// the process may run on (affinity applied, quotas not) numCPU.
func procsFor(env string, start, numCPU int) int {
	if env != "" || start < numCPU {
		return start // the operator's value, or a quota's
	}
	return PerCore * start
}
