// Package mrkrepltest starts a whole mrkrepl partition in one process, for
// tests and demos — what net/http/httptest is to HTTP servers. Each region
// gets its own embedded nats-server with JetStream (loopback, random port),
// its own HSM and worker; one proxy bridges them; the trust bundle is built
// from the regions' RSKs.
//
//	func TestMine(t *testing.T) {
//		p := mrkrepltest.New(t, mrkrepltest.Options{})
//		us := p.Region("us-east-1").Client
//		key, err := us.CreateKey(t.Context(), api.CreateKeyRequest{})
//		...
//	}
//
// Everything listens on 127.0.0.1 only. Close (or the test's cleanup) stops
// the proxy, workers and servers, and removes the data directory it made.
package mrkrepltest

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/mrkrepl/mrkrepl/client"
	"github.com/mrkrepl/mrkrepl/hsmsvc"
	"github.com/mrkrepl/mrkrepl/internal/authz"
	"github.com/mrkrepl/mrkrepl/internal/layout"
	"github.com/mrkrepl/mrkrepl/internal/natsauth"
	"github.com/mrkrepl/mrkrepl/messages"
	"github.com/mrkrepl/mrkrepl/proxy"
	"github.com/mrkrepl/mrkrepl/workers"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
)

// DefaultApp is the application account of every partition with
// authorization: Region.Client connects as its first user; tests connect
// as any with Partition.ConnectApp.
var DefaultApp = natsauth.App{Account: "APP_TEST", Users: []string{"app", "app2"}}

// DefaultRegions are the regions started when Options.Regions is empty.
var DefaultRegions = []string{"us-east-1", "eu-west-1", "ap-southeast-2"}

// Options configure a partition. The zero value starts DefaultRegions with
// in-memory software HSMs and file-backed JetStream in a temporary directory.
type Options struct {
	Partition string   // default "test"
	Regions   []string // default DefaultRegions
	// Dir keeps the servers' JetStream data (and persisted HSMs). Empty
	// means a temporary directory removed by Close.
	Dir string
	// HSM returns the HSM URI for a region (hsmsvc.Open). Default "soft:".
	HSM func(region string) string
	// HSMOptions are passed to hsmsvc.Open.
	HSMOptions hsmsvc.Options
	// Logger receives every component's logs; nil discards them.
	Logger *slog.Logger
	// Registerer, if set, receives every component's metrics.
	Registerer prometheus.Registerer
	// ProxyDelay is an injected one-way delay between every pair of regions.
	ProxyDelay time.Duration
	// NoProxy starts no proxy (tests that relay messages themselves).
	NoProxy bool
	// MessageTTL is passed to the workers (0: their default).
	MessageTTL time.Duration
	// Concurrency is passed to the workers and proxy (0: their defaults).
	Concurrency int
	// NoAuth runs every server without authorization: every connection
	// is unrestricted, in one account, and the proxy creates its own
	// streams and consumers (proxy.Config.ManageStreams). By default each
	// region's server has the production accounts of internal/natsauth:
	// workers connect as MRK's worker, the proxy as MRK's proxy (with its
	// private inbox prefix), Region.Client as DefaultApp's first user, and
	// Partition.Connect as MRK's unrestricted admin.
	NoAuth bool
	// Apps are application accounts added to DefaultApp on every region
	// (Partition.ConnectApp connects as one of their users).
	Apps []natsauth.App
	// Password, if set, is the password of DefaultApp's users in every
	// region, and AdminPassword that of the admin (command-line tests and
	// the demo reach several regions with one password file); otherwise
	// each user has a random one per region.
	Password, AdminPassword string
	// NoDataPlaneAudit is passed to the workers (no Encrypt/Decrypt events).
	NoDataPlaneAudit bool
	// RegionPolicyApps are the application accounts the region policy
	// lets create and list keys (workers.Config.RegionPolicy). nil: every
	// account of Apps and DefaultApp.
	RegionPolicyApps []string
	// TLS makes every server require TLS with a throwaway CA; every
	// connection the partition makes verifies the server against it.
	TLS bool
	// ClusterSize 3 runs each region as a three-node JetStream cluster
	// with R3 streams and buckets; 0 or 1 runs one server per region.
	ClusterSize int
	// ClockSkew is passed to workers and proxy (0: messages.DefaultSkew).
	ClockSkew time.Duration
	// ExtraBundleKeys are added to the trust bundle (e.g. a retired RSK in
	// tests of validity windows).
	ExtraBundleKeys []messages.BundleKey
	// RunTimeout, MaxAttempts and SweepInterval are passed to the workers
	// (0: their defaults).
	RunTimeout    time.Duration
	MaxAttempts   int
	SweepInterval time.Duration
	// DeletionWaitingPeriod is the workers' default waiting period before
	// a scheduled deletion (0: the workers' default, 7 days).
	DeletionWaitingPeriod time.Duration
	// Layout sizes every region's streams, buckets and consumers
	// (limits, MaxDeliver); Replicas is set from ClusterSize.
	Layout layout.Options
	// ServerURLs, if set, names a running JetStream server for each region
	// (by region name): the partition connects to it instead of starting
	// an embedded one, and leaves it running at Close. Such a region has
	// no Server, and StopServer/StartServer do nothing for it. Not with
	// ClusterSize or TLS; implies NoAuth.
	ServerURLs map[string]string
	// KMS starts each worker's KMS API endpoint (AWS KMS JSON API, SigV4;
	// docs/KMS-API.md) on 127.0.0.1, a random port: Region.KMSURL.
	// KMSAccountID and KMSARNPartition go into its ARNs (default
	// workers.DefaultKMSAccountID and "aws"). Issue access keys with
	// Partition.CreateAccessKey.
	KMS                           bool
	KMSAccountID, KMSARNPartition string
}

