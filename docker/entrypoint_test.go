package docker_test

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
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
)

// lockedBuffer collects a process's output while the test reads it.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestEntrypointBootstrap runs what the containers run, without Docker,
// against servers with the accounts of docker/nats/*.conf (the accounts
// block natsauth generates for them, parsed by nats-server, with the
// passwords passwords.sh makes, from the environment): the image's
// entrypoint (docker/entrypoint.sh) "bootstrap" for the three regions at
// once, each with its own SoftHSM2 token directory (its "volume") and the
// shared bundle directory; then, with the bundle directory read-only, the
// three workers with docker/config/worker.yaml (as NATS user worker, the
// region policy of docker/config/region-policy.json) and a proxy with
// docker/config/proxy.yaml (as user proxy), each with its password file and
// the environment compose sets (pointed at embedded single-node servers).
// It checks that the tokens are initialised, the RSKs made inside them, the
// bundle assembled; that the servers refuse a connection without a user;
// that the application user app of APP_DEMO creates a key (the region
// policy), which replicates across the three regions, and whose policy
// names it as the creator; and that a second start changes nothing.
func TestEntrypointBootstrap(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and runs five processes")
	}
	if err := softhsm.Available(); err != nil {
		softhsm.Unavailable(t, err)
	}
	module, err := softhsm.Module()
	if err != nil {
		softhsm.Unavailable(t, err)
	}
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Skip("no sh")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "bin")
	build := exec.Command("go", "build", "-o", filepath.Join(bin, "mrkrepl"), "../cmd/mrkrepl")
	build.Env = append(os.Environ(), "CGO_ENABLED=1")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	// The passwords, in the environment for the servers' configs and in
	// files for the daemons (compose's secrets).
	_, passwords := runPasswords(t)
	for k, v := range passwords {
		t.Setenv(k, v)
	}
	secrets := filepath.Join(dir, "secrets")
	if err := os.MkdirAll(secrets, 0o700); err != nil {
		t.Fatal(err)
	}
	secretFile := map[string]string{}
	for _, k := range dockerUsers() {
		account, user, _ := strings.Cut(k, "/")
		secretFile[user] = filepath.Join(secrets, secretOf[k])
		if err := os.WriteFile(secretFile[user], []byte(passwords[natsauth.EnvVar(account, user)]+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	urls := map[string]string{}
	for _, r := range regions {
		var o server.Options
		if err := o.ProcessConfigString(natsauth.MustConfig(dockerSpec(r))); err != nil {
			t.Fatalf("%s: accounts: %v", r, err)
		}
		o.ServerName, o.Host, o.Port, o.JetStream = r, "127.0.0.1", server.RANDOM_PORT, true
		o.StoreDir, o.NoLog, o.NoSigs = filepath.Join(dir, r, "js"), true, true
		s, err := server.NewServer(&o)
		if err != nil {
			t.Fatal(err)
		}
		go s.Start()
		if !s.ReadyForConnections(10 * time.Second) {
			t.Fatalf("%s not ready", r)
		}
		t.Cleanup(s.Shutdown)
		urls[r] = s.ClientURL()
	}
	bundleDir := filepath.Join(dir, "bundle")
	if err := os.MkdirAll(bundleDir, 0o755); err != nil {
		t.Fatal(err)
	}
	rootDir := filepath.Join(dir, "root") // the bootstraps' bundle-root volume
	if err := os.MkdirAll(rootDir, 0o700); err != nil {
		t.Fatal(err)
	}
	workerConfig, _ := filepath.Abs("config/worker.yaml")
	regionPolicy, _ := filepath.Abs("config/region-policy.json")
	proxyConfig, _ := filepath.Abs("config/proxy.yaml")
	entrypoint, _ := filepath.Abs("entrypoint.sh")
	baseEnv := func() []string {
		var env []string
		for _, kv := range os.Environ() {
			if !strings.HasPrefix(kv, "MRKREPL_") && !strings.HasPrefix(kv, "BOOTSTRAP_") && !strings.HasPrefix(kv, "SOFTHSM2_CONF=") {
				env = append(env, kv)
			}
		}
		return append(env,
			"PATH="+bin+string(os.PathListSeparator)+os.Getenv("PATH"),
			"BOOTSTRAP_BUNDLE_DIR="+bundleDir,
			"BOOTSTRAP_ROOT_DIR="+rootDir,
			"BOOTSTRAP_PARTITION=dockertest",
			"BOOTSTRAP_REGIONS="+strings.Join(regions, " "),
			"BOOTSTRAP_TIMEOUT=60",
			// What the compose file's paths become outside a container.
			"MRKREPL_BUNDLE="+filepath.Join(bundleDir, "bundle.cose"),
			"MRKREPL_BUNDLE_ROOT_KEY="+filepath.Join(bundleDir, "root.pub"),
			"MRKREPL_REPLICAS=1", // single-node test servers
			"MRKREPL_METRICS_ADDR=127.0.0.1:0",
		)
	}
	workerEnv := func(r string) []string {
		tokens := filepath.Join(dir, r, "tokens")
		if err := os.MkdirAll(tokens, 0o700); err != nil {
			t.Fatal(err)
		}
		conf := filepath.Join(dir, r, "softhsm2.conf")
		if err := os.WriteFile(conf, []byte("directories.tokendir = "+tokens+"/\nobjectstore.backend = file\nlog.level = ERROR\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		return append(baseEnv(),
			"SOFTHSM2_CONF="+conf,
			"BOOTSTRAP_TOKENS="+tokens,
			"MRKREPL_REGION="+r,
			"MRKREPL_NATS_URL="+urls[r],
			"MRKREPL_HSM=pkcs11:token=mrkrepl-"+r+"?module-path="+module+"&allow-host-kdf=true",
			"MRKREPL_PIN_FILE="+filepath.Join(tokens, "user.pin"),
			"MRKREPL_BUNDLE_SERIAL_FILE="+filepath.Join(tokens, "bundle.serial"),
			// /run/secrets/nats_worker_password, /etc/mrkrepl/region-policy.json
			"MRKREPL_NATS_PASSWORD_FILE="+secretFile[natsauth.UserWorker],
			"MRKREPL_REGION_POLICY="+regionPolicy,
		)
	}
	// readOnly makes the bundle directory read-only (the workers' and
	// proxies' mounts) or writable again (the bootstrap's).
	readOnly := func(ro bool) {
		t.Helper()
		dirMode, fileMode := os.FileMode(0o755), os.FileMode(0o644)
		if ro {
			dirMode, fileMode = 0o555, 0o444
		}
		err := filepath.WalkDir(bundleDir, func(path string, d os.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if d.IsDir() {
				return os.Chmod(path, dirMode)
			}
			return os.Chmod(path, fileMode)
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() { readOnly(false) })
	// snapshot lists the bundle directory (names, contents, times), to
	// check that the workers and the proxy write nothing there even where
	// the mode does not stop them (tests run as root).
	snapshot := func() string {
		t.Helper()
		var b strings.Builder
		err := filepath.WalkDir(bundleDir, func(path string, d os.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return err
			}
			fi, err := d.Info()
			if err != nil {
				return err
			}
			data, err := os.ReadFile(path)
			fmt.Fprintf(&b, "%s %s %x\n", path, fi.ModTime(), data)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		return b.String()
	}

	type proc struct {
		name string
		cmd  *exec.Cmd
		out  *lockedBuffer
		done chan error
	}
	start := func(name string, env []string, args ...string) *proc {
		p := &proc{name: name, out: &lockedBuffer{}, done: make(chan error, 1)}
		p.cmd = exec.Command(sh, append([]string{entrypoint}, args...)...)
		p.cmd.Env, p.cmd.Stdout, p.cmd.Stderr = env, p.out, p.out
		if err := p.cmd.Start(); err != nil {
			t.Fatal(err)
		}
		go func() { p.done <- p.cmd.Wait() }()
		return p
	}
	// stop interrupts a daemon (the entrypoint exec'd it) and wants exit 0.
	stop := func(p *proc) {
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-p.done:
			if err != nil {
				t.Errorf("%s exited with %v:\n%s", p.name, err, p.out.String())
			}
		case <-time.After(20 * time.Second):
			_ = p.cmd.Process.Kill()
			t.Errorf("%s did not stop", p.name)
		}
	}
	// readyURL waits for a daemon's metrics URL (JSON log), then for
	// /readyz to answer 200.
	readyURL := func(p *proc) string {
		t.Helper()
		deadline := time.Now().Add(90 * time.Second)
		base := ""
		for time.Now().Before(deadline) {
			select {
			case err := <-p.done:
				t.Fatalf("%s exited (%v):\n%s", p.name, err, p.out.String())
			default:
			}
			if base == "" {
				for line := range strings.SplitSeq(p.out.String(), "\n") {
					var rec struct{ Metrics string }
					if json.Unmarshal([]byte(line), &rec) == nil && rec.Metrics != "" {
						base = strings.TrimSuffix(rec.Metrics, "/metrics")
					}
				}
			}
			if base != "" {
				if resp, err := http.Get(base + "/readyz"); err == nil {
					resp.Body.Close()
					if resp.StatusCode == 200 {
						return base
					}
				}
			}
			time.Sleep(100 * time.Millisecond)
		}
		t.Fatalf("%s not ready:\n%s", p.name, p.out.String())
		return ""
	}

	runOnce := func(round int) (kids map[string]string) {
		// The one-shot bootstrap containers, at once.
		readOnly(false)
		var boots []*proc
		for _, r := range regions {
			boots = append(boots, start(fmt.Sprintf("bootstrap %s (start %d)", r, round), workerEnv(r), "bootstrap"))
		}
		for _, b := range boots {
			select {
			case err := <-b.done:
				if err != nil {
					t.Fatalf("%s: %v\n%s", b.name, err, b.out.String())
				}
			case <-time.After(90 * time.Second):
				_ = b.cmd.Process.Kill()
				t.Fatalf("%s did not finish:\n%s", b.name, b.out.String())
			}
		}
		readOnly(true)
		bootstrapped := snapshot()
		var workers []*proc
		for _, r := range regions {
			workers = append(workers, start(fmt.Sprintf("worker %s (start %d)", r, round), workerEnv(r),
				"worker", "--config", workerConfig))
		}
		for _, w := range workers {
			readyURL(w)
		}
		var regionEnv []string
		for _, r := range regions {
			regionEnv = append(regionEnv, r+"="+urls[r])
		}
		px := start(fmt.Sprintf("proxy (start %d)", round),
			append(baseEnv(), "MRKREPL_REGION="+strings.Join(regionEnv, " "), "MRKREPL_HEARTBEAT_INTERVAL=500ms", "MRKREPL_HEARTBEAT_TIMEOUT=500ms",
				"MRKREPL_NATS_PASSWORD_FILE="+secretFile[natsauth.UserProxy]),
			"proxy", "--config", proxyConfig)
		readyURL(px)

		ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
		defer cancel()
		if nc, err := nats.Connect(urls["us-east-1"]); err == nil {
			nc.Close()
			t.Fatal("a server of the accounts accepts a connection without a user")
		}
		app := natsauth.DefaultApp.Users[0]
		nc, err := nats.Connect(urls["us-east-1"], nats.UserInfo(app, passwords[natsauth.EnvVar(natsauth.DefaultApp.Account, app)]))
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		us := client.New(nc, "us-east-1")
		key, err := us.CreateKey(ctx, api.CreateKeyRequest{Description: "docker bootstrap"})
		if err != nil {
			t.Fatalf("start %d: create-key as %s/%s: %v", round, natsauth.DefaultApp.Account, app, err)
		}
		if pol, err := us.GetKeyPolicy(ctx, key.KeyID); err != nil || !strings.Contains(pol, `"`+natsauth.Key(natsauth.DefaultApp.Account, app)+`"`) {
			t.Errorf("start %d: the key's policy does not name its creator %s/%s: %v\n%s", round, natsauth.DefaultApp.Account, app, err, pol)
		}
		for _, dst := range regions[1:] {
			rep, err := us.ReplicateKey(ctx, key.KeyID, dst)
			if err != nil {
				t.Fatal(err)
			}
			if rep, err = us.WaitReplication(ctx, rep.ReplicationID); err != nil || rep.State != api.StateCompleted {
				t.Fatalf("start %d: replicate to %s: %v %+v\nproxy:\n%s", round, dst, err, rep, px.out.String())
			}
		}
		stop(px)
		for _, w := range workers {
			stop(w)
		}
		if snapshot() != bootstrapped {
			t.Errorf("start %d: the workers or the proxy wrote into the bundle directory", round)
		}
		b, err := messages.LoadBundle(filepath.Join(bundleDir, "bundle.json"))
		if err != nil {
			t.Fatal(err)
		}
		// What the daemons read is that bundle signed by the root key,
		// serial 1 however often the bootstraps run (three at once).
		signed, err := os.ReadFile(filepath.Join(bundleDir, "bundle.cose"))
		if err != nil {
			t.Fatal(err)
		}
		pubPEM, err := os.ReadFile(filepath.Join(bundleDir, "root.pub"))
		if err != nil {
			t.Fatal(err)
		}
		blk, _ := pem.Decode(pubPEM)
		if blk == nil || blk.Headers["Partition"] != "dockertest" {
			t.Fatalf("root.pub: %q", pubPEM)
		}
		rootPub, err := x509.ParsePKIXPublicKey(blk.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		sb, err := messages.VerifySignedBundle(signed, rootPub, 1)
		if err != nil || sb.Serial != 1 {
			t.Fatalf("start %d: bundle.cose: %v (%+v)", round, err, sb)
		}
		if want, _ := os.ReadFile(filepath.Join(bundleDir, "bundle.json")); !bytes.Equal(sb.JSON, want) {
			t.Errorf("start %d: bundle.cose does not hold bundle.json", round)
		}
		if fi, err := os.Stat(filepath.Join(rootDir, "root.key")); err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("root key: %v %v, want mode 0600", fi, err)
		}
		kids = map[string]string{}
		for _, k := range b.Keys() {
			kids[k.Region] += fmt.Sprintf("%x ", k.KID)
		}
		if len(kids) != len(regions) {
			t.Fatalf("bundle has RSKs for %v", kids)
		}
		if testing.Verbose() {
			t.Logf("%s:\n%s", boots[0].name, boots[0].out.String())
			t.Logf("%s:\n%s", workers[0].name, workers[0].out.String())
		}
		for _, w := range workers {
			if !strings.Contains(w.out.String(), "pkcs11 hsm opened") {
				t.Errorf("%s did not open its token:\n%s", w.name, w.out.String())
			}
		}
		return kids
	}
	first := runOnce(1)
	for _, r := range regions {
		pin := filepath.Join(dir, r, "tokens", "user.pin")
		if fi, err := os.Stat(pin); err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: PIN file %v %v, want mode 0600", r, fi.Mode(), err)
		}
	}
	// A restart (same volumes) keeps the tokens, the RSKs and the bundle.
	second := runOnce(2)
	for r, k := range first {
		if second[r] != k {
			t.Errorf("%s: RSK changed across restarts: %s → %s", r, k, second[r])
		}
	}
}
