package kmsapi_test

// The KMS API through the AWS SDK for Go v2, unchanged, against a
// mrkrepltest partition: nothing hand-rolled on the client side.

import (
	"bytes"
	"context"
	"errors"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
	"github.com/mrkrepl/mrkrepl/mrkrepltest"
)

// sdkClient is an AWS SDK KMS client of region signing with a fresh
// access key of principal.
func sdkClient(t *testing.T, p *mrkrepltest.Partition, region, principal string) *kms.Client {
	t.Helper()
	ak, err := p.CreateAccessKey(t.Context(), region, principal)
	if err != nil {
		t.Fatalf("create access key: %v", err)
	}
	if ak.SecretAccessKey == "" {
		t.Fatal("create-access-key gave no secret")
	}
	return newClient(p.Region(region).KMSURL, region, ak.AccessKeyID, ak.SecretAccessKey)
}

func newClient(url, region, id, secret string) *kms.Client {
	return kms.NewFromConfig(aws.Config{
		Region:           region,
		Credentials:      credentials.NewStaticCredentialsProvider(id, secret, ""),
		RetryMaxAttempts: 1,
	}, func(o *kms.Options) { o.BaseEndpoint = aws.String(url) })
}

func startKMS(t *testing.T) *mrkrepltest.Partition {
	t.Helper()
	return mrkrepltest.New(t, mrkrepltest.Options{KMS: true, Regions: []string{"us-east-1", "eu-west-1"}})
}

// errAs checks that err is the SDK's typed error T.
func errAs[T error](t *testing.T, what string, err error) {
	t.Helper()
	var want T
	if !errors.As(err, &want) {
		t.Fatalf("%s: got %T %v, want %T", what, err, err, want)
	}
}

