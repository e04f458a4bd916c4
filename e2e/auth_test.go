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

// TestPerRolePermissions runs the partition with the production NATS
// accounts (mrkrepltest's default): they are enough for a whole
// replication; an application can reach the API and publish request
// events, which land on its account's subject, but cannot write protocol
// messages or state, use JetStream, or read another application's replies;
// the proxy can do none of what security review C1 showed.
func TestPerRolePermissions(t *testing.T) {
	p := mrkrepltest.New(t, mrkrepltest.Options{Apps: []natsauth.App{{Account: "APP_SPY", Users: []string{"spy"}}}})
	ctx := ctxT(t, time.Minute)
	us := p.Region("us-east-1").Client

	// A second application listens to every reply subject it may.
	spy, err := p.ConnectApp("us-east-1", "APP_SPY", "spy")
	if err != nil {
		t.Fatal(err)
	}
	spied := make(chan string, 100)
	if _, err := spy.Subscribe("_INBOX.>", func(m *nats.Msg) { spied <- m.Subject }); err != nil {
		t.Fatal(err)
	}
	_ = spy.Flush()
	key, _ := newReplicatedKey(t, ctx, us, "eu-west-1")
	if _, err := us.Encrypt(ctx, key.KeyID, []byte("secret"), nil); err != nil {
		t.Fatal(err)
	}

	denied := make(chan string, 16)
	nc, err := p.ConnectApp("us-east-1", mrkrepltest.DefaultApp.Account, mrkrepltest.DefaultApp.Users[1])
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
		layout.EventSubject("us-east-1", "KeyDeleted"),
		layout.RequestSubjectFor("us-east-1", api.OpReplicateKey, "APP_SPY"),
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
	// The request stream is open to clients, under their account's subject.
	if _, err := js.Publish(ctx, layout.RequestSubject("us-east-1", api.OpReplicateKey), []byte(`{"key_id":"`+key.KeyID+`","replica_region":"ap-southeast-2"}`)); err != nil {
		t.Errorf("client could not publish a request event: %v", err)
	}
	admin, err := p.Connect("us-east-1", "admin")
	if err != nil {
		t.Fatal(err)
	}
	ajs, _ := jetstream.New(admin)
	st, err := ajs.Stream(ctx, layout.RequestsStream("us-east-1"))
	if err != nil {
		t.Fatal(err)
	}
	want := layout.RequestSubjectFor("us-east-1", api.OpReplicateKey, mrkrepltest.DefaultApp.Account)
	if _, err := st.GetLastMsgForSubject(ctx, want); err != nil {
		t.Errorf("no request event on %s: %v", want, err)
	}

	// The proxy's user cannot read a key record.
	pc, err := p.ConnectAs("us-east-1", natsauth.UserProxy, "intruder")
	if err != nil {
		t.Fatal(err)
	}
	pjs, _ := jetstream.New(pc)
	kctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	if _, err := pjs.KeyValue(kctx, layout.KeysBucket("us-east-1")); err == nil {
		t.Error("the proxy opened the keys bucket")
	}
	select {
	case s := <-spied:
		t.Errorf("another application received %s", s)
	default:
	}
}

// TestTLSAndPermissions runs every server with TLS and per-role users: the
// whole protocol works over TLS, and a connection without TLS is refused.
func TestTLSAndPermissions(t *testing.T) {
	p := mrkrepltest.New(t, mrkrepltest.Options{TLS: true, Regions: []string{"us-east-1", "eu-west-1"}})
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
