package kmsapi

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	"github.com/mrkrepl/mrkrepl/internal/authz"
)

// keyCreds returns a signing key derived once, as the worker's cache does.
type keyCreds struct{ key []byte }

func (c keyCreds) SigningKey(context.Context, string, string, string, string) ([]byte, authz.Principal, error) {
	return c.key, authz.Principal{Account: "APP", User: "alice"}, nil
}

// BenchmarkVerify is SigV4 verification alone, of a Decrypt-sized request
// signed by the AWS SDK's signer (the headers an SDK sends): "cached"
// with the signing key at hand (the worker caches it per access key and
// day), "derive" deriving it (four more HMACs).
//
//	go test ./kmsapi -run '^$' -bench Verify -benchmem
func BenchmarkVerify(b *testing.B) {
	body := []byte(`{"CiphertextBlob":"` + strings.Repeat("QUJD", 40) + `","EncryptionContext":{"purpose":"data-plane","tenant":"bench"}}`)
	now := time.Now().UTC()
	r, err := http.NewRequest(http.MethodPost, "http://127.0.0.1:8080/", nil)
	if err != nil {
		b.Fatal(err)
	}
	r.Header.Set("Content-Type", ContentType)
	r.Header.Set("X-Amz-Target", TargetPrefix+"Decrypt")
	r.Header.Set("User-Agent", "aws-sdk-go-v2/1.48.0 os/linux lang/go#1.26 md/GOOS#linux md/GOARCH#amd64 api/kms#1.63.0")
	r.Header.Set("Amz-Sdk-Invocation-Id", "0d9f6c2e-5f43-4c1e-9d8e-6b3b0e9a1c11")
	r.Header.Set("Amz-Sdk-Request", "attempt=1; max=1")
	sum := sha256.Sum256(body)
	ph := hex.EncodeToString(sum[:])
	r.Header.Set("X-Amz-Content-Sha256", ph)
	err = v4.NewSigner().SignHTTP(context.Background(), aws.Credentials{AccessKeyID: testID, SecretAccessKey: testSecret}, r, ph, "kms", "us-east-1", now)
	if err != nil {
		b.Fatal(err)
	}
	date := now.Format("20060102")
	for _, c := range []struct {
		name  string
		creds Credentials
	}{{"cached", keyCreds{DeriveSigningKey([]byte(testSecret), date, "us-east-1", "kms")}}, {"derive", fakeCreds{}}} {
		b.Run(c.name, func(b *testing.B) {
			v := &Verifier{Region: "us-east-1", Service: "kms", Credentials: c.creds}
			if _, err := v.Verify(context.Background(), r, body); err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			for b.Loop() {
				if _, err := v.Verify(context.Background(), r, body); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
