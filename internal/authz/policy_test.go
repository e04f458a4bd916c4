package authz

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
)

const okStmt = `{"Effect":"Allow","Principal":{"MRK":"ORDERS"},"Action":"kms:Decrypt","Resource":"*"}`

// doc wraps statements in a policy document.
func doc(stmts ...string) string {
	return `{"Version":"2012-10-17","Statement":[` + strings.Join(stmts, ",") + `]}`
}

// withCond is an Allow of kms:Decrypt to ORDERS under the given Condition.
func withCond(cond string) string {
	return doc(`{"Effect":"Allow","Principal":{"MRK":"ORDERS"},"Action":"kms:Decrypt","Resource":"*","Condition":` + cond + `}`)
}

func TestParseValid(t *testing.T) {
	for name, d := range map[string]string{
		"brief example": `{"Version":"2012-10-17","Statement":[
  {"Sid":"AppUse","Effect":"Allow","Principal":{"MRK":["ORDERS","ORDERS/alice","ORDERS/*"]},
   "Action":["kms:Encrypt","kms:Decrypt","kms:GenerateDataKey*"],"Resource":"*",
   "Condition":{"StringEquals":{"kms:EncryptionContext:tenant":"${aws:PrincipalTag/tenant}"}}}]}`,
		"single statement object": `{"Version":"2012-10-17","Id":"k1","Statement":` + okStmt + `}`,
		"resource list":           doc(`{"Effect":"Deny","Principal":"*","Action":["kms:*"],"Resource":["*"]}`),
		"MRK star, empty Sid":     doc(`{"Sid":"","Effect":"Allow","Principal":{"MRK":"*"},"Action":"kms:Get*","Resource":"*"}`),
		"user patterns":           doc(`{"Effect":"Allow","Principal":{"MRK":["A/ops-?","B/*-admin"]},"Action":"kms:List*","Resource":"*"}`),
		"every operator": withCond(`{"StringEquals":{"kms:CallerAccount":"ORDERS"},"StringNotEqualsIfExists":{"aws:PrincipalTag/x":"y"},
			"StringLike":{"kms:EncryptionContext:a":["x*","user-${aws:username}-${kms:CallerAccount}"]},"StringNotLike":{"kms:EncryptionContext:b":"?"},
			"StringEqualsIgnoreCase":{"kms:EncryptionContext:c":"Q"},"StringNotEqualsIgnoreCase":{"kms:EncryptionContext:d":"Q"},
			"Null":{"kms:EncryptionContext:e":"true","kms:EncryptionContextKeys":"false"},
			"ForAnyValue:StringEquals":{"kms:EncryptionContextKeys":"a"},"ForAllValues:StringLikeIfExists":{"kms:EncryptionContextKeys":["a","b*"]}}`),
		"literal dollar": withCond(`{"StringEquals":{"kms:EncryptionContext:a":"$5 {x}"}}`),
	} {
		p, err := Parse([]byte(d))
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if string(p.JSON()) != d {
			t.Errorf("%s: JSON() is not the document as given", name)
		}
	}
}

