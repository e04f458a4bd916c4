package workers

import (
	"fmt"

	"github.com/mrkrepl/mrkrepl/messages"
	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the worker's Prometheus series (docs/METRICS.md). Labels are
// low-cardinality: region, peer, message type, result, reason — never key ids.
type metrics struct {
	received      *prometheus.CounterVec   // type, result
	refused       *prometheus.CounterVec   // reason
	requests      *prometheus.CounterVec   // op, result
	replications  *prometheus.CounterVec   // role, result
	duration      *prometheus.HistogramVec // role, stage
	hsmOps        *prometheus.HistogramVec // op, backend
	hsmErrors     *prometheus.CounterVec   // op, backend
	lastCompleted prometheus.Gauge
}

var protocolTypes = []messages.Type{messages.TypeInit, messages.TypeOffer, messages.TypeMaterial, messages.TypeReceipt}

func newMetrics(reg prometheus.Registerer, region string) (*metrics, error) {
	const ns, sub = "mrkrepl", "worker"
	cl := prometheus.Labels{"region": region}
	m := &metrics{
		received: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "messages_received_total", ConstLabels: cl,
			Help: "Protocol messages taken from the inbox, by type and result (accepted, duplicate, refused, retry).",
		}, []string{"type", "result"}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "messages_refused_total", ConstLabels: cl,
			Help: "Inbox messages refused and dead-lettered, by reason.",
		}, []string{"reason"}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "requests_total", ConstLabels: cl,
			Help: "API requests and request events, by operation and result (ok, error).",
		}, []string{"op", "result"}),
		replications: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "replications_total", ConstLabels: cl,
			Help: "Replication runs ended in this region, by role and result (completed, failed).",
		}, []string{"role", "result"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: ns, Subsystem: sub, Name: "replication_duration_seconds", ConstLabels: cl,
			Help:    "Time from a replication's start to a stage: usable (destination holds the key) or confirmed (source checked the receipt).",
			Buckets: prometheus.ExponentialBuckets(0.002, 2, 14),
		}, []string{"role", "stage"}),
		hsmOps: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: ns, Subsystem: sub, Name: "hsm_operation_duration_seconds", ConstLabels: cl,
			Help:    "HSM operation latency, by operation and backend.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16),
		}, []string{"op", "backend"}),
		hsmErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "hsm_operation_errors_total", ConstLabels: cl,
			Help: "HSM operations that returned an error, by operation and backend.",
		}, []string{"op", "backend"}),
		lastCompleted: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: ns, Subsystem: sub, Name: "last_replication_completed_timestamp_seconds", ConstLabels: cl,
			Help: "Unix time of the last replication this region completed (either role).",
		}),
	}
	for _, t := range protocolTypes {
		for _, r := range []string{"accepted", "duplicate", "refused", "retry"} {
			m.received.WithLabelValues(string(t), r)
		}
	}
	for _, role := range []string{roleSource, roleDestination} {
		for _, r := range []string{"completed", "failed"} {
			m.replications.WithLabelValues(role, r)
		}
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.received, m.refused, m.requests, m.replications, m.duration, m.hsmOps, m.hsmErrors, m.lastCompleted} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("register worker metrics: %w", err)
			}
		}
	}
	return m, nil
}
