package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mrkrepl/mrkrepl/api"
	"github.com/mrkrepl/mrkrepl/client"
	"github.com/mrkrepl/mrkrepl/internal/layout"
	"github.com/mrkrepl/mrkrepl/internal/natsauth"
	"github.com/mrkrepl/mrkrepl/mrkrepltest"
	"github.com/nats-io/nats.go"
)

// Two application accounts beside the default one: ORDERS with alice and
// bob, OTHER with mallory. Only the default app's user creates keys here.
var authzApps = []natsauth.App{
	{Account: "APP_ORDERS", Users: []string{"alice", "bob"}},
	{Account: "APP_OTHER", Users: []string{"mallory"}},
}

func appClient(t *testing.T, p *mrkrepltest.Partition, region, account, user string) *client.Client {
	t.Helper()
	nc, err := p.ConnectApp(region, account, user)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return client.New(nc, region)
}

// events collects a region's audit events from now on.
func collectEvents(t *testing.T, p *mrkrepltest.Partition, region string) func(typ, keyID string) []api.Event {
	t.Helper()
	nc, err := p.Connect(region, "events")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	ch := make(chan *nats.Msg, 1024)
	if _, err := nc.ChanSubscribe(layout.EventsWildcard(region), ch); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	var seen []api.Event
	return func(typ, keyID string) []api.Event {
		for {
			select {
			case m := <-ch:
				var ev api.Event
				if err := json.Unmarshal(m.Data, &ev); err == nil {
					seen = append(seen, ev)
				}
				continue
			default:
			}
			break
		}
		var out []api.Event
		for _, ev := range seen {
			if ev.Type == typ && (keyID == "" || ev.KeyID == keyID) {
				out = append(out, ev)
			}
		}
		return out
	}
}