func TestParseErrors(t *testing.T) {
	long := strings.Repeat("a", MaxNameLen+1)
	many := make([]string, MaxStatements+1)
	for i := range many {
		many[i] = okStmt
	}
	tests := []struct{ name, doc, want string }{
		{"not JSON", `{"Version":`, "policy: Version: invalid JSON: unexpected end of document"},
		{"bad token", `{"Version":x}`, "invalid JSON"},
		{"empty document", ``, "policy: invalid JSON: unexpected end of document"},
		{"trailing data", doc(okStmt) + ` {}`, "policy: invalid JSON: data after the document"},
		{"top-level array", `[` + doc(okStmt) + `]`, "policy: must be an object"},
		{"invalid UTF-8", doc(strings.Replace(okStmt, "ORDERS", "ORD\xffERS", 1)), "policy: document is not valid UTF-8"},
		{"too large", doc(okStmt)[:len(doc(okStmt))-2] + strings.Repeat(" ", MaxPolicySize) + "]}", "policy: document is 32" /* ...bytes, more than 32768 */},
		{"unknown top field", `{"Version":"2012-10-17","Statement":[` + okStmt + `],"Foo":1}`, `policy: unknown field "Foo"`},
		{"lower-case field", `{"version":"2012-10-17","Statement":[` + okStmt + `]}`, `policy: unknown field "version"`},
		{"duplicate top key", `{"Version":"2012-10-17","Version":"2012-10-17","Statement":[` + okStmt + `]}`, `policy: duplicate field "Version"`},
		{"duplicate statement key", doc(okStmt, `{"Effect":"Allow","Effect":"Deny","Principal":"*","Action":"kms:*","Resource":"*"}`), `policy: Statement[1]: duplicate field "Effect"`},
		{"duplicate condition key", withCond(`{"StringEquals":{"kms:EncryptionContext:a":"1","kms:EncryptionContext:a":"2"}}`), `policy: Statement[0].Condition.StringEquals: duplicate field "kms:EncryptionContext:a"`},
		{"duplicate operator", withCond(`{"Null":{"kms:EncryptionContext:a":"true"},"Null":{"kms:EncryptionContext:b":"true"}}`), `policy: Statement[0].Condition: duplicate field "Null"`},
		{"missing Version", `{"Statement":[` + okStmt + `]}`, "policy: missing Version"},
		{"old Version", `{"Version":"2008-10-17","Statement":[` + okStmt + `]}`, `policy: Version: must be "2012-10-17"`},
		{"Version number", `{"Version":2012,"Statement":[` + okStmt + `]}`, `policy: Version: must be "2012-10-17"`},
		{"Id number", `{"Version":"2012-10-17","Id":1,"Statement":[` + okStmt + `]}`, "policy: Id: must be a string"},
		{"missing Statement", `{"Version":"2012-10-17"}`, "policy: missing Statement"},
		{"empty Statement", doc(), "policy: Statement: empty"},
		{"Statement string", `{"Version":"2012-10-17","Statement":"x"}`, "policy: Statement: must be an object or a list"},
		{"Statement element string", doc(`"x"`), "policy: Statement[0]: must be an object"},
		{"too many statements", doc(many...), "policy: Statement: 65 statements, more than 64"},
		{"NotAction", doc(okStmt, `{"Effect":"Allow","Principal":"*","NotAction":"kms:Decrypt","Resource":"*"}`), `policy: Statement[1]: unknown field "NotAction" (NotAction, NotPrincipal and NotResource are not supported)`},
		{"NotPrincipal", doc(`{"Effect":"Deny","NotPrincipal":{"MRK":"A"},"Action":"kms:*","Resource":"*"}`), `policy: Statement[0]: unknown field "NotPrincipal"`},
		{"NotResource", doc(`{"Effect":"Deny","Principal":"*","Action":"kms:*","NotResource":"*"}`), `policy: Statement[0]: unknown field "NotResource"`},
		{"bad Sid", doc(`{"Sid":"app-use","Effect":"Allow","Principal":"*","Action":"kms:*","Resource":"*"}`), "policy: Statement[0].Sid: must be a string of letters and digits"},
		{"duplicate Sid", doc(`{"Sid":"A","Effect":"Allow","Principal":"*","Action":"kms:*","Resource":"*"}`, `{"Sid":"A","Effect":"Deny","Principal":"*","Action":"kms:*","Resource":"*"}`), `policy: Statement[1].Sid: duplicate Sid "A"`},
		{"missing Effect", doc(`{"Principal":"*","Action":"kms:*","Resource":"*"}`), "policy: Statement[0]: missing Effect"},
		{"lower-case Effect", doc(`{"Effect":"allow","Principal":"*","Action":"kms:*","Resource":"*"}`), `policy: Statement[0].Effect: must be "Allow" or "Deny"`},
		{"missing Principal", doc(`{"Effect":"Allow","Action":"kms:*","Resource":"*"}`), "policy: Statement[0]: missing Principal"},
		{"Principal string", doc(`{"Effect":"Allow","Principal":"ORDERS","Action":"kms:*","Resource":"*"}`), `policy: Statement[0].Principal: must be "*" or {"MRK": ...}`},
		{"Principal AWS", doc(`{"Effect":"Allow","Principal":{"AWS":"*"},"Action":"kms:*","Resource":"*"}`), `policy: Statement[0].Principal: unknown field "AWS"`},
		{"Principal empty object", doc(`{"Effect":"Allow","Principal":{},"Action":"kms:*","Resource":"*"}`), `policy: Statement[0].Principal: missing "MRK"`},
		{"MRK empty list", doc(`{"Effect":"Allow","Principal":{"MRK":[]},"Action":"kms:*","Resource":"*"}`), "policy: Statement[0].Principal.MRK: empty list"},
		{"MRK number", doc(`{"Effect":"Allow","Principal":{"MRK":["A",7]},"Action":"kms:*","Resource":"*"}`), "policy: Statement[0].Principal.MRK[1]: must be a string"},
		{"principal empty user", doc(`{"Effect":"Allow","Principal":{"MRK":["A","ORDERS/"]},"Action":"kms:*","Resource":"*"}`), `policy: Statement[0].Principal.MRK[1]: principal "ORDERS/": user: empty`},
		{"principal empty account", doc(`{"Effect":"Allow","Principal":{"MRK":"/alice"},"Action":"kms:*","Resource":"*"}`), "account: empty"},
		{"principal space", doc(`{"Effect":"Allow","Principal":{"MRK":"OR DERS"},"Action":"kms:*","Resource":"*"}`), `account: contains ' '`},
		{"principal wildcard account", doc(`{"Effect":"Allow","Principal":{"MRK":"ORD*"},"Action":"kms:*","Resource":"*"}`), `account: contains '*'`},
		{"principal gt", doc(`{"Effect":"Allow","Principal":{"MRK":"A/>"},"Action":"kms:*","Resource":"*"}`), `user: contains '>'`},
		{"principal two slashes", doc(`{"Effect":"Allow","Principal":{"MRK":"A/b/c"},"Action":"kms:*","Resource":"*"}`), `user: contains '/'`},
		{"principal too long", doc(`{"Effect":"Allow","Principal":{"MRK":"` + long + `"},"Action":"kms:*","Resource":"*"}`), "account: 129 bytes, more than 128"},
		{"missing Action", doc(`{"Effect":"Allow","Principal":"*","Resource":"*"}`), "policy: Statement[0]: missing Action"},
		{"unknown action", doc(`{"Effect":"Allow","Principal":"*","Action":["kms:Decrypt","kms:Foo"],"Resource":"*"}`), `policy: Statement[0].Action[1]: unknown action "kms:Foo"`},
		{"action case", doc(`{"Effect":"Allow","Principal":"*","Action":"kms:decrypt","Resource":"*"}`), `policy: Statement[0].Action: unknown action "kms:decrypt"`},
		{"wildcard matching nothing", doc(`{"Effect":"Allow","Principal":"*","Action":"kms:Sign*","Resource":"*"}`), `policy: Statement[0].Action: action "kms:Sign*" matches no known action`},
		{"other service", doc(`{"Effect":"Allow","Principal":"*","Action":"s3:GetObject","Resource":"*"}`), `action "s3:GetObject": must be kms:<Name>`},
		{"bare star action", doc(`{"Effect":"Allow","Principal":"*","Action":"*","Resource":"*"}`), `action "*": must be kms:<Name>`},
		{"empty Action list", doc(`{"Effect":"Allow","Principal":"*","Action":[],"Resource":"*"}`), "policy: Statement[0].Action: empty list"},
		{"Action object", doc(`{"Effect":"Allow","Principal":"*","Action":{},"Resource":"*"}`), "policy: Statement[0].Action: must be a string or a list of strings"},
		{"missing Resource", doc(`{"Effect":"Allow","Principal":"*","Action":"kms:*"}`), "policy: Statement[0]: missing Resource"},
		{"Resource ARN", doc(`{"Effect":"Allow","Principal":"*","Action":"kms:*","Resource":"arn:aws:kms:*"}`), `policy: Statement[0].Resource: only "*" is supported`},
		{"Resource list", doc(`{"Effect":"Allow","Principal":"*","Action":"kms:*","Resource":["*","k"]}`), `policy: Statement[0].Resource[1]: only "*"`},
		{"empty Condition", withCond(`{}`), "policy: Statement[0].Condition: must be a non-empty object"},
		{"empty operator block", withCond(`{"StringEquals":{}}`), "policy: Statement[0].Condition.StringEquals: must be a non-empty object"},
		{"unknown operator", withCond(`{"NumericEquals":{"kms:EncryptionContext:a":"1"}}`), `policy: Statement[0].Condition.NumericEquals: unknown condition operator "NumericEquals"`},
		{"NullIfExists", withCond(`{"NullIfExists":{"kms:EncryptionContext:a":"true"}}`), `unknown condition operator "NullIfExists"`},
		{"ForAnyValue:Null", withCond(`{"ForAnyValue:Null":{"kms:EncryptionContextKeys":"true"}}`), `unknown condition operator "ForAnyValue:Null"`},
		{"operator case", withCond(`{"stringequals":{"kms:EncryptionContext:a":"1"}}`), `unknown condition operator "stringequals"`},
		{"unknown key", withCond(`{"StringEquals":{"kms:ViaService":"ec2"}}`), `policy: Statement[0].Condition.StringEquals["kms:ViaService"]: unknown condition key "kms:ViaService"`},
		{"empty context key name", withCond(`{"StringEquals":{"kms:EncryptionContext:":"1"}}`), `unknown condition key "kms:EncryptionContext:"`},
		{"empty tag name", withCond(`{"StringEquals":{"aws:PrincipalTag/":"1"}}`), `unknown condition key "aws:PrincipalTag/"`},
		{"context keys without set operator", withCond(`{"StringEquals":{"kms:EncryptionContextKeys":"a"}}`), "kms:EncryptionContextKeys is multivalued: use ForAnyValue: or ForAllValues:"},
		{"set operator on single-valued key", withCond(`{"ForAllValues:StringEquals":{"kms:CallerAccount":"A"}}`), "ForAnyValue: and ForAllValues: apply only to kms:EncryptionContextKeys, not kms:CallerAccount"},
		{"Null value", withCond(`{"Null":{"kms:EncryptionContext:a":"yes"}}`), `Null takes one value, "true" or "false"`},
		{"Null two values", withCond(`{"Null":{"kms:EncryptionContext:a":["true","false"]}}`), `Null takes one value`},
		{"condition value number", withCond(`{"StringEquals":{"kms:EncryptionContext:a":1}}`), `policy: Statement[0].Condition.StringEquals["kms:EncryptionContext:a"]: must be a string or a list of strings`},
		{"condition value empty list", withCond(`{"StringEquals":{"kms:EncryptionContext:a":[]}}`), "empty list"},
		{"unsupported variable", withCond(`{"StringEquals":{"kms:EncryptionContext:a":["x","${aws:userid}"]}}`), `policy: Statement[0].Condition.StringEquals["kms:EncryptionContext:a"][1]: unsupported policy variable "${aws:userid}"`},
		{"escape variable", withCond(`{"StringLike":{"kms:EncryptionContext:a":"${*}"}}`), `unsupported policy variable "${*}"`},
		{"empty tag variable", withCond(`{"StringLike":{"kms:EncryptionContext:a":"${aws:PrincipalTag/}"}}`), `unsupported policy variable "${aws:PrincipalTag/}"`},
		{"unterminated variable", withCond(`{"StringEquals":{"kms:EncryptionContext:a":"${aws:username"}}`), "unterminated policy variable"},
	}
	for _, tt := range tests {
		_, err := Parse([]byte(tt.doc))
		var pe *PolicyError
		switch {
		case err == nil:
			t.Errorf("%s: Parse succeeded, want error %q", tt.name, tt.want)
		case !errors.As(err, &pe):
			t.Errorf("%s: error %T is not a *PolicyError", tt.name, err)
		case !strings.Contains(err.Error(), tt.want):
			t.Errorf("%s: error\n\t%v\nwant it to contain\n\t%s", tt.name, err, tt.want)
		}
	}
}

