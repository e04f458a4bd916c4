package kmsapi

// AWS Signature Version 4, verified as the AWS General Reference specifies
// it ("Create a signed AWS API request"): the canonical request (method,
// canonical URI, canonical query string, canonical headers, signed headers,
// hex SHA-256 of the payload), the string to sign (algorithm, X-Amz-Date,
// credential scope, hash of the canonical request) and the signing key
// derived from the secret by HMAC-SHA256 over date, region, service and
// "aws4_request". Only the Authorization-header form is accepted (no
// presigned query strings, no session tokens: the deployment issues
// long-term access keys only).

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/mrkrepl/mrkrepl/internal/authz"
)

// Algorithm is the only signing algorithm accepted.
const Algorithm = "AWS4-HMAC-SHA256"

// DefaultMaxSkew is how far X-Amz-Date may be from the server's clock.
const DefaultMaxSkew = 5 * time.Minute

// ErrUnknownAccessKey is what a Credentials returns for an access key id it
// does not know (UnrecognizedClientException).
var ErrUnknownAccessKey = errors.New("unknown access key")

// Credentials finds the signing key of an access key.
type Credentials interface {
	// SigningKey returns DeriveSigningKey(secret, date, region, service)
	// for accessKeyID and the principal the key is bound to;
	// ErrUnknownAccessKey if there is no such key.
	SigningKey(ctx context.Context, accessKeyID, date, region, service string) ([]byte, authz.Principal, error)
}

// DeriveSigningKey is SigV4's signing key: HMAC chains from "AWS4"+secret
// over date (YYYYMMDD), region, service and "aws4_request".
func DeriveSigningKey(secret []byte, date, region, service string) []byte {
	k := hmacSHA256(append([]byte("AWS4"), secret...), date)
	k = hmacSHA256(k, region)
	k = hmacSHA256(k, service)
	return hmacSHA256(k, "aws4_request")
}

func hmacSHA256(key []byte, data string) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(data))
	return m.Sum(nil)
}

// Verifier checks SigV4 signatures for one region and service.
type Verifier struct {
	Region      string
	Service     string // "kms"
	Credentials Credentials
	Now         func() time.Time // default time.Now
	MaxSkew     time.Duration    // default DefaultMaxSkew
}

// requiredSigned are the headers every signature must cover. Host and
// X-Amz-Date are SigV4's own rule; X-Amz-Target names the operation, so a
// signature that does not cover it could be replayed as another operation
// with the same body (every AWS SDK signs it).
var requiredSigned = []string{"host", "x-amz-date", "x-amz-target"}

// authHeader is a parsed Authorization header.
type authHeader struct {
	accessKeyID, date, region, service string
	signedHeaders                      []string
	signature                          []byte
}

func incomplete(format string, args ...any) error {
	return Errorf(ErrIncompleteSignature, format, args...)
}

func invalid(format string, args ...any) error {
	return Errorf(ErrInvalidSignature, format, args...)
}

func parseAuthorization(h string) (*authHeader, error) {
	alg, rest, _ := strings.Cut(h, " ")
	if alg != Algorithm {
		return nil, incomplete("Authorization header requires the %s algorithm", Algorithm)
	}
	fields := map[string]string{}
	for part := range strings.SplitSeq(rest, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok {
			return nil, incomplete("Authorization header: %q is not key=value", strings.TrimSpace(part))
		}
		if _, dup := fields[k]; dup {
			return nil, incomplete("Authorization header: %s given twice", k)
		}
		fields[k] = v
	}
	for _, k := range []string{"Credential", "SignedHeaders", "Signature"} {
		if fields[k] == "" {
			return nil, incomplete("Authorization header requires '%s' parameter", k)
		}
	}
	if len(fields) != 3 {
		return nil, incomplete("Authorization header has parameters other than Credential, SignedHeaders and Signature")
	}
	cred := strings.Split(fields["Credential"], "/")
	if len(cred) != 5 || cred[0] == "" {
		return nil, incomplete("Credential must be <access key id>/<date>/<region>/<service>/aws4_request")
	}
	if cred[4] != "aws4_request" {
		return nil, invalid("Credential should be scoped with a valid terminator: 'aws4_request', not '%s'", cred[4])
	}
	a := &authHeader{accessKeyID: cred[0], date: cred[1], region: cred[2], service: cred[3]}
	a.signedHeaders = strings.Split(fields["SignedHeaders"], ";")
	for i, sh := range a.signedHeaders {
		if sh == "" || sh != strings.ToLower(sh) || i > 0 && a.signedHeaders[i-1] >= sh {
			return nil, incomplete("SignedHeaders must be lower-case header names, sorted, each once")
		}
	}
	sig, err := hex.DecodeString(fields["Signature"])
	if err != nil || len(sig) != sha256.Size {
		return nil, incomplete("Signature must be 64 hexadecimal digits")
	}
	a.signature = sig
	return a, nil
}

