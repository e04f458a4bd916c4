//go:build cgo

package hsmsvc

// Tests of the pkcs11 backend against SoftHSM2. Each HSM gets a throwaway
// token of its own (internal/softhsm); without SoftHSM2 the tests skip, or
// fail when MRKREPL_REQUIRE_SOFTHSM=1.

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha512"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/pkcs11"
	"github.com/mrkrepl/mrkrepl/internal/softhsm"
)

// newPKCS11Token creates a throwaway SoftHSM2 token with an RSK and returns
// its URI.
func newPKCS11Token(tb testing.TB, label string) string {
	tb.Helper()
	uri := softhsm.NewToken(tb, label)
	if _, err := InitPKCS11RSK(context.Background(), uri, Options{}); err != nil {
		tb.Fatalf("InitPKCS11RSK: %v", err)
	}
	return uri
}

func openPKCS11URI(tb testing.TB, uri string, opts Options) *pkcs11HSM {
	tb.Helper()
	h, err := Open(context.Background(), uri, opts)
	if err != nil {
		tb.Fatalf("Open(%q): %v", uri, err)
	}
	tb.Cleanup(func() { h.Close() })
	return h.(*pkcs11HSM)
}

// openPKCS11Fresh opens an HSM on a token of its own.
func openPKCS11Fresh(tb testing.TB) HSM {
	tb.Helper()
	return openPKCS11URI(tb, newPKCS11Token(tb, "conformance"), Options{AllowHostKDF: true})
}

// within fails t if f does not return within d: a PKCS#11 error must be an
// error, not a hang.
func within(t *testing.T, d time.Duration, f func()) {
	t.Helper()
	done := make(chan struct{})
	go func() { defer close(done); f() }()
	select {
	case <-done:
	case <-time.After(d):
		t.Fatalf("no answer within %v", d)
	}
}

func TestPKCS11Conformance(t *testing.T) {
	runConformance(t, func(t *testing.T) HSM { return openPKCS11Fresh(t) })
}

// TestInteropSoftPKCS11 replicates between the soft and the pkcs11 backend,
// each in turn the source (runInterop runs both directions, and a replica
// replicates onward).
func TestInteropSoftPKCS11(t *testing.T) {
	t.Run("soft-pkcs11", func(t *testing.T) {
		runInterop(t, func(t *testing.T) HSM { return openSoftMemory(t) }, func(t *testing.T) HSM { return openPKCS11Fresh(t) })
	})
	t.Run("pkcs11-soft", func(t *testing.T) {
		runInterop(t, func(t *testing.T) HSM { return openPKCS11Fresh(t) }, func(t *testing.T) HSM { return openSoftDir(t) })
	})
}

func BenchmarkPKCS11(b *testing.B) {
	runBenchmarks(b, func(b *testing.B) HSM { return openPKCS11Fresh(b) })
}

// getValue reads CKA_VALUE of o.
func (h *pkcs11HSM) getValue(t *testing.T, o pkcs11.ObjectHandle) error {
	t.Helper()
	var err error
	mustNoErr(t, h.withSession(t.Context(), func(sh pkcs11.SessionHandle) error {
		_, err = h.p.GetAttributeValue(sh, o, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_VALUE, nil)})
		return nil
	}))
	return err
}

// boolAttrs reads boolean attributes of o.
func (h *pkcs11HSM) boolAttrs(t *testing.T, o pkcs11.ObjectHandle, types ...uint) map[uint]bool {
	t.Helper()
	tmpl := make([]*pkcs11.Attribute, len(types))
	for i, typ := range types {
		tmpl[i] = pkcs11.NewAttribute(typ, nil)
	}
	out := map[uint]bool{}
	mustNoErr(t, h.withSession(t.Context(), func(sh pkcs11.SessionHandle) error {
		attrs, err := h.p.GetAttributeValue(sh, o, tmpl)
		if err != nil {
			return err
		}
		for _, a := range attrs {
			out[a.Type] = len(a.Value) == 1 && a.Value[0] == 1
		}
		return nil
	}))
	return out
}

// find returns the one object matching tmpl.
func (h *pkcs11HSM) find(t *testing.T, what string, tmpl ...*pkcs11.Attribute) pkcs11.ObjectHandle {
	t.Helper()
	var o pkcs11.ObjectHandle
	mustNoErr(t, h.withSession(t.Context(), func(sh pkcs11.SessionHandle) (err error) {
		o, err = h.findOne(sh, what, tmpl)
		return err
	}))
	return o
}

