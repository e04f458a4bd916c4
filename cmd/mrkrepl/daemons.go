package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/mrkrepl/mrkrepl/hsmsvc"
	"github.com/mrkrepl/mrkrepl/internal/authz"
	"github.com/mrkrepl/mrkrepl/internal/config"
	"github.com/mrkrepl/mrkrepl/internal/natsauth"
	"github.com/mrkrepl/mrkrepl/internal/obs"
	"github.com/mrkrepl/mrkrepl/internal/secretfile"
	"github.com/mrkrepl/mrkrepl/messages"
	"github.com/mrkrepl/mrkrepl/proxy"
	"github.com/mrkrepl/mrkrepl/workers"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
)

// The daemons (worker, proxy) take their settings from a YAML file
// (--config), then MRKREPL_* environment variables, then flags; see package
// internal/config and docs/OPERATIONS.md. Both serve /metrics, /healthz and
// /readyz on --metrics-addr from the moment they start, and retry their
// start (NATS unreachable, JetStream not ready) until interrupted.

// addNATSFlags binds the connection flags shared by worker and proxy.
func addNATSFlags(fs *flag.FlagSet, n *config.NATS) {
	fs.StringVar(&n.CredsFile, "nats-creds", n.CredsFile, "NATS credentials `FILE` (user JWT and nkey seed)")
	fs.StringVar(&n.User, "nats-user", n.User, "NATS `user` name (with --nats-password-file)")
	fs.StringVar(&n.PasswordFile, "nats-password-file", n.PasswordFile, "read the NATS user's password from `FILE`")
	fs.StringVar(&n.CAFile, "nats-ca", n.CAFile, "CA certificates `FILE` (PEM) for TLS to NATS")
	fs.StringVar(&n.CertFile, "nats-cert", n.CertFile, "client certificate `FILE` (PEM) for TLS to NATS")
	fs.StringVar(&n.KeyFile, "nats-key", n.KeyFile, "client key `FILE` (PEM) for TLS to NATS")
}

// addCommonFlags binds the flags every daemon has.
func addCommonFlags(fs *flag.FlagSet, replicas, concurrency *int, m *config.Metrics, l *config.Log) {
	fs.IntVar(replicas, "replicas", *replicas, "JetStream replicas of the streams and buckets this process creates (1, 3 or 5)")
	fs.IntVar(concurrency, "concurrency", *concurrency, "messages handled at once per consumer")
	fs.StringVar(&m.Addr, "metrics-addr", m.Addr, "serve /metrics, /healthz and /readyz on `ADDR` (e.g. :9101 or 127.0.0.1:9101)")
	fs.StringVar(&l.Level, "log-level", l.Level, "log level: debug, info, warn or error")
	fs.StringVar(&l.Format, "log-format", l.Format, "log format: text or json")
}

// daemonFlags builds a daemon's flag set in the order that gives the right
// precedence: file values become the defaults, then the environment is
// applied, then the command line is parsed.
func daemonFlags(name, synopsis string, args []string, stderr io.Writer, load func(path string) error, bind func(fs *flag.FlagSet), multi ...string) (configPath string, err error) {
	configPath = config.ConfigPath(args, os.LookupEnv)
	if configPath != "" {
		if err := load(configPath); err != nil {
			return "", err
		}
	}
	fs := newFlagSet(name, synopsis, stderr)
	fs.String("config", configPath, "YAML configuration `FILE`; MRKREPL_<FLAG> variables and flags override it (docs/OPERATIONS.md)")
	bind(fs)
	base := fs.Usage
	fs.Usage = func() {
		base()
		// An example flag this daemon has: the proxy has no --nats-url.
		example := "bundle"
		if fs.Lookup("nats-url") != nil {
			example = "nats-url"
		}
		fmt.Fprintf(stderr, "\nEvery flag can also be set by an environment variable: --%s by %s, and so on.\n", example, config.EnvName(example))
	}
	if err := config.ApplyEnv(fs, os.LookupEnv, multi...); err != nil {
		return "", err
	}
	return configPath, parseFlags(fs, args, false)
}

