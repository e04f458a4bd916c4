package layout

import (
	"context"
	"strings"
	"testing"
	"time"
)

// TestEverythingDescribed: every stream and bucket of a region has a
// description naming the region, as "nats stream ls" and "nats kv ls"
// show it.
func TestEverythingDescribed(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	js := startServer(t)
	if _, err := EnsureRegion(ctx, js, "eu-west-1", []string{"us-east-1", "eu-west-1"}, Options{}); err != nil {
		t.Fatal(err)
	}
	n := 0
	streams := js.ListStreams(ctx)
	for info := range streams.Info() {
		n++
		if d := info.Config.Description; !strings.HasPrefix(d, "mrkrepl eu-west-1: ") {
			t.Errorf("stream %s: description %q, want one starting \"mrkrepl eu-west-1: \"", info.Config.Name, d)
		}
	}
	if err := streams.Err(); err != nil {
		t.Fatal(err)
	}
	if n != 12 { // requests, inbox, events, outbox, dlq and seven buckets
		t.Errorf("%d streams, want 12", n)
	}
}
