package workers

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mrkrepl/mrkrepl/internal/layout"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
)

// This file is the worker's scrape-time view: what Prometheus reads from
// JetStream and the in-flight index when it scrapes, rather than what the
// worker counts as it works (metrics.go).
//
// Runs in flight are the keys of the region's PENDING bucket (a run is put
// there when it starts and deleted when it ends, by whichever worker ends
// it). A KV watcher keeps the set in memory, so a scrape costs no KV scan;
// every worker of a region reports the same region-wide number.

// collectTimeout bounds the JetStream queries of one scrape.
const collectTimeout = 2 * time.Second

// workerCollector reads state on scrape. It reports nothing until the
// worker has started (attach).
type workerCollector struct {
	w        atomic.Pointer[Worker]
	inflight inflightSet

	inFlight, oldest, pending, ackPending, streamMsgs, connected, ownRSK *prometheus.Desc

	// Bounds (layout.DefaultLimits): bytes stored against MaxBytes, and
	// the last sequence, which counts messages written even when a full
	// DiscardOld stream (events, dlq) drops its oldest.
	streamBytes, streamMaxBytes, streamLastSeq *prometheus.Desc
}

func newWorkerCollector(region string) *workerCollector {
	cl := prometheus.Labels{"region": region}
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc("mrkrepl_worker_"+name, help, labels, cl)
	}
	return &workerCollector{
		inFlight: d("replications_in_flight",
			"Replication runs of this region (either role) started and not yet ended, from the region's in-flight index; the same in every worker of the region."),
		oldest: d("oldest_in_flight_start_timestamp_seconds",
			"Unix time at which the oldest run still in flight started; 0 when none is in flight."),
		pending: d("consumer_pending_messages",
			"Messages in the stream not yet delivered to the worker's durable consumer (consumer lag), by stream (requests, inbox).", "stream"),
		ackPending: d("consumer_ack_pending_messages",
			"Messages delivered to the worker's durable consumer and not yet acknowledged, by stream (requests, inbox).", "stream"),
		streamMsgs: d("stream_messages",
			"Messages stored in the region's streams, by stream (requests, outbox, inbox, events, dlq).", "stream"),
		streamBytes: d("stream_bytes",
			"Bytes stored in the region's streams, by stream (requests, outbox, inbox, events, dlq).", "stream"),
		streamMaxBytes: d("stream_max_bytes",
			"The stream's MaxBytes (docs/OPERATIONS.md, Limits), by stream; -1 without a limit. At it, requests, outbox and inbox refuse new messages; events and dlq drop their oldest.", "stream"),
		streamLastSeq: d("stream_last_sequence",
			"The stream's last sequence, by stream: its increase is the number of messages written, also when a full stream drops its oldest.", "stream"),
		connected: d("nats_connected",
			"1 while the worker's connection to its region's NATS cluster is up, else 0."),
		ownRSK: d("rsk_expiry_timestamp_seconds",
			"Unix time at which the RSK this worker signs with now stops being valid (its not_after in the trust bundle in force)."),
	}
}

func (c *workerCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.inFlight, c.oldest, c.pending, c.ackPending, c.streamMsgs, c.streamBytes, c.streamMaxBytes, c.streamLastSeq, c.connected, c.ownRSK} {
		ch <- d
	}
}