// invalid reports a configuration that failed validation, one problem per
// line, as a usage error.
func invalid(stderr io.Writer, cmd string, err error) error {
	fmt.Fprintf(stderr, "mrkrepl %s: invalid configuration:\n", cmd)
	for line := range strings.SplitSeq(err.Error(), "\n") {
		fmt.Fprintf(stderr, "  %s\n", line)
	}
	return errUsage
}

// connect opens a connection that keeps retrying: a daemon started before
// its NATS cluster waits for it, and logs every change of state. Secrets
// are read from their files here and handed to the client only.
func connect(n config.NATS, name string, log *slog.Logger, extra ...nats.Option) (*nats.Conn, error) {
	log = log.With("nats", name)
	opts := []nats.Option{
		nats.Name(name), nats.MaxReconnects(-1), nats.ReconnectWait(time.Second),
		nats.RetryOnFailedConnect(true),
		nats.ConnectHandler(func(nc *nats.Conn) { log.Info("nats connected", "server", nc.ConnectedUrlRedacted()) }),
		nats.ReconnectHandler(func(nc *nats.Conn) { log.Info("nats reconnected", "server", nc.ConnectedUrlRedacted()) }),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				log.Warn("nats disconnected", "err", err)
			}
		}),
	}
	if n.CredsFile != "" {
		opts = append(opts, nats.UserCredentials(n.CredsFile))
	}
	if n.User != "" {
		pw, err := readSecretFile(n.PasswordFile)
		if err != nil {
			return nil, fmt.Errorf("nats password_file: %w", err)
		}
		opts = append(opts, nats.UserInfo(n.User, pw))
	}
	if n.CAFile != "" {
		opts = append(opts, nats.RootCAs(n.CAFile))
	}
	if n.CertFile != "" {
		opts = append(opts, nats.ClientCert(n.CertFile, n.KeyFile))
	}
	opts = append(opts, extra...)
	nc, err := nats.Connect(n.URL, opts...)
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", n.URL, err)
	}
	return nc, nil
}

// startState is what a daemon's /readyz answers until it has started: the
// last reason its start failed, if any.
type startState struct{ last atomic.Pointer[string] }

func (s *startState) failed(err error) {
	m := err.Error()
	if noJetStream(err) {
		m = noJetStreamMessage + ": " + m
	}
	s.last.Store(&m)
}

func (s *startState) err() error {
	if m := s.last.Load(); m != nil {
		return errors.New("starting: " + *m)
	}
	return errors.New("starting")
}

// serveObs starts the metrics and health endpoint if addr is set. Until
// ready is stored, /readyz answers "starting" and why the last attempt
// failed (st).
func serveObs(ctx context.Context, addr string, reg *prometheus.Registry, ready *atomic.Pointer[obs.ReadyFunc], st *startState, log *slog.Logger) error {
	if addr == "" {
		return nil
	}
	bound, err := obs.Serve(ctx, addr, reg, func(ctx context.Context) error {
		f := ready.Load()
		if f == nil {
			return st.err()
		}
		return (*f)(ctx)
	}, log)
	if err != nil {
		return err
	}
	log.Info("serving metrics and health", "metrics", "http://"+bound+"/metrics", "readyz", "http://"+bound+"/readyz")
	return nil
}

// startWithRetry calls start until it succeeds or ctx ends, waiting 1 s,
// 2 s, … 30 s between attempts, as long as the failure is transient (NATS
// or JetStream not reachable or not ready yet); any other error is
// returned at once.
func startWithRetry(ctx context.Context, what string, log *slog.Logger, st *startState, connected func() bool, start func(context.Context) error) error {
	delay := time.Second
	for {
		sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err := start(sctx)
		cancel()
		if err == nil {
			return nil
		}
		if ctx.Err() == nil && !transient(err, connected) {
			return err
		}
		st.failed(err)
		if noJetStream(err) {
			log.Error(what+" did not start: "+noJetStreamMessage+"; retrying", "err", err, "retry_in", delay)
		} else {
			log.Warn(what+" did not start; retrying", "err", err, "retry_in", delay)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: %w (last error: %v)", what, ctx.Err(), err)
		case <-time.After(delay):
		}
		delay = min(2*delay, 30*time.Second)
	}
}

