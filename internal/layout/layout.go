// Package layout names and creates the JetStream resources of one region:
// streams, consumers and KV buckets. Workers and proxies share it so both
// sides agree on every name; creation is idempotent (CreateOrUpdate), so
// any process may call it at start.
//
// Per region r, on r's own JetStream (docs/OPERATIONS.md lists them):
//
//	stream MRK_<R>_REQUESTS  mrk.r.requests.>        user requests (events)
//	stream MRK_<R>_OUTBOX    mrk.r.out.<dst>.>       signed messages leaving r
//	stream MRK_<R>_INBOX     mrk.r.in.>              verified messages for r
//	stream MRK_<R>_EVENTS    mrk.r.events.>          audit events
//	stream MRK_<R>_DLQ       mrk.r.dlq.>             refused messages, with reason
//	stream MRK_<R>_HEARTBEAT mrk.r.heartbeat.>       the proxy's probes (one per pair)
//	kv     MRK_<R>_KEYS      key metadata
//	kv     MRK_<R>_REPL      replication state
//	kv     MRK_<R>_REPLAY    lifecycle msg_ids seen (TTL = replay window)
//	kv     MRK_<R>_PENDING   ids of runs in flight, for the sweeper
//	kv     MRK_<R>_TOKENS    replicate-key client tokens (TTL 24 h)
//
// and, on the outbox, one durable consumer per destination region,
// "proxy-<dst>", from which the proxy forwards (EnsureProxyConsumers).
// The region's workers create all of them at start; the proxy, which has
// no right to create or change streams and consumers (internal/natsauth),
// only looks its consumers up.
//
// <R> is the region upper-cased with '-' replaced by '_'.
package layout

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// ReplayWindow is how long the replay cache remembers a lifecycle
// message's msg_id (a run's record remembers its messages' msg_ids for the
// run's life). It must exceed the longest message validity plus the clock
// skew allowance.
const ReplayWindow = 30 * time.Minute

// ClientTokenTTL is how long a replicate-key client token is remembered.
const ClientTokenTTL = 24 * time.Hour

// DedupWindow is the inbox and outbox Nats-Msg-Id de-duplication window.
const DedupWindow = 20 * time.Minute

// NoPerSubjectLimit is the per-subject message limit of the requests,
// inbox, outbox, events and dead-letter streams: far above anything they
// can hold, so it never removes a message. It is set for its side effect on
// memory: nats-server gives a limits-retention stream with no limit 8 MB
// blocks and one with a per-subject limit 4 MB blocks (the KV size), and it
// keeps the block being written in memory, up to a block, for as long as
// the stream is written to. Four busy streams per region thus hold 16 MB
// instead of 32 MB (docs/PERFORMANCE.md). Existing streams keep their
// blocks and use 4 MB ones from their next block (or server restart) on.
const NoPerSubjectLimit = 1_000_000_000_000

func upper(region string) string {
	return strings.ToUpper(strings.ReplaceAll(region, "-", "_"))
}

// Stream and bucket names.
func RequestsStream(region string) string  { return "MRK_" + upper(region) + "_REQUESTS" }
func OutboxStream(region string) string    { return "MRK_" + upper(region) + "_OUTBOX" }
func InboxStream(region string) string     { return "MRK_" + upper(region) + "_INBOX" }
func EventsStream(region string) string    { return "MRK_" + upper(region) + "_EVENTS" }
func DLQStream(region string) string       { return "MRK_" + upper(region) + "_DLQ" }
func KeysBucket(region string) string      { return "MRK_" + upper(region) + "_KEYS" }
func ReplBucket(region string) string      { return "MRK_" + upper(region) + "_REPL" }
func ReplayBucket(region string) string    { return "MRK_" + upper(region) + "_REPLAY" }
func PendingBucket(region string) string   { return "MRK_" + upper(region) + "_PENDING" }
func HeartbeatStream(region string) string { return "MRK_" + upper(region) + "_HEARTBEAT" }

// KVStream is the stream behind a KV bucket.
func KVStream(bucket string) string { return "KV_" + bucket }

// Buckets returns the names of region's KV buckets.
func Buckets(region string) []string {
	return []string{KeysBucket(region), ReplBucket(region), ReplayBucket(region), PendingBucket(region), TokensBucket(region),
		AccessKeysBucket(region), AliasesBucket(region)}
}

