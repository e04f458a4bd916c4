package authz_test

import (
	"fmt"

	"github.com/mrkrepl/mrkrepl/internal/authz"
)

// A region-level policy decides who may create and list keys in a region. It
// is written and evaluated like a key policy.
func Example_regionPolicy() {
	region, err := authz.Parse([]byte(`{
  "Version": "2012-10-17",
  "Statement": [
    {"Sid": "Teams", "Effect": "Allow", "Principal": {"MRK": ["ORDERS/*", "BILLING/*"]},
     "Action": ["kms:CreateKey", "kms:ListKeys"], "Resource": "*"},
    {"Sid": "NoInterns", "Effect": "Deny", "Principal": {"MRK": "ORDERS/intern-*"},
     "Action": "kms:CreateKey", "Resource": "*"}
  ]
}`))
	if err != nil {
		panic(err)
	}
	for _, who := range []string{"ORDERS/alice", "ORDERS/intern-bob", "ORDERS", "SHOP/carol"} {
		p, _ := authz.ParsePrincipal(who)
		d := region.Evaluate(authz.Request{Principal: p, Action: authz.ActionCreateKey})
		fmt.Printf("%s: %v (%s)\n", who, d.Allowed, d.Reason)
	}
	// Output:
	// ORDERS/alice: true (allowed by statement Teams)
	// ORDERS/intern-bob: false (explicit deny by statement NoInterns)
	// ORDERS: false (no statement allows kms:CreateKey for ORDERS)
	// SHOP/carol: false (no statement allows kms:CreateKey for SHOP/carol)
}

// A key policy that lets an application encrypt and decrypt only under its
// own tenant, taken from the caller's NATS user tag.
func ExamplePolicy_Evaluate() {
	key, err := authz.Parse([]byte(`{"Version":"2012-10-17","Statement":[
  {"Sid":"AppUse","Effect":"Allow","Principal":{"MRK":"ORDERS"},
   "Action":["kms:Encrypt","kms:Decrypt","kms:GenerateDataKey*"],"Resource":"*",
   "Condition":{"StringEquals":{"kms:EncryptionContext:tenant":"${aws:PrincipalTag/tenant}"}}}]}`))
	if err != nil {
		panic(err)
	}
	caller := authz.Principal{Account: "ORDERS", User: "svc", Tags: authz.ParseTags([]string{"tenant:acme"})}
	for _, tenant := range []string{"acme", "globex"} {
		d := key.Evaluate(authz.Request{Principal: caller, Action: authz.ActionDecrypt,
			EncryptionContext: map[string]string{"tenant": tenant}})
		fmt.Println(tenant, d.Allowed)
	}
	// Output:
	// acme true
	// globex false
}
