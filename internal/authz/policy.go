package authz

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Limits of a policy document. 32 KiB is AWS's limit for a key policy; 64
// statements keep evaluation (every statement, every request) cheap.
const (
	MaxPolicySize = 32 << 10
	MaxStatements = 64
)

// PolicyVersion is the only policy language version accepted.
const PolicyVersion = "2012-10-17"

// PolicyError is why [Parse] refused a document. Path locates the element,
// e.g. "Statement[0].Action[1]"; it is empty for the document as a whole.
type PolicyError struct {
	Path   string
	Reason string
}

func (e *PolicyError) Error() string {
	if e.Path == "" {
		return "policy: " + e.Reason
	}
	return "policy: " + e.Path + ": " + e.Reason
}

func perr(path, format string, args ...any) *PolicyError {
	return &PolicyError{Path: path, Reason: fmt.Sprintf(format, args...)}
}

// Policy is a parsed key (or region) policy. It is immutable and safe for
// concurrent use.
type Policy struct {
	doc        []byte
	statements []statement
}

type statement struct {
	sid        string
	name       string // Sid, or the statement's path when it has none
	deny       bool
	principals []principalPattern
	actions    map[string]bool // expanded: known actions only
	conditions []condition
}

// principalPattern is "*", "ACCOUNT" or "ACCOUNT/user-pattern".
type principalPattern struct {
	any     bool
	account string
	user    glob // nil: any principal of account, including account-only ones
}

func (pp principalPattern) match(p Principal) bool {
	switch {
	case pp.any:
		return true
	case p.Account != pp.account:
		return false
	case pp.user == nil:
		return true
	default:
		return p.User != "" && pp.user.match(p.User)
	}
}

// JSON returns the document exactly as given to Parse (as AWS stores it).
func (p *Policy) JSON() []byte { return bytes.Clone(p.doc) }

// Parse parses and validates a policy document. Errors are *PolicyError.
func Parse(doc []byte) (*Policy, error) {
	if len(doc) > MaxPolicySize {
		return nil, perr("", "document is %d bytes, more than %d", len(doc), MaxPolicySize)
	}
	if !utf8.Valid(doc) {
		return nil, perr("", "document is not valid UTF-8")
	}
	if err := checkDuplicates(doc); err != nil {
		return nil, err
	}
	var v any
	if err := json.Unmarshal(doc, &v); err != nil {
		return nil, perr("", "invalid JSON: %v", err)
	}
	top, err := fields(v, "", "Version", "Id", "Statement")
	if err != nil {
		return nil, err
	}
	version, ok := top["Version"]
	if !ok {
		return nil, perr("", "missing Version")
	}
	if version != PolicyVersion {
		return nil, perr("Version", "must be %q", PolicyVersion)
	}
	if id, ok := top["Id"]; ok {
		if _, isString := id.(string); !isString {
			return nil, perr("Id", "must be a string")
		}
	}
	var stmts []any
	var paths []string
	switch s := top["Statement"].(type) {
	case nil:
		return nil, perr("", "missing Statement")
	case map[string]any:
		stmts, paths = []any{s}, []string{"Statement"}
	case []any:
		stmts = s
		for i := range s {
			paths = append(paths, fmt.Sprintf("Statement[%d]", i))
		}
	default:
		return nil, perr("Statement", "must be an object or a list of objects")
	}
	if len(stmts) == 0 {
		return nil, perr("Statement", "empty")
	}
	if len(stmts) > MaxStatements {
		return nil, perr("Statement", "%d statements, more than %d", len(stmts), MaxStatements)
	}
	p := &Policy{doc: bytes.Clone(doc)}
	sids := map[string]bool{}
	for i, s := range stmts {
		st, err := parseStatement(s, paths[i])
		if err != nil {
			return nil, err
		}
		if st.sid != "" {
			if sids[st.sid] {
				return nil, perr(paths[i]+".Sid", "duplicate Sid %q", st.sid)
			}
			sids[st.sid] = true
		}
		p.statements = append(p.statements, st)
	}
	return p, nil
}

var sidRE = regexp.MustCompile(`^[A-Za-z0-9]*$`)

func parseStatement(v any, path string) (statement, error) {
	f, err := fields(v, path, "Sid", "Effect", "Principal", "Action", "Resource", "Condition")
	if err != nil {
		return statement{}, err
	}
	for _, k := range []string{"Effect", "Principal", "Action", "Resource"} {
		if f[k] == nil {
			return statement{}, perr(path, "missing %s", k)
		}
	}
	st := statement{name: path}
	if sid, ok := f["Sid"]; ok {
		s, isString := sid.(string)
		if !isString || !sidRE.MatchString(s) {
			return st, perr(path+".Sid", "must be a string of letters and digits")
		}
		st.sid = s
		if s != "" {
			st.name = s
		}
	}
	switch f["Effect"] {
	case "Allow":
	case "Deny":
		st.deny = true
	default:
		return st, perr(path+".Effect", `must be "Allow" or "Deny"`)
	}
	if st.principals, err = parsePrincipals(f["Principal"], path+".Principal"); err != nil {
		return st, err
	}
	if st.actions, err = parseActions(f["Action"], path+".Action"); err != nil {
		return st, err
	}
	res, rpaths, err := stringOrList(f["Resource"], path+".Resource")
	if err != nil {
		return st, err
	}
	for i, r := range res {
		if r != "*" {
			return st, perr(rpaths[i], `only "*" is supported (the policy is attached to one key)`)
		}
	}
	if c, ok := f["Condition"]; ok {
		if st.conditions, err = parseConditions(c, path+".Condition"); err != nil {
			return st, err
		}
	}
	return st, nil
}