// countObjects counts the objects of the token matching tmpl.
func (h *pkcs11HSM) countObjects(t *testing.T, tmpl ...*pkcs11.Attribute) int {
	t.Helper()
	var n int
	mustNoErr(t, h.withSession(t.Context(), func(sh pkcs11.SessionHandle) error {
		objs, err := h.findObjects(sh, tmpl)
		n = len(objs)
		return err
	}))
	return n
}

// TestPKCS11KeysSensitive checks every kind of key object the backend
// makes: C_GetAttributeValue(CKA_VALUE) fails with CKR_ATTRIBUTE_SENSITIVE,
// and the attributes are the ones docs/PKCS11.md lists.
func TestPKCS11KeysSensitive(t *testing.T) {
	ctx := t.Context()
	src, dst := openPKCS11Fresh(t).(*pkcs11HSM), openPKCS11Fresh(t).(*pkcs11HSM)
	ref := newKeyRef(t)
	mustNoErr(t, src.GenerateKey(ctx, ref))
	_, err := replicate(ctx, src, dst, ref)
	mustNoErr(t, err)
	rid := newReplicationID()
	_, err = dst.CreateAgreementKey(ctx, rid, time.Now().Add(time.Hour))
	mustNoErr(t, err)
	rotated, err := src.CreateRSK(ctx)
	mustNoErr(t, err)
	rotatedKID := rotated.(*pkcs11Signer).kid

	objects := []struct {
		name              string
		h                 *pkcs11HSM
		o                 pkcs11.ObjectHandle
		extractable       bool
		alwaysSensitive   bool // generated inside as sensitive
		neverExtractable  bool
		trueAttrs, falses []uint
	}{
		{
			name: "K generated", h: src, o: src.find(t, "K", keyTemplate(ref)...),
			extractable: true, alwaysSensitive: true,
			trueAttrs: []uint{pkcs11.CKA_TOKEN, pkcs11.CKA_PRIVATE, pkcs11.CKA_ENCRYPT, pkcs11.CKA_DECRYPT, pkcs11.CKA_SIGN},
			falses:    []uint{pkcs11.CKA_WRAP, pkcs11.CKA_UNWRAP, pkcs11.CKA_DERIVE, pkcs11.CKA_MODIFIABLE},
		},
		{
			name: "K unwrapped", h: dst, o: dst.find(t, "K", keyTemplate(ref)...),
			extractable: true,
			trueAttrs:   []uint{pkcs11.CKA_TOKEN, pkcs11.CKA_PRIVATE, pkcs11.CKA_ENCRYPT, pkcs11.CKA_DECRYPT, pkcs11.CKA_SIGN},
			falses:      []uint{pkcs11.CKA_WRAP, pkcs11.CKA_UNWRAP, pkcs11.CKA_DERIVE, pkcs11.CKA_MODIFIABLE},
		},
		{
			name: "RSK private key", h: src, o: src.find(t, "RSK", pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PRIVATE_KEY), pkcs11.NewAttribute(pkcs11.CKA_LABEL, DefaultRSKLabel)),
			alwaysSensitive: true, neverExtractable: true,
			trueAttrs: []uint{pkcs11.CKA_TOKEN, pkcs11.CKA_PRIVATE, pkcs11.CKA_SIGN},
			falses:    []uint{pkcs11.CKA_DERIVE},
		},
		{
			name: "RSK private key (rotation)", h: src, o: src.find(t, "rotation RSK", pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PRIVATE_KEY),
				pkcs11.NewAttribute(pkcs11.CKA_LABEL, DefaultRSKLabel+"/rotation"), pkcs11.NewAttribute(pkcs11.CKA_ID, rotatedKID)),
			alwaysSensitive: true, neverExtractable: true,
			trueAttrs: []uint{pkcs11.CKA_TOKEN, pkcs11.CKA_PRIVATE, pkcs11.CKA_SIGN},
			falses:    []uint{pkcs11.CKA_DERIVE},
		},
		{
			name: "RAKB private key", h: dst, o: dst.find(t, "RAKB", pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PRIVATE_KEY), pkcs11.NewAttribute(pkcs11.CKA_LABEL, rakbLabel(rid))),
			alwaysSensitive: true, neverExtractable: true,
			trueAttrs: []uint{pkcs11.CKA_TOKEN, pkcs11.CKA_PRIVATE, pkcs11.CKA_DERIVE},
			falses:    []uint{pkcs11.CKA_SIGN},
		},
	}
	for _, obj := range objects {
		t.Run(obj.name, func(t *testing.T) {
			err := obj.h.getValue(t, obj.o)
			if !errors.Is(err, pkcs11.Error(pkcs11.CKR_ATTRIBUTE_SENSITIVE)) {
				t.Errorf("C_GetAttributeValue(CKA_VALUE) = %v, want CKR_ATTRIBUTE_SENSITIVE", err)
			}
			attrs := obj.h.boolAttrs(t, obj.o, append([]uint{pkcs11.CKA_SENSITIVE, pkcs11.CKA_EXTRACTABLE,
				pkcs11.CKA_ALWAYS_SENSITIVE, pkcs11.CKA_NEVER_EXTRACTABLE}, append(obj.trueAttrs, obj.falses...)...)...)
			want := map[uint]bool{
				pkcs11.CKA_SENSITIVE:         true,
				pkcs11.CKA_EXTRACTABLE:       obj.extractable,
				pkcs11.CKA_ALWAYS_SENSITIVE:  obj.alwaysSensitive,
				pkcs11.CKA_NEVER_EXTRACTABLE: obj.neverExtractable,
			}
			for _, a := range obj.trueAttrs {
				want[a] = true
			}
			for _, a := range obj.falses {
				want[a] = false
			}
			for a, w := range want {
				if attrs[a] != w {
					t.Errorf("attribute 0x%x = %v, want %v", a, attrs[a], w)
				}
			}
		})
	}

	// RAKA, Z and RWK are session objects destroyed before the calls return.
	for _, h := range []*pkcs11HSM{src, dst} {
		if n := h.countObjects(t, pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false)); n != 0 {
			t.Errorf("%v: %d session objects left after a replication", h, n)
		}
	}
}

