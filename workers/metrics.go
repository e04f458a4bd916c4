package workers

import (
	"fmt"
	"slices"
	"sync"

	"github.com/mrkrepl/mrkrepl/api"
	"github.com/mrkrepl/mrkrepl/hsmsvc"
	"github.com/mrkrepl/mrkrepl/internal/layout"
	"github.com/mrkrepl/mrkrepl/internal/obs"
	"github.com/mrkrepl/mrkrepl/internal/repl"
	"github.com/mrkrepl/mrkrepl/messages"
	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the worker's Prometheus series (docs/METRICS.md). Every
// series carries the constant label region; the other labels are
// low-cardinality: message type, result, reason, operation, role, stage,
// backend — never key ids. Series whose label values are known in advance
// are created at zero so that rates and alerts work from the first scrape.
//
// Besides these instruments, a collector (observe.go) reads state on scrape:
// runs in flight, consumer lag, stream sizes, the connection and the RSK's
// expiry; obs.BundleCollector reports the trust bundle's RSK expiry.
type metrics struct {
	received      *prometheus.CounterVec   // type, result
	refused       *prometheus.CounterVec   // reason
	requests      opCounter                // op, result
	replications  *prometheus.CounterVec   // role, result
	duration      *prometheus.HistogramVec // role, stage
	hsmOps        *prometheus.HistogramVec // op, backend
	hsmErrors     *prometheus.CounterVec   // op, backend
	lastCompleted prometheus.Gauge
	timedOut      *prometheus.CounterVec // role
	retried       prometheus.Counter
	gaveUp        prometheus.Counter
	bundleReloads *prometheus.CounterVec // result (SetBundle)
	runCache      *prometheus.CounterVec // result (runFor: hit, miss; stale)
	authz         *prometheus.CounterVec // action, decision
	auditDropped  prometheus.Counter     // data-plane events not stored

	view     *workerCollector     // scrape-time state, attached at Start
	bundle   *obs.BundleCollector // the trust bundle's RSK expiry, set at Start
	selfTest sync.Mutex           // one HSM self-test at a time (health.go)
}

var protocolTypes = messages.Types()

// apiOps are the request API's operations, the values of the op label
// (request events are "event:<op>").
var apiOps = []string{
	api.OpCreateKey, api.OpDescribeKey, api.OpListKeys, api.OpReplicateKey,
	api.OpDescribeReplication, api.OpEncrypt, api.OpDecrypt, api.OpGenerateDataKey,
	api.OpRotateKey, api.OpUpdatePrimaryRegion, api.OpScheduleKeyDeletion, api.OpCancelKeyDeletion,
	api.OpGetKeyPolicy, api.OpPutKeyPolicy,
	api.OpCreateAccessKey, api.OpListAccessKeys, api.OpDeleteAccessKey,
}

// eventOps are the request events the worker consumes.
var eventOps = []string{"event:" + api.OpReplicateKey}

// otherOp replaces an op label value outside apiOps and eventOps: the
// request subject's last token is chosen by whoever publishes, and a label
// must not take unbounded values.
const otherOp, otherEventOp = "other", "event:other"

// hsmOpNames are the values of the op label of the HSM metrics.
var hsmOpNames = []string{
	"sign", "generate_key", "encrypt", "decrypt", "create_agreement_key",
	"wrap_for_peer", "unwrap_from_peer", "key_confirmation", "destroy_key", opSelfTest,
}

// opSelfTest is the readiness check's sign-and-verify (health.go).
const opSelfTest = "self_test"

// workerReasons are the worker's own refusal reasons, beyond messages.Reason.
var workerReasons = []string{
	reasonReplayedMsgID, reasonUnknownRun, reasonStateMismatch, reasonWrongPeer,
	reasonNotPrimary, reasonKeyExists, reasonRunExpired, reasonUnknownKey,
	layout.ReasonMaxDeliver, reasonBadProperties, reasonEpochRange,
}

// opCounter is requests_total with its op label bounded to known values.
type opCounter struct{ vec *prometheus.CounterVec }

// WithLabelValues returns the counter for op and result; an unknown op is
// counted as "other" (or "event:other").
func (c opCounter) WithLabelValues(op, result string) prometheus.Counter {
	if !slices.Contains(apiOps, op) && !slices.Contains(eventOps, op) {
		if len(op) >= len("event:") && op[:len("event:")] == "event:" {
			op = otherEventOp
		} else {
			op = otherOp
		}
	}
	return c.vec.WithLabelValues(op, result)
}

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
		requests: opCounter{prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "requests_total", ConstLabels: cl,
			Help: "API requests and request events, by operation and result (ok, error).",
		}, []string{"op", "result"})},
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
			Help:    "HSM operation latency, by operation and backend (the count is the number of attempts).",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16),
		}, []string{"op", "backend"}),
		hsmErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "hsm_operation_errors_total", ConstLabels: cl,
			Help: "HSM operations that returned an error, by operation and backend.",
		}, []string{"op", "backend"}),
		lastCompleted: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: ns, Subsystem: sub, Name: "last_replication_completed_timestamp_seconds", ConstLabels: cl,
			Help: "Unix time of the last replication this process completed (either role); 0 if none since it started.",
		}),
		timedOut: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "runs_timed_out_total", ConstLabels: cl,
			Help: "Replication runs ended FAILED by the sweeper because they passed their deadline, by role.",
		}, []string{"role"}),
		retried: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "replication_retries_total", ConstLabels: cl,
			Help: "Fresh runs started for a replica after a run timed out.",
		}),
		gaveUp: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "replicas_given_up_total", ConstLabels: cl,
			Help: "Replicas marked FAILED after their last attempt timed out.",
		}),
		bundleReloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "bundle_reloads_total", ConstLabels: cl,
			Help: "Trust bundles given to the running worker (SetBundle: a reload of the bundle file), by result: ok (in force) or error (refused or unreadable; the previous one stays in force).",
		}, []string{"result"}),
		runCache: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "run_cache_lookups_total", ConstLabels: cl,
			Help: "Run records looked up for an inbox message, by result: hit (taken from the worker's run cache, no KV read), miss (read from the KV), stale (a cached record turned out outdated: another worker of the region wrote the run; read again from the KV).",
		}, []string{"result"}),
		authz: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "authz_decisions_total", ConstLabels: cl,
			Help: "Policy decisions on requests, by action (kms:…) and decision (allowed, denied).",
		}, []string{"action", "decision"}),
		auditDropped: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "audit_events_dropped_total", ConstLabels: cl,
			Help: "Data-plane audit events (Encrypt, Decrypt, GenerateDataKey) that JetStream did not store.",
		}),
		view: newWorkerCollector(region),
	}
	for _, a := range authzActions() {
		m.authz.WithLabelValues(a, "allowed")
		m.authz.WithLabelValues(a, "denied")
	}
	for _, r := range []string{"hit", "miss", "stale"} {
		m.runCache.WithLabelValues(r)
	}
	m.bundleReloads.WithLabelValues("ok")
	m.bundleReloads.WithLabelValues("error")
	m.timedOut.WithLabelValues(string(repl.Source))
	m.timedOut.WithLabelValues(string(repl.Destination))
	for _, t := range protocolTypes {
		for _, r := range []string{"accepted", "duplicate", "refused", "retry"} {
			m.received.WithLabelValues(string(t), r)
		}
	}
	m.received.WithLabelValues("unknown", "refused")
	m.received.WithLabelValues("unknown", "retry")
	for _, r := range append(messages.Reasons(), messages.OptionReasons()...) {
		m.refused.WithLabelValues(string(r))
	}
	for _, r := range workerReasons {
		m.refused.WithLabelValues(r)
	}
	for _, op := range append(slices.Concat(apiOps, eventOps), otherOp, otherEventOp) {
		for _, r := range []string{"ok", "error"} {
			m.requests.vec.WithLabelValues(op, r)
		}
	}
	for _, role := range []string{string(repl.Source), string(repl.Destination)} {
		for _, r := range []string{"completed", "failed"} {
			m.replications.WithLabelValues(role, r)
		}
	}
	m.duration.WithLabelValues(string(repl.Source), "confirmed")
	m.duration.WithLabelValues(string(repl.Destination), "usable")
	if reg != nil {
		for _, c := range []prometheus.Collector{m.received, m.refused, m.requests.vec, m.replications, m.duration, m.hsmOps, m.hsmErrors, m.lastCompleted, m.timedOut, m.retried, m.gaveUp, m.bundleReloads, m.runCache, m.authz, m.auditDropped, m.view} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("register worker metrics: %w", err)
			}
		}
	}
	var err error
	if m.bundle, err = obs.RegisterBundleCollector(reg); err != nil {
		return nil, fmt.Errorf("register worker metrics: %w", err)
	}
	return m, nil
}