// Verify checks the signature of r, whose body is body (already read), and
// returns the principal of its access key. Its errors are *Error of the
// types the AWS SDKs expect: MissingAuthenticationTokenException (no
// signature), IncompleteSignatureException (malformed or too little
// signed), InvalidSignatureException (wrong signature, scope or time),
// UnrecognizedClientException (unknown access key).
func (v *Verifier) Verify(ctx context.Context, r *http.Request, body []byte) (authz.Principal, error) {
	var none authz.Principal
	h := r.Header.Get("Authorization")
	if h == "" {
		if r.URL.Query().Get("X-Amz-Signature") != "" {
			return none, incomplete("presigned requests are not supported; sign the Authorization header")
		}
		return none, Errorf(ErrMissingAuthenticationTok, "Missing Authentication Token")
	}
	if len(r.Header.Values("Authorization")) != 1 {
		return none, incomplete("more than one Authorization header")
	}
	a, err := parseAuthorization(h)
	if err != nil {
		return none, err
	}
	for _, req := range requiredSigned {
		if !slices.Contains(a.signedHeaders, req) {
			return none, incomplete("'%s' must be a 'SignedHeader' in the AWS Authorization", req)
		}
	}
	for _, sh := range a.signedHeaders {
		if sh != "host" && sh != "content-length" && len(r.Header.Values(sh)) == 0 {
			return none, incomplete("SignedHeaders names '%s', which the request does not carry", sh)
		}
	}
	if r.Header.Get("X-Amz-Security-Token") != "" {
		return none, Errorf(ErrUnrecognizedClient, "The security token included in the request is invalid: session tokens are not issued here")
	}
	amzDate := r.Header.Get("X-Amz-Date")
	t, err := time.Parse("20060102T150405Z", amzDate)
	if err != nil {
		return none, incomplete("X-Amz-Date must be an ISO 8601 basic date-time in UTC (YYYYMMDD'T'HHMMSS'Z'), not %q", amzDate)
	}
	if a.date != amzDate[:8] {
		return none, invalid("Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: '%s' != '%s'", a.date, amzDate[:8])
	}
	if a.region != v.Region {
		return none, invalid("Credential should be scoped to a valid region, not '%s'; this endpoint is region '%s'", a.region, v.Region)
	}
	if a.service != v.Service {
		return none, invalid("Credential should be scoped to correct service: '%s'", v.Service)
	}
	now := time.Now
	if v.Now != nil {
		now = v.Now
	}
	skew := v.MaxSkew
	if skew <= 0 {
		skew = DefaultMaxSkew
	}
	n := now().UTC()
	const f = "20060102T150405Z"
	if t.Before(n.Add(-skew)) {
		return none, invalid("Signature expired: %s is now earlier than %s (%s - %s.)", amzDate, n.Add(-skew).Format(f), n.Format(f), skew)
	}
	if t.After(n.Add(skew)) {
		return none, invalid("Signature not yet current: %s is still later than %s (%s + %s.)", amzDate, n.Add(skew).Format(f), n.Format(f), skew)
	}
	sum := sha256.Sum256(body)
	payloadHash := hex.EncodeToString(sum[:])
	if ch := r.Header.Get("X-Amz-Content-Sha256"); ch != "" && ch != payloadHash {
		return none, invalid("The provided 'x-amz-content-sha256' header does not match what was computed.")
	}
	key, p, err := v.Credentials.SigningKey(ctx, a.accessKeyID, a.date, a.region, a.service)
	if errors.Is(err, ErrUnknownAccessKey) {
		return none, Errorf(ErrUnrecognizedClient, "The security token included in the request is invalid.")
	}
	if err != nil {
		return none, fmt.Errorf("access key lookup: %w", err)
	}
	creq := canonicalRequest(r, a.signedHeaders, payloadHash)
	crSum := sha256.Sum256([]byte(creq))
	scope := a.date + "/" + a.region + "/" + a.service + "/aws4_request"
	sts := Algorithm + "\n" + amzDate + "\n" + scope + "\n" + hex.EncodeToString(crSum[:])
	if !hmac.Equal(hmacSHA256(key, sts), a.signature) {
		return none, invalid("The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method.")
	}
	return p, nil
}

