package hsmsvc

// The conformance suite: what every backend must do, run against each of
// them (TestSoftConformance, and the PKCS#11 backend's own test), plus the
// interoperability run between two backends and the shared benchmarks.

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mrkrepl/mrkrepl/internal/hsmfault"
)

// runConformance runs the suite every backend must pass. open must return a
// fresh HSM that shares no keys with any other HSM it returns (its own
// store or token), and close it with t.Cleanup; Close must tolerate being
// called twice.
func runConformance(t *testing.T, open func(t *testing.T) HSM) {
	t.Run("Backend", func(t *testing.T) {
		if open(t).Backend() == "" {
			t.Error("Backend() is empty")
		}
	})
	t.Run("Sign", func(t *testing.T) { testSign(t, open(t)) })
	t.Run("RSKRotation", func(t *testing.T) { testRSKRotation(t, open(t)) })
	t.Run("KeyLifecycle", func(t *testing.T) { testKeyLifecycle(t, open(t)) })
	t.Run("InvalidKeyRefs", func(t *testing.T) { testInvalidKeyRefs(t, open(t)) })
	t.Run("EncryptDecrypt", func(t *testing.T) { testEncryptDecrypt(t, open(t)) })
	t.Run("KeyConfirmation", func(t *testing.T) { testKeyConfirmation(t, open(t)) })
	t.Run("AgreementKeys", func(t *testing.T) { testAgreementKeys(t, open(t)) })
	t.Run("Replication", func(t *testing.T) { testReplication(t, open(t), open(t)) })
	t.Run("RAKBSingleUse", func(t *testing.T) { testRAKBSingleUse(t, open(t), open(t)) })
	t.Run("UnwrapTwice", func(t *testing.T) { testUnwrapTwice(t, open(t), open(t)) })
	t.Run("UnwrapFaults", func(t *testing.T) { testUnwrapFaults(t, open(t), open(t)) })
	t.Run("TamperedWrapped", func(t *testing.T) { testTamperedWrapped(t, open(t), open(t)) })
	t.Run("MismatchedContext", func(t *testing.T) { testMismatchedContext(t, open(t), open(t)) })
	t.Run("InvalidPeerKeys", func(t *testing.T) { testInvalidPeerKeys(t, open(t), open(t)) })
	t.Run("InvalidContext", func(t *testing.T) { testInvalidContext(t, open(t), open(t)) })
	t.Run("ExpiredRAKB", func(t *testing.T) { testExpiredRAKB(t, open(t), open(t)) })
	t.Run("Concurrent", func(t *testing.T) { testConcurrent(t, open(t), open(t)) })
	t.Run("Close", func(t *testing.T) { testClose(t, open(t)) })
}

