// Package config is the configuration of the mrkrepl daemons (worker and
// proxy): a YAML file, environment variables and command-line flags, merged
// and validated before anything starts.
//
// Precedence, lowest first: built-in defaults, the YAML file named by
// --config (or MRKREPL_CONFIG), environment variables MRKREPL_<FLAG> (the
// flag's name upper-cased, '-' → '_': MRKREPL_NATS_URL for --nats-url), and
// command-line flags. The file is parsed strictly: an unknown field, a
// duplicate key, a value of the wrong type or a second YAML document is an
// error naming the line. Validate reports every problem at once, each
// naming the YAML key and the flag that set it.
//
// Secrets never appear in the configuration itself: the PKCS#11 PIN and the
// NATS credentials are read from files (hsm.pin_file, nats.creds_file, TLS
// key files), a PIN in the HSM URI (pin-value=) and a user or password in a
// NATS URL are refused, and the values' LogValue methods log paths, never
// contents. docs/OPERATIONS.md ("Configuration") has complete examples.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/mrkrepl/mrkrepl/internal/authz"
	"github.com/mrkrepl/mrkrepl/internal/layout"
	"github.com/mrkrepl/mrkrepl/messages"
	"go.yaml.in/yaml/v3"
)

// NATS is how to reach one NATS cluster. Every secret is a file.
type NATS struct {
	// URL lists the cluster's servers, comma-separated
	// (nats://host:4222,nats://host2:4222); schemes nats, tls, ws, wss. A
	// user or password in a URL is refused: use CredsFile.
	URL string `yaml:"url,omitempty"`
	// CredsFile is a NATS credentials file (user JWT and nkey seed).
	CredsFile string `yaml:"creds_file,omitempty"`
	// User and PasswordFile authenticate with a user name and a password
	// read from a file (the per-role users of docs/OPERATIONS.md); not
	// together with CredsFile.
	User         string `yaml:"user,omitempty"`
	PasswordFile string `yaml:"password_file,omitempty"`
	// CAFile is a PEM file of CA certificates to verify the servers.
	CAFile string `yaml:"ca_file,omitempty"`
	// CertFile and KeyFile are a PEM client certificate and its key, for
	// servers that verify clients (both or neither).
	CertFile string `yaml:"cert_file,omitempty"`
	KeyFile  string `yaml:"key_file,omitempty"`
}

// HSM is the worker's HSM.
type HSM struct {
	// URI is soft:/dir (the software HSM, key store in dir) or a pkcs11:
	// URI (RFC 7512, docs/PKCS11.md). pin-value= is refused.
	URI string `yaml:"uri,omitempty"`
	// PINFile holds the PKCS#11 user PIN (one line). Alternatively the URI's
	// pin-source= names the file.
	PINFile string `yaml:"pin_file,omitempty"`
	// AllowHostKDF lets a token that cannot run the KDF inside (SoftHSM2)
	// release the ECDH secret to the host (docs/PKCS11.md).
	AllowHostKDF bool `yaml:"allow_host_kdf,omitempty"`
}

// JetStream sizes the streams and buckets the process creates.
type JetStream struct {
	Replicas int `yaml:"replicas,omitempty"` // 1, 3 or 5
	// Limits override layout.DefaultLimits by resource (requests, outbox,
	// inbox, events, dlq, heartbeat, keys, repl, replay, pending, tokens):
	// max_bytes and max_msg_size (a bucket's max value size), in bytes; -1
	// for none (docs/OPERATIONS.md, "Limits").
	Limits map[string]layout.Limit `yaml:"limits,omitempty"`
	// MaxDeliver overrides layout.DefaultMaxDeliver on every consumer.
	MaxDeliver int `yaml:"max_deliver,omitempty"`
}

// Layout is the layout.Options these settings give.
func (j JetStream) Layout() layout.Options {
	return layout.Options{Replicas: j.Replicas, Limits: j.Limits, MaxDeliver: j.MaxDeliver}
}

func (c *checker) jetstream(j JetStream) {
	if err := layout.CheckLimits(j.Limits); err != nil {
		c.fail("jetstream.limits", "", "%v", err)
	}
	if j.MaxDeliver < 0 {
		c.fail("jetstream.max_deliver", "", "want 0 (the default) or more, got %d", j.MaxDeliver)
	}
}

// Metrics is the HTTP endpoint of /metrics, /healthz and /readyz.
type Metrics struct {
	Addr string `yaml:"addr,omitempty"` // host:port; empty serves nothing
}

