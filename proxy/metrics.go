package proxy

import (
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/mrkrepl/mrkrepl/messages"
	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	forwarded    *prometheus.CounterVec   // src, dst, type
	refused      *prometheus.CounterVec   // src, dst, reason
	retried      *prometheus.CounterVec   // src, dst
	deadLettered *prometheus.CounterVec   // src
	latency      *prometheus.HistogramVec // src, dst
	lastForward  *prometheus.GaugeVec     // src, dst
}

func newMetrics(reg prometheus.Registerer, regions []string) (*metrics, error) {
	const ns, sub = "mrkrepl", "proxy"
	m := &metrics{
		forwarded: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "forwarded_total", Help: "Messages verified and delivered to the destination inbox, by pair and type."},
			[]string{"src", "dst", "type"}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "refused_total", Help: "Messages refused (never forwarded), by pair and reason."},
			[]string{"src", "dst", "reason"}),
		retried: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "retries_total", Help: "Forward attempts that failed and were scheduled again, by pair."},
			[]string{"src", "dst"}),
		deadLettered: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "dead_lettered_total", Help: "Messages written to the source region's dead-letter stream."},
			[]string{"src"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub,
			Name: "forward_duration_seconds", Help: "Time from taking a message to the destination's PubAck (including injected delay).",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14)}, []string{"src", "dst"}),
		lastForward: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub,
			Name: "last_forward_timestamp_seconds", Help: "Unix time of the last successful forward, by pair."},
			[]string{"src", "dst"}),
	}
	for _, src := range regions {
		m.deadLettered.WithLabelValues(src)
		for _, dst := range regions {
			if src == dst {
				continue
			}
			m.retried.WithLabelValues(src, dst)
			for _, t := range []messages.Type{messages.TypeInit, messages.TypeOffer, messages.TypeMaterial, messages.TypeReceipt} {
				m.forwarded.WithLabelValues(src, dst, string(t))
			}
		}
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.forwarded, m.refused, m.retried, m.deadLettered, m.latency, m.lastForward} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("register proxy metrics: %w", err)
			}
		}
	}
	return m, nil
}

func jitter(d time.Duration) time.Duration {
	return time.Duration(float64(d) * (0.8 + 0.4*rand.Float64()))
}
