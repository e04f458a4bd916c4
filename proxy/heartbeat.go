package proxy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/mrkrepl/mrkrepl/internal/layout"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// The heartbeat: an end-to-end probe of the bridge for every ordered pair
// of regions (src, dst), independent of replication traffic.
//
// Every Interval, for each pair, the proxy
//
//  1. reads the pair's durable consumer on src's outbox (the consumer it
//     forwards from) through its connection to src's cluster, and then
//  2. publishes a small unsigned probe to mrk.<dst>.heartbeat.<src> on
//     dst's cluster and waits for the PubAck of dst's heartbeat stream
//     MRK_<DST>_HEARTBEAT (created by dst's workers, layout.EnsureHeartbeat;
//     replicated like the other streams, one message kept per subject, an
//     hour at most).
//
// The round trip of both steps is mrkrepl_proxy_heartbeat_round_trip_seconds,
// and mrkrepl_proxy_heartbeat_last_success_timestamp_seconds is stamped
// when both succeed.
//
// What a success proves: at that moment this proxy could reach src's
// JetStream API and the pair's consumer existed, and dst's JetStream
// accepted a durable write (so dst's cluster had a stream leader and, at R3,
// a quorum) — the path a forwarded message takes is open at the JetStream
// level. What it does not prove: that workers are running or their HSMs
// usable (see the workers' /readyz and replication metrics), or that this
// proxy's forwarding loop is making progress (see consumer lag,
// mrkrepl_proxy_consumer_pending_messages). The probe is unsigned and goes
// to a stream no worker reads, so it can never be taken for a protocol
// message; it carries no secret.

// HeartbeatConfig configures the heartbeat probes.
type HeartbeatConfig struct {
	// Interval between probes of every pair. Default 10 s; negative
	// disables the heartbeat.
	Interval time.Duration
	// Timeout bounds one probe. Default 5 s, at most Interval.
	Timeout time.Duration
}

func (c HeartbeatConfig) withDefaults() HeartbeatConfig {
	if c.Interval == 0 {
		c.Interval = 10 * time.Second
	}
	if c.Timeout <= 0 {
		c.Timeout = 5 * time.Second
	}
	if c.Interval > 0 && c.Timeout > c.Interval {
		c.Timeout = c.Interval
	}
	return c
}

// HeartbeatStream is the name of region's heartbeat stream (created by the
// region's workers: layout.EnsureHeartbeat).
func HeartbeatStream(region string) string { return layout.HeartbeatStream(region) }

// HeartbeatSubject is the subject of a probe from src, on dst's cluster.
func HeartbeatSubject(dst, src string) string { return layout.HeartbeatSubject(dst, src) }

// HeartbeatHeader marks a probe.
const HeartbeatHeader = "Mrk-Heartbeat"

// heartbeatProbe is the probe's payload (JSON), for whoever looks at the
// stream with the nats CLI.
type heartbeatProbe struct {
	Src    string    `json:"src"`
	Dst    string    `json:"dst"`
	Proxy  string    `json:"proxy"` // the proxy's durable prefix
	Seq    uint64    `json:"seq"`
	SentAt time.Time `json:"sent_at"`
}

// heartbeater runs the probes of one proxy.
type heartbeater struct {
	mu     sync.Mutex
	cancel context.CancelFunc
	wg     sync.WaitGroup
	seq    uint64
}

func (h *heartbeater) start(ctx context.Context, p *Proxy) {
	cfg := p.cfg.Heartbeat.withDefaults()
	if cfg.Interval < 0 {
		return
	}
	lctx, cancel := context.WithCancel(context.Background())
	h.mu.Lock()
	h.cancel = cancel
	h.mu.Unlock()
	h.wg.Go(func() {
		t := time.NewTicker(cfg.Interval)
		defer t.Stop()
		for {
			h.round(lctx, p, cfg.Timeout)
			select {
			case <-lctx.Done():
				return
			case <-t.C:
			}
		}
	})
}

func (h *heartbeater) stop() {
	h.mu.Lock()
	cancel := h.cancel
	h.cancel = nil
	h.mu.Unlock()
	if cancel != nil {
		cancel()
	}
	h.wg.Wait()
}

// round probes every pair once, in parallel.
func (h *heartbeater) round(ctx context.Context, p *Proxy, timeout time.Duration) {
	h.mu.Lock()
	h.seq++
	seq := h.seq
	h.mu.Unlock()
	regions := p.regions
	var wg sync.WaitGroup
	for _, src := range regions {
		for _, dst := range regions {
			if src == dst {
				continue
			}
			wg.Go(func() {
				pctx, cancel := context.WithTimeout(ctx, timeout)
				defer cancel()
				h.probe(pctx, p, src, dst, seq)
			})
		}
	}
	wg.Wait()
}

// probe runs one heartbeat of (src, dst) and records it.
func (h *heartbeater) probe(ctx context.Context, p *Proxy, src, dst string, seq uint64) {
	m := p.met
	m.heartbeats.WithLabelValues(src, dst).Inc()
	start := time.Now()
	side, err := sideSource, h.readSource(ctx, p, src, dst)
	if err == nil {
		side, err = sideDestination, h.writeDestination(ctx, p, src, dst, seq)
	}
	if err != nil {
		if errors.Is(ctx.Err(), context.Canceled) {
			return // the proxy is stopping
		}
		m.hbFailures.WithLabelValues(src, dst, side).Inc()
		p.log.Warn("heartbeat failed", "src", src, "dst", dst, "side", side, "err", err)
		return
	}
	m.hbRoundTrip.WithLabelValues(src, dst).Observe(time.Since(start).Seconds())
	m.hbLastSuccess.WithLabelValues(src, dst).SetToCurrentTime()
}

func (h *heartbeater) readSource(ctx context.Context, p *Proxy, src, dst string) error {
	if _, err := p.js[src].Consumer(ctx, layout.OutboxStream(src), layout.ProxyConsumer(p.cfg.Durable, dst)); err != nil {
		return fmt.Errorf("consumer %s on %s: %w", layout.ProxyConsumer(p.cfg.Durable, dst), layout.OutboxStream(src), err)
	}
	return nil
}

func (h *heartbeater) writeDestination(ctx context.Context, p *Proxy, src, dst string, seq uint64) error {
	body, err := json.Marshal(heartbeatProbe{Src: src, Dst: dst, Proxy: p.cfg.Durable, Seq: seq, SentAt: time.Now().UTC()})
	if err != nil {
		return err
	}
	msg := nats.NewMsg(HeartbeatSubject(dst, src))
	msg.Data = body
	msg.Header.Set(HeartbeatHeader, "1")
	_, err = p.js[dst].PublishMsg(ctx, msg)
	if errors.Is(err, jetstream.ErrNoStreamResponse) && p.cfg.ManageStreams {
		// The stream was deleted: create it and try again.
		if err = layout.EnsureHeartbeat(ctx, p.js[dst], dst, p.cfg.Layout); err == nil {
			_, err = p.js[dst].PublishMsg(ctx, msg)
		}
	}
	if err != nil {
		return fmt.Errorf("publish %s: %w", HeartbeatSubject(dst, src), err)
	}
	return nil
}