// Log configures the process's structured logs.
type Log struct {
	Level  string `yaml:"level,omitempty"`  // debug, info, warn, error
	Format string `yaml:"format,omitempty"` // text, json
}

// Worker is the configuration of `mrkrepl worker`.
type Worker struct {
	Region string `yaml:"region,omitempty"`
	Bundle string `yaml:"bundle,omitempty"` // trust bundle file (signed; JSON with insecure_unsigned_bundle)
	// BundleRootKey is the partition root's public key file (PEM, from
	// "mrkrepl bundle root-key create"): the bundle file must be signed by
	// it ("mrkrepl bundle sign"), at start and at every reload.
	BundleRootKey string `yaml:"bundle_root_key,omitempty"`
	// BundleSerialFile, if set, keeps the highest bundle serial put in
	// force across restarts: a bundle with a lower serial is refused even
	// at start. The process must be able to write it.
	BundleSerialFile string `yaml:"bundle_serial_file,omitempty"`
	// InsecureUnsignedBundle accepts an unsigned (bare JSON) bundle when
	// no root key is configured: anyone who can write the file is then
	// every region. For development only.
	InsecureUnsignedBundle bool      `yaml:"insecure_unsigned_bundle,omitempty"`
	NATS                   NATS      `yaml:"nats,omitempty"` // the region's own cluster
	HSM                    HSM       `yaml:"hsm,omitempty"`
	JetStream              JetStream `yaml:"jetstream,omitempty"`
	Concurrency            int       `yaml:"concurrency,omitempty"` // messages at once per consumer
	// ClockSkew is the allowance for clocks between regions (0: the
	// protocol's default).
	ClockSkew time.Duration `yaml:"clock_skew,omitempty"`
	// RunTimeout and MaxAttempts bound a source run and its retries with
	// fresh runs (0: the worker's defaults).
	RunTimeout  time.Duration `yaml:"run_timeout,omitempty"`
	MaxAttempts int           `yaml:"max_attempts,omitempty"`
	// DeletionWaitingPeriod is how long a key stays PENDING_DELETION when
	// a request names no pending window (docs/LIFECYCLE.md).
	DeletionWaitingPeriod time.Duration `yaml:"deletion_waiting_period,omitempty"`
	// BundleReloadInterval is how often the bundle file is read again (0:
	// only on SIGHUP).
	BundleReloadInterval time.Duration `yaml:"bundle_reload_interval,omitempty"`
	Metrics              Metrics       `yaml:"metrics,omitempty"`
	Log                  Log           `yaml:"log,omitempty"`
	// Authz is who may do what (docs/AUTHZ.md).
	Authz Authz `yaml:"authz,omitempty"`
	// KMS is the worker's AWS KMS API endpoint (docs/KMS-API.md).
	KMS KMS `yaml:"kms,omitempty"`
}

// KMS configures the worker's AWS KMS API endpoint (docs/KMS-API.md).
// Empty Listen serves none. Without TLSCert and TLSKey it serves plain
// HTTP, which the worker refuses on anything but a loopback address.
type KMS struct {
	Listen       string `yaml:"listen,omitempty"`        // host:port
	TLSCert      string `yaml:"tls_cert,omitempty"`      // PEM certificate chain file
	TLSKey       string `yaml:"tls_key,omitempty"`       // PEM private key file
	AccountID    string `yaml:"account_id,omitempty"`    // 12 digits, in ARNs (default 000000000000)
	ARNPartition string `yaml:"arn_partition,omitempty"` // in ARNs (default aws)
}

// Authz configures the worker's authorization (docs/AUTHZ.md).
type Authz struct {
	// Admins are the region's administrators as key-policy principals
	// (ACCOUNT, ACCOUNT/user, ACCOUNT/*): every key's default policy names
	// them, and without a region policy only they may create keys.
	Admins []string `yaml:"admins,omitempty"`
	// RegionPolicyFile is the region's policy (JSON, the key-policy
	// language) for create-key and list-keys.
	RegionPolicyFile string `yaml:"region_policy_file,omitempty"`
	// LocalPrincipal is the principal of requests published inside the
	// workers' own account (no server-stamped identity); empty refuses them.
	LocalPrincipal string `yaml:"local_principal,omitempty"`
	// AccountNames maps account public keys (operator/JWT mode) to the
	// names policies use.
	AccountNames map[string]string `yaml:"account_names,omitempty"`
	// NoDataPlaneAudit turns off the Encrypt/Decrypt/GenerateDataKey events.
	NoDataPlaneAudit bool `yaml:"no_data_plane_audit,omitempty"`
}