// Streams returns the names of every stream of region, those behind its KV
// buckets included.
func Streams(region string) []string {
	s := []string{RequestsStream(region), OutboxStream(region), InboxStream(region), EventsStream(region), DLQStream(region), HeartbeatStream(region)}
	for _, b := range Buckets(region) {
		s = append(s, KVStream(b))
	}
	return s
}

// PullExpiry is how long each pull request of the workers' and proxy's
// consumers lasts (nats.go's default is 30 s, with heartbeats every 15 s).
// When a consumer stops delivering while the client still counts its pull
// request as open, nothing moves until the request expires or two
// heartbeats are missed: a saturated benchmark showed such silent stalls of
// one inbox consumer for 30 s (docs/PERFORMANCE.md, "Session 4"). With 5 s
// one lasts at most 5 s, for a pull request and two heartbeats per consumer
// every 5 s when idle.
const PullExpiry = 5 * time.Second

// AckWait is the AckWait of the workers' and proxy's consumers: how long a
// message delivered and not acknowledged waits before it is delivered
// again. A process killed after it pulled a message holds it that long, so
// this bounds the recovery after a crash (docs/RELIABILITY.md, "Recovery
// after a crash"). A handler still working on a message tells the server
// so (InProgress) every AckWait/3, so a slow HSM does not get its message
// redelivered to another handler meanwhile.
const AckWait = 4 * time.Second

// PendingMarkerTTL is how long the marker of a removed pending entry stays
// (the PENDING bucket's LimitMarkerTTL; needs nats-server 2.11 or later).
const PendingMarkerTTL = 10 * time.Second

func TokensBucket(region string) string { return "MRK_" + upper(region) + "_TOKENS" }

// AccessKeysBucket holds the KMS API's access keys of the region, by
// access key id; AliasesBucket its aliases, by alias name
// (docs/KMS-API.md).
func AccessKeysBucket(region string) string { return "MRK_" + upper(region) + "_ACCESS_KEYS" }
func AliasesBucket(region string) string    { return "MRK_" + upper(region) + "_ALIASES" }

// Subjects.
func RequestSubject(region, op string) string { return "mrk." + region + ".requests." + op }
func RequestsWildcard(region string) string   { return "mrk." + region + ".requests.>" }

// RequestSubjectFor is the subject under which the REQUESTS stream stores
// a request event for op published by a client of application account
// account: the account's import maps the client's RequestSubject(region, op)
// to it (internal/natsauth), so the last token names the account the
// server authenticated, and no application can write another's subject.
// An empty account gives RequestSubject: published inside the region's own
// account (an operator or test with the admin user).
func RequestSubjectFor(region, op, account string) string {
	if account == "" {
		return RequestSubject(region, op)
	}
	return RequestSubject(region, op) + "." + account
}

// ParseRequestSubject is the inverse of RequestSubjectFor: the operation
// and the account ("" when published inside the region's own account) of a
// subject of region's REQUESTS stream. ok is false for a subject of another
// shape.
func ParseRequestSubject(region, subject string) (op, account string, ok bool) {
	rest, found := strings.CutPrefix(subject, "mrk."+region+".requests.")
	if !found {
		return "", "", false
	}
	toks := strings.Split(rest, ".")
	for _, t := range toks {
		if t == "" || t == "*" || t == ">" {
			return "", "", false
		}
	}
	switch len(toks) {
	case 1:
		return toks[0], "", true
	case 2:
		return toks[0], toks[1], true
	}
	return "", "", false
}
func OutboxFilter(src, dst string) string      { return "mrk." + src + ".out." + dst + ".>" }
func InboxWildcard(region string) string       { return "mrk." + region + ".in.>" }
func EventSubject(region, event string) string { return "mrk." + region + ".events." + event }
func EventsWildcard(region string) string      { return "mrk." + region + ".events.>" }
func DLQSubject(region, component string) string {
	return "mrk." + region + ".dlq." + component
}
func DLQWildcard(region string) string { return "mrk." + region + ".dlq.>" }

// HeartbeatSubject is the subject of a proxy's probe from src, on dst's
// cluster (stored in dst's heartbeat stream).
func HeartbeatSubject(dst, src string) string { return "mrk." + dst + ".heartbeat." + src }
func HeartbeatWildcard(region string) string  { return "mrk." + region + ".heartbeat.>" }

// APIWildcard matches every API operation of region.
func APIWildcard(region string) string { return "mrk." + region + ".api.>" }