// Region is one running region.
type Region struct {
	Name   string
	URL    string         // nats://127.0.0.1:port
	Server *server.Server // the region's (first) server
	Conn   *nats.Conn     // the worker's connection
	HSM    hsmsvc.HSM
	Worker *workers.Worker
	Client *client.Client
	KMSURL string // with Options.KMS: http://127.0.0.1:port

	kmsAddr  string
	nodes    []node // the region's nats-servers (one, or three as a cluster)
	storeDir string // JetStream data, kept across restarts
}

// Partition is a running partition.
type Partition struct {
	// Bundle is the trust bundle in force: always the one VerifyBundle
	// returned for SignedBundle.
	Bundle *messages.Bundle
	// RootKey is the partition's throwaway root key, which signs every
	// bundle (serial 1 at start, +1 at every SetBundle and RSK rotation
	// step); SignedBundle and BundleSerial are the last bundle signed and
	// its serial.
	RootKey      *ecdsa.PrivateKey
	SignedBundle []byte
	BundleSerial uint64
	Proxy        *proxy.Proxy
	opts         Options
	regions      []*Region
	proxyConns   map[string]*nats.Conn
	specs        map[string]natsauth.Spec // by region, with passwords; nil with NoAuth
	// regionPolicy is the workers' region policy (RegionPolicy).
	regionPolicy *authz.Policy
	tls          *testTLS // with TLS
	conns        []*nats.Conn
	dir          string
	ownDir       bool
}

