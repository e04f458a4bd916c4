package authz

import (
	"fmt"
	"maps"
	"slices"
	"strings"
)

// Request is one call to authorize. Principal must be proven by the
// transport; EncryptionContext nil is the empty context.
type Request struct {
	Principal         Principal
	Action            string // a known action, e.g. ActionDecrypt
	EncryptionContext map[string]string
}

// Decision is the outcome of [Policy.Evaluate].
type Decision struct {
	Allowed bool
	Sid     string // the deciding statement's Sid, if it has one
	Reason  string // for logs and audit: "explicit deny by statement X", "no statement allows kms:Decrypt for ORDERS/bob"
}

// Evaluate decides r by AWS's rules: an explicit Deny that applies wins,
// otherwise an Allow that applies allows, otherwise the request is denied.
// A nil *Policy denies everything, and so does an unknown action or a
// request without a principal account.
func (p *Policy) Evaluate(r Request) Decision {
	switch {
	case p == nil:
		return Decision{Reason: "no policy"}
	case !IsAction(r.Action):
		return Decision{Reason: fmt.Sprintf("unknown action %q", r.Action)}
	case r.Principal.Account == "":
		return Decision{Reason: "no principal"}
	}
	var allow *statement
	for i := range p.statements {
		st := &p.statements[i]
		if !st.applies(&r) {
			continue
		}
		if st.deny {
			return Decision{Sid: st.sid, Reason: "explicit deny by statement " + st.name}
		}
		if allow == nil {
			allow = st
		}
	}
	if allow == nil {
		return Decision{Reason: fmt.Sprintf("no statement allows %s for %s", r.Action, r.Principal)}
	}
	return Decision{Allowed: true, Sid: allow.sid, Reason: "allowed by statement " + allow.name}
}

func (st *statement) applies(r *Request) bool {
	if !st.actions[r.Action] {
		return false
	}
	if !slices.ContainsFunc(st.principals, func(pp principalPattern) bool { return pp.match(r.Principal) }) {
		return false
	}
	for i := range st.conditions {
		if !st.conditions[i].eval(r) {
			return false
		}
	}
	return true
}

type opKind int

const (
	opEquals opKind = iota
	opEqualsIgnoreCase
	opLike
	opNull
)

type setOp int

const (
	setNone setOp = iota
	setAny        // ForAnyValue:
	setAll        // ForAllValues:
)

var baseOps = map[string]struct {
	kind    opKind
	negated bool
}{
	"StringEquals":              {opEquals, false},
	"StringNotEquals":           {opEquals, true},
	"StringEqualsIgnoreCase":    {opEqualsIgnoreCase, false},
	"StringNotEqualsIgnoreCase": {opEqualsIgnoreCase, true},
	"StringLike":                {opLike, false},
	"StringNotLike":             {opLike, true},
	"Null":                      {opNull, false},
}

type keyKind int

const (
	keyContext       keyKind = iota // kms:EncryptionContext:<name>
	keyContextKeys                  // kms:EncryptionContextKeys (multivalued)
	keyCallerAccount                // kms:CallerAccount
	keyPrincipalTag                 // aws:PrincipalTag/<name>
)

type condKey struct {
	kind keyKind
	name string
}

// condition is one key under one operator: "StringEquals": {"kms:CallerAccount": [...]}.
type condition struct {
	kind     opKind
	negated  bool
	ifExists bool
	set      setOp
	key      condKey
	values   []condValue // OR-ed; not for Null
	absent   bool        // Null: true when the key must be absent
}

// condValue is a condition value split into literal text and policy variables.
type condValue []valuePart

type valuePart struct {
	lit      string
	variable string // if set, one of "aws:username", "kms:CallerAccount", "aws:PrincipalTag/<lower-case k>"
}

func parseConditions(v any, path string) ([]condition, error) {
	ops, ok := v.(map[string]any)
	if !ok || len(ops) == 0 {
		return nil, perr(path, "must be a non-empty object")
	}
	var conds []condition
	for _, op := range slices.Sorted(maps.Keys(ops)) {
		opPath := join(path, op)
		c, err := parseOperator(op, opPath)
		if err != nil {
			return nil, err
		}
		keys, ok := ops[op].(map[string]any)
		if !ok || len(keys) == 0 {
			return nil, perr(opPath, "must be a non-empty object of condition keys")
		}
		for _, k := range slices.Sorted(maps.Keys(keys)) {
			kPath := join(opPath, k)
			c := c
			if c.key, err = parseCondKey(k, c, kPath); err != nil {
				return nil, err
			}
			vals, vpaths, err := stringOrList(keys[k], kPath)
			if err != nil {
				return nil, err
			}
			if c.kind == opNull {
				if len(vals) != 1 || (vals[0] != "true" && vals[0] != "false") {
					return nil, perr(kPath, `Null takes one value, "true" or "false"`)
				}
				c.absent = vals[0] == "true"
			} else {
				for i, s := range vals {
					cv, err := parseValue(s)
					if err != nil {
						return nil, perr(vpaths[i], "%v", err)
					}
					c.values = append(c.values, cv)
				}
			}
			conds = append(conds, c)
		}
	}
	return conds, nil
}

