// Package repl is the deterministic core of a mrkrepl region: the
// replication state machine of mrkrepl/1 for both roles (source and
// destination) and the key lifecycle (rotation and sync, change of primary
// region, deletion, retry and give-up), as pure functions over the
// region's records (docs/PROTOCOL.md, docs/LIFECYCLE.md).
//
// The core does no I/O. It imports neither context, NATS nor the HSM
// interface, reads no clock (time is an input: every transition takes
// now) and starts no goroutines. Its inputs are verified messages
// (messages.Envelope), API requests, ticks, the records read from KV, and
// the results of HSM operations; its outputs are the records to write,
// the messages to seal and send, the HSM operations to perform, and
// events. An HSM step is an input like any other: OnInit asks for an
// agreement key, AfterRAKB takes it and returns the offer; OnMaterial asks
// for an unwrap, AfterUnwrap takes its result and returns the receipt and
// the record changes.
//
// The shell (package workers) reads the records, calls the core, performs
// what it asks in the order the protocol needs (workers/exec.go writes
// those rules down), and writes with compare-and-set: when another writer
// got there first it reads again and calls the same function again, so a
// transition is decided on the record it is written over.
//
// Match is the one rule for a run's messages: Fresh, a Redelivery (answer
// with the stored reply), or Refused with a reason.
//
// The storage schema is the core's own (Key, Run, Replica, KeyVersion):
// the JSON field names of records in the KEYS and REPL buckets, with
// Public projections to the API's types. States and roles are typed
// (RunState, Role, KeyState, ReplicaState, VersionState) so that a key's
// ENABLED cannot be stored as a replica's.
//
// Behaviour is pinned by scenario files (testdata/*.txt, run by
// scenario_test.go): regions in memory, a fake HSM made of the core's
// inputs, and commands to deliver, drop, duplicate and reorder messages,
// tick the clock, fail the HSM, crash and lose compare-and-set races.
//
// Concurrency: the functions hold no state; a record passed in is changed
// in place only where the doc says so, and must not be shared meanwhile.
package repl
