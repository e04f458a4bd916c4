package proxy_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/mrkrepl/mrkrepl/api"
	"github.com/mrkrepl/mrkrepl/internal/layout"
	"github.com/mrkrepl/mrkrepl/internal/natsauth"
	"github.com/mrkrepl/mrkrepl/internal/obs/obstest"
	"github.com/mrkrepl/mrkrepl/messages"
	"github.com/mrkrepl/mrkrepl/mrkrepltest"
	"github.com/mrkrepl/mrkrepl/proxy"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// startProxy starts a proxy of its own on p (started with NoProxy), with
// fast heartbeats, registered on a fresh registry.
func startProxy(t *testing.T, p *mrkrepltest.Partition, durable string, hb proxy.HeartbeatConfig) (*proxy.Proxy, *prometheus.Registry) {
	t.Helper()
	conns := map[string]*nats.Conn{}
	// The workers create the consumers of the default prefix only; those
	// of this proxy's are the operator's (here the admin's) to create.
	for _, r := range p.Regions() {
		nc, err := p.Connect(r.Name, "admin")
		if err != nil {
			t.Fatal(err)
		}
		js, _ := jetstream.New(nc)
		if err := layout.EnsureProxyConsumers(t.Context(), js, r.Name, p.Bundle.Regions(), layout.ProxyConsumers{Durable: durable}); err != nil {
			t.Fatal(err)
		}
	}
	for _, r := range p.Regions() {
		nc, err := p.ConnectAs(r.Name, natsauth.UserProxy, "test-proxy")
		if err != nil {
			t.Fatal(err)
		}
		conns[r.Name] = nc
	}
	reg := prometheus.NewRegistry()
	px, err := proxy.New(proxy.Config{Bundle: p.Bundle, Conns: conns, Registerer: reg, Durable: durable, Heartbeat: hb})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	if err := px.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(px.Stop)
	return px, reg
}

// series returns the value of every series of family name, keyed by the
// label values named in keys, joined with ">".
func series(t *testing.T, g prometheus.Gatherer, name string, keys ...string) map[string]float64 {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, lp := range m.GetLabel() {
				labels[lp.GetName()] = lp.GetValue()
			}
			var k []string
			for _, key := range keys {
				k = append(k, labels[key])
			}
			v := m.GetGauge().GetValue() + m.GetCounter().GetValue() + float64(m.GetHistogram().GetSampleCount())
			out[strings.Join(k, ">")] = v
		}
	}
	return out
}

func TestHeartbeat(t *testing.T) {
	// With the production accounts: the workers create the heartbeat
	// streams, the proxy user may write them.
	p := mrkrepltest.New(t, mrkrepltest.Options{NoProxy: true})
	// A probe times out after the interval: 1 s leaves room for a loaded
	// machine under the race detector (100 ms did not).
	_, reg := startProxy(t, p, "hb", proxy.HeartbeatConfig{Interval: time.Second, Timeout: time.Second})
	pairs := 0
	for _, a := range p.Regions() {
		for _, b := range p.Regions() {
			if a != b {
				pairs++
			}
		}
	}
	obstest.WaitFor(t, 10*time.Second, "two heartbeat rounds", func() bool {
		hb := series(t, reg, "mrkrepl_proxy_heartbeats_total", "src", "dst")
		ok := series(t, reg, "mrkrepl_proxy_heartbeat_round_trip_seconds", "src", "dst")
		n := 0
		for k, v := range hb {
			if v >= 2 && ok[k] >= 2 {
				n++
			}
		}
		return n == pairs
	})
	for k, v := range series(t, reg, "mrkrepl_proxy_heartbeat_failures_total", "src", "dst", "side") {
		if v != 0 {
			t.Errorf("heartbeat failures %s = %v", k, v)
		}
	}
	for k, v := range series(t, reg, "mrkrepl_proxy_heartbeat_last_success_timestamp_seconds", "src", "dst") {
		if age := time.Since(time.Unix(0, int64(v*1e9))); age > 5*time.Second {
			t.Errorf("last heartbeat of %s is %v old", k, age)
		}
	}

	// Cut eu-west-1 off: every pair into or out of it fails, on the side
	// that lost its cluster; the other pairs keep beating.
	eu := p.Region("eu-west-1")
	eu.Server.Shutdown()
	eu.Server.WaitForShutdown()
	obstest.WaitFor(t, 10*time.Second, "failures on both sides of eu-west-1", func() bool {
		f := series(t, reg, "mrkrepl_proxy_heartbeat_failures_total", "src", "dst", "side")
		return f["eu-west-1>us-east-1>source"] >= 1 && f["us-east-1>eu-west-1>destination"] >= 1
	})
	before := series(t, reg, "mrkrepl_proxy_heartbeat_last_success_timestamp_seconds", "src", "dst")
	// Wait for a pair without eu-west-1 to beat again; by then the pairs
	// with it had a round to beat in too, and must not have.
	var after map[string]float64
	obstest.WaitFor(t, 10*time.Second, "us-east-1>ap-southeast-2 beats again", func() bool {
		after = series(t, reg, "mrkrepl_proxy_heartbeat_last_success_timestamp_seconds", "src", "dst")
		return after["us-east-1>ap-southeast-2"] > before["us-east-1>ap-southeast-2"]
	})
	for _, k := range []string{"eu-west-1>us-east-1", "us-east-1>eu-west-1", "ap-southeast-2>eu-west-1"} {
		if after[k] != before[k] {
			t.Errorf("pair %s still beats with eu-west-1 down", k)
		}
	}
	if k := "us-east-1>ap-southeast-2"; after[k] <= before[k] {
		t.Errorf("pair %s stopped beating: %v → %v", k, before[k], after[k])
	}
	if up := series(t, reg, "mrkrepl_proxy_nats_connected", "region"); up["eu-west-1"] != 0 || up["us-east-1"] != 1 {
		t.Errorf("nats_connected: %v", up)
	}
}