// OutboxWildcard matches every message leaving region.
func OutboxWildcard(region string) string { return "mrk." + region + ".out.>" }

// APISubject is the request/reply subject of an API operation.
func APISubject(region, op string) string { return "mrk." + region + ".api." + op }

// Headers set on dead letters.
const (
	HeaderReason          = "Mrk-Reason"
	HeaderDetail          = "Mrk-Detail"
	HeaderOriginalSubject = "Mrk-Original-Subject"
	HeaderComponent       = "Mrk-Component"
)

// Options size the resources.
type Options struct {
	Replicas int                   // 1 (default) or 3
	Storage  jetstream.StorageType // default FileStorage
	// Limits overrides entries of DefaultLimits, by resource name
	// (Resource*). A zero field keeps the default; -1 removes the limit.
	Limits map[string]Limit
	// MaxDeliver overrides DefaultMaxDeliver on the workers' consumers and
	// the proxy's (0: the default).
	MaxDeliver int
}

func (o Options) replicas() int {
	if o.Replicas <= 0 {
		return 1
	}
	return o.Replicas
}

// MaxDeliverOr is o.MaxDeliver, or DefaultMaxDeliver when unset.
func (o Options) MaxDeliverOr() int {
	if o.MaxDeliver > 0 {
		return o.MaxDeliver
	}
	return DefaultMaxDeliver
}

// EnsureOutbox creates region's outbox stream, with one subject per other
// region of the partition so that a message addressed to an unknown region
// is refused at publish time instead of sitting unread.
func EnsureOutbox(ctx context.Context, js jetstream.JetStream, region string, partitionRegions []string, o Options) error {
	var subjects []string
	regions := slices.Clone(partitionRegions)
	slices.Sort(regions)
	for _, dst := range regions {
		if dst != region {
			subjects = append(subjects, OutboxFilter(region, dst))
		}
	}
	if len(subjects) == 0 {
		return fmt.Errorf("outbox of %s: partition has no other region", region)
	}
	cfg := jetstream.StreamConfig{
		Name:        OutboxStream(region),
		Description: "mrkrepl " + region + ": signed messages to other regions, for the proxy to forward",
		Subjects:    subjects,
		Storage:     o.Storage,
		Replicas:    o.replicas(),
		Duplicates:  DedupWindow,
		MaxAge:      24 * time.Hour,
		Retention:   jetstream.LimitsPolicy,

		MaxMsgsPerSubject: NoPerSubjectLimit,
	}
	o.applyStream(ResourceOutbox, &cfg)
	if _, err := js.CreateOrUpdateStream(ctx, cfg); err != nil {
		return fmt.Errorf("create stream %s: %w", OutboxStream(region), err)
	}
	return nil
}

// EnsureDLQ creates region's dead-letter stream.
func EnsureDLQ(ctx context.Context, js jetstream.JetStream, region string, o Options) error {
	cfg := jetstream.StreamConfig{
		Name:        DLQStream(region),
		Description: "mrkrepl " + region + ": dead letters (refused messages and requests), with header Mrk-Reason",
		Subjects:    []string{DLQWildcard(region)},
		Storage:     o.Storage,
		Replicas:    o.replicas(),
		MaxAge:      30 * 24 * time.Hour,

		// The dead-letter copies of one delivery are one (DeadLetter's
		// Nats-Msg-Id): a window well beyond any retry delay.
		Duplicates: DedupWindow,

		MaxMsgsPerSubject: NoPerSubjectLimit,
	}
	o.applyStream(ResourceDLQ, &cfg)
	if _, err := js.CreateOrUpdateStream(ctx, cfg); err != nil {
		return fmt.Errorf("create stream %s: %w", DLQStream(region), err)
	}
	return nil
}

// EnsureHeartbeat creates region's heartbeat stream (idempotent): the
// proxy's probes of every pair (src, region) land there, one message kept
// per subject, an hour at most; no worker reads it.
func EnsureHeartbeat(ctx context.Context, js jetstream.JetStream, region string, o Options) error {
	cfg := jetstream.StreamConfig{
		Name:              HeartbeatStream(region),
		Subjects:          []string{HeartbeatWildcard(region)},
		Storage:           o.Storage,
		Replicas:          o.replicas(),
		MaxMsgsPerSubject: 1,
		MaxAge:            time.Hour,
	}
	o.applyStream(ResourceHeartbeat, &cfg)
	if _, err := js.CreateOrUpdateStream(ctx, cfg); err != nil {
		return fmt.Errorf("create stream %s: %w", HeartbeatStream(region), err)
	}
	return nil
}

