package e2e

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/mrkrepl/mrkrepl/api"
	"github.com/mrkrepl/mrkrepl/client"
	"github.com/mrkrepl/mrkrepl/internal/layout"
	"github.com/mrkrepl/mrkrepl/messages"
	"github.com/mrkrepl/mrkrepl/mrkrepltest"
	"github.com/nats-io/nats.go/jetstream"
)

// TestBadRequests checks that each bad request gets a clear error reply
// with the right code, and changes nothing.
func TestBadRequests(t *testing.T) {
	p := mrkrepltest.New(t, mrkrepltest.Options{})
	ctx := ctxT(t, time.Minute)
	us := p.Region("us-east-1").Client
	eu := p.Region("eu-west-1").Client
	key, rep := newReplicatedKey(t, ctx, us, "eu-west-1")
	unknown := messages.NewKeyID()
	cases := []struct {
		name     string
		c        *client.Client
		op       string
		req      any
		code     string
		contains string
	}{
		{"unknown key", us, api.OpReplicateKey, api.ReplicateKeyRequest{KeyID: unknown, ReplicaRegion: "eu-west-1"}, api.CodeNotFound, "not found"},
		{"malformed key id", us, api.OpReplicateKey, api.ReplicateKeyRequest{KeyID: "mrk-XYZ", ReplicaRegion: "eu-west-1"}, api.CodeBadRequest, "invalid key id"},
		{"region outside partition", us, api.OpReplicateKey, api.ReplicateKeyRequest{KeyID: key.KeyID, ReplicaRegion: "mars-1"}, api.CodeBadRequest, "not in partition"},
		{"replicate to itself", us, api.OpReplicateKey, api.ReplicateKeyRequest{KeyID: key.KeyID, ReplicaRegion: "us-east-1"}, api.CodeBadRequest, "own region"},
		{"replicate a replica", eu, api.OpReplicateKey, api.ReplicateKeyRequest{KeyID: key.KeyID, ReplicaRegion: "ap-southeast-2"}, api.CodeBadRequest, "is a replica"},
		{"unknown field", us, api.OpCreateKey, map[string]any{"descripton": "typo"}, api.CodeBadRequest, "unknown field"},
		{"bad key usage", us, api.OpCreateKey, api.CreateKeyRequest{KeyUsage: "SIGN_VERIFY"}, api.CodeBadRequest, "unsupported key usage"},
		{"describe unknown key", us, api.OpDescribeKey, api.KeyRequest{KeyID: unknown}, api.CodeNotFound, "not found"},
		{"encrypt empty", us, api.OpEncrypt, api.EncryptRequest{KeyID: key.KeyID}, api.CodeBadRequest, "plaintext"},
		{"encrypt too large", us, api.OpEncrypt, api.EncryptRequest{KeyID: key.KeyID, Plaintext: make([]byte, api.MaxPlaintext+1)}, api.CodeBadRequest, "plaintext"},
		{"decrypt garbage", us, api.OpDecrypt, api.DecryptRequest{CiphertextBlob: []byte("garbage")}, api.CodeBadRequest, "malformed ciphertext"},
		{"decrypt in region without key", p.Region("ap-southeast-2").Client, api.OpEncrypt, api.EncryptRequest{KeyID: key.KeyID, Plaintext: []byte("x")}, api.CodeNotFound, "not found"},
		{"describe unknown replication", us, api.OpDescribeReplication, api.ReplicationRequest{ReplicationID: messages.NewID()}, api.CodeNotFound, "not found"},
		{"rotate malformed key id", us, api.OpRotateKey, api.RotateKeyRequest{KeyID: "mrk-XYZ"}, api.CodeBadRequest, "invalid key id"},
		{"rotate unknown key", us, api.OpRotateKey, api.RotateKeyRequest{KeyID: unknown}, api.CodeNotFound, "not found"},
		{"rotate unknown field", us, api.OpRotateKey, map[string]any{"key_id": key.KeyID, "version": 2}, api.CodeBadRequest, "unknown field"},
		{"update primary to a region outside the partition", us, api.OpUpdatePrimaryRegion, api.UpdatePrimaryRegionRequest{KeyID: key.KeyID, PrimaryRegion: "mars-1"}, api.CodeBadRequest, "not in partition"},
		{"update primary to itself", us, api.OpUpdatePrimaryRegion, api.UpdatePrimaryRegionRequest{KeyID: key.KeyID, PrimaryRegion: "us-east-1"}, api.CodeBadRequest, "already primary"},
		{"update primary of an unknown key", us, api.OpUpdatePrimaryRegion, api.UpdatePrimaryRegionRequest{KeyID: unknown, PrimaryRegion: "eu-west-1"}, api.CodeNotFound, "not found"},
		{"schedule deletion of an unknown key", us, api.OpScheduleKeyDeletion, api.ScheduleKeyDeletionRequest{KeyID: unknown}, api.CodeNotFound, "not found"},
		{"schedule deletion with a negative window", eu, api.OpScheduleKeyDeletion, api.ScheduleKeyDeletionRequest{KeyID: key.KeyID, PendingWindowDays: -1}, api.CodeBadRequest, "pending_window_days"},
		{"cancel deletion of an unknown key", us, api.OpCancelKeyDeletion, api.KeyRequest{KeyID: unknown}, api.CodeNotFound, "not found"},
		{"cancel deletion with malformed key id", us, api.OpCancelKeyDeletion, api.KeyRequest{KeyID: "x"}, api.CodeBadRequest, "invalid key id"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.c.Call(ctx, tc.op, tc.req, nil)
			var ae *client.Error
			if !errors.As(err, &ae) {
				t.Fatalf("got %v, want an API error", err)
			}
			if ae.Code != tc.code || !strings.Contains(ae.Description, tc.contains) {
				t.Errorf("got %s %q, want %s containing %q", ae.Code, ae.Description, tc.code, tc.contains)
			}
		})
	}
	// A second replicate request for an existing replica answers with it.
	again, err := us.ReplicateKey(ctx, key.KeyID, "eu-west-1")
	if err != nil || again.ReplicationID != rep.ReplicationID || again.State != api.StateCompleted {
		t.Errorf("replicating again: %v %+v, want the completed run %s", err, again, rep.ReplicationID)
	}
	// Tampered ciphertext fails cleanly.
	ct, err := us.Encrypt(ctx, key.KeyID, []byte("x"), nil)
	if err != nil {
		t.Fatal(err)
	}
	ct.CiphertextBlob[len(ct.CiphertextBlob)-1] ^= 1
	if _, err := eu.Decrypt(ctx, ct.CiphertextBlob, nil); err == nil {
		t.Error("tampered ciphertext decrypted")
	}
}

