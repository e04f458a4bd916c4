package obs

import (
	"errors"
	"sync/atomic"

	"github.com/mrkrepl/mrkrepl/messages"
	"github.com/prometheus/client_golang/prometheus"
)

// RSKExpiryDesc describes mrkrepl_bundle_rsk_expiry_timestamp_seconds.
var RSKExpiryDesc = prometheus.NewDesc(
	"mrkrepl_bundle_rsk_expiry_timestamp_seconds",
	"Unix time at which the newest RSK of each region of the trust bundle expires (its latest not_after); 0 for a region without an RSK. Subtract time() for the expiry horizon.",
	[]string{"region"}, nil,
)

// BundleCollector reports mrkrepl_bundle_rsk_expiry_timestamp_seconds for
// the trust bundle given to Set: one series per region of the partition,
// the latest not_after among the region's RSKs, or 0 for a region without
// any RSK (it cannot sign at all). Before Set it reports nothing.
//
// It reports timestamps rather than "seconds left" (docs/METRICS.md): the
// horizon is `mrkrepl_bundle_rsk_expiry_timestamp_seconds - time()`.
type BundleCollector struct {
	b atomic.Pointer[messages.Bundle]
}

// Set sets the bundle reported.
func (c *BundleCollector) Set(b *messages.Bundle) { c.b.Store(b) }

// Describe implements prometheus.Collector.
func (c *BundleCollector) Describe(ch chan<- *prometheus.Desc) { ch <- RSKExpiryDesc }

// Collect implements prometheus.Collector.
func (c *BundleCollector) Collect(ch chan<- prometheus.Metric) {
	b := c.b.Load()
	if b == nil {
		return
	}
	expiry := map[string]float64{}
	for _, r := range b.Regions() {
		expiry[r] = 0
	}
	for _, k := range b.Keys() {
		if t := float64(k.NotAfter.Unix()); t > expiry[k.Region] {
			expiry[k.Region] = t
		}
	}
	for r, t := range expiry {
		ch <- prometheus.MustNewConstMetric(RSKExpiryDesc, prometheus.GaugeValue, t, r)
	}
}

// RegisterBundleCollector registers a BundleCollector on reg. The bundle is
// the process's, so components sharing a registry share one collector: if
// reg already has one, that one is returned. A nil reg registers nothing.
func RegisterBundleCollector(reg prometheus.Registerer) (*BundleCollector, error) {
	c := &BundleCollector{}
	if reg == nil {
		return c, nil
	}
	err := reg.Register(c)
	var are prometheus.AlreadyRegisteredError
	if errors.As(err, &are) {
		if existing, ok := are.ExistingCollector.(*BundleCollector); ok {
			return existing, nil
		}
	}
	if err != nil {
		return nil, err
	}
	return c, nil
}