// noJetStreamMessage is what a daemon logs, and /readyz answers, while its
// NATS server has no JetStream for its account.
const noJetStreamMessage = "the NATS server has no JetStream for this user's account (enable jetstream in the server configuration, and for the account: docs/NATS.md)"

// noJetStream reports whether err says that JetStream is off, on the
// server or for the account: so JetStream says, or nobody answers on the
// JetStream API (a server without JetStream has no responder there; one
// whose cluster elects its leaders answers 503 instead).
func noJetStream(err error) bool {
	return errors.Is(err, jetstream.ErrJetStreamNotEnabled) || errors.Is(err, jetstream.ErrJetStreamNotEnabledForAccount) ||
		errors.Is(err, nats.ErrNoResponders)
}

// jsErrCodeClusterNoPeers is nats-server's "no suitable peers for
// placement" (JSClusterNoPeersErr, 10005, answered 400): a replicated
// stream or bucket asked for before enough servers of a cluster that is
// still forming, or has lost one, are up. It passes when they are.
const jsErrCodeClusterNoPeers jetstream.ErrorCode = 10005

// transient reports whether a start failure may go away by itself: the
// connection is down, a request timed out or found no responder, or
// JetStream answered that it is not (yet) available, e.g. while a cluster
// elects its leaders or has too few servers up to place a replicated
// stream.
func transient(err error, connected func() bool) bool {
	if !connected() {
		return true
	}
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) && (apiErr.Code >= 500 || apiErr.ErrorCode == jsErrCodeClusterNoPeers) {
		return true
	}
	for _, t := range []error{
		context.DeadlineExceeded, nats.ErrTimeout, nats.ErrNoResponders, nats.ErrDisconnected,
		nats.ErrConnectionClosed, nats.ErrConnectionReconnecting, jetstream.ErrJetStreamNotEnabled,
		jetstream.ErrJetStreamNotEnabledForAccount,
	} {
		if errors.Is(err, t) {
			return true
		}
	}
	return false
}

