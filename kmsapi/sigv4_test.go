package kmsapi

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
	"github.com/aws/smithy-go"
	"github.com/mrkrepl/mrkrepl/internal/authz"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

const (
	testID     = "MRKAEXAMPLEEXAMPLE"
	testSecret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
)

// fakeCreds knows one access key.
type fakeCreds struct{}

func (fakeCreds) SigningKey(_ context.Context, id, date, region, service string) ([]byte, authz.Principal, error) {
	if id != testID {
		return nil, authz.Principal{}, ErrUnknownAccessKey
	}
	return DeriveSigningKey([]byte(testSecret), date, region, service), authz.Principal{Account: "APP", User: "alice"}, nil
}

// echoHandler answers ListKeys with the principal, and fails on "boom".
type echoHandler struct{}

func (echoHandler) ServeKMS(_ context.Context, p authz.Principal, op string, body []byte) (any, error) {
	var req struct {
		Limit *int `json:"Limit"`
	}
	if err := Decode(body, &req); err != nil {
		return nil, err
	}
	if req.Limit != nil && *req.Limit == 666 {
		return nil, errors.New("boom")
	}
	return ListKeysResponse{Keys: []KeyListEntry{{KeyID: p.String()}}}, nil
}

func testServer(t *testing.T, reg prometheus.Registerer) *httptest.Server {
	t.Helper()
	s, err := New(Config{Region: "us-east-1", Credentials: fakeCreds{}, Handler: echoHandler{},
		Operations: []string{"ListKeys"}, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(s)
	t.Cleanup(ts.Close)
	return ts
}

// signed returns a ListKeys request signed by the real SDK signer.
func signed(t *testing.T, url, secret, region string, at time.Time, body string, extra http.Header) *http.Request {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url+"/", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", ContentType)
	req.Header.Set("X-Amz-Target", "TrentService.ListKeys")
	for k, vs := range extra {
		req.Header[k] = vs
	}
	sum := sha256.Sum256([]byte(body))
	creds := aws.Credentials{AccessKeyID: testID, SecretAccessKey: secret}
	if err := v4.NewSigner().SignHTTP(context.Background(), creds, req, hex.EncodeToString(sum[:]), "kms", region, at); err != nil {
		t.Fatal(err)
	}
	return req
}

func do(t *testing.T, req *http.Request) (int, string, string) {
	t.Helper()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var e struct {
		Type    string `json:"__type"`
		Message string `json:"message"`
	}
	_ = json.Unmarshal(b, &e)
	if e.Type != "" && resp.Header.Get("X-Amzn-ErrorType") != e.Type {
		t.Errorf("X-Amzn-ErrorType %q, __type %q", resp.Header.Get("X-Amzn-ErrorType"), e.Type)
	}
	return resp.StatusCode, e.Type, string(b)
}

func TestSigV4(t *testing.T) {
	ts := testServer(t, nil)
	now := time.Now()
	drop := func(h string) func(*http.Request) { return func(r *http.Request) { r.Header.Del(h) } }
	editAuth := func(old, new string) func(*http.Request) {
		return func(r *http.Request) {
			r.Header.Set("Authorization", strings.Replace(r.Header.Get("Authorization"), old, new, 1))
		}
	}
	for _, c := range []struct {
		name   string
		req    *http.Request
		edit   func(*http.Request)
		status int
		typ    string
	}{
		{"valid", signed(t, ts.URL, testSecret, "us-east-1", now, `{}`, nil), nil, 200, ""},
		{"valid, empty body", signed(t, ts.URL, testSecret, "us-east-1", now, ``, nil), nil, 200, ""},
		{"wrong secret", signed(t, ts.URL, "not the secret", "us-east-1", now, `{}`, nil), nil, 400, ErrInvalidSignature},
		{"other region's scope", signed(t, ts.URL, testSecret, "eu-west-1", now, `{}`, nil), nil, 400, ErrInvalidSignature},
		{"stale timestamp", signed(t, ts.URL, testSecret, "us-east-1", now.Add(-6*time.Minute), `{}`, nil), nil, 400, ErrInvalidSignature},
		{"future timestamp", signed(t, ts.URL, testSecret, "us-east-1", now.Add(6*time.Minute), `{}`, nil), nil, 400, ErrInvalidSignature},
		{"tampered body", signed(t, ts.URL, testSecret, "us-east-1", now, `{"Limit":5}`, nil), func(r *http.Request) {
			r.Body, r.ContentLength = io.NopCloser(strings.NewReader(`{"Limit":6}`)), 11
		}, 400, ErrInvalidSignature},
		{"tampered target", signed(t, ts.URL, testSecret, "us-east-1", now, `{}`, nil), func(r *http.Request) {
			r.Header.Set("X-Amz-Target", "TrentService.ListAliases")
		}, 400, ErrInvalidSignature},
		{"host not signed", signed(t, ts.URL, testSecret, "us-east-1", now, `{}`, nil), editAuth(";host;", ";"), 400, ErrIncompleteSignature},
		{"headers unsorted", signed(t, ts.URL, testSecret, "us-east-1", now, `{}`, nil), editAuth(";host;x-amz-date", ";x-amz-date;host"), 400, ErrIncompleteSignature},
		{"target not signed", signed(t, ts.URL, testSecret, "us-east-1", now, `{}`, nil), editAuth(";x-amz-target", ""), 400, ErrIncompleteSignature},
		{"signed header missing", signed(t, ts.URL, testSecret, "us-east-1", now, `{}`, http.Header{"X-Extra": {"1"}}), drop("X-Extra"), 400, ErrIncompleteSignature},
		{"no x-amz-date", signed(t, ts.URL, testSecret, "us-east-1", now, `{}`, nil), drop("X-Amz-Date"), 400, ErrIncompleteSignature},
		{"unknown access key", signed(t, ts.URL, testSecret, "us-east-1", now, `{}`, nil), editAuth(testID, "MRKAUNKNOWNUNKNOWN"), 400, ErrUnrecognizedClient},
		{"other service", signed(t, ts.URL, testSecret, "us-east-1", now, `{}`, nil), editAuth("/kms/", "/s3/"), 400, ErrInvalidSignature},
		{"unsigned", signed(t, ts.URL, testSecret, "us-east-1", now, `{}`, nil), drop("Authorization"), 403, ErrMissingAuthenticationTok},
		{"garbled authorization", signed(t, ts.URL, testSecret, "us-east-1", now, `{}`, nil), func(r *http.Request) {
			r.Header.Set("Authorization", "AWS4-HMAC-SHA256 Credential=x")
		}, 400, ErrIncompleteSignature},
		{"wrong body hash header", signed(t, ts.URL, testSecret, "us-east-1", now, `{}`, http.Header{"X-Amz-Content-Sha256": {strings.Repeat("0", 64)}}), nil, 400, ErrInvalidSignature},
	} {
		t.Run(c.name, func(t *testing.T) {
			if c.edit != nil {
				c.edit(c.req)
			}
			status, typ, body := do(t, c.req)
			if status != c.status || typ != c.typ {
				t.Fatalf("got %d %q (%s), want %d %q", status, typ, body, c.status, c.typ)
			}
			if c.status == 200 && !strings.Contains(body, "APP/alice") {
				t.Fatalf("reply does not name the key's principal: %s", body)
			}
		})
	}
}

// TestSDKSigV4 drives the fake server with the SDK's own client.
func TestSDKSigV4(t *testing.T) {
	reg := prometheus.NewRegistry()
	ts := testServer(t, reg)
	client := func(region, id, secret string) *kms.Client {
		return kms.NewFromConfig(aws.Config{Region: region, Credentials: credentials.NewStaticCredentialsProvider(id, secret, ""), RetryMaxAttempts: 1},
			func(o *kms.Options) { o.BaseEndpoint = aws.String(ts.URL) })
	}
	out, err := client("us-east-1", testID, testSecret).ListKeys(t.Context(), &kms.ListKeysInput{})
	if err != nil || len(out.Keys) != 1 || aws.ToString(out.Keys[0].KeyId) != "APP/alice" {
		t.Fatalf("list keys: %v %+v", err, out)
	}
	for _, c := range []struct {
		name, region, id, secret, code string
	}{
		{"wrong secret", "us-east-1", testID, "nope", ErrInvalidSignature},
		{"other region", "eu-west-1", testID, testSecret, ErrInvalidSignature},
		{"unknown access key", "us-east-1", "MRKAUNKNOWNUNKNOWN", testSecret, ErrUnrecognizedClient},
	} {
		_, err := client(c.region, c.id, c.secret).ListKeys(t.Context(), &kms.ListKeysInput{})
		var ae smithy.APIError
		if !errors.As(err, &ae) || ae.ErrorCode() != c.code {
			t.Errorf("%s: got %v, want %s", c.name, err, c.code)
		}
	}
	c := client("us-east-1", testID, testSecret)
	_, err = c.ListAliases(t.Context(), &kms.ListAliasesInput{})
	var unsup *types.UnsupportedOperationException
	if !errors.As(err, &unsup) {
		t.Errorf("an operation not served: got %v, want UnsupportedOperationException", err)
	}
	_, err = c.ListKeys(t.Context(), &kms.ListKeysInput{Limit: aws.Int32(666)})
	var internal *types.KMSInternalException
	if !errors.As(err, &internal) || strings.Contains(err.Error(), "boom") {
		t.Errorf("a handler's error: got %v, want KMSInternalException without detail", err)
	}
	if n := testutil.ToFloat64(mustCounter(t, reg, "ListKeys", "unauthenticated")); n != 3 {
		t.Errorf("unauthenticated ListKeys counted %v times, want 3", n)
	}
}

func mustCounter(t *testing.T, reg *prometheus.Registry, op, outcome string) prometheus.Collector {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "mrkrepl_kms_requests_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			l := map[string]string{}
			for _, lp := range m.GetLabel() {
				l[lp.GetName()] = lp.GetValue()
			}
			if l["op"] == op && l["outcome"] == outcome {
				c := prometheus.NewCounter(prometheus.CounterOpts{Name: "x"})
				c.Add(m.GetCounter().GetValue())
				return c
			}
		}
	}
	t.Fatalf("no series for %s %s", op, outcome)
	return nil
}

