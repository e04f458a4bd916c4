package proxy

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mrkrepl/mrkrepl/internal/layout"
	"github.com/prometheus/client_golang/prometheus"
)

// collectTimeout bounds the JetStream queries of one scrape. The regions
// are queried in parallel, so one unreachable region costs this once.
const collectTimeout = 2 * time.Second

// proxyCollector reads state on scrape: each pair's consumer lag and the
// connections. It reports nothing until the proxy has started.
type proxyCollector struct {
	p atomic.Pointer[Proxy]

	pending, ackPending, connected *prometheus.Desc
}

func newProxyCollector() *proxyCollector {
	return &proxyCollector{
		pending: prometheus.NewDesc("mrkrepl_proxy_consumer_pending_messages",
			"Messages in src's outbox for dst not yet delivered to the pair's durable consumer (consumer lag), by pair.",
			[]string{"src", "dst"}, nil),
		ackPending: prometheus.NewDesc("mrkrepl_proxy_consumer_ack_pending_messages",
			"Messages delivered to the pair's durable consumer and not yet acknowledged (being forwarded or waiting for a retry), by pair.",
			[]string{"src", "dst"}, nil),
		connected: prometheus.NewDesc("mrkrepl_proxy_nats_connected",
			"1 while the proxy's connection to a region's NATS cluster is up, else 0, by region.",
			[]string{"region"}, nil),
	}
}

func (c *proxyCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.pending
	ch <- c.ackPending
	ch <- c.connected
}

func (c *proxyCollector) Collect(ch chan<- prometheus.Metric) {
	p := c.p.Load()
	if p == nil {
		return
	}
	regions := p.regions
	ctx, cancel := context.WithTimeout(context.Background(), collectTimeout)
	defer cancel()
	var wg sync.WaitGroup
	for _, src := range regions {
		up := 0.0
		if p.cfg.Conns[src].IsConnected() {
			up = 1
		}
		ch <- prometheus.MustNewConstMetric(c.connected, prometheus.GaugeValue, up, src)
		if up == 0 {
			continue // the queries would only wait for the timeout
		}
		wg.Go(func() {
			for _, dst := range regions {
				if dst == src {
					continue
				}
				cons, err := p.js[src].Consumer(ctx, layout.OutboxStream(src), layout.ProxyConsumer(p.cfg.Durable, dst))
				if err != nil {
					p.log.Debug("metrics: consumer info", "src", src, "dst", dst, "err", err)
					continue
				}
				ci := cons.CachedInfo()
				ch <- prometheus.MustNewConstMetric(c.pending, prometheus.GaugeValue, float64(ci.NumPending), src, dst)
				ch <- prometheus.MustNewConstMetric(c.ackPending, prometheus.GaugeValue, float64(ci.NumAckPending), src, dst)
			}
		})
	}
	wg.Wait()
}

// startObservers attaches the scrape-time collector and starts the
// heartbeats. Called by Start with p.mu held.
func (p *Proxy) startObservers(ctx context.Context) {
	p.met.view.p.Store(p)
	p.met.bundle.Set(p.bundle())
	p.met.hb.start(ctx, p)
}

// stopObservers stops the heartbeats and waits for them. Called by Stop.
func (p *Proxy) stopObservers() {
	p.met.hb.stop()
}
