package proxy

import (
	"context"
	"errors"
	"fmt"

	"github.com/mrkrepl/mrkrepl/internal/layout"
)

// Ready reports whether the proxy can forward, for /readyz: it has started,
// its connection to every region's cluster is up, and every pair's durable
// consumer (so every region's outbox) exists. The error names the first
// check that failed. The dead-letter streams are not checked: the proxy's
// NATS user may not read stream information (internal/natsauth), and a
// missing one shows as a failed dead letter, retried and logged.
//
// Ready makes one JetStream API request per pair; it is meant for probes
// every few seconds.
func (p *Proxy) Ready(ctx context.Context) error {
	p.mu.Lock()
	started := len(p.consumes) > 0
	p.mu.Unlock()
	if !started {
		return errors.New("proxy not started")
	}
	regions := p.regions
	for _, r := range regions {
		if nc := p.cfg.Conns[r]; !nc.IsConnected() {
			return fmt.Errorf("not connected to %s (status %s)", r, nc.Status())
		}
	}
	for _, src := range regions {
		js := p.js[src]
		for _, dst := range regions {
			if dst == src {
				continue
			}
			name := layout.ProxyConsumer(p.cfg.Durable, dst)
			if _, err := js.Consumer(ctx, layout.OutboxStream(src), name); err != nil {
				return fmt.Errorf("%s: consumer %s on %s: %w", src, name, layout.OutboxStream(src), err)
			}
		}
	}
	return nil
}