func TestSDKMultiRegionFlow(t *testing.T) {
	p := startKMS(t)
	ctx := t.Context()
	app := mrkrepltest.DefaultAppPrincipal()
	us := sdkClient(t, p, "us-east-1", app)
	eu := sdkClient(t, p, "eu-west-1", app)

	created, err := us.CreateKey(ctx, &kms.CreateKeyInput{MultiRegion: aws.Bool(true), Description: aws.String("orders")})
	if err != nil {
		t.Fatalf("create key: %v", err)
	}
	md := created.KeyMetadata
	id := aws.ToString(md.KeyId)
	if !aws.ToBool(md.MultiRegion) || md.MultiRegionConfiguration.MultiRegionKeyType != types.MultiRegionKeyTypePrimary ||
		md.KeyState != types.KeyStateEnabled || aws.ToString(md.Arn) != "arn:aws:kms:us-east-1:000000000000:key/"+id {
		t.Fatalf("created key metadata: %+v", md)
	}

	desc, err := us.DescribeKey(ctx, &kms.DescribeKeyInput{KeyId: md.Arn})
	if err != nil {
		t.Fatalf("describe: %v", err)
	}
	if aws.ToString(desc.KeyMetadata.Description) != "orders" || desc.KeyMetadata.CreationDate == nil {
		t.Fatalf("describe: %+v", desc.KeyMetadata)
	}

	ec := map[string]string{"tenant": "acme"}
	enc, err := us.Encrypt(ctx, &kms.EncryptInput{KeyId: aws.String(id), Plaintext: []byte("hello"), EncryptionContext: ec})
	if err != nil {
		t.Fatalf("encrypt: %v", err)
	}
	dec, err := us.Decrypt(ctx, &kms.DecryptInput{CiphertextBlob: enc.CiphertextBlob, EncryptionContext: ec})
	if err != nil {
		t.Fatalf("decrypt: %v", err)
	}
	if !bytes.Equal(dec.Plaintext, []byte("hello")) || aws.ToString(dec.KeyId) != aws.ToString(md.Arn) {
		t.Fatalf("decrypt: %q %s", dec.Plaintext, aws.ToString(dec.KeyId))
	}

	// Replicate, and wait for the replica in eu-west-1.
	rep, err := us.ReplicateKey(ctx, &kms.ReplicateKeyInput{KeyId: md.Arn, ReplicaRegion: aws.String("eu-west-1")})
	if err != nil {
		t.Fatalf("replicate: %v", err)
	}
	replicaARN := aws.ToString(rep.ReplicaKeyMetadata.Arn)
	if replicaARN != "arn:aws:kms:eu-west-1:000000000000:key/"+id {
		t.Fatalf("replica arn %s", replicaARN)
	}
	waitState(t, eu, replicaARN, types.KeyStateEnabled)
	rd, err := eu.DescribeKey(ctx, &kms.DescribeKeyInput{KeyId: aws.String(replicaARN)})
	if err != nil {
		t.Fatal(err)
	}
	mrc := rd.KeyMetadata.MultiRegionConfiguration
	if mrc.MultiRegionKeyType != types.MultiRegionKeyTypeReplica || aws.ToString(mrc.PrimaryKey.Region) != "us-east-1" {
		t.Fatalf("replica's multi-Region configuration: %+v", mrc)
	}
	pd, err := us.DescribeKey(ctx, &kms.DescribeKeyInput{KeyId: aws.String(id)})
	if err != nil {
		t.Fatal(err)
	}
	if rk := pd.KeyMetadata.MultiRegionConfiguration.ReplicaKeys; len(rk) != 1 || aws.ToString(rk[0].Region) != "eu-west-1" {
		t.Fatalf("primary's replica keys: %+v", rk)
	}

	// Encrypted in us-east-1, decrypted in eu-west-1 naming the replica's ARN.
	dec, err = eu.Decrypt(ctx, &kms.DecryptInput{CiphertextBlob: enc.CiphertextBlob, EncryptionContext: ec, KeyId: aws.String(replicaARN)})
	if err != nil {
		t.Fatalf("decrypt in eu-west-1: %v", err)
	}
	if !bytes.Equal(dec.Plaintext, []byte("hello")) || aws.ToString(dec.KeyId) != replicaARN {
		t.Fatalf("decrypt in eu-west-1: %q %s", dec.Plaintext, aws.ToString(dec.KeyId))
	}
	// The primary's ARN names a key of another region there.
	_, err = eu.Decrypt(ctx, &kms.DecryptInput{CiphertextBlob: enc.CiphertextBlob, EncryptionContext: ec, KeyId: md.Arn})
	errAs[*types.NotFoundException](t, "decrypt naming another region's ARN", err)

	// Rotate on demand: a second version, current in both regions.
	if _, err := us.RotateKeyOnDemand(ctx, &kms.RotateKeyOnDemandInput{KeyId: aws.String(id)}); err != nil {
		t.Fatalf("rotate: %v", err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		rot, err := us.ListKeyRotations(ctx, &kms.ListKeyRotationsInput{KeyId: aws.String(id)})
		if err != nil {
			t.Fatalf("list key rotations: %v", err)
		}
		st, err := us.GetKeyRotationStatus(ctx, &kms.GetKeyRotationStatusInput{KeyId: aws.String(id)})
		if err != nil {
			t.Fatalf("rotation status: %v", err)
		}
		if len(rot.Rotations) == 1 && st.OnDemandRotationStartDate == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("rotation not done: %+v", rot.Rotations)
		}
		time.Sleep(100 * time.Millisecond)
	}
	enc2, err := eu.Encrypt(ctx, &kms.EncryptInput{KeyId: aws.String(replicaARN), Plaintext: []byte("v2")})
	if err != nil {
		t.Fatalf("encrypt in eu-west-1: %v", err)
	}
	if dec, err := us.Decrypt(ctx, &kms.DecryptInput{CiphertextBlob: enc2.CiphertextBlob}); err != nil || string(dec.Plaintext) != "v2" {
		t.Fatalf("decrypt in us-east-1 of eu-west-1's ciphertext: %v", err)
	}
	// The old ciphertext still decrypts.
	if _, err := eu.Decrypt(ctx, &kms.DecryptInput{CiphertextBlob: enc.CiphertextBlob, EncryptionContext: ec}); err != nil {
		t.Fatalf("decrypt of version 1 after rotation: %v", err)
	}

	// Move the primary to eu-west-1.
	if _, err := us.UpdatePrimaryRegion(ctx, &kms.UpdatePrimaryRegionInput{KeyId: aws.String(id), PrimaryRegion: aws.String("eu-west-1")}); err != nil {
		t.Fatalf("update primary region: %v", err)
	}
	deadline = time.Now().Add(30 * time.Second)
	for {
		d, err := eu.DescribeKey(ctx, &kms.DescribeKeyInput{KeyId: aws.String(id)})
		if err != nil {
			t.Fatal(err)
		}
		u, err := us.DescribeKey(ctx, &kms.DescribeKeyInput{KeyId: aws.String(id)})
		if err != nil {
			t.Fatal(err)
		}
		if d.KeyMetadata.MultiRegionConfiguration.MultiRegionKeyType == types.MultiRegionKeyTypePrimary &&
			u.KeyMetadata.MultiRegionConfiguration.MultiRegionKeyType == types.MultiRegionKeyTypeReplica &&
			d.KeyMetadata.KeyState == types.KeyStateEnabled && u.KeyMetadata.KeyState == types.KeyStateEnabled {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("primary not moved: eu %s %s, us %s %s", d.KeyMetadata.MultiRegionConfiguration.MultiRegionKeyType, d.KeyMetadata.KeyState,
				u.KeyMetadata.MultiRegionConfiguration.MultiRegionKeyType, u.KeyMetadata.KeyState)
		}
		time.Sleep(100 * time.Millisecond)
	}

	// Schedule the deletion of the replica (now in us-east-1), then cancel it.
	sd, err := us.ScheduleKeyDeletion(ctx, &kms.ScheduleKeyDeletionInput{KeyId: aws.String(id), PendingWindowInDays: aws.Int32(7)})
	if err != nil {
		t.Fatalf("schedule deletion: %v", err)
	}
	if sd.KeyState != types.KeyStatePendingDeletion || aws.ToInt32(sd.PendingWindowInDays) != 7 || sd.DeletionDate == nil {
		t.Fatalf("schedule deletion: %+v", sd)
	}
	_, err = us.Encrypt(ctx, &kms.EncryptInput{KeyId: aws.String(id), Plaintext: []byte("x")})
	errAs[*types.KMSInvalidStateException](t, "encrypt with a key pending deletion", err)
	if _, err := us.CancelKeyDeletion(ctx, &kms.CancelKeyDeletionInput{KeyId: aws.String(id)}); err != nil {
		t.Fatalf("cancel deletion: %v", err)
	}
	waitState(t, us, id, types.KeyStateDisabled) // as in AWS
}

// waitState polls DescribeKey until the key is in state.
func waitState(t *testing.T, c *kms.Client, keyID string, state types.KeyState) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	for {
		d, err := c.DescribeKey(ctx, &kms.DescribeKeyInput{KeyId: aws.String(keyID)})
		var nf *types.NotFoundException
		if err != nil && !errors.As(err, &nf) {
			t.Fatalf("describe %s: %v", keyID, err)
		}
		if err == nil && d.KeyMetadata.KeyState == state {
			return
		}
		if ctx.Err() != nil {
			t.Fatalf("key %s not %s", keyID, state)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
