package e2e

// Tests of the bounds (issue 14, "Bounds"; security review M1): every
// stream and bucket has limits, a message of NATS's max payload is
// dead-lettered once with a truncated copy, every consumer gives up after
// MaxDeliver, de-duplication keys on the bytes, and a flood that fills a
// stream leaves the region working.

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/mrkrepl/mrkrepl/api"
	"github.com/mrkrepl/mrkrepl/internal/layout"
	"github.com/mrkrepl/mrkrepl/messages"
	"github.com/mrkrepl/mrkrepl/mrkrepltest"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
)

// dlqMessages returns every message of region's DLQ.
func dlqMessages(t *testing.T, ctx context.Context, nc *nats.Conn, region string) []*jetstream.RawStreamMsg {
	t.Helper()
	js, _ := jetstream.New(nc)
	st, err := js.Stream(ctx, layout.DLQStream(region))
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var out []*jetstream.RawStreamMsg
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		m, err := st.GetMsg(ctx, seq)
		if err != nil {
			continue // removed (DiscardOld)
		}
		out = append(out, m)
	}
	return out
}

// TestMaxPayloadDeadLetteredOnce: a message of exactly NATS's max payload
// (1 MiB) in an outbox (refused by the proxy) and in an inbox (refused by
// the worker) is dead-lettered once, with its first layout.DeadLetterPrefix
// bytes and its length and SHA-256 in headers, and the refusal is counted
// once at each — not nak'ed and redelivered forever because its
// dead-letter copy does not fit (issue 14). The inbox and outbox limits are
// lifted (-1) so that such a message can be stored at all: with the
// default MaxMsgSize the publish itself is refused (TestFloodLeavesRegionWorking).
func TestMaxPayloadDeadLetteredOnce(t *testing.T) {
	reg := prometheus.NewRegistry()
	unlimited := layout.Limit{MaxMsgSize: -1}
	p := mrkrepltest.New(t, mrkrepltest.Options{Regions: []string{"us-east-1", "eu-west-1"}, Registerer: reg,
		Layout: layout.Options{Limits: map[string]layout.Limit{layout.ResourceInbox: unlimited, layout.ResourceOutbox: unlimited}}})
	ctx := ctxT(t, time.Minute)
	const src, dst = "us-east-1", "eu-west-1"
	big := make([]byte, 1<<20)
	for i := range big {
		big[i] = byte(i * 7)
	}
	for _, tc := range []struct {
		region, subject, component string
		counted                    func() float64
	}{
		{src, messages.OutboxSubject(src, dst, messages.TypeInit), "proxy", func() float64 {
			return gathered(t, reg, "mrkrepl_proxy_refused_total", prometheus.Labels{"src": src, "dst": dst, "reason": string(messages.ReasonTooLarge)})
		}},
		{dst, messages.InboxSubject(dst, src, messages.TypeInit), "worker", func() float64 {
			return gathered(t, reg, "mrkrepl_worker_messages_refused_total", prometheus.Labels{"instance": "worker-" + dst, "reason": string(messages.ReasonTooLarge)})
		}},
	} {
		nc, err := p.Connect(tc.region, "attacker")
		if err != nil {
			t.Fatal(err)
		}
		js, _ := jetstream.New(nc)
		if _, err := js.Publish(ctx, tc.subject, big); err != nil {
			t.Fatalf("%s: publish 1 MiB: %v", tc.component, err)
		}
		waitFor(t, ctx, func() bool { return len(dlqMessages(t, ctx, nc, tc.region)) >= 1 })
		// Several redelivery intervals (1 s at the worker, 250 ms at the
		// proxy): a refusal that loops would be dead-lettered or counted
		// again meanwhile.
		time.Sleep(3 * time.Second)
		dl := dlqMessages(t, ctx, nc, tc.region)
		if len(dl) != 1 {
			t.Fatalf("%s: %d dead letters, want 1", tc.component, len(dl))
		}
		m := dl[0]
		if got := m.Header.Get(layout.HeaderComponent); got != tc.component {
			t.Errorf("dead letter by %q, want %q", got, tc.component)
		}
		if got := m.Header.Get(layout.HeaderReason); got != string(messages.ReasonTooLarge) {
			t.Errorf("%s: reason %q, want %s", tc.component, got, messages.ReasonTooLarge)
		}
		if len(m.Data) != layout.DeadLetterPrefix || string(m.Data) != string(big[:layout.DeadLetterPrefix]) {
			t.Errorf("%s: dead letter holds %d bytes, want the message's first %d", tc.component, len(m.Data), layout.DeadLetterPrefix)
		}
		if got := m.Header.Get(layout.HeaderLength); got != strconv.Itoa(len(big)) {
			t.Errorf("%s: %s %q, want %d", tc.component, layout.HeaderLength, got, len(big))
		}
		if got := m.Header.Get(layout.HeaderSHA256); got != layout.MsgID(big) {
			t.Errorf("%s: %s %q, want the message's SHA-256", tc.component, layout.HeaderSHA256, got)
		}
		if n := tc.counted(); n != 1 {
			t.Errorf("%s: refusal counted %v times, want once", tc.component, n)
		}
	}
}