func parseOperator(op, path string) (condition, error) {
	var c condition
	name := op
	if s, ok := strings.CutPrefix(name, "ForAnyValue:"); ok {
		name, c.set = s, setAny
	} else if s, ok := strings.CutPrefix(name, "ForAllValues:"); ok {
		name, c.set = s, setAll
	}
	name, c.ifExists = strings.CutSuffix(name, "IfExists")
	base, ok := baseOps[name]
	if !ok || (base.kind == opNull && (c.ifExists || c.set != setNone)) {
		return c, perr(path, "unknown condition operator %q", op)
	}
	c.kind, c.negated = base.kind, base.negated
	return c, nil
}

func parseCondKey(k string, c condition, path string) (condKey, error) {
	var key condKey
	if name, ok := strings.CutPrefix(k, "kms:EncryptionContext:"); ok && name != "" {
		key = condKey{keyContext, name}
	} else if name, ok := strings.CutPrefix(k, "aws:PrincipalTag/"); ok && name != "" {
		key = condKey{keyPrincipalTag, strings.ToLower(name)}
	} else if k == "kms:EncryptionContextKeys" {
		key = condKey{kind: keyContextKeys}
	} else if k == "kms:CallerAccount" {
		key = condKey{kind: keyCallerAccount}
	} else {
		return key, perr(path, "unknown condition key %q", k)
	}
	switch {
	case key.kind == keyContextKeys && c.set == setNone && c.kind != opNull:
		return key, perr(path, "%s is multivalued: use ForAnyValue: or ForAllValues:", k)
	case key.kind != keyContextKeys && c.set != setNone:
		return key, perr(path, "ForAnyValue: and ForAllValues: apply only to kms:EncryptionContextKeys, not %s", k)
	}
	return key, nil
}

// parseValue splits s at its policy variables ${...}.
func parseValue(s string) (condValue, error) {
	var cv condValue
	for {
		i := strings.Index(s, "${")
		if i < 0 {
			if s != "" {
				cv = append(cv, valuePart{lit: s})
			}
			return cv, nil
		}
		if i > 0 {
			cv = append(cv, valuePart{lit: s[:i]})
		}
		j := strings.IndexByte(s[i:], '}')
		if j < 0 {
			return nil, fmt.Errorf("unterminated policy variable in %q", s)
		}
		name := s[i+2 : i+j]
		tag, isTag := strings.CutPrefix(name, "aws:PrincipalTag/")
		switch {
		case name == "aws:username", name == "kms:CallerAccount":
		case isTag && tag != "":
			name = "aws:PrincipalTag/" + strings.ToLower(tag)
		default:
			return nil, fmt.Errorf("unsupported policy variable %q", s[i:i+j+1])
		}
		cv = append(cv, valuePart{variable: name})
		s = s[i+j+1:]
	}
}

// resolve substitutes the variables of cv. ok is false when one cannot be
// resolved; then the value matches no string. In the glob form, only the
// policy's own text holds wildcards: substituted text is literal.
func (cv condValue) resolve(r *Request) (s string, g glob, ok bool) {
	var b strings.Builder
	for _, part := range cv {
		text, present := part.lit, true
		switch tag, isTag := strings.CutPrefix(part.variable, "aws:PrincipalTag/"); {
		case isTag:
			text, present = r.Principal.Tags[tag]
		case part.variable == "aws:username":
			text, present = r.Principal.User, r.Principal.User != ""
		case part.variable == "kms:CallerAccount":
			text, present = r.Principal.Account, r.Principal.Account != ""
		}
		if !present {
			return "", nil, false
		}
		if part.variable != "" {
			g = append(g, []rune(text)...) // literal: never a wildcard
		} else {
			g = append(g, compileGlob(text)...)
		}
		b.WriteString(text)
	}
	return b.String(), g, true
}

// lookup returns the request's values for key; present is false when the
// key is absent (for kms:EncryptionContextKeys: when the context is empty).
func lookup(key condKey, r *Request) (vals []string, present bool) {
	var v string
	switch key.kind {
	case keyContext:
		v, present = r.EncryptionContext[key.name]
	case keyContextKeys:
		keys := slices.Sorted(maps.Keys(r.EncryptionContext))
		return keys, len(keys) > 0
	case keyCallerAccount:
		v, present = r.Principal.Account, r.Principal.Account != ""
	case keyPrincipalTag:
		v, present = r.Principal.Tags[key.name]
	}
	return []string{v}, present
}

// eval applies AWS's rules for a missing key: Null:"true" holds, IfExists
// holds, ForAllValues holds (vacuously), ForAnyValue fails, a negated
// operator holds and a positive one fails.
func (c *condition) eval(r *Request) bool {
	vals, present := lookup(c.key, r)
	switch {
	case c.kind == opNull:
		return c.absent == !present
	case present:
	case c.ifExists:
		return true
	case c.set == setAny:
		return false
	case c.set == setAll:
		return true
	default:
		return c.negated
	}
	test := func(v string) bool { return c.matchesAny(v, r) != c.negated }
	switch c.set {
	case setAny:
		return slices.ContainsFunc(vals, test)
	case setAll:
		return !slices.ContainsFunc(vals, func(v string) bool { return !test(v) })
	default:
		return test(vals[0])
	}
}

// matchesAny reports whether v matches one of the condition's values under
// its positive operator.
func (c *condition) matchesAny(v string, r *Request) bool {
	for _, cv := range c.values {
		s, g, ok := cv.resolve(r)
		switch {
		case !ok:
		case c.kind == opEquals && s == v,
			c.kind == opEqualsIgnoreCase && strings.EqualFold(s, v),
			c.kind == opLike && g.match(v):
			return true
		}
	}
	return false
}