// TestMalformed: bad requests get a clear error of the right type, never
// a 500.
func TestMalformed(t *testing.T) {
	ts := testServer(t, nil)
	now := time.Now()
	for _, c := range []struct {
		name, body, target, ctype string
		typ                       string
	}{
		{"not JSON", `{"Limit":`, "TrentService.ListKeys", ContentType, ErrSerialization},
		{"unknown field", `{"Nope":1}`, "TrentService.ListKeys", ContentType, ErrValidation},
		{"wrong type", `{"Limit":"x"}`, "TrentService.ListKeys", ContentType, ErrValidation},
		{"unknown operation", `{}`, "TrentService.Frobnicate", ContentType, ErrUnknownOperation},
		{"other service", `{}`, "DynamoDB_20120810.ListTables", ContentType, ErrUnknownOperation},
		{"unsupported operation", `{}`, "TrentService.Sign", ContentType, ErrUnsupportedOperation},
		{"wrong content type", `{}`, "TrentService.ListKeys", "application/json", ErrSerialization},
		{"oversized", `{"x":"` + strings.Repeat("a", MaxBody) + `"}`, "TrentService.ListKeys", ContentType, ErrValidation},
	} {
		t.Run(c.name, func(t *testing.T) {
			req := signed(t, ts.URL, testSecret, "us-east-1", now, c.body, http.Header{"X-Amz-Target": {c.target}, "Content-Type": {c.ctype}})
			status, typ, body := do(t, req)
			if typ != c.typ || status >= 500 {
				t.Fatalf("got %d %q (%s), want %q", status, typ, body, c.typ)
			}
		})
	}
	// Health endpoints answer without a signature.
	for _, p := range []string{"/healthz", "/readyz"} {
		resp, err := http.Get(ts.URL + p)
		if err != nil || resp.StatusCode != 200 {
			t.Errorf("%s: %v %v", p, err, resp)
		}
		if resp != nil {
			resp.Body.Close()
		}
	}
}