// Heartbeat configures the proxy's end-to-end probes (docs/METRICS.md).
type Heartbeat struct {
	Disabled bool          `yaml:"disabled,omitempty"`
	Interval time.Duration `yaml:"interval,omitempty"` // between rounds
	Timeout  time.Duration `yaml:"timeout,omitempty"`  // of one probe, ≤ Interval
}

// Proxy is the configuration of `mrkrepl proxy`.
type Proxy struct {
	Bundle string `yaml:"bundle,omitempty"`
	// BundleRootKey is the partition root's public key file (PEM, from
	// "mrkrepl bundle root-key create"): the bundle file must be signed by
	// it ("mrkrepl bundle sign"), at start and at every reload.
	BundleRootKey string `yaml:"bundle_root_key,omitempty"`
	// BundleSerialFile, if set, keeps the highest bundle serial put in
	// force across restarts: a bundle with a lower serial is refused even
	// at start. The process must be able to write it.
	BundleSerialFile string `yaml:"bundle_serial_file,omitempty"`
	// InsecureUnsignedBundle accepts an unsigned (bare JSON) bundle when
	// no root key is configured: anyone who can write the file is then
	// every region. For development only.
	InsecureUnsignedBundle bool `yaml:"insecure_unsigned_bundle,omitempty"`
	// NATS holds what every region's connection shares unless the region
	// sets it (credentials, CA, client certificate); its URL is unused.
	NATS NATS `yaml:"nats,omitempty"`
	// Regions maps every region of the bundle to its cluster.
	Regions     map[string]NATS `yaml:"regions,omitempty"`
	Durable     string          `yaml:"durable,omitempty"` // consumer name prefix
	Delay       time.Duration   `yaml:"delay,omitempty"`   // injected one-way delay (tests only)
	Loss        float64         `yaml:"loss,omitempty"`    // injected forward failure probability (tests only)
	ClockSkew   time.Duration   `yaml:"clock_skew,omitempty"`
	Concurrency int             `yaml:"concurrency,omitempty"`
	JetStream   JetStream       `yaml:"jetstream,omitempty"`
	Heartbeat   Heartbeat       `yaml:"heartbeat,omitempty"`
	// BundleReloadInterval is how often the bundle file is read again (0:
	// only on SIGHUP).
	BundleReloadInterval time.Duration `yaml:"bundle_reload_interval,omitempty"`
	Metrics              Metrics       `yaml:"metrics,omitempty"`
	Log                  Log           `yaml:"log,omitempty"`
}

// DefaultWorker returns the worker's defaults.
func DefaultWorker() Worker {
	return Worker{
		NATS:                  NATS{URL: "nats://127.0.0.1:4222"},
		JetStream:             JetStream{Replicas: 1},
		Concurrency:           16,
		DeletionWaitingPeriod: 7 * 24 * time.Hour,
		BundleReloadInterval:  10 * time.Second,
		Log:                   Log{Level: "info", Format: "text"},
	}
}

// DefaultProxy returns the proxy's defaults.
func DefaultProxy() Proxy {
	return Proxy{
		Regions:     map[string]NATS{},
		Durable:     "proxy",
		Concurrency: 64,
		JetStream:   JetStream{Replicas: 1},
		Heartbeat:   Heartbeat{Interval: 10 * time.Second, Timeout: 5 * time.Second},
		Log:         Log{Level: "info", Format: "text"},

		BundleReloadInterval: 10 * time.Second,
	}
}

// MaxFileSize bounds a configuration file.
const MaxFileSize = 1 << 20

// Load decodes the YAML file at path into v (a *Worker or *Proxy already
// holding defaults), strictly.
func Load(path string, v any) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, MaxFileSize+1))
	if err != nil {
		return fmt.Errorf("config %s: %w", path, err)
	}
	if len(b) > MaxFileSize {
		return fmt.Errorf("config %s: larger than %d bytes", path, MaxFileSize)
	}
	if err := Decode(b, v); err != nil {
		return fmt.Errorf("config %s: %w", path, err)
	}
	return nil
}