func TestPKCS11HostKDF(t *testing.T) {
	ctx := t.Context()
	var logs bytes.Buffer
	var mu sync.Mutex
	log := slog.New(slog.NewTextHandler(lockedWriter{&mu, &logs}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	uri := newPKCS11Token(t, "hostkdf")
	pin := pinOf(t, uri)

	// Refused without the switch, with an error that names it.
	_, err := Open(ctx, uri, Options{})
	if err == nil || !strings.Contains(err.Error(), "allow-host-kdf=true") || !strings.Contains(err.Error(), "Z") {
		t.Fatalf("Open without allow-host-kdf: %v", err)
	}
	// Either switch allows it.
	h := openPKCS11URI(t, uri+"&allow-host-kdf=true", Options{Logger: log})
	h.Close()
	h = openPKCS11URI(t, uri, Options{AllowHostKDF: true, Logger: log})
	if !h.HostKDF() {
		t.Fatal("HostKDF() = false on SoftHSM2")
	}
	if !strings.Contains(logs.String(), "level=WARN") || !strings.Contains(logs.String(), "Z is read out") {
		t.Errorf("no startup warning about the host KDF in:\n%s", logs.String())
	}

	soft := openSoftMemory(t)
	ref := newKeyRef(t)
	mustNoErr(t, soft.GenerateKey(ctx, ref))
	_, err = replicate(ctx, soft, h, ref) // h unwraps: one host KDF
	mustNoErr(t, err)
	_, err = replicate(ctx, h, soft, KeyRef{KeyID: ref.KeyID, Version: ref.Version}) // h wraps (soft holds the same key: success)
	if err != nil {
		t.Fatalf("replicate back an existing key: %v", err)
	}
	if got := h.HostKDFOps(); got != 2 {
		t.Errorf("HostKDFOps() = %d, want 2 (one unwrap, one wrap)", got)
	}
	var r HSM = h
	if _, ok := r.(HostKDFReporter); !ok {
		t.Error("pkcs11 HSM does not implement HostKDFReporter")
	}
	mu.Lock()
	defer mu.Unlock()
	if strings.Contains(logs.String(), pin) {
		t.Errorf("the PIN appears in the logs:\n%s", logs.String())
	}
}

// pinOf returns the PIN the URI's pin-source holds.
func pinOf(t *testing.T, uri string) string {
	t.Helper()
	cfg, err := parsePKCS11URI(uri)
	mustNoErr(t, err)
	pin, err := resolvePIN(cfg, Options{})
	mustNoErr(t, err)
	return pin
}

// withQuery replaces (or adds) a query attribute of uri.
func withQuery(t *testing.T, uri, name, value string) string {
	t.Helper()
	path, query, _ := strings.Cut(uri, "?")
	var out []string
	for _, a := range strings.Split(query, "&") {
		if n, _, _ := strings.Cut(a, "="); n != name && a != "" {
			out = append(out, a)
		}
	}
	if value != "" {
		out = append(out, name+"="+url.PathEscape(value))
	}
	return path + "?" + strings.Join(out, "&")
}

func TestPKCS11OpenErrors(t *testing.T) {
	ctx := t.Context()
	uri := newPKCS11Token(t, "errors") // never opened: its login state is clean
	pin := pinOf(t, uri)
	junk := filepath.Join(t.TempDir(), "junk.so")
	mustNoErr(t, os.WriteFile(junk, []byte("not a shared object"), 0o644))
	wrongPIN := filepath.Join(t.TempDir(), "wrong.pin")
	mustNoErr(t, os.WriteFile(wrongPIN, []byte("wrong-"+pin+"\n"), 0o600))
	noRSK := softhsm.NewToken(t, "norsk")

	for _, tc := range []struct {
		name, uri string
		opts      Options
		want      []string
	}{
		{"missing module", withQuery(t, uri, "module-path", "/nonexistent/libnothere.so"), Options{AllowHostKDF: true},
			[]string{"load PKCS#11 module", "no such file"}},
		{"not a module", withQuery(t, uri, "module-path", junk), Options{AllowHostKDF: true},
			[]string{"cannot be loaded as a PKCS#11 module"}},
		{"wrong PIN", withQuery(t, uri, "pin-source", wrongPIN), Options{AllowHostKDF: true},
			[]string{"wrong PIN", "CKR_PIN_INCORRECT"}},
		{"wrong PIN in options", uri, Options{AllowHostKDF: true, PIN: "0000"},
			[]string{"wrong PIN"}},
		{"missing token", strings.Replace(uri, "token=", "token=absent-", 1), Options{AllowHostKDF: true},
			[]string{`token "absent-`, "not found"}},
		{"missing serial", strings.Replace(uri, "pkcs11:", "pkcs11:serial=0123456789abcdef;", 1), Options{AllowHostKDF: true},
			[]string{"serial 0123456789abcdef", "not found"}},
		{"missing pin file", withQuery(t, uri, "pin-source", "/nonexistent/pin"), Options{AllowHostKDF: true},
			[]string{"pin-source", "no such file"}},
		{"no pin", withQuery(t, uri, "pin-source", ""), Options{AllowHostKDF: true},
			[]string{"no PIN"}},
		{"no RSK", noRSK, Options{AllowHostKDF: true},
			[]string{"no RSK", DefaultRSKLabel, "hsm init"}},
		{"other RSK label", strings.Replace(uri, "?", ";object=other-rsk?", 1), Options{AllowHostKDF: true},
			[]string{"no RSK", "other-rsk"}},
		{"host KDF not allowed", uri, Options{},
			[]string{"allow-host-kdf=true"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var err error
			within(t, 30*time.Second, func() {
				var h HSM
				h, err = Open(ctx, tc.uri, tc.opts)
				if h != nil {
					h.Close()
				}
			})
			if err == nil {
				t.Fatal("Open succeeded")
			}
			t.Log(err)
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
			if strings.Contains(err.Error(), pin) {
				t.Errorf("error %q contains the PIN", err)
			}
			var perr pkcs11.Error
			if errors.As(err, &perr) {
				t.Errorf("error %q exposes the PKCS#11 return code %v as a value", err, perr)
			}
		})
	}
	// After all that, the right PIN still opens it (no lockout, nothing
	// left half-initialised).
	openPKCS11URI(t, uri, Options{AllowHostKDF: true})
}

func TestPKCS11InitRSK(t *testing.T) {
	ctx := t.Context()
	uri := softhsm.NewToken(t, "initrsk")
	pub, err := InitPKCS11RSK(ctx, uri, Options{})
	mustNoErr(t, err)
	again, err := InitPKCS11RSK(ctx, uri, Options{})
	wantErrIs(t, "second InitPKCS11RSK", err, ErrExists)
	if again == nil || !pub.(*ecdsa.PublicKey).Equal(again) {
		t.Error("second InitPKCS11RSK does not return the existing public key")
	}
	// A second RSK under another label, for rollover.
	uri2 := strings.Replace(uri, "?", ";object=mrkrepl-rsk-2?", 1)
	pub2, err := InitPKCS11RSK(ctx, uri2, Options{})
	mustNoErr(t, err)
	if pub2.(*ecdsa.PublicKey).Equal(pub) {
		t.Error("two RSKs share a key")
	}

	h := openPKCS11URI(t, uri, Options{AllowHostKDF: true})
	if !h.Signer().Public().(*ecdsa.PublicKey).Equal(pub) {
		t.Error("Open found another RSK than InitPKCS11RSK made")
	}
	// CKA_ID is the kid, on both halves.
	for _, class := range []uint{pkcs11.CKO_PRIVATE_KEY, pkcs11.CKO_PUBLIC_KEY} {
		h.find(t, "rsk by kid", pkcs11.NewAttribute(pkcs11.CKA_CLASS, class), pkcs11.NewAttribute(pkcs11.CKA_ID, kidOf(h)),
			pkcs11.NewAttribute(pkcs11.CKA_LABEL, DefaultRSKLabel))
	}
	h2 := openPKCS11URI(t, uri2, Options{AllowHostKDF: true})
	if !h2.Signer().Public().(*ecdsa.PublicKey).Equal(pub2) {
		t.Error("object= did not select the second RSK")
	}
	if s := fmt.Sprint(h.Signer()); !strings.Contains(s, "kid") || strings.Contains(s, "D:") {
		t.Errorf("signer prints as %q", s)
	}
}

// TestPKCS11RSKRotation: an RSK CreateRSK makes is a key pair of its own
// (label "<object>/rotation", CKA_ID its kid, public half public), is
// seen by another Open of the token at its next RSKs (as another process
// would see it), and survives a reopen; Signer stays the default RSK.
func TestPKCS11RSKRotation(t *testing.T) {
	ctx := t.Context()
	uri := newPKCS11Token(t, "rotation")
	a := openPKCS11URI(t, uri, Options{AllowHostKDF: true})
	b := openPKCS11URI(t, uri, Options{AllowHostKDF: true})
	s, err := a.CreateRSK(ctx)
	mustNoErr(t, err)
	kid := s.(*pkcs11Signer).kid
	for _, class := range []uint{pkcs11.CKO_PRIVATE_KEY, pkcs11.CKO_PUBLIC_KEY} {
		a.find(t, "rotation rsk by kid", pkcs11.NewAttribute(pkcs11.CKA_CLASS, class), pkcs11.NewAttribute(pkcs11.CKA_ID, kid),
			pkcs11.NewAttribute(pkcs11.CKA_LABEL, DefaultRSKLabel+"/rotation"))
	}
	pub := a.find(t, "rotation rsk public half", pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PUBLIC_KEY), pkcs11.NewAttribute(pkcs11.CKA_ID, kid))
	if attrs := a.boolAttrs(t, pub, pkcs11.CKA_PRIVATE, pkcs11.CKA_TOKEN); attrs[pkcs11.CKA_PRIVATE] || !attrs[pkcs11.CKA_TOKEN] {
		t.Errorf("rotation rsk public half: %v, want a public token object", attrs)
	}
	rsks, err := b.RSKs(ctx)
	mustNoErr(t, err)
	if len(rsks) != 2 || !rsks[0].Public().(*ecdsa.PublicKey).Equal(b.Signer().Public()) || !rsks[1].Public().(*ecdsa.PublicKey).Equal(s.Public()) {
		t.Fatalf("another Open of the token lists %d rsks, want the default and the new one", len(rsks))
	}
	digest := sha512.Sum384([]byte("signed by b"))
	sig, err := rsks[1].Sign(rand.Reader, digest[:], crypto.SHA384)
	mustNoErr(t, err)
	if !ecdsa.VerifyASN1(s.Public().(*ecdsa.PublicKey), digest[:], sig) {
		t.Error("the new rsk, found by another Open, signs for another key")
	}
	// A second rotation key shares the label; the default stays alone.
	_, err = a.CreateRSK(ctx)
	mustNoErr(t, err)
	mustNoErr(t, a.Close())
	mustNoErr(t, b.Close())
	c := openPKCS11URI(t, uri, Options{AllowHostKDF: true})
	rsks, err = c.RSKs(ctx)
	mustNoErr(t, err)
	if len(rsks) != 3 {
		t.Fatalf("after reopen: %d rsks, want 3", len(rsks))
	}
	if !c.Signer().Public().(*ecdsa.PublicKey).Equal(a.signer.pub) {
		t.Error("the default rsk changed")
	}
	if n := c.countObjects(t, pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PRIVATE_KEY), pkcs11.NewAttribute(pkcs11.CKA_LABEL, DefaultRSKLabel)); n != 1 {
		t.Errorf("%d private keys carry the default label, want 1", n)
	}
}

