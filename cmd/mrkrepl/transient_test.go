package main

import (
	"errors"
	"fmt"
	"testing"

	"github.com/nats-io/nats.go/jetstream"
)

// TestTransient: a start failure that passes by itself is retried; a
// refusal that will not (a bad request) ends the daemon with it. "No
// suitable peers for placement" is a 400 that passes once a forming
// cluster has its servers (seen in e2e/netns's long mode).
func TestTransient(t *testing.T) {
	up := func() bool { return true }
	for _, c := range []struct {
		err  error
		want bool
	}{
		{fmt.Errorf("create kv: %w", &jetstream.APIError{Code: 400, ErrorCode: 10005, Description: "no suitable peers for placement, peer offline"}), true},
		{fmt.Errorf("create stream: %w", &jetstream.APIError{Code: 503, ErrorCode: 10008, Description: "JetStream system temporarily unavailable"}), true},
		{fmt.Errorf("create stream: %w", &jetstream.APIError{Code: 400, ErrorCode: 10058, Description: "stream name already in use"}), false},
		{errors.New("bad configuration"), false},
	} {
		if got := transient(c.err, up); got != c.want {
			t.Errorf("transient(%v) = %v, want %v", c.err, got, c.want)
		}
	}
	if !transient(errors.New("anything"), func() bool { return false }) {
		t.Error("a failure while disconnected is not transient")
	}
}
