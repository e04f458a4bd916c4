package workers

import (
	"bytes"
	"cmp"
	"context"
	"crypto"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mrkrepl/mrkrepl/hsmsvc"
	"github.com/mrkrepl/mrkrepl/internal/authz"
	"github.com/mrkrepl/mrkrepl/internal/inflight"
	"github.com/mrkrepl/mrkrepl/internal/layout"
	"github.com/mrkrepl/mrkrepl/messages"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
)

// Config configures a Worker. Region, Bundle, HSM and Conn are required.
type Config struct {
	Region string // this worker's region; must be in Bundle
	// Bundle is the partition's trust bundle at start; SetBundle replaces
	// it while the worker runs (the worker reads it through bundle()).
	Bundle *messages.Bundle
	// HSM is the region's HSM; at least one of its RSKs (hsmsvc.RSKRotator,
	// else its Signer) must be in Bundle for Region.
	HSM  hsmsvc.HSM
	Conn *nats.Conn // connection to the region's own NATS cluster

	Logger     *slog.Logger          // nil discards logs
	Registerer prometheus.Registerer // nil registers no metrics

	// Layout sizes the region's streams and buckets (replicas, storage).
	Layout layout.Options
	// MessageTTL is the validity of each message sent (expires_at − sent_at).
	// Default 5 minutes.
	MessageTTL time.Duration
	// ReplicationTTL bounds a run: the destination's RAKB expires after it.
	// Default 15 minutes.
	ReplicationTTL time.Duration
	// RunTimeout bounds a source run: one not COMPLETED by then is marked
	// FAILED and, up to MaxAttempts, replaced by a fresh run. Default
	// MessageTTL + 1 minute, so a message still in flight when the region
	// returns can finish the run.
	RunTimeout time.Duration
	// MaxAttempts is how many runs are tried for one replica before it is
	// marked FAILED. Default 5.
	MaxAttempts int
	// SweepInterval is how often the worker looks for runs past their
	// deadline. Default 5 seconds.
	SweepInterval time.Duration
	// ClockSkew is the allowance for clocks between regions when checking
	// sent_at and expires_at (0: messages.DefaultSkew).
	ClockSkew time.Duration
	// Concurrency is how many messages the worker handles at once per
	// consumer. Default 16.
	Concurrency int
	// DeletionWaitingPeriod is how long a key stays PENDING_DELETION when
	// a schedule-key-deletion request names no pending window. Default 7
	// days.
	DeletionWaitingPeriod time.Duration
	// Now returns the current time (tests). Default time.Now.
	Now func() time.Time

	// Who may do what (docs/AUTHZ.md).
	//
	// Admins are the region's administrators, as key-policy principals
	// ("ACCOUNT", "ACCOUNT/user", "ACCOUNT/*"): every key's default policy
	// names them, and so does the region's default policy.
	Admins []string
	// RegionPolicy decides the actions that name no key (kms:CreateKey,
	// kms:ListKeys). nil: only Admins may.
	RegionPolicy *authz.Policy
	// LocalPrincipal is the principal of a request that carries no
	// server-stamped identity, i.e. one published inside the workers' own
	// account (an operator's admin user; every request on a server without
	// accounts). Empty refuses such requests (401).
	LocalPrincipal string
	// AccountNames maps account public keys (NATS operator/JWT mode, where
	// the server names an account by its key) to the names policies use.
	AccountNames map[string]string
	// NoDataPlaneAudit turns off the audit events of encrypt, decrypt and
	// generate-data-key (one asynchronous publish each).
	NoDataPlaneAudit bool
	// KMS, if set, serves the AWS KMS JSON API of the region
	// (docs/KMS-API.md, kms.go).
	KMS *KMSConfig
}

// Worker is one region's HSM worker. Start it with Start, stop it with Stop.
type Worker struct {
	cfg     Config
	log     *slog.Logger
	js      jetstream.JetStream
	res     *layout.Region
	met     *metrics
	backend string

	trust   atomic.Pointer[trustState] // the bundle in force and the RSKs it lets the worker sign with
	setMu   sync.Mutex                 // one SetBundle at a time
	signing atomic.Pointer[string]     // hex kid rsk() last returned, to log a change of RSK
	runs    *runCache                  // runs in flight as this worker last wrote them

	mu        sync.Mutex
	consumes  []jetstream.ConsumeContext
	stopSweep context.CancelFunc
	svc       *apiService    // the request API (startAPI)
	apiSem    chan struct{}  // API requests in flight
	inflight  inflight.Group // goroutines of messages, requests and the sweeper
	sem       chan struct{}

	audit        jetstream.JetStream // data-plane audit events (auditDataPlane)
	local        *authz.Principal    // Config.LocalPrincipal, parsed
	regionPolicy *authz.Policy       // Config.RegionPolicy, or the admins'
	adminsPolicy string              // the policy of a key stored without one
	policies     policies            // parsed key policies
	callers      callers             // principals of Nats-Request-Info headers (authz.go)
	kms          *kmsState           // the KMS API endpoint (kms.go), nil without Config.KMS
	keys         keyCache            // the data plane's key records (keycache.go)
}

