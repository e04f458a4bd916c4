package netns

// The partition under test, every part a separate process:
//
//	namespace mrk-<pid>-r0 (us-east-1)     namespace mrk-<pid>-px            namespace mrk-<pid>-r1 (eu-west-1)
//	  nats-server ×3 (one cluster)          toxiproxy-server                   nats-server ×3
//	  mrkrepl worker ×N             p0 ─── p0r0   p0r1 ─── p0                  mrkrepl worker ×N
//	                                p1 ─── p1r0   p1r1 ─── p1
//	                                        mrkrepl proxy 0 (via toxiproxy, over p0r*)
//	                                        mrkrepl proxy 1 (via toxiproxy, over p1r*)
//
// Each proxy reaches each region over a veth link of its own, through
// toxiproxy listeners on the proxy namespace's loopback, so that a
// region's links (both proxies) or a proxy's links (both regions) can be
// cut apart. Addresses are 10.99.<link>.1 (proxy side) and .2 (region
// side), /30, inside the namespaces only.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mrkrepl/mrkrepl/client"
	"github.com/mrkrepl/mrkrepl/internal/natsauth"
	"github.com/nats-io/nats.go"
)

const (
	nodesPerRegion = 3
	proxies        = 2
	clientPort     = 4222 // + node
	monitorPort    = 8222 // + node
	routePort      = 6222 // + node
	workerMetrics  = 9100 // + worker
	proxyMetrics   = 9200 // + proxy
	toxiAPI        = "127.0.0.1:8474"
	partitionName  = "netns"
)

var regionNames = []string{"us-east-1", "eu-west-1"}

// The application account the load runs as (docs/NATS.md: the production
// layout, account MRK for workers and proxies, one account per
// application).
const (
	appAccount = "APP_CHAOS"
	appUser    = "app"
)

// authSpec is a region's accounts, as in production.
func authSpec(region string) natsauth.Spec {
	return natsauth.Spec{Region: region, Apps: []natsauth.App{{Account: appAccount, Users: []string{appUser}}}}
}

// bins holds the binaries built for the run.
type bins struct{ mrkrepl, natsServer, toxiproxy string }

// buildBinaries builds mrkrepl, nats-server and toxiproxy-server from this
// module (the latter two are tool dependencies in go.mod).
func buildBinaries(t *testing.T, dir string) bins {
	start := time.Now()
	b := bins{filepath.Join(dir, "mrkrepl"), filepath.Join(dir, "nats-server"), filepath.Join(dir, "toxiproxy-server")}
	for _, x := range []struct{ out, pkg string }{
		{b.mrkrepl, "github.com/mrkrepl/mrkrepl/cmd/mrkrepl"},
		{b.natsServer, "github.com/nats-io/nats-server/v2"},
		{b.toxiproxy, "github.com/Shopify/toxiproxy/v2/cmd/server"},
	} {
		cmd := exec.Command("go", "build", "-o", x.out, x.pkg)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go build %s: %v\n%s", x.pkg, err, out)
		}
	}
	t.Logf("built mrkrepl, nats-server and toxiproxy-server in %v", time.Since(start).Round(time.Millisecond))
	return b
}

type region struct {
	name    string
	ns      string
	servers []*proc
	workers []*proc
	urls    string // the cluster's client URLs, inside ns
}

type cluster struct {
	t         *testing.T
	dir       string
	bins      bins
	pxNS      string
	regions   []*region
	proxies   []*proc
	toxi      *proc
	passwords map[string]string
	workers   int // per region
	began     time.Time
}

// linkIndex numbers the link of proxy p to region r.
func linkIndex(p, r int) int { return p*len(regionNames) + r }

// toxiPort is the toxiproxy listener of proxy p for node n of region r.
func toxiPort(p, r, n int) int { return 20000 + p*100 + r*10 + n }

