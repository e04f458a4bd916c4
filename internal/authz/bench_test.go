package authz

import (
	"testing"
)

// BenchmarkEvaluate is policy evaluation alone, as a worker does it for
// every encrypt and decrypt (the parsed policy is cached by the worker):
//
//   - default: the default key policy (the region's admins and the
//     creator may do everything), the creator encrypting;
//
//   - realistic: an admins statement, an application statement with an
//     encryption-context condition on a principal tag, a deny of a
//     quarantined tenant, evaluated for an allowed decrypt.
//
//     go test ./internal/authz -run '^$' -bench Evaluate -benchmem
func BenchmarkEvaluate(b *testing.B) {
	app := Principal{Account: "APP_TEST", User: "app", Tags: map[string]string{"tenant": "t1"}}
	ec := map[string]string{"tenant": "t1", "purpose": "data-plane"}
	def, err := Parse(DefaultKeyPolicy(app, []string{"MRK/admin"}))
	if err != nil {
		b.Fatal(err)
	}
	real, err := Parse([]byte(`{"Version":"2012-10-17","Statement":[
  {"Sid":"Admins","Effect":"Allow","Principal":{"MRK":["MRK/admin"]},"Action":"kms:*","Resource":"*"},
  {"Sid":"AppUse","Effect":"Allow","Principal":{"MRK":["APP_TEST","APP_TEST/*","ORDERS/alice"]},
   "Action":["kms:Encrypt","kms:Decrypt","kms:GenerateDataKey*","kms:DescribeKey"],"Resource":"*",
   "Condition":{"StringEquals":{"kms:EncryptionContext:tenant":"${aws:PrincipalTag/tenant}"}}},
  {"Sid":"Quarantine","Effect":"Deny","Principal":"*","Action":"kms:*","Resource":"*",
   "Condition":{"StringEquals":{"kms:EncryptionContext:tenant":["t666","t667"]}}}]}`))
	if err != nil {
		b.Fatal(err)
	}
	for _, c := range []struct {
		name   string
		pol    *Policy
		action string
	}{{"default", def, ActionEncrypt}, {"realistic", real, ActionDecrypt}} {
		b.Run(c.name, func(b *testing.B) {
			r := Request{Principal: app, Action: c.action, EncryptionContext: ec}
			if d := c.pol.Evaluate(r); !d.Allowed {
				b.Fatalf("denied: %s", d.Reason)
			}
			b.ReportAllocs()
			for b.Loop() {
				c.pol.Evaluate(r)
			}
		})
	}
}
