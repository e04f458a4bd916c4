package e2e

// Tests of the small caps (issue 14, "Freshness and caps"; security review
// L2, L3): the version cap at rotate, key properties at the destination,
// epoch bounds.

import (
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/mrkrepl/mrkrepl/api"
	"github.com/mrkrepl/mrkrepl/client"
	"github.com/mrkrepl/mrkrepl/internal/layout"
	"github.com/mrkrepl/mrkrepl/messages"
	"github.com/mrkrepl/mrkrepl/mrkrepltest"
	"github.com/nats-io/nats.go/jetstream"
)

// TestRotateStopsAtMaxVersions: a key rotates up to messages.MaxVersions
// (256) versions; the next rotate-key is refused with 409 and the key is
// unchanged (its sync, status and hand-over must list every version, and
// would no longer Seal).
func TestRotateStopsAtMaxVersions(t *testing.T) {
	p := mrkrepltest.New(t, mrkrepltest.Options{Regions: []string{"us-east-1", "eu-west-1"}, NoProxy: true})
	ctx := ctxT(t, 2*time.Minute)
	c := p.Region("us-east-1").Client
	key, err := c.CreateKey(ctx, api.CreateKeyRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for i := 2; i <= messages.MaxVersions; i++ {
		if key, err = c.RotateKey(ctx, key.KeyID); err != nil {
			t.Fatalf("rotation to version %d: %v", i, err)
		}
	}
	if len(key.Versions) != messages.MaxVersions {
		t.Fatalf("%d versions, want %d", len(key.Versions), messages.MaxVersions)
	}
	var ae *client.Error
	if _, err := c.RotateKey(ctx, key.KeyID); !errors.As(err, &ae) || ae.Code != api.CodeConflict {
		t.Fatalf("rotation past %d versions: %v, want a 409", messages.MaxVersions, err)
	}
	after, err := c.DescribeKey(ctx, key.KeyID)
	if err != nil {
		t.Fatal(err)
	}
	if len(after.Versions) != messages.MaxVersions || after.CurrentVersion != key.CurrentVersion {
		t.Errorf("after the refusal: %d versions, current %d; want %d, %d", len(after.Versions), after.CurrentVersion, messages.MaxVersions, key.CurrentVersion)
	}
}

// TestInitPropertiesChecked: a correctly signed init for a key of a spec
// or usage this build does not support is refused at the destination with
// reason bad_properties; no run is started (nothing in its outbox).
func TestInitPropertiesChecked(t *testing.T) {
	p := mrkrepltest.New(t, mrkrepltest.Options{Regions: []string{"us-east-1", "eu-west-1"}, NoProxy: true})
	ctx := ctxT(t, time.Minute)
	const src, dst = "us-east-1", "eu-west-1"
	nc, err := p.Connect(dst, "test")
	if err != nil {
		t.Fatal(err)
	}
	js, _ := jetstream.New(nc)
	for _, props := range [][2]string{{"RSA_2048", "ENCRYPT_DECRYPT"}, {"SYMMETRIC_DEFAULT", "SIGN_VERIFY"}} {
		now := time.Now()
		m := &messages.Message{
			Header: messages.Header{V: 1, Type: messages.TypeInit, MsgID: messages.NewID(), ReplicationID: messages.NewID(),
				Partition: p.Bundle.Partition(), Src: src, Dst: dst, SentAt: now.UnixMilli(), ExpiresAt: now.Add(5 * time.Minute).UnixMilli()},
			Init: &messages.Init{KeyID: messages.NewKeyID(), KeySpec: props[0], KeyUsage: props[1], Version: 1, PrimaryRegion: src},
		}
		raw, err := messages.Seal(m, p.Region(src).HSM.Signer())
		if err != nil {
			t.Fatal(err)
		}
		if _, err := js.Publish(ctx, messages.InboxSubject(dst, src, messages.TypeInit), raw); err != nil {
			t.Fatal(err)
		}
		if comp, reason := deadLetterOf(t, ctx, nc, layout.DLQStream(dst), raw); comp != "worker" || reason != "bad_properties" {
			t.Errorf("%v: dead letter by %s with %s, want worker with bad_properties", props, comp, reason)
		}
	}
	if n := outboxCount(t, ctx, nc, dst); n != 0 {
		t.Errorf("%d messages in %s's outbox; want no offer for an unsupported key", n, dst)
	}
}

// TestEpochBounds: a key.sync from the key's primary that moves the
// replica's epoch more than 2^24 ahead, or to 2^63 or beyond, is refused
// (epoch_out_of_range) and the replica keeps its epoch; one a step ahead is
// applied.
func TestEpochBounds(t *testing.T) {
	p := mrkrepltest.New(t, mrkrepltest.Options{Regions: []string{"us-east-1", "eu-west-1"}})
	ctx := ctxT(t, time.Minute)
	const src, dst = "us-east-1", "eu-west-1"
	us, eu := p.Region(src).Client, p.Region(dst).Client
	key, err := us.CreateKey(ctx, api.CreateKeyRequest{})
	if err != nil {
		t.Fatal(err)
	}
	rep, err := us.ReplicateKey(ctx, key.KeyID, dst)
	if err != nil {
		t.Fatal(err)
	}
	if done, err := us.WaitReplication(ctx, rep.ReplicationID); err != nil || done.State != api.StateCompleted {
		t.Fatalf("replication: %v %+v", err, done)
	}
	replica, err := eu.DescribeKey(ctx, key.KeyID)
	if err != nil {
		t.Fatal(err)
	}
	nc, err := p.Connect(dst, "test")
	if err != nil {
		t.Fatal(err)
	}
	js, _ := jetstream.New(nc)
	sync := func(epoch uint64) []byte {
		now := time.Now()
		m := &messages.Message{
			Header: messages.Header{V: 1, Type: messages.TypeSync, MsgID: messages.NewID(), ReplicationID: messages.NewID(),
				Partition: p.Bundle.Partition(), Src: src, Dst: dst, SentAt: now.UnixMilli(), ExpiresAt: now.Add(5 * time.Minute).UnixMilli()},
			Sync: &messages.Sync{KeyID: key.KeyID, Epoch: epoch, PrimaryRegion: src, CurrentVersion: replica.CurrentVersion,
				Versions: slices.Clone(replica.Versions), Description: "moved"},
		}
		raw, err := messages.Seal(m, p.Region(src).HSM.Signer())
		if err != nil {
			t.Fatal(err)
		}
		return raw
	}
	for _, epoch := range []uint64{replica.Epoch + 1<<24 + 1, 1 << 63, 1<<64 - 1} {
		raw := sync(epoch)
		if _, err := js.Publish(ctx, messages.InboxSubject(dst, src, messages.TypeSync), raw); err != nil {
			t.Fatal(err)
		}
		if comp, reason := deadLetterOf(t, ctx, nc, layout.DLQStream(dst), raw); comp != "worker" || reason != "epoch_out_of_range" {
			t.Errorf("epoch %d: dead letter by %s with %s, want worker with epoch_out_of_range", epoch, comp, reason)
		}
	}
	if k, err := eu.DescribeKey(ctx, key.KeyID); err != nil || k.Epoch != replica.Epoch || k.Description == "moved" {
		t.Fatalf("replica after refused syncs: %v epoch %d %q, want epoch %d unchanged", err, k.Epoch, k.Description, replica.Epoch)
	}
	// Within the bound: applied.
	if _, err := js.Publish(ctx, messages.InboxSubject(dst, src, messages.TypeSync), sync(replica.Epoch+1<<24)); err != nil {
		t.Fatal(err)
	}
	if _, err := eu.WaitKey(ctx, key.KeyID, func(k *api.Key) bool { return k.Epoch == replica.Epoch+1<<24 }); err != nil {
		t.Errorf("a sync 2^24 ahead was not applied: %v", err)
	}
}
