package e2e

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mrkrepl/mrkrepl/api"
	"github.com/mrkrepl/mrkrepl/client"
	"github.com/mrkrepl/mrkrepl/hsmsvc"
	"github.com/mrkrepl/mrkrepl/mrkrepltest"
)

// TestMaterialMissing loses a replica's material from its HSM (as a soft
// HSM in memory does at a restart, while JetStream keeps the key's record):
// describe-key says so, and encrypt and decrypt there are refused with 409
// and a reason, not an internal error; the other regions are unaffected.
func TestMaterialMissing(t *testing.T) {
	p := mrkrepltest.New(t, mrkrepltest.Options{})
	ctx := ctxT(t, time.Minute)
	us := p.Region("us-east-1").Client
	eu := p.Region("eu-west-1")
	key, _ := newReplicatedKey(t, ctx, us, eu.Name)
	ct, err := us.Encrypt(ctx, key.KeyID, []byte("kept"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if k, err := eu.Client.DescribeKey(ctx, key.KeyID); err != nil || len(k.MaterialMissing) != 0 {
		t.Fatalf("before: %v, material missing %v, want none", err, k.MaterialMissing)
	}

	if err := eu.HSM.DestroyKey(ctx, hsmsvc.KeyRef{KeyID: key.KeyID, Version: 1}); err != nil {
		t.Fatal(err)
	}
	k, err := eu.Client.DescribeKey(ctx, key.KeyID)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(k.MaterialMissing, []uint32{1}) {
		t.Errorf("describe-key in %s: material missing %v, want [1]", eu.Name, k.MaterialMissing)
	}
	wantConflict := func(op string, err error) {
		t.Helper()
		var ae *client.Error
		if !errors.As(err, &ae) || ae.Code != api.CodeConflict || !strings.Contains(ae.Description, "material is missing") {
			t.Errorf("%s in %s: %v, want 409 saying the material is missing", op, eu.Name, err)
		}
	}
	_, err = eu.Client.Encrypt(ctx, key.KeyID, []byte("x"), nil)
	wantConflict("encrypt", err)
	_, err = eu.Client.Decrypt(ctx, ct.CiphertextBlob, nil)
	wantConflict("decrypt", err)

	// The primary still holds it, and says nothing is missing.
	if k, err := us.DescribeKey(ctx, key.KeyID); err != nil || len(k.MaterialMissing) != 0 {
		t.Errorf("primary: %v, material missing %v, want none", err, k.MaterialMissing)
	}
	if _, err := us.Decrypt(ctx, ct.CiphertextBlob, nil); err != nil {
		t.Errorf("decrypt in the primary: %v", err)
	}
}
