// Package workers implements a region's HSM worker: the I/O shell around
// the deterministic core of mrkrepl/1 (internal/repl). It consumes the
// region's user requests and verified inbox messages from JetStream, asks
// the core what each means, performs what the core asks (HSM operations,
// compare-and-set writes to JetStream KV, sealing and publishing to the
// region's outbox, audit events) in the order exec.go sets out, serves the
// request API (package api) as a NATS micro service with the keys'
// policies, and runs the sweeper's clock.
//
// Several workers may serve one region: they share durable pull consumers,
// and every state change is a compare-and-set on a KV revision, so a message
// is acted on once; a lost compare-and-set reads the record again and asks
// the core again. Every step is idempotent: a redelivered message makes the
// worker re-publish the reply it stored (same msg_id, de-duplicated by
// JetStream) instead of making new keys.
//
// Every inbox message passes messages.Verify (with this region as receiver)
// before anything else happens, then the replay check (a run's messages
// against the msg_ids its run record keeps, repl.Match; lifecycle messages
// against the replay cache) before any side effect; a refused message is
// dead-lettered on mrk.<region>.dlq.worker with its reason and terminated.
//
// Files: worker.go (Config, New, Start, Stop, dispatch, trust and RSKs),
// api.go and authz.go (the request API and key policies), inbox.go
// (verify, replay cache, ack decision), exec.go (the ordering rules and
// the run writes), source.go and destination.go (the two roles of a run),
// sync.go, rotate.go, handover.go, deletion.go (the lifecycle), sweep.go
// (pending index, claims, the sweeper), store.go, runs.go and runcache.go
// (KV records), outbox.go (sealing, publishing, events), ciphertext.go,
// metrics.go, observe.go, health.go.
package workers
