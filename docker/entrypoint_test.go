package docker_test

import (
	"bytes"
	"context"
	"encoding/json"
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

// TestEntrypointBootstrap runs what the containers run, without Docker: the
// image's entrypoint (docker/entrypoint.sh) for the three workers at once,
// each with its own SoftHSM2 token directory (its "volume") and the shared
// bundle directory, with docker/config/worker.yaml and the environment
// compose sets (pointed at embedded single-node servers); then the
// entrypoint for a proxy with docker/config/proxy.yaml. It checks that the
// tokens are initialised, the RSKs made inside them, the bundle assembled,
// that a key replicates across the three regions, and that a second start
// changes nothing.
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
	urls := map[string]string{}
	for _, r := range regions {
		s, err := server.NewServer(&server.Options{
			ServerName: r, Host: "127.0.0.1", Port: server.RANDOM_PORT, JetStream: true,
			StoreDir: filepath.Join(dir, r, "js"), NoLog: true, NoSigs: true,
		})
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
	workerConfig, _ := filepath.Abs("config/worker.yaml")
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
			"BOOTSTRAP_PARTITION=dockertest",
			"BOOTSTRAP_REGIONS="+strings.Join(regions, " "),
			"BOOTSTRAP_TIMEOUT=60",
			// What the compose file's paths become outside a container.
			"MRKREPL_BUNDLE="+filepath.Join(bundleDir, "bundle.json"),
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
		)
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
			append(baseEnv(), "MRKREPL_REGION="+strings.Join(regionEnv, " "), "MRKREPL_HEARTBEAT_INTERVAL=500ms", "MRKREPL_HEARTBEAT_TIMEOUT=500ms"),
			"proxy", "--config", proxyConfig)
		readyURL(px)

		ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
		defer cancel()
		nc, err := nats.Connect(urls["us-east-1"])
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		us := client.New(nc, "us-east-1")
		key, err := us.CreateKey(ctx, api.CreateKeyRequest{Description: "docker bootstrap"})
		if err != nil {
			t.Fatal(err)
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
		b, err := messages.LoadBundle(filepath.Join(bundleDir, "bundle.json"))
		if err != nil {
			t.Fatal(err)
		}
		kids = map[string]string{}
		for _, k := range b.Keys() {
			kids[k.Region] += fmt.Sprintf("%x ", k.KID)
		}
		if len(kids) != len(regions) {
			t.Fatalf("bundle has RSKs for %v", kids)
		}
		if testing.Verbose() {
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