func runWorker(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cfg := config.DefaultWorker()
	path, err := daemonFlags("worker", "[--config FILE] --region NAME --bundle FILE --hsm URI [flags]", args, stderr,
		func(path string) error { return config.Load(path, &cfg) },
		func(fs *flag.FlagSet) {
			fs.StringVar(&cfg.Region, "region", cfg.Region, "this worker's `region` (required)")
			fs.StringVar(&cfg.Bundle, "bundle", cfg.Bundle, "the partition's trust bundle `FILE` (signed by the root key: mrkrepl bundle sign; required)")
			addBundleTrustFlags(fs, &cfg.BundleRootKey, &cfg.BundleSerialFile, &cfg.InsecureUnsignedBundle)
			fs.StringVar(&cfg.NATS.URL, "nats-url", cfg.NATS.URL, "the region's NATS cluster `URL`s (comma-separated)")
			addNATSFlags(fs, &cfg.NATS)
			fs.StringVar(&cfg.HSM.URI, "hsm", cfg.HSM.URI, "HSM `URI`: soft:/dir or pkcs11:token=…?module-path=…&pin-source=FILE (required)")
			fs.StringVar(&cfg.HSM.PINFile, "pin-file", cfg.HSM.PINFile, "read the PKCS#11 PIN from `FILE` (never pass a PIN on the command line)")
			fs.BoolVar(&cfg.HSM.AllowHostKDF, "allow-host-kdf", cfg.HSM.AllowHostKDF, "allow a PKCS#11 token that cannot run the KDF inside (SoftHSM2) to release Z to the host (docs/PKCS11.md)")
			fs.DurationVar(&cfg.ClockSkew, "clock-skew", cfg.ClockSkew, "allowance for clocks between regions (0: the protocol's default)")
			fs.DurationVar(&cfg.RunTimeout, "run-timeout", cfg.RunTimeout, "a source run not completed by then fails and is retried with a fresh run (0: default)")
			fs.IntVar(&cfg.MaxAttempts, "max-attempts", cfg.MaxAttempts, "runs tried for one replica before it is marked FAILED (0: default)")
			fs.DurationVar(&cfg.DeletionWaitingPeriod, "deletion-waiting-period", cfg.DeletionWaitingPeriod, "how long a key stays PENDING_DELETION when a request names no pending window")
			addBundleReloadFlag(fs, &cfg.BundleReloadInterval)
			fs.Func("admin", "a `PRINCIPAL` (ACCOUNT, ACCOUNT/user or ACCOUNT/*) with the region's admin rights: every key's default policy names it; repeat for several (docs/AUTHZ.md)", func(s string) error {
				cfg.Authz.Admins = append(cfg.Authz.Admins, s)
				return nil
			})
			fs.StringVar(&cfg.Authz.RegionPolicyFile, "region-policy", cfg.Authz.RegionPolicyFile, "the region's policy `FILE` (JSON) for create-key and list-keys (default: the admins only)")
			fs.StringVar(&cfg.Authz.LocalPrincipal, "local-principal", cfg.Authz.LocalPrincipal, "the `PRINCIPAL` of requests published inside the workers' own account (default: refused)")
			addCommonFlags(fs, &cfg.JetStream.Replicas, &cfg.Concurrency, &cfg.Metrics, &cfg.Log)
		}, "admin")
	if err != nil {
		return err
	}
	if err := cfg.Validate(); err != nil {
		return invalid(stderr, "worker", err)
	}
	logger, err := obs.NewLogger(stderr, cfg.Log.Level, cfg.Log.Format)
	if err != nil {
		return err
	}
	logger.Info("configuration", "file", path, "worker", cfg)
	trust, first, err := loadBundle(cfg.Bundle, cfg.BundleRootKey, cfg.BundleSerialFile, cfg.InsecureUnsignedBundle, logger)
	if err != nil {
		return err
	}
	bundle := first.bundle
	hopts := hsmsvc.Options{AllowHostKDF: cfg.HSM.AllowHostKDF, Logger: logger}
	if cfg.HSM.PINFile != "" {
		pin, err := readSecretFile(cfg.HSM.PINFile)
		if err != nil {
			return fmt.Errorf("hsm.pin_file: %w", err)
		}
		hopts.PIN = pin
	}
	hsm, err := hsmsvc.Open(ctx, cfg.HSM.URI, hopts)
	if err != nil {
		return err
	}
	defer hsm.Close()

	reg := obs.NewRegistry()
	var ready atomic.Pointer[obs.ReadyFunc]
	var st startState
	if err := serveObs(ctx, cfg.Metrics.Addr, reg, &ready, &st, logger); err != nil {
		return err
	}
	nc, err := connect(cfg.NATS, "mrkrepl-worker-"+cfg.Region, logger)
	if err != nil {
		return err
	}
	defer nc.Close()
	regionPolicy, err := readRegionPolicy(cfg.Authz.RegionPolicyFile)
	if err != nil {
		return err
	}
	kms, err := kmsConfig(cfg.KMS) // kms_worker.go
	if err != nil {
		return err
	}
	w, err := workers.New(workers.Config{
		Region: cfg.Region, Bundle: bundle, HSM: hsm, Conn: nc, Logger: logger, Registerer: reg,
		Layout: cfg.JetStream.Layout(), Concurrency: cfg.Concurrency,
		ClockSkew: cfg.ClockSkew, RunTimeout: cfg.RunTimeout, MaxAttempts: cfg.MaxAttempts,
		DeletionWaitingPeriod: cfg.DeletionWaitingPeriod,
		Admins:                cfg.Authz.Admins, RegionPolicy: regionPolicy, LocalPrincipal: cfg.Authz.LocalPrincipal,
		AccountNames: cfg.Authz.AccountNames, NoDataPlaneAudit: cfg.Authz.NoDataPlaneAudit,
		KMS: kms,
	})
	if err != nil {
		return err
	}
	if err := trust.accepted(first); err != nil {
		return err
	}
	defer watchBundle(cfg.Bundle, cfg.BundleReloadInterval, trust, first.data, w, logger)()
	if err := startWithRetry(ctx, "worker", logger, &st, nc.IsConnected, w.Start); err != nil {
		if ctx.Err() != nil {
			return nil // interrupted while waiting: a clean stop
		}
		return err
	}
	defer w.Stop()
	rf := obs.ReadyFunc(w.Ready)
	ready.Store(&rf)
	<-ctx.Done()
	logger.Info("worker stopping")
	return nil
}