// TestJunkMsgIDDoesNotSuppress: before every message the proxy forwards
// (it holds each 300 ms), junk is published into the destination inbox
// with the genuine message's msg_id as Nats-Msg-Id. The inbox
// de-duplicates on the SHA-256 of the bytes (layout.MsgID), so the genuine
// message still gets in: the replication completes promptly, instead of
// waiting for its run timeout (minutes) as when Nats-Msg-Id was the
// msg_id. The proxy counts no duplicate.
func TestJunkMsgIDDoesNotSuppress(t *testing.T) {
	reg := prometheus.NewRegistry()
	regions := []string{"us-east-1", "eu-west-1"}
	p := mrkrepltest.New(t, mrkrepltest.Options{Regions: regions, Registerer: reg, ProxyDelay: 300 * time.Millisecond})
	ctx := ctxT(t, time.Minute)
	var mu sync.Mutex
	injected := 0
	for _, r := range regions {
		nc, err := p.Connect(r, "spy")
		if err != nil {
			t.Fatal(err)
		}
		sub, err := nc.Subscribe(layout.OutboxWildcard(r), func(m *nats.Msg) {
			env, err := messages.Parse(m.Data)
			if err != nil {
				return
			}
			onc, err := p.Connect(env.Message.Dst, "junk")
			if err != nil {
				t.Error(err)
				return
			}
			defer onc.Close()
			js, _ := jetstream.New(onc)
			if _, err := js.Publish(ctx, messages.InboxSubject(env.Message.Dst, env.Message.Src, env.Message.Type), []byte("junk"), jetstream.WithMsgID(env.Message.MsgID)); err != nil {
				t.Errorf("junk publish: %v", err)
				return
			}
			mu.Lock()
			injected++
			mu.Unlock()
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = sub.Unsubscribe() })
		if err := nc.Flush(); err != nil {
			t.Fatal(err)
		}
	}
	us := p.Region("us-east-1").Client
	key, err := us.CreateKey(ctx, api.CreateKeyRequest{})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	rep, err := us.ReplicateKey(ctx, key.KeyID, "eu-west-1")
	if err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	done, err := us.WaitReplication(wctx, rep.ReplicationID)
	if err != nil || done.State != api.StateCompleted {
		t.Fatalf("replication: %v %+v; want COMPLETED promptly despite junk under its msg_ids", err, done)
	}
	t.Logf("replication completed in %v", time.Since(start))
	mu.Lock()
	n := injected
	mu.Unlock()
	if n < 4 {
		t.Errorf("%d junk messages injected, want one per message of the run (4)", n)
	}
	for _, pr := range [][2]string{{"us-east-1", "eu-west-1"}, {"eu-west-1", "us-east-1"}} {
		for _, typ := range []messages.Type{messages.TypeInit, messages.TypeOffer, messages.TypeMaterial, messages.TypeReceipt} {
			if d := gathered(t, reg, "mrkrepl_proxy_duplicates_total", prometheus.Labels{"src": pr[0], "dst": pr[1], "type": string(typ)}); d != 0 {
				t.Errorf("%s→%s %s: %v duplicates counted, want 0", pr[0], pr[1], typ, d)
			}
		}
	}
}

