// Package proxy is the JetStream bridge between the regions of a partition.
//
// For every ordered pair of regions (src, dst) the proxy keeps a durable
// pull consumer on src's outbox, filtered to messages for dst, so that a
// slow or unreachable region holds up only its own pairs. Each message is
// checked with messages.Verify — signature by an RSK of src valid at
// sent_at, partition, addressing, expiry, subject — before anything is
// forwarded. A verified message is published to dst's inbox
// (mrk.<dst>.in.<src>.<type>) with Nats-Msg-Id = the hex SHA-256 of its
// bytes (layout.MsgID: only byte-identical messages collide), and the source
// message is acked only after dst's JetStream has acknowledged the publish;
// a failed publish is retried with growing delays. A refused message is
// never forwarded: it is dead-lettered on mrk.<src>.dlq.proxy with the
// reason in the Mrk-Reason header, counted once, and terminated; so is a
// message whose forward still fails at the consumer's last delivery
// (MaxDeliver, reason max_deliver).
//
// The proxy holds no secrets and needs none: it sees signed public keys and
// wrapped material only. Several proxies may run at once: they share the
// durable consumers, and the inbox's de-duplication window drops a message
// that two of them forwarded.
package proxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mrkrepl/mrkrepl/internal/inflight"
	"github.com/mrkrepl/mrkrepl/internal/layout"
	"github.com/mrkrepl/mrkrepl/messages"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
)

// Config configures a Proxy. Bundle and Conns are required.
type Config struct {
	// Bundle is the partition's trust bundle at start; SetBundle replaces
	// it while the proxy runs. The regions the proxy bridges are this
	// bundle's, for the proxy's life.
	Bundle *messages.Bundle
	// Conns holds a connection to every region's NATS cluster, by region.
	Conns map[string]*nats.Conn

	Logger     *slog.Logger
	Registerer prometheus.Registerer
	Layout     layout.Options
	// Durable prefixes the consumer names ("<Durable>-<dst>"). Proxies with
	// the same prefix share the work. The workers create the consumers of
	// the default prefix only: another prefix needs ManageStreams or an
	// operator who creates its consumers (layout.EnsureProxyConsumers).
	// Default "proxy".
	Durable string
	// Delay is an injected one-way delay per pair, to emulate WAN latency
	// in tests and benchmarks. Keys are "src>dst"; "*" applies to all.
	Delay map[string]time.Duration
	// Loss is an injected probability (0 to 1) per pair that a forward
	// attempt fails as if the network had dropped it; the message is then
	// retried like any failed forward. Keys as for Delay. Tests only.
	Loss map[string]float64
	// ClockSkew is the allowance for clocks between regions when checking
	// sent_at and expires_at (0: messages.DefaultSkew).
	ClockSkew time.Duration
	// Concurrency bounds messages in flight per pair. Default 64.
	Concurrency int
	// Now returns the current time (tests). Default time.Now.
	Now func() time.Time
	// Heartbeat configures the end-to-end probes of every pair (heartbeat.go).
	Heartbeat HeartbeatConfig
	// ManageStreams makes the proxy create (or update) the outbox and
	// dead-letter streams, its consumers and the heartbeat streams itself,
	// as it once did. It needs rights the proxy's NATS user does not have
	// (internal/natsauth): only for tests and servers without
	// authorization. Without it the proxy only looks its consumers up;
	// each region's workers create them (layout.EnsureProxyConsumers).
	ManageStreams bool
	// LookupRetry is the delay between lookups of a consumer that does
	// not exist yet (default 1 s).
	LookupRetry time.Duration
}

// Proxy forwards verified messages between regions.
type Proxy struct {
	cfg     Config
	log     *slog.Logger
	met     *metrics
	js      map[string]jetstream.JetStream
	regions []string // the regions bridged (the first bundle's), sorted

	trust atomic.Pointer[messages.Bundle] // the bundle in force (SetBundle)
	setMu sync.Mutex                      // one SetBundle at a time

	mu       sync.Mutex
	consumes []jetstream.ConsumeContext
	inflight inflight.Group // goroutines of messages in flight
}

