// Package authz implements mrkrepl's authorization model (DESIGN.md §6): key
// policies, the principals they name, and the canonical encoding of an
// encryption context.
//
// # Key policies
//
// A policy is a strict subset of AWS KMS key-policy JSON
// (https://docs.aws.amazon.com/kms/latest/developerguide/key-policies.html),
// so that one document works through both the NATS API and the
// KMS-compatible HTTP API. [Parse] accepts Version "2012-10-17", Id and
// Statement; a statement has Sid, Effect, Principal ("*" or {"MRK": ...}),
// Action (kms:Name or wildcards such as kms:Generate*), Resource "*" and
// Condition with the String* and Null operators on the keys
// kms:EncryptionContext:<k>, kms:EncryptionContextKeys, kms:CallerAccount
// and aws:PrincipalTag/<k>. Anything else — an unknown field, NotAction, an
// unknown action or condition key, a duplicate JSON key, a document over
// 32 KiB — is an error naming its path, never silently ignored: a policy
// that says less than its author meant is a security bug.
//
// [Policy.Evaluate] follows AWS's rules: default deny, an explicit Deny
// beats any Allow, and a statement applies when its principal, action and
// every condition match. Region-level policies (who may kms:CreateKey or
// kms:ListKeys in a region) use the same language and the same Evaluate.
//
// Where this package differs from AWS, on purpose:
//   - action names and the <k> of kms:EncryptionContext:<k> are compared
//     exactly (case-sensitively); AWS compares condition key names without
//     case. aws:PrincipalTag/<k> is lower-cased, as NATS lower-cases tags.
//   - a condition value whose policy variable cannot be resolved (a missing
//     tag, an empty user name) matches no string: StringEquals and StringLike
//     on it are false, StringNotEquals and StringNotLike true. A Deny with
//     StringNotEquals "${aws:PrincipalTag/tenant}" therefore also denies
//     callers without the tag; do not write an Allow with a negated
//     operator on a variable.
//   - the escapes ${*}, ${?} and ${$} and variables other than
//     ${aws:PrincipalTag/<k>}, ${aws:username} and ${kms:CallerAccount}
//     are rejected.
//
// As in AWS, ForAllValues: on kms:EncryptionContextKeys holds for an empty
// context; pair it with Null {"kms:EncryptionContextKeys": "false"} in an Allow.
//
// # Encryption context
//
// [EncodeContext] gives the canonical, versioned bytes of an encryption
// context, which are bound into the AAD of every ciphertext made under it.
//
// # Concurrency
//
// A *Policy is immutable once parsed and safe for concurrent use. All
// functions are pure: no I/O, no context.
package authz

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Actions a policy may name. kms:DescribeReplication is mrkrepl's own: reading
// the state of a key's replication.
const (
	ActionCreateKey                       = "kms:CreateKey"
	ActionDescribeKey                     = "kms:DescribeKey"
	ActionListKeys                        = "kms:ListKeys"
	ActionEncrypt                         = "kms:Encrypt"
	ActionDecrypt                         = "kms:Decrypt"
	ActionReEncryptFrom                   = "kms:ReEncryptFrom"
	ActionReEncryptTo                     = "kms:ReEncryptTo"
	ActionGenerateDataKey                 = "kms:GenerateDataKey"
	ActionGenerateDataKeyWithoutPlaintext = "kms:GenerateDataKeyWithoutPlaintext"
	ActionReplicateKey                    = "kms:ReplicateKey"
	ActionRotateKeyOnDemand               = "kms:RotateKeyOnDemand"
	ActionGetKeyRotationStatus            = "kms:GetKeyRotationStatus"
	ActionListKeyRotations                = "kms:ListKeyRotations"
	ActionUpdatePrimaryRegion             = "kms:UpdatePrimaryRegion"
	ActionScheduleKeyDeletion             = "kms:ScheduleKeyDeletion"
	ActionCancelKeyDeletion               = "kms:CancelKeyDeletion"
	ActionEnableKey                       = "kms:EnableKey"
	ActionDisableKey                      = "kms:DisableKey"
	ActionGetKeyPolicy                    = "kms:GetKeyPolicy"
	ActionPutKeyPolicy                    = "kms:PutKeyPolicy"
	ActionCreateAlias                     = "kms:CreateAlias"
	ActionUpdateAlias                     = "kms:UpdateAlias"
	ActionDeleteAlias                     = "kms:DeleteAlias"
	ActionListAliases                     = "kms:ListAliases"
	ActionDescribeReplication             = "kms:DescribeReplication"
)

// actions is every known action, sorted (TestActions checks).
var actions = []string{
	ActionCancelKeyDeletion, ActionCreateAlias, ActionCreateKey, ActionDecrypt, ActionDeleteAlias,
	ActionDescribeKey, ActionDescribeReplication, ActionDisableKey, ActionEnableKey, ActionEncrypt,
	ActionGenerateDataKey, ActionGenerateDataKeyWithoutPlaintext, ActionGetKeyPolicy,
	ActionGetKeyRotationStatus, ActionListAliases, ActionListKeyRotations, ActionListKeys,
	ActionPutKeyPolicy, ActionReEncryptFrom, ActionReEncryptTo, ActionReplicateKey,
	ActionRotateKeyOnDemand, ActionScheduleKeyDeletion, ActionUpdateAlias, ActionUpdatePrimaryRegion,
}

