package e2e

import (
	"context"
	"testing"
	"time"

	"github.com/mrkrepl/mrkrepl/api"
	"github.com/mrkrepl/mrkrepl/internal/layout"
	"github.com/mrkrepl/mrkrepl/internal/natsauth"
	"github.com/mrkrepl/mrkrepl/messages"
	"github.com/mrkrepl/mrkrepl/mrkrepltest"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// TestPerRolePermissions runs the partition with per-role NATS users: the
// permissions are enough for a whole replication, and a client can reach
// the API and request stream but cannot write protocol messages or state.
func TestPerRolePermissions(t *testing.T) {
	p := mrkrepltest.New(t, mrkrepltest.Options{Auth: true})
	ctx := ctxT(t, time.Minute)
	us := p.Region("us-east-1").Client
	key, _ := newReplicatedKey(t, ctx, us, "eu-west-1")

	denied := make(chan string, 16)
	nc, err := p.ConnectAs("us-east-1", natsauth.RoleClient, "intruder")
	if err != nil {
		t.Fatal(err)
	}
	nc.SetErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { denied <- err.Error() })
	js, _ := jetstream.New(nc)
	for _, subj := range []string{
		messages.OutboxSubject("us-east-1", "eu-west-1", messages.TypeInit),
		messages.InboxSubject("us-east-1", "eu-west-1", messages.TypeInit),
		"$KV." + layout.KeysBucket("us-east-1") + "." + key.KeyID,
		"$JS.API.STREAM.DELETE." + layout.OutboxStream("us-east-1"),
	} {
		pctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
		_, err := js.Publish(pctx, subj, []byte("x"))
		cancel()
		if err == nil {
			t.Errorf("client published to %s", subj)
		}
		select {
		case e := <-denied:
			t.Logf("%s: %s", subj, e)
		case <-ctx.Done():
			t.Fatalf("no permissions violation reported for %s", subj)
		}
	}
	// The request stream is open to clients.
	if _, err := js.Publish(ctx, layout.RequestSubject("us-east-1", api.OpReplicateKey), []byte(`{"key_id":"`+key.KeyID+`","replica_region":"ap-southeast-2"}`)); err != nil {
		t.Errorf("client could not publish a request event: %v", err)
	}
}

// TestTLSAndPermissions runs every server with TLS and per-role users: the
// whole protocol works over TLS, and a connection without TLS is refused.
func TestTLSAndPermissions(t *testing.T) {
	p := mrkrepltest.New(t, mrkrepltest.Options{TLS: true, Auth: true, Regions: []string{"us-east-1", "eu-west-1"}})
	ctx := ctxT(t, time.Minute)
	us := p.Region("us-east-1").Client
	newReplicatedKey(t, ctx, us, "eu-west-1")
	if _, err := p.Region("us-east-1").Conn.TLSConnectionState(); err != nil {
		t.Errorf("worker connection is not TLS: %v", err)
	}
	if nc, err := nats.Connect(p.Region("us-east-1").URL, nats.NoReconnect()); err == nil {
		nc.Close()
		t.Error("a connection without TLS was accepted")
	}
}