// canonicalRequest builds SigV4's canonical request of r.
func canonicalRequest(r *http.Request, signed []string, payloadHash string) string {
	var b strings.Builder
	b.WriteString(r.Method)
	b.WriteByte('\n')
	path := r.URL.RawPath
	if path == "" {
		path = r.URL.Path
	}
	if path == "" {
		path = "/"
	}
	b.WriteString(escapePath(path))
	b.WriteByte('\n')
	b.WriteString(canonicalQuery(r.URL.Query()))
	b.WriteByte('\n')
	for _, h := range signed {
		b.WriteString(h)
		b.WriteByte(':')
		b.WriteString(headerValue(r, h))
		b.WriteByte('\n')
	}
	b.WriteByte('\n')
	b.WriteString(strings.Join(signed, ";"))
	b.WriteByte('\n')
	b.WriteString(payloadHash)
	return b.String()
}

// headerValue is the canonical value of header h: its values trimmed,
// inner runs of spaces collapsed, joined by commas. net/http keeps Host and
// Content-Length outside r.Header.
func headerValue(r *http.Request, h string) string {
	var vs []string
	switch h {
	case "host":
		vs = []string{r.Host}
	case "content-length":
		vs = r.Header.Values("Content-Length")
		if len(vs) == 0 && r.ContentLength >= 0 {
			vs = []string{strconv.FormatInt(r.ContentLength, 10)}
		}
	default:
		vs = r.Header.Values(h)
	}
	out := make([]string, len(vs))
	for i, v := range vs {
		out[i] = strings.Join(strings.Fields(v), " ")
	}
	return strings.Join(out, ",")
}

func canonicalQuery(q url.Values) string {
	type kv struct{ k, v string }
	var all []kv
	for k, vs := range q {
		for _, v := range vs {
			all = append(all, kv{uriEncode(k, true), uriEncode(v, true)})
		}
	}
	sort.Slice(all, func(i, j int) bool {
		if all[i].k != all[j].k {
			return all[i].k < all[j].k
		}
		return all[i].v < all[j].v
	})
	parts := make([]string, len(all))
	for i, p := range all {
		parts[i] = p.k + "=" + p.v
	}
	return strings.Join(parts, "&")
}

// escapePath URI-encodes a path for the canonical URI (every service but
// S3 encodes the path as sent once more), keeping '/'.
func escapePath(p string) string { return uriEncode(p, false) }

// uriEncode is SigV4's UriEncode: every byte but the unreserved characters
// (A-Z a-z 0-9 - . _ ~) as %XX in upper case; '/' too when encodeSlash.
func uriEncode(s string, encodeSlash bool) string {
	const hexd = "0123456789ABCDEF"
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'A' <= c && c <= 'Z', 'a' <= c && c <= 'z', '0' <= c && c <= '9', c == '-', c == '.', c == '_', c == '~':
			b.WriteByte(c)
		case c == '/' && !encodeSlash:
			b.WriteByte(c)
		default:
			b.WriteByte('%')
			b.WriteByte(hexd[c>>4])
			b.WriteByte(hexd[c&15])
		}
	}
	return b.String()
}