// regionURLs is the repeatable --region NAME=URL flag of the proxy. A
// region given on the command line (or in MRKREPL_REGION) replaces the
// file's URL for it; giving it twice there is an error.
type regionURLs struct {
	m    map[string]config.NATS
	seen map[string]bool
}

func (r *regionURLs) String() string {
	if r == nil || r.m == nil {
		return ""
	}
	var s []string
	for name, n := range r.m {
		s = append(s, name+"="+n.URL)
	}
	return strings.Join(s, " ")
}

func (r *regionURLs) Set(v string) error {
	name, url, ok := strings.Cut(v, "=")
	if !ok || name == "" || url == "" {
		return fmt.Errorf("want NAME=URL, got %q", v)
	}
	if r.seen[name] {
		return fmt.Errorf("region %s given twice", name)
	}
	r.seen[name] = true
	n := r.m[name]
	n.URL = url
	r.m[name] = n
	return nil
}

func runProxy(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cfg := config.DefaultProxy()
	path, err := daemonFlags("proxy", "[--config FILE] --bundle FILE --region NAME=URL ... [flags]", args, stderr,
		func(path string) error { return config.Load(path, &cfg) },
		func(fs *flag.FlagSet) {
			if cfg.Regions == nil {
				cfg.Regions = map[string]config.NATS{}
			}
			fs.StringVar(&cfg.Bundle, "bundle", cfg.Bundle, "the partition's trust bundle `FILE` (signed by the root key: mrkrepl bundle sign; required)")
			addBundleTrustFlags(fs, &cfg.BundleRootKey, &cfg.BundleSerialFile, &cfg.InsecureUnsignedBundle)
			fs.Var(&regionURLs{m: cfg.Regions, seen: map[string]bool{}}, "region", "a region's NATS `NAME=URL`; repeat for every region of the partition")
			addNATSFlags(fs, &cfg.NATS)
			fs.StringVar(&cfg.Durable, "durable", cfg.Durable, "consumer name prefix; proxies with the same prefix share the work")
			fs.DurationVar(&cfg.Delay, "delay", cfg.Delay, "injected one-way delay for every pair (WAN emulation; tests and benchmarks only)")
			fs.Float64Var(&cfg.Loss, "loss", cfg.Loss, "injected probability that a forward attempt fails, for every pair (tests only)")
			fs.DurationVar(&cfg.ClockSkew, "clock-skew", cfg.ClockSkew, "allowance for clocks between regions (0: the protocol's default)")
			fs.DurationVar(&cfg.Heartbeat.Interval, "heartbeat-interval", cfg.Heartbeat.Interval, "time between heartbeat probes of every region pair")
			fs.DurationVar(&cfg.Heartbeat.Timeout, "heartbeat-timeout", cfg.Heartbeat.Timeout, "bound on one heartbeat probe")
			fs.BoolVar(&cfg.Heartbeat.Disabled, "heartbeat-disabled", cfg.Heartbeat.Disabled, "send no heartbeat probes")
			addBundleReloadFlag(fs, &cfg.BundleReloadInterval)
			addCommonFlags(fs, &cfg.JetStream.Replicas, &cfg.Concurrency, &cfg.Metrics, &cfg.Log)
		}, "region")
	if err != nil {
		return err
	}
	if err := cfg.Validate(); err != nil {
		return invalid(stderr, "proxy", err)
	}
	logger, err := obs.NewLogger(stderr, cfg.Log.Level, cfg.Log.Format)
	if err != nil {
		return err
	}
	logger.Info("configuration", "file", path, "proxy", cfg)
	trust, first, err := loadBundle(cfg.Bundle, cfg.BundleRootKey, cfg.BundleSerialFile, cfg.InsecureUnsignedBundle, logger)
	if err != nil {
		return err
	}
	bundle := first.bundle
	if err := cfg.CheckRegions(bundle.Partition(), bundle.Regions()); err != nil {
		return invalid(stderr, "proxy", err)
	}

	reg := obs.NewRegistry()
	var ready atomic.Pointer[obs.ReadyFunc]
	var st startState
	if err := serveObs(ctx, cfg.Metrics.Addr, reg, &ready, &st, logger); err != nil {
		return err
	}
	conns := map[string]*nats.Conn{}
	defer func() {
		for _, nc := range conns {
			nc.Close()
		}
	}()
	for _, r := range bundle.Regions() {
		if conns[r], err = connect(cfg.Region(r), "mrkrepl-proxy-"+r, logger,
			// The proxy's NATS user may receive replies there only
			// (internal/natsauth).
			nats.CustomInboxPrefix(natsauth.ProxyInboxPrefix)); err != nil {
			return err
		}
	}
	hb := proxy.HeartbeatConfig{Interval: cfg.Heartbeat.Interval, Timeout: cfg.Heartbeat.Timeout}
	if cfg.Heartbeat.Disabled {
		hb.Interval = -1
	}
	p, err := proxy.New(proxy.Config{
		Bundle: bundle, Conns: conns, Logger: logger, Registerer: reg, Durable: cfg.Durable,
		Layout: cfg.JetStream.Layout(), Concurrency: cfg.Concurrency,
		Delay: map[string]time.Duration{"*": cfg.Delay}, Heartbeat: hb, ClockSkew: cfg.ClockSkew,
		Loss: map[string]float64{"*": cfg.Loss},
	})
	if err != nil {
		return err
	}
	if err := trust.accepted(first); err != nil {
		return err
	}
	defer watchBundle(cfg.Bundle, cfg.BundleReloadInterval, trust, first.data, p, logger)()
	allConnected := func() bool {
		for _, nc := range conns {
			if !nc.IsConnected() {
				return false
			}
		}
		return true
	}
	if err := startWithRetry(ctx, "proxy", logger, &st, allConnected, p.Start); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	defer p.Stop()
	rf := obs.ReadyFunc(p.Ready)
	ready.Store(&rf)
	<-ctx.Done()
	logger.Info("proxy stopping")
	return nil
}