// Decode decodes one YAML document into v, refusing unknown fields and a
// second document. An empty document leaves v as it is.
func Decode(b []byte, v any) error {
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(v); err != nil {
		if errors.Is(err, io.EOF) {
			return nil
		}
		return cleanYAMLError(err)
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return errors.New("more than one YAML document (---): give one")
	}
	return nil
}

// cleanYAMLError turns yaml's "yaml: unmarshal errors:\n  line 3: field x
// not found in type config.Worker" into "line 3: unknown field x".
func cleanYAMLError(err error) error {
	var te *yaml.TypeError
	if !errors.As(err, &te) {
		return err
	}
	var msgs []string
	for _, e := range te.Errors {
		if m := unknownFieldRE.FindStringSubmatch(e); m != nil {
			e = m[1] + "unknown field " + strconv.Quote(m[2])
		} else {
			e = typeNameRE.ReplaceAllString(e, "")
		}
		msgs = append(msgs, e)
	}
	return errors.New(strings.Join(msgs, "; "))
}

var (
	unknownFieldRE = regexp.MustCompile(`^(line \d+: )field (\S+) not found`)
	typeNameRE     = regexp.MustCompile(` (not found )?in type [\w.\[\]]+$`)
)

// FieldError is one invalid setting.
type FieldError struct {
	Key  string // YAML key, e.g. "jetstream.replicas"
	Flag string // the flag that sets it, e.g. "--replicas" (may be "")
	Msg  string
}

func (e *FieldError) Error() string {
	if e.Flag == "" {
		return e.Key + ": " + e.Msg
	}
	return e.Key + " (" + e.Flag + "): " + e.Msg
}

type checker struct{ errs []error }

func (c *checker) fail(key, flag, format string, args ...any) {
	c.errs = append(c.errs, &FieldError{Key: key, Flag: flag, Msg: fmt.Sprintf(format, args...)})
}

func (c *checker) err() error { return errors.Join(c.errs...) }

// file checks that a configured path names a readable regular file.
func (c *checker) file(key, flag, path string, required bool) {
	if path == "" {
		if required {
			c.fail(key, flag, "required")
		}
		return
	}
	fi, err := os.Stat(path)
	switch {
	case err != nil:
		c.fail(key, flag, "%v", err)
	case fi.IsDir():
		c.fail(key, flag, "%s is a directory, want a file", path)
	}
}

// bundleTrust checks the bundle's root key settings: secure by default, a
// root key is required unless unsigned bundles are explicitly allowed.
func (c *checker) bundleTrust(rootKey, serialFile string, insecure bool) {
	switch {
	case rootKey == "" && !insecure:
		c.fail("bundle_root_key", "--bundle-root-key", "required: the partition root's public key, which signs the bundle (docs/OPERATIONS.md, \"Trust bundle\"); insecure_unsigned_bundle (--insecure-unsigned-bundle) accepts an unsigned bundle instead, for development only")
	case rootKey != "" && insecure:
		c.fail("insecure_unsigned_bundle", "--insecure-unsigned-bundle", "set together with bundle_root_key: choose one")
	case rootKey != "":
		c.file("bundle_root_key", "--bundle-root-key", rootKey, true)
	}
	if serialFile != "" && insecure {
		c.fail("bundle_serial_file", "--bundle-serial-file", "an unsigned bundle has no serial")
	}
}

func (c *checker) nats(prefix, flagPrefix string, n NATS, needURL bool) {
	key := func(k string) string { return prefix + k }
	flag := func(f string) string {
		if flagPrefix == "" {
			return ""
		}
		return flagPrefix + f
	}
	switch {
	case n.URL == "" && needURL:
		c.fail(key("url"), flag("url"), "required")
	case n.URL != "":
		for u := range strings.SplitSeq(n.URL, ",") {
			if msg := checkNATSURL(strings.TrimSpace(u)); msg != "" {
				c.fail(key("url"), flag("url"), "%s", msg)
			}
		}
	}
	c.file(key("creds_file"), flag("creds"), n.CredsFile, false)
	c.file(key("password_file"), flag("password-file"), n.PasswordFile, false)
	switch {
	case (n.User == "") != (n.PasswordFile == ""):
		c.fail(key("user"), flag("user"), "a user needs both user and password_file")
	case n.User != "" && n.CredsFile != "":
		c.fail(key("user"), flag("user"), "give either user and password_file or creds_file, not both")
	}
	c.file(key("ca_file"), flag("ca"), n.CAFile, false)
	c.file(key("cert_file"), flag("cert"), n.CertFile, false)
	c.file(key("key_file"), flag("key"), n.KeyFile, false)
	if (n.CertFile == "") != (n.KeyFile == "") {
		c.fail(key("cert_file"), flag("cert"), "a client certificate needs both cert_file and key_file")
	}
}

