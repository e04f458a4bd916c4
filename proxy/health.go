package proxy

import (
	"context"
	"errors"
	"fmt"

	"github.com/mrkrepl/mrkrepl/internal/layout"
)

// Ready reports whether the proxy can forward, for /readyz: it has started,
// its connection to every region's cluster is up, and every region's outbox
// and dead-letter streams and every pair's durable consumer exist. The
// error names the first check that failed.
//
// Ready makes a few JetStream API requests per region; it is meant for
// probes every few seconds.
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
		for _, s := range []string{layout.OutboxStream(src), layout.DLQStream(src)} {
			if _, err := js.Stream(ctx, s); err != nil {
				return fmt.Errorf("%s: stream %s: %w", src, s, err)
			}
		}
		for _, dst := range regions {
			if dst == src {
				continue
			}
			name := p.cfg.Durable + "-" + dst
			if _, err := js.Consumer(ctx, layout.OutboxStream(src), name); err != nil {
				return fmt.Errorf("%s: consumer %s on %s: %w", src, name, layout.OutboxStream(src), err)
			}
		}
	}
	return nil
}
