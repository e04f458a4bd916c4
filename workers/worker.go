package workers

import (
	"context"
	"crypto"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/mrkrepl/mrkrepl/hsmsvc"
	"github.com/mrkrepl/mrkrepl/internal/layout"
	"github.com/mrkrepl/mrkrepl/messages"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"
	"github.com/prometheus/client_golang/prometheus"
)

// Config configures a Worker. Region, Bundle, HSM and Conn are required.
type Config struct {
	Region string           // this worker's region; must be in Bundle
	Bundle *messages.Bundle // the partition's trust bundle
	HSM    hsmsvc.HSM       // the region's HSM; its RSK must be in Bundle for Region
	Conn   *nats.Conn       // connection to the region's own NATS cluster

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
	// Now returns the current time (tests). Default time.Now.
	Now func() time.Time
}

// Worker is one region's HSM worker. Start it with Start, stop it with Stop.
type Worker struct {
	cfg     Config
	log     *slog.Logger
	js      jetstream.JetStream
	res     *layout.Region
	met     *metrics
	kid     []byte // this region's RSK kid
	backend string

	mu        sync.Mutex
	consumes  []jetstream.ConsumeContext
	stopSweep context.CancelFunc
	svc       micro.Service
	inflight  sync.WaitGroup
	sem       chan struct{}
	apiSem    chan struct{} // API requests in flight
}

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
	kid, err := messages.KID(cfg.HSM.Signer().Public())
	if err != nil {
		return nil, fmt.Errorf("worker: rsk: %w", err)
	}
	bk, ok := cfg.Bundle.Key(kid)
	if !ok || bk.Region != cfg.Region {
		return nil, fmt.Errorf("worker: the hsm's rsk (kid %x) is not in the trust bundle for region %s", kid, cfg.Region)
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
	return &Worker{
		cfg:     cfg,
		log:     cfg.Logger.With("component", "worker", "region", cfg.Region),
		js:      js,
		met:     met,
		kid:     kid,
		backend: cfg.HSM.Backend(),
		sem:     make(chan struct{}, 2*cfg.Concurrency),
		apiSem:  make(chan struct{}, 2*cfg.Concurrency),
	}, nil
}

// Start creates the region's streams and buckets (idempotently), starts
// consuming requests and inbox messages, and registers the API service.
func (w *Worker) Start(ctx context.Context) error {
	res, err := layout.EnsureRegion(ctx, w.js, w.cfg.Region, w.cfg.Bundle.Regions(), w.cfg.Layout)
	if err != nil {
		return fmt.Errorf("worker %s: %w", w.cfg.Region, err)
	}
	w.res = res
	consumerCfg := func(name string) jetstream.ConsumerConfig {
		return jetstream.ConsumerConfig{
			Durable:       name,
			AckPolicy:     jetstream.AckExplicitPolicy,
			AckWait:       30 * time.Second,
			MaxAckPending: 4 * w.cfg.Concurrency,
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
	w.mu.Lock()
	defer w.mu.Unlock()
	w.svc = svc
	for _, c := range []struct {
		cons jetstream.Consumer
		fn   func(context.Context, jetstream.Msg)
	}{{reqCons, w.handleRequestEvent}, {inCons, w.handleInbox}} {
		cc, err := c.cons.Consume(w.dispatch(c.fn), jetstream.PullMaxMessages(w.cfg.Concurrency))
		if err != nil {
			w.stopLocked()
			return fmt.Errorf("worker %s: consume: %w", w.cfg.Region, err)
		}
		w.consumes = append(w.consumes, cc)
	}
	sctx, cancel := context.WithCancel(context.Background())
	w.stopSweep = cancel
	w.inflight.Add(1)
	go func() {
		defer w.inflight.Done()
		w.sweepLoop(sctx)
	}()
	w.startObservers() // metrics hook (observe.go)
	w.log.Info("worker started", "hsm", w.backend, "kid", fmt.Sprintf("%x", w.kid[:8]), "partition", w.cfg.Bundle.Partition())
	return nil
}

// dispatch runs fn for each message on its own goroutine, at most
// 2×Concurrency at once, so that one slow HSM call does not hold up others.
func (w *Worker) dispatch(fn func(context.Context, jetstream.Msg)) jetstream.MessageHandler {
	return func(msg jetstream.Msg) {
		w.sem <- struct{}{}
		w.inflight.Add(1)
		go func() {
			defer func() { <-w.sem; w.inflight.Done() }()
			ctx, cancel := context.WithTimeout(context.Background(), 25*time.Second)
			defer cancel()
			fn(ctx, msg)
		}()
	}
}

// Stop stops consuming and serving, and waits for in-flight messages.
func (w *Worker) Stop() {
	w.mu.Lock()
	w.stopLocked()
	w.mu.Unlock()
	w.inflight.Wait()
}

func (w *Worker) stopLocked() {
	w.stopObservers() // metrics hook (observe.go)
	if w.stopSweep != nil {
		w.stopSweep()
		w.stopSweep = nil
	}
	for _, c := range w.consumes {
		c.Stop()
	}
	w.consumes = nil
	if w.svc != nil {
		_ = w.svc.Stop()
		w.svc = nil
	}
}

// rsk returns the signer this worker signs with now and its kid. Every
// message is sealed with the pair returned by one call, so the kid recorded
// for a run is the one that signed its message.
func (w *Worker) rsk() (crypto.Signer, []byte) { return w.cfg.HSM.Signer(), w.kid }

// bundle returns the trust bundle in force.
func (w *Worker) bundle() *messages.Bundle { return w.cfg.Bundle }

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