// Actions returns every known action, sorted. The slice is the caller's.
func Actions() []string { return slices.Clone(actions) }

// IsAction reports whether name is a known action (exactly, e.g. "kms:Decrypt").
func IsAction(name string) bool {
	_, ok := slices.BinarySearch(actions, name)
	return ok
}

// MaxNameLen bounds each part of a principal, in bytes.
const MaxNameLen = 128

// Principal is a caller proven by the transport: on NATS the account and
// user the server stamps in Nats-Request-Info of a cross-account service
// import; over HTTP the principal an access key is bound to. Never build one
// from what a client claims.
type Principal struct {
	Account string            // NATS account name (static config) or account public key (JWT mode)
	User    string            // empty: some user of Account (request events carry only the account)
	Tags    map[string]string // caller's tags (NATS JWT user tags "k:v"), keys lower-case as ParseTags gives them; may be nil
}

// String returns "ACCOUNT/user", or "ACCOUNT" when User is empty.
func (p Principal) String() string {
	if p.User == "" {
		return p.Account
	}
	return p.Account + "/" + p.User
}

// ParsePrincipal is the inverse of [Principal.String]. Tags are not part of
// the string form and are left nil.
func ParsePrincipal(s string) (Principal, error) {
	account, user, hasUser := strings.Cut(s, "/")
	if err := checkName(account, false); err != nil {
		return Principal{}, fmt.Errorf("principal %q: account: %v", s, err)
	}
	if hasUser {
		if err := checkName(user, false); err != nil {
			return Principal{}, fmt.Errorf("principal %q: user: %v", s, err)
		}
	}
	return Principal{Account: account, User: user}, nil
}

// checkName validates one part of a principal: 1..MaxNameLen bytes of valid
// UTF-8, without white space, control characters, '/', '>', or the pattern
// characters '*' and '?' (allowed only when wild is true).
func checkName(s string, wild bool) error {
	switch {
	case s == "":
		return errors.New("empty")
	case len(s) > MaxNameLen:
		return fmt.Errorf("%d bytes, more than %d", len(s), MaxNameLen)
	case !utf8.ValidString(s):
		return errors.New("not valid UTF-8")
	}
	for _, r := range s {
		switch {
		case unicode.IsSpace(r) || unicode.IsControl(r):
			return fmt.Errorf("contains %q", r)
		case r == '/' || r == '>':
			return fmt.Errorf("contains %q", r)
		case (r == '*' || r == '?') && !wild:
			return fmt.Errorf("contains %q", r)
		}
	}
	return nil
}

// ParseTags turns NATS user tags ("k:v") into a map. Keys are lower-cased,
// as NATS lower-cases whole tags; a tag is split at its first ':'. Entries
// without ':' or with an empty key are ignored, and so is a key given twice
// with different values: an ambiguous tag is treated as absent. The result
// is nil when no tag remains.
func ParseTags(tags []string) map[string]string {
	var m map[string]string
	ambiguous := map[string]bool{}
	for _, t := range tags {
		k, v, ok := strings.Cut(strings.TrimSpace(t), ":")
		k = strings.ToLower(k)
		if !ok || k == "" || ambiguous[k] {
			continue
		}
		if old, dup := m[k]; dup && old != v {
			delete(m, k)
			ambiguous[k] = true
			continue
		}
		if m == nil {
			m = map[string]string{}
		}
		m[k] = v
	}
	if len(m) == 0 {
		return nil
	}
	return m
}

// glob is a pattern of literal runes and the wildcards anyRun ('*': any
// run of runes, even empty) and oneRune ('?').
type glob []rune

const (
	anyRun  rune = -1
	oneRune rune = -2
)

// compileGlob treats every '*' and '?' in s as a wildcard.
func compileGlob(s string) glob {
	g := glob(s)
	for i, r := range g {
		switch r {
		case '*':
			g[i] = anyRun
		case '?':
			g[i] = oneRune
		}
	}
	return g
}

// match reports whether g matches all of s, backtracking only to the last
// anyRun: O(len(g)·len(s)) at worst.
func (g glob) match(s string) bool {
	rs := []rune(s)
	gi, si, star, mark := 0, 0, -1, 0
	for si < len(rs) {
		switch {
		case gi < len(g) && g[gi] == anyRun:
			star, mark = gi, si
			gi++
		case gi < len(g) && (g[gi] == oneRune || g[gi] == rs[si]):
			gi++
			si++
		case star >= 0:
			mark++
			gi, si = star+1, mark
		default:
			return false
		}
	}
	for gi < len(g) && g[gi] == anyRun {
		gi++
	}
	return gi == len(g)
}