func (c *workerCollector) Collect(ch chan<- prometheus.Metric) {
	w := c.w.Load()
	if w == nil {
		return
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	if _, kid := w.rsk(); kid != nil {
		if k, ok := w.bundle().Key(kid); ok {
			gauge(c.ownRSK, float64(k.NotAfter.Unix()))
		}
	}
	if n, oldest, ok := c.inflight.stats(); ok {
		gauge(c.inFlight, float64(n))
		ts := 0.0
		if n > 0 {
			ts = float64(oldest.UnixMilli()) / 1e3
		}
		gauge(c.oldest, ts)
	}
	if !w.cfg.Conn.IsConnected() {
		gauge(c.connected, 0)
		return // every query below would wait for the timeout
	}
	gauge(c.connected, 1)

	ctx, cancel := context.WithTimeout(context.Background(), collectTimeout)
	defer cancel()
	region := w.cfg.Region
	for _, s := range []struct{ label, stream, durable string }{
		{"requests", layout.RequestsStream(region), requestsConsumer},
		{"inbox", layout.InboxStream(region), inboxConsumer},
	} {
		cons, err := w.js.Consumer(ctx, s.stream, s.durable)
		if err != nil {
			w.log.Debug("metrics: consumer info", "stream", s.stream, "err", err)
			continue
		}
		ci := cons.CachedInfo()
		gauge(c.pending, float64(ci.NumPending), s.label)
		gauge(c.ackPending, float64(ci.NumAckPending), s.label)
	}
	for _, s := range []struct{ label, name string }{
		{"requests", layout.RequestsStream(region)},
		{"outbox", layout.OutboxStream(region)},
		{"inbox", layout.InboxStream(region)},
		{"events", layout.EventsStream(region)},
		{"dlq", layout.DLQStream(region)},
	} {
		st, err := w.js.Stream(ctx, s.name)
		if err != nil {
			w.log.Debug("metrics: stream info", "stream", s.name, "err", err)
			continue
		}
		info := st.CachedInfo()
		gauge(c.streamMsgs, float64(info.State.Msgs), s.label)
		gauge(c.streamBytes, float64(info.State.Bytes), s.label)
		gauge(c.streamMaxBytes, float64(info.Config.MaxBytes), s.label)
		gauge(c.streamLastSeq, float64(info.State.LastSeq), s.label)
	}
}

// inflightSet is the set of runs in flight, fed by a watcher on the
// PENDING bucket: key = replication id, time = when the key was put.
type inflightSet struct {
	mu      sync.Mutex
	synced  bool // the watcher has delivered the bucket's initial state
	started map[string]time.Time
	cancel  context.CancelFunc // stops the current watcher
	gen     int                // generation of the current watcher
}

// stats returns the number of runs in flight and the oldest start; ok is
// false until the initial state is known.
func (s *inflightSet) stats() (n int, oldest time.Time, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.synced {
		return 0, time.Time{}, false
	}
	for _, t := range s.started {
		if oldest.IsZero() || t.Before(oldest) {
			oldest = t
		}
	}
	return len(s.started), oldest, true
}

// watch follows kv until stop, replacing a previous watcher. The watcher's
// subscription lives as long as its context, so the context is the
// watcher's own; creating it is retried every 5 s while it fails.
func (s *inflightSet) watch(kv jetstream.KeyValue, log *slog.Logger) {
	ctx, cancel := context.WithCancel(context.Background())
	s.mu.Lock()
	if s.cancel != nil {
		s.cancel()
	}
	s.gen++
	gen := s.gen
	s.cancel, s.synced, s.started = cancel, false, map[string]time.Time{}
	s.mu.Unlock()
	go func() {
		var kw jetstream.KeyWatcher
		for {
			var err error
			// "*": replication ids only; the lifecycle's "lc.<key id>"
			// entries (sweep.go) are not runs.
			if kw, err = kv.Watch(ctx, "*", jetstream.MetaOnly()); err == nil {
				break
			}
			log.Warn("in-flight gauge: cannot watch the pending index; retrying", "err", err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(5 * time.Second):
			}
		}
		// Drain until the subscription ends (ctx cancelled): a watcher
		// blocks its subscription when its buffer is full.
		for e := range kw.Updates() {
			s.mu.Lock()
			if s.gen == gen {
				switch {
				case e == nil:
					s.synced = true
				case e.Operation() == jetstream.KeyValuePut:
					s.started[e.Key()] = e.Created()
				default:
					delete(s.started, e.Key())
				}
			}
			s.mu.Unlock()
		}
	}()
}

func (s *inflightSet) stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cancel != nil {
		s.cancel()
		s.cancel = nil
	}
	s.gen++
	s.synced = false
}

// startObservers attaches the scrape-time collector to the started worker
// and starts following the in-flight index. Called by Start with w.mu held;
// it does not block.
func (w *Worker) startObservers() {
	w.met.initBackend(w.backend)
	w.met.view.w.Store(w)
	w.met.bundle.Set(w.bundle())
	if w.res == nil || w.res.Pending == nil {
		return
	}
	w.met.view.inflight.watch(w.res.Pending, w.log)
}

// stopObservers stops following the in-flight index. Called by Stop.
func (w *Worker) stopObservers() {
	w.met.view.inflight.stop()
}