// waitEvent polls until an event of typ for keyID has arrived.
func waitEvent(t *testing.T, ctx context.Context, events func(string, string) []api.Event, typ, keyID string) api.Event {
	t.Helper()
	for {
		if evs := events(typ, keyID); len(evs) > 0 {
			return evs[len(evs)-1]
		}
		select {
		case <-ctx.Done():
			t.Fatalf("no %s event for %s", typ, keyID)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func forbidden(t *testing.T, what string, err error) {
	t.Helper()
	if !client.IsForbidden(err) {
		t.Fatalf("%s: want 403, got %v", what, err)
	}
}

// TestKeyPolicies: the creator may use its key, another principal may not
// (403 naming the action, an AccessDenied event naming the proven
// principal, nothing changed), until the key's policy names it; a policy
// condition on the encryption context is enforced; a malformed policy is
// refused with its reason; a replica gets the policy replicate-key gave.
func TestKeyPolicies(t *testing.T) {
	p := mrkrepltest.New(t, mrkrepltest.Options{Apps: authzApps})
	ctx := ctxT(t, 2*time.Minute)
	const us, eu = "us-east-1", "eu-west-1"
	alice := appClient(t, p, us, "APP_ORDERS", "alice")
	bob := appClient(t, p, us, "APP_ORDERS", "bob")
	mallory := appClient(t, p, us, "APP_OTHER", "mallory")
	events := collectEvents(t, p, us)

	// Applications may create keys (the partition's region policy).
	key, err := alice.CreateKey(ctx, api.CreateKeyRequest{Description: "orders"})
	if err != nil {
		t.Fatal(err)
	}
	created := waitEvent(t, ctx, events, api.EventKeyCreated, key.KeyID)
	if created.Actor != "APP_ORDERS/alice" {
		t.Errorf("KeyCreated actor %q, want the proven principal APP_ORDERS/alice", created.Actor)
	}
	ec := map[string]string{"tenant": "t1"}
	ct, err := alice.EncryptWithContext(ctx, key.KeyID, []byte("secret"), ec)
	if err != nil {
		t.Fatal(err)
	}
	if pt, err := alice.DecryptWithContext(ctx, key.KeyID, ct.CiphertextBlob, ec); err != nil || string(pt.Plaintext) != "secret" {
		t.Fatalf("creator decrypt: %v", err)
	}
	// The wrong context does not decrypt.
	if _, err := alice.DecryptWithContext(ctx, "", ct.CiphertextBlob, map[string]string{"tenant": "t2"}); err == nil {
		t.Fatal("decrypted with another encryption context")
	}

	// Nobody else may do anything with it.
	_, err = mallory.DecryptWithContext(ctx, "", ct.CiphertextBlob, ec)
	forbidden(t, "mallory decrypt", err)
	if !strings.Contains(err.Error(), "kms:Decrypt") || !strings.Contains(err.Error(), "APP_OTHER/mallory") {
		t.Errorf("refusal does not name the action and principal: %v", err)
	}
	denied := waitEvent(t, ctx, events, api.EventAccessDenied, key.KeyID)
	if denied.Actor != "APP_OTHER/mallory" || denied.Action != "kms:Decrypt" || denied.EncryptionContext["tenant"] != "t1" {
		t.Errorf("AccessDenied event %+v", denied)
	}
	_, err = mallory.EncryptWithContext(ctx, key.KeyID, []byte("x"), nil)
	forbidden(t, "mallory encrypt", err)
	_, err = mallory.RotateKey(ctx, key.KeyID)
	forbidden(t, "mallory rotate", err)
	_, err = mallory.ScheduleKeyDeletion(ctx, key.KeyID, 7)
	forbidden(t, "mallory schedule deletion", err)
	_, err = mallory.UpdatePrimaryRegion(ctx, key.KeyID, eu)
	forbidden(t, "mallory update primary", err)
	_, err = mallory.ReplicateKey(ctx, key.KeyID, eu)
	forbidden(t, "mallory replicate", err)
	_, err = mallory.DescribeKey(ctx, key.KeyID)
	forbidden(t, "mallory describe", err)
	_, err = mallory.GetKeyPolicy(ctx, key.KeyID)
	forbidden(t, "mallory get policy", err)
	forbidden(t, "mallory put policy", mallory.PutKeyPolicy(ctx, api.PutKeyPolicyRequest{KeyID: key.KeyID, Policy: `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":"*","Action":"kms:*","Resource":"*"}]}`}))
	// Bob, of the same account, is not the creator either.
	_, err = bob.DecryptWithContext(ctx, "", ct.CiphertextBlob, ec)
	forbidden(t, "bob decrypt", err)
	// Nothing changed.
	k, err := alice.DescribeKey(ctx, key.KeyID)
	if err != nil {
		t.Fatal(err)
	}
	if k.KeyState != api.KeyStateEnabled || !slices.Equal(k.Versions, []uint32{1}) || k.PrimaryRegion != us || len(k.Replicas) != 0 {
		t.Errorf("a refused request changed the key: %+v", k)
	}

	// A malformed policy is refused with the reason.
	err = alice.PutKeyPolicy(ctx, api.PutKeyPolicyRequest{KeyID: key.KeyID, Policy: `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":"*","Action":"kms:Fly","Resource":"*"}]}`})
	var ae *client.Error
	if !errors.As(err, &ae) || ae.Code != api.CodeBadRequest || !strings.Contains(ae.Description, `unknown action "kms:Fly"`) {
		t.Errorf("malformed policy: %v", err)
	}
	// A policy that locks the caller out needs the bypass.
	lockout := `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"MRK":"APP_ORDERS/bob"},"Action":"kms:Decrypt","Resource":"*"}]}`
	if err := alice.PutKeyPolicy(ctx, api.PutKeyPolicyRequest{KeyID: key.KeyID, Policy: lockout}); err == nil {
		t.Error("a policy that locks its author out was put without the bypass")
	}

	// A policy larger than other requests (up to AWS's 32 KiB) is accepted.
	var many []string
	for i := range 1000 {
		many = append(many, fmt.Sprintf("APP_ORDERS/user%04d", i))
	}
	big, _ := json.Marshal(map[string]any{"Version": "2012-10-17", "Statement": []map[string]any{
		{"Effect": "Allow", "Principal": map[string]any{"MRK": append(many, "APP_ORDERS/alice")}, "Action": "kms:*", "Resource": "*"}}})
	if len(big) < 20<<10 || len(big) > 32<<10 {
		t.Fatalf("test policy of %d bytes", len(big))
	}
	if err := alice.PutKeyPolicy(ctx, api.PutKeyPolicyRequest{KeyID: key.KeyID, Policy: string(big)}); err != nil {
		t.Fatalf("a %d-byte policy: %v", len(big), err)
	}

	// Bob may decrypt, only with his tenant's context; alice keeps control.
	policy := `{"Version":"2012-10-17","Statement":[
	 {"Sid":"Owner","Effect":"Allow","Principal":{"MRK":["APP_ORDERS/alice","MRK/admin"]},"Action":"kms:*","Resource":"*"},
	 {"Sid":"BobDecryptsT1","Effect":"Allow","Principal":{"MRK":"APP_ORDERS/bob"},"Action":"kms:Decrypt","Resource":"*",
	  "Condition":{"StringEquals":{"kms:EncryptionContext:tenant":"t1"}}}]}`
	if err := alice.PutKeyPolicy(ctx, api.PutKeyPolicyRequest{KeyID: key.KeyID, Policy: policy}); err != nil {
		t.Fatal(err)
	}
	if got, err := alice.GetKeyPolicy(ctx, key.KeyID); err != nil || got != policy {
		t.Fatalf("get policy: %q %v", got, err)
	}
	if ev := waitEvent(t, ctx, events, api.EventKeyPolicyChanged, key.KeyID); ev.Actor != "APP_ORDERS/alice" {
		t.Errorf("KeyPolicyChanged actor %q", ev.Actor)
	}
	if pt, err := bob.DecryptWithContext(ctx, key.KeyID, ct.CiphertextBlob, ec); err != nil || string(pt.Plaintext) != "secret" {
		t.Fatalf("bob decrypt with t1: %v", err)
	}
	ct2, err := alice.EncryptWithContext(ctx, key.KeyID, []byte("other tenant"), map[string]string{"tenant": "t2"})
	if err != nil {
		t.Fatal(err)
	}
	_, err = bob.DecryptWithContext(ctx, "", ct2.CiphertextBlob, map[string]string{"tenant": "t2"})
	forbidden(t, "bob decrypt with t2 (condition)", err)
	_, err = bob.EncryptWithContext(ctx, key.KeyID, []byte("x"), ec)
	forbidden(t, "bob encrypt", err)
	// Decrypt pinned to another key id is refused.
	if _, err := bob.DecryptWithContext(ctx, "mrk-00000000000000000000000000000000", ct.CiphertextBlob, ec); err == nil {
		t.Error("decrypt pinned to another key succeeded")
	}

	// The replica gets the policy replicate-key gives: there only bob may
	// decrypt (and the admin manage).
	replicaPolicy := `{"Version":"2012-10-17","Statement":[
	 {"Sid":"Admin","Effect":"Allow","Principal":{"MRK":"MRK/admin"},"Action":"kms:*","Resource":"*"},
	 {"Sid":"Bob","Effect":"Allow","Principal":{"MRK":"APP_ORDERS/bob"},"Action":["kms:Decrypt","kms:DescribeKey"],"Resource":"*"}]}`
	rep, err := alice.ReplicateKeyRequest(ctx, api.ReplicateKeyRequest{KeyID: key.KeyID, ReplicaRegion: eu, Policy: replicaPolicy})
	if err != nil {
		t.Fatal(err)
	}
	if rep, err = alice.WaitReplication(ctx, rep.ReplicationID); err != nil || rep.State != api.StateCompleted {
		t.Fatalf("replication: %+v %v", rep, err)
	}
	bobEU := appClient(t, p, eu, "APP_ORDERS", "bob")
	aliceEU := appClient(t, p, eu, "APP_ORDERS", "alice")
	if _, err := bobEU.WaitKey(ctx, key.KeyID, func(k *api.Key) bool { return k != nil }); err != nil {
		t.Fatal(err)
	}
	if pt, err := bobEU.DecryptWithContext(ctx, key.KeyID, ct.CiphertextBlob, ec); err != nil || string(pt.Plaintext) != "secret" {
		t.Fatalf("bob decrypt in %s: %v", eu, err)
	}
	_, err = aliceEU.DecryptWithContext(ctx, "", ct.CiphertextBlob, ec)
	forbidden(t, "alice decrypt in "+eu+" (the replica's own policy)", err)
	admin := client.New(mustConnect(t, p, eu), eu)
	if got, err := admin.GetKeyPolicy(ctx, key.KeyID); err != nil || got != replicaPolicy {
		t.Errorf("replica policy %q %v", got, err)
	}
}

// TestRegionPolicy: create-key and list-keys follow the region's policy;
// an application account the region does not name may not create keys.
func TestRegionPolicy(t *testing.T) {
	p := mrkrepltest.New(t, mrkrepltest.Options{Apps: authzApps, RegionPolicyApps: []string{"APP_ORDERS"}})
	ctx := ctxT(t, time.Minute)
	const us = "us-east-1"
	if _, err := appClient(t, p, us, "APP_ORDERS", "alice").CreateKey(ctx, api.CreateKeyRequest{}); err != nil {
		t.Fatalf("allowed account: %v", err)
	}
	_, err := appClient(t, p, us, "APP_OTHER", "mallory").CreateKey(ctx, api.CreateKeyRequest{})
	forbidden(t, "create-key by an account the region policy does not name", err)
	_, err = appClient(t, p, us, "APP_OTHER", "mallory").ListKeys(ctx)
	forbidden(t, "list-keys", err)
}

// TestForgedIdentityIgnored: a client that writes Nats-Request-Info or the
// old actor header itself is still the principal the server proved.
func TestForgedIdentityIgnored(t *testing.T) {
	p := mrkrepltest.New(t, mrkrepltest.Options{Apps: authzApps})
	ctx := ctxT(t, time.Minute)
	const us = "us-east-1"
	alice := appClient(t, p, us, "APP_ORDERS", "alice")
	key, err := alice.CreateKey(ctx, api.CreateKeyRequest{})
	if err != nil {
		t.Fatal(err)
	}
	ct, err := alice.EncryptWithContext(ctx, key.KeyID, []byte("secret"), nil)
	if err != nil {
		t.Fatal(err)
	}
	nc, err := p.ConnectApp(us, "APP_OTHER", "mallory")
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	events := collectEvents(t, p, us)
	body, _ := json.Marshal(api.DecryptRequest{CiphertextBlob: ct.CiphertextBlob})
	m := nats.NewMsg(layout.APISubject(us, api.OpDecrypt))
	m.Data = body
	m.Header.Set("Nats-Request-Info", `{"acc":"APP_ORDERS","user":"alice"}`)
	m.Header.Set(api.ActorHeader, "APP_ORDERS/alice")
	reply, err := nc.RequestMsg(m, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if code := reply.Header.Get("Nats-Service-Error-Code"); code != api.CodeForbidden {
		t.Fatalf("forged identity: reply code %q, data %q", code, reply.Data)
	}
	if ev := waitEvent(t, ctx, events, api.EventAccessDenied, key.KeyID); ev.Actor != "APP_OTHER/mallory" {
		t.Errorf("AccessDenied names %q, want the proven APP_OTHER/mallory", ev.Actor)
	}
}

// TestRequestEventAuthorized: a replicate-key request event is the
// publishing account's (the server writes the account into its subject): an
// account the key's policy does not name cannot replicate through the event
// path either, and its refusal is an AccessDenied event.
func TestRequestEventAuthorized(t *testing.T) {
	p := mrkrepltest.New(t, mrkrepltest.Options{Apps: authzApps})
	ctx := ctxT(t, time.Minute)
	const us, eu = "us-east-1", "eu-west-1"
	alice := appClient(t, p, us, "APP_ORDERS", "alice")
	key, err := alice.CreateKey(ctx, api.CreateKeyRequest{})
	if err != nil {
		t.Fatal(err)
	}
	events := collectEvents(t, p, us)
	nc, err := p.ConnectApp(us, "APP_OTHER", "mallory")
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	body, _ := json.Marshal(api.ReplicateKeyRequest{KeyID: key.KeyID, ReplicaRegion: eu})
	if err := nc.Publish(layout.RequestSubject(us, api.OpReplicateKey), body); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	ev := waitEvent(t, ctx, events, api.EventAccessDenied, key.KeyID)
	if ev.Actor != "APP_OTHER" || ev.Action != "kms:ReplicateKey" {
		t.Errorf("AccessDenied %+v", ev)
	}
	if k, err := alice.DescribeKey(ctx, key.KeyID); err != nil || len(k.Replicas) != 0 {
		t.Errorf("a refused request event replicated the key: %+v %v", k, err)
	}
	// A policy naming the account (not a user: an event carries only its
	// account) lets the event through.
	policy := `{"Version":"2012-10-17","Statement":[
	 {"Effect":"Allow","Principal":{"MRK":["APP_ORDERS/alice"]},"Action":"kms:*","Resource":"*"},
	 {"Effect":"Allow","Principal":{"MRK":"APP_OTHER"},"Action":"kms:ReplicateKey","Resource":"*"}]}`
	if err := alice.PutKeyPolicy(ctx, api.PutKeyPolicyRequest{KeyID: key.KeyID, Policy: policy}); err != nil {
		t.Fatal(err)
	}
	if err := nc.Publish(layout.RequestSubject(us, api.OpReplicateKey), body); err != nil {
		t.Fatal(err)
	}
	if _, err := alice.WaitKey(ctx, key.KeyID, func(k *api.Key) bool {
		r, ok := replicaOf(k, eu)
		return ok && r.State == api.ReplicaEnabled
	}); err != nil {
		t.Fatal(err)
	}
	if ev := waitEvent(t, ctx, events, api.EventReplicationStarted, key.KeyID); ev.Actor != "APP_OTHER" {
		t.Errorf("ReplicationStarted actor %q, want APP_OTHER", ev.Actor)
	}
}

func mustConnect(t *testing.T, p *mrkrepltest.Partition, region string) *nats.Conn {
	t.Helper()
	nc, err := p.Connect(region, "admin")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}