// checkNATSURL returns what is wrong with one server URL, or "".
func checkNATSURL(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return fmt.Sprintf("%q is not a URL", s)
	}
	switch u.Scheme {
	case "nats", "tls", "ws", "wss":
	default:
		return fmt.Sprintf("%q: scheme %q, want nats, tls, ws or wss", redactURL(u), u.Scheme)
	}
	if u.User != nil {
		return fmt.Sprintf("%q: credentials in a URL are refused (they show in process listings and logs); use a credentials file", redactURL(u))
	}
	if u.Host == "" || u.Hostname() == "" {
		return fmt.Sprintf("%q: no host", s)
	}
	if p := u.Port(); p != "" {
		if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 {
			return fmt.Sprintf("%q: bad port", s)
		}
	}
	return ""
}

func redactURL(u *url.URL) string {
	if u.User == nil {
		return u.String()
	}
	r := *u
	r.User = url.User("REDACTED")
	return r.String()
}

func (c *checker) skew(d time.Duration) {
	if d < 0 || d > 10*time.Minute {
		c.fail("clock_skew", "--clock-skew", "%s: want 0 (default) to 10m", d)
	}
}

func (c *checker) common(replicas, concurrency int, m Metrics, l Log) {
	if !slices.Contains([]int{1, 3, 5}, replicas) {
		c.fail("jetstream.replicas", "--replicas", "want 1, 3 or 5, got %d", replicas)
	}
	if concurrency < 1 || concurrency > 4096 {
		c.fail("concurrency", "--concurrency", "want 1 to 4096, got %d", concurrency)
	}
	if m.Addr != "" {
		host, port, err := net.SplitHostPort(m.Addr)
		n, perr := strconv.Atoi(port)
		switch {
		case err != nil:
			c.fail("metrics.addr", "--metrics-addr", "%q: want host:port (e.g. :9101 or 127.0.0.1:9101)", m.Addr)
		case perr != nil || n < 0 || n > 65535:
			c.fail("metrics.addr", "--metrics-addr", "%q: bad port", m.Addr)
		case strings.ContainsAny(host, "/ "):
			c.fail("metrics.addr", "--metrics-addr", "%q: bad host", m.Addr)
		}
	}
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(l.Level)); err != nil {
		c.fail("log.level", "--log-level", "%q: want debug, info, warn or error", l.Level)
	}
	if f := strings.ToLower(l.Format); f != "text" && f != "json" {
		c.fail("log.format", "--log-format", "%q: want text or json", l.Format)
	}
}

// Validate checks every setting and reports all problems at once.
func (w *Worker) Validate() error {
	var c checker
	switch {
	case w.Region == "":
		c.fail("region", "--region", "required")
	case !messages.IsName(w.Region):
		c.fail("region", "--region", "%q is not a valid region name", w.Region)
	}
	c.file("bundle", "--bundle", w.Bundle, true)
	c.bundleTrust(w.BundleRootKey, w.BundleSerialFile, w.InsecureUnsignedBundle)
	c.nats("nats.", "--nats-", w.NATS, true)
	scheme, _, _ := strings.Cut(w.HSM.URI, ":")
	switch strings.ToLower(scheme) {
	case "":
		c.fail("hsm.uri", "--hsm", "required")
	case "soft":
		if w.HSM.PINFile != "" {
			c.fail("hsm.pin_file", "--pin-file", "the soft backend takes no PIN")
		}
		if w.HSM.AllowHostKDF {
			c.fail("hsm.allow_host_kdf", "--allow-host-kdf", "applies to pkcs11 tokens only")
		}
	case "pkcs11":
		if strings.Contains(strings.ToLower(w.HSM.URI), "pin-value") {
			c.fail("hsm.uri", "--hsm", "pin-value is refused: a PIN in a URI leaks through argv and logs; use hsm.pin_file or pin-source=")
		}
	default:
		c.fail("hsm.uri", "--hsm", "scheme %q, want soft: or pkcs11:", scheme)
	}
	c.file("hsm.pin_file", "--pin-file", w.HSM.PINFile, false)
	c.file("authz.region_policy_file", "", w.Authz.RegionPolicyFile, false)
	for i, a := range w.Authz.Admins {
		if _, err := authz.ParsePrincipal(strings.TrimSuffix(a, "/*")); err != nil {
			c.fail(fmt.Sprintf("authz.admins[%d]", i), "", "%v", err)
		}
	}
	if p := w.Authz.LocalPrincipal; p != "" {
		if _, err := authz.ParsePrincipal(p); err != nil {
			c.fail("authz.local_principal", "", "%v", err)
		}
	}
	c.skew(w.ClockSkew)
	if w.RunTimeout < 0 {
		c.fail("run_timeout", "--run-timeout", "negative")
	}
	if w.MaxAttempts < 0 || w.MaxAttempts > 100 {
		c.fail("max_attempts", "--max-attempts", "want 0 (default) to 100, got %d", w.MaxAttempts)
	}
	if w.DeletionWaitingPeriod <= 0 {
		c.fail("deletion_waiting_period", "--deletion-waiting-period", "want more than 0, got %s", w.DeletionWaitingPeriod)
	}
	if w.BundleReloadInterval < 0 {
		c.fail("bundle_reload_interval", "--bundle-reload-interval", "negative")
	}
	c.common(w.JetStream.Replicas, w.Concurrency, w.Metrics, w.Log)
	c.jetstream(w.JetStream)
	return c.err()
}