// DefaultProxyDurable prefixes the names of the proxy's consumers.
const DefaultProxyDurable = "proxy"

// ProxyConsumer is the name of the proxy's durable consumer on a source
// region's outbox for messages to dst.
func ProxyConsumer(durable, dst string) string {
	if durable == "" {
		durable = DefaultProxyDurable
	}
	return durable + "-" + dst
}

// ProxyConsumers sizes the proxy's consumers (EnsureProxyConsumers).
type ProxyConsumers struct {
	Durable       string        // name prefix; default DefaultProxyDurable
	AckWait       time.Duration // default AckWait (a forward is a verify and a publish)
	MaxAckPending int           // default 256 (4 × the proxy's default concurrency)
	MaxDeliver    int           // default DefaultMaxDeliver
}

// ProxyConsumerConfig is the configuration of the proxy's consumer on
// src's outbox for messages to dst.
func ProxyConsumerConfig(src, dst string, c ProxyConsumers) jetstream.ConsumerConfig {
	if c.AckWait <= 0 {
		c.AckWait = AckWait
	}
	if c.MaxAckPending <= 0 {
		c.MaxAckPending = 256
	}
	if c.MaxDeliver <= 0 {
		c.MaxDeliver = DefaultMaxDeliver
	}
	return jetstream.ConsumerConfig{
		Durable:       ProxyConsumer(c.Durable, dst),
		FilterSubject: OutboxFilter(src, dst),
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       c.AckWait,
		MaxAckPending: c.MaxAckPending,
		MaxDeliver:    c.MaxDeliver,
		DeliverPolicy: jetstream.DeliverAllPolicy,
	}
}

// EnsureProxyConsumers creates (or updates) on region's outbox the proxy's
// durable consumer for every other region of the partition. The outbox
// must exist (EnsureOutbox).
func EnsureProxyConsumers(ctx context.Context, js jetstream.JetStream, region string, partitionRegions []string, c ProxyConsumers) error {
	for _, dst := range partitionRegions {
		if dst == region {
			continue
		}
		cfg := ProxyConsumerConfig(region, dst, c)
		if _, err := js.CreateOrUpdateConsumer(ctx, OutboxStream(region), cfg); err != nil {
			return fmt.Errorf("create consumer %s on %s: %w", cfg.Durable, OutboxStream(region), err)
		}
	}
	return nil
}

// Region holds a region's resources once ensured.
type Region struct {
	Requests jetstream.Stream
	Inbox    jetstream.Stream
	Keys     jetstream.KeyValue
	Repl     jetstream.KeyValue
	Replay   jetstream.KeyValue
	Pending  jetstream.KeyValue
	Tokens   jetstream.KeyValue
	// The KMS API's (docs/KMS-API.md).
	AccessKeys jetstream.KeyValue
	Aliases    jetstream.KeyValue
}