func TestPlainHTTPOnlyOnLoopback(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if err := CheckListener(l, nil); err != nil {
		t.Errorf("loopback refused: %v", err)
	}
	if addrs, _ := net.InterfaceAddrs(); len(addrs) > 0 {
		for _, a := range addrs {
			ip, ok := a.(*net.IPNet)
			if !ok || ip.IP.IsLoopback() || ip.IP.To4() == nil {
				continue
			}
			l2, err := net.Listen("tcp", ip.IP.String()+":0")
			if err != nil {
				continue
			}
			err = CheckListener(l2, nil)
			l2.Close()
			if err == nil || !strings.Contains(err.Error(), "loopback") {
				t.Errorf("plain HTTP on %s: %v", ip.IP, err)
			}
			return
		}
	}
	t.Log("no non-loopback IPv4 address to test the refusal with")
}

func TestCanonicalRequestEncoding(t *testing.T) {
	if got := uriEncode("a b/c~d*", false); got != "a%20b/c~d%2A" {
		t.Errorf("uriEncode: %s", got)
	}
	r := httptest.NewRequest("POST", "/?b=2&a=1&a=0", bytes.NewReader(nil))
	if got := canonicalQuery(r.URL.Query()); got != "a=0&a=1&b=2" {
		t.Errorf("canonicalQuery: %s", got)
	}
}

func TestSignedHeadersOfTheSDK(t *testing.T) {
	ts := testServer(t, nil)
	req := signed(t, ts.URL, testSecret, "us-east-1", time.Now(), `{}`, nil)
	if a := req.Header.Get("Authorization"); !strings.Contains(a, ";host;x-amz-date;x-amz-target,") {
		t.Fatalf("the SDK's signed headers changed: %s", a)
	}
}
