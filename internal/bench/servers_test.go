package bench

import (
	"os"
	"strings"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// TestMain lets the test binary serve as a region's server process for
// TestRunSeparateServers (ServeNATSIfChild, as mrkrepl's main does).
func TestMain(m *testing.M) {
	ServeNATSIfChild()
	os.Exit(m.Run())
}

// TestRunSeparateServers runs the servers in processes of their own: every
// replication completes through them, their memory, CPU and message
// counts are read from the processes.
func TestRunSeparateServers(t *testing.T) {
	res := runSmall(t, Config{Count: 4, Concurrency: 2, Regions: 2, SeparateServers: true})
	if !res.SeparateServers || len(res.ServerPeakRSSBytes) != 2 {
		t.Fatalf("separate_servers %v, server_peak_rss_bytes %v: want both regions", res.SeparateServers, res.ServerPeakRSSBytes)
	}
	for region, rss := range res.ServerPeakRSSBytes {
		// An idle nats-server with JetStream is well above 4 MiB; a 0
		// means the figure was not read from the process.
		if rss < 4<<20 {
			t.Errorf("peak rss of %s's server %d bytes", region, rss)
		}
	}
	if !(res.ServerCPUSeconds > 0) || res.ServerCPUSeconds >= res.CPUSeconds {
		t.Errorf("server cpu %.3fs of %.3fs in all: want a positive part", res.ServerCPUSeconds, res.CPUSeconds)
	}
	if !(res.NATSInMsgsPerReplication > 0) {
		t.Errorf("nats messages per replication %v: the servers' /varz was not read", res.NATSInMsgsPerReplication)
	}
	var sb strings.Builder
	if err := res.WriteTable(&sb); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(sb.String(), "peak rss servers") {
		t.Errorf("table lacks the servers' peak rss:\n%s", sb.String())
	}
}

// TestServerProcStartStop: a server process serves JetStream on loopback
// and exits when stopped.
func TestServerProcStartStop(t *testing.T) {
	p, err := startServerProc(t.Context(), "r-1", t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(p.hello.URL, "nats://127.0.0.1:") || !strings.HasPrefix(p.hello.Monitor, "http://127.0.0.1:") {
		t.Errorf("server at %q, monitor %q: want loopback", p.hello.URL, p.hello.Monitor)
	}
	nc, err := nats.Connect(p.hello.URL)
	if err != nil {
		t.Fatal(err)
	}
	js, _ := jetstream.New(nc)
	if _, err := js.AccountInfo(t.Context()); err != nil {
		t.Errorf("jetstream: %v", err)
	}
	nc.Close()
	p.stop()
	select {
	case <-p.exited:
	default:
		t.Fatal("the process is still running after stop")
	}
	if !p.cmd.ProcessState.Success() {
		t.Errorf("the process exited with %v, want 0 (stdin closed: clean shutdown)", p.cmd.ProcessState)
	}
}

// TestServerProcFailsClearly: a server process that cannot start reports
// why, instead of hanging.
func TestServerProcFailsClearly(t *testing.T) {
	// A file where the JetStream directory should be.
	dir := t.TempDir()
	if err := os.WriteFile(dir+"/x", nil, 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := startServerProc(t.Context(), "x", dir+"/x")
	if err == nil || !strings.Contains(err.Error(), "region x: server process") {
		t.Fatalf("error %v, want one naming the region's server process", err)
	}
}