func TestEvaluate(t *testing.T) {
	p, err := Parse([]byte(doc(
		`{"Sid":"AppUse","Effect":"Allow","Principal":{"MRK":["ORDERS"]},"Action":["kms:Encrypt","kms:Decrypt","kms:GenerateDataKey*"],"Resource":"*"}`,
		`{"Sid":"Alice","Effect":"Allow","Principal":{"MRK":"BILLING/alice"},"Action":"kms:Decrypt","Resource":"*"}`,
		`{"Sid":"Named","Effect":"Allow","Principal":{"MRK":"AUDIT/*"},"Action":"kms:Describe*","Resource":"*"}`,
		`{"Effect":"Allow","Principal":{"MRK":"OPS/ops-?"},"Action":"kms:EnableKey","Resource":"*"}`,
		`{"Sid":"NoBob","Effect":"Deny","Principal":{"MRK":"ORDERS/bob"},"Action":"kms:*","Resource":"*"}`,
	)))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		who, action string
		allowed     bool
		sid, reason string
	}{
		{"ORDERS/carol", ActionDecrypt, true, "AppUse", "allowed by statement AppUse"},
		{"ORDERS", ActionEncrypt, true, "AppUse", ""}, // account-only principal, account-wide pattern
		{"ORDERS/carol", ActionGenerateDataKeyWithoutPlaintext, true, "AppUse", ""},
		{"ORDERS/carol", ActionGenerateDataKey, true, "AppUse", ""},
		{"ORDERS/bob", ActionDecrypt, false, "NoBob", "explicit deny by statement NoBob"},
		{"ORDERS/carol", ActionReEncryptFrom, false, "", "no statement allows kms:ReEncryptFrom for ORDERS/carol"},
		{"ORDERS", ActionPutKeyPolicy, false, "", "no statement allows kms:PutKeyPolicy for ORDERS"},
		{"BILLING/alice", ActionDecrypt, true, "Alice", ""},
		{"BILLING/alice", ActionEncrypt, false, "", ""},
		{"BILLING/eve", ActionDecrypt, false, "", ""},
		{"BILLING", ActionDecrypt, false, "", ""}, // account-only is not BILLING/alice
		{"AUDIT/x", ActionDescribeKey, true, "Named", ""},
		{"AUDIT/x", ActionDescribeReplication, true, "Named", ""},
		{"AUDIT", ActionDescribeKey, false, "", ""}, // account-only is not AUDIT/*
		{"OPS/ops-1", ActionEnableKey, true, "", "allowed by statement Statement[3]"},
		{"OPS/ops-12", ActionEnableKey, false, "", ""},
		{"OTHER/alice", ActionDecrypt, false, "", ""},
		{"orders/carol", ActionDecrypt, false, "", ""}, // accounts are case-sensitive
		{"ORDERS/carol", "kms:Foo", false, "", `unknown action "kms:Foo"`},
		{"ORDERS/carol", "kms:decrypt", false, "", ""},
	}
	for _, tt := range tests {
		who, err := ParsePrincipal(tt.who)
		if err != nil {
			t.Fatal(err)
		}
		d := p.Evaluate(Request{Principal: who, Action: tt.action})
		if d.Allowed != tt.allowed || d.Sid != tt.sid || (tt.reason != "" && d.Reason != tt.reason) {
			t.Errorf("%s %s: got %+v, want allowed=%v sid=%q reason=%q", tt.who, tt.action, d, tt.allowed, tt.sid, tt.reason)
		}
	}
	if d := p.Evaluate(Request{Action: ActionDecrypt}); d.Allowed {
		t.Errorf("no principal: allowed")
	}
	var nilPolicy *Policy
	if d := nilPolicy.Evaluate(Request{Principal: Principal{Account: "ORDERS"}, Action: ActionDecrypt}); d.Allowed || d.Reason != "no policy" {
		t.Errorf("nil policy: %+v", d)
	}
	star, err := Parse([]byte(doc(`{"Effect":"Allow","Principal":"*","Action":"kms:*","Resource":"*"}`)))
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range Actions() {
		if d := star.Evaluate(Request{Principal: Principal{Account: "X"}, Action: a}); !d.Allowed {
			t.Errorf("kms:* does not allow %s", a)
		}
	}
}