// addBundleReloadFlag binds --bundle-reload-interval.
func addBundleReloadFlag(fs *flag.FlagSet, d *time.Duration) {
	fs.DurationVar(d, "bundle-reload-interval", *d, "read the trust bundle file this often and put it in force when its content changed; 0: only on SIGHUP")
}

// addBundleTrustFlags binds the flags of the bundle's root key.
func addBundleTrustFlags(fs *flag.FlagSet, rootKey, serialFile *string, insecure *bool) {
	fs.StringVar(rootKey, "bundle-root-key", *rootKey, "the partition root's public key `FILE` (PEM): the bundle must be signed by it (required unless --insecure-unsigned-bundle)")
	fs.StringVar(serialFile, "bundle-serial-file", *serialFile, "keep the highest bundle serial in force in `FILE`, so that an older bundle is refused after a restart too")
	fs.BoolVar(insecure, "insecure-unsigned-bundle", *insecure, "accept an unsigned (JSON) bundle without a root key: whoever can write the file is every region (development only)")
}

// loadBundle reads the root key and the serial file and judges the bundle
// file at start: a daemon does not start on a bundle it would refuse at a
// reload (unsigned, not signed by the root, another partition, a serial
// below the serial file's).
func loadBundle(path, rootKey, serialFile string, insecure bool, log *slog.Logger) (*bundleTrust, *verified, error) {
	trust, err := newBundleTrust(rootKey, serialFile, insecure)
	if err != nil {
		return nil, nil, err
	}
	v, _, err := trust.read(path)
	if err != nil {
		return nil, nil, err
	}
	if trust.signed() {
		log.Info("trust bundle verified", trust.describe(v)...)
	} else {
		log.Warn("trust bundle NOT signed (insecure_unsigned_bundle): anyone who can write the file can add an RSK for any region", "bundle_file", path)
	}
	return trust, v, nil
}

// bundleComponent is what a worker and a proxy offer the reloader.
type bundleComponent interface {
	SetBundle(*messages.Bundle) error
	BundleReloadFailed(error)
}

