package proxy

import (
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/mrkrepl/mrkrepl/internal/layout"
	"github.com/mrkrepl/mrkrepl/internal/obs"
	"github.com/mrkrepl/mrkrepl/messages"
	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the proxy's Prometheus series (docs/METRICS.md). Labels are
// the pair (src, dst), the message type and the refusal reason — never key
// or message ids. Every series of every ordered pair of the bundle's
// regions is created at zero, so that rates and alerts work from the first
// scrape.
type metrics struct {
	forwarded    *prometheus.CounterVec   // src, dst, type
	duplicates   *prometheus.CounterVec   // src, dst, type
	refused      *prometheus.CounterVec   // src, dst, reason
	retried      *prometheus.CounterVec   // src, dst
	deadLettered *prometheus.CounterVec   // src
	latency      *prometheus.HistogramVec // src, dst
	lastForward  *prometheus.GaugeVec     // src, dst

	bundleReloads *prometheus.CounterVec // result (SetBundle)

	// heartbeat.go
	heartbeats    *prometheus.CounterVec   // src, dst
	hbFailures    *prometheus.CounterVec   // src, dst, side
	hbRoundTrip   *prometheus.HistogramVec // src, dst
	hbLastSuccess *prometheus.GaugeVec     // src, dst

	view   *proxyCollector      // scrape-time state (observe.go), attached at Start
	bundle *obs.BundleCollector // the trust bundle's RSK expiry, set at Start
	hb     heartbeater          // the heartbeat probes (heartbeat.go)
}

// Sides of a heartbeat that can fail.
const (
	sideSource      = "source"      // reading the pair's consumer on src
	sideDestination = "destination" // a PubAck from dst's heartbeat stream
)

func newMetrics(reg prometheus.Registerer, regions []string) (*metrics, error) {
	const ns, sub = "mrkrepl", "proxy"
	pair := []string{"src", "dst"}
	m := &metrics{
		forwarded: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "forwarded_total", Help: "Messages verified and delivered to the destination inbox, by pair and type."},
			[]string{"src", "dst", "type"}),
		duplicates: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "duplicates_total", Help: "Messages verified whose destination inbox already held the same bytes (PubAck Duplicate: another proxy or a redelivery delivered them), by pair and type; not counted in forwarded_total."},
			[]string{"src", "dst", "type"}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "refused_total", Help: "Messages refused (never forwarded), by pair and reason."},
			[]string{"src", "dst", "reason"}),
		retried: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "retries_total", Help: "Forward attempts that failed and were scheduled again, by pair."},
			pair),
		deadLettered: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "dead_lettered_total", Help: "Messages written to the source region's dead-letter stream."},
			[]string{"src"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub,
			Name: "forward_duration_seconds", Help: "Time from taking a message to the destination's PubAck (including injected delay).",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14)}, pair),
		lastForward: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub,
			Name: "last_forward_timestamp_seconds", Help: "Unix time of the last successful forward, by pair; 0 if none since the proxy started."},
			pair),
		heartbeats: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "heartbeats_total", Help: "Heartbeat probes attempted, by pair (docs/METRICS.md, \"Heartbeat\")."},
			pair),
		hbFailures: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "heartbeat_failures_total", Help: "Heartbeat probes that failed, by pair and the side that failed (source: the pair's consumer on src could not be read; destination: dst's heartbeat stream gave no PubAck)."},
			[]string{"src", "dst", "side"}),
		hbRoundTrip: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub,
			Name: "heartbeat_round_trip_seconds", Help: "Duration of a successful heartbeat probe: read the pair's consumer on src, then publish to dst's heartbeat stream and wait for its PubAck.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14)}, pair),
		hbLastSuccess: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub,
			Name: "heartbeat_last_success_timestamp_seconds", Help: "Unix time of the last successful heartbeat probe, by pair; 0 if none since the proxy started."},
			pair),
		bundleReloads: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "bundle_reloads_total", Help: "Trust bundles given to the running proxy (SetBundle: a reload of the bundle file), by result: ok (in force) or error (refused or unreadable; the previous one stays in force)."},
			[]string{"result"}),
		view: newProxyCollector(),
	}
	m.bundleReloads.WithLabelValues("ok")
	m.bundleReloads.WithLabelValues("error")
	for _, src := range regions {
		m.deadLettered.WithLabelValues(src)
		for _, dst := range regions {
			if src == dst {
				continue
			}
			m.retried.WithLabelValues(src, dst)
			m.latency.WithLabelValues(src, dst)
			m.lastForward.WithLabelValues(src, dst)
			for _, t := range messages.Types() {
				m.forwarded.WithLabelValues(src, dst, string(t))
				m.duplicates.WithLabelValues(src, dst, string(t))
			}
			for _, r := range messages.Reasons() {
				m.refused.WithLabelValues(src, dst, string(r))
			}
			for _, r := range messages.OptionReasons() {
				m.refused.WithLabelValues(src, dst, string(r))
			}
			m.refused.WithLabelValues(src, dst, layout.ReasonMaxDeliver)
			m.heartbeats.WithLabelValues(src, dst)
			m.hbFailures.WithLabelValues(src, dst, sideSource)
			m.hbFailures.WithLabelValues(src, dst, sideDestination)
			m.hbRoundTrip.WithLabelValues(src, dst)
			m.hbLastSuccess.WithLabelValues(src, dst)
		}
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{
			m.forwarded, m.duplicates, m.refused, m.retried, m.deadLettered, m.latency, m.lastForward,
			m.heartbeats, m.hbFailures, m.hbRoundTrip, m.hbLastSuccess, m.bundleReloads, m.view,
		} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("register proxy metrics: %w", err)
			}
		}
	}
	var err error
	if m.bundle, err = obs.RegisterBundleCollector(reg); err != nil {
		return nil, fmt.Errorf("register proxy metrics: %w", err)
	}
	return m, nil
}

func jitter(d time.Duration) time.Duration {
	return time.Duration(float64(d) * (0.8 + 0.4*rand.Float64()))
}
