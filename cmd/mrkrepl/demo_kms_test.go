package main

import (
	"bytes"
	"context"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
)

// TestDemoServeKMS: "demo --serve" prints each region's KMS endpoint and
// writes an access key per region; an unchanged AWS SDK client then does
// the multi-Region flow against it: create, replicate, wait for the
// replica, encrypt in one region and decrypt with the replica's ARN in
// the other.
func TestDemoServeKMS(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	stdout, stderr := &syncBuffer{}, &syncBuffer{}
	done := make(chan int, 1)
	go func() { done <- run(ctx, []string{"demo", "--serve"}, stdout, stderr) }()
	lineRE := regexp.MustCompile(`(?m)^  (\S+)\s+(http://127\.0\.0\.1:\d+)  access key (MRKA\S+) \(profile (mrkrepl-\S+)\)$`)
	fileRE := regexp.MustCompile(`the access keys are in (\S+):`)
	var found [][]string
	for len(found) < 3 || !strings.Contains(stdout.String(), "kms create-key --multi-region") {
		select {
		case code := <-done:
			t.Fatalf("demo exited %d:\n%s\n%s", code, stdout.String(), stderr.String())
		case <-time.After(50 * time.Millisecond):
		}
		found = lineRE.FindAllStringSubmatch(stdout.String(), -1)
	}
	m := fileRE.FindStringSubmatch(stdout.String())
	if m == nil {
		t.Fatalf("no credentials file printed:\n%s", stdout.String())
	}
	file, err := os.ReadFile(m[1])
	if err != nil {
		t.Fatal(err)
	}
	clients := map[string]*kms.Client{}
	for _, f := range found {
		region, url, id, profile := f[1], f[2], f[3], f[4]
		i := bytes.Index(file, []byte("["+profile+"]\naws_access_key_id = "+id+"\naws_secret_access_key = "))
		if i < 0 {
			t.Fatalf("profile %s not in the credentials file", profile)
		}
		rest := file[i:]
		secret := regexp.MustCompile(`aws_secret_access_key = (\S+)`).FindSubmatch(rest)[1]
		clients[region] = kms.NewFromConfig(aws.Config{Region: region, Credentials: credentials.NewStaticCredentialsProvider(id, string(secret), "")},
			func(o *kms.Options) { o.BaseEndpoint = aws.String(url) })
	}
	us, eu := clients["us-east-1"], clients["eu-west-1"]
	k, err := us.CreateKey(ctx, &kms.CreateKeyInput{MultiRegion: aws.Bool(true)})
	if err != nil {
		t.Fatalf("create key: %v", err)
	}
	rep, err := us.ReplicateKey(ctx, &kms.ReplicateKeyInput{KeyId: k.KeyMetadata.KeyId, ReplicaRegion: aws.String("eu-west-1")})
	if err != nil {
		t.Fatalf("replicate: %v", err)
	}
	for {
		d, err := eu.DescribeKey(ctx, &kms.DescribeKeyInput{KeyId: rep.ReplicaKeyMetadata.Arn})
		if err == nil && d.KeyMetadata.KeyState == types.KeyStateEnabled {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("replica not enabled: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	enc, err := us.Encrypt(ctx, &kms.EncryptInput{KeyId: k.KeyMetadata.Arn, Plaintext: []byte("across regions")})
	if err != nil {
		t.Fatal(err)
	}
	dec, err := eu.Decrypt(ctx, &kms.DecryptInput{CiphertextBlob: enc.CiphertextBlob, KeyId: rep.ReplicaKeyMetadata.Arn})
	if err != nil || string(dec.Plaintext) != "across regions" {
		t.Fatalf("decrypt in eu-west-1: %v", err)
	}
	cancel()
	if code := <-done; code != 0 {
		t.Errorf("demo --serve exited %d after interrupt: %s", code, stderr.String())
	}
}
