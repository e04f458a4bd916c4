package authz

import (
	"encoding/json"
	"slices"
)

// DefaultKeyPolicy returns the policy a key gets when its creator gives
// none, as AWS does: statement "Admins" allows admins (principal patterns as
// in a policy's "MRK", e.g. "ADMIN" or "OPS/*") kms:*, and statement
// "Creator" allows the creator, exactly as proven (all users of its account
// when User is empty), every action on a key — all actions but the
// region-level kms:CreateKey and kms:ListKeys. Without admins there is no
// "Admins" statement. The output is deterministic: admins sorted and
// de-duplicated, indented two spaces.
//
// The result is valid per [Parse] when creator is a valid principal and
// every admin a valid pattern; callers Parse it as any other policy, which
// reports a bad one.
func DefaultKeyPolicy(creator Principal, admins []string) []byte {
	type principal struct {
		MRK []string `json:"MRK"`
	}
	type stmt struct {
		Sid       string    `json:"Sid"`
		Effect    string    `json:"Effect"`
		Principal principal `json:"Principal"`
		Action    []string  `json:"Action"`
		Resource  string    `json:"Resource"`
	}
	doc := struct {
		Version   string `json:"Version"`
		Statement []stmt `json:"Statement"`
	}{Version: PolicyVersion}
	if len(admins) > 0 {
		a := slices.Compact(slices.Sorted(slices.Values(admins)))
		doc.Statement = append(doc.Statement, stmt{"Admins", "Allow", principal{a}, []string{"kms:*"}, "*"})
	}
	keyActions := slices.DeleteFunc(Actions(), func(a string) bool {
		return a == ActionCreateKey || a == ActionListKeys
	})
	doc.Statement = append(doc.Statement, stmt{"Creator", "Allow", principal{[]string{creator.String()}}, keyActions, "*"})
	b, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		panic("authz: marshal default key policy: " + err.Error()) // strings and slices of strings always marshal
	}
	return append(b, '\n')
}
