// Package natstest starts a throwaway embedded nats-server for tests and
// benchmarks of packages that mrkrepltest itself imports (workers, proxy,
// layout), which therefore cannot use it.
package natstest

import (
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// Start runs a nats-server named name with JetStream on a random loopback
// port (its data in a temporary directory of tb), connects to it, and
// closes both when tb ends.
func Start(tb testing.TB, name string) (*server.Server, *nats.Conn) {
	tb.Helper()
	s, err := server.NewServer(&server.Options{
		ServerName: name, Host: "127.0.0.1", Port: server.RANDOM_PORT,
		JetStream: true, StoreDir: tb.TempDir(), NoLog: true, NoSigs: true,
	})
	if err != nil {
		tb.Fatal(err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		tb.Fatalf("nats-server %s not ready", name)
	}
	tb.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
	nc, err := nats.Connect(s.ClientURL())
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(nc.Close)
	return s, nc
}
