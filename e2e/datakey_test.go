package e2e

import (
	"bytes"
	"errors"
	"testing"
	"time"

	"github.com/mrkrepl/mrkrepl/api"
	"github.com/mrkrepl/mrkrepl/client"
	"github.com/mrkrepl/mrkrepl/mrkrepltest"
)

// TestGenerateDataKeyAcrossRegions: a data key made in one region is
// recovered from its blob in another, only with the same context.
func TestGenerateDataKeyAcrossRegions(t *testing.T) {
	p := mrkrepltest.New(t, mrkrepltest.Options{Regions: []string{"us-east-1", "eu-west-1"}})
	ctx := ctxT(t, time.Minute)
	us, eu := p.Region("us-east-1").Client, p.Region("eu-west-1").Client
	key, _ := newReplicatedKey(t, ctx, us, "eu-west-1")
	for _, n := range []int{0, 16, 24, 32} {
		dk, err := us.GenerateDataKey(ctx, key.KeyID, n, []byte("bucket=orders"))
		if err != nil {
			t.Fatal(err)
		}
		want := n
		if n == 0 {
			want = 32
		}
		if len(dk.Plaintext) != want {
			t.Errorf("data key of %d bytes, want %d", len(dk.Plaintext), want)
		}
		got, err := eu.Decrypt(ctx, dk.CiphertextBlob, []byte("bucket=orders"))
		if err != nil || !bytes.Equal(got.Plaintext, dk.Plaintext) {
			t.Fatalf("decrypt data key in eu-west-1: %v", err)
		}
		if _, err := eu.Decrypt(ctx, dk.CiphertextBlob, []byte("bucket=other")); err == nil {
			t.Error("data key decrypted under another context")
		}
	}
	two, _ := us.GenerateDataKey(ctx, key.KeyID, 32, nil)
	three, _ := us.GenerateDataKey(ctx, key.KeyID, 32, nil)
	if bytes.Equal(two.Plaintext, three.Plaintext) {
		t.Error("two data keys are equal")
	}
	var ae *client.Error
	if _, err := us.GenerateDataKey(ctx, key.KeyID, 20, nil); !errors.As(err, &ae) || ae.Code != api.CodeBadRequest {
		t.Errorf("20-byte data key: %v, want a 400", err)
	}
}

// TestReplicateWithClientToken: the same token returns the same run, even
// after it failed; another key under the same token is a conflict.
func TestReplicateWithClientToken(t *testing.T) {
	p := mrkrepltest.New(t, mrkrepltest.Options{
		NoProxy: true, RunTimeout: 300 * time.Millisecond, MaxAttempts: 1, SweepInterval: 50 * time.Millisecond,
	})
	ctx := ctxT(t, time.Minute)
	us := p.Region("us-east-1").Client
	key, _ := us.CreateKey(ctx, api.CreateKeyRequest{})
	other, _ := us.CreateKey(ctx, api.CreateKeyRequest{})
	first, err := us.ReplicateKeyWithToken(ctx, key.KeyID, "eu-west-1", "order-42")
	if err != nil {
		t.Fatal(err)
	}
	again, err := us.ReplicateKeyWithToken(ctx, key.KeyID, "eu-west-1", "order-42")
	if err != nil || again.ReplicationID != first.ReplicationID {
		t.Fatalf("repeat: %v %+v, want run %s", err, again, first.ReplicationID)
	}
	// No proxy: the run times out and, with one attempt, fails.
	if r, err := us.WaitReplication(ctx, first.ReplicationID); err != nil || r.State != api.StateFailed {
		t.Fatalf("%v %+v", err, r)
	}
	again, err = us.ReplicateKeyWithToken(ctx, key.KeyID, "eu-west-1", "order-42")
	if err != nil || again.ReplicationID != first.ReplicationID || again.State != api.StateFailed {
		t.Errorf("repeat after failure: %v %+v, want the same failed run", err, again)
	}
	// Without the token, a new request starts a new run.
	fresh, err := us.ReplicateKey(ctx, key.KeyID, "eu-west-1")
	if err != nil || fresh.ReplicationID == first.ReplicationID {
		t.Errorf("without token: %v %+v, want a new run", err, fresh)
	}
	var ae *client.Error
	if _, err := us.ReplicateKeyWithToken(ctx, other.KeyID, "eu-west-1", "order-42"); !errors.As(err, &ae) || ae.Code != api.CodeConflict {
		t.Errorf("token reused for another key: %v, want a 409", err)
	}
	if _, err := us.ReplicateKeyWithToken(ctx, key.KeyID, "eu-west-1", "bad token"); !errors.As(err, &ae) || ae.Code != api.CodeBadRequest {
		t.Errorf("token with a space: %v, want a 400", err)
	}
}
