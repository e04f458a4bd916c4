package kmsapi_test

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
	"github.com/aws/smithy-go"
	"github.com/mrkrepl/mrkrepl/client"
	"github.com/mrkrepl/mrkrepl/mrkrepltest"
)

// TestSDKOperations: aliases, enable/disable, data keys, re-encryption,
// policies and pagination, and the errors the SDK types, in one region.
func TestSDKOperations(t *testing.T) {
	p := startKMS(t)
	ctx := t.Context()
	us := sdkClient(t, p, "us-east-1", mrkrepltest.DefaultAppPrincipal())

	single, err := us.CreateKey(ctx, &kms.CreateKeyInput{})
	if err != nil {
		t.Fatal(err)
	}
	sid := aws.ToString(single.KeyMetadata.KeyId)
	if aws.ToBool(single.KeyMetadata.MultiRegion) || single.KeyMetadata.MultiRegionConfiguration != nil {
		t.Fatalf("a key created without MultiRegion is single-Region: %+v", single.KeyMetadata)
	}
	_, err = us.ReplicateKey(ctx, &kms.ReplicateKeyInput{KeyId: aws.String(sid), ReplicaRegion: aws.String("eu-west-1")})
	errAs[*types.UnsupportedOperationException](t, "replicate a single-Region key", err)

	mrk, err := us.CreateKey(ctx, &kms.CreateKeyInput{MultiRegion: aws.Bool(true)})
	if err != nil {
		t.Fatal(err)
	}
	mid := aws.ToString(mrk.KeyMetadata.KeyId)

	// Aliases: KeyId as alias name and alias ARN.
	if _, err := us.CreateAlias(ctx, &kms.CreateAliasInput{AliasName: aws.String("alias/orders"), TargetKeyId: aws.String(mid)}); err != nil {
		t.Fatalf("create alias: %v", err)
	}
	_, err = us.CreateAlias(ctx, &kms.CreateAliasInput{AliasName: aws.String("alias/orders"), TargetKeyId: aws.String(sid)})
	errAs[*types.AlreadyExistsException](t, "create an alias twice", err)
	_, err = us.CreateAlias(ctx, &kms.CreateAliasInput{AliasName: aws.String("orders"), TargetKeyId: aws.String(sid)})
	errAs[*types.InvalidAliasNameException](t, "alias without alias/", err)
	enc, err := us.Encrypt(ctx, &kms.EncryptInput{KeyId: aws.String("alias/orders"), Plaintext: []byte("by alias")})
	if err != nil || aws.ToString(enc.KeyId) != aws.ToString(mrk.KeyMetadata.Arn) {
		t.Fatalf("encrypt by alias: %v", err)
	}
	d, err := us.DescribeKey(ctx, &kms.DescribeKeyInput{KeyId: aws.String("arn:aws:kms:us-east-1:000000000000:alias/orders")})
	if err != nil || aws.ToString(d.KeyMetadata.KeyId) != mid {
		t.Fatalf("describe by alias ARN: %v", err)
	}
	if _, err := us.UpdateAlias(ctx, &kms.UpdateAliasInput{AliasName: aws.String("alias/orders"), TargetKeyId: aws.String(sid)}); err != nil {
		t.Fatalf("update alias: %v", err)
	}
	_, err = us.Decrypt(ctx, &kms.DecryptInput{CiphertextBlob: enc.CiphertextBlob, KeyId: aws.String("alias/orders")})
	errAs[*types.IncorrectKeyException](t, "decrypt naming the other key", err)
	la, err := us.ListAliases(ctx, &kms.ListAliasesInput{KeyId: aws.String(sid)})
	if err != nil || len(la.Aliases) != 1 || aws.ToString(la.Aliases[0].AliasName) != "alias/orders" {
		t.Fatalf("list aliases: %v %+v", err, la)
	}
	eu := sdkClient(t, p, "eu-west-1", mrkrepltest.DefaultAppPrincipal())
	if la, err := eu.ListAliases(ctx, &kms.ListAliasesInput{}); err != nil || len(la.Aliases) != 0 {
		t.Fatalf("aliases are per region: %v %+v", err, la)
	}
	if _, err := us.DeleteAlias(ctx, &kms.DeleteAliasInput{AliasName: aws.String("alias/orders")}); err != nil {
		t.Fatalf("delete alias: %v", err)
	}
	_, err = us.DescribeKey(ctx, &kms.DescribeKeyInput{KeyId: aws.String("alias/orders")})
	errAs[*types.NotFoundException](t, "describe a deleted alias", err)

	// Enable and disable.
	if _, err := us.DisableKey(ctx, &kms.DisableKeyInput{KeyId: aws.String(mid)}); err != nil {
		t.Fatal(err)
	}
	_, err = us.Encrypt(ctx, &kms.EncryptInput{KeyId: aws.String(mid), Plaintext: []byte("x")})
	errAs[*types.DisabledException](t, "encrypt with a disabled key", err)
	_, err = us.Decrypt(ctx, &kms.DecryptInput{CiphertextBlob: enc.CiphertextBlob})
	errAs[*types.DisabledException](t, "decrypt with a disabled key", err)
	if d, _ := us.DescribeKey(ctx, &kms.DescribeKeyInput{KeyId: aws.String(mid)}); d == nil || d.KeyMetadata.KeyState != types.KeyStateDisabled || d.KeyMetadata.Enabled {
		t.Fatalf("disabled key described as %+v", d)
	}
	if _, err := us.EnableKey(ctx, &kms.EnableKeyInput{KeyId: aws.String(mid)}); err != nil {
		t.Fatal(err)
	}

	// Data keys and re-encryption.
	ec := map[string]string{"purpose": "test"}
	dk, err := us.GenerateDataKey(ctx, &kms.GenerateDataKeyInput{KeyId: aws.String(mid), KeySpec: types.DataKeySpecAes256, EncryptionContext: ec})
	if err != nil || len(dk.Plaintext) != 32 {
		t.Fatalf("generate data key: %v", err)
	}
	dec, err := us.Decrypt(ctx, &kms.DecryptInput{CiphertextBlob: dk.CiphertextBlob, EncryptionContext: ec})
	if err != nil || !bytes.Equal(dec.Plaintext, dk.Plaintext) {
		t.Fatalf("decrypt data key: %v", err)
	}
	nopt, err := us.GenerateDataKeyWithoutPlaintext(ctx, &kms.GenerateDataKeyWithoutPlaintextInput{KeyId: aws.String(mid), NumberOfBytes: aws.Int32(16)})
	if err != nil || len(nopt.CiphertextBlob) == 0 {
		t.Fatalf("generate data key without plaintext: %v", err)
	}
	re, err := us.ReEncrypt(ctx, &kms.ReEncryptInput{CiphertextBlob: dk.CiphertextBlob, SourceEncryptionContext: ec, DestinationKeyId: aws.String(sid)})
	if err != nil || aws.ToString(re.SourceKeyId) != aws.ToString(mrk.KeyMetadata.Arn) {
		t.Fatalf("re-encrypt: %v", err)
	}
	dec, err = us.Decrypt(ctx, &kms.DecryptInput{CiphertextBlob: re.CiphertextBlob, KeyId: aws.String(sid)})
	if err != nil || !bytes.Equal(dec.Plaintext, dk.Plaintext) {
		t.Fatalf("decrypt re-encrypted: %v", err)
	}

	// Errors the SDK types.
	_, err = us.Decrypt(ctx, &kms.DecryptInput{CiphertextBlob: dk.CiphertextBlob, EncryptionContext: map[string]string{"purpose": "other"}})
	errAs[*types.InvalidCiphertextException](t, "decrypt with another context", err)
	_, err = us.Decrypt(ctx, &kms.DecryptInput{CiphertextBlob: []byte("not a ciphertext")})
	errAs[*types.InvalidCiphertextException](t, "decrypt garbage", err)
	_, err = us.DescribeKey(ctx, &kms.DescribeKeyInput{KeyId: aws.String("mrk-0123456789abcdef0123456789abcdef")})
	errAs[*types.NotFoundException](t, "describe an unknown key", err)
	_, err = us.Encrypt(ctx, &kms.EncryptInput{KeyId: aws.String(mid), Plaintext: []byte("x"), EncryptionAlgorithm: types.EncryptionAlgorithmSpecRsaesOaepSha256})
	errAs[*types.InvalidKeyUsageException](t, "encrypt with an RSA algorithm", err)
	_, err = us.ScheduleKeyDeletion(ctx, &kms.ScheduleKeyDeletionInput{KeyId: aws.String(sid), PendingWindowInDays: aws.Int32(3)})
	assertCode(t, "a pending window of 3 days", err, "ValidationException")
	_, err = us.Encrypt(ctx, &kms.EncryptInput{KeyId: aws.String(mid), Plaintext: make([]byte, 4097)})
	assertCode(t, "a plaintext over 4096 bytes", err, "ValidationException")
	_, err = us.CreateKey(ctx, &kms.CreateKeyInput{KeySpec: types.KeySpecRsa2048})
	errAs[*types.UnsupportedOperationException](t, "an RSA key", err)
	_, err = us.Sign(ctx, &kms.SignInput{KeyId: aws.String(mid), Message: []byte("m"), SigningAlgorithm: types.SigningAlgorithmSpecEcdsaSha256})
	errAs[*types.UnsupportedOperationException](t, "Sign", err)
	_, err = us.PutKeyPolicy(ctx, &kms.PutKeyPolicyInput{KeyId: aws.String(mid), Policy: aws.String(`{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":"*"},"Action":"kms:*","Resource":"*"}]}`)})
	errAs[*types.MalformedPolicyDocumentException](t, "a policy outside the subset", err)

	// Pagination of ListKeys.
	var ids []string
	var marker *string
	for range 10 {
		lk, err := us.ListKeys(ctx, &kms.ListKeysInput{Limit: aws.Int32(1), Marker: marker})
		if err != nil {
			t.Fatal(err)
		}
		for _, k := range lk.Keys {
			ids = append(ids, aws.ToString(k.KeyId))
		}
		if !lk.Truncated {
			break
		}
		marker = lk.NextMarker
	}
	if len(ids) != 2 {
		t.Fatalf("listed %v", ids)
	}

	// Policies: another principal is refused until the policy names it.
	other := sdkClient(t, p, "us-east-1", mrkrepltest.DefaultApp.Account+"/"+mrkrepltest.DefaultApp.Users[1])
	_, err = other.Encrypt(ctx, &kms.EncryptInput{KeyId: aws.String(mid), Plaintext: []byte("x")})
	assertCode(t, "encrypt by a principal the policy does not name", err, "AccessDeniedException") // no typed error: a common error of every service
	pol, err := us.GetKeyPolicy(ctx, &kms.GetKeyPolicyInput{KeyId: aws.String(mid)})
	if err != nil || !strings.Contains(aws.ToString(pol.Policy), mrkrepltest.DefaultAppPrincipal()) {
		t.Fatalf("get key policy: %v", err)
	}
	doc := strings.Replace(aws.ToString(pol.Policy), `"`+mrkrepltest.DefaultAppPrincipal()+`"`,
		`"`+mrkrepltest.DefaultAppPrincipal()+`","`+mrkrepltest.DefaultApp.Account+"/"+mrkrepltest.DefaultApp.Users[1]+`"`, 1)
	if _, err := us.PutKeyPolicy(ctx, &kms.PutKeyPolicyInput{KeyId: aws.String(mid), Policy: aws.String(doc)}); err != nil {
		t.Fatalf("put key policy: %v", err)
	}
	if _, err := other.Encrypt(ctx, &kms.EncryptInput{KeyId: aws.String(mid), Plaintext: []byte("x")}); err != nil {
		t.Fatalf("encrypt once the policy names the principal: %v", err)
	}
}