// EnsureRegion creates every stream and bucket a region's workers use.
func EnsureRegion(ctx context.Context, js jetstream.JetStream, region string, partitionRegions []string, o Options) (*Region, error) {
	var r Region
	var err error
	streams := []struct {
		dst      *jetstream.Stream
		resource string
		cfg      jetstream.StreamConfig
	}{
		{&r.Requests, ResourceRequests, jetstream.StreamConfig{
			Name: RequestsStream(region), Subjects: []string{RequestsWildcard(region)},
			Description: "mrkrepl " + region + ": request events (replicate-key), kept 7 days",
			Duplicates:  DedupWindow, MaxAge: 7 * 24 * time.Hour,
		}},
		{&r.Inbox, ResourceInbox, jetstream.StreamConfig{
			Name: InboxStream(region), Subjects: []string{InboxWildcard(region)},
			Description: "mrkrepl " + region + ": signed messages from other regions, as the proxy delivered them",
			Duplicates:  DedupWindow, MaxAge: 24 * time.Hour,
		}},
		{nil, ResourceEvents, jetstream.StreamConfig{
			Name: EventsStream(region), Subjects: []string{EventsWildcard(region)},
			Description: "mrkrepl " + region + ": audit events, kept 30 days",
			MaxAge:      30 * 24 * time.Hour,
		}},
	}
	for _, s := range streams {
		s.cfg.MaxMsgsPerSubject = NoPerSubjectLimit
		s.cfg.Storage = o.Storage
		s.cfg.Replicas = o.replicas()
		o.applyStream(s.resource, &s.cfg)
		st, err := js.CreateOrUpdateStream(ctx, s.cfg)
		if err != nil {
			return nil, fmt.Errorf("create stream %s: %w", s.cfg.Name, err)
		}
		if s.dst != nil {
			*s.dst = st
		}
	}
	if err := EnsureOutbox(ctx, js, region, partitionRegions, o); err != nil {
		return nil, err
	}
	if err := EnsureDLQ(ctx, js, region, o); err != nil {
		return nil, err
	}
	buckets := []struct {
		dst      *jetstream.KeyValue
		resource string
		cfg      jetstream.KeyValueConfig
	}{
		{&r.Keys, ResourceKeys, jetstream.KeyValueConfig{Bucket: KeysBucket(region), History: 5,
			Description: "mrkrepl " + region + ": keys' metadata (no key material), by key id"}},
		{&r.Repl, ResourceRepl, jetstream.KeyValueConfig{Bucket: ReplBucket(region), History: 1,
			Description: "mrkrepl " + region + ": replication runs, by replication id"}},
		{&r.Replay, ResourceReplay, jetstream.KeyValueConfig{Bucket: ReplayBucket(region), History: 1, TTL: ReplayWindow,
			Description: "mrkrepl " + region + ": ids of messages received, against replays"}},
		// The sweeper removes entries with a purge whose marker expires
		// (PendingMarkerTTL): no delete markers pile up, and no periodic
		// PurgeDeletes (one JetStream API request per marker) is needed.
		{&r.Pending, ResourcePending, jetstream.KeyValueConfig{Bucket: PendingBucket(region), History: 1, LimitMarkerTTL: PendingMarkerTTL,
			Description: "mrkrepl " + region + ": keys with work outstanding, for the sweeper"}},
		{&r.Tokens, ResourceTokens, jetstream.KeyValueConfig{Bucket: TokensBucket(region), History: 1, TTL: ClientTokenTTL,
			Description: "mrkrepl " + region + ": replicate-key client tokens, kept 24 hours"}},
		{&r.AccessKeys, ResourceAccessKeys, jetstream.KeyValueConfig{Bucket: AccessKeysBucket(region), History: 1,
			Description: "mrkrepl " + region + ": access keys of the KMS API, their secrets sealed by the region's HSM"}},
		{&r.Aliases, ResourceAliases, jetstream.KeyValueConfig{Bucket: AliasesBucket(region), History: 1,
			Description: "mrkrepl " + region + ": aliases of the KMS API (the region's own), by alias name"}},
	}
	for _, b := range buckets {
		b.cfg.Storage = o.Storage
		b.cfg.Replicas = o.replicas()
		o.applyBucket(b.resource, &b.cfg)
		*b.dst, err = js.CreateOrUpdateKeyValue(ctx, b.cfg)
		if err != nil {
			return nil, fmt.Errorf("create kv %s: %w", b.cfg.Bucket, err)
		}
		if o.replicas() > 1 {
			if *b.dst, err = leaderReads(ctx, js, b.cfg.Bucket); err != nil {
				return nil, err
			}
		}
	}
	return &r, nil
}

// leaderReads turns off direct gets on a replicated bucket and returns a
// handle that reads through the stream leader. With direct gets, any
// replica answers a read, and a follower that lags behind returns a value
// older than the one just written: a worker could then miss a run it had
// just stored and refuse the run's next message. The workers need
// read-your-writes, so every read goes to the leader.
func leaderReads(ctx context.Context, js jetstream.JetStream, bucket string) (jetstream.KeyValue, error) {
	st, err := js.Stream(ctx, "KV_"+bucket)
	if err != nil {
		return nil, fmt.Errorf("kv %s: %w", bucket, err)
	}
	cfg := st.CachedInfo().Config
	if cfg.AllowDirect {
		cfg.AllowDirect = false
		if _, err := js.UpdateStream(ctx, cfg); err != nil {
			return nil, fmt.Errorf("kv %s: turn off direct gets: %w", bucket, err)
		}
	}
	kv, err := js.KeyValue(ctx, bucket)
	if err != nil {
		return nil, fmt.Errorf("kv %s: %w", bucket, err)
	}
	return kv, nil
}

