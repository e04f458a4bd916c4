package layout

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/mrkrepl/mrkrepl/internal/natstest"

	"github.com/nats-io/nats.go/jetstream"
)

func startServer(t *testing.T) jetstream.JetStream {
	t.Helper()
	_, nc := natstest.Start(t, "layout")
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return js
}

// TestEnsureRegionUpgradesOldStreams creates a region's streams as the
// layout did before it set NoPerSubjectLimit, stores messages, then runs
// EnsureRegion: every stream takes the new limit, keeps its messages and
// still de-duplicates by Nats-Msg-Id.
func TestEnsureRegionUpgradesOldStreams(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	js := startServer(t)
	const region = "us-east-1"
	regions := []string{"us-east-1", "eu-west-1"}

	old := []jetstream.StreamConfig{
		{Name: RequestsStream(region), Subjects: []string{RequestsWildcard(region)}, Duplicates: DedupWindow, MaxAge: 7 * 24 * time.Hour},
		{Name: InboxStream(region), Subjects: []string{InboxWildcard(region)}, Duplicates: DedupWindow, MaxAge: 24 * time.Hour},
		{Name: EventsStream(region), Subjects: []string{EventsWildcard(region)}, MaxAge: 30 * 24 * time.Hour},
		{Name: OutboxStream(region), Subjects: []string{OutboxFilter(region, "eu-west-1")}, Duplicates: DedupWindow, MaxAge: 24 * time.Hour, Retention: jetstream.LimitsPolicy},
		{Name: DLQStream(region), Subjects: []string{DLQWildcard(region)}, MaxAge: 30 * 24 * time.Hour},
	}
	subjects := map[string]string{
		RequestsStream(region): RequestSubject(region, "replicate-key"),
		InboxStream(region):    "mrk." + region + ".in.eu-west-1.init",
		EventsStream(region):   EventSubject(region, "ReplicaCreated"),
		OutboxStream(region):   "mrk." + region + ".out.eu-west-1.offer",
		DLQStream(region):      DLQSubject(region, "worker"),
	}
	for _, cfg := range old {
		cfg.Storage = jetstream.FileStorage
		if _, err := js.CreateStream(ctx, cfg); err != nil {
			t.Fatalf("old %s: %v", cfg.Name, err)
		}
		for i := range 3 {
			if _, err := js.Publish(ctx, subjects[cfg.Name], []byte("old"), jetstream.WithMsgID(cfg.Name+"-old-"+string(rune('a'+i)))); err != nil {
				t.Fatalf("publish to %s: %v", cfg.Name, err)
			}
		}
	}

	for range 2 { // the second call finds everything as it wants it
		if _, err := EnsureRegion(ctx, js, region, regions, Options{}); err != nil {
			t.Fatalf("EnsureRegion over old streams: %v", err)
		}
	}

	for _, cfg := range old {
		st, err := js.Stream(ctx, cfg.Name)
		if err != nil {
			t.Fatal(err)
		}
		info, err := st.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if got := info.Config.MaxMsgsPerSubject; got != NoPerSubjectLimit {
			t.Errorf("%s: MaxMsgsPerSubject %d, want %d", cfg.Name, got, NoPerSubjectLimit)
		}
		if info.State.Msgs != 3 {
			t.Errorf("%s: %d messages after the update, want the 3 stored before", cfg.Name, info.State.Msgs)
		}
		wantDup := max(cfg.Duplicates, 2*time.Minute)
		if cfg.Name == DLQStream(region) {
			wantDup = DedupWindow // one dead letter per refused delivery (DeadLetter)
		}
		if info.Config.MaxAge != cfg.MaxAge || info.Config.Duplicates != wantDup {
			t.Errorf("%s: MaxAge %s Duplicates %s, want %s %s unchanged", cfg.Name, info.Config.MaxAge, info.Config.Duplicates, cfg.MaxAge, cfg.Duplicates)
		}
		// Old and new messages on one subject stay; duplicates are dropped.
		ack, err := js.Publish(ctx, subjects[cfg.Name], []byte("new"), jetstream.WithMsgID(cfg.Name+"-new"))
		if err != nil {
			t.Fatalf("publish to %s after the update: %v", cfg.Name, err)
		}
		if cfg.Duplicates > 0 {
			dup, err := js.Publish(ctx, subjects[cfg.Name], []byte("new"), jetstream.WithMsgID(cfg.Name+"-old-a"))
			if err != nil || !dup.Duplicate {
				t.Errorf("%s: republish of an old msg id: ack %+v, err %v; want a duplicate", cfg.Name, dup, err)
			}
		}
		if info, err = st.Info(ctx); err != nil {
			t.Fatal(err)
		}
		if info.State.Msgs != 4 || ack.Sequence != 4 {
			t.Errorf("%s: %d messages, last sequence %d; want 4 and 4", cfg.Name, info.State.Msgs, ack.Sequence)
		}
	}
}

// TestEnsureRegionFresh creates everything from nothing, twice.
func TestEnsureRegionFresh(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	js := startServer(t)
	regions := []string{"us-east-1", "eu-west-1", "ap-southeast-2"}
	for range 2 {
		r, err := EnsureRegion(ctx, js, "eu-west-1", regions, Options{})
		if err != nil {
			t.Fatal(err)
		}
		if r.Inbox == nil || r.Requests == nil || r.Keys == nil || r.Repl == nil || r.Replay == nil || r.Pending == nil || r.Tokens == nil {
			t.Fatalf("EnsureRegion returned a region with a missing resource: %+v", r)
		}
	}
	for _, name := range []string{RequestsStream("eu-west-1"), InboxStream("eu-west-1"), OutboxStream("eu-west-1"), EventsStream("eu-west-1"), DLQStream("eu-west-1")} {
		st, err := js.Stream(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		if got := st.CachedInfo().Config.MaxMsgsPerSubject; got != NoPerSubjectLimit {
			t.Errorf("%s: MaxMsgsPerSubject %d, want %d", name, got, NoPerSubjectLimit)
		}
	}
	// An outbox refuses a destination outside the partition.
	if _, err := js.Publish(ctx, "mrk.eu-west-1.out.mars-1.init", []byte("x")); !errors.Is(err, jetstream.ErrNoStreamResponse) {
		t.Errorf("publish to an unknown destination: err %v, want %v", err, jetstream.ErrNoStreamResponse)
	}
}