// TestPKCS11RAKBSurvivesReopen: a RAKB made before a worker restart opens
// the material that arrives after it.
func TestPKCS11RAKBSurvivesReopen(t *testing.T) {
	ctx := t.Context()
	uri := newPKCS11Token(t, "reopen")
	soft := openSoftMemory(t)
	b := openPKCS11URI(t, uri, Options{AllowHostKDF: true})
	ref := newKeyRef(t)
	mustNoErr(t, soft.GenerateKey(ctx, ref))
	req, err := prepareReplication(ctx, soft, b, ref)
	mustNoErr(t, err)
	mustNoErr(t, b.Close())

	b = openPKCS11URI(t, uri, Options{AllowHostKDF: true})
	mustNoErr(t, b.UnwrapFromPeer(ctx, req))
	if err := checkSameKey(ctx, soft, b, ref); err != nil {
		t.Fatal(err)
	}
	mustNoErr(t, b.Close())

	// The replica survives too.
	b = openPKCS11URI(t, uri, Options{AllowHostKDF: true})
	if err := checkSameKey(ctx, soft, b, ref); err != nil {
		t.Fatal(err)
	}
}

func TestPKCS11SweepExpired(t *testing.T) {
	ctx := t.Context()
	uri := newPKCS11Token(t, "sweep")
	h := openPKCS11URI(t, uri, Options{AllowHostKDF: true})
	now := time.Now()
	h.now = func() time.Time { return now }
	short, long := []string{newReplicationID(), newReplicationID(), newReplicationID()}, newReplicationID()
	for _, id := range short {
		_, err := h.CreateAgreementKey(ctx, id, now.Add(time.Minute))
		mustNoErr(t, err)
	}
	_, err := h.CreateAgreementKey(ctx, long, now.Add(time.Hour))
	mustNoErr(t, err)

	n, err := h.SweepExpired(ctx)
	if err != nil || n != 0 {
		t.Fatalf("SweepExpired before expiry = %d, %v; want 0", n, err)
	}
	now = now.Add(2 * time.Minute)
	n, err = h.SweepExpired(ctx)
	if err != nil || n != len(short) {
		t.Fatalf("SweepExpired = %d, %v; want %d", n, err, len(short))
	}
	if n := h.countObjects(t, pkcs11.NewAttribute(pkcs11.CKA_LABEL, rakbLabel(short[0]))); n != 0 {
		t.Errorf("%d objects of a swept RAKB remain", n)
	}
	n, err = h.SweepExpired(ctx)
	if err != nil || n != 0 {
		t.Fatalf("second SweepExpired = %d, %v; want 0", n, err)
	}
	mustNoErr(t, h.DestroyAgreementKey(ctx, long))
	var r HSM = h
	if _, ok := r.(AgreementKeySweeper); !ok {
		t.Error("pkcs11 HSM does not implement AgreementKeySweeper")
	}

	// Open sweeps as well.
	h.now = time.Now
	_, err = h.CreateAgreementKey(ctx, long, time.Now().Add(200*time.Millisecond))
	mustNoErr(t, err)
	mustNoErr(t, h.Close())
	time.Sleep(250 * time.Millisecond)
	h = openPKCS11URI(t, uri, Options{AllowHostKDF: true})
	if n := h.countObjects(t, pkcs11.NewAttribute(pkcs11.CKA_LABEL, rakbLabel(long))); n != 0 {
		t.Errorf("Open left %d objects of an expired RAKB", n)
	}
}