func assertCode(t *testing.T, what string, err error, code string) {
	t.Helper()
	var ae smithy.APIError
	if !errors.As(err, &ae) || ae.ErrorCode() != code {
		t.Fatalf("%s: got %v, want %s", what, err, code)
	}
}

// TestAccessKeys: only admins issue access keys; a deleted one stops
// working at once on the worker that deleted it.
func TestAccessKeys(t *testing.T) {
	p := startKMS(t)
	ctx := t.Context()
	if _, err := p.Region("us-east-1").Client.CreateAccessKey(ctx, "APP_TEST/app"); !client.IsForbidden(err) {
		t.Fatalf("an application created an access key: %v", err)
	}
	ak, err := p.CreateAccessKey(ctx, "us-east-1", "APP_TEST/app")
	if err != nil {
		t.Fatal(err)
	}
	c := newClient(p.Region("us-east-1").KMSURL, "us-east-1", ak.AccessKeyID, ak.SecretAccessKey)
	if _, err := c.ListKeys(ctx, &kms.ListKeysInput{}); err != nil {
		t.Fatalf("list keys: %v", err)
	}
	// Access keys are the region's: another region does not know it.
	other := newClient(p.Region("eu-west-1").KMSURL, "eu-west-1", ak.AccessKeyID, ak.SecretAccessKey)
	_, err = other.ListKeys(ctx, &kms.ListKeysInput{})
	assertCode(t, "another region's access key", err, "UnrecognizedClientException")

	nc, err := p.Connect("us-east-1", "admin")
	if err != nil {
		t.Fatal(err)
	}
	admin := client.New(nc, "us-east-1")
	list, err := admin.ListAccessKeys(ctx)
	if err != nil || len(list) != 1 || list[0].AccessKeyID != ak.AccessKeyID || list[0].SecretAccessKey != "" || list[0].Principal != "APP_TEST/app" {
		t.Fatalf("list access keys: %v %+v", err, list)
	}
	if _, err := admin.DeleteAccessKey(ctx, ak.AccessKeyID); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(40 * time.Second) // accessKeyCacheTTL, if another worker served it
	for {
		_, err = c.ListKeys(ctx, &kms.ListKeysInput{})
		if err != nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	assertCode(t, "a deleted access key", err, "UnrecognizedClientException")
}
