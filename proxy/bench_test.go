package proxy

// Benchmarks of the proxy's forward step: verify a signed message, publish
// it to the destination's inbox with Nats-Msg-Id, wait for the PubAck,
// ack the source. Two embedded JetStream servers, no consumers: the
// benchmark hands each message to forward itself.
//
//	go test -run '^$' -bench Forward -benchmem ./proxy
//	go test -run '^$' -bench Forward -cpuprofile cpu.out ./proxy

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mrkrepl/mrkrepl/internal/natstest"

	"github.com/mrkrepl/mrkrepl/internal/layout"
	"github.com/mrkrepl/mrkrepl/messages"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// benchMsg is an outbox message handed straight to forward; it records the
// ack decision.
type benchMsg struct {
	jetstream.Msg // nil: forward uses only the methods below
	data          []byte
	subject       string
	outcome       string
}

func (m *benchMsg) Data() []byte                       { return m.data }
func (m *benchMsg) Subject() string                    { return m.subject }
func (m *benchMsg) Headers() nats.Header               { return nil }
func (m *benchMsg) DoubleAck(context.Context) error    { m.outcome = "ack"; return nil }
func (m *benchMsg) Ack() error                         { m.outcome = "ack"; return nil }
func (m *benchMsg) NakWithDelay(time.Duration) error   { m.outcome = "nak"; return nil }
func (m *benchMsg) TermWithReason(reason string) error { m.outcome = "term: " + reason; return nil }
func (m *benchMsg) Metadata() (*jetstream.MsgMetadata, error) {
	return &jetstream.MsgMetadata{NumDelivered: 1}, nil
}

type forwardBench struct {
	pr     *pair
	signer *ecdsa.PrivateKey
	bundle *messages.Bundle
}

func startForwardBench(b *testing.B) *forwardBench {
	b.Helper()
	ctx := context.Background()
	regions := []string{"bench-a", "bench-b"}
	signer, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		b.Fatal(err)
	}
	var keys []messages.BundleKey
	now := time.Now()
	for i, r := range regions {
		k := signer
		if i > 0 {
			if k, err = ecdsa.GenerateKey(elliptic.P384(), rand.Reader); err != nil {
				b.Fatal(err)
			}
		}
		kid, err := messages.KID(&k.PublicKey)
		if err != nil {
			b.Fatal(err)
		}
		keys = append(keys, messages.BundleKey{Region: r, KID: kid, PublicKey: &k.PublicKey,
			NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour)})
	}
	bundle, err := messages.NewBundle("bench", regions, keys)
	if err != nil {
		b.Fatal(err)
	}
	conns := map[string]*nats.Conn{}
	for _, r := range regions {
		_, nc := natstest.Start(b, r)
		js, err := jetstream.New(nc)
		if err != nil {
			b.Fatal(err)
		}
		// The destination's inbox (and the rest of the region's layout),
		// as its workers would make it.
		if _, err := layout.EnsureRegion(ctx, js, r, regions, layout.Options{}); err != nil {
			b.Fatal(err)
		}
		conns[r] = nc
	}
	p, err := New(Config{Bundle: bundle, Conns: conns})
	if err != nil {
		b.Fatal(err)
	}
	return &forwardBench{
		pr:     &pair{p: p, src: regions[0], dst: regions[1], sem: make(chan struct{}, 1)},
		signer: signer, bundle: bundle,
	}
}

// seal makes n distinct init messages from bench-a to bench-b, as they sit
// in bench-a's outbox.
func (fb *forwardBench) seal(b *testing.B, n int) []*benchMsg {
	b.Helper()
	now := time.Now()
	msgs := make([]*benchMsg, n)
	for i := range msgs {
		m := &messages.Message{
			Header: messages.Header{
				V: messages.Version, Type: messages.TypeInit, MsgID: messages.NewID(),
				ReplicationID: messages.NewID(), Partition: "bench", Src: fb.pr.src, Dst: fb.pr.dst,
				SentAt: now.UnixMilli(), ExpiresAt: now.Add(time.Hour).UnixMilli(),
			},
			Init: &messages.Init{
				KeyID: messages.NewKeyID(), KeySpec: "SYMMETRIC_DEFAULT", KeyUsage: "ENCRYPT_DECRYPT",
				Version: 1, PrimaryRegion: fb.pr.src,
			},
		}
		raw, err := messages.Seal(m, fb.signer)
		if err != nil {
			b.Fatal(err)
		}
		msgs[i] = &benchMsg{data: raw, subject: messages.OutboxSubject(fb.pr.src, fb.pr.dst, m.Type)}
	}
	return msgs
}

// BenchmarkForward is one message's whole way through the proxy, one at a
// time: the synchronous cost of a hop (verify ≈ 2/3 of it on this kind of
// machine, the rest publish and PubAck round trip).
func BenchmarkForward(b *testing.B) {
	fb := startForwardBench(b)
	ctx := context.Background()
	msgs := fb.seal(b, b.N)
	b.ReportAllocs()
	b.ResetTimer()
	for _, m := range msgs {
		fb.pr.forward(ctx, m)
		if m.outcome != "ack" {
			b.Fatalf("forward ended in %q, want ack", m.outcome)
		}
	}
}

// BenchmarkForwardParallel forwards on GOMAXPROCS goroutines at once, as
// the pair's concurrency does: verification spreads over the cores and
// publishes overlap.
func BenchmarkForwardParallel(b *testing.B) {
	fb := startForwardBench(b)
	ctx := context.Background()
	msgs := fb.seal(b, b.N)
	var next atomic.Int64
	b.ReportAllocs()
	b.SetParallelism(4)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			m := msgs[next.Add(1)-1]
			fb.pr.forward(ctx, m)
			if m.outcome != "ack" {
				b.Errorf("forward ended in %q, want ack", m.outcome)
				return
			}
		}
	})
}

// BenchmarkVerifyOnly is the proxy's check alone, for comparison.
func BenchmarkVerifyOnly(b *testing.B) {
	fb := startForwardBench(b)
	m := fb.seal(b, 1)[0]
	opts := messages.VerifyOptions{Bundle: fb.bundle, Now: time.Now(), Subject: m.subject}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := messages.Verify(m.data, opts); err != nil {
			b.Fatal(err)
		}
	}
}