func TestEvaluateConditions(t *testing.T) {
	alice := Principal{Account: "ORDERS", User: "alice", Tags: map[string]string{"tenant": "acme", "team": "payments"}}
	untagged := Principal{Account: "ORDERS", User: "bob"}
	accountOnly := Principal{Account: "ORDERS"}
	starTag := Principal{Account: "ORDERS", User: "m", Tags: map[string]string{"tenant": "*"}}
	ec := func(kv ...string) map[string]string {
		m := map[string]string{}
		for i := 0; i < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return m
	}
	const tenantIsTag = `{"StringEquals":{"kms:EncryptionContext:tenant":"${aws:PrincipalTag/tenant}"}}`
	tests := []struct {
		name, cond string
		who        Principal
		ec         map[string]string
		want       bool
	}{
		{"equals", `{"StringEquals":{"kms:EncryptionContext:tenant":"acme"}}`, alice, ec("tenant", "acme"), true},
		{"equals other value", `{"StringEquals":{"kms:EncryptionContext:tenant":"acme"}}`, alice, ec("tenant", "acmex"), false},
		{"equals missing key", `{"StringEquals":{"kms:EncryptionContext:tenant":"acme"}}`, alice, ec("other", "acme"), false},
		{"equals nil context", `{"StringEquals":{"kms:EncryptionContext:tenant":"acme"}}`, alice, nil, false},
		{"equals key is case-sensitive", `{"StringEquals":{"kms:EncryptionContext:Tenant":"acme"}}`, alice, ec("tenant", "acme"), false},
		{"equals value is case-sensitive", `{"StringEquals":{"kms:EncryptionContext:tenant":"ACME"}}`, alice, ec("tenant", "acme"), false},
		{"values are OR-ed", `{"StringEquals":{"kms:EncryptionContext:tenant":["x","acme"]}}`, alice, ec("tenant", "acme"), true},
		{"keys are AND-ed, one missing", `{"StringEquals":{"kms:EncryptionContext:a":"1","kms:EncryptionContext:b":"2"}}`, alice, ec("a", "1"), false},
		{"keys are AND-ed, both", `{"StringEquals":{"kms:EncryptionContext:a":"1","kms:EncryptionContext:b":"2"}}`, alice, ec("a", "1", "b", "2"), true},
		{"operators are AND-ed, one fails", `{"StringEquals":{"kms:EncryptionContext:a":"1"},"StringLike":{"kms:EncryptionContext:b":"x*"}}`, alice, ec("a", "1", "b", "y"), false},
		{"operators are AND-ed, both", `{"StringEquals":{"kms:EncryptionContext:a":"1"},"StringLike":{"kms:EncryptionContext:b":"x*"}}`, alice, ec("a", "1", "b", "xy"), true},
		{"not equals", `{"StringNotEquals":{"kms:EncryptionContext:tenant":"acme"}}`, alice, ec("tenant", "other"), true},
		{"not equals same", `{"StringNotEquals":{"kms:EncryptionContext:tenant":["x","acme"]}}`, alice, ec("tenant", "acme"), false},
		{"not equals missing key", `{"StringNotEquals":{"kms:EncryptionContext:tenant":"acme"}}`, alice, nil, true},
		{"like star", `{"StringLike":{"kms:EncryptionContext:tenant":"ac*e"}}`, alice, ec("tenant", "acme"), true},
		{"like question", `{"StringLike":{"kms:EncryptionContext:tenant":"a?me"}}`, alice, ec("tenant", "acme"), true},
		{"like no match", `{"StringLike":{"kms:EncryptionContext:tenant":"a?e"}}`, alice, ec("tenant", "acme"), false},
		{"like missing key", `{"StringLike":{"kms:EncryptionContext:tenant":"*"}}`, alice, nil, false},
		{"not like missing key", `{"StringNotLike":{"kms:EncryptionContext:tenant":"*"}}`, alice, nil, true},
		{"not like match", `{"StringNotLike":{"kms:EncryptionContext:tenant":"a*"}}`, alice, ec("tenant", "acme"), false},
		{"if exists, missing", `{"StringEqualsIfExists":{"kms:EncryptionContext:tenant":"acme"}}`, alice, nil, true},
		{"if exists, present and wrong", `{"StringEqualsIfExists":{"kms:EncryptionContext:tenant":"acme"}}`, alice, ec("tenant", "x"), false},
		{"not like if exists, present", `{"StringNotLikeIfExists":{"kms:EncryptionContext:tenant":"a*"}}`, alice, ec("tenant", "acme"), false},
		{"ignore case", `{"StringEqualsIgnoreCase":{"kms:EncryptionContext:tenant":"ACME"}}`, alice, ec("tenant", "acme"), true},
		{"not equals ignore case", `{"StringNotEqualsIgnoreCase":{"kms:EncryptionContext:tenant":"ACME"}}`, alice, ec("tenant", "acme"), false},
		{"null true, absent", `{"Null":{"kms:EncryptionContext:tenant":"true"}}`, alice, nil, true},
		{"null true, present", `{"Null":{"kms:EncryptionContext:tenant":"true"}}`, alice, ec("tenant", ""), false},
		{"null false, present", `{"Null":{"kms:EncryptionContext:tenant":"false"}}`, alice, ec("tenant", ""), true},
		{"null false, absent", `{"Null":{"kms:EncryptionContext:tenant":"false"}}`, alice, nil, false},
		{"null tag", `{"Null":{"aws:PrincipalTag/tenant":"false"}}`, untagged, nil, false},
		{"caller account", `{"StringEquals":{"kms:CallerAccount":"ORDERS"}}`, alice, nil, true},
		{"caller account other", `{"StringEquals":{"kms:CallerAccount":"BILLING"}}`, alice, nil, false},
		{"principal tag key", `{"StringEquals":{"aws:PrincipalTag/team":"payments"}}`, alice, nil, true},
		{"principal tag key case-insensitive", `{"StringEquals":{"aws:PrincipalTag/Team":"payments"}}`, alice, nil, true},
		{"principal tag key missing", `{"StringEquals":{"aws:PrincipalTag/team":"payments"}}`, untagged, nil, false},
		{"tag variable", tenantIsTag, alice, ec("tenant", "acme"), true},
		{"tag variable, other tenant", tenantIsTag, alice, ec("tenant", "globex"), false},
		{"tag variable, no tag", tenantIsTag, untagged, ec("tenant", ""), false},
		{"tag variable name case-insensitive", `{"StringEquals":{"kms:EncryptionContext:tenant":"${aws:PrincipalTag/TENANT}"}}`, alice, ec("tenant", "acme"), true},
		{"unresolvable matches nothing, negated", `{"StringNotEquals":{"kms:EncryptionContext:tenant":"${aws:PrincipalTag/tenant}"}}`, untagged, ec("tenant", "acme"), true},
		{"unresolvable value does not spoil others", `{"StringEquals":{"kms:EncryptionContext:tenant":["${aws:PrincipalTag/tenant}","acme"]}}`, untagged, ec("tenant", "acme"), true},
		{"substituted text is literal in like", `{"StringLike":{"kms:EncryptionContext:tenant":"${aws:PrincipalTag/tenant}"}}`, starTag, ec("tenant", "acme"), false},
		{"substituted star matches itself", `{"StringLike":{"kms:EncryptionContext:tenant":"${aws:PrincipalTag/tenant}"}}`, starTag, ec("tenant", "*"), true},
		{"like around a variable", `{"StringLike":{"kms:EncryptionContext:owner":"*-${aws:username}"}}`, alice, ec("owner", "team-alice"), true},
		{"username", `{"StringEquals":{"kms:EncryptionContext:owner":"user-${aws:username}"}}`, alice, ec("owner", "user-alice"), true},
		{"username of account-only principal", `{"StringEquals":{"kms:EncryptionContext:owner":"user-${aws:username}"}}`, accountOnly, ec("owner", "user-"), false},
		{"caller account variable", `{"StringEquals":{"kms:EncryptionContext:acct":"${kms:CallerAccount}"}}`, alice, ec("acct", "ORDERS"), true},
		{"any value: has key", `{"ForAnyValue:StringEquals":{"kms:EncryptionContextKeys":"tenant"}}`, alice, ec("tenant", "a", "x", "b"), true},
		{"any value: lacks key", `{"ForAnyValue:StringEquals":{"kms:EncryptionContextKeys":"tenant"}}`, alice, ec("x", "b"), false},
		{"any value: empty context", `{"ForAnyValue:StringEquals":{"kms:EncryptionContextKeys":"tenant"}}`, alice, nil, false},
		{"any value: not equals", `{"ForAnyValue:StringNotEquals":{"kms:EncryptionContextKeys":"tenant"}}`, alice, ec("tenant", "a", "x", "b"), true},
		{"any value: not equals, only that key", `{"ForAnyValue:StringNotEquals":{"kms:EncryptionContextKeys":"tenant"}}`, alice, ec("tenant", "a"), false},
		{"all values: subset", `{"ForAllValues:StringEquals":{"kms:EncryptionContextKeys":["tenant","purpose"]}}`, alice, ec("tenant", "a"), true},
		{"all values: extra key", `{"ForAllValues:StringEquals":{"kms:EncryptionContextKeys":["tenant","purpose"]}}`, alice, ec("tenant", "a", "x", "b"), false},
		{"all values: empty context is vacuously true", `{"ForAllValues:StringEquals":{"kms:EncryptionContextKeys":["tenant"]}}`, alice, nil, true},
		{"all values: like", `{"ForAllValues:StringLike":{"kms:EncryptionContextKeys":"t*"}}`, alice, ec("tenant", "a", "team", "b"), true},
		{"null context keys, empty", `{"Null":{"kms:EncryptionContextKeys":"true"}}`, alice, map[string]string{}, true},
		{"null context keys, present", `{"Null":{"kms:EncryptionContextKeys":"true"}}`, alice, ec("a", "1"), false},
	}
	for _, tt := range tests {
		p, err := Parse([]byte(withCond(tt.cond)))
		if err != nil {
			t.Errorf("%s: %v", tt.name, err)
			continue
		}
		if d := p.Evaluate(Request{Principal: tt.who, Action: ActionDecrypt, EncryptionContext: tt.ec}); d.Allowed != tt.want {
			t.Errorf("%s: allowed=%v, want %v (%s)", tt.name, d.Allowed, tt.want, d.Reason)
		}
	}
}