// initBackend creates the HSM series of the worker's backend at zero.
func (m *metrics) initBackend(backend string) {
	for _, op := range hsmOpNames {
		m.hsmOps.WithLabelValues(op, backend)
		m.hsmErrors.WithLabelValues(op, backend)
	}
}

// registerHostKDF exports whether the HSM releases the ECDH shared secret Z
// to the host for the KDF (a PKCS#11 token without an in-token SP 800-56C
// KDF, such as SoftHSM2), and how many times it did. Read on scrape.
func registerHostKDF(reg prometheus.Registerer, region string, hsm hsmsvc.HSM) error {
	if reg == nil {
		return nil
	}
	r, _ := hsm.(hsmsvc.HostKDFReporter)
	cl := prometheus.Labels{"region": region, "backend": hsm.Backend()}
	for _, c := range []prometheus.Collector{
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: "mrkrepl", Subsystem: "worker", Name: "hsm_host_kdf", ConstLabels: cl,
			Help: "1 if the HSM is a PKCS#11 token that releases Z to the host for the KDF (allow-host-kdf), else 0.",
		}, func() float64 {
			if r != nil && r.HostKDF() {
				return 1
			}
			return 0
		}),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Namespace: "mrkrepl", Subsystem: "worker", Name: "hsm_host_kdf_operations_total", ConstLabels: cl,
			Help: "KDF runs done on the host with a Z read out of a PKCS#11 token, since the HSM was opened.",
		}, func() float64 {
			if r == nil {
				return 0
			}
			return float64(r.HostKDFOps())
		}),
	} {
		if err := reg.Register(c); err != nil {
			return fmt.Errorf("register worker metrics: %w", err)
		}
	}
	return nil
}