func TestConsumerLagAndReady(t *testing.T) {
	p := mrkrepltest.New(t, mrkrepltest.Options{NoProxy: true})
	// A proxy that has made its consumers and stopped: what the workers
	// publish now waits in its consumers.
	px, reg := startProxy(t, p, "lag", proxy.HeartbeatConfig{Interval: -1})
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	if err := px.Ready(ctx); err != nil {
		t.Fatalf("Ready: %v", err)
	}
	px.Stop()
	if err := px.Ready(ctx); err == nil {
		t.Error("a stopped proxy is ready")
	}
	us := p.Region("us-east-1").Client
	key, err := us.CreateKey(ctx, api.CreateKeyRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, dst := range []string{"eu-west-1", "ap-southeast-2"} {
		if _, err := us.ReplicateKey(ctx, key.KeyID, dst); err != nil {
			t.Fatal(err)
		}
	}
	// A consumer counts a stored message a moment after the publish is
	// acknowledged (the server signals its consumers asynchronously), so
	// the lag is polled. A pull request the stopped proxy left at the
	// server may still take a message (then delivered, waiting for its ack
	// to time out), so a waiting message is pending or ack pending.
	var lag, acks map[string]float64
	waiting := func(pair string) float64 { return lag[pair] + acks[pair] }
	obstest.WaitFor(t, 10*time.Second, "both inits waiting in their pairs' consumers", func() bool {
		lag = series(t, reg, "mrkrepl_proxy_consumer_pending_messages", "src", "dst")
		acks = series(t, reg, "mrkrepl_proxy_consumer_ack_pending_messages", "src", "dst")
		return waiting("us-east-1>eu-west-1") == 1 && waiting("us-east-1>ap-southeast-2") == 1
	})
	if waiting("eu-west-1>us-east-1") != 0 || len(lag) != 6 || len(acks) != 6 {
		t.Errorf("consumer lag: pending %v, ack pending %v", lag, acks)
	}
	// With heartbeats disabled, no probe is counted.
	for k, v := range series(t, reg, "mrkrepl_proxy_heartbeats_total", "src", "dst") {
		if v != 0 {
			t.Errorf("heartbeats %s = %v with heartbeats disabled", k, v)
		}
	}
	problems, err := testutil.GatherAndLint(reg)
	if err != nil || len(problems) > 0 {
		t.Errorf("lint: %v %v", err, problems)
	}
	// Every series of every pair exists from the start.
	if n, want := len(series(t, reg, "mrkrepl_proxy_refused_total", "src", "dst", "reason")), 6*(len(messages.Reasons())+len(messages.OptionReasons())+1); n != want { // + max_deliver
		t.Errorf("refused_total has %d series, want %d (6 pairs × every reason)", n, want)
	}
}
