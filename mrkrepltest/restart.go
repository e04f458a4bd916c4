package mrkrepltest

import (
	"context"
	"fmt"
	"net"
	"time"

	"github.com/mrkrepl/mrkrepl/client"
	"github.com/mrkrepl/mrkrepl/proxy"
	"github.com/mrkrepl/mrkrepl/workers"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
)

// Faults for tests: components can be stopped abruptly and started again.
// Servers keep their port and JetStream data across restarts; workers keep
// their HSM (the HSM is the region's device, not the worker's).

func (p *Partition) startServer(r *Region) error {
	s, err := server.NewServer(&server.Options{
		ServerName: r.Name,
		Host:       "127.0.0.1",
		Port:       r.port,
		JetStream:  true,
		StoreDir:   r.storeDir,
		NoLog:      true,
		NoSigs:     true,
	})
	if err != nil {
		return fmt.Errorf("region %s: nats server: %w", r.Name, err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		s.Shutdown()
		return fmt.Errorf("region %s: nats server not ready after 10s", r.Name)
	}
	r.Server = s
	r.URL = s.ClientURL()
	if a, ok := s.Addr().(*net.TCPAddr); ok {
		r.port = a.Port
	}
	return nil
}

func (p *Partition) startWorker(ctx context.Context, r *Region, reg prometheus.Registerer) error {
	nc, err := p.Connect(r.Name, "worker")
	if err != nil {
		return err
	}
	w, err := workers.New(workers.Config{
		Region: r.Name, Bundle: p.Bundle, HSM: r.HSM, Conn: nc,
		Logger: p.opts.Logger, Registerer: wrap(reg, "instance", "worker-"+r.Name),
		MessageTTL: p.opts.MessageTTL, Concurrency: p.opts.Concurrency,
		RunTimeout: p.opts.RunTimeout, MaxAttempts: p.opts.MaxAttempts, SweepInterval: p.opts.SweepInterval,
	})
	if err != nil {
		nc.Close()
		return err
	}
	if err := w.Start(ctx); err != nil {
		nc.Close()
		return err
	}
	r.Conn, r.Worker = nc, w
	r.Client = client.New(nc, r.Name)
	return nil
}

func (p *Partition) startProxy(ctx context.Context, reg prometheus.Registerer) error {
	conns := map[string]*nats.Conn{}
	for _, r := range p.regions {
		nc, err := p.Connect(r.Name, "proxy")
		if err != nil {
			return err
		}
		conns[r.Name] = nc
	}
	px, err := proxy.New(proxy.Config{
		Bundle: p.Bundle, Conns: conns, Logger: p.opts.Logger,
		Registerer: wrap(reg, "instance", "proxy"),
		Delay:      map[string]time.Duration{"*": p.opts.ProxyDelay}, Concurrency: p.opts.Concurrency,
	})
	if err != nil {
		return err
	}
	if err := px.Start(ctx); err != nil {
		return err
	}
	p.Proxy, p.proxyConns = px, conns
	return nil
}

// StopServer shuts a region's nats-server down (its data stays on disk):
// the region is cut off from its workers, clients and the proxy.
func (p *Partition) StopServer(region string) {
	r := p.Region(region)
	if r == nil || r.Server == nil {
		return
	}
	r.Server.Shutdown()
	r.Server.WaitForShutdown()
	r.Server = nil
}

// StartServer starts a stopped region's server again on the same port with
// the same data; connections reconnect by themselves.
func (p *Partition) StartServer(region string) error {
	r := p.Region(region)
	if r == nil {
		return fmt.Errorf("no region %q", region)
	}
	if r.Server != nil {
		return nil
	}
	return p.startServer(r)
}

// KillWorker stops a region's worker as a crash would: its connection is
// closed first, so whatever it was doing fails half-way.
func (p *Partition) KillWorker(region string) {
	r := p.Region(region)
	if r == nil || r.Worker == nil {
		return
	}
	r.Conn.Close()
	r.Worker.Stop()
	r.Worker = nil
}

// StartWorker starts a new worker for a region whose worker was killed. It
// registers no metrics (a restarted process would have a new registry).
func (p *Partition) StartWorker(ctx context.Context, region string) error {
	r := p.Region(region)
	if r == nil {
		return fmt.Errorf("no region %q", region)
	}
	if r.Worker != nil {
		return nil
	}
	return p.startWorker(ctx, r, nil)
}

// KillProxy stops the proxy as a crash would (connections closed first).
func (p *Partition) KillProxy() {
	if p.Proxy == nil {
		return
	}
	for _, nc := range p.proxyConns {
		nc.Close()
	}
	p.Proxy.Stop()
	p.Proxy = nil
}

// StartProxy starts a new proxy after KillProxy (or with NoProxy).
func (p *Partition) StartProxy(ctx context.Context) error {
	if p.Proxy != nil {
		return nil
	}
	return p.startProxy(ctx, nil)
}