// maxAuditPending bounds the data-plane audit events awaiting JetStream's
// acknowledgement.
const maxAuditPending = 4096

// Durable consumer names on the region's streams.
const (
	requestsConsumer = "worker"
	inboxConsumer    = "worker"
)

// New checks cfg and returns a Worker that is not yet started.
func New(cfg Config) (*Worker, error) {
	switch {
	case cfg.Region == "":
		return nil, errors.New("worker: region is required")
	case cfg.Bundle == nil:
		return nil, errors.New("worker: trust bundle is required")
	case cfg.HSM == nil:
		return nil, errors.New("worker: hsm is required")
	case cfg.Conn == nil:
		return nil, errors.New("worker: nats connection is required")
	case !cfg.Bundle.HasRegion(cfg.Region):
		return nil, fmt.Errorf("worker: region %q is not in partition %q", cfg.Region, cfg.Bundle.Partition())
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.MessageTTL <= 0 {
		cfg.MessageTTL = 5 * time.Minute
	}
	if cfg.ReplicationTTL <= 0 {
		cfg.ReplicationTTL = 15 * time.Minute
	}
	if cfg.RunTimeout <= 0 {
		cfg.RunTimeout = cfg.MessageTTL + time.Minute
	}
	if cfg.MaxAttempts <= 0 {
		cfg.MaxAttempts = 5
	}
	if cfg.SweepInterval <= 0 {
		cfg.SweepInterval = 5 * time.Second
	}
	if cfg.Concurrency <= 0 {
		cfg.Concurrency = 16
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.DeletionWaitingPeriod <= 0 {
		cfg.DeletionWaitingPeriod = 7 * 24 * time.Hour
	}
	js, err := jetstream.New(cfg.Conn)
	if err != nil {
		return nil, fmt.Errorf("worker: jetstream: %w", err)
	}
	met, err := newMetrics(cfg.Registerer, cfg.Region)
	if err != nil {
		return nil, fmt.Errorf("worker: %w", err)
	}
	if err := registerHostKDF(cfg.Registerer, cfg.Region, cfg.HSM); err != nil {
		return nil, fmt.Errorf("worker: %w", err)
	}
	w := &Worker{
		cfg:     cfg,
		log:     cfg.Logger.With("component", "worker", "region", cfg.Region),
		js:      js,
		met:     met,
		backend: cfg.HSM.Backend(),
		sem:     make(chan struct{}, 2*cfg.Concurrency),
		runs:    newRunCache(maxCachedRuns),
		apiSem:  make(chan struct{}, 2*cfg.Concurrency),
	}
	// Data-plane audit events are published asynchronously (auditDataPlane);
	// at most maxAuditPending unacknowledged at once, then publishing waits.
	w.audit, err = jetstream.New(cfg.Conn,
		jetstream.WithPublishAsyncMaxPending(maxAuditPending),
		jetstream.WithPublishAsyncErrHandler(func(_ jetstream.JetStream, _ *nats.Msg, err error) { w.auditFailed(err) }))
	if err != nil {
		return nil, fmt.Errorf("worker: jetstream: %w", err)
	}
	if err := w.setAuthz(); err != nil {
		return nil, fmt.Errorf("worker: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), hsmListTimeout)
	defer cancel()
	st, err := w.newTrust(ctx, cfg.Bundle)
	if err != nil {
		return nil, fmt.Errorf("worker: %w", err)
	}
	w.trust.Store(st)
	return w, nil
}

// Start creates the region's streams and buckets (idempotently), starts
// consuming requests and inbox messages, and registers the API service.
func (w *Worker) Start(ctx context.Context) error {
	res, err := layout.EnsureRegion(ctx, w.js, w.cfg.Region, w.bundle().Regions(), w.cfg.Layout)
	if err != nil {
		return fmt.Errorf("worker %s: %w", w.cfg.Region, err)
	}
	// The proxy may not create streams or consumers (internal/natsauth):
	// its consumers on this region's outbox and its heartbeat stream here
	// are the workers' to create.
	if err := layout.EnsureProxyConsumers(ctx, w.js, w.cfg.Region, w.bundle().Regions(), layout.ProxyConsumers{MaxDeliver: w.cfg.Layout.MaxDeliverOr()}); err != nil {
		return fmt.Errorf("worker %s: %w", w.cfg.Region, err)
	}
	if err := layout.EnsureHeartbeat(ctx, w.js, w.cfg.Region, w.cfg.Layout); err != nil {
		return fmt.Errorf("worker %s: %w", w.cfg.Region, err)
	}
	res.Keys = forgettingKV{KeyValue: res.Keys, c: &w.keys} // keycache.go
	w.res = res
	consumerCfg := func(name string) jetstream.ConsumerConfig {
		return jetstream.ConsumerConfig{
			Durable:       name,
			AckPolicy:     jetstream.AckExplicitPolicy,
			AckWait:       layout.AckWait,
			MaxAckPending: 4 * w.cfg.Concurrency,
			MaxDeliver:    w.cfg.Layout.MaxDeliverOr(), // the last delivery is dead-lettered (layout.LastDelivery)
			DeliverPolicy: jetstream.DeliverAllPolicy,
		}
	}
	reqCons, err := res.Requests.CreateOrUpdateConsumer(ctx, consumerCfg(requestsConsumer))
	if err != nil {
		return fmt.Errorf("worker %s: requests consumer: %w", w.cfg.Region, err)
	}
	inCons, err := res.Inbox.CreateOrUpdateConsumer(ctx, consumerCfg(inboxConsumer))
	if err != nil {
		return fmt.Errorf("worker %s: inbox consumer: %w", w.cfg.Region, err)
	}
	svc, err := w.startAPI()
	if err != nil {
		return fmt.Errorf("worker %s: api: %w", w.cfg.Region, err)
	}
	if err := w.startKMS(ctx); err != nil {
		svc.stop()
		return fmt.Errorf("worker %s: kms: %w", w.cfg.Region, err)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.svc = svc
	for _, c := range []struct {
		cons jetstream.Consumer
		fn   func(context.Context, jetstream.Msg)
	}{{reqCons, w.handleRequestEvent}, {inCons, w.handleInbox}} {
		cc, err := c.cons.Consume(w.dispatch(c.fn), jetstream.PullMaxMessages(w.cfg.Concurrency), jetstream.PullExpiry(layout.PullExpiry))
		if err != nil {
			w.stopLocked()
			return fmt.Errorf("worker %s: consume: %w", w.cfg.Region, err)
		}
		w.consumes = append(w.consumes, cc)
	}
	sctx, cancel := context.WithCancel(context.Background())
	w.stopSweep = cancel
	w.inflight.Go(func() { w.sweepLoop(sctx) })
	w.startObservers() // metrics hook (observe.go)
	_, kid := w.rsk()
	w.log.Info("worker started", "hsm", w.backend, "kid", fmt.Sprintf("%x", kid[:8]), "partition", w.bundle().Partition())
	return nil
}

// dispatch runs fn for each message on its own goroutine, at most
// 2×Concurrency at once, so that one slow HSM call does not hold up others.
// From the moment it has the message until fn returns, it tells the server
// every layout.AckWait/3 that the message is in progress (keepInProgress).
func (w *Worker) dispatch(fn func(context.Context, jetstream.Msg)) jetstream.MessageHandler {
	return func(msg jetstream.Msg) {
		stop := keepInProgress(msg, layout.AckWait/3)
		w.sem <- struct{}{}
		started := w.inflight.Go(func() {
			defer func() { <-w.sem }()
			defer stop()
			ctx, cancel := context.WithTimeout(context.Background(), 25*time.Second)
			defer cancel()
			fn(ctx, msg)
		})
		if !started {
			stop()
			<-w.sem // stopping: not acked, so redelivered to a running worker
		}
	}
}

// keepInProgress sends msg.InProgress() every interval until stop is
// called, so that a handler that takes longer than the consumer's AckWait
// (a slow HSM, a busy worker) keeps its message: AckWait is short so that a
// message held by a killed worker comes back soon. A handler done within
// interval sends nothing.
func keepInProgress(msg jetstream.Msg, interval time.Duration) (stop func()) {
	var mu sync.Mutex
	stopped := false
	var t *time.Timer
	mu.Lock()
	defer mu.Unlock()
	t = time.AfterFunc(interval, func() {
		mu.Lock()
		defer mu.Unlock()
		if stopped {
			return
		}
		_ = msg.InProgress()
		t.Reset(interval)
	})
	return func() {
		mu.Lock()
		defer mu.Unlock()
		stopped = true
		t.Stop()
	}
}

// Stop stops consuming and serving, and waits for in-flight messages.
func (w *Worker) Stop() {
	w.mu.Lock()
	w.stopLocked()
	w.mu.Unlock()
	w.inflight.Close()
}

func (w *Worker) stopLocked() {
	w.stopObservers() // metrics hook (observe.go)
	w.stopKMS()       // kms.go
	w.keys.stop()     // keycache.go
	if w.stopSweep != nil {
		w.stopSweep()
		w.stopSweep = nil
	}
	for _, c := range w.consumes {
		c.Stop()
	}
	w.consumes = nil
	if w.svc != nil {
		w.svc.stop()
		w.svc = nil
	}
}

// rsk returns the signer this worker signs with now and its kid. Every
// message is sealed with the pair returned by one call, so the kid recorded
// for a run is the one that signed its message.
//
// It is the newest RSK (latest not_before) that the HSM holds and the
// bundle in force lists for this region as valid now; when none is valid
// now (a gap in the windows, or the bundle's keys all expired), the HSM's
// default RSK if the bundle lists it, else the newest listed one, so that
// receivers refuse its messages with kid_not_valid rather than the worker
// going silent. A change of RSK is logged once.
func (w *Worker) rsk() (crypto.Signer, []byte) { return w.rskAt(w.cfg.Now()) }

// rskAt is rsk for a message sent at t: the RSK that signs a message must
// be valid at the message's sent_at, which is set when the message is made,
// often before the HSM work that precedes its signature. Picked at the time
// of signing instead, a message made just before a new RSK's not_before and
// signed just after it carried the new kid with an earlier sent_at, and
// every receiver refused it (kid_not_valid).
func (w *Worker) rskAt(t time.Time) (crypto.Signer, []byte) {
	r := w.trust.Load().pick(t)
	if last := w.signing.Load(); last == nil || *last != r.hexKID {
		if w.signing.CompareAndSwap(last, &r.hexKID) {
			w.log.Info("signing with rsk", "kid", r.hexKID, "not_before", r.key.NotBefore, "not_after", r.key.NotAfter)
		}
	}
	return r.signer, r.kid
}

// bundle returns the trust bundle in force.
func (w *Worker) bundle() *messages.Bundle { return w.trust.Load().bundle }

// Region returns the worker's region.
func (w *Worker) Region() string { return w.cfg.Region }

// hsmOp times one HSM call.
func (w *Worker) hsmOp(op string, fn func() error) error {
	start := time.Now()
	err := fn()
	w.met.hsmOps.WithLabelValues(op, w.backend).Observe(time.Since(start).Seconds())
	if err != nil {
		w.met.hsmErrors.WithLabelValues(op, w.backend).Inc()
	}
	return err
}

// hsmListTimeout bounds the HSM call that lists its RSKs (New, SetBundle).
const hsmListTimeout = 30 * time.Second

// trustState is one trust bundle with what the worker needs of it, made
// once per bundle and never changed: rsk() and bundle() read it through an
// atomic pointer, so a SetBundle never waits for messages in flight, and a
// message in flight keeps the bundle it started with.
type trustState struct {
	bundle *messages.Bundle
	rsks   []heldRSK // the HSM's RSKs the bundle lists for the region: newest not_before first
	def    heldRSK   // rsk()'s fallback when none of rsks is valid now
}

// heldRSK is an RSK of the worker's HSM with its bundle entry.
type heldRSK struct {
	signer crypto.Signer
	kid    []byte
	hexKID string
	key    messages.BundleKey
}

// pick returns the newest of the RSKs valid at now, or the fallback. now
// is taken to the millisecond first, as sent_at is: an RSK picked at a
// message's sent_at is valid at it.
func (s *trustState) pick(now time.Time) heldRSK {
	now = now.Truncate(time.Millisecond)
	for _, r := range s.rsks {
		if !now.Before(r.key.NotBefore) && !now.After(r.key.NotAfter) {
			return r
		}
	}
	return s.def
}

// hsmRSKs returns the RSKs the HSM holds, its default one first.
func (w *Worker) hsmRSKs(ctx context.Context) ([]crypto.Signer, error) {
	if rot, ok := w.cfg.HSM.(hsmsvc.RSKRotator); ok {
		return rot.RSKs(ctx)
	}
	return []crypto.Signer{w.cfg.HSM.Signer()}, nil
}

// newTrust prepares b for the worker: it lists the HSM's RSKs again (a new
// one may have been made since the last bundle) and keeps those b lists for
// the worker's region. It fails if there is none.
func (w *Worker) newTrust(ctx context.Context, b *messages.Bundle) (*trustState, error) {
	signers, err := w.hsmRSKs(ctx)
	if err != nil {
		return nil, fmt.Errorf("list the hsm's rsks: %w", err)
	}
	st := &trustState{bundle: b}
	var held []string
	hasDef := false
	for i, s := range signers {
		kid, err := messages.KID(s.Public())
		if err != nil {
			return nil, fmt.Errorf("rsk %d of the hsm: %w", i, err)
		}
		held = append(held, fmt.Sprintf("%x", kid[:8]))
		k, ok := b.Key(kid)
		if !ok || k.Region != w.cfg.Region {
			continue
		}
		r := heldRSK{signer: s, kid: kid, hexKID: fmt.Sprintf("%x", kid), key: k}
		st.rsks = append(st.rsks, r)
		if i == 0 {
			st.def, hasDef = r, true
		}
	}
	if len(st.rsks) == 0 {
		return nil, fmt.Errorf("none of the hsm's rsks (kid %s) is in the trust bundle for region %s", strings.Join(held, ", "), w.cfg.Region)
	}
	slices.SortFunc(st.rsks, func(x, y heldRSK) int {
		return cmp.Or(y.key.NotBefore.Compare(x.key.NotBefore), y.key.NotAfter.Compare(x.key.NotAfter), bytes.Compare(x.kid, y.kid))
	})
	if !hasDef {
		st.def = st.rsks[0]
	}
	return st, nil
}

// SetBundle puts b in force without a restart: from its return, messages
// are verified against b and sealed with the RSK rsk() picks from b. It
// refuses, keeping the bundle in force, a bundle of another partition, one
// without the worker's region, and one that lists none of the HSM's RSKs
// for the region (the HSM is asked again, so an RSK made since the last
// bundle counts). Regions added or dropped besides the worker's own are
// logged: the region's streams follow them at the next start.
//
// Every call is counted in mrkrepl_worker_bundle_reloads_total and logged.
// SetBundle is safe to call at any time, concurrently with everything.
func (w *Worker) SetBundle(b *messages.Bundle) error {
	w.setMu.Lock()
	defer w.setMu.Unlock()
	err := w.setBundle(b)
	if err != nil {
		w.met.bundleReloads.WithLabelValues("error").Inc()
		w.log.Error("trust bundle refused; the previous one stays in force", "err", err)
		return err
	}
	w.met.bundleReloads.WithLabelValues("ok").Inc()
	return nil
}

// BundleReloadFailed counts and logs a reload of the trust bundle that
// failed before SetBundle could judge it (the file could not be read or
// parsed): the bundle in force stays.
func (w *Worker) BundleReloadFailed(err error) {
	w.met.bundleReloads.WithLabelValues("error").Inc()
	w.log.Error("trust bundle not reloaded; the previous one stays in force", "err", err)
}

func (w *Worker) setBundle(b *messages.Bundle) error {
	old := w.trust.Load().bundle
	switch {
	case b == nil:
		return errors.New("worker: set bundle: no bundle")
	case b.Partition() != old.Partition():
		return fmt.Errorf("worker: set bundle: it is for partition %q, the worker's is %q", b.Partition(), old.Partition())
	case !b.HasRegion(w.cfg.Region):
		return fmt.Errorf("worker: set bundle: it drops the worker's region %s", w.cfg.Region)
	}
	ctx, cancel := context.WithTimeout(context.Background(), hsmListTimeout)
	defer cancel()
	st, err := w.newTrust(ctx, b)
	if err != nil {
		return fmt.Errorf("worker: set bundle: %w", err)
	}
	w.trust.Store(st)
	w.met.bundle.Set(b)
	if added, dropped := regionDiff(old.Regions(), b.Regions()); len(added)+len(dropped) > 0 {
		w.log.Warn("trust bundle changes the partition's regions; the region's outbox follows at the next start",
			"added", added, "dropped", dropped)
	}
	var kids []string
	for _, r := range st.rsks {
		kids = append(kids, r.hexKID[:16])
	}
	_, signing := w.rsk()
	w.log.Info("trust bundle in force", "partition", b.Partition(), "regions", b.Regions(), "keys", len(b.Keys()),
		"own_rsks", kids, "signing_kid", fmt.Sprintf("%x", signing[:8]))
	return nil
}

// regionDiff returns the regions of b not in a, and those of a not in b.
func regionDiff(a, b []string) (added, dropped []string) {
	for _, r := range b {
		if !slices.Contains(a, r) {
			added = append(added, r)
		}
	}
	for _, r := range a {
		if !slices.Contains(b, r) {
			dropped = append(dropped, r)
		}
	}
	return added, dropped
}
