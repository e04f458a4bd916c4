package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/mrkrepl/mrkrepl/mrkrepltest"
)

// demoKMS issues, in every region, an access key of the KMS API for the
// demo's application user and writes them into an AWS shared credentials
// file in dir (profile mrkrepl-<region>, mode 0600), so that the AWS CLI
// and SDKs reach each region's endpoint without a secret on a command
// line; it prints the endpoints and how to use them.
func demoKMS(ctx context.Context, stdout io.Writer, p *mrkrepltest.Partition, dir string) error {
	principal := mrkrepltest.DefaultAppPrincipal()
	credsFile := filepath.Join(dir, "aws-credentials")
	var b strings.Builder
	fmt.Fprintf(stdout, "\nAWS KMS API (JSON 1.1, SigV4; docs/KMS-API.md), as %s; the access keys are in %s:\n", principal, credsFile)
	for _, r := range p.Regions() {
		ak, err := p.CreateAccessKey(ctx, r.Name, principal)
		if err != nil {
			return fmt.Errorf("access key for %s in %s: %w", principal, r.Name, err)
		}
		fmt.Fprintf(&b, "[mrkrepl-%s]\naws_access_key_id = %s\naws_secret_access_key = %s\nregion = %s\n\n", r.Name, ak.AccessKeyID, ak.SecretAccessKey, r.Name)
		fmt.Fprintf(stdout, "  %-15s %s  access key %s (profile mrkrepl-%s)\n", r.Name, r.KMSURL, ak.AccessKeyID, r.Name)
	}
	if err := os.WriteFile(credsFile, []byte(b.String()), 0o600); err != nil {
		return err
	}
	regions := p.Regions()
	us, eu := regions[0], regions[1]
	fmt.Fprintf(stdout, "\ntry, with the AWS CLI:\n")
	fmt.Fprintf(stdout, "  export AWS_SHARED_CREDENTIALS_FILE=%s\n", credsFile)
	fmt.Fprintf(stdout, "  aws --profile mrkrepl-%s --endpoint-url %s kms create-key --multi-region\n", us.Name, us.KMSURL)
	fmt.Fprintf(stdout, "  aws --profile mrkrepl-%s --endpoint-url %s kms replicate-key --key-id <key id> --replica-region %s\n", us.Name, us.KMSURL, eu.Name)
	fmt.Fprintf(stdout, "  aws --profile mrkrepl-%s --endpoint-url %s kms describe-key --key-id <key id>\n", eu.Name, eu.KMSURL)
	return nil
}