// DeadLetterPrefix is how much of a refused message a dead letter keeps:
// its first DeadLetterPrefix bytes, with the whole message's length
// (HeaderLength) and SHA-256 (HeaderSHA256) in headers. A dead letter thus
// always fits the DLQ's MaxMsgSize and NATS's max_payload, whatever the
// refused message's size, so refusing it never fails for its size (before,
// a message of max_payload was nak'ed forever: its copy did not fit).
const DeadLetterPrefix = 1 << 10

// DeadLetterDetailMax bounds the HeaderDetail of a dead letter, in bytes.
const DeadLetterDetailMax = 1 << 10

// Headers set on dead letters, beyond those above.
const (
	HeaderLength = "Mrk-Length" // the refused message's length in bytes, decimal
	HeaderSHA256 = "Mrk-Sha256" // its SHA-256, hex
	// HeaderOriginalSeq is "<stream> <sequence>" of the refused delivery.
	HeaderOriginalSeq = "Mrk-Original-Seq"
)

// MsgID is the Nats-Msg-Id of a message published into an outbox or an
// inbox: the hex SHA-256 of its bytes. Only byte-identical messages
// collide, so a publisher cannot suppress another message by choosing its
// msg_id as Nats-Msg-Id; a message published again (a redelivery, a
// stored reply re-sent, a second proxy) has the same bytes and is dropped.
func MsgID(data []byte) string {
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:])
}

// DeadLetter publishes msg, refused by component ("worker" or "proxy"), on
// region's dead-letter stream with the reason and detail in headers. The
// dead letter holds at most DeadLetterPrefix bytes of msg, with msg's
// length and SHA-256 in headers. Its Nats-Msg-Id names the refused
// delivery (component, stream, stream sequence), so dead-lettering the
// same message again (a redelivery after a lost Term) is dropped by the
// DLQ: first is false then, and the caller does not count the refusal
// again.
func DeadLetter(ctx context.Context, js jetstream.JetStream, region, component string, msg jetstream.Msg, reason, detail string) (first bool, err error) {
	data := msg.Data()
	dl := nats.NewMsg(DLQSubject(region, component))
	dl.Data = data[:min(len(data), DeadLetterPrefix)]
	dl.Header.Set(HeaderReason, reason)
	dl.Header.Set(HeaderDetail, clip(detail, DeadLetterDetailMax))
	dl.Header.Set(HeaderOriginalSubject, clip(msg.Subject(), DeadLetterDetailMax))
	dl.Header.Set(HeaderComponent, component)
	dl.Header.Set(HeaderLength, strconv.Itoa(len(data)))
	dl.Header.Set(HeaderSHA256, MsgID(data))
	id := component + ":" + MsgID(data) + ":" + reason
	if md, err := msg.Metadata(); err == nil {
		seq := md.Stream + " " + strconv.FormatUint(md.Sequence.Stream, 10)
		dl.Header.Set(HeaderOriginalSeq, seq)
		id = component + ":" + seq
	}
	ack, err := js.PublishMsg(ctx, dl, jetstream.WithMsgID(id))
	if err != nil {
		return false, err
	}
	return !ack.Duplicate, nil
}

// clip cuts s to at most n bytes, at a UTF-8 boundary, and replaces CR and
// LF, which a header value cannot hold.
func clip(s string, n int) string {
	if len(s) > n {
		s = strings.ToValidUTF8(s[:n], "")
	}
	return strings.NewReplacer("\r", " ", "\n", " ").Replace(s)
}

// LastDelivery reports whether msg is its consumer's last delivery
// (maxDeliver, the consumer's MaxDeliver): a handler that would retry it
// dead-letters it with ReasonMaxDeliver instead, since the server will not
// deliver it again.
func LastDelivery(msg jetstream.Msg, maxDeliver int) bool {
	if maxDeliver <= 0 {
		return false
	}
	md, err := msg.Metadata()
	return err == nil && md.NumDelivered >= uint64(maxDeliver)
}

// RetryDelay is the delay before msg is delivered again after a failure:
// base, doubled with each delivery up to base<<maxDoublings, capped at 30 s.
func RetryDelay(msg jetstream.Msg, base time.Duration, maxDoublings uint64) time.Duration {
	n := uint64(1)
	if md, err := msg.Metadata(); err == nil && md.NumDelivered > 0 {
		n = md.NumDelivered
	}
	return min(base<<min(n-1, maxDoublings), 30*time.Second)
}
