package layout

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// TestEveryResourceBounded: every stream of a region (those behind its
// buckets included) gets MaxBytes and MaxMsgSize from DefaultLimits, with
// the discard policy of its resource — DiscardNew for the clients'
// requests, DiscardOld for the rest (limits.go says why) —
// and an Options.Limits entry overrides one field and keeps the other
// (security review M1).
func TestEveryResourceBounded(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	js := startServer(t)
	const region = "us-east-1"
	regions := []string{"us-east-1", "eu-west-1"}
	check := func(o Options) {
		t.Helper()
		if _, err := EnsureRegion(ctx, js, region, regions, o); err != nil {
			t.Fatal(err)
		}
		if err := EnsureHeartbeat(ctx, js, region, o); err != nil {
			t.Fatal(err)
		}
		res := StreamResource(region)
		if len(res) != len(Streams(region)) || len(res) != len(DefaultLimits) {
			t.Fatalf("StreamResource names %d streams, Streams %d, DefaultLimits %d", len(res), len(Streams(region)), len(DefaultLimits))
		}
		for name, r := range res {
			st, err := js.Stream(ctx, name)
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			cfg := st.CachedInfo().Config
			want := o.Limit(r)
			if want.MaxBytes <= 0 || want.MaxMsgSize <= 0 {
				t.Errorf("%s: limit %+v, want both set", r, want)
			}
			if cfg.MaxBytes != want.MaxBytes || cfg.MaxMsgSize != want.MaxMsgSize {
				t.Errorf("%s: MaxBytes %d MaxMsgSize %d, want %d %d", name, cfg.MaxBytes, cfg.MaxMsgSize, want.MaxBytes, want.MaxMsgSize)
			}
			wantDiscard := jetstream.DiscardOld
			if r == ResourceRequests || strings.HasPrefix(name, "KV_") { // a full bucket refuses writes
				wantDiscard = jetstream.DiscardNew
			}
			if cfg.Discard != wantDiscard {
				t.Errorf("%s: discard %v, want %v", name, cfg.Discard, wantDiscard)
			}
		}
	}
	check(Options{})
	check(Options{Limits: map[string]Limit{ResourceInbox: {MaxBytes: 1 << 20}, ResourceKeys: {MaxMsgSize: 8 << 10}}})
	if l := (Options{Limits: map[string]Limit{ResourceInbox: {MaxBytes: 1 << 20}}}).Limit(ResourceInbox); l.MaxMsgSize != DefaultLimits[ResourceInbox].MaxMsgSize {
		t.Errorf("an override of MaxBytes changed MaxMsgSize: %+v", l)
	}
	if err := CheckLimits(map[string]Limit{"inbx": {MaxBytes: 1}}); err == nil {
		t.Error("CheckLimits accepted an unknown resource")
	}
	if err := CheckLimits(map[string]Limit{ResourceInbox: {MaxBytes: -2}}); err == nil {
		t.Error("CheckLimits accepted -2")
	}
	// The dead letter of the largest message fits the DLQ, and a protocol
	// message with headers fits the inbox and outbox.
	if DefaultLimits[ResourceDLQ].MaxMsgSize < DeadLetterPrefix+2*DeadLetterDetailMax {
		t.Error("DLQ MaxMsgSize below a dead letter's size")
	}
}

// TestDeadLetterTruncates: a dead letter keeps DeadLetterPrefix bytes, the
// whole length and SHA-256, and publishing the same delivery's dead
// letter again is a duplicate (first false).
func TestDeadLetterTruncates(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	js := startServer(t)
	const region = "us-east-1"
	if _, err := EnsureRegion(ctx, js, region, []string{region, "eu-west-1"}, Options{Limits: map[string]Limit{ResourceInbox: {MaxMsgSize: -1}}}); err != nil {
		t.Fatal(err)
	}
	big := make([]byte, 1<<20)
	if _, err := js.Publish(ctx, InboxWildcard(region)[:len(InboxWildcard(region))-1]+"eu-west-1.replication.init", big); err != nil {
		t.Fatal(err)
	}
	cons, err := js.CreateOrUpdateConsumer(ctx, InboxStream(region), jetstream.ConsumerConfig{Durable: "t", AckPolicy: jetstream.AckExplicitPolicy})
	if err != nil {
		t.Fatal(err)
	}
	msg, err := cons.Next(jetstream.FetchMaxWait(5 * time.Second))
	if err != nil {
		t.Fatal(err)
	}
	for i, wantFirst := range []bool{true, false} {
		first, err := DeadLetter(ctx, js, region, "worker", msg, "too_large", "x\r\ny")
		if err != nil || first != wantFirst {
			t.Fatalf("dead letter %d: first %v err %v, want %v", i, first, err, wantFirst)
		}
	}
	st, _ := js.Stream(ctx, DLQStream(region))
	m, err := st.GetMsg(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Data) != DeadLetterPrefix || m.Header.Get(HeaderLength) != "1048576" || m.Header.Get(HeaderSHA256) != MsgID(big) || m.Header.Get(HeaderDetail) != "x  y" {
		t.Errorf("dead letter: %d bytes, headers %v", len(m.Data), m.Header)
	}
}
