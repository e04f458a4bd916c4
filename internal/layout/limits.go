package layout

import (
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/mrkrepl/mrkrepl/messages"
)

// Resource names: the keys of DefaultLimits and Options.Limits (and of
// the `jetstream.limits` map of the worker's and proxy's configuration).
const (
	ResourceRequests   = "requests"
	ResourceOutbox     = "outbox"
	ResourceInbox      = "inbox"
	ResourceEvents     = "events"
	ResourceDLQ        = "dlq"
	ResourceHeartbeat  = "heartbeat"
	ResourceKeys       = "keys"
	ResourceRepl       = "repl"
	ResourceReplay     = "replay"
	ResourcePending    = "pending"
	ResourceTokens     = "tokens"
	ResourceAccessKeys = "access_keys"
	ResourceAliases    = "aliases"
)

// Limit bounds one stream or bucket. For a stream, MaxMsgSize is the
// stream's MaxMsgSize (headers and data together, as nats-server counts);
// for a bucket it is the bucket's MaxValueSize. MaxBytes is the stream's
// (the bucket's stream's) MaxBytes, over every message or value kept,
// history included. -1 means no limit.
type Limit struct {
	MaxBytes   int64 `yaml:"max_bytes,omitempty" json:"max_bytes,omitempty"`
	MaxMsgSize int32 `yaml:"max_msg_size,omitempty" json:"max_msg_size,omitempty"`
}

// HeaderAllowance is what a stream's MaxMsgSize allows for NATS headers
// beyond the largest body it stores (Nats-Msg-Id, the server's
// Nats-Request-Info on an imported request, the dead-letter headers).
const HeaderAllowance = 4 << 10

// DefaultMaxDeliver is the MaxDeliver of every consumer the workers and
// the proxy read (the workers' requests and inbox consumers, the proxy's
// on each outbox): the delivery after which a message is given up. A
// consumer's last delivery that would otherwise be retried is dead-lettered
// with reason ReasonMaxDeliver instead (LastDelivery). With the workers'
// retry delays (1 s doubling to 30 s) 50 deliveries last about 23 minutes,
// the proxy's (250 ms doubling to 30 s) about 22: far beyond a protocol
// message's validity (5 minutes by default, refused as expired after), so
// the bound only ends a message that can never be handled.
const DefaultMaxDeliver = 50

// ReasonMaxDeliver is the dead-letter reason of a message given up at its
// consumer's last delivery.
const ReasonMaxDeliver = "max_deliver"

// DefaultLimits are the documented defaults (docs/OPERATIONS.md, "Limits").
// Per region they sum to about 3 GiB of file storage, within the 4 GB
// max_file_store of docker/nats. The requests stream discards new
// messages when full (a client's publish gets an error: nothing it sent
// silently disappears). Every other stream discards its oldest: the inbox
// and outbox keep messages after they are handled (limits retention, for
// the record), so their bytes measure traffic, not backlog, and refusing new
// messages when full would stop replication until old ones age out; a
// protocol message dropped unhandled is recovered like a lost one (runs time
// out and are retried, syncs and hand-overs are sent again). The events and
// dead letters drop their oldest too (mrkrepl_worker_stream_bytes against
// _stream_max_bytes, alert MrkreplStreamNearLimit). A bucket at its
// MaxBytes refuses writes.
var DefaultLimits = map[string]Limit{
	// replicate-key request events, at most 16 KiB each (workers/api.go).
	ResourceRequests: {MaxBytes: 128 << 20, MaxMsgSize: messages.MaxMessageSize + HeaderAllowance},
	// Signed protocol messages, at most messages.MaxMessageSize.
	ResourceOutbox: {MaxBytes: 768 << 20, MaxMsgSize: messages.MaxMessageSize + HeaderAllowance},
	ResourceInbox:  {MaxBytes: 768 << 20, MaxMsgSize: messages.MaxMessageSize + HeaderAllowance},
	// Audit events: JSON, a few hundred bytes (a reason or description).
	ResourceEvents: {MaxBytes: 512 << 20, MaxMsgSize: 64 << 10},
	// Dead letters: a DeadLetterPrefix of the message and the headers.
	ResourceDLQ: {MaxBytes: 256 << 20, MaxMsgSize: DeadLetterPrefix + 2*DeadLetterDetailMax + HeaderAllowance},
	// One small probe per pair.
	ResourceHeartbeat: {MaxBytes: 1 << 20, MaxMsgSize: 4 << 10},
	// A key record: up to 256 versions, a 32 KiB policy, a description.
	ResourceKeys: {MaxBytes: 256 << 20, MaxMsgSize: 256 << 10},
	// A run record, holding the last message sent (base64 in JSON).
	ResourceRepl: {MaxBytes: 256 << 20, MaxMsgSize: 64 << 10},
	// A digest per msg_id.
	ResourceReplay:  {MaxBytes: 64 << 20, MaxMsgSize: 1 << 10},
	ResourcePending: {MaxBytes: 16 << 20, MaxMsgSize: 1 << 10},
	ResourceTokens:  {MaxBytes: 64 << 20, MaxMsgSize: 4 << 10},
	// KMS API access keys (a sealed secret and a principal) and aliases.
	ResourceAccessKeys: {MaxBytes: 16 << 20, MaxMsgSize: 4 << 10},
	ResourceAliases:    {MaxBytes: 16 << 20, MaxMsgSize: 1 << 10},
}

