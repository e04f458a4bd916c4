// Package e2e holds the end-to-end tests: whole partitions on embedded
// nats-servers (one per region), real workers, a real proxy.
package e2e

import (
	"bytes"
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/mrkrepl/mrkrepl/api"
	"github.com/mrkrepl/mrkrepl/client"
	"github.com/mrkrepl/mrkrepl/mrkrepltest"
)

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), d)
	t.Cleanup(cancel)
	return ctx
}

// TestReplicateToTwoRegions is the walking skeleton: a key made in
// us-east-1 is replicated to the two other regions, and ciphertext made in
// any region decrypts in every other.
func TestReplicateToTwoRegions(t *testing.T) {
	p := mrkrepltest.New(t, mrkrepltest.Options{})
	ctx := ctxT(t, time.Minute)
	us := p.Region("us-east-1").Client

	key, err := us.CreateKey(ctx, api.CreateKeyRequest{Description: "e2e"})
	if err != nil {
		t.Fatal(err)
	}
	for _, dst := range []string{"eu-west-1", "ap-southeast-2"} {
		rep, err := us.ReplicateKey(ctx, key.KeyID, dst)
		if err != nil {
			t.Fatalf("replicate to %s: %v", dst, err)
		}
		rep, err = us.WaitReplication(ctx, rep.ReplicationID)
		if err != nil {
			t.Fatal(err)
		}
		if rep.State != api.StateCompleted {
			t.Fatalf("replication to %s ended %s: %s", dst, rep.State, rep.Reason)
		}
	}
	primary, err := us.DescribeKey(ctx, key.KeyID)
	if err != nil {
		t.Fatal(err)
	}
	if len(primary.Replicas) != 2 {
		t.Fatalf("primary lists %d replicas, want 2: %+v", len(primary.Replicas), primary.Replicas)
	}
	for _, r := range primary.Replicas {
		if r.State != api.ReplicaEnabled {
			t.Errorf("replica %s is %s, want ENABLED", r.Region, r.State)
		}
	}
	for _, r := range p.Regions() {
		k, err := r.Client.DescribeKey(ctx, key.KeyID)
		if err != nil {
			t.Fatalf("%s: %v", r.Name, err)
		}
		if k.KeyID != key.KeyID || k.KeySpec != key.KeySpec || k.KeyUsage != key.KeyUsage ||
			k.PrimaryRegion != "us-east-1" || fmt.Sprint(k.Versions) != fmt.Sprint(key.Versions) ||
			k.Description != "e2e" {
			t.Errorf("%s: replica metadata %+v differs from primary %+v", r.Name, k, key)
		}
	}
	crossDecrypt(t, ctx, key.KeyID, p.Regions())
}

func crossDecrypt(t *testing.T, ctx context.Context, keyID string, regions []*mrkrepltest.Region) {
	t.Helper()
	for _, from := range regions {
		pt := []byte("secret made in " + from.Name)
		aad := []byte("ctx=" + from.Name)
		ct, err := from.Client.Encrypt(ctx, keyID, pt, aad)
		if err != nil {
			t.Fatalf("encrypt in %s: %v", from.Name, err)
		}
		for _, to := range regions {
			got, err := to.Client.Decrypt(ctx, ct.CiphertextBlob, aad)
			if err != nil {
				t.Fatalf("decrypt in %s of ciphertext from %s: %v", to.Name, from.Name, err)
			}
			if !bytes.Equal(got.Plaintext, pt) || got.KeyID != keyID {
				t.Fatalf("decrypt in %s of ciphertext from %s: got %q", to.Name, from.Name, got.Plaintext)
			}
			if _, err := to.Client.Decrypt(ctx, ct.CiphertextBlob, []byte("other")); err == nil {
				t.Fatalf("decrypt in %s with wrong aad succeeded", to.Name)
			}
		}
	}
}

// TestClusteredRegions runs each region as a three-node JetStream cluster
// (R3 streams and buckets) and keeps replicating while one node of every
// region is down.
func TestClusteredRegions(t *testing.T) {
	if testing.Short() {
		t.Skip("starts nine servers")
	}
	p := mrkrepltest.New(t, mrkrepltest.Options{ClusterSize: 3})
	ctx := ctxT(t, 2*time.Minute)
	us := p.Region("us-east-1").Client
	replicate := func(keyID, dst string) { t.Helper(); replicated(t, ctx, us, keyID, dst) }
	key, err := us.CreateKey(ctx, api.CreateKeyRequest{})
	if err != nil {
		t.Fatal(err)
	}
	replicate(key.KeyID, "eu-west-1")
	// One node of each region down; clients on it reconnect to the others.
	for _, r := range p.Regions() {
		p.StopNode(r.Name, 2)
	}
	// Read-your-writes: each key is used right after it is created (with
	// direct gets from followers this failed now and then with "not found").
	for range 5 {
		key2, err := us.CreateKey(ctx, api.CreateKeyRequest{})
		if err != nil {
			t.Fatal(err)
		}
		replicate(key2.KeyID, "eu-west-1")
		replicate(key2.KeyID, "ap-southeast-2")
		crossDecrypt(t, ctx, key2.KeyID, p.Regions())
	}
}

// replicated asks c's region to copy keyID to dst and fails t unless the
// run ends COMPLETED.
func replicated(t *testing.T, ctx context.Context, c *client.Client, keyID, dst string) *api.Replication {
	t.Helper()
	rep, err := c.ReplicateKey(ctx, keyID, dst)
	if err != nil {
		t.Fatalf("replicate %s from %s to %s: %v", keyID, c.Region(), dst, err)
	}
	if rep, err = c.WaitReplication(ctx, rep.ReplicationID); err != nil || rep.State != api.StateCompleted {
		t.Fatalf("replicate %s from %s to %s: %v %+v", keyID, c.Region(), dst, err, rep)
	}
	return rep
}

// newReplicatedKey creates a key in c's region and replicates it to dst.
func newReplicatedKey(t *testing.T, ctx context.Context, c *client.Client, dst string) (*api.Key, *api.Replication) {
	t.Helper()
	key, err := c.CreateKey(ctx, api.CreateKeyRequest{})
	if err != nil {
		t.Fatalf("create key in %s: %v", c.Region(), err)
	}
	return key, replicated(t, ctx, c, key.KeyID, dst)
}