func newCluster(t *testing.T, workersPerRegion int) *cluster {
	removeStaleNamespaces(t)
	dir := t.TempDir()
	c := &cluster{t: t, dir: dir, workers: workersPerRegion, passwords: map[string]string{}}
	c.bins = buildBinaries(t, dir)
	c.began = time.Now()
	for _, role := range []string{natsauth.UserWorker, natsauth.UserProxy, appUser} {
		c.passwords[role] = fmt.Sprintf("%s-%d-%d", role, os.Getpid(), time.Now().UnixNano())
		writeSecret(t, filepath.Join(dir, role+".password"), c.passwords[role])
	}
	if err := os.MkdirAll(filepath.Join(dir, "logs"), 0o700); err != nil {
		t.Fatal(err)
	}
	prefix := fmt.Sprintf("mrk-%d-", os.Getpid())
	c.pxNS = prefix + "px"
	addNamespace(t, c.pxNS)
	for r, name := range regionNames {
		c.regions = append(c.regions, &region{name: name, ns: fmt.Sprintf("%sr%d", prefix, r)})
		addNamespace(t, c.regions[r].ns)
	}
	for p := range proxies {
		for r, rg := range c.regions {
			i := linkIndex(p, r)
			addLink(t, c.pxNS, fmt.Sprintf("p%dr%d", p, r), fmt.Sprintf("10.99.%d.1/30", i),
				rg.ns, fmt.Sprintf("p%d", p), fmt.Sprintf("10.99.%d.2/30", i))
		}
	}
	// A table for the faults in every region namespace (empty chains).
	for _, rg := range c.regions {
		c.nft(rg, "add table inet chaos\n"+
			"add chain inet chaos in { type filter hook input priority 0; }\n"+
			"add chain inet chaos out { type filter hook output priority 0; }\n")
	}
	t.Cleanup(c.stopAll) // runs before the namespaces are removed
	c.makeBundle()
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	var wg sync.WaitGroup
	for _, rg := range c.regions {
		wg.Go(func() {
			if err := c.startRegion(ctx, rg); err != nil {
				t.Errorf("region %s: %v", rg.name, err)
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	c.startToxiproxy(ctx)
	for p := range proxies {
		c.startProxy(ctx, p)
	}
	return c
}

// nft runs an nft script inside a region's namespace.
func (c *cluster) nft(rg *region, script string) {
	c.t.Helper()
	cmd := exec.Command("ip", "netns", "exec", rg.ns, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(script)
	if out, err := cmd.CombinedOutput(); err != nil {
		c.t.Errorf("nft in %s: %v: %s\n%s", rg.ns, err, out, script)
	}
}

func writeSecret(t *testing.T, path, s string) {
	if err := os.WriteFile(path, []byte(s+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
}

// makeBundle creates each region's RSK in its soft HSM and merges the
// fragments into the bundle, with the mrkrepl commands of the README.
func (c *cluster) makeBundle() {
	var frags []string
	for _, rg := range c.regions {
		frag := filepath.Join(c.dir, rg.name+".json")
		out, err := exec.Command(c.bins.mrkrepl, "rsk", "--hsm", "soft:"+c.hsmDir(rg), "--region", rg.name, "--partition", partitionName).Output()
		if err != nil {
			c.t.Fatalf("mrkrepl rsk %s: %v", rg.name, err)
		}
		if err := os.WriteFile(frag, out, 0o644); err != nil {
			c.t.Fatal(err)
		}
		frags = append(frags, frag)
	}
	out, err := exec.Command(c.bins.mrkrepl, append([]string{"bundle"}, frags...)...).Output()
	if err != nil {
		c.t.Fatalf("mrkrepl bundle: %v", err)
	}
	unsigned := filepath.Join(c.dir, "bundle.json")
	if err := os.WriteFile(unsigned, out, 0o644); err != nil {
		c.t.Fatal(err)
	}
	// Signed by the partition's root key, as docs/OPERATIONS.md does it;
	// workers and proxies get the root's public key.
	for _, args := range [][]string{
		{"bundle", "root-key", "create", "--out", c.rootKey(), "--partition", partitionName},
		{"bundle", "sign", "--root-key", c.rootKey(), "--out", c.bundlePath(), unsigned},
	} {
		if out, err := exec.Command(c.bins.mrkrepl, args...).CombinedOutput(); err != nil {
			c.t.Fatalf("mrkrepl %v: %v\n%s", args, err, out)
		}
	}
}

// bundlePath is the signed bundle; rootKey the partition root's private
// key (its public key is rootKey()+".pub").
func (c *cluster) bundlePath() string          { return filepath.Join(c.dir, "bundle.cose") }
func (c *cluster) rootKey() string             { return filepath.Join(c.dir, "root.key") }
func (c *cluster) hsmDir(rg *region) string    { return filepath.Join(c.dir, rg.name, "hsm") }
func (c *cluster) logPath(name string) string  { return filepath.Join(c.dir, "logs", name+".log") }
func (c *cluster) password(role string) string { return filepath.Join(c.dir, role+".password") }
func serverName(rg *region, n int) string      { return fmt.Sprintf("%s-n%d", rg.name, n) }
func regionIndex(rg *region, c *cluster) int   { return indexOf(c.regions, rg) }
func indexOf[T comparable](s []T, v T) int {
	for i, x := range s {
		if x == v {
			return i
		}
	}
	return -1
}

// serverConfig is the nats-server configuration of node n of a region:
// JetStream on with its own store, a 3-node cluster on the namespace's
// loopback, clients on every address of the namespace, and the users of
// accounts of internal/natsauth (passwords from the environment).
func (c *cluster) serverConfig(rg *region, n int) string {
	var routes []string
	for i := range nodesPerRegion {
		routes = append(routes, fmt.Sprintf("%q", fmt.Sprintf("nats://127.0.0.1:%d", routePort+i)))
	}
	return fmt.Sprintf(`# node %d of region %s (e2e/netns)
server_name: %q
listen: "0.0.0.0:%d"
http: "127.0.0.1:%d"
jetstream {
  store_dir: %q
  max_memory_store: 64MB
  max_file_store: 8GB  # the workers' streams and buckets reserve about 3 GiB (layout.DefaultLimits)
}
cluster {
  name: %q
  listen: "127.0.0.1:%d"
  routes: [%s]
}
%s`, n, rg.name, serverName(rg, n), clientPort+n, monitorPort+n,
		filepath.Join(c.dir, rg.name, fmt.Sprintf("n%d", n), "jetstream"),
		rg.name, routePort+n, strings.Join(routes, ", "), natsauth.MustConfig(authSpec(rg.name)))
}

func (c *cluster) serverEnv() []string {
	return []string{
		natsauth.EnvVar(natsauth.Account, natsauth.UserWorker) + "=" + c.passwords[natsauth.UserWorker],
		natsauth.EnvVar(natsauth.Account, natsauth.UserProxy) + "=" + c.passwords[natsauth.UserProxy],
		natsauth.EnvVar(appAccount, appUser) + "=" + c.passwords[appUser],
	}
}

func (c *cluster) startRegion(ctx context.Context, rg *region) error {
	var urls []string
	for n := range nodesPerRegion {
		urls = append(urls, fmt.Sprintf("nats://127.0.0.1:%d", clientPort+n))
		cfg := filepath.Join(c.dir, rg.name, fmt.Sprintf("n%d.conf", n))
		if err := os.MkdirAll(filepath.Dir(cfg), 0o700); err != nil {
			return err
		}
		if err := os.WriteFile(cfg, []byte(c.serverConfig(rg, n)), 0o600); err != nil {
			return err
		}
		name := serverName(rg, n)
		rg.servers = append(rg.servers, &proc{
			name: name, ns: rg.ns, argv: []string{c.bins.natsServer, "-c", cfg}, env: c.serverEnv(),
			logPath: c.logPath(name),
			// Up, JetStream has a meta leader and this node's streams
			// and consumers are current.
			ready: httpReady(rg.ns, fmt.Sprintf("http://127.0.0.1:%d/healthz", monitorPort+n)),
		})
	}
	rg.urls = strings.Join(urls, ",")
	for _, s := range rg.servers {
		if err := s.start(); err != nil {
			return err
		}
	}
	for _, s := range rg.servers {
		if err := s.waitReady(ctx); err != nil {
			return err
		}
	}
	c.t.Logf("%s: %d nats-servers ready at +%v", rg.name, nodesPerRegion, time.Since(c.began).Round(time.Millisecond))
	// The region policy lets the application create keys; each key's
	// default policy then lets its creator use it, in every region.
	policy := filepath.Join(c.dir, rg.name, "region-policy.json")
	if err := os.WriteFile(policy, []byte(`{"Version":"2012-10-17","Statement":[{"Sid":"App","Effect":"Allow",`+
		`"Principal":{"MRK":"`+appAccount+`"},"Action":["kms:CreateKey","kms:ListKeys"],"Resource":"*"}]}`), 0o644); err != nil {
		return err
	}
	workerConfig := filepath.Join(c.dir, rg.name, "worker.yaml")
	if err := os.WriteFile(workerConfig, []byte("authz:\n  region_policy_file: "+policy+"\n"), 0o644); err != nil {
		return err
	}
	for w := range c.workers {
		name := fmt.Sprintf("worker-%s-%d", rg.name, w)
		rg.workers = append(rg.workers, &proc{
			name: name, ns: rg.ns, logPath: c.logPath(name),
			argv: []string{c.bins.mrkrepl, "worker", "--config", workerConfig, "--region", rg.name, "--bundle", c.bundlePath(), "--bundle-root-key", c.rootKey() + ".pub",
				"--hsm", "soft:" + c.hsmDir(rg), "--nats-url", rg.urls,
				"--nats-user", natsauth.UserWorker, "--nats-password-file", c.password(natsauth.UserWorker),
				"--replicas", "3", "--metrics-addr", fmt.Sprintf("127.0.0.1:%d", workerMetrics+w),
				"--run-timeout", "30s", "--max-attempts", "20", "--log-format", "text"},
			ready: httpReady(rg.ns, fmt.Sprintf("http://127.0.0.1:%d/readyz", workerMetrics+w)),
		})
	}
	for _, w := range rg.workers {
		if err := w.start(); err != nil {
			return err
		}
		if err := w.waitReady(ctx); err != nil {
			return err
		}
		c.t.Logf("%s ready at +%v", w.name, time.Since(c.began).Round(time.Millisecond))
	}
	return nil
}

// startToxiproxy runs toxiproxy-server in the proxy namespace and makes
// one listener per proxy, region and node.
func (c *cluster) startToxiproxy(ctx context.Context) {
	host, port, _ := strings.Cut(toxiAPI, ":")
	c.toxi = &proc{
		name: "toxiproxy", ns: c.pxNS, logPath: c.logPath("toxiproxy"),
		argv:  []string{c.bins.toxiproxy, "-host", host, "-port", port},
		ready: httpReady(c.pxNS, "http://"+toxiAPI+"/version"),
	}
	if err := c.toxi.start(); err != nil {
		c.t.Fatal(err)
	}
	if err := c.toxi.waitReady(ctx); err != nil {
		c.t.Fatal(err)
	}
	for p := range proxies {
		for r := range c.regions {
			for n := range nodesPerRegion {
				c.toxiPost(ctx, "/proxies", map[string]any{
					"name":     toxiName(p, r, n),
					"listen":   fmt.Sprintf("127.0.0.1:%d", toxiPort(p, r, n)),
					"upstream": fmt.Sprintf("10.99.%d.2:%d", linkIndex(p, r), clientPort+n),
					"enabled":  true,
				})
			}
		}
	}
}

func toxiName(p, r, n int) string { return fmt.Sprintf("p%d-r%d-n%d", p, r, n) }

// toxiPost calls toxiproxy's HTTP API (inside the proxy namespace).
// toxiPost adds a toxic. A request whose answer did not come (toxiproxy's
// control API on a loaded machine; seen once in a long run) is sent again,
// a bounded number of times; on a second try "already exists" means the
// first one took.
func (c *cluster) toxiPost(ctx context.Context, path string, body any) {
	c.t.Helper()
	var err error
	for try := range 5 {
		err = c.toxiDo(ctx, http.MethodPost, path, body)
		if err == nil || try > 0 && strings.Contains(err.Error(), "409") {
			return
		}
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() || ctx.Err() != nil {
			break
		}
	}
	c.t.Errorf("toxiproxy: %v", err)
}

func (c *cluster) toxiDo(ctx context.Context, method, path string, body any) error {
	var rd *bytes.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	} else {
		rd = bytes.NewReader(nil)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://"+toxiAPI+path, rd)
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := nsDialer(c.pxNS).httpClient().Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		var b bytes.Buffer
		_, _ = b.ReadFrom(resp.Body)
		return fmt.Errorf("%s %s: %s: %s", method, path, resp.Status, strings.TrimSpace(b.String()))
	}
	return nil
}

func (c *cluster) startProxy(ctx context.Context, p int) {
	name := fmt.Sprintf("proxy-%d", p)
	argv := []string{c.bins.mrkrepl, "proxy", "--bundle", c.bundlePath(), "--bundle-root-key", c.rootKey() + ".pub",
		"--nats-user", natsauth.UserProxy, "--nats-password-file", c.password(natsauth.UserProxy),
		"--replicas", "3", "--metrics-addr", fmt.Sprintf("127.0.0.1:%d", proxyMetrics+p),
		"--heartbeat-interval", "2s", "--heartbeat-timeout", "1s", "--log-format", "text"}
	for r, rg := range c.regions {
		var urls []string
		for n := range nodesPerRegion {
			urls = append(urls, fmt.Sprintf("nats://127.0.0.1:%d", toxiPort(p, r, n)))
		}
		argv = append(argv, "--region", rg.name+"="+strings.Join(urls, ","))
	}
	px := &proc{name: name, ns: c.pxNS, argv: argv, logPath: c.logPath(name),
		ready: httpReady(c.pxNS, fmt.Sprintf("http://127.0.0.1:%d/readyz", proxyMetrics+p))}
	c.proxies = append(c.proxies, px)
	if err := px.start(); err != nil {
		c.t.Fatal(err)
	}
	if err := px.waitReady(ctx); err != nil {
		c.t.Fatal(err)
	}
}

// all lists every process.
func (c *cluster) all() []*proc {
	var ps []*proc
	for _, rg := range c.regions {
		ps = append(ps, rg.workers...)
		ps = append(ps, rg.servers...)
	}
	ps = append(ps, c.proxies...)
	if c.toxi != nil {
		ps = append(ps, c.toxi)
	}
	return ps
}

func (c *cluster) stopAll() {
	for _, p := range c.all() {
		p.kill()
	}
	if c.t.Failed() {
		for _, p := range c.all() {
			c.t.Logf("--- last lines of %s:\n%s", p.name, tail(p.logPath, 20))
		}
	}
}

// connect opens a NATS connection to a region's cluster from inside its
// namespace, as the given user.
func (c *cluster) connect(rg *region, role string) (*nats.Conn, error) {
	return nats.Connect(rg.urls,
		nats.SetCustomDialer(nsDialer(rg.ns)), nats.UserInfo(role, c.passwords[role]),
		nats.Name("netns-test-"+role), nats.MaxReconnects(-1), nats.ReconnectWait(250*time.Millisecond),
		nats.RetryOnFailedConnect(true), nats.Timeout(3*time.Second))
}

// clients returns an API client per region, as the application's user.
func (c *cluster) clients() []*client.Client {
	var cs []*client.Client
	for _, rg := range c.regions {
		nc, err := c.connect(rg, appUser)
		if err != nil {
			c.t.Fatal(err)
		}
		c.t.Cleanup(nc.Close)
		cs = append(cs, client.New(nc, rg.name))
	}
	return cs
}