// TestDenyGuard is the common tenant guard: an explicit Deny unless the
// context's tenant is the caller's tenant tag; callers without the tag are denied.
func TestDenyGuard(t *testing.T) {
	p, err := Parse([]byte(doc(okStmt,
		`{"Sid":"TenantGuard","Effect":"Deny","Principal":"*","Action":"kms:*","Resource":"*",
		  "Condition":{"StringNotEquals":{"kms:EncryptionContext:tenant":"${aws:PrincipalTag/tenant}"}}}`)))
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		tags   map[string]string
		tenant string
		want   bool
	}{
		{map[string]string{"tenant": "acme"}, "acme", true},
		{map[string]string{"tenant": "acme"}, "globex", false},
		{nil, "acme", false},
		{nil, "", false},
	} {
		r := Request{Principal: Principal{Account: "ORDERS", User: "u", Tags: tt.tags}, Action: ActionDecrypt, EncryptionContext: map[string]string{"tenant": tt.tenant}}
		d := p.Evaluate(r)
		if d.Allowed != tt.want || (!d.Allowed && d.Sid != "TenantGuard") {
			t.Errorf("tags %v, tenant %q: %+v, want allowed=%v", tt.tags, tt.tenant, d, tt.want)
		}
	}
}

func TestDefaultKeyPolicy(t *testing.T) {
	creator := Principal{Account: "ORDERS", User: "alice"}
	b := DefaultKeyPolicy(creator, []string{"OPS/*", "ADMIN", "ADMIN"})
	if string(b) != string(DefaultKeyPolicy(creator, []string{"ADMIN", "OPS/*"})) {
		t.Errorf("output depends on the order or repetition of admins")
	}
	if !strings.HasPrefix(string(b), "{\n  \"Version\": \"2012-10-17\",\n") {
		t.Errorf("not indented two spaces:\n%s", b)
	}
	p, err := Parse(b)
	if err != nil {
		t.Fatalf("%v\n%s", err, b)
	}
	for _, tt := range []struct {
		who    string
		action string
		want   bool
	}{
		{"ORDERS/alice", ActionDecrypt, true},
		{"ORDERS/alice", ActionPutKeyPolicy, true},
		{"ORDERS/alice", ActionDescribeReplication, true},
		{"ORDERS/alice", ActionCreateKey, false},
		{"ADMIN", ActionScheduleKeyDeletion, true},
		{"ADMIN/root", ActionCreateKey, true},
		{"OPS/bob", ActionDisableKey, true},
		{"OPS", ActionDisableKey, false},
		{"ORDERS/bob", ActionDecrypt, false},
		{"ORDERS", ActionDecrypt, false},
		{"OTHER/alice", ActionDecrypt, false},
	} {
		who, _ := ParsePrincipal(tt.who)
		if d := p.Evaluate(Request{Principal: who, Action: tt.action}); d.Allowed != tt.want {
			t.Errorf("%s %s: %+v, want allowed=%v", tt.who, tt.action, d, tt.want)
		}
	}
	// Without admins, an account-only creator: only its account.
	p, err = Parse(DefaultKeyPolicy(Principal{Account: "ORDERS"}, nil))
	if err != nil {
		t.Fatal(err)
	}
	for who, want := range map[string]bool{"ORDERS": true, "ORDERS/x": true, "ADMIN": false} {
		pr, _ := ParsePrincipal(who)
		if d := p.Evaluate(Request{Principal: pr, Action: ActionEncrypt}); d.Allowed != want {
			t.Errorf("%s: %+v, want allowed=%v", who, d, want)
		}
	}
}