var durableRE = regexp.MustCompile(`^[A-Za-z0-9_-]{1,32}$`)

// Validate checks every setting and reports all problems at once. That
// the regions are exactly the bundle's is checked once the bundle is read
// (CheckRegions).
func (p *Proxy) Validate() error {
	var c checker
	c.file("bundle", "--bundle", p.Bundle, true)
	c.bundleTrust(p.BundleRootKey, p.BundleSerialFile, p.InsecureUnsignedBundle)
	shared := p.NATS
	shared.URL = ""
	c.nats("nats.", "--nats-", shared, false)
	if p.NATS.URL != "" {
		c.fail("nats.url", "", "unused by the proxy: give each region's URL under regions (or --region NAME=URL)")
	}
	if len(p.Regions) == 0 {
		c.fail("regions", "--region", "required: every region of the partition with its NATS URL")
	}
	for _, name := range slices.Sorted(maps.Keys(p.Regions)) {
		if !messages.IsName(name) {
			c.fail("regions", "--region", "%q is not a valid region name", name)
			continue
		}
		c.nats("regions."+name+".", "", p.Region(name), true)
	}
	if !durableRE.MatchString(p.Durable) {
		c.fail("durable", "--durable", "%q: want 1 to 32 letters, digits, '-' or '_'", p.Durable)
	}
	if p.Delay < 0 {
		c.fail("delay", "--delay", "negative")
	}
	if p.Loss < 0 || p.Loss > 1 {
		c.fail("loss", "--loss", "want a probability from 0 to 1, got %v", p.Loss)
	}
	c.skew(p.ClockSkew)
	if p.BundleReloadInterval < 0 {
		c.fail("bundle_reload_interval", "--bundle-reload-interval", "negative")
	}
	if !p.Heartbeat.Disabled {
		switch {
		case p.Heartbeat.Interval < 100*time.Millisecond:
			c.fail("heartbeat.interval", "--heartbeat-interval", "%s: want at least 100ms (or heartbeat.disabled: true)", p.Heartbeat.Interval)
		case p.Heartbeat.Timeout <= 0 || p.Heartbeat.Timeout > p.Heartbeat.Interval:
			c.fail("heartbeat.timeout", "--heartbeat-timeout", "%s: want more than 0 and at most heartbeat.interval (%s)", p.Heartbeat.Timeout, p.Heartbeat.Interval)
		}
	}
	c.common(p.JetStream.Replicas, p.Concurrency, p.Metrics, p.Log)
	c.jetstream(p.JetStream)
	return c.err()
}

// Region returns region's connection settings, with the proxy-wide NATS
// settings filled in where the region sets none (authentication — creds
// file, or user and password file — as a whole).
func (p *Proxy) Region(name string) NATS {
	n := p.Regions[name]
	if n.CredsFile == "" && n.User == "" {
		n.CredsFile, n.User, n.PasswordFile = p.NATS.CredsFile, p.NATS.User, p.NATS.PasswordFile
	}
	if n.CAFile == "" {
		n.CAFile = p.NATS.CAFile
	}
	if n.CertFile == "" && n.KeyFile == "" {
		n.CertFile, n.KeyFile = p.NATS.CertFile, p.NATS.KeyFile
	}
	return n
}