// TestReplicationRequestedAsEvent publishes a replicate-key request on the
// region's requests stream, as a user would with the nats CLI, and follows
// it on the audit stream; a bad event is dead-lettered with a reason.
func TestReplicationRequestedAsEvent(t *testing.T) {
	p := mrkrepltest.New(t, mrkrepltest.Options{})
	ctx := ctxT(t, time.Minute)
	us := p.Region("us-east-1")
	key, err := us.Client.CreateKey(ctx, api.CreateKeyRequest{})
	if err != nil {
		t.Fatal(err)
	}
	nc, _ := p.Connect(us.Name, "user")
	js, _ := jetstream.New(nc)
	events, err := js.OrderedConsumer(ctx, layout.EventsStream(us.Name), jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	body, _ := json.Marshal(api.ReplicateKeyRequest{KeyID: key.KeyID, ReplicaRegion: "ap-southeast-2"})
	if _, err := js.Publish(ctx, layout.RequestSubject(us.Name, api.OpReplicateKey), body); err != nil {
		t.Fatal(err)
	}
	if _, err := js.Publish(ctx, layout.RequestSubject(us.Name, api.OpReplicateKey), []byte(`{"key_id":"`+key.KeyID+`","replica_region":"nowhere-1"}`)); err != nil {
		t.Fatal(err)
	}
	seen := map[string]api.Event{}
	for seen[api.EventReplicationCompleted].Type == "" || seen[api.EventRequestRejected].Type == "" {
		msg, err := events.Next(jetstream.FetchContext(ctx))
		if err != nil {
			t.Fatalf("audit stream: %v (seen %v)", err, seen)
		}
		var ev api.Event
		if err := json.Unmarshal(msg.Data(), &ev); err != nil {
			t.Fatal(err)
		}
		seen[ev.Type] = ev
	}
	if ev := seen[api.EventReplicationCompleted]; ev.KeyID != key.KeyID || ev.Peer != "ap-southeast-2" {
		t.Errorf("completed event %+v", ev)
	}
	if ev := seen[api.EventRequestRejected]; !strings.Contains(ev.Reason, "nowhere-1") || ev.KeyID != key.KeyID {
		t.Errorf("rejected event %+v, want the reason to name the bad region, and key_id %s", ev, key.KeyID)
	}
	reasons := deadLetters(t, ctx, nc, layout.DLQStream(us.Name), 1)
	if len(reasons) != 1 || reasons[0] != "bad_request" {
		t.Errorf("dead letters %v, want [bad_request]", reasons)
	}
	k, err := p.Region("ap-southeast-2").Client.DescribeKey(ctx, key.KeyID)
	if err != nil || k.Role != api.RoleReplica {
		t.Errorf("replica: %v %+v", err, k)
	}
}