func TestPrincipal(t *testing.T) {
	for _, s := range []string{"ORDERS", "ORDERS/alice", "ADQ2XJX5SR3BCFGOVBRQPPSRDQ3NBQVDDWTTL2JCRTP7YRCTN3LGPDTB/u-1", "Å/ü"} {
		p, err := ParsePrincipal(s)
		if err != nil {
			t.Errorf("%q: %v", s, err)
		} else if p.String() != s {
			t.Errorf("%q: String() is %q", s, p.String())
		}
	}
	for _, s := range []string{"", "/", "/alice", "ORDERS/", "OR DERS", "ORDERS/al ice", "ORDERS/a/b", "ORD*", "ORDERS/*", "ORDERS/a?",
		"ORDERS/>", "A\tB", "A\x00", strings.Repeat("x", 129), "A/" + strings.Repeat("x", 129), "A\xff"} {
		if p, err := ParsePrincipal(s); err == nil {
			t.Errorf("%q: parsed as %+v", s, p)
		}
	}
}

func TestParseTags(t *testing.T) {
	got := ParseTags([]string{"tenant:acme", "Team:Payments", "x", ":v", "url:a:b", "dup:1", "dup:2", "dup:1", "same:v", "same:v", " sp:v "})
	want := map[string]string{"tenant": "acme", "team": "Payments", "url": "a:b", "same": "v", "sp": "v"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("got %v, want %v", got, want)
	}
	if m := ParseTags([]string{"x", "y"}); m != nil {
		t.Errorf("no tags: %v", m)
	}
}

