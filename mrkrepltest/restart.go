package mrkrepltest

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"time"

	"github.com/mrkrepl/mrkrepl/client"
	"github.com/mrkrepl/mrkrepl/internal/layout"
	"github.com/mrkrepl/mrkrepl/internal/natsauth"
	"github.com/mrkrepl/mrkrepl/proxy"
	"github.com/mrkrepl/mrkrepl/workers"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
)

// Faults for tests: components can be stopped abruptly and started again.
// Servers keep their port and JetStream data across restarts; workers keep
// their HSM (the HSM is the region's device, not the worker's).

func (p *Partition) startServer(r *Region) error {
	for i := range r.nodes {
		if err := p.startNode(r, i); err != nil {
			return err
		}
	}
	return p.waitJetStream(r)
}

// node is one nats-server of a region; ports are kept across restarts.
type node struct {
	server      *server.Server
	port        int
	clusterPort int
}

func (p *Partition) startNode(r *Region, i int) error {
	n := &r.nodes[i]
	opts := &server.Options{
		ServerName: r.Name,
		Host:       "127.0.0.1",
		Port:       n.port,
		JetStream:  true,
		StoreDir:   r.storeDir,
		NoLog:      true,
		NoSigs:     true,
	}
	if p.specs != nil {
		if err := p.specs[r.Name].ServerOptions(opts); err != nil {
			return fmt.Errorf("region %s: %w", r.Name, err)
		}
	}
	if p.tls != nil {
		opts.TLS = true
		opts.TLSConfig = p.tls.server.Clone()
		opts.TLSTimeout = 2
	}
	if len(r.nodes) > 1 {
		opts.ServerName = fmt.Sprintf("%s-%d", r.Name, i)
		opts.StoreDir = filepath.Join(r.storeDir, fmt.Sprint(i))
		opts.Cluster = server.ClusterOpts{Name: r.Name, Host: "127.0.0.1", Port: n.clusterPort}
		for j := range r.nodes {
			if j != i {
				opts.Routes = append(opts.Routes, server.RoutesFromStr(fmt.Sprintf("nats-route://127.0.0.1:%d", r.nodes[j].clusterPort))...)
			}
		}
	}
	s, err := server.NewServer(opts)
	if err != nil {
		return fmt.Errorf("region %s: nats server: %w", r.Name, err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		s.Shutdown()
		return fmt.Errorf("region %s: nats server %s not ready after 10s", r.Name, opts.ServerName)
	}
	n.server = s
	if a, ok := s.Addr().(*net.TCPAddr); ok {
		n.port = a.Port
	}
	if i == 0 {
		r.Server = s
	}
	var urls []string
	for _, m := range r.nodes {
		if m.port > 0 {
			urls = append(urls, fmt.Sprintf("nats://127.0.0.1:%d", m.port))
		}
	}
	r.URL = strings.Join(urls, ",")
	return nil
}

// waitJetStream polls until the region's JetStream answers (in a cluster:
// until its meta leader is elected).
func (p *Partition) waitJetStream(r *Region) error {
	var opts []nats.Option
	if p.specs != nil {
		opts = append(opts, nats.UserInfo(natsauth.UserAdmin, p.specs[r.Name].Passwords[natsauth.Key(natsauth.Account, natsauth.UserAdmin)]))
	}
	if p.tls != nil {
		opts = append(opts, nats.Secure(p.tls.client.Clone()))
	}
	nc, err := nats.Connect(r.URL, opts...)
	if err != nil {
		return fmt.Errorf("region %s: %w", r.Name, err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := js.AccountInfo(ctx)
		cancel()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("region %s: jetstream not ready: %w", r.Name, err)
		}
		time.Sleep(50 * time.Millisecond) // poll interval
	}
}

func (p *Partition) startWorker(ctx context.Context, r *Region, reg prometheus.Registerer) error {
	nc, err := p.ConnectAs(r.Name, natsauth.UserWorker, "worker")
	if err != nil {
		return err
	}
	kms, err := p.kmsConfig(r) // kms.go
	if err != nil {
		nc.Close()
		return err
	}
	w, err := workers.New(workers.Config{
		Region: r.Name, Bundle: p.Bundle, HSM: r.HSM, Conn: nc,
		Logger: p.opts.Logger, Registerer: wrap(reg, "instance", "worker-"+r.Name),
		MessageTTL: p.opts.MessageTTL, Concurrency: p.opts.Concurrency,
		RunTimeout: p.opts.RunTimeout, MaxAttempts: p.opts.MaxAttempts, SweepInterval: p.opts.SweepInterval,
		DeletionWaitingPeriod: p.opts.DeletionWaitingPeriod,
		Layout:                p.layout(), ClockSkew: p.opts.ClockSkew,
		Admins: []string{AdminPrincipal}, LocalPrincipal: AdminPrincipal, RegionPolicy: p.regionPolicy,
		NoDataPlaneAudit: p.opts.NoDataPlaneAudit, KMS: kms,
	})
	if err != nil {
		nc.Close()
		if kms != nil {
			_ = kms.Listener.Close()
		}
		return err
	}
	if err := w.Start(ctx); err != nil {
		nc.Close()
		if kms != nil {
			_ = kms.Listener.Close()
		}
		return err
	}
	r.Conn, r.Worker, r.KMSURL = nc, w, w.KMSURL()
	cc := nc
	if p.specs != nil {
		if cc, err = p.ConnectApp(r.Name, DefaultApp.Account, DefaultApp.Users[0]); err != nil {
			return err
		}
	}
	r.Client = client.New(cc, r.Name)
	return nil
}

func (p *Partition) startProxy(ctx context.Context, reg prometheus.Registerer) error {
	conns := map[string]*nats.Conn{}
	for _, r := range p.regions {
		nc, err := p.ConnectAs(r.Name, natsauth.UserProxy, "proxy")
		if err != nil {
			return err
		}
		conns[r.Name] = nc
	}
	if err := p.tuneProxyConsumers(ctx); err != nil {
		return err
	}
	px, err := proxy.New(proxy.Config{
		Bundle: p.Bundle, Conns: conns, Logger: p.opts.Logger,
		Registerer: wrap(reg, "instance", "proxy"),
		Delay:      map[string]time.Duration{"*": p.opts.ProxyDelay}, Concurrency: p.opts.Concurrency,
		Layout: p.layout(), ClockSkew: p.opts.ClockSkew,
		ManageStreams: p.specs == nil, // without authorization, as before
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

// tuneProxyConsumers sizes the proxy's consumers, which the workers
// create with layout's defaults, for Options.ProxyDelay and Concurrency
// (as the proxy did when it created them), as the admin. A worker that
// restarts puts the defaults back.
func (p *Partition) tuneProxyConsumers(ctx context.Context) error {
	if p.specs == nil || (p.opts.ProxyDelay == 0 && p.opts.Concurrency <= 0) {
		return nil
	}
	c := layout.ProxyConsumers{AckWait: layout.AckWait + p.opts.ProxyDelay}
	if p.opts.Concurrency > 0 {
		c.MaxAckPending = 4 * p.opts.Concurrency
	}
	for _, r := range p.regions {
		nc, err := p.Connect(r.Name, "tune")
		if err != nil {
			return err
		}
		js, err := jetstream.New(nc)
		if err == nil {
			err = layout.EnsureProxyConsumers(ctx, js, r.Name, p.Bundle.Regions(), c)
		}
		nc.Close()
		if err != nil {
			return fmt.Errorf("region %s: %w", r.Name, err)
		}
	}
	return nil
}

// StopServer shuts every nats-server of a region down (data stays on
// disk): the region is cut off from its workers, clients and the proxy.
func (p *Partition) StopServer(region string) {
	r := p.Region(region)
	if r == nil {
		return
	}
	for i := range r.nodes {
		p.StopNode(region, i)
	}
}

// StopNode shuts down node i of a region (0 for a single-server region).
func (p *Partition) StopNode(region string, i int) {
	r := p.Region(region)
	if r == nil || i >= len(r.nodes) || r.nodes[i].server == nil {
		return
	}
	r.nodes[i].server.Shutdown()
	r.nodes[i].server.WaitForShutdown()
	r.nodes[i].server = nil
	if i == 0 {
		r.Server = nil
	}
}

// StartServer starts a stopped region's servers again on the same ports
// with the same data; connections reconnect by themselves.
func (p *Partition) StartServer(region string) error {
	r := p.Region(region)
	if r == nil {
		return fmt.Errorf("no region %q", region)
	}
	for i := range r.nodes {
		if r.nodes[i].server == nil {
			if err := p.startNode(r, i); err != nil {
				return err
			}
		}
	}
	return p.waitJetStream(r)
}

// StartNode starts node i of a region again.
func (p *Partition) StartNode(region string, i int) error {
	r := p.Region(region)
	if r == nil || i >= len(r.nodes) {
		return fmt.Errorf("no node %d in region %q", i, region)
	}
	if r.nodes[i].server != nil {
		return nil
	}
	return p.startNode(r, i)
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

func (p *Partition) layout() layout.Options {
	o := p.opts.Layout
	if p.opts.ClusterSize > 1 {
		o.Replicas = 3
	}
	return o
}