// TestPKCS11StrayObjects: a lookup that matches several objects is an
// error, never a guess.
func TestPKCS11StrayObjects(t *testing.T) {
	ctx := t.Context()
	uri := newPKCS11Token(t, "strays")
	h := openPKCS11URI(t, uri, Options{AllowHostKDF: true})
	ref := newKeyRef(t)
	mustNoErr(t, h.GenerateKey(ctx, ref))
	// A stray with the same label, as another process or an operator could
	// make it.
	mustNoErr(t, h.withSession(ctx, func(sh pkcs11.SessionHandle) error {
		_, err := h.p.GenerateKey(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_GEN, nil)},
			append(newKeyAttributes(ref), pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, KeySize)))
		return err
	}))
	if _, err := h.HasKey(ctx, ref); err == nil || !strings.Contains(err.Error(), "2 objects") {
		t.Errorf("HasKey with two objects: %v", err)
	}
	if err := h.GenerateKey(ctx, ref); !errors.Is(err, ErrExists) {
		t.Errorf("GenerateKey over two objects: %v", err)
	}
	// A process that has not cached the handle (here: a second Open)
	// refuses to pick one.
	h2 := openPKCS11URI(t, uri, Options{AllowHostKDF: true})
	if _, err := h2.Encrypt(ctx, ref, []byte("x"), nil); err == nil || !strings.Contains(err.Error(), "2 objects") {
		t.Errorf("Encrypt with two objects: %v", err)
	}
	if err := h2.DestroyKey(ctx, ref); err == nil || !strings.Contains(err.Error(), "2 objects") {
		t.Errorf("DestroyKey with two objects: %v", err)
	}
}