func TestActions(t *testing.T) {
	a := Actions()
	if len(a) != 25 || !slices.IsSorted(a) || len(slices.Compact(slices.Clone(a))) != 25 || !IsAction(ActionDescribeReplication) || IsAction("kms:*") || IsAction("Decrypt") {
		t.Errorf("Actions() = %v", a)
	}
	a[0] = "mutated"
	if Actions()[0] == "mutated" {
		t.Error("Actions() shares its slice")
	}
}

func TestGlob(t *testing.T) {
	for _, tt := range []struct {
		pat, s string
		want   bool
	}{
		{"", "", true}, {"", "a", false}, {"*", "", true}, {"*", "abc", true}, {"a*c", "abbc", true}, {"a*c", "abcd", false},
		{"?", "é", true}, {"??", "é", false}, {"*a*a*", "aa", true}, {"*a*a*", "ab", false}, {"a**", "a", true}, {"*?", "", false},
	} {
		if got := compileGlob(tt.pat).match(tt.s); got != tt.want {
			t.Errorf("glob %q on %q: %v", tt.pat, tt.s, got)
		}
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte(doc(okStmt)))
	f.Add([]byte(withCond(`{"ForAllValues:StringLike":{"kms:EncryptionContextKeys":["a*","${aws:username}"]},"Null":{"aws:PrincipalTag/x":"true"}}`)))
	f.Add(DefaultKeyPolicy(Principal{Account: "A", User: "b"}, []string{"C/*"}))
	f.Add([]byte(`{"Version":"2012-10-17","Statement":{"Effect":"Deny","Principal":"*","Action":"kms:Get*","Resource":["*"]}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := Parse(b)
		if err != nil {
			return
		}
		if _, err := Parse(p.JSON()); err != nil {
			t.Fatalf("re-parse of JSON(): %v", err)
		}
		p.Evaluate(Request{Principal: Principal{Account: "A", User: "b", Tags: map[string]string{"x": "*"}}, Action: ActionDecrypt,
			EncryptionContext: map[string]string{"a": "b"}})
	})
}