func parsePrincipals(v any, path string) ([]principalPattern, error) {
	if v == "*" {
		return []principalPattern{{any: true}}, nil
	}
	if _, isString := v.(string); isString {
		return nil, perr(path, `must be "*" or {"MRK": ...}`)
	}
	f, err := fields(v, path, "MRK")
	if err != nil {
		return nil, err
	}
	if f["MRK"] == nil {
		return nil, perr(path, `missing "MRK"`)
	}
	list, paths, err := stringOrList(f["MRK"], path+".MRK")
	if err != nil {
		return nil, err
	}
	var pps []principalPattern
	for i, s := range list {
		pp, err := parsePrincipalPattern(s)
		if err != nil {
			return nil, perr(paths[i], "principal %q: %v", s, err)
		}
		pps = append(pps, pp)
	}
	return pps, nil
}

func parsePrincipalPattern(s string) (principalPattern, error) {
	if s == "*" {
		return principalPattern{any: true}, nil
	}
	account, user, hasUser := strings.Cut(s, "/")
	if err := checkName(account, false); err != nil {
		return principalPattern{}, fmt.Errorf("account: %v", err)
	}
	pp := principalPattern{account: account}
	if hasUser {
		if err := checkName(user, true); err != nil {
			return principalPattern{}, fmt.Errorf("user: %v", err)
		}
		pp.user = compileGlob(user)
	}
	return pp, nil
}

func parseActions(v any, path string) (map[string]bool, error) {
	list, paths, err := stringOrList(v, path)
	if err != nil {
		return nil, err
	}
	set := map[string]bool{}
	for i, a := range list {
		if !strings.HasPrefix(a, "kms:") {
			return nil, perr(paths[i], "action %q: must be kms:<Name>", a)
		}
		if !strings.ContainsAny(a, "*?") {
			if !IsAction(a) {
				return nil, perr(paths[i], "unknown action %q", a)
			}
			set[a] = true
			continue
		}
		g, matched := compileGlob(a), false
		for _, known := range actions {
			if g.match(known) {
				set[known], matched = true, true
			}
		}
		if !matched {
			return nil, perr(paths[i], "action %q matches no known action", a)
		}
	}
	return set, nil
}

// fields checks that v is an object whose keys are all in allowed.
func fields(v any, path string, allowed ...string) (map[string]any, error) {
	m, ok := v.(map[string]any)
	if !ok {
		return nil, perr(path, "must be an object")
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		if slices.Contains(allowed, k) {
			continue
		}
		reason := fmt.Sprintf("unknown field %q", k)
		switch k {
		case "NotAction", "NotPrincipal", "NotResource":
			reason += " (NotAction, NotPrincipal and NotResource are not supported)"
		}
		return nil, &PolicyError{Path: path, Reason: reason}
	}
	return m, nil
}

// stringOrList accepts a string or a non-empty list of strings, and returns
// each string's path for error messages.
func stringOrList(v any, path string) ([]string, []string, error) {
	switch v := v.(type) {
	case string:
		return []string{v}, []string{path}, nil
	case []any:
		if len(v) == 0 {
			return nil, nil, perr(path, "empty list")
		}
		var list, paths []string
		for i, e := range v {
			p := fmt.Sprintf("%s[%d]", path, i)
			s, ok := e.(string)
			if !ok {
				return nil, nil, perr(p, "must be a string")
			}
			list, paths = append(list, s), append(paths, p)
		}
		return list, paths, nil
	}
	return nil, nil, perr(path, "must be a string or a list of strings")
}

// checkDuplicates walks the document's tokens and refuses a key repeated in
// one object, which encoding/json would silently resolve to the last one.
func checkDuplicates(doc []byte) error {
	dec := json.NewDecoder(bytes.NewReader(doc))
	if err := walk(dec, ""); err != nil {
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return perr("", "invalid JSON: data after the document")
	}
	return nil
}

func walk(dec *json.Decoder, path string) error {
	t, err := dec.Token()
	if err == io.EOF {
		return perr(path, "invalid JSON: unexpected end of document")
	} else if err != nil {
		return perr(path, "invalid JSON: %v", err)
	}
	switch t {
	case json.Delim('{'):
		seen := map[string]bool{}
		for dec.More() {
			kt, err := dec.Token()
			if err != nil {
				return perr(path, "invalid JSON: %v", err)
			}
			k, _ := kt.(string)
			if seen[k] {
				return perr(path, "duplicate field %q", k)
			}
			seen[k] = true
			if err := walk(dec, join(path, k)); err != nil {
				return err
			}
		}
	case json.Delim('['):
		for i := 0; dec.More(); i++ {
			if err := walk(dec, fmt.Sprintf("%s[%d]", path, i)); err != nil {
				return err
			}
		}
	default:
		return nil
	}
	if _, err := dec.Token(); err != nil { // the closing delimiter
		return perr(path, "invalid JSON: %v", err)
	}
	return nil
}

var identRE = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9]*$`)

// join appends an object key to a path: Statement[0].Condition.StringEquals["kms:EncryptionContext:k"].
func join(path, k string) string {
	switch {
	case !identRE.MatchString(k):
		return path + "[" + strconv.Quote(k) + "]"
	case path == "":
		return k
	default:
		return path + "." + k
	}
}
