package netns

// The harness: network namespaces joined by veth links, sockets opened
// inside them from this process (setns on a locked OS thread), and child
// processes run inside them with `ip netns exec`. Nothing here routes off
// the machine: the namespaces have no default route, and their addresses
// exist only inside them.

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// requireEnv turns a skip into a failure, as MRKREPL_REQUIRE_SOFTHSM does.
const requireEnv = "MRKREPL_REQUIRE_NETNS"

// skipUnlessNetns skips (or fails, under MRKREPL_REQUIRE_NETNS=1) unless
// this process can make network namespaces with ip and nft.
func skipUnlessNetns(t *testing.T) {
	t.Helper()
	why := func() string {
		if runtime.GOOS != "linux" {
			return "network namespaces are Linux only"
		}
		if os.Geteuid() != 0 {
			return "needs root (network namespaces, veth links, nftables)"
		}
		for _, tool := range []string{"ip", "nft"} {
			if _, err := exec.LookPath(tool); err != nil {
				return tool + " not in PATH (apt-get install iproute2 nftables)"
			}
		}
		probe := fmt.Sprintf("mrk-%d-probe", os.Getpid())
		if out, err := exec.Command("ip", "netns", "add", probe).CombinedOutput(); err != nil {
			return fmt.Sprintf("cannot create a network namespace: %v: %s", err, strings.TrimSpace(string(out)))
		}
		defer exec.Command("ip", "netns", "del", probe).Run()
		if out, err := exec.Command("ip", "netns", "exec", probe, "nft", "add", "table", "inet", "probe").CombinedOutput(); err != nil {
			return fmt.Sprintf("nft does not work in a namespace: %v: %s", err, strings.TrimSpace(string(out)))
		}
		return ""
	}()
	if why == "" {
		return
	}
	if os.Getenv(requireEnv) == "1" {
		t.Fatalf("network namespace suite required (%s=1) but unavailable: %s", requireEnv, why)
	}
	t.Skipf("skipping the network namespace suite: %s (set %s=1 to make this a failure)", why, requireEnv)
}

// run runs a command and fails the test if it fails.
func run(t testing.TB, name string, args ...string) {
	t.Helper()
	if err := runErr(name, args...); err != nil {
		t.Fatal(err)
	}
}