// New checks cfg and returns a Proxy that is not yet started.
func New(cfg Config) (*Proxy, error) {
	if cfg.Bundle == nil {
		return nil, errors.New("proxy: trust bundle is required")
	}
	for _, r := range cfg.Bundle.Regions() {
		if cfg.Conns[r] == nil {
			return nil, fmt.Errorf("proxy: no connection for region %s of partition %s", r, cfg.Bundle.Partition())
		}
	}
	for r := range cfg.Conns {
		if !cfg.Bundle.HasRegion(r) {
			return nil, fmt.Errorf("proxy: region %s is not in partition %s", r, cfg.Bundle.Partition())
		}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Durable == "" {
		cfg.Durable = layout.DefaultProxyDurable
	}
	if cfg.Concurrency <= 0 {
		cfg.Concurrency = 64
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	p := &Proxy{cfg: cfg, log: cfg.Logger.With("component", "proxy"), js: map[string]jetstream.JetStream{}, regions: cfg.Bundle.Regions()}
	p.trust.Store(cfg.Bundle)
	for r, nc := range cfg.Conns {
		js, err := jetstream.New(nc)
		if err != nil {
			return nil, fmt.Errorf("proxy: jetstream for %s: %w", r, err)
		}
		p.js[r] = js
	}
	met, err := newMetrics(cfg.Registerer, p.regions)
	if err != nil {
		return nil, fmt.Errorf("proxy: %w", err)
	}
	p.met = met
	return p, nil
}

// Start starts one consumer per ordered pair of regions. The consumers
// are the workers' to create (layout.EnsureProxyConsumers; with
// Config.ManageStreams the proxy creates them itself): Start waits for each
// until it exists or ctx ends, logging what it waits for.
func (p *Proxy) Start(ctx context.Context) error {
	regions := p.regions
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, src := range regions {
		js := p.js[src]
		if p.cfg.ManageStreams {
			if err := p.ensureStreams(ctx, src); err != nil {
				p.stopLocked()
				return fmt.Errorf("proxy: %w", err)
			}
		}
		for _, dst := range regions {
			if dst == src {
				continue
			}
			cons, err := p.lookupConsumer(ctx, js, src, dst)
			if err != nil {
				p.stopLocked()
				return fmt.Errorf("proxy: consumer %s→%s: %w", src, dst, err)
			}
			pr := &pair{p: p, src: src, dst: dst, sem: make(chan struct{}, p.cfg.Concurrency), maxDeliver: cons.CachedInfo().Config.MaxDeliver}
			cc, err := cons.Consume(pr.handle, jetstream.PullMaxMessages(p.cfg.Concurrency), jetstream.PullExpiry(layout.PullExpiry))
			if err != nil {
				p.stopLocked()
				return fmt.Errorf("proxy: consume %s→%s: %w", src, dst, err)
			}
			p.consumes = append(p.consumes, cc)
		}
	}
	p.startObservers(ctx) // metrics hook (observe.go)
	p.log.Info("proxy started", "partition", p.bundle().Partition(), "regions", regions)
	return nil
}

// ensureStreams creates src's outbox, dead-letter and heartbeat streams and
// the proxy's consumers on the outbox (Config.ManageStreams).
func (p *Proxy) ensureStreams(ctx context.Context, src string) error {
	js := p.js[src]
	if err := layout.EnsureOutbox(ctx, js, src, p.regions, p.cfg.Layout); err != nil {
		return err
	}
	if err := layout.EnsureDLQ(ctx, js, src, p.cfg.Layout); err != nil {
		return err
	}
	if err := layout.EnsureHeartbeat(ctx, js, src, p.cfg.Layout); err != nil {
		return err
	}
	for _, dst := range p.regions {
		if dst == src {
			continue
		}
		_, err := js.CreateOrUpdateConsumer(ctx, layout.OutboxStream(src), layout.ProxyConsumerConfig(src, dst, layout.ProxyConsumers{
			Durable:       p.cfg.Durable,
			AckWait:       layout.AckWait + p.delay(src, dst),
			MaxAckPending: 4 * p.cfg.Concurrency,
			MaxDeliver:    p.cfg.Layout.MaxDeliverOr(),
		}))
		if err != nil {
			return fmt.Errorf("consumer %s→%s: %w", src, dst, err)
		}
	}
	return nil
}

// lookupConsumer returns the pair's consumer on src's outbox, waiting (with
// a log line every attempt) until it exists or ctx ends.
func (p *Proxy) lookupConsumer(ctx context.Context, js jetstream.JetStream, src, dst string) (jetstream.Consumer, error) {
	name := layout.ProxyConsumer(p.cfg.Durable, dst)
	retry := p.cfg.LookupRetry
	if retry <= 0 {
		retry = time.Second
	}
	for {
		cons, err := js.Consumer(ctx, layout.OutboxStream(src), name)
		if err == nil {
			return cons, nil
		}
		if !errors.Is(err, jetstream.ErrConsumerNotFound) && !errors.Is(err, jetstream.ErrStreamNotFound) {
			p.log.Warn("consumer lookup failed; will retry", "consumer", name, "stream", layout.OutboxStream(src), "region", src, "err", err)
		} else {
			p.log.Info(fmt.Sprintf("waiting for consumer %s on region %s's outbox; the region's workers create it", name, src),
				"consumer", name, "stream", layout.OutboxStream(src), "region", src)
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("consumer %s on %s: %w (last error: %v)", name, layout.OutboxStream(src), ctx.Err(), err)
		case <-time.After(retry):
		}
	}
}

// Stop stops consuming and waits for messages in flight.
func (p *Proxy) Stop() {
	p.mu.Lock()
	p.stopLocked()
	p.mu.Unlock()
	p.inflight.Close()
}

func (p *Proxy) stopLocked() {
	p.stopObservers() // metrics hook (observe.go)
	for _, c := range p.consumes {
		c.Stop()
	}
	p.consumes = nil
}

func (p *Proxy) loss(src, dst string) float64 {
	if l, ok := p.cfg.Loss[src+">"+dst]; ok {
		return l
	}
	return p.cfg.Loss["*"]
}

func (p *Proxy) delay(src, dst string) time.Duration {
	if d, ok := p.cfg.Delay[src+">"+dst]; ok {
		return d
	}
	return p.cfg.Delay["*"]
}

// pair forwards the messages of one (src, dst) pair.
type pair struct {
	p        *Proxy
	src, dst string
	sem      chan struct{}
	// maxDeliver is the consumer's MaxDeliver: its last delivery is
	// dead-lettered rather than retried (layout.LastDelivery).
	maxDeliver int
}

func (pr *pair) handle(msg jetstream.Msg) {
	pr.sem <- struct{}{}
	started := pr.p.inflight.Go(func() {
		defer func() { <-pr.sem }()
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second+pr.p.delay(pr.src, pr.dst))
		defer cancel()
		pr.forward(ctx, msg)
	})
	if !started {
		<-pr.sem // stopping: not acked, so redelivered to a running proxy
	}
}

// forward is one message's whole life in the proxy; it ends in exactly one
// of ack (forwarded), term (refused and dead-lettered) or nak (retry).
func (pr *pair) forward(ctx context.Context, msg jetstream.Msg) {
	p := pr.p
	start := time.Now()
	env, err := messages.Verify(msg.Data(), messages.VerifyOptions{
		Bundle:  p.bundle(),
		Now:     p.cfg.Now(),
		Subject: msg.Subject(),
		Skew:    p.cfg.ClockSkew,
		// As the receiving worker will (a lifecycle message must not
		// outlive the replay window), so it is refused before crossing.
		MaxLifecycleLifetime: layout.LifecycleMaxLifetime(p.cfg.ClockSkew),
	})
	if err == nil && (env.Message.Src != pr.src || env.Message.Dst != pr.dst) {
		err = &messages.VerifyError{Reason: messages.ReasonSubject, Detail: "message is not for this pair"}
	}
	if err != nil {
		pr.refuse(ctx, msg, err)
		return
	}
	typ := string(env.Message.Type)
	if d := p.delay(pr.src, pr.dst); d > 0 {
		select {
		case <-time.After(d):
		case <-ctx.Done():
			_ = msg.NakWithDelay(time.Second)
			return
		}
	}
	out := nats.NewMsg(messages.InboxSubject(pr.dst, pr.src, env.Message.Type))
	out.Data = msg.Data()
	var ack *jetstream.PubAck
	if l := p.loss(pr.src, pr.dst); l > 0 && rand.Float64() < l {
		err = errInjectedLoss
	} else {
		ack, err = p.js[pr.dst].PublishMsg(ctx, out, jetstream.WithMsgID(layout.MsgID(msg.Data())))
	}
	if err != nil && layout.LastDelivery(msg, pr.maxDeliver) {
		pr.refuse(ctx, msg, &messages.VerifyError{Reason: layout.ReasonMaxDeliver, Detail: "forward failed at the last delivery: " + err.Error()})
		return
	}
	if err != nil {
		p.met.retried.WithLabelValues(pr.src, pr.dst).Inc()
		delay := retryDelay(msg)
		p.log.Warn("forward failed; will retry", "src", pr.src, "dst", pr.dst, "type", typ, "msg_id", env.Message.MsgID, "retry_in", delay, "err", err)
		_ = msg.NakWithDelay(delay)
		return
	}
	if ack.Duplicate {
		// The same bytes were delivered already (another proxy, or a
		// redelivery): the inbox dropped them, which is what makes several
		// proxies safe. Counted apart from forwards.
		p.log.Debug("duplicate dropped by destination inbox", "src", pr.src, "dst", pr.dst, "msg_id", env.Message.MsgID)
		_ = msg.Ack()
		p.met.duplicates.WithLabelValues(pr.src, pr.dst, typ).Inc()
		return
	}
	// A plain ack: if it is lost the message is forwarded again and the
	// destination inbox drops the duplicate (saves a round trip).
	if err := msg.Ack(); err != nil {
		// The destination has it; a redelivery is de-duplicated there.
		p.log.Warn("ack after forward failed", "src", pr.src, "dst", pr.dst, "msg_id", env.Message.MsgID, "err", err)
	}
	p.met.forwarded.WithLabelValues(pr.src, pr.dst, typ).Inc()
	p.met.latency.WithLabelValues(pr.src, pr.dst).Observe(time.Since(start).Seconds())
	p.met.lastForward.WithLabelValues(pr.src, pr.dst).SetToCurrentTime()
}

func (pr *pair) refuse(ctx context.Context, msg jetstream.Msg, err error) {
	p := pr.p
	reason, detail := string(messages.ReasonMalformed), err.Error()
	var ve *messages.VerifyError
	if errors.As(err, &ve) {
		reason, detail = string(ve.Reason), ve.Detail
	}
	first, err := layout.DeadLetter(ctx, p.js[pr.src], pr.src, "proxy", msg, reason, detail)
	if err != nil {
		p.log.Error("dead-letter failed; will retry", "src", pr.src, "err", err)
		_ = msg.NakWithDelay(time.Second)
		return
	}
	if first { // a redelivery of a refused message finds its dead letter there: counted once
		p.met.refused.WithLabelValues(pr.src, pr.dst, reason).Inc()
		p.met.deadLettered.WithLabelValues(pr.src).Inc()
		p.log.Warn("message refused", "src", pr.src, "dst", pr.dst, "subject", msg.Subject(), "reason", reason, "detail", detail)
	}
	_ = msg.TermWithReason(reason)
}

var errInjectedLoss = errors.New("injected loss")

// retryDelay grows with deliveries: 250ms, 500ms, … capped at 30s, with
// ±20% jitter so that proxies do not retry in lockstep.
func retryDelay(msg jetstream.Msg) time.Duration {
	return jitter(layout.RetryDelay(msg, 250*time.Millisecond, 7))
}

// BundleReloadFailed counts and logs a reload of the trust bundle that
// failed before SetBundle could judge it (the file could not be read or
// parsed): the bundle in force stays.
func (p *Proxy) BundleReloadFailed(err error) {
	p.met.bundleReloads.WithLabelValues("error").Inc()
	p.log.Error("trust bundle not reloaded; the previous one stays in force", "err", err)
}

// Regions returns the regions the proxy bridges.
func (p *Proxy) Regions() []string { return slices.Clone(p.regions) }

// bundle returns the trust bundle in force.
func (p *Proxy) bundle() *messages.Bundle { return p.trust.Load() }

// SetBundle puts b in force without a restart: from its return, messages
// are verified against b (a message being verified keeps the bundle it
// started with). It refuses, keeping the bundle in force, a bundle of
// another partition and one that drops a region the proxy bridges. A
// region b adds is logged and not bridged: the proxy needs a connection to
// it, so a restart.
//
// Every call is counted in mrkrepl_proxy_bundle_reloads_total and logged.
// SetBundle is safe to call at any time, concurrently with everything.
func (p *Proxy) SetBundle(b *messages.Bundle) error {
	p.setMu.Lock()
	defer p.setMu.Unlock()
	old := p.bundle()
	var err error
	switch {
	case b == nil:
		err = errors.New("proxy: set bundle: no bundle")
	case b.Partition() != old.Partition():
		err = fmt.Errorf("proxy: set bundle: it is for partition %q, the proxy's is %q", b.Partition(), old.Partition())
	default:
		for _, r := range p.regions {
			if !b.HasRegion(r) {
				err = fmt.Errorf("proxy: set bundle: it drops region %s, which the proxy bridges", r)
				break
			}
		}
	}
	if err != nil {
		p.met.bundleReloads.WithLabelValues("error").Inc()
		p.log.Error("trust bundle refused; the previous one stays in force", "err", err)
		return err
	}
	p.trust.Store(b)
	p.met.bundle.Set(b)
	p.met.bundleReloads.WithLabelValues("ok").Inc()
	for _, r := range b.Regions() {
		if !slices.Contains(p.regions, r) {
			p.log.Warn("trust bundle adds a region the proxy does not bridge; restart it with a connection to the region", "region", r)
		}
	}
	p.log.Info("trust bundle in force", "partition", b.Partition(), "regions", b.Regions(), "keys", len(b.Keys()))
	return nil
}