// TestPKCS11HandleCache: a cached handle is checked before use, so an
// object destroyed behind the backend's back (another process) is not used
// and a new one with the same label is found.
func TestPKCS11HandleCache(t *testing.T) {
	ctx := t.Context()
	uri := newPKCS11Token(t, "cache")
	h := openPKCS11URI(t, uri, Options{AllowHostKDF: true})
	other := openPKCS11URI(t, uri, Options{AllowHostKDF: true})
	ref := newKeyRef(t)
	mustNoErr(t, h.GenerateKey(ctx, ref))
	ct, err := h.Encrypt(ctx, ref, []byte("x"), nil) // cached
	mustNoErr(t, err)
	mustNoErr(t, other.DestroyKey(ctx, ref))
	_, err = h.Encrypt(ctx, ref, []byte("x"), nil)
	wantErrIs(t, "Encrypt after another HSM destroyed the key", err, ErrNotFound)
	mustNoErr(t, other.GenerateKey(ctx, ref)) // a new K under the same label
	_, err = h.Decrypt(ctx, ref, ct, nil)
	wantErrIs(t, "Decrypt of the old ciphertext with the new key", err, ErrDecryptFailed)
	ct, err = other.Encrypt(ctx, ref, []byte("y"), nil)
	mustNoErr(t, err)
	if pt, err := h.Decrypt(ctx, ref, ct, nil); err != nil || string(pt) != "y" {
		t.Errorf("Decrypt with the new key: %q, %v", pt, err)
	}
}