// CheckRegions checks that the configured regions are exactly the
// partition's.
func (p *Proxy) CheckRegions(partition string, bundleRegions []string) error {
	var c checker
	for _, r := range bundleRegions {
		if _, ok := p.Regions[r]; !ok {
			c.fail("regions", "--region", "no URL for region %s of partition %q (the bundle's regions: %s)", r, partition, strings.Join(bundleRegions, ", "))
		}
	}
	for _, r := range slices.Sorted(maps.Keys(p.Regions)) {
		if !slices.Contains(bundleRegions, r) {
			c.fail("regions", "--region", "region %s is not in partition %q (the bundle's regions: %s)", r, partition, strings.Join(bundleRegions, ", "))
		}
	}
	return c.err()
}

// LogValue logs the settings, never a secret: secrets are only ever named
// by their file.
func (n NATS) LogValue() slog.Value {
	var urls []string
	for u := range strings.SplitSeq(n.URL, ",") {
		if pu, err := url.Parse(strings.TrimSpace(u)); err == nil {
			urls = append(urls, redactURL(pu))
		}
	}
	attrs := []slog.Attr{slog.String("url", strings.Join(urls, ","))}
	for _, a := range [][2]string{{"creds_file", n.CredsFile}, {"user", n.User}, {"password_file", n.PasswordFile}, {"ca_file", n.CAFile}, {"cert_file", n.CertFile}, {"key_file", n.KeyFile}} {
		if a[1] != "" {
			attrs = append(attrs, slog.String(a[0], a[1]))
		}
	}
	return slog.GroupValue(attrs...)
}

// LogValue logs the HSM settings; a pin-value in the URI (refused by
// Validate) would be redacted.
func (h HSM) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("uri", redactPINValue(h.URI)),
		slog.String("pin_file", h.PINFile),
		slog.Bool("allow_host_kdf", h.AllowHostKDF),
	)
}

var pinValueRE = regexp.MustCompile(`(?i)(pin-value=)[^&;]*`)

func redactPINValue(uri string) string { return pinValueRE.ReplaceAllString(uri, "${1}REDACTED") }

// LogValue logs the worker's settings.
func (w Worker) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("region", w.Region),
		slog.String("bundle", w.Bundle),
		slog.String("bundle_root_key", w.BundleRootKey),
		slog.String("bundle_serial_file", w.BundleSerialFile),
		slog.Bool("insecure_unsigned_bundle", w.InsecureUnsignedBundle),
		slog.Any("nats", w.NATS),
		slog.Any("hsm", w.HSM),
		slog.Int("replicas", w.JetStream.Replicas),
		slog.Int("concurrency", w.Concurrency),
		slog.Duration("clock_skew", w.ClockSkew),
		slog.Duration("run_timeout", w.RunTimeout),
		slog.Int("max_attempts", w.MaxAttempts),
		slog.String("metrics_addr", w.Metrics.Addr),
		slog.Any("admins", w.Authz.Admins),
		slog.String("region_policy_file", w.Authz.RegionPolicyFile),
		slog.String("local_principal", w.Authz.LocalPrincipal),
	)
}

// LogValue logs the proxy's settings.
func (p Proxy) LogValue() slog.Value {
	attrs := []slog.Attr{
		slog.String("bundle", p.Bundle),
		slog.String("bundle_root_key", p.BundleRootKey),
		slog.String("bundle_serial_file", p.BundleSerialFile),
		slog.Bool("insecure_unsigned_bundle", p.InsecureUnsignedBundle),
		slog.String("durable", p.Durable),
		slog.Int("replicas", p.JetStream.Replicas),
		slog.Int("concurrency", p.Concurrency),
		slog.Duration("delay", p.Delay),
		slog.Float64("loss", p.Loss),
		slog.Duration("clock_skew", p.ClockSkew),
		slog.Duration("heartbeat_interval", p.Heartbeat.Interval),
		slog.Bool("heartbeat_disabled", p.Heartbeat.Disabled),
		slog.String("metrics_addr", p.Metrics.Addr),
	}
	for _, r := range slices.Sorted(maps.Keys(p.Regions)) {
		attrs = append(attrs, slog.Any("region."+r, p.Region(r)))
	}
	return slog.GroupValue(attrs...)
}
