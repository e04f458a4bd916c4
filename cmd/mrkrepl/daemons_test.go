package main

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/mrkrepl/mrkrepl/api"
	"github.com/mrkrepl/mrkrepl/client"
	"github.com/mrkrepl/mrkrepl/internal/natsauth"
	"github.com/mrkrepl/mrkrepl/internal/softhsm"
	"github.com/mrkrepl/mrkrepl/messages"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
)

// syncBuffer is a bytes.Buffer safe to read while a daemon writes to it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// cluster is one nats-server per region, with the per-role users of
// internal/natsauth, and the commands run against them.
type cluster struct {
	t       *testing.T
	dir     string
	regions []string
	urls    map[string]string
	pwFiles map[string]string // role → file holding its password
	ctx     context.Context   // the test's
	dctx    context.Context   // the daemons'
	stop    context.CancelFunc
	wg      sync.WaitGroup
	codes   chan int
	// The trust bundle: its JSON (edited by the tests), the root key that
	// signs it and the signed file the daemons read.
	bundleJSON, rootKey, signed string
}

func newCluster(t *testing.T, regions ...string) *cluster {
	t.Helper()
	c := &cluster{t: t, dir: t.TempDir(), regions: regions, urls: map[string]string{}, pwFiles: map[string]string{}, codes: make(chan int, 16)}
	// Every worker of the test lets the demo application create and list
	// keys (its region policy, by variable); what it may do with a key is
	// the key's default policy's: the creator's.
	policy := filepath.Join(c.dir, "region-policy.json")
	doc := `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"MRK":"` + natsauth.DefaultApp.Account +
		`"},"Action":["kms:CreateKey","kms:ListKeys"],"Resource":"*"}]}`
	if err := os.WriteFile(policy, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("MRKREPL_REGION_POLICY", policy)
	// The production accounts; "client" is the demo application's user.
	users := map[string]string{"worker": natsauth.Key(natsauth.Account, natsauth.UserWorker), "proxy": natsauth.Key(natsauth.Account, natsauth.UserProxy),
		"client": natsauth.Key(natsauth.DefaultApp.Account, natsauth.DefaultApp.Users[0])}
	passwords := map[string]string{}
	for role, key := range users {
		passwords[key] = "pw-" + role + "-" + fmt.Sprint(time.Now().UnixNano())
		c.pwFiles[role] = filepath.Join(c.dir, role+".password")
		if err := os.WriteFile(c.pwFiles[role], []byte(passwords[key]+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	for _, r := range regions {
		o := &server.Options{
			ServerName: r, Host: "127.0.0.1", Port: server.RANDOM_PORT, JetStream: true,
			StoreDir: filepath.Join(c.dir, r, "js"), NoLog: true, NoSigs: true,
		}
		if err := (natsauth.Spec{Region: r, Apps: []natsauth.App{natsauth.DefaultApp}, Passwords: passwords}).ServerOptions(o); err != nil {
			t.Fatal(err)
		}
		s, err := server.NewServer(o)
		if err != nil {
			t.Fatal(err)
		}
		go s.Start()
		if !s.ReadyForConnections(10 * time.Second) {
			t.Fatalf("%s not ready", r)
		}
		t.Cleanup(s.Shutdown)
		c.urls[r] = s.ClientURL()
	}
	var cancel context.CancelFunc
	c.ctx, cancel = context.WithTimeout(t.Context(), time.Minute)
	t.Cleanup(cancel)
	c.dctx, c.stop = context.WithCancel(c.ctx)
	return c
}

// client connects to a region as the client role.
func (c *cluster) client(region string) *client.Client {
	c.t.Helper()
	pw, err := readSecretFile(c.pwFiles["client"])
	if err != nil {
		c.t.Fatal(err)
	}
	nc, err := nats.Connect(c.urls[region], nats.UserInfo(natsauth.DefaultApp.Users[0], pw))
	if err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(nc.Close)
	return client.New(nc, region)
}

// mustRun runs a command to completion and returns its stdout.
func (c *cluster) mustRun(args ...string) []byte {
	c.t.Helper()
	var out, errb bytes.Buffer
	if code := run(c.ctx, args, &out, &errb); code != 0 {
		c.t.Fatalf("mrkrepl %v: exit %d: %s", args, code, errb.String())
	}
	return out.Bytes()
}

// bundle makes each region's RSK fragment with hsmArgs(region), merges
// them into a trust bundle (c.bundleJSON), makes the partition's root key
// (bound to partition cmdtest; MRKREPL_BUNDLE_ROOT_KEY names its public
// file for every daemon) and signs the bundle (serial 1). It returns the
// signed file, the daemons' --bundle.
func (c *cluster) bundle(hsmArgs func(region string) []string) string {
	c.t.Helper()
	var fragments []string
	for _, r := range c.regions {
		f := filepath.Join(c.dir, r+".json")
		args := append([]string{"rsk", "--region", r, "--partition", "cmdtest"}, hsmArgs(r)...)
		if err := os.WriteFile(f, c.mustRun(args...), 0o644); err != nil {
			c.t.Fatal(err)
		}
		fragments = append(fragments, f)
	}
	c.bundleJSON = filepath.Join(c.dir, "bundle.json")
	if err := os.WriteFile(c.bundleJSON, c.mustRun(append([]string{"bundle"}, fragments...)...), 0o644); err != nil {
		c.t.Fatal(err)
	}
	c.rootKey = filepath.Join(c.dir, "root.key")
	c.mustRun("bundle", "root-key", "create", "--out", c.rootKey, "--partition", "cmdtest")
	c.t.Setenv("MRKREPL_BUNDLE_ROOT_KEY", c.rootKey+".pub")
	c.signed = filepath.Join(c.dir, "bundle.cose")
	c.sign()
	return c.signed
}

// sign signs c.bundleJSON into c.signed with the next serial, as an
// operator does after every edit.
func (c *cluster) sign() {
	c.t.Helper()
	c.mustRun("bundle", "sign", "--root-key", c.rootKey, "--out", c.signed, c.bundleJSON)
}

// daemon runs a command until the cluster stops; it must then exit 0.
func (c *cluster) daemon(args ...string) *syncBuffer {
	errb := &syncBuffer{}
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		var out bytes.Buffer
		code := run(c.dctx, args, &out, errb)
		if code != 0 {
			c.t.Errorf("mrkrepl %s: exit %d: %s", args[0], code, errb.String())
		}
		c.codes <- code
	}()
	return errb
}

// shutdown interrupts the daemons and waits for them.
func (c *cluster) shutdown() {
	c.stop()
	c.wg.Wait()
	close(c.codes)
	for code := range c.codes {
		if code != 0 {
			c.t.Errorf("a daemon exited %d after interrupt", code)
		}
	}
}

// writeConfig writes a YAML file into the test directory.
func (c *cluster) writeConfig(name, yaml string) string {
	c.t.Helper()
	p := filepath.Join(c.dir, name)
	if err := os.WriteFile(p, []byte(yaml), 0o600); err != nil {
		c.t.Fatal(err)
	}
	return p
}

// endpoint waits until a daemon's log (JSON) names its metrics URL and
// returns the base URL (http://host:port).
func endpoint(t *testing.T, log *syncBuffer) string {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		for line := range strings.SplitSeq(log.String(), "\n") {
			var rec struct {
				Msg     string `json:"msg"`
				Metrics string `json:"metrics"`
			}
			if json.Unmarshal([]byte(line), &rec) == nil && rec.Metrics != "" {
				return strings.TrimSuffix(rec.Metrics, "/metrics")
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("no metrics URL in the log:\n%s", log.String())
	return ""
}

func httpGet(t *testing.T, u string) (int, string) {
	t.Helper()
	resp, err := http.Get(u)
	if err != nil {
		t.Fatalf("GET %s: %v", u, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// waitReady polls /readyz until it answers 200.
func waitReady(t *testing.T, base string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		code, body := httpGet(t, base+"/readyz")
		if code == 200 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s/readyz: %d %s", base, code, body)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestWorkerAndProxyCommands runs the partition as an operator would: one
// nats-server per region, "mrkrepl rsk" per region, "mrkrepl bundle", then
// "mrkrepl worker" per region and "mrkrepl proxy" (in-process, as commands),
// one worker and the proxy from YAML files with MRKREPL_* variables on top,
// and replicates a key through them while checking /healthz, /readyz and
// that /metrics passes the Prometheus linter.
func TestWorkerAndProxyCommands(t *testing.T) {
	regions := []string{"us-east-1", "eu-west-1", "ap-southeast-2"}
	c := newCluster(t, regions...)
	hsmDir := func(r string) string { return filepath.Join(c.dir, r, "hsm") }
	bundle := c.bundle(func(r string) []string { return []string{"--hsm", "soft:" + hsmDir(r)} })

	// Read by every daemon of this process: all log JSON.
	t.Setenv("MRKREPL_LOG_FORMAT", "json")
	usConfig := c.writeConfig("worker-us.yaml", fmt.Sprintf(`# us-east-1's worker
region: us-east-1
bundle: %s
nats: {url: %q, user: worker, password_file: %s}
hsm: {uri: "soft:%s"}
metrics: {addr: "127.0.0.1:0"}
log: {level: info, format: text}  # MRKREPL_LOG_FORMAT overrides the format
`, bundle, c.urls["us-east-1"], c.pwFiles[natsauth.RoleWorker], hsmDir("us-east-1")))
	usLog := c.daemon("worker", "--config", usConfig)
	for _, r := range regions[1:] {
		c.daemon("worker", "--region", r, "--nats-url", c.urls[r], "--bundle", bundle,
			"--nats-user", "worker", "--nats-password-file", c.pwFiles[natsauth.RoleWorker],
			"--hsm", "soft:"+hsmDir(r), "--log-level", "error")
	}
	var proxyYAML strings.Builder
	fmt.Fprintf(&proxyYAML, "bundle: %s\nmetrics: {addr: \"127.0.0.1:0\"}\nheartbeat: {interval: 200ms, timeout: 200ms}\nnats: {user: proxy, password_file: %s}\nregions:\n", bundle, c.pwFiles[natsauth.RoleProxy])
	for _, r := range regions[:2] {
		fmt.Fprintf(&proxyYAML, "  %s: {url: %q}\n", r, c.urls[r])
	}
	// The third region comes from a flag, on top of the file.
	proxyLog := c.daemon("proxy", "--config", c.writeConfig("proxy.yaml", proxyYAML.String()),
		"--region", "ap-southeast-2="+c.urls["ap-southeast-2"])

	usBase, proxyBase := endpoint(t, usLog), endpoint(t, proxyLog)
	for _, base := range []string{usBase, proxyBase} {
		if code, body := httpGet(t, base+"/healthz"); code != 200 || body != "ok\n" {
			t.Errorf("%s/healthz: %d %q", base, code, body)
		}
		waitReady(t, base)
	}

	us := c.client("us-east-1")
	// Poll until every worker serves its API.
	var key *api.Key
	for key == nil {
		k, err := us.CreateKey(c.ctx, api.CreateKeyRequest{})
		if err == nil {
			key = k
			break
		}
		select {
		case <-c.ctx.Done():
			t.Fatalf("worker never served create-key: %v", err)
		case <-time.After(20 * time.Millisecond):
		}
	}
	for _, dst := range regions[1:] {
		rep, err := us.ReplicateKey(c.ctx, key.KeyID, dst)
		if err != nil {
			t.Fatal(err)
		}
		if rep, err = us.WaitReplication(c.ctx, rep.ReplicationID); err != nil || rep.State != api.StateCompleted {
			t.Fatalf("replicate to %s: %v %+v", dst, err, rep)
		}
	}
	ct, err := us.Encrypt(c.ctx, key.KeyID, []byte("across processes"), nil)
	if err != nil {
		t.Fatal(err)
	}
	pt, err := c.client("ap-southeast-2").Decrypt(c.ctx, ct.CiphertextBlob, nil)
	if err != nil || string(pt.Plaintext) != "across processes" {
		t.Fatalf("decrypt in ap-southeast-2: %v %+v", err, pt)
	}

	// What Prometheus would scrape is lint-clean and has the pipeline in it.
	for base, wants := range map[string][]string{
		usBase: {
			`mrkrepl_worker_replications_total{region="us-east-1",result="completed",role="source"} 2`,
			`mrkrepl_worker_replications_in_flight{region="us-east-1"} 0`,
			`mrkrepl_build_info{`,
		},
		proxyBase: {
			`mrkrepl_proxy_forwarded_total{dst="eu-west-1",src="us-east-1",type="replication.init"} 1`,
			`mrkrepl_proxy_heartbeat_failures_total{dst="us-east-1",side="source",src="eu-west-1"} 0`,
			`mrkrepl_proxy_nats_connected{region="ap-southeast-2"} 1`,
		},
	} {
		code, body := httpGet(t, base+"/metrics")
		if code != 200 {
			t.Fatalf("%s/metrics: %d", base, code)
		}
		problems, err := promlint.New(strings.NewReader(body)).Lint()
		if err != nil || len(problems) > 0 {
			t.Errorf("%s/metrics lint: %v %v", base, err, problems)
		}
		for _, w := range wants {
			if !strings.Contains(body, w) {
				t.Errorf("%s/metrics lacks %s", base, w)
			}
		}
	}
	c.shutdown()

	// The environment switched the logs to JSON; the configuration is logged.
	logs := usLog.String()
	if !strings.Contains(logs, `"msg":"configuration"`) || !strings.Contains(logs, `"file":"`+usConfig+`"`) || !strings.Contains(logs, `"component":"worker"`) {
		t.Errorf("worker log lacks the configuration or is not JSON:\n%.2000s", logs)
	}
}

// TestWorkerSecretsNotLogged runs a worker on a SoftHSM2 token with its PIN
// in hsm.pin_file and debug logs, and checks that the PIN appears nowhere
// in what it writes.
func TestWorkerSecretsNotLogged(t *testing.T) {
	uri := softhsm.NewToken(t, "cmdsecret")
	u, err := url.Parse(uri)
	if err != nil {
		t.Fatal(err)
	}
	q := u.Query()
	pinFile := q.Get("pin-source")
	pin, err := readSecretFile(pinFile)
	if err != nil || len(pin) < 4 {
		t.Fatalf("token PIN: %v", err)
	}
	// The URI without pin-source: the PIN comes from hsm.pin_file.
	q.Del("pin-source")
	q.Set("allow-host-kdf", "true") // SoftHSM2 cannot run the KDF inside
	u.RawQuery = q.Encode()
	tokenURI := u.String()
	c := newCluster(t, "us-east-1", "eu-west-1")
	// "hsm init" makes the RSK inside the token, and is idempotent.
	first := string(c.mustRun("hsm", "init", "--hsm", tokenURI, "--pin-file", pinFile))
	again := string(c.mustRun("hsm", "init", "--hsm", tokenURI, "--pin-file", pinFile))
	if !strings.HasSuffix(first, " created\n") || !strings.HasSuffix(again, " already present\n") || first[:68] != again[:68] {
		t.Errorf("hsm init: %q then %q", first, again)
	}
	bundle := c.bundle(func(r string) []string {
		if r == "us-east-1" {
			return []string{"--hsm", tokenURI, "--pin-file", pinFile}
		}
		return []string{"--hsm", "soft:" + filepath.Join(c.dir, r)}
	})
	cfg := c.writeConfig("worker.yaml", fmt.Sprintf(`region: us-east-1
bundle: %s
nats: {url: %q, user: worker, password_file: %s}
hsm:
  uri: %q
  pin_file: %s
metrics: {addr: "127.0.0.1:0"}
log: {level: debug, format: json}
`, bundle, c.urls["us-east-1"], c.pwFiles[natsauth.RoleWorker], tokenURI, pinFile))
	natsPW, err := readSecretFile(c.pwFiles[natsauth.RoleWorker])
	if err != nil {
		t.Fatal(err)
	}
	log := c.daemon("worker", "--config", cfg)
	base := endpoint(t, log)
	defer func() {
		if t.Failed() {
			t.Logf("worker log:\n%s", log.String())
		}
	}()
	waitReady(t, base)
	_, metrics := httpGet(t, base+"/metrics")
	c.shutdown()
	out := log.String()
	if !strings.Contains(out, pinFile) {
		t.Errorf("the log does not name the PIN file:\n%.2000s", out)
	}
	if strings.Contains(out, pin) || strings.Contains(metrics, pin) {
		t.Errorf("the PIN appears in the log or the metrics")
	}
	if strings.Contains(out, natsPW) || strings.Contains(metrics, natsPW) {
		t.Errorf("the NATS password appears in the log or the metrics")
	}
	if !strings.Contains(metrics, `backend="pkcs11",op="self_test"`) {
		t.Errorf("no HSM self-test in the metrics after /readyz")
	}
}

// scrape reads a daemon's /metrics into series (name{labels}) → value.
func scrape(t *testing.T, base string) map[string]float64 {
	t.Helper()
	code, body := httpGet(t, base+"/metrics")
	if code != 200 {
		t.Fatalf("%s/metrics: %d", base, code)
	}
	out := map[string]float64{}
	for line := range strings.SplitSeq(body, "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if v, err := strconv.ParseFloat(line[i+1:], 64); err == nil {
			out[line[:i]] = v
		}
	}
	return out
}

// waitSeries polls base/metrics until series has the value want.
func waitSeries(t *testing.T, base, series string, want float64) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		got, ok := scrape(t, base)[series]
		if ok && got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %s = %v (present %v), want %v", base, series, got, ok, want)
		}
		time.Sleep(20 * time.Millisecond) // poll interval
	}
}

// replicate creates a key in src (polling until its worker serves) and
// replicates it to dst; the run must complete.
func (c *cluster) replicate(src, dst string) {
	c.t.Helper()
	cl := c.client(src)
	var key *api.Key
	for key == nil {
		k, err := cl.CreateKey(c.ctx, api.CreateKeyRequest{})
		if err == nil {
			key = k
			break
		}
		select {
		case <-c.ctx.Done():
			c.t.Fatalf("%s never served create-key: %v", src, err)
		case <-time.After(20 * time.Millisecond):
		}
	}
	rep, err := cl.ReplicateKey(c.ctx, key.KeyID, dst)
	if err != nil {
		c.t.Fatal(err)
	}
	if rep, err = cl.WaitReplication(c.ctx, rep.ReplicationID); err != nil || rep.State != api.StateCompleted {
		c.t.Fatalf("replicate %s → %s: %v %+v", src, dst, err, rep)
	}
}

// reloadSeries names each daemon's bundle reload counter, by metrics URL.
type reloadSeries map[string]string

// want waits until every daemon has counted ok good and errs failed reloads.
func (s reloadSeries) want(t *testing.T, ok, errs float64) {
	t.Helper()
	for base, series := range s {
		waitSeries(t, base, fmt.Sprintf(series, "ok"), ok)
		waitSeries(t, base, fmt.Sprintf(series, "error"), errs)
	}
}

// startReloading starts a worker per region (hsm(region) gives its --hsm
// flags) and a proxy, all reloading bundle every 50 ms, and waits until
// they are ready. It returns their logs and reload counters.
func (c *cluster) startReloading(bundle string, hsm func(region string) []string) (map[string]*syncBuffer, reloadSeries) {
	c.t.Helper()
	c.t.Setenv("MRKREPL_LOG_FORMAT", "json")
	// By variable for the workers, by flag for the proxy.
	c.t.Setenv("MRKREPL_BUNDLE_RELOAD_INTERVAL", "50ms")
	logs := map[string]*syncBuffer{}
	series := reloadSeries{}
	proxyArgs := []string{"proxy", "--bundle", bundle, "--bundle-reload-interval", "50ms", "--heartbeat-disabled",
		"--bundle-serial-file", filepath.Join(c.dir, "proxy.serial"),
		"--nats-user", "proxy", "--nats-password-file", c.pwFiles[natsauth.RoleProxy], "--metrics-addr", "127.0.0.1:0"}
	for _, r := range c.regions {
		logs[r] = c.daemon(append([]string{"worker", "--region", r, "--nats-url", c.urls[r], "--bundle", bundle,
			"--nats-user", "worker", "--nats-password-file", c.pwFiles[natsauth.RoleWorker], "--metrics-addr", "127.0.0.1:0"}, hsm(r)...)...)
		proxyArgs = append(proxyArgs, "--region", r+"="+c.urls[r])
	}
	logs["proxy"] = c.daemon(proxyArgs...)
	for name, log := range logs {
		base := endpoint(c.t, log)
		waitReady(c.t, base)
		if name == "proxy" {
			series[base] = `mrkrepl_proxy_bundle_reloads_total{result="%s"}`
		} else {
			series[base] = `mrkrepl_worker_bundle_reloads_total{region="` + name + `",result="%s"}`
		}
	}
	return logs, series
}

// writeFile replaces path with data atomically, as an operator should (a
// daemon polling the file must not see it half-written).
func writeFile(t *testing.T, path string, data []byte) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// TestBundleReload: the daemons put a changed bundle file in force without
// a restart, on their own (content compared, not the modification time)
// and on SIGHUP; a file they cannot read or a bundle they refuse is counted
// as an error and leaves the bundle in force, with which they keep working.
// Refused at every reload, each counted and logged with its reason (the
// holes of security review M2): an unsigned bundle, a rollback to an older
// serial, a bundle signed by another root key, a bundle of another
// partition signed by the root, and a new bundle under the serial in force.
func TestBundleReload(t *testing.T) {
	c := newCluster(t, "us-east-1", "eu-west-1")
	hsm := func(r string) []string { return []string{"--hsm", "soft:" + filepath.Join(c.dir, r, "hsm")} }
	bundle := c.bundle(hsm)
	serial1, err := os.ReadFile(bundle)
	if err != nil {
		t.Fatal(err)
	}
	goodJSON, err := os.ReadFile(c.bundleJSON)
	if err != nil {
		t.Fatal(err)
	}
	logs, reloads := c.startReloading(bundle, hsm)
	reloads.want(t, 0, 0)

	// A file that does not parse: an error, once, and the bundle in force
	// stays.
	writeFile(t, bundle, []byte("{not json"))
	reloads.want(t, 0, 1)
	c.replicate("us-east-1", "eu-west-1")
	// Good again (the same serial and bundle as in force): a reload. The
	// same bytes written again: none. A changed bundle (eu-west-1 gets a
	// second key), signed with serial 2: a reload.
	writeFile(t, bundle, serial1)
	reloads.want(t, 1, 1)
	writeFile(t, bundle, serial1)
	spare := filepath.Join(c.dir, "spare.json")
	writeFile(t, spare, c.mustRun("rsk", "--hsm", "soft:"+filepath.Join(c.dir, "spare"), "--region", "eu-west-1", "--partition", "cmdtest"))
	c.mustRun("bundle", "add", "-w", c.bundleJSON, spare)
	c.sign()
	reloads.want(t, 2, 1)
	serial2, err := os.ReadFile(bundle)
	if err != nil {
		t.Fatal(err)
	}

	// SIGHUP: every daemon reads the file again, changed or not.
	proc, err := os.FindProcess(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if err := proc.Signal(syscall.SIGHUP); err != nil {
		t.Skipf("cannot send SIGHUP here: %v", err)
	}
	reloads.want(t, 3, 1)

	// Rollback: the serial 1 bundle again (its RSKs, genuinely signed).
	writeFile(t, bundle, serial1)
	reloads.want(t, 3, 2)
	// Unsigned: the bare JSON bundle, as anyone who can write the file
	// can make.
	writeFile(t, bundle, goodJSON)
	reloads.want(t, 3, 3)
	// Signed by another root key, with a high serial.
	otherRoot := filepath.Join(c.dir, "other-root.key")
	c.mustRun("bundle", "root-key", "create", "--out", otherRoot)
	forged := filepath.Join(c.dir, "forged.cose")
	c.mustRun("bundle", "sign", "--root-key", otherRoot, "--serial", "99", "--out", forged, c.bundleJSON)
	copyFile(t, forged, bundle)
	reloads.want(t, 3, 4)
	// Another partition, signed by the partition's own root.
	otherJSON := filepath.Join(c.dir, "other.json")
	writeFile(t, otherJSON, bytes.Replace(goodJSON, []byte(`"partition": "cmdtest"`), []byte(`"partition": "other"`), 1))
	otherSigned := filepath.Join(c.dir, "other.cose")
	c.mustRun("bundle", "sign", "--root-key", c.rootKey, "--serial", "100", "--out", otherSigned, otherJSON)
	copyFile(t, otherSigned, bundle)
	reloads.want(t, 3, 5)
	// A new bundle re-using the serial in force (2).
	reused := filepath.Join(c.dir, "reused.cose")
	c.mustRun("bundle", "sign", "--root-key", c.rootKey, "--serial", "2", "--out", reused, filepath.Join(c.dir, "us-east-1.json"))
	copyFile(t, reused, bundle)
	reloads.want(t, 3, 6)
	// Through all that, serial 2 stayed in force: it is accepted again
	// (a higher serial would have made it older), and the daemons work.
	writeFile(t, bundle, serial2)
	reloads.want(t, 4, 6)
	c.replicate("eu-west-1", "us-east-1")
	c.shutdown()

	if data, err := os.ReadFile(filepath.Join(c.dir, "proxy.serial")); err != nil || string(data) != "2\n" {
		t.Errorf("the proxy's serial file: %q, %v; want 2", data, err)
	}
	for name, log := range logs {
		out := log.String()
		for _, want := range []string{`"msg":"watching the trust bundle file"`, `"trigger":"sighup"`, `"trigger":"changed"`,
			`"msg":"trust bundle not reloaded; the previous one stays in force"`,
			`"msg":"trust bundle in force"`, `"serial":2`,
			`trust bundle is not signed`, `trust bundle older than the one accepted: serial 1, the lowest accepted is 2`,
			`trust bundle not signed by the root key`, `trust bundle of another partition: partition \"other\", want \"cmdtest\"`,
			`serial 2 is in force with other content`} {
			if !strings.Contains(out, want) {
				t.Errorf("%s log lacks %s", name, want)
			}
		}
	}
}

// copyFile replaces dst with src's content atomically.
func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	data, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, dst, data)
}

// TestBundleRefusedAtStart: a worker and a proxy do not start on a bundle
// they would refuse at a reload (unsigned, signed by another root, of
// another partition, older than their serial file's), nor without a root
// key unless told --insecure-unsigned-bundle; nor on a password file
// readable by others. Each exits with the reason, before any connection.
func TestBundleRefusedAtStart(t *testing.T) {
	dir := t.TempDir()
	var stderr bytes.Buffer
	mrkrepl := func(args ...string) int {
		stderr.Reset()
		return run(t.Context(), args, io.Discard, &stderr)
	}
	must := func(args ...string) {
		if code := mrkrepl(args...); code != 0 {
			t.Fatalf("mrkrepl %v: %d %s", args, code, stderr.String())
		}
	}
	// A one-region bundle whose RSK is in a soft HSM.
	hsmDir := filepath.Join(dir, "hsm")
	frag := filepath.Join(dir, "frag.json")
	var out bytes.Buffer
	if code := run(t.Context(), []string{"rsk", "--hsm", "soft:" + hsmDir, "--region", "us-east-1", "--partition", "cmdtest"}, &out, &stderr); code != 0 {
		t.Fatal(stderr.String())
	}
	writeFile(t, frag, out.Bytes())
	root := filepath.Join(dir, "root.key")
	must("bundle", "root-key", "create", "--out", root, "--partition", "cmdtest")
	other := filepath.Join(dir, "other.key")
	must("bundle", "root-key", "create", "--out", other)
	good := filepath.Join(dir, "good.cose")
	must("bundle", "sign", "--root-key", root, "--out", good, "--serial", "5", frag)
	forged := filepath.Join(dir, "forged.cose")
	must("bundle", "sign", "--root-key", other, "--out", forged, "--serial", "6", frag)
	otherJSON := filepath.Join(dir, "other.json")
	data, _ := os.ReadFile(frag)
	writeFile(t, otherJSON, bytes.Replace(data, []byte(`"partition": "cmdtest"`), []byte(`"partition": "other"`), 1))
	otherPart := filepath.Join(dir, "other.cose")
	must("bundle", "sign", "--root-key", root, "--out", otherPart, "--serial", "7", otherJSON)
	serialFile := filepath.Join(dir, "serial")
	writeFile(t, serialFile, []byte("6\n"))
	pw := filepath.Join(dir, "pw")
	writeFile(t, pw, []byte("secret\n")) // mode 0644

	worker := []string{"worker", "--region", "us-east-1", "--hsm", "soft:" + hsmDir, "--nats-url", "nats://127.0.0.1:1"}
	proxy := []string{"proxy", "--region", "us-east-1=nats://127.0.0.1:1"}
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"no root key", []string{"--bundle", good}, "bundle_root_key (--bundle-root-key): required"},
		{"unsigned", []string{"--bundle", frag, "--bundle-root-key", root + ".pub"}, "trust bundle is not signed"},
		{"other root", []string{"--bundle", forged, "--bundle-root-key", root + ".pub"}, "trust bundle not signed by the root key"},
		{"other partition", []string{"--bundle", otherPart, "--bundle-root-key", root + ".pub"}, `trust bundle of another partition: partition "other", want "cmdtest"`},
		{"older than the serial file", []string{"--bundle", good, "--bundle-root-key", root + ".pub", "--bundle-serial-file", serialFile},
			"trust bundle older than the one accepted: serial 5, the lowest accepted is 6"},
		{"signed but insecure", []string{"--bundle", good, "--insecure-unsigned-bundle"}, "load bundle"},
		{"world-readable password", []string{"--bundle", good, "--bundle-root-key", root + ".pub", "--nats-user", "u", "--nats-password-file", pw},
			"mode 0644 is accessible by group or others"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, base := range [][]string{worker, proxy} {
				if code := mrkrepl(append(slices.Clone(base), tc.args...)...); code == 0 || !strings.Contains(stderr.String(), tc.want) {
					t.Errorf("%s: exit %d, want a refusal with %q:\n%s", base[0], code, tc.want, stderr.String())
				}
			}
		})
	}
}

// TestRSKRotationCommands rotates us-east-1's RSK, held in a SoftHSM2
// token, while its worker runs, with the commands docs/OPERATIONS.md lists:
// rsk create, bundle add, bundle retire, bundle remove; the daemons reload
// the bundle file after each step and replication keeps working.
func TestRSKRotationCommands(t *testing.T) {
	uri := softhsm.NewToken(t, "cmdrotation")
	u, err := url.Parse(uri)
	if err != nil {
		t.Fatal(err)
	}
	q := u.Query()
	q.Set("allow-host-kdf", "true")
	u.RawQuery = q.Encode()
	tokenURI := u.String()
	c := newCluster(t, "us-east-1", "eu-west-1")
	c.mustRun("hsm", "init", "--hsm", tokenURI)
	hsm := func(r string) []string {
		if r == "us-east-1" {
			return []string{"--hsm", tokenURI}
		}
		return []string{"--hsm", "soft:" + filepath.Join(c.dir, r, "hsm")}
	}
	bundle := c.bundle(hsm)
	frag, err := messages.LoadBundle(filepath.Join(c.dir, "us-east-1.json"))
	if err != nil {
		t.Fatal(err)
	}
	oldKID := hex.EncodeToString(frag.Keys()[0].KID)
	logs, reloads := c.startReloading(bundle, hsm)
	usBase := ""
	for base, s := range reloads {
		if strings.Contains(s, "us-east-1") {
			usBase = base
		}
	}
	c.replicate("us-east-1", "eu-west-1")

	// 1. A new RSK in the token, beside the one the worker uses; added to
	// the bundle, valid from now (no one else to wait for here).
	newFrag := filepath.Join(c.dir, "new.json")
	writeFile(t, newFrag, c.mustRun("rsk", "create", "--hsm", tokenURI, "--region", "us-east-1", "--partition", "cmdtest",
		"--not-before", "now", "--valid-for", "9000h"))
	nb, err := messages.LoadBundle(newFrag)
	if err != nil {
		t.Fatal(err)
	}
	newKey := nb.Keys()[0]
	c.mustRun("bundle", "add", "-w", c.bundleJSON, newFrag)
	c.sign()
	reloads.want(t, 1, 0)
	// The worker signs with it: its RSK expiry is the new key's.
	waitSeries(t, usBase, `mrkrepl_worker_rsk_expiry_timestamp_seconds{region="us-east-1"}`, float64(newKey.NotAfter.Unix()))
	c.replicate("us-east-1", "eu-west-1")
	c.replicate("eu-west-1", "us-east-1")

	// 2. Retire the old RSK, then remove it.
	c.mustRun("bundle", "retire", "-w", "--kid", oldKID[:16], c.bundleJSON)
	c.sign()
	reloads.want(t, 2, 0)
	c.replicate("us-east-1", "eu-west-1")
	c.mustRun("bundle", "remove", "-w", "--kid", oldKID, c.bundleJSON)
	c.sign()
	reloads.want(t, 3, 0)
	c.replicate("us-east-1", "eu-west-1")
	c.shutdown()

	us := logs["us-east-1"].String()
	signs := false
	for line := range strings.SplitSeq(us, "\n") {
		signs = signs || strings.Contains(line, `"msg":"signing with rsk"`) && strings.Contains(line, `"kid":"`+hex.EncodeToString(newKey.KID)+`"`)
	}
	if !signs {
		t.Errorf("the worker never logged that it signs with the new rsk:\n%.3000s", us)
	}
}

// TestWorkerWithoutJetStream runs a worker against a server without
// JetStream: it keeps retrying, and says exactly that in its log and in
// /readyz.
func TestWorkerWithoutJetStream(t *testing.T) {
	c := newCluster(t, "us-east-1", "eu-west-1")
	bundle := c.bundle(func(r string) []string { return []string{"--hsm", "soft:" + filepath.Join(c.dir, r, "hsm")} })
	s, err := server.NewServer(&server.Options{ServerName: "no-js", Host: "127.0.0.1", Port: server.RANDOM_PORT, NoLog: true, NoSigs: true})
	if err != nil {
		t.Fatal(err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("server not ready")
	}
	t.Cleanup(s.Shutdown)
	log := c.daemon("worker", "--region", "us-east-1", "--nats-url", s.ClientURL(), "--bundle", bundle,
		"--hsm", "soft:"+filepath.Join(c.dir, "us-east-1", "hsm"), "--metrics-addr", "127.0.0.1:0", "--log-format", "json")
	base := endpoint(t, log)
	deadline := time.Now().Add(20 * time.Second)
	for {
		code, body := httpGet(t, base+"/readyz")
		if code != 200 && strings.Contains(body, noJetStreamMessage) {
			break
		}
		if code == 200 || time.Now().After(deadline) {
			t.Fatalf("/readyz: %d %q, want 503 with %q", code, body, noJetStreamMessage)
		}
		time.Sleep(50 * time.Millisecond) // poll interval
	}
	if !strings.Contains(log.String(), `"level":"ERROR","msg":"worker did not start: `+noJetStreamMessage) {
		t.Errorf("log does not say the server has no JetStream:\n%s", log.String())
	}
	c.shutdown()
}
