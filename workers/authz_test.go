package workers

import (
	"bytes"
	"errors"
	"testing"

	"github.com/mrkrepl/mrkrepl/api"
	"github.com/mrkrepl/mrkrepl/internal/authz"
	"github.com/nats-io/nats.go"
)

func authzWorker(t *testing.T, cfg Config) *Worker {
	t.Helper()
	w := &Worker{cfg: cfg}
	if err := w.setAuthz(); err != nil {
		t.Fatal(err)
	}
	return w
}

func TestPrincipalOf(t *testing.T) {
	w := authzWorker(t, Config{AccountNames: map[string]string{"ABCKEY": "ORDERS"}})
	cases := []struct {
		name, info string
		want       string // "" → unauthenticated
	}{
		{"static", `{"acc":"APP_ORDERS","user":"alice","name":"conn"}`, "APP_ORDERS/alice"},
		{"account only", `{"acc":"APP_ORDERS"}`, "APP_ORDERS"},
		{"jwt name tag", `{"acc":"ABCKEY","user":"UDXYZ","name_tag":"bob"}`, "ORDERS/bob"},
		{"none", ``, ""},
		{"not json", `{acc`, ""},
		{"no account", `{"user":"alice"}`, ""},
		{"bad user", `{"acc":"A","user":"a/b"}`, ""},
		{"wildcard account", `{"acc":"*","user":"a"}`, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h := nats.Header{}
			if c.info != "" {
				h.Set("Nats-Request-Info", c.info)
			}
			p, err := w.principalOf(h)
			if c.want == "" {
				var ae *apiError
				if !errors.As(err, &ae) || ae.Code != api.CodeUnauthenticated {
					t.Fatalf("principal %v, err %v: want 401", p, err)
				}
				return
			}
			if err != nil || p.String() != c.want {
				t.Fatalf("principal %q, err %v; want %q", p, err, c.want)
			}
		})
	}
	// A worker with a local principal gives it to requests without the header.
	w = authzWorker(t, Config{LocalPrincipal: "MRK/admin"})
	if p, err := w.principalOf(nats.Header{}); err != nil || p.String() != "MRK/admin" {
		t.Fatalf("local: %v %v", p, err)
	}
	if _, err := (&Worker{cfg: Config{LocalPrincipal: "a b"}}).principalOfSetup(); err == nil {
		t.Fatal("a malformed local principal was accepted")
	}
}

// principalOfSetup runs setAuthz (for the malformed-config case).
func (w *Worker) principalOfSetup() (*Worker, error) { return w, w.setAuthz() }

func TestSplitRequestSubject(t *testing.T) {
	for _, c := range []struct{ subj, op, acc string }{
		{"mrk.us.requests.replicate-key", "replicate-key", ""},
		{"mrk.us.requests.replicate-key.APP_X", "replicate-key", "APP_X"},
		{"mrk.us.requests.other.APP_X.more", "other", "APP_X.more"},
	} {
		op, acc := splitRequestSubject("us", c.subj)
		if op != c.op || acc != c.acc {
			t.Errorf("%s: %q %q", c.subj, op, acc)
		}
	}
	w := authzWorker(t, Config{})
	if _, err := w.eventPrincipal(""); err == nil {
		t.Error("a request event from inside the workers' account was given a principal without LocalPrincipal")
	}
	if _, err := w.eventPrincipal("APP_X.more"); err == nil {
		t.Error("a malformed account token was accepted")
	}
	if p, err := w.eventPrincipal("APP_X"); err != nil || p.String() != "APP_X" || p.User != "" {
		t.Errorf("event principal %v %v", p, err)
	}
}

func TestRequestAAD(t *testing.T) {
	ec := map[string]string{"tenant": "a"}
	got, err := requestAAD(ec, nil)
	want, _ := authz.EncodeContext(ec)
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("context aad %x %v", got, err)
	}
	if got, err := requestAAD(nil, []byte("legacy")); err != nil || string(got) != "legacy" {
		t.Fatalf("raw aad %q %v", got, err)
	}
	if got, err := requestAAD(nil, nil); err != nil || len(got) != 0 {
		t.Fatalf("no aad %q %v", got, err)
	}
	if _, err := requestAAD(ec, []byte("x")); err == nil {
		t.Error("both context and raw aad accepted")
	}
	if _, err := requestAAD(nil, want); err == nil {
		t.Error("raw aad that mimics an encoded context accepted")
	}
	if _, err := requestAAD(map[string]string{"": "v"}, nil); err == nil {
		t.Error("empty context key accepted")
	}
}

func TestAdminsOnlyPolicy(t *testing.T) {
	w := authzWorker(t, Config{Admins: []string{"MRK/admin", "OPS"}})
	k := &keyRecord{Key: api.Key{KeyID: "mrk-00000000000000000000000000000000"}}
	pol, err := w.keyPolicy(k)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		p    authz.Principal
		want bool
	}{
		{authz.Principal{Account: "MRK", User: "admin"}, true},
		{authz.Principal{Account: "OPS", User: "carol"}, true},
		{authz.Principal{Account: "APP", User: "alice"}, false},
		{authz.Principal{Account: "MRK", User: "worker"}, false},
	} {
		if d := pol.Evaluate(authz.Request{Principal: c.p, Action: "kms:Decrypt"}); d.Allowed != c.want {
			t.Errorf("%s: allowed %v", c.p, d.Allowed)
		}
	}
	if d := w.regionPolicy.Evaluate(authz.Request{Principal: authz.Principal{Account: "APP", User: "a"}, Action: "kms:CreateKey"}); d.Allowed {
		t.Error("the default region policy lets a non-admin create keys")
	}
	// No admins: a key without a policy is nobody's.
	w = authzWorker(t, Config{})
	if pol, err := w.keyPolicy(k); err != nil || pol.Evaluate(authz.Request{Principal: authz.Principal{Account: "MRK", User: "admin"}, Action: "kms:Decrypt"}).Allowed {
		t.Error("a key without policy is usable with no admins configured")
	}
	if _, err := (&Worker{cfg: Config{Admins: []string{"a b"}}}).principalOfSetup(); err == nil {
		t.Error("a malformed admin principal was accepted")
	}
}