// runInterop replicates between two backends in both directions.
func runInterop(t *testing.T, openA, openB func(t *testing.T) HSM) {
	a, b := openA(t), openB(t)
	for _, dir := range []struct {
		name     string
		src, dst HSM
	}{{"AtoB", a, b}, {"BtoA", b, a}} {
		t.Run(dir.name, func(t *testing.T) {
			ctx := t.Context()
			ref := newKeyRef(t)
			mustNoErr(t, dir.src.GenerateKey(ctx, ref))
			if _, err := replicate(ctx, dir.src, dir.dst, ref); err != nil {
				t.Fatal(err)
			}
			if err := checkSameKey(ctx, dir.src, dir.dst, ref); err != nil {
				t.Fatal(err)
			}
			// The replica replicates onward: a second version goes back.
			ref2 := KeyRef{KeyID: ref.KeyID, Version: 2}
			mustNoErr(t, dir.dst.GenerateKey(ctx, ref2))
			if _, err := replicate(ctx, dir.dst, dir.src, ref2); err != nil {
				t.Fatal(err)
			}
			if err := checkSameKey(ctx, dir.dst, dir.src, ref2); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// ---- helpers ----

func mustNoErr(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func randBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

func newKeyRef(t testing.TB) KeyRef {
	return KeyRef{KeyID: "mrk-" + hex.EncodeToString(randBytes(16)), Version: 1}
}

func newReplicationID() string { return hex.EncodeToString(randBytes(16)) }

// kidOf returns the RSK kid of h.
func kidOf(h HSM) []byte {
	spki, err := x509.MarshalPKIXPublicKey(h.Signer().Public())
	if err != nil {
		panic(err) // only for public keys x509 cannot encode: a test bug
	}
	sum := sha256.Sum256(spki)
	return sum[:]
}

// newPoint returns a valid P-384 point no HSM holds the private key of.
func newPoint() []byte {
	k, err := ecdh.P384().GenerateKey(rand.Reader)
	if err != nil {
		panic(err)
	}
	return k.PublicKey().Bytes()
}

// prepareReplication runs the protocol's first HSM steps (B makes RAKB, A
// wraps ref for it) and returns the request B's UnwrapFromPeer would get.
func prepareReplication(ctx context.Context, a, b HSM, ref KeyRef) (UnwrapRequest, error) {
	return prepareReplicationExpiring(ctx, a, b, ref, time.Now().Add(time.Minute))
}

func prepareReplicationExpiring(ctx context.Context, a, b HSM, ref KeyRef, expiresAt time.Time) (UnwrapRequest, error) {
	id := newReplicationID()
	rakb, err := b.CreateAgreementKey(ctx, id, expiresAt)
	if err != nil {
		return UnwrapRequest{}, fmt.Errorf("CreateAgreementKey: %w", err)
	}
	if _, err := parseP384Public(rakb); err != nil {
		return UnwrapRequest{}, fmt.Errorf("CreateAgreementKey returned %x: %w", rakb, err)
	}
	kc := KDFContext{
		Partition: "p1", SrcRegion: "region-a", DstRegion: "region-b",
		SrcKID: kidOf(a), DstKID: kidOf(b),
		RAKB: rakb, ReplicationID: id, KeyID: ref.KeyID, Version: ref.Version,
		InitDigest: randBytes(DigestSize), OfferDigest: randBytes(DigestSize),
	}
	res, err := a.WrapForPeer(ctx, WrapRequest{PeerPublicKey: rakb, Context: kc})
	if err != nil {
		return UnwrapRequest{}, fmt.Errorf("WrapForPeer: %w", err)
	}
	if _, err := parseP384Public(res.RAKA); err != nil {
		return UnwrapRequest{}, fmt.Errorf("WrapForPeer returned RAKA %x: %w", res.RAKA, err)
	}
	if len(res.Wrapped) != KeySize+8 {
		return UnwrapRequest{}, fmt.Errorf("WrapForPeer returned %d wrapped bytes, want %d", len(res.Wrapped), KeySize+8)
	}
	kc.RAKA = res.RAKA
	return UnwrapRequest{PeerPublicKey: res.RAKA, Wrapped: res.Wrapped, Context: kc}, nil
}

// replicate copies ref from a to b.
func replicate(ctx context.Context, a, b HSM, ref KeyRef) (KDFContext, error) {
	req, err := prepareReplication(ctx, a, b, ref)
	if err != nil {
		return KDFContext{}, err
	}
	if err := b.UnwrapFromPeer(ctx, req); err != nil {
		return KDFContext{}, fmt.Errorf("UnwrapFromPeer: %w", err)
	}
	return req.Context, nil
}

// checkSameKey checks that a and b hold the same material for ref:
// ciphertexts cross both ways and the key confirmations agree.
func checkSameKey(ctx context.Context, a, b HSM, ref KeyRef) error {
	for _, d := range []struct {
		name     string
		enc, dec HSM
	}{{"a→b", a, b}, {"b→a", b, a}} {
		pt, aad := randBytes(100), []byte("aad "+d.name)
		ct, err := d.enc.Encrypt(ctx, ref, pt, aad)
		if err != nil {
			return fmt.Errorf("%s: Encrypt: %w", d.name, err)
		}
		got, err := d.dec.Decrypt(ctx, ref, ct, aad)
		if err != nil {
			return fmt.Errorf("%s: Decrypt: %w", d.name, err)
		}
		if !bytes.Equal(got, pt) {
			return fmt.Errorf("%s: Decrypt returned other plaintext", d.name)
		}
	}
	tr := randBytes(TranscriptSize)
	kcA, err := a.KeyConfirmation(ctx, ref, tr)
	if err != nil {
		return fmt.Errorf("KeyConfirmation in a: %w", err)
	}
	kcB, err := b.KeyConfirmation(ctx, ref, tr)
	if err != nil {
		return fmt.Errorf("KeyConfirmation in b: %w", err)
	}
	if len(kcA) != KeyConfirmationSize || !bytes.Equal(kcA, kcB) {
		return fmt.Errorf("key confirmations differ: a %x, b %x", kcA, kcB)
	}
	return nil
}

func wantErrIs(t testing.TB, what string, err, target error) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Errorf("%s: err = %v, want %v", what, err, target)
	}
}

func wantNoKey(t testing.TB, h HSM, ref KeyRef) {
	t.Helper()
	ok, err := h.HasKey(t.Context(), ref)
	if err != nil || ok {
		t.Errorf("HasKey(%s) = %v, %v; want false", ref, ok, err)
	}
}

// ---- the suite ----

func testSign(t *testing.T, h HSM) {
	s := h.Signer()
	if _, ok := s.(*ecdsa.PrivateKey); ok {
		t.Fatal("Signer() exposes the *ecdsa.PrivateKey")
	}
	pub, ok := s.Public().(*ecdsa.PublicKey)
	if !ok || pub.Curve != elliptic.P384() {
		t.Fatalf("Signer().Public() = %T, want an ECDSA P-384 key", s.Public())
	}
	if !pub.Equal(h.Signer().Public()) {
		t.Error("Signer() changes between calls")
	}
	for i := range 3 {
		digest := sha512.Sum384([]byte(fmt.Sprintf("message %d", i)))
		sig, err := s.Sign(rand.Reader, digest[:], crypto.SHA384)
		if err != nil {
			t.Fatal(err)
		}
		if !ecdsa.VerifyASN1(pub, digest[:], sig) {
			t.Fatalf("signature %d does not verify", i)
		}
		digest[0] ^= 1
		if ecdsa.VerifyASN1(pub, digest[:], sig) {
			t.Fatal("signature verifies for another digest")
		}
	}
}

// testRSKRotation: the HSM holds more RSKs than its default one; Signer
// stays the default; every RSK signs for its own public key; after Close
// none of it works.
func testRSKRotation(t *testing.T, h HSM) {
	ctx := t.Context()
	rot, ok := h.(RSKRotator)
	if !ok {
		t.Fatalf("%s backend does not implement RSKRotator", h.Backend())
	}
	def := h.Signer().Public().(*ecdsa.PublicKey)
	rsks, err := rot.RSKs(ctx)
	mustNoErr(t, err)
	if len(rsks) != 1 || !def.Equal(rsks[0].Public()) {
		t.Fatalf("RSKs() of a new HSM = %d keys, want the default one only", len(rsks))
	}
	var made []crypto.Signer
	for range 2 {
		s, err := rot.CreateRSK(ctx)
		mustNoErr(t, err)
		made = append(made, s)
	}
	pubs := []*ecdsa.PublicKey{def}
	for _, s := range made {
		pub, ok := s.Public().(*ecdsa.PublicKey)
		if !ok || pub.Curve != elliptic.P384() {
			t.Fatalf("CreateRSK made a %T, want an ECDSA P-384 key", s.Public())
		}
		if _, ok := s.(*ecdsa.PrivateKey); ok {
			t.Fatal("CreateRSK exposes the *ecdsa.PrivateKey")
		}
		for _, p := range pubs {
			if p.Equal(pub) {
				t.Fatal("CreateRSK returned a key the HSM already held")
			}
		}
		pubs = append(pubs, pub)
		digest := sha512.Sum384([]byte("rotation"))
		sig, err := s.Sign(rand.Reader, digest[:], crypto.SHA384)
		mustNoErr(t, err)
		if !ecdsa.VerifyASN1(pub, digest[:], sig) {
			t.Fatal("a new RSK's signature does not verify with its public key")
		}
	}
	if !def.Equal(h.Signer().Public()) {
		t.Error("CreateRSK changed Signer()")
	}
	rsks, err = rot.RSKs(ctx)
	mustNoErr(t, err)
	if len(rsks) != 3 || !def.Equal(rsks[0].Public()) {
		t.Fatalf("RSKs() = %d keys after two CreateRSK, want 3 with the default first", len(rsks))
	}
	var kids [][]byte
	for _, s := range rsks {
		kid := sha256.Sum256(must(x509.MarshalPKIXPublicKey(s.Public())))
		kids = append(kids, kid[:])
		if !slices.ContainsFunc(pubs, func(p *ecdsa.PublicKey) bool { return p.Equal(s.Public()) }) {
			t.Error("RSKs() returned a key CreateRSK did not make")
		}
		digest := sha512.Sum384([]byte("listed"))
		sig, err := s.Sign(rand.Reader, digest[:], crypto.SHA384)
		mustNoErr(t, err)
		if !ecdsa.VerifyASN1(s.Public().(*ecdsa.PublicKey), digest[:], sig) {
			t.Error("a listed RSK's signature does not verify")
		}
	}
	if bytes.Compare(kids[1], kids[2]) >= 0 {
		t.Error("RSKs() after the default one are not sorted by kid")
	}
	for _, s := range []fmt.Stringer{made[0].(fmt.Stringer), rsks[1].(fmt.Stringer)} {
		if str := s.String(); !strings.Contains(str, "kid") || strings.Contains(str, "D:") {
			t.Errorf("rsk prints as %q", str)
		}
	}

	mustNoErr(t, h.Close())
	if _, err := rot.CreateRSK(ctx); err == nil {
		t.Error("CreateRSK after Close succeeded")
	}
	if _, err := rot.RSKs(ctx); err == nil {
		t.Error("RSKs after Close succeeded")
	}
	digest := sha512.Sum384(nil)
	if _, err := made[0].Sign(rand.Reader, digest[:], crypto.SHA384); err == nil {
		t.Error("a rotation RSK signs after Close")
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

func testKeyLifecycle(t *testing.T, h HSM) {
	ctx := t.Context()
	ref := newKeyRef(t)
	wantNoKey(t, h, ref)
	wantErrIs(t, "DestroyKey of an absent key", h.DestroyKey(ctx, ref), ErrNotFound)
	mustNoErr(t, h.GenerateKey(ctx, ref))
	if ok, err := h.HasKey(ctx, ref); !ok || err != nil {
		t.Fatalf("HasKey after GenerateKey = %v, %v", ok, err)
	}
	wantErrIs(t, "GenerateKey twice", h.GenerateKey(ctx, ref), ErrExists)

	// Versions are separate keys.
	ref2 := KeyRef{KeyID: ref.KeyID, Version: 2}
	wantNoKey(t, h, ref2)
	mustNoErr(t, h.GenerateKey(ctx, ref2))
	ct, err := h.Encrypt(ctx, ref, []byte("v1"), nil)
	mustNoErr(t, err)
	_, err = h.Decrypt(ctx, ref2, ct, nil)
	wantErrIs(t, "Decrypt under another version", err, ErrDecryptFailed)

	mustNoErr(t, h.DestroyKey(ctx, ref))
	wantNoKey(t, h, ref)
	wantErrIs(t, "DestroyKey twice", h.DestroyKey(ctx, ref), ErrNotFound)
	_, err = h.Encrypt(ctx, ref, []byte("x"), nil)
	wantErrIs(t, "Encrypt with a destroyed key", err, ErrNotFound)
	_, err = h.Decrypt(ctx, ref, ct, nil)
	wantErrIs(t, "Decrypt with a destroyed key", err, ErrNotFound)
	_, err = h.KeyConfirmation(ctx, ref, randBytes(TranscriptSize))
	wantErrIs(t, "KeyConfirmation with a destroyed key", err, ErrNotFound)
	if ok, err := h.HasKey(ctx, ref2); !ok || err != nil {
		t.Errorf("destroying version 1 touched version 2: HasKey = %v, %v", ok, err)
	}
	// A destroyed ref can be generated again, as a new key.
	mustNoErr(t, h.GenerateKey(ctx, ref))
	_, err = h.Decrypt(ctx, ref, ct, nil)
	wantErrIs(t, "Decrypt with a regenerated key", err, ErrDecryptFailed)
}

func testInvalidKeyRefs(t *testing.T, h HSM) {
	ctx := t.Context()
	valid := newKeyRef(t)
	mustNoErr(t, h.GenerateKey(ctx, valid))
	for _, ref := range []KeyRef{
		{},
		{KeyID: valid.KeyID},
		{KeyID: "", Version: 1},
		{KeyID: "mrk-", Version: 1},
		{KeyID: valid.KeyID[4:], Version: 1},
		{KeyID: "MRK-" + valid.KeyID[4:], Version: 1},
		{KeyID: "mrk-" + hex.EncodeToString(randBytes(16))[:31] + "G", Version: 1},
		{KeyID: valid.KeyID + "0", Version: 1},
		{KeyID: "mrk-../../../../../../tmp/x", Version: 1},
		{KeyID: "mrk-00000000000000000000000000000/", Version: 1},
	} {
		name := fmt.Sprintf("%q/%d", ref.KeyID, ref.Version)
		if err := ref.Validate(); err == nil {
			t.Errorf("%s: Validate accepted it", name)
		}
		if err := h.GenerateKey(ctx, ref); err == nil {
			t.Errorf("%s: GenerateKey accepted it", name)
		}
		if _, err := h.HasKey(ctx, ref); err == nil {
			t.Errorf("%s: HasKey accepted it", name)
		}
		if err := h.DestroyKey(ctx, ref); err == nil {
			t.Errorf("%s: DestroyKey accepted it", name)
		}
		if _, err := h.Encrypt(ctx, ref, []byte("x"), nil); err == nil {
			t.Errorf("%s: Encrypt accepted it", name)
		}
		if _, err := h.KeyConfirmation(ctx, ref, randBytes(TranscriptSize)); err == nil {
			t.Errorf("%s: KeyConfirmation accepted it", name)
		}
	}
}

func testEncryptDecrypt(t *testing.T, h HSM) {
	ctx := t.Context()
	ref, other := newKeyRef(t), newKeyRef(t)
	mustNoErr(t, h.GenerateKey(ctx, ref))
	mustNoErr(t, h.GenerateKey(ctx, other))
	for _, tc := range []struct {
		name    string
		pt, aad []byte
	}{
		{"empty", nil, nil},
		{"short", []byte("hello"), []byte("context")},
		{"4 KiB", randBytes(4096), randBytes(64)},
		{"no aad", randBytes(33), nil},
	} {
		ct, err := h.Encrypt(ctx, ref, tc.pt, tc.aad)
		mustNoErr(t, err)
		if len(ct) != 12+len(tc.pt)+16 {
			t.Errorf("%s: ciphertext is %d bytes, want nonce ‖ ct ‖ tag = %d", tc.name, len(ct), 12+len(tc.pt)+16)
		}
		got, err := h.Decrypt(ctx, ref, ct, tc.aad)
		if err != nil || !bytes.Equal(got, tc.pt) {
			t.Errorf("%s: Decrypt = %x, %v", tc.name, got, err)
		}
		ct2, err := h.Encrypt(ctx, ref, tc.pt, tc.aad)
		mustNoErr(t, err)
		if bytes.Equal(ct[:12], ct2[:12]) || bytes.Equal(ct, ct2) {
			t.Errorf("%s: two encryptions share a nonce", tc.name)
		}
	}
	pt, aad := []byte("secret"), []byte("aad")
	ct, err := h.Encrypt(ctx, ref, pt, aad)
	mustNoErr(t, err)
	_, err = h.Decrypt(ctx, ref, ct, []byte("aae"))
	wantErrIs(t, "wrong aad", err, ErrDecryptFailed)
	_, err = h.Decrypt(ctx, ref, ct, nil)
	wantErrIs(t, "missing aad", err, ErrDecryptFailed)
	_, err = h.Decrypt(ctx, other, ct, aad)
	wantErrIs(t, "wrong key", err, ErrDecryptFailed)
	for _, i := range []int{0, 11, 12, len(ct) - 17, len(ct) - 1} {
		bad := bytes.Clone(ct)
		bad[i] ^= 0x01
		_, err = h.Decrypt(ctx, ref, bad, aad)
		wantErrIs(t, fmt.Sprintf("byte %d flipped", i), err, ErrDecryptFailed)
	}
	for _, n := range []int{0, 1, 12, 27, len(ct) - 1} {
		_, err = h.Decrypt(ctx, ref, ct[:n], aad)
		wantErrIs(t, fmt.Sprintf("truncated to %d bytes", n), err, ErrDecryptFailed)
	}
	_, err = h.Decrypt(ctx, ref, append(bytes.Clone(ct), 0), aad)
	wantErrIs(t, "extended", err, ErrDecryptFailed)
}

func testKeyConfirmation(t *testing.T, h HSM) {
	ctx := t.Context()
	ref, other := newKeyRef(t), newKeyRef(t)
	mustNoErr(t, h.GenerateKey(ctx, ref))
	mustNoErr(t, h.GenerateKey(ctx, other))
	tr := randBytes(TranscriptSize)
	kc, err := h.KeyConfirmation(ctx, ref, tr)
	mustNoErr(t, err)
	if len(kc) != KeyConfirmationSize {
		t.Fatalf("key confirmation is %d bytes, want %d", len(kc), KeyConfirmationSize)
	}
	again, err := h.KeyConfirmation(ctx, ref, tr)
	if err != nil || !bytes.Equal(kc, again) {
		t.Errorf("KeyConfirmation is not deterministic: %x, %x, %v", kc, again, err)
	}
	tr2 := bytes.Clone(tr)
	tr2[47] ^= 1
	if kc2, err := h.KeyConfirmation(ctx, ref, tr2); err != nil || bytes.Equal(kc, kc2) {
		t.Errorf("another transcript gives the same MAC (%v)", err)
	}
	if kc3, err := h.KeyConfirmation(ctx, other, tr); err != nil || bytes.Equal(kc, kc3) {
		t.Errorf("another key gives the same MAC (%v)", err)
	}
	for _, n := range []int{0, 16, 32, 47, 49, 64} {
		if _, err := h.KeyConfirmation(ctx, ref, randBytes(n)); err == nil {
			t.Errorf("accepted a %d-byte transcript", n)
		}
	}
	_, err = h.KeyConfirmation(ctx, newKeyRef(t), tr)
	wantErrIs(t, "absent key", err, ErrNotFound)
}

func testAgreementKeys(t *testing.T, h HSM) {
	ctx := t.Context()
	id := newReplicationID()
	exp := time.Now().Add(time.Minute)
	pub, err := h.CreateAgreementKey(ctx, id, exp)
	mustNoErr(t, err)
	if _, err := parseP384Public(pub); err != nil {
		t.Fatalf("RAKB %x: %v", pub, err)
	}
	_, err = h.CreateAgreementKey(ctx, id, exp)
	wantErrIs(t, "CreateAgreementKey twice", err, ErrExists)
	pub2, err := h.CreateAgreementKey(ctx, newReplicationID(), exp)
	mustNoErr(t, err)
	if bytes.Equal(pub, pub2) {
		t.Error("two replications share a RAKB")
	}
	mustNoErr(t, h.DestroyAgreementKey(ctx, id))
	wantErrIs(t, "DestroyAgreementKey twice", h.DestroyAgreementKey(ctx, id), ErrNotFound)
	wantErrIs(t, "DestroyAgreementKey of an unknown id", h.DestroyAgreementKey(ctx, newReplicationID()), ErrNotFound)
	if _, err := h.CreateAgreementKey(ctx, newReplicationID(), time.Now().Add(-time.Second)); err == nil {
		t.Error("CreateAgreementKey accepted an expiry in the past")
	}
	for _, bad := range []string{"", "r1", id[:31], id + "0", "ABCDEF0123456789ABCDEF0123456789", "../../../../../../../../../../tmp", id[:31] + "/"} {
		if _, err := h.CreateAgreementKey(ctx, bad, exp); err == nil {
			t.Errorf("CreateAgreementKey accepted replication id %q", bad)
		}
		if err := h.DestroyAgreementKey(ctx, bad); err == nil || errors.Is(err, ErrNotFound) {
			t.Errorf("DestroyAgreementKey(%q) = %v, want a validation error", bad, err)
		}
	}
}

func testReplication(t *testing.T, a, b HSM) {
	ctx := t.Context()
	ref := newKeyRef(t)
	mustNoErr(t, a.GenerateKey(ctx, ref))
	req, err := prepareReplication(ctx, a, b, ref)
	mustNoErr(t, err)
	wantNoKey(t, b, ref)
	mustNoErr(t, b.UnwrapFromPeer(ctx, req))
	if err := checkSameKey(ctx, a, b, ref); err != nil {
		t.Fatal(err)
	}
	// Each wrap makes a fresh RAKA.
	req2, err := prepareReplication(ctx, a, b, ref)
	mustNoErr(t, err)
	if bytes.Equal(req.PeerPublicKey, req2.PeerPublicKey) {
		t.Error("two wraps share a RAKA")
	}
	mustNoErr(t, b.DestroyAgreementKey(ctx, req2.Context.ReplicationID))
	// The replica is independent of the original once made.
	mustNoErr(t, a.DestroyKey(ctx, ref))
	ct, err := b.Encrypt(ctx, ref, []byte("still here"), nil)
	mustNoErr(t, err)
	if pt, err := b.Decrypt(ctx, ref, ct, nil); err != nil || string(pt) != "still here" {
		t.Errorf("replica after the original's destruction: %q, %v", pt, err)
	}
}

func testRAKBSingleUse(t *testing.T, a, b HSM) {
	ctx := t.Context()
	ref := newKeyRef(t)
	mustNoErr(t, a.GenerateKey(ctx, ref))
	req, err := prepareReplication(ctx, a, b, ref)
	mustNoErr(t, err)
	mustNoErr(t, b.UnwrapFromPeer(ctx, req))
	wantErrIs(t, "replayed UnwrapFromPeer", b.UnwrapFromPeer(ctx, req), ErrNotFound)
	wantErrIs(t, "DestroyAgreementKey after use", b.DestroyAgreementKey(ctx, req.Context.ReplicationID), ErrNotFound)
	mustNoErr(t, b.DestroyKey(ctx, ref))
	wantErrIs(t, "replay after the key was destroyed", b.UnwrapFromPeer(ctx, req), ErrNotFound)
	wantNoKey(t, b, ref)

	// A failed unwrap consumes the RAKB too: the genuine blob comes too late.
	req, err = prepareReplication(ctx, a, b, ref)
	mustNoErr(t, err)
	bad := req
	bad.Wrapped = bytes.Clone(req.Wrapped)
	bad.Wrapped[0] ^= 1
	wantErrIs(t, "tampered unwrap", b.UnwrapFromPeer(ctx, bad), ErrUnwrapFailed)
	wantErrIs(t, "genuine unwrap after a failed one", b.UnwrapFromPeer(ctx, req), ErrNotFound)
	wantNoKey(t, b, ref)

	// So does an unwrap refused because another key is already there.
	other := newKeyRef(t)
	mustNoErr(t, a.GenerateKey(ctx, other))
	mustNoErr(t, b.GenerateKey(ctx, other))
	req, err = prepareReplication(ctx, a, b, other)
	mustNoErr(t, err)
	wantErrIs(t, "unwrap of another key already present", b.UnwrapFromPeer(ctx, req), ErrExists)
	wantErrIs(t, "RAKB after ErrExists", b.DestroyAgreementKey(ctx, req.Context.ReplicationID), ErrNotFound)
	if err := checkSameKey(ctx, a, b, other); err == nil {
		t.Error("ErrExists replaced the key that was there")
	}
}

// testUnwrapTwice: an unwrap that finds the same key already stored (a
// crash after storing K, before the RAKB was destroyed, or a second run
// of a version) succeeds, consumes its RAKB and leaves the same K.
func testUnwrapTwice(t *testing.T, a, b HSM) {
	ctx := t.Context()
	ref := newKeyRef(t)
	mustNoErr(t, a.GenerateKey(ctx, ref))
	req, err := prepareReplication(ctx, a, b, ref)
	mustNoErr(t, err)
	errCrash := errors.New("crash")
	stop := hsmfault.With(ctx, func(s hsmfault.Step) error {
		if s == hsmfault.UnwrapKeyStored {
			return errCrash
		}
		return nil
	})
	wantFault(t, "unwrap stopped after storing K", b.UnwrapFromPeer(stop, req), errCrash)
	mustNoErr(t, b.UnwrapFromPeer(ctx, req)) // the same inputs again
	if err := checkSameKey(ctx, a, b, ref); err != nil {
		t.Fatal(err)
	}
	wantKC(t, a, b, req.Context)
	wantErrIs(t, "RAKB after the second unwrap", b.DestroyAgreementKey(ctx, req.Context.ReplicationID), ErrNotFound)
	wantErrIs(t, "a third unwrap", b.UnwrapFromPeer(ctx, req), ErrNotFound)

	// A second run of the same version: a fresh RAKB, the same K.
	req2, err := prepareReplication(ctx, a, b, ref)
	mustNoErr(t, err)
	mustNoErr(t, b.UnwrapFromPeer(ctx, req2))
	wantKC(t, a, b, req2.Context)
	wantErrIs(t, "RAKB after the second run", b.DestroyAgreementKey(ctx, req2.Context.ReplicationID), ErrNotFound)
}

// testUnwrapFaults stops UnwrapFromPeer after each of its steps, as a crash
// would, and retries with the same inputs: the retry ends with K stored
// and the RAKB gone. After the last step the RAKB is gone already, so the
// retry reports ErrNotFound with K present (the worker answers from K).
func testUnwrapFaults(t *testing.T, a, b HSM) {
	ctx := t.Context()
	for _, step := range hsmfault.UnwrapSteps {
		t.Run(string(step), func(t *testing.T) {
			ref := newKeyRef(t)
			mustNoErr(t, a.GenerateKey(ctx, ref))
			req, err := prepareReplication(ctx, a, b, ref)
			mustNoErr(t, err)
			errCrash := errors.New("crash at " + string(step))
			fctx := hsmfault.With(ctx, func(s hsmfault.Step) error {
				if s == step {
					return errCrash
				}
				return nil
			})
			wantFault(t, "faulted unwrap", b.UnwrapFromPeer(fctx, req), errCrash)
			has, err := b.HasKey(ctx, ref)
			mustNoErr(t, err)
			if want := step != hsmfault.UnwrapDerived; has != want {
				t.Errorf("after a fault at %s: HasKey = %v, want %v", step, has, want)
			}
			err = b.UnwrapFromPeer(ctx, req)
			if step == hsmfault.UnwrapRAKBDestroyed {
				wantErrIs(t, "retry after the RAKB was destroyed", err, ErrNotFound)
			} else {
				mustNoErr(t, err)
			}
			if err := checkSameKey(ctx, a, b, ref); err != nil {
				t.Fatal(err)
			}
			wantKC(t, a, b, req.Context)
			wantErrIs(t, "RAKB after the retry", b.DestroyAgreementKey(ctx, req.Context.ReplicationID), ErrNotFound)
		})
	}
}

// wantFault checks that err is the injected fault (by its text: a backend
// keeps only its sentinels reachable with errors.Is).
func wantFault(t *testing.T, what string, err, fault error) {
	t.Helper()
	if err == nil || !strings.Contains(err.Error(), fault.Error()) {
		t.Errorf("%s: err = %v, want %v", what, err, fault)
	}
}

// wantKC checks that a and b compute the same key confirmation for the
// key c names over a transcript.
func wantKC(t *testing.T, a, b HSM, c KDFContext) {
	t.Helper()
	tr := randBytes(TranscriptSize)
	ka, err := a.KeyConfirmation(t.Context(), c.Ref(), tr)
	mustNoErr(t, err)
	kb, err := b.KeyConfirmation(t.Context(), c.Ref(), tr)
	mustNoErr(t, err)
	if !bytes.Equal(ka, kb) {
		t.Error("key confirmations differ")
	}
}

func testTamperedWrapped(t *testing.T, a, b HSM) {
	ctx := t.Context()
	ref := newKeyRef(t)
	mustNoErr(t, a.GenerateKey(ctx, ref))
	tamper := []struct {
		name string
		fn   func(w []byte) []byte
	}{
		{"first byte", func(w []byte) []byte { w[0] ^= 0x01; return w }},
		{"integrity block end", func(w []byte) []byte { w[7] ^= 0x80; return w }},
		{"middle byte", func(w []byte) []byte { w[len(w)/2] ^= 0x10; return w }},
		{"last byte", func(w []byte) []byte { w[len(w)-1] ^= 0x01; return w }},
		{"truncated by 8", func(w []byte) []byte { return w[:len(w)-8] }},
		{"truncated by 1", func(w []byte) []byte { return w[:len(w)-1] }},
		{"extended by 8", func(w []byte) []byte { return append(w, make([]byte, 8)...) }},
		{"empty", func(w []byte) []byte { return nil }},
		{"random", func(w []byte) []byte { return randBytes(len(w)) }},
	}
	for _, tc := range tamper {
		req, err := prepareReplication(ctx, a, b, ref)
		mustNoErr(t, err)
		req.Wrapped = tc.fn(bytes.Clone(req.Wrapped))
		wantErrIs(t, tc.name, b.UnwrapFromPeer(ctx, req), ErrUnwrapFailed)
		wantNoKey(t, b, ref)
	}
	// A blob wrapped for another replication does not open this one.
	r1, err := prepareReplication(ctx, a, b, ref)
	mustNoErr(t, err)
	r2, err := prepareReplication(ctx, a, b, ref)
	mustNoErr(t, err)
	r1.Wrapped = r2.Wrapped
	wantErrIs(t, "blob of another replication", b.UnwrapFromPeer(ctx, r1), ErrUnwrapFailed)
	wantNoKey(t, b, ref)
}

func testMismatchedContext(t *testing.T, a, b HSM) {
	ctx := t.Context()
	ref := newKeyRef(t)
	mustNoErr(t, a.GenerateKey(ctx, ref))
	other := newPoint()
	for _, m := range contextMutations(other) {
		t.Run(m.name, func(t *testing.T) {
			req, err := prepareReplication(ctx, a, b, ref)
			mustNoErr(t, err)
			m.fn(&req.Context)
			want := ErrUnwrapFailed
			switch m.name {
			case "RAKA":
				req.PeerPublicKey = other // a consistent but different RAKA
			case "ReplicationID":
				want = ErrNotFound // names no RAKB
			}
			wantErrIs(t, "UnwrapFromPeer", b.UnwrapFromPeer(ctx, req), want)
			wantNoKey(t, b, ref)
			wantNoKey(t, b, req.Context.Ref())
		})
	}
	// A context whose RAKA is not the peer key is refused before the RAKB is
	// touched: the genuine request still works.
	req, err := prepareReplication(ctx, a, b, ref)
	mustNoErr(t, err)
	bad := req
	bad.Context.RAKA = other
	if err := b.UnwrapFromPeer(ctx, bad); err == nil {
		t.Fatal("UnwrapFromPeer accepted a context RAKA that is not the peer key")
	}
	mustNoErr(t, b.UnwrapFromPeer(ctx, req))
}

func testInvalidPeerKeys(t *testing.T, a, b HSM) {
	ctx := t.Context()
	var pts pointVectors
	readVectors(t, "points.json", &pts)
	ref := newKeyRef(t)
	mustNoErr(t, a.GenerateKey(ctx, ref))
	req, err := prepareReplication(ctx, a, b, ref)
	mustNoErr(t, err)
	for _, p := range pts.Invalid {
		wc := req.Context
		wc.RAKA, wc.RAKB = nil, p.Point
		_, err := a.WrapForPeer(ctx, WrapRequest{PeerPublicKey: p.Point, Context: wc})
		wantErrIs(t, "WrapForPeer, "+p.Name, err, ErrInvalidPeerKey)

		uc := req
		uc.PeerPublicKey = p.Point
		uc.Context.RAKA = p.Point
		wantErrIs(t, "UnwrapFromPeer, "+p.Name, b.UnwrapFromPeer(ctx, uc), ErrInvalidPeerKey)
	}
	// The context's RAKB must be the peer key WrapForPeer is given.
	wc := req.Context
	wc.RAKA = nil
	if _, err := a.WrapForPeer(ctx, WrapRequest{PeerPublicKey: newPoint(), Context: wc}); err == nil {
		t.Error("WrapForPeer accepted a peer key that is not the context's RAKB")
	}
	// Refusing a bad point left the RAKB in place.
	mustNoErr(t, b.UnwrapFromPeer(ctx, req))
	if err := checkSameKey(ctx, a, b, ref); err != nil {
		t.Fatal(err)
	}
}

func testInvalidContext(t *testing.T, a, b HSM) {
	ctx := t.Context()
	ref := newKeyRef(t)
	mustNoErr(t, a.GenerateKey(ctx, ref))
	req, err := prepareReplication(ctx, a, b, ref)
	mustNoErr(t, err)
	cases := []struct {
		name string
		fn   func(c *KDFContext)
	}{
		{"empty partition", func(c *KDFContext) { c.Partition = "" }},
		{"empty src region", func(c *KDFContext) { c.SrcRegion = "" }},
		{"empty dst region", func(c *KDFContext) { c.DstRegion = "" }},
		{"src equals dst", func(c *KDFContext) { c.DstRegion = c.SrcRegion }},
		{"no src kid", func(c *KDFContext) { c.SrcKID = nil }},
		{"short dst kid", func(c *KDFContext) { c.DstKID = c.DstKID[:16] }},
		{"no replication id", func(c *KDFContext) { c.ReplicationID = "" }},
		{"bad replication id", func(c *KDFContext) { c.ReplicationID = "../" + c.ReplicationID[3:] }},
		{"no key id", func(c *KDFContext) { c.KeyID = "" }},
		{"version 0", func(c *KDFContext) { c.Version = 0 }},
		{"no init digest", func(c *KDFContext) { c.InitDigest = nil }},
		{"short offer digest", func(c *KDFContext) { c.OfferDigest = c.OfferDigest[:32] }},
	}
	for _, tc := range cases {
		wc := req.Context
		wc.RAKA = nil
		tc.fn(&wc)
		if _, err := a.WrapForPeer(ctx, WrapRequest{PeerPublicKey: wc.RAKB, Context: wc}); err == nil {
			t.Errorf("WrapForPeer accepted a context with %s", tc.name)
		}
		uc := req
		tc.fn(&uc.Context)
		if err := b.UnwrapFromPeer(ctx, uc); err == nil {
			t.Errorf("UnwrapFromPeer accepted a context with %s", tc.name)
		}
	}
	uc := req
	uc.Context.RAKB = nil
	if err := b.UnwrapFromPeer(ctx, uc); err == nil {
		t.Error("UnwrapFromPeer accepted a context without RAKB")
	}
	// None of this consumed the RAKB.
	mustNoErr(t, b.UnwrapFromPeer(ctx, req))
}

func testExpiredRAKB(t *testing.T, a, b HSM) {
	ctx := t.Context()
	ref := newKeyRef(t)
	mustNoErr(t, a.GenerateKey(ctx, ref))
	exp := time.Now().Add(300 * time.Millisecond)
	req, err := prepareReplicationExpiring(ctx, a, b, ref, exp)
	mustNoErr(t, err)
	id2 := newReplicationID()
	_, err = b.CreateAgreementKey(ctx, id2, exp)
	mustNoErr(t, err)
	time.Sleep(time.Until(exp) + 20*time.Millisecond)

	wantErrIs(t, "UnwrapFromPeer with an expired RAKB", b.UnwrapFromPeer(ctx, req), ErrNotFound)
	wantNoKey(t, b, ref)
	wantErrIs(t, "DestroyAgreementKey of an expired RAKB", b.DestroyAgreementKey(ctx, id2), ErrNotFound)
	// An expired RAKB is gone: its id can start again.
	_, err = b.CreateAgreementKey(ctx, id2, time.Now().Add(time.Minute))
	mustNoErr(t, err)
	mustNoErr(t, b.DestroyAgreementKey(ctx, id2))
}

func testConcurrent(t *testing.T, a, b HSM) {
	ctx := t.Context()
	const n = 20
	var wg sync.WaitGroup
	errs := make(chan error, 2*n)
	for i := range n {
		src, dst := a, b
		if i%2 == 1 {
			src, dst = b, a
		}
		wg.Go(func() {
			ref := newKeyRef(t)
			if err := src.GenerateKey(ctx, ref); err != nil {
				errs <- fmt.Errorf("replication %d: GenerateKey: %w", i, err)
				return
			}
			if _, err := replicate(ctx, src, dst, ref); err != nil {
				errs <- fmt.Errorf("replication %d: %w", i, err)
				return
			}
			if err := checkSameKey(ctx, src, dst, ref); err != nil {
				errs <- fmt.Errorf("replication %d: %w", i, err)
			}
		})
		wg.Go(func() {
			digest := sha512.Sum384(randBytes(8))
			sig, err := src.Signer().Sign(rand.Reader, digest[:], crypto.SHA384)
			if err != nil || !ecdsa.VerifyASN1(src.Signer().Public().(*ecdsa.PublicKey), digest[:], sig) {
				errs <- fmt.Errorf("concurrent sign %d: %v", i, err)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func testClose(t *testing.T, h HSM) {
	ctx := t.Context()
	ref := newKeyRef(t)
	mustNoErr(t, h.GenerateKey(ctx, ref))
	mustNoErr(t, h.Close())
	mustNoErr(t, h.Close())
	if _, err := h.Encrypt(ctx, ref, []byte("x"), nil); err == nil {
		t.Error("Encrypt after Close succeeded")
	}
	if err := h.GenerateKey(ctx, newKeyRef(t)); err == nil {
		t.Error("GenerateKey after Close succeeded")
	}
	if _, err := h.CreateAgreementKey(ctx, newReplicationID(), time.Now().Add(time.Minute)); err == nil {
		t.Error("CreateAgreementKey after Close succeeded")
	}
	digest := sha512.Sum384(nil)
	if _, err := h.Signer().Sign(rand.Reader, digest[:], crypto.SHA384); err == nil {
		t.Error("Sign after Close succeeded")
	}
}

// ---- benchmarks shared by the backends ----

// runBenchmarks measures one HSM operation per sub-benchmark. open must
// return a fresh HSM closed with b.Cleanup. BenchmarkSoft and the PKCS#11
// backend's benchmark use the same names.
func runBenchmarks(b *testing.B, open func(b *testing.B) HSM) {
	ctx := context.Background()
	b.Run("Sign", func(b *testing.B) {
		s := open(b).Signer()
		digest := sha512.Sum384([]byte("bench"))
		for b.Loop() {
			if _, err := s.Sign(rand.Reader, digest[:], crypto.SHA384); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("GenerateKey", func(b *testing.B) {
		h := open(b)
		id := "mrk-" + hex.EncodeToString(randBytes(16))
		v := uint32(0)
		for b.Loop() {
			v++
			if err := h.GenerateKey(ctx, KeyRef{KeyID: id, Version: v}); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("CreateAgreementKey", func(b *testing.B) {
		h := open(b)
		exp := time.Now().Add(time.Hour)
		for b.Loop() {
			if _, err := h.CreateAgreementKey(ctx, newReplicationID(), exp); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("WrapForPeer", func(b *testing.B) {
		a, bb := open(b), open(b)
		ref := newKeyRef(b)
		mustNoErr(b, a.GenerateKey(ctx, ref))
		req, err := prepareReplication(ctx, a, bb, ref)
		mustNoErr(b, err)
		wr := WrapRequest{PeerPublicKey: req.Context.RAKB, Context: req.Context}
		wr.Context.RAKA = nil
		for b.Loop() {
			if _, err := a.WrapForPeer(ctx, wr); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("UnwrapFromPeer", func(b *testing.B) {
		a, bb := open(b), open(b)
		id := "mrk-" + hex.EncodeToString(randBytes(16))
		reqs := make([]UnwrapRequest, b.N)
		for i := range reqs {
			ref := KeyRef{KeyID: id, Version: uint32(i + 1)}
			mustNoErr(b, a.GenerateKey(ctx, ref))
			var err error
			reqs[i], err = prepareReplication(ctx, a, bb, ref)
			mustNoErr(b, err)
		}
		b.ResetTimer()
		for i := range b.N {
			if err := bb.UnwrapFromPeer(ctx, reqs[i]); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("KeyConfirmation", func(b *testing.B) {
		h := open(b)
		ref := newKeyRef(b)
		mustNoErr(b, h.GenerateKey(ctx, ref))
		tr := randBytes(TranscriptSize)
		for b.Loop() {
			if _, err := h.KeyConfirmation(ctx, ref, tr); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("Encrypt", func(b *testing.B) {
		h := open(b)
		ref := newKeyRef(b)
		mustNoErr(b, h.GenerateKey(ctx, ref))
		pt, aad := randBytes(1024), []byte("aad")
		b.SetBytes(int64(len(pt)))
		for b.Loop() {
			if _, err := h.Encrypt(ctx, ref, pt, aad); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("Replication", func(b *testing.B) {
		// The HSM side of one whole replication: RAKB, wrap, unwrap and both
		// key confirmations.
		a, bb := open(b), open(b)
		id := "mrk-" + hex.EncodeToString(randBytes(16))
		tr := randBytes(TranscriptSize)
		v := uint32(0)
		for b.Loop() {
			v++
			ref := KeyRef{KeyID: id, Version: v}
			b.StopTimer()
			mustNoErr(b, a.GenerateKey(ctx, ref))
			b.StartTimer()
			if _, err := replicate(ctx, a, bb, ref); err != nil {
				b.Fatal(err)
			}
			if _, err := a.KeyConfirmation(ctx, ref, tr); err != nil {
				b.Fatal(err)
			}
			if _, err := bb.KeyConfirmation(ctx, ref, tr); err != nil {
				b.Fatal(err)
			}
		}
	})
}
