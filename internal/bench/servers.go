package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// With Config.SeparateServers each region's nats-server runs in a process
// of its own, as in a deployment: the benchmark's process then holds only
// the workers, the proxy and the benchmark, and the servers' memory and
// CPU are measured apart (from /proc). The server process is this same
// executable started again with serverEnv naming its JetStream directory;
// the program's main (and TestMain of a test that uses SeparateServers)
// must call ServeNATSIfChild first.
const serverEnv = "MRKREPL_BENCH_NATS_SERVER"

// ServeNATSIfChild makes this process a benchmark's region server when the
// benchmark started it as one (SeparateServers), and then never returns:
// it runs an embedded nats-server with JetStream on 127.0.0.1 (random
// client and monitoring ports, which it prints as one JSON line on
// stdout) until its stdin is closed, then shuts the server down and exits.
// Otherwise it returns at once.
func ServeNATSIfChild() {
	dir := os.Getenv(serverEnv)
	if dir == "" {
		return
	}
	if err := serveNATS(dir, os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "bench nats-server:", err)
		os.Exit(1)
	}
	os.Exit(0)
}

// serverHello is the line a server process prints once it is ready.
type serverHello struct {
	URL     string `json:"url"`
	Monitor string `json:"monitor"`
}

func serveNATS(dir string, stdin io.Reader, stdout io.Writer) error {
	s, err := server.NewServer(&server.Options{
		ServerName: filepath.Base(filepath.Dir(dir)),
		Host:       "127.0.0.1", Port: server.RANDOM_PORT,
		HTTPHost: "127.0.0.1", HTTPPort: server.RANDOM_PORT,
		JetStream: true, StoreDir: dir,
		NoLog: true, NoSigs: true,
	})
	if err != nil {
		return err
	}
	go s.Start()
	defer func() {
		s.Shutdown()
		s.WaitForShutdown()
	}()
	if !s.ReadyForConnections(10 * time.Second) {
		return errors.New("not ready after 10s")
	}
	mon := s.MonitorAddr()
	if mon == nil {
		return errors.New("no monitoring address")
	}
	if err := json.NewEncoder(stdout).Encode(serverHello{URL: s.ClientURL(), Monitor: "http://" + mon.String()}); err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, stdin) // until the benchmark closes it, or exits
	return nil
}

// serverProc is a region's server running in its own process.
type serverProc struct {
	region string
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	hello  serverHello
	exited chan struct{}
}

// startServerProc starts region's server process with its JetStream data
// under dir and waits until it is ready.
func startServerProc(ctx context.Context, region, dir string) (*serverProc, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("region %s: server process: %w", region, err)
	}
	store := filepath.Join(dir, region, "jetstream")
	if err := os.MkdirAll(store, 0o700); err != nil {
		return nil, fmt.Errorf("region %s: server process: %w", region, err)
	}
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), serverEnv+"="+store)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("region %s: server process: %w", region, err)
	}
	p := &serverProc{region: region, cmd: cmd, stdin: stdin, exited: make(chan struct{})}
	hello := make(chan error, 1)
	go func() {
		line, err := bufio.NewReader(stdout).ReadBytes('\n')
		if err == nil {
			err = json.Unmarshal(line, &p.hello)
		}
		hello <- err
		_, _ = io.Copy(io.Discard, stdout)
	}()
	go func() { _ = cmd.Wait(); close(p.exited) }()
	select {
	case err = <-hello:
	case <-ctx.Done():
		err = ctx.Err()
	case <-time.After(30 * time.Second):
		err = errors.New("not ready after 30s")
	}
	if err == nil && p.hello.URL == "" {
		err = errors.New("it printed no url (is ServeNATSIfChild called first in main?)")
	}
	if err != nil {
		p.stop()
		return nil, fmt.Errorf("region %s: server process: %w", region, err)
	}
	return p, nil
}

// stop closes the process's stdin, which shuts its server down, and waits
// for it to exit (killing it after 10s).
func (p *serverProc) stop() {
	_ = p.stdin.Close()
	select {
	case <-p.exited:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.exited
	}
}

// msgs returns the messages the server received from and sent to its
// clients (its /varz).
func (p *serverProc) msgs() (in, out int64, err error) {
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(p.hello.Monitor + "/varz")
	if err != nil {
		return 0, 0, err
	}
	defer resp.Body.Close()
	var v struct {
		InMsgs  int64 `json:"in_msgs"`
		OutMsgs int64 `json:"out_msgs"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&v); err != nil {
		return 0, 0, err
	}
	return v.InMsgs, v.OutMsgs, nil
}

// cpu returns the CPU time the process has used so far (0 where /proc is
// absent).
func (p *serverProc) cpu() time.Duration { return procCPU(p.cmd.Process.Pid) }

// peakRSS returns the process's peak resident set size (0 where /proc is
// absent).
func (p *serverProc) peakRSS() uint64 { return procPeakRSS(p.cmd.Process.Pid) }