func runErr(name string, args ...string) error {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// removeStaleNamespaces deletes the namespaces of earlier runs whose
// process is gone (a run killed before its cleanup).
func removeStaleNamespaces(t *testing.T) {
	entries, _ := os.ReadDir("/run/netns")
	for _, e := range entries {
		var pid int
		var rest string
		if n, _ := fmt.Sscanf(e.Name(), "mrk-%d-%s", &pid, &rest); n != 2 {
			continue
		}
		if pid == os.Getpid() || syscall.Kill(pid, 0) == nil {
			continue
		}
		if err := runErr("ip", "netns", "del", e.Name()); err == nil {
			t.Logf("removed stale namespace %s", e.Name())
		}
	}
}

// addNamespace creates a namespace with its loopback up, removed in cleanup
// (which also removes its veth ends, and so the links).
func addNamespace(t *testing.T, name string) {
	run(t, "ip", "netns", "add", name)
	t.Cleanup(func() {
		if err := runErr("ip", "netns", "del", name); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	run(t, "ip", "-n", name, "link", "set", "lo", "up")
}

// addLink joins two namespaces with a veth pair, aName/aAddr in a and
// bName/bAddr in b (CIDR addresses of one /30).
func addLink(t *testing.T, a, aName, aAddr, b, bName, bAddr string) {
	run(t, "ip", "-n", a, "link", "add", aName, "type", "veth", "peer", "name", bName, "netns", b)
	run(t, "ip", "-n", a, "addr", "add", aAddr, "dev", aName)
	run(t, "ip", "-n", b, "addr", "add", bAddr, "dev", bName)
	run(t, "ip", "-n", a, "link", "set", aName, "up")
	run(t, "ip", "-n", b, "link", "set", bName, "up")
}

// inNamespace runs fn on an OS thread moved into namespace ns; sockets fn
// opens stay in ns for their whole life.
func inNamespace(ns string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()))
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer orig.Close()
		target, err := os.Open(filepath.Join("/run/netns", ns))
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer target.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("setns %s: %w", ns, err)
			return
		}
		ferr := fn()
		if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
			// Leave the thread locked: it ends with this goroutine.
			errc <- errors.Join(ferr, fmt.Errorf("setns back: %w", err))
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// nsDialer dials from inside a namespace.
type nsDialer string

func (ns nsDialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := inNamespace(string(ns), func() error {
		var err error
		c, err = (&net.Dialer{Timeout: 5 * time.Second}).DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// Dial is nats.CustomDialer's method.
func (ns nsDialer) Dial(network, addr string) (net.Conn, error) {
	return ns.DialContext(context.Background(), network, addr)
}

// httpClient is an HTTP client whose connections are made inside ns.
func (ns nsDialer) httpClient() *http.Client {
	return &http.Client{
		Timeout:   5 * time.Second,
		Transport: &http.Transport{DialContext: ns.DialContext, DisableKeepAlives: true},
	}
}

// proc is a child process run inside a namespace, restartable.
type proc struct {
	name, ns string
	argv     []string
	env      []string
	logPath  string
	ready    func(context.Context) error // nil: ready when started

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
}

// start starts the process (appending to its log); it does not wait for
// readiness.
func (p *proc) start() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd != nil {
		return fmt.Errorf("%s already running", p.name)
	}
	log, err := os.OpenFile(p.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	fmt.Fprintf(log, "=== %s start %s\n", time.Now().Format(time.RFC3339Nano), strings.Join(p.argv, " "))
	cmd := exec.Command("ip", append([]string{"netns", "exec", p.ns}, p.argv...)...)
	cmd.Env = append(os.Environ(), p.env...)
	cmd.Stdout, cmd.Stderr = log, log
	// ip netns exec execs the program in place (same pid), so the kill
	// below reaches it; and it dies with the test process.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := cmd.Start(); err != nil {
		log.Close()
		return fmt.Errorf("start %s: %w", p.name, err)
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		log.Close()
		close(done)
	}()
	p.cmd, p.done = cmd, done
	return nil
}

// kill sends SIGKILL and waits for the process to be gone.
func (p *proc) kill() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return
	}
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	<-p.done
	p.cmd, p.done = nil, nil
}

// running reports whether the process is running now.
func (p *proc) running() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return false
	}
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// waitReady polls the process's readiness until ctx ends; an exit is an
// error at once.
func (p *proc) waitReady(ctx context.Context) error {
	if p.ready == nil {
		return nil
	}
	var last error
	for {
		p.mu.Lock()
		done := p.done
		p.mu.Unlock()
		if done == nil {
			return fmt.Errorf("%s is not running", p.name)
		}
		select {
		case <-done:
			return fmt.Errorf("%s exited (log %s):\n%s", p.name, p.logPath, tail(p.logPath, 15))
		default:
		}
		cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		last = p.ready(cctx)
		cancel()
		if last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s not ready: %v (log %s):\n%s", p.name, last, p.logPath, tail(p.logPath, 15))
		case <-time.After(100 * time.Millisecond): // poll interval
		}
	}
}

// httpReady is a readiness check: GET url from inside ns answers 200.
func httpReady(ns, url string) func(context.Context) error {
	c := nsDialer(ns).httpClient()
	return func(ctx context.Context) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		resp, err := c.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			var b strings.Builder
			sc := bufio.NewScanner(resp.Body)
			for sc.Scan() && b.Len() < 300 {
				b.WriteString(sc.Text())
			}
			return fmt.Errorf("%s: %s: %s", url, resp.Status, b.String())
		}
		return nil
	}
}

// tail returns the last n lines of a file.
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
