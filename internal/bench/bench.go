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