// TestPKCS11SessionPool: operations beyond the pool's size wait their turn;
// a caller whose context ends while waiting gets its error, not a hang.
func TestPKCS11SessionPool(t *testing.T) {
	ctx := t.Context()
	h := openPKCS11Fresh(t).(*pkcs11HSM)
	ref := newKeyRef(t)
	mustNoErr(t, h.GenerateKey(ctx, ref))

	var wg sync.WaitGroup
	errs := make(chan error, 4*pkcs11MaxSessions)
	for range 4 * pkcs11MaxSessions {
		wg.Go(func() {
			ct, err := h.Encrypt(ctx, ref, []byte("concurrent"), nil)
			if err == nil {
				_, err = h.Decrypt(ctx, ref, ct, nil)
			}
			if err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}

	// Take every session, then ask for one more.
	var held []pkcs11.SessionHandle
	for range pkcs11MaxSessions {
		sh, err := h.pool.get(ctx)
		mustNoErr(t, err)
		held = append(held, sh)
	}
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	within(t, 10*time.Second, func() {
		_, err := h.Encrypt(short, ref, []byte("x"), nil)
		wantErrIs(t, "Encrypt with the pool exhausted", err, context.DeadlineExceeded)
	})
	for _, sh := range held {
		h.pool.put(sh, true)
	}
	_, err := h.Encrypt(ctx, ref, []byte("x"), nil)
	mustNoErr(t, err)
}

// TestPKCS11Signer: the signer checks the digest length and keeps working
// from many goroutines.
func TestPKCS11Signer(t *testing.T) {
	uri := newPKCS11Token(t, "signer")
	pin := pinOf(t, uri)
	h := openPKCS11URI(t, uri, Options{AllowHostKDF: true})
	s := h.Signer()
	for _, text := range []string{fmt.Sprint(h), fmt.Sprintf("%+v %#v", h, h), fmt.Sprint(s), fmt.Sprintf("%+v %#v", s, s)} {
		if strings.Contains(text, pin) || strings.Contains(text, "0x") {
			t.Errorf("printed as %q", text)
		}
	}
	if _, err := s.Sign(rand.Reader, make([]byte, 32), crypto.SHA384); err == nil {
		t.Error("signed a 32-byte digest as SHA-384")
	}
	digest := sha512.Sum384([]byte("x"))
	sig, err := s.Sign(rand.Reader, digest[:], crypto.SHA384)
	mustNoErr(t, err)
	if !ecdsa.VerifyASN1(s.Public().(*ecdsa.PublicKey), digest[:], sig) {
		t.Error("signature does not verify")
	}
}

// TestPKCS11EndToEndVector runs the e2e vector (computed with OpenSSL, not
// by this code) through the token: B, holding the vector's RAKB, unwraps
// the vector's blob and confirms with the vector's value; A, holding the
// vector's K, wraps it for the vector's RAKB, and the blob opens on the
// host to K.
func TestPKCS11EndToEndVector(t *testing.T) {
	ctx := t.Context()
	var v e2eVector
	readVectors(t, "e2e.json", &v)
	c := v.Context.kdfContext()
	ref := c.Ref()

	b := openPKCS11Fresh(t).(*pkcs11HSM)
	mustNoErr(t, b.withSession(ctx, func(sh pkcs11.SessionHandle) error {
		_, err := b.p.CreateObject(sh, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PRIVATE_KEY),
			pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_EC),
			pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, p384Params),
			pkcs11.NewAttribute(pkcs11.CKA_VALUE, []byte(v.RAKBPrivate)),
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
			pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
			pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
			pkcs11.NewAttribute(pkcs11.CKA_DERIVE, true),
			pkcs11.NewAttribute(pkcs11.CKA_LABEL, rakbLabel(c.ReplicationID)),
			pkcs11.NewAttribute(pkcs11.CKA_ID, []byte(fmt.Sprint(time.Now().Add(time.Hour).UnixNano()))),
		})
		return err
	}))
	mustNoErr(t, b.UnwrapFromPeer(ctx, UnwrapRequest{PeerPublicKey: v.Context.RAKA, Wrapped: v.Wrapped, Context: c}))
	kc, err := b.KeyConfirmation(ctx, ref, v.Transcript)
	if err != nil || !bytes.Equal(kc, v.KeyConfirmation) {
		t.Fatalf("KeyConfirmation = %x, %v; want %x", kc, err, []byte(v.KeyConfirmation))
	}

	a := openPKCS11Fresh(t).(*pkcs11HSM)
	mustNoErr(t, a.withSession(ctx, func(sh pkcs11.SessionHandle) error {
		_, err := a.p.CreateObject(sh, append(newKeyAttributes(ref), pkcs11.NewAttribute(pkcs11.CKA_VALUE, bytes.Clone(v.Key))))
		return err
	}))
	wc := c
	wc.RAKA = nil
	res, err := a.WrapForPeer(ctx, WrapRequest{PeerPublicKey: v.Context.RAKB, Context: wc})
	mustNoErr(t, err)
	rakb, err := ecdh.P384().NewPrivateKey(v.RAKBPrivate)
	mustNoErr(t, err)
	peer, err := parseP384Public(res.RAKA)
	mustNoErr(t, err)
	z, err := rakb.ECDH(peer)
	mustNoErr(t, err)
	wc.RAKA = res.RAKA
	k, err := kwpUnwrap(deriveRWK(z, wc.FixedInfo()), res.Wrapped)
	if err != nil || !bytes.Equal(k, v.Key) {
		t.Fatalf("A's wrap opens to %x, %v; want %x", k, err, []byte(v.Key))
	}
	// Both tokens now hold the vector's K.
	if err := checkSameKey(ctx, a, b, ref); err != nil {
		t.Fatal(err)
	}
}
