package workers

// Benchmarks of the replication state machine, one step per role, on two
// real workers with embedded JetStream servers and soft HSMs, and no
// proxy: the benchmark carries each message from one worker's outbox to
// the other's processInbox itself, so every step is timed alone.
//
//	go test -run '^$' -bench StateMachine -benchmem ./workers
//	go test -run '^$' -bench StateMachine -cpuprofile cpu.out ./workers

import (
	"context"
	"testing"
	"time"

	"github.com/mrkrepl/mrkrepl/internal/natstest"

	"github.com/mrkrepl/mrkrepl/api"
	"github.com/mrkrepl/mrkrepl/client"
	"github.com/mrkrepl/mrkrepl/hsmsvc"
	"github.com/mrkrepl/mrkrepl/messages"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// benchMsg is an inbox message handed straight to processInbox, which
// reads only its data and subject (the embedded nil Msg would panic on
// anything else, which a benchmark would show at once).
type benchMsg struct {
	jetstream.Msg
	data    []byte
	subject string
}

func (m *benchMsg) Data() []byte    { return m.data }
func (m *benchMsg) Subject() string { return m.subject }

type benchRegion struct {
	name   string
	nc     *nats.Conn
	w      *Worker
	out    *nats.Subscription // core subscription to the region's outbox
	client *client.Client
}

// startBenchPair starts regions "bench-a" and "bench-b" of partition
// "bench", each with its own server, soft HSM and started worker.
func startBenchPair(b *testing.B) (a, bb *benchRegion) {
	b.Helper()
	ctx := context.Background()
	names := []string{"bench-a", "bench-b"}
	hsms := make([]hsmsvc.HSM, len(names))
	var keys []messages.BundleKey
	now := time.Now()
	for i, name := range names {
		h, err := hsmsvc.Open(ctx, "soft:", hsmsvc.Options{})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = h.Close() })
		hsms[i] = h
		kid, err := messages.KID(h.Signer().Public())
		if err != nil {
			b.Fatal(err)
		}
		keys = append(keys, messages.BundleKey{
			Region: name, KID: kid, PublicKey: h.Signer().Public(),
			NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		})
	}
	bundle, err := messages.NewBundle("bench", names, keys)
	if err != nil {
		b.Fatal(err)
	}
	var rs []*benchRegion
	for i, name := range names {
		_, nc := natstest.Start(b, name)
		w, err := New(Config{Region: name, Bundle: bundle, HSM: hsms[i], Conn: nc,
			// One account, no service import: the benchmark is the local admin.
			Admins: []string{"bench/admin"}, LocalPrincipal: "bench/admin"})
		if err != nil {
			b.Fatal(err)
		}
		if err := w.Start(ctx); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(w.Stop)
		out, err := nc.SubscribeSync("mrk." + name + ".out.>")
		if err != nil {
			b.Fatal(err)
		}
		if err := nc.Flush(); err != nil {
			b.Fatal(err)
		}
		rs = append(rs, &benchRegion{name: name, nc: nc, w: w, out: out, client: client.New(nc, name)})
	}
	return rs[0], rs[1]
}

// carry takes the next message from src's outbox and returns it as it
// would arrive in dst's inbox.
func carry(b *testing.B, src, dst *benchRegion, want messages.Type) *benchMsg {
	b.Helper()
	m, err := src.out.NextMsg(10 * time.Second)
	if err != nil {
		b.Fatalf("no %s from %s: %v", want, src.name, err)
	}
	if got := messages.OutboxSubject(src.name, dst.name, want); m.Subject != got {
		b.Fatalf("outbox message on %s, want %s", m.Subject, got)
	}
	return &benchMsg{data: m.Data, subject: messages.InboxSubject(dst.name, src.name, want)}
}

// BenchmarkStateMachine replicates one key per iteration from bench-a to
// bench-b and reports the time of each step, inbox verification, replay
// cache, KV reads and compare-and-set writes, HSM work, signing and outbox
// publish included:
//
//	src-start-ms     bench-a: replicate-key API call (init signed, stored, published)
//	dst-init-ms      bench-b: init → RAKB, offer
//	src-offer-ms     bench-a: offer → wrap K, material, key confirmation
//	dst-material-ms  bench-b: material → unwrap K, replica stored, receipt
//	src-receipt-ms   bench-a: receipt → run COMPLETED, key record updated
//
// ns/op is their sum; creating the key and carrying messages is not timed.
func BenchmarkStateMachine(b *testing.B) {
	a, bb := startBenchPair(b)
	ctx := context.Background()
	steps := []string{"src-start-ms", "dst-init-ms", "src-offer-ms", "dst-material-ms", "src-receipt-ms"}
	sums := make([]time.Duration, len(steps))
	step := func(i int, fn func() error) {
		b.StartTimer()
		t := time.Now()
		err := fn()
		sums[i] += time.Since(t)
		b.StopTimer()
		if err != nil {
			b.Fatalf("%s: %v", steps[i], err)
		}
	}
	inbox := func(w *Worker, m *benchMsg) func() error {
		return func() error {
			var typ string
			_, err := w.processInbox(ctx, m, &typ)
			return err
		}
	}
	b.ReportAllocs()
	b.ResetTimer()
	b.StopTimer()
	for range b.N {
		key, err := a.client.CreateKey(ctx, api.CreateKeyRequest{})
		if err != nil {
			b.Fatal(err)
		}
		step(0, func() error { _, err := a.client.ReplicateKey(ctx, key.KeyID, bb.name); return err })
		step(1, inbox(bb.w, carry(b, a, bb, messages.TypeInit)))
		step(2, inbox(a.w, carry(b, bb, a, messages.TypeOffer)))
		step(3, inbox(bb.w, carry(b, a, bb, messages.TypeMaterial)))
		step(4, inbox(a.w, carry(b, bb, a, messages.TypeReceipt)))
	}
	for i, name := range steps {
		b.ReportMetric(float64(sums[i])/float64(time.Millisecond)/float64(b.N), name)
	}
}