// LifecycleMaxLifetime is the longest lifetime (expires_at − sent_at) a
// receiver accepts for a lifecycle message (messages.VerifyOptions'
// MaxLifecycleLifetime): ReplayWindow less the clock skew allowance (0:
// messages.DefaultSkew), so the replay cache remembers a lifecycle
// message's msg_id for as long as any receiver would accept the message.
// Senders use 5 minutes (workers.Config.MessageTTL).
func LifecycleMaxLifetime(skew time.Duration) time.Duration {
	if skew <= 0 {
		skew = messages.DefaultSkew
	}
	return ReplayWindow - skew
}

// Resources lists the names of DefaultLimits, sorted.
func Resources() []string { return slices.Sorted(maps.Keys(DefaultLimits)) }

// Limit returns the limit in force for resource: DefaultLimits overridden
// field by field by o.Limits.
func (o Options) Limit(resource string) Limit {
	l := DefaultLimits[resource]
	if ov, ok := o.Limits[resource]; ok {
		if ov.MaxBytes != 0 {
			l.MaxBytes = ov.MaxBytes
		}
		if ov.MaxMsgSize != 0 {
			l.MaxMsgSize = ov.MaxMsgSize
		}
	}
	return l
}

// CheckLimits refuses an Options.Limits entry for an unknown resource or
// with a negative value other than -1.
func CheckLimits(limits map[string]Limit) error {
	for name, l := range limits {
		if _, ok := DefaultLimits[name]; !ok {
			return fmt.Errorf("limits: unknown resource %q (known: %v)", name, Resources())
		}
		if l.MaxBytes < -1 || l.MaxMsgSize < -1 {
			return fmt.Errorf("limits: %s: a limit is positive, or -1 for none", name)
		}
	}
	return nil
}

// applyStream sets resource's limits and discard policy on cfg.
func (o Options) applyStream(resource string, cfg *jetstream.StreamConfig) {
	l := o.Limit(resource)
	cfg.MaxBytes = l.MaxBytes
	cfg.MaxMsgSize = l.MaxMsgSize
	switch resource {
	case ResourceRequests:
		cfg.Discard = jetstream.DiscardNew
	default:
		cfg.Discard = jetstream.DiscardOld
	}
	if cfg.MaxBytes == 0 {
		cfg.MaxBytes = -1
	}
	if cfg.MaxMsgSize == 0 {
		cfg.MaxMsgSize = -1
	}
}

// applyBucket sets resource's limits on cfg.
func (o Options) applyBucket(resource string, cfg *jetstream.KeyValueConfig) {
	l := o.Limit(resource)
	cfg.MaxBytes = l.MaxBytes
	cfg.MaxValueSize = l.MaxMsgSize
	if cfg.MaxBytes == 0 {
		cfg.MaxBytes = -1
	}
	if cfg.MaxValueSize == 0 {
		cfg.MaxValueSize = -1
	}
}

// StreamResource maps each of region's streams (behind buckets included)
// to its resource name.
func StreamResource(region string) map[string]string {
	return map[string]string{
		RequestsStream(region):             ResourceRequests,
		OutboxStream(region):               ResourceOutbox,
		InboxStream(region):                ResourceInbox,
		EventsStream(region):               ResourceEvents,
		DLQStream(region):                  ResourceDLQ,
		HeartbeatStream(region):            ResourceHeartbeat,
		KVStream(KeysBucket(region)):       ResourceKeys,
		KVStream(ReplBucket(region)):       ResourceRepl,
		KVStream(ReplayBucket(region)):     ResourceReplay,
		KVStream(PendingBucket(region)):    ResourcePending,
		KVStream(TokensBucket(region)):     ResourceTokens,
		KVStream(AccessKeysBucket(region)): ResourceAccessKeys,
		KVStream(AliasesBucket(region)):    ResourceAliases,
	}
}