// Start brings up every region, then the proxy. On error everything started
// so far is stopped.
func Start(ctx context.Context, opts Options) (p *Partition, err error) {
	if opts.Partition == "" {
		opts.Partition = "test"
	}
	if len(opts.Regions) == 0 {
		opts.Regions = DefaultRegions
	}
	if opts.HSM == nil {
		opts.HSM = func(string) string { return "soft:" }
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	p = &Partition{dir: opts.Dir, opts: opts}
	if opts.ServerURLs != nil {
		opts.NoAuth = true
		p.opts.NoAuth = true
	}
	apps := opts.RegionPolicyApps
	if apps == nil {
		apps = []string{DefaultApp.Account}
		for _, a := range opts.Apps {
			apps = append(apps, a.Account)
		}
	}
	if p.regionPolicy, err = NewRegionPolicy(apps...); err != nil {
		return p, err
	}
	if !opts.NoAuth {
		p.specs = map[string]natsauth.Spec{}
		for _, r := range opts.Regions {
			spec := natsauth.Spec{Region: r, Apps: append([]natsauth.App{DefaultApp}, opts.Apps...), Admin: true, Passwords: map[string]string{}}
			for _, u := range []string{natsauth.UserWorker, natsauth.UserProxy, natsauth.UserAdmin} {
				spec.Passwords[natsauth.Key(natsauth.Account, u)] = messages.NewID()
			}
			for _, a := range spec.Apps {
				for _, u := range a.Users {
					spec.Passwords[natsauth.Key(a.Account, u)] = messages.NewID()
				}
			}
			if opts.Password != "" {
				for _, u := range DefaultApp.Users {
					spec.Passwords[natsauth.Key(DefaultApp.Account, u)] = opts.Password
				}
			}
			if opts.AdminPassword != "" {
				spec.Passwords[natsauth.Key(natsauth.Account, natsauth.UserAdmin)] = opts.AdminPassword
			}
			if err := spec.Check(); err != nil {
				return nil, err
			}
			p.specs[r] = spec
		}
	}
	if p.dir == "" {
		if p.dir, err = os.MkdirTemp("", "mrkrepltest-"); err != nil {
			return nil, err
		}
		p.ownDir = true
	}
	defer func() {
		if err != nil {
			p.Close()
			p = nil
		}
	}()
	if opts.TLS {
		if p.tls, err = newTestTLS(filepath.Join(p.dir, "tls")); err != nil {
			return p, err
		}
	}

	if opts.ServerURLs != nil && (opts.ClusterSize > 1 || opts.TLS) {
		return p, errors.New("mrkrepltest: ServerURLs cannot be combined with ClusterSize or TLS")
	}

	var keys []messages.BundleKey
	now := time.Now()
	for _, name := range opts.Regions {
		r := &Region{Name: name, storeDir: filepath.Join(p.dir, name, "jetstream")}
		if opts.ServerURLs != nil {
			if r.URL = opts.ServerURLs[name]; r.URL == "" {
				return p, fmt.Errorf("region %s: no server url", name)
			}
		} else {
			r.nodes = make([]node, max(opts.ClusterSize, 1))
			if len(r.nodes) == 1 {
				r.nodes[0].port = server.RANDOM_PORT
			} else {
				// A cluster's route ports must be known before its servers
				// start; choose client ports too, so that no server's random
				// client port lands on a route port not yet bound.
				ports, err := freePorts(2 * len(r.nodes))
				if err != nil {
					return p, err
				}
				for i := range r.nodes {
					r.nodes[i].port, r.nodes[i].clusterPort = ports[2*i], ports[2*i+1]
				}
			}
		}
		p.regions = append(p.regions, r)
		if err := p.startServer(r); err != nil {
			return p, err
		}
		hopts := opts.HSMOptions
		if hopts.Logger == nil {
			hopts.Logger = opts.Logger
		}
		if r.HSM, err = hsmsvc.Open(ctx, opts.HSM(name), hopts); err != nil {
			return p, fmt.Errorf("region %s: hsm: %w", name, err)
		}
		kid, err := messages.KID(r.HSM.Signer().Public())
		if err != nil {
			return p, fmt.Errorf("region %s: %w", name, err)
		}
		keys = append(keys, messages.BundleKey{
			Region: name, KID: kid, PublicKey: r.HSM.Signer().Public(),
			NotBefore: now.Add(-time.Hour), NotAfter: now.Add(365 * 24 * time.Hour),
		})
	}
	keys = append(keys, opts.ExtraBundleKeys...)
	unsigned, err := messages.NewBundle(opts.Partition, opts.Regions, keys)
	if err != nil {
		return p, err
	}
	if p.RootKey, err = ecdsa.GenerateKey(elliptic.P384(), rand.Reader); err != nil {
		return p, err
	}
	if p.Bundle, err = p.signBundle(unsigned); err != nil {
		return p, err
	}
	for _, r := range p.regions {
		if err := p.startWorker(ctx, r, opts.Registerer); err != nil {
			return p, err
		}
	}
	if !opts.NoProxy {
		if err := p.startProxy(ctx, opts.Registerer); err != nil {
			return p, err
		}
	}
	return p, nil
}

func wrap(reg prometheus.Registerer, k, v string) prometheus.Registerer {
	if reg == nil {
		return nil
	}
	return prometheus.WrapRegistererWith(prometheus.Labels{k: v}, reg)
}

// New starts a partition for a test and stops it in t.Cleanup. It fails the
// test if the partition does not start.
func New(t testing.TB, opts Options) *Partition {
	t.Helper()
	if opts.Dir == "" {
		opts.Dir = t.TempDir()
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	p, err := Start(ctx, opts)
	if err != nil {
		t.Fatalf("mrkrepltest: start partition: %v", err)
	}
	t.Cleanup(p.Close)
	return p
}

// Region returns the named region, or nil.
func (p *Partition) Region(name string) *Region {
	for _, r := range p.regions {
		if r.Name == name {
			return r
		}
	}
	return nil
}

// Dir is the partition's data directory.
func (p *Partition) Dir() string { return p.dir }

// Regions returns the regions in the order they were started.
func (p *Partition) Regions() []*Region { return slices.Clone(p.regions) }

// Connect opens a new connection to a region's server; Close closes it.
// The connection reconnects forever, so it survives server restarts. With
// authorization (the default) it connects as MRK's unrestricted admin.
func (p *Partition) Connect(region, name string) (*nats.Conn, error) {
	return p.ConnectAs(region, natsauth.UserAdmin, name)
}

// ConnectAs is Connect as a user of the region's own account
// (natsauth.UserWorker, UserProxy or UserAdmin), with the user's
// permissions; the proxy's connection has the proxy's inbox prefix.
// Without authorization every connection is unrestricted.
func (p *Partition) ConnectAs(region, user, name string) (*nats.Conn, error) {
	return p.connect(region, natsauth.Account, user, name)
}

// ConnectApp is Connect as user of application account (DefaultApp or one
// of Options.Apps).
func (p *Partition) ConnectApp(region, account, user string) (*nats.Conn, error) {
	return p.connect(region, account, user, account+"-"+user)
}

func (p *Partition) connect(region, account, user, name string) (*nats.Conn, error) {
	r := p.Region(region)
	if r == nil || r.URL == "" {
		return nil, fmt.Errorf("no region %q", region)
	}
	opts := []nats.Option{nats.Name("mrkrepl-" + name + "-" + region), nats.MaxReconnects(-1),
		nats.ReconnectWait(100 * time.Millisecond), nats.RetryOnFailedConnect(true)}
	if p.specs != nil {
		pw, ok := p.specs[region].Passwords[natsauth.Key(account, user)]
		if !ok {
			return nil, fmt.Errorf("region %s: no user %s", region, natsauth.Key(account, user))
		}
		opts = append(opts, nats.UserInfo(user, pw))
		if account == natsauth.Account && user == natsauth.UserProxy {
			opts = append(opts, nats.CustomInboxPrefix(natsauth.ProxyInboxPrefix))
		}
	}
	if p.tls != nil {
		opts = append(opts, nats.Secure(p.tls.client.Clone()))
	}
	nc, err := nats.Connect(r.URL, opts...)
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", region, err)
	}
	p.conns = append(p.conns, nc)
	return nc, nil
}

// Password returns the password of user of account on region's server
// ("" without authorization), for processes that connect by themselves.
func (p *Partition) Password(region, account, user string) string {
	if p.specs == nil {
		return ""
	}
	return p.specs[region].Passwords[natsauth.Key(account, user)]
}

// Close stops the proxy, the workers, the HSMs and the servers.
func (p *Partition) Close() {
	if p.Proxy != nil {
		p.Proxy.Stop()
	}
	for _, r := range p.regions {
		if r.Worker != nil {
			r.Worker.Stop()
		}
	}
	for _, nc := range p.conns {
		nc.Close()
	}
	var errs []error
	for _, r := range p.regions {
		if r.HSM != nil {
			errs = append(errs, r.HSM.Close())
		}
		p.StopServer(r.Name)
	}
	if p.ownDir {
		errs = append(errs, os.RemoveAll(p.dir))
	}
	_ = errors.Join(errs...)
}

// freePorts returns n distinct loopback TCP ports that were free a moment
// ago: all are held open until all are chosen, then released.
func freePorts(n int) ([]int, error) {
	var ports []int
	var lns []net.Listener
	defer func() {
		for _, ln := range lns {
			ln.Close()
		}
	}()
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		lns = append(lns, ln)
		ports = append(ports, ln.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}