// TestDuplicateCountedApart: the same bytes published twice into an outbox
// (as a worker's republish does) are forwarded once; the second is counted
// as a duplicate, not a forward.
func TestDuplicateCountedApart(t *testing.T) {
	reg := prometheus.NewRegistry()
	p := mrkrepltest.New(t, mrkrepltest.Options{Regions: []string{"us-east-1", "eu-west-1"}, Registerer: reg})
	ctx := ctxT(t, time.Minute)
	const src, dst = "us-east-1", "eu-west-1"
	init := hostileValidInit(t, p, src, dst, nil)
	nc, err := p.Connect(src, "replay")
	if err != nil {
		t.Fatal(err)
	}
	js, _ := jetstream.New(nc)
	fwd := func() float64 {
		return gathered(t, reg, "mrkrepl_proxy_forwarded_total", prometheus.Labels{"src": src, "dst": dst, "type": string(messages.TypeInit)})
	}
	dup := func() float64 {
		return gathered(t, reg, "mrkrepl_proxy_duplicates_total", prometheus.Labels{"src": src, "dst": dst, "type": string(messages.TypeInit)})
	}
	// Without Nats-Msg-Id, so the outbox stores both: the proxy's publish
	// into the inbox is the one de-duplicated.
	for range 2 {
		if _, err := js.Publish(ctx, messages.OutboxSubject(src, dst, messages.TypeInit), init.raw); err != nil {
			t.Fatal(err)
		}
		waitFor(t, ctx, func() bool { return fwd()+dup() >= 1 })
	}
	waitFor(t, ctx, func() bool { return fwd()+dup() >= 2 })
	if f, d := fwd(), dup(); f != 1 || d != 1 {
		t.Errorf("forwarded %v, duplicates %v; want 1 and 1", f, d)
	}
}

// TestMaxDeliverGivesUp: a message whose handling fails at every delivery
// is given up at the consumer's MaxDeliver (3 here): dead-lettered once
// with reason max_deliver and counted once — at the proxy (the destination
// inbox refuses every forward: its MaxMsgSize is below the message's) and
// at the worker (its outbox refuses the offer it answers with).
func TestMaxDeliverGivesUp(t *testing.T) {
	const src, dst = "us-east-1", "eu-west-1"
	regions := []string{src, dst}
	tiny := layout.Limit{MaxMsgSize: 128}
	for _, tc := range []struct {
		name, component string
		opts            mrkrepltest.Options
		publishTo       func() (region, subject string)
		counted         func(reg *prometheus.Registry) float64
	}{
		{"proxy", "proxy",
			mrkrepltest.Options{Layout: layout.Options{MaxDeliver: 3, Limits: map[string]layout.Limit{layout.ResourceInbox: tiny}}},
			func() (string, string) { return src, messages.OutboxSubject(src, dst, messages.TypeInit) },
			func(reg *prometheus.Registry) float64 {
				return gathered(t, reg, "mrkrepl_proxy_refused_total", prometheus.Labels{"src": src, "dst": dst, "reason": layout.ReasonMaxDeliver})
			}},
		{"worker", "worker",
			mrkrepltest.Options{NoProxy: true, Layout: layout.Options{MaxDeliver: 3, Limits: map[string]layout.Limit{layout.ResourceOutbox: tiny}}},
			func() (string, string) { return dst, messages.InboxSubject(dst, src, messages.TypeInit) },
			func(reg *prometheus.Registry) float64 {
				return gathered(t, reg, "mrkrepl_worker_messages_refused_total", prometheus.Labels{"instance": "worker-" + dst, "reason": layout.ReasonMaxDeliver})
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			reg := prometheus.NewRegistry()
			tc.opts.Regions, tc.opts.Registerer = regions, reg
			p := mrkrepltest.New(t, tc.opts)
			ctx := ctxT(t, time.Minute)
			init := hostileValidInit(t, p, src, dst, nil)
			region, subject := tc.publishTo()
			nc, err := p.Connect(region, "test")
			if err != nil {
				t.Fatal(err)
			}
			js, _ := jetstream.New(nc)
			if _, err := js.Publish(ctx, subject, init.raw); err != nil {
				t.Fatal(err)
			}
			comp, reason := deadLetterOf(t, ctx, nc, layout.DLQStream(region), init.raw)
			if comp != tc.component || reason != layout.ReasonMaxDeliver {
				t.Errorf("dead letter by %s with %s, want %s with %s", comp, reason, tc.component, layout.ReasonMaxDeliver)
			}
			time.Sleep(2 * time.Second) // nothing more comes of it
			if n := len(dlqMessages(t, ctx, nc, region)); n != 1 {
				t.Errorf("%d dead letters, want 1", n)
			}
			if n := tc.counted(reg); n != 1 {
				t.Errorf("max_deliver counted %v times, want once", n)
			}
		})
	}
}