// bundleReloader keeps a daemon's trust bundle in step with its file,
// without a restart: it reads the file on SIGHUP, and every interval, and
// gives it to the component when its content (SHA-256 of the bytes, not the
// modification time) differs from the last one tried. SIGHUP always gives
// it again, so it also makes a worker look for new RSKs in its HSM. The
// component judges the bundle, counts the reload and logs it; a file that
// cannot be read or parsed is reported to it (BundleReloadFailed), once per
// distinct content or error. Either way the bundle in force stays until a
// good one comes.
type bundleReloader struct {
	path     string
	interval time.Duration
	log      *slog.Logger
	trust    *bundleTrust
	c        bundleComponent
	last     [sha256.Size]byte // of the content (or the read error) last tried
}

func newBundleReloader(path string, interval time.Duration, trust *bundleTrust, initial []byte, c bundleComponent, log *slog.Logger) *bundleReloader {
	return &bundleReloader{path: path, interval: interval, log: log.With("bundle_file", path), trust: trust, c: c, last: sha256.Sum256(initial)}
}

// run reloads until ctx ends.
func (r *bundleReloader) run(ctx context.Context, hup <-chan os.Signal) {
	var tick <-chan time.Time
	if r.interval > 0 {
		t := time.NewTicker(r.interval)
		defer t.Stop()
		tick = t.C
	}
	r.log.Info("watching the trust bundle file", "interval", r.interval.String(), "sighup", true)
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
			r.reload("sighup")
		case <-tick:
			r.reload("")
		}
	}
}

// reload reads the file and, if forced by trigger or changed, judges it
// (bundleTrust.read: signature, partition, serial) and gives it to the
// component; a refusal is reported to the component (counted as an error,
// logged with the reason) and the bundle in force stays.
func (r *bundleReloader) reload(trigger string) {
	v, data, err := r.trust.read(r.path)
	sum := sha256.Sum256(data)
	if data == nil {
		sum = sha256.Sum256([]byte("error: " + err.Error()))
	}
	if trigger == "" {
		if sum == r.last {
			return
		}
		trigger = "changed"
	}
	r.last = sum
	r.log.Info("reloading the trust bundle", "trigger", trigger, "sha256", hex.EncodeToString(sum[:8]))
	if err != nil {
		r.c.BundleReloadFailed(err)
		return
	}
	if r.c.SetBundle(v.bundle) != nil {
		return // judged, counted and logged by the component
	}
	if err := r.trust.accepted(v); err != nil {
		r.log.Error("trust bundle in force, but its serial not persisted", "err", err)
	}
	r.log.Info("trust bundle in force", r.trust.describe(v)...)
}

// watchBundle starts the reloader of path for c; the returned func stops
// it and waits for it.
func watchBundle(path string, interval time.Duration, trust *bundleTrust, initial []byte, c bundleComponent, log *slog.Logger) (stop func()) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	r := newBundleReloader(path, interval, trust, initial, c, log)
	go func() {
		defer close(done)
		r.run(ctx, hup)
	}()
	return func() {
		signal.Stop(hup)
		cancel()
		<-done
	}
}

// required checks that each flag named in pairs ("name", value, …) is set.
func required(fs *flag.FlagSet, pairs ...string) error {
	for i := 0; i+1 < len(pairs); i += 2 {
		if name, v := pairs[i], pairs[i+1]; v == "" {
			fmt.Fprintf(fs.Output(), "--%s is required\n", name)
			fs.Usage()
			return errUsage
		}
	}
	return nil
}

// readSecretFile reads a PIN or password from a file, without the trailing
// newline, with the checks of every secret file (internal/secretfile: a
// regular file of this user or root, mode 0600 or 0400, one line, at most
// 1 KiB). Errors name the file, never its content.
func readSecretFile(path string) (string, error) {
	return secretfile.ReadLine(path)
}

// readRegionPolicy reads and checks the region's policy file ("" gives
// nil: only the admins may create and list keys).
func readRegionPolicy(path string) (*authz.Policy, error) {
	if path == "" {
		return nil, nil
	}
	doc, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("authz.region_policy_file: %w", err)
	}
	pol, err := authz.Parse(doc)
	if err != nil {
		return nil, fmt.Errorf("authz.region_policy_file %s: %w", path, err)
	}
	return pol, nil
}
