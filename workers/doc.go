// Package workers implements a region's HSM worker: it consumes the region's
// user requests and verified inbox messages from JetStream, runs the
// replication state machine of mrkrepl/1 for both roles (source and
// destination) against the region's HSM, publishes the signed replies to the
// region's outbox, keeps key metadata and replication state in JetStream KV,
// serves the request API (package api) as a NATS micro service and publishes
// audit events.
//
// Several workers may serve one region: they share durable pull consumers,
// and every state change is a compare-and-set on a KV revision, so a message
// is acted on once. Every step is idempotent: a redelivered message makes the
// worker re-publish the reply it stored (same msg_id, de-duplicated by
// JetStream) instead of making new keys.
//
// Every inbox message passes messages.Verify (with this region as receiver)
// before anything else happens, then the replay check (a run's messages
// against the msg_ids its run record keeps, lifecycle messages against the
// replay cache) before any side effect; a refused message is dead-lettered
// on mrk.<region>.dlq.worker with its reason and terminated.
package workers