// TestFloodLeavesRegionWorking floods a region's requests stream with junk
// until it refuses (DiscardNew: the publisher gets an error), with small
// limits so that the flood is quick. The dead letters and events the junk
// causes fill their streams, which drop their oldest (DiscardOld) and stay
// within their MaxBytes. Then the region still answers the API (it is
// request/reply, not the stream), creates a key and replicates it. With the
// default limits, a message over MaxMsgSize is refused at publish.
func TestFloodLeavesRegionWorking(t *testing.T) {
	limits := map[string]layout.Limit{
		layout.ResourceRequests: {MaxBytes: 128 << 10},
		layout.ResourceEvents:   {MaxBytes: 4 << 10},
		layout.ResourceDLQ:      {MaxBytes: 32 << 10},
	}
	p := mrkrepltest.New(t, mrkrepltest.Options{Regions: []string{"us-east-1", "eu-west-1"}, Layout: layout.Options{Limits: limits}})
	ctx := ctxT(t, 2*time.Minute)
	const r, other = "us-east-1", "eu-west-1"
	nc, err := p.Connect(r, "flood")
	if err != nil {
		t.Fatal(err)
	}
	js, _ := jetstream.New(nc)
	junk := make([]byte, 4<<10)
	var refusedAt int
	for i := range 10_000 {
		_, err := js.Publish(ctx, layout.RequestSubject(r, "junk"), junk)
		if err != nil {
			var apiErr *jetstream.APIError
			if !errors.As(err, &apiErr) {
				t.Fatalf("publish %d: %v, want the stream's refusal", i, err)
			}
			refusedAt = i
			break
		}
	}
	if refusedAt == 0 {
		t.Fatal("the requests stream never refused a publish")
	}
	t.Logf("requests stream refused publish %d", refusedAt)
	// The worker has dead-lettered and recorded the junk it took.
	waitFor(t, ctx, func() bool {
		cons, err := js.Consumer(ctx, layout.RequestsStream(r), "worker")
		if err != nil {
			return false
		}
		info, err := cons.Info(ctx)
		return err == nil && info.NumPending == 0 && info.NumAckPending == 0
	})
	for _, name := range []string{layout.DLQStream(r), layout.EventsStream(r), layout.RequestsStream(r)} {
		st, err := js.Stream(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		info, err := st.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if info.Config.MaxBytes <= 0 || info.State.Bytes > uint64(info.Config.MaxBytes) {
			t.Errorf("%s: %d bytes, limit %d", name, info.State.Bytes, info.Config.MaxBytes)
		}
		if name != layout.RequestsStream(r) && info.State.FirstSeq == 1 {
			t.Errorf("%s: first sequence 1; want its oldest dropped (DiscardOld)", name)
		}
	}
	// The region still works.
	c := p.Region(r).Client
	key, err := c.CreateKey(ctx, api.CreateKeyRequest{})
	if err != nil {
		t.Fatalf("create-key after the flood: %v", err)
	}
	if _, err := c.Encrypt(ctx, key.KeyID, []byte("still here"), nil); err != nil {
		t.Fatalf("encrypt after the flood: %v", err)
	}
	rep, err := c.ReplicateKey(ctx, key.KeyID, other)
	if err != nil {
		t.Fatalf("replicate-key after the flood: %v", err)
	}
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if done, err := c.WaitReplication(wctx, rep.ReplicationID); err != nil || done.State != api.StateCompleted {
		t.Fatalf("replication after the flood: %v %+v", err, done)
	}
	// A message over the inbox's MaxMsgSize is refused at publish.
	onc, err := p.Connect(other, "big")
	if err != nil {
		t.Fatal(err)
	}
	ojs, _ := jetstream.New(onc)
	if _, err := ojs.Publish(ctx, messages.InboxSubject(other, r, messages.TypeInit), make([]byte, 1<<20)); err == nil {
		t.Error("a 1 MiB publish into an inbox was stored; want it refused by MaxMsgSize")
	}
}
