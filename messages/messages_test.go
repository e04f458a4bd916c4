package messages

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/asn1"
	"errors"
	"io"
	"math/big"
	"strings"
	"testing"
	"time"
)

// sealCase is one message of the round-trip table.
type sealCase struct {
	name   string
	msg    *Message
	signer string // key name in testdata/keys
}

func sealCases(w *kitWorld) []sealCase {
	return []sealCase{
		{"init", w.init, regionA},
		{"offer", w.offer, regionB},
		{"material", w.material, regionA},
		{"receipt", w.receipt, regionB},
		{"receipt-failed", w.failed, regionB},
	}
}

func verifyOpts(t testing.TB, m *Message) VerifyOptions {
	return VerifyOptions{
		Bundle:   loadTestBundle(t),
		Now:      t0.Add(time.Second),
		Receiver: m.Dst,
		Subject:  InboxSubject(m.Dst, m.Src, m.Type),
	}
}

func TestSealVerifyRoundTrip(t *testing.T) {
	w := newKitWorld(t)
	for _, tc := range sealCases(w) {
		t.Run(tc.name, func(t *testing.T) {
			key := loadKey(t, tc.signer)
			raw, err := Seal(tc.msg, key)
			if err != nil {
				t.Fatalf("Seal: %v", err)
			}
			env, err := Verify(raw, verifyOpts(t, tc.msg))
			if err != nil {
				t.Fatalf("Verify: %v", err)
			}
			if !messagesEqual(&env.Message, tc.msg) {
				t.Errorf("message\n got %+v\nwant %+v", env.Message, *tc.msg)
			}
			if !bytes.Equal(env.Raw, raw) || !bytes.Equal(env.Digest, Digest(raw)) || len(env.Digest) != DigestSize {
				t.Error("Raw or Digest wrong")
			}
			if !bytes.Equal(env.KID, kitKID(t, &key.PublicKey)) {
				t.Errorf("kid %x, want SHA-256 of the signer's SPKI", env.KID)
			}
			// The proxy's view: outbox subject, no receiver.
			opts := verifyOpts(t, tc.msg)
			opts.Receiver, opts.Subject = "", OutboxSubject(tc.msg.Src, tc.msg.Dst, tc.msg.Type)
			if _, err := Verify(raw, opts); err != nil {
				t.Errorf("Verify as the proxy: %v", err)
			}
		})
	}
}

// TestSealMatchesKit checks that Seal's encoding is, up to the (random)
// signature, byte for byte the one the independent test kit builds.
func TestSealMatchesKit(t *testing.T) {
	w := newKitWorld(t)
	for _, tc := range sealCases(w) {
		t.Run(tc.name, func(t *testing.T) {
			key := loadKey(t, tc.signer)
			raw, err := Seal(tc.msg, key)
			if err != nil {
				t.Fatal(err)
			}
			want := kitSeal(t, key, fieldsOf(tc.msg).enc())
			if !bytes.Equal(raw[:len(raw)-sigSize], want[:len(want)-sigSize]) {
				t.Errorf("Seal encoding differs from the kit's:\n got %x\nwant %x", raw, want)
			}
		})
	}
}

// highSSigner returns the high-S form of every signature, as an HSM might.
type highSSigner struct{ *ecdsa.PrivateKey }

func (s highSSigner) Sign(r io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	der, err := s.PrivateKey.Sign(r, digest, opts)
	if err != nil {
		return nil, err
	}
	var sig ecdsaSig
	if _, err := asn1.Unmarshal(der, &sig); err != nil {
		return nil, err
	}
	if sig.S.Cmp(p384.halfN) <= 0 {
		sig.S.Sub(p384.n, sig.S)
	}
	return asn1.Marshal(sig)
}

// optsRecorder records the options a signer is called with.
type optsRecorder struct {
	*ecdsa.PrivateKey
	opts crypto.SignerOpts
}

func (s *optsRecorder) Sign(r io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	s.opts = opts
	return s.PrivateKey.Sign(r, digest, opts)
}

func TestSealLowS(t *testing.T) {
	w := newKitWorld(t)
	key := loadKey(t, regionA)
	for range 8 {
		raw, err := Seal(w.init, highSSigner{key})
		if err != nil {
			t.Fatalf("Seal: %v", err)
		}
		s := new(big.Int).SetBytes(raw[len(raw)-sigSize/2:])
		if s.Cmp(p384.halfN) > 0 {
			t.Fatal("Seal emitted a high-S signature")
		}
		if _, err := Verify(raw, verifyOpts(t, w.init)); err != nil {
			t.Fatalf("Verify: %v", err)
		}
	}
	rec := &optsRecorder{PrivateKey: key}
	if _, err := Seal(w.init, rec); err != nil {
		t.Fatal(err)
	}
	if rec.opts == nil || rec.opts.HashFunc() != crypto.SHA384 {
		t.Errorf("signer called with opts %v, want crypto.SHA384", rec.opts)
	}
}

func TestNormalizeLowS(t *testing.T) {
	enc := func(r, s *big.Int) []byte {
		b, err := asn1.Marshal(ecdsaSig{r, s})
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	one := big.NewInt(1)
	high := new(big.Int).Add(p384.halfN, one)
	for _, tc := range []struct {
		name  string
		in    []byte
		wantS *big.Int // nil: want an error
	}{
		{"low", enc(one, one), one},
		{"half", enc(one, p384.halfN), p384.halfN},
		{"high", enc(one, high), new(big.Int).Sub(p384.n, high)},
		{"s-zero", enc(one, big.NewInt(0)), nil},
		{"r-zero", enc(big.NewInt(0), one), nil},
		{"s-n", enc(one, p384.n), nil},
		{"garbage", []byte{0x30, 0x01}, nil},
		{"trailing", append(enc(one, one), 0), nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, err := normalizeLowS(tc.in)
			if tc.wantS == nil {
				if err == nil {
					t.Fatal("no error")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var sig ecdsaSig
			if _, err := asn1.Unmarshal(out, &sig); err != nil {
				t.Fatal(err)
			}
			if sig.S.Cmp(tc.wantS) != 0 {
				t.Errorf("s = %v, want %v", sig.S, tc.wantS)
			}
		})
	}
}

// brokenSigner returns a fixed signature.
type brokenSigner struct {
	crypto.Signer
	sig []byte
	err error
}

func (s brokenSigner) Sign(io.Reader, []byte, crypto.SignerOpts) ([]byte, error) { return s.sig, s.err }

func TestSealRefuses(t *testing.T) {
	w := newKitWorld(t)
	keyA := loadKey(t, regionA)
	p256, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	_, edKey, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	mod := func(m *Message, f func(*Message)) *Message { return cloneMessage(m, f) }
	for _, tc := range []struct {
		name   string
		msg    *Message
		signer crypto.Signer
		reason Reason // "" for an error that is not a *VerifyError
	}{
		{"nil-message", nil, keyA, ReasonMalformed},
		{"nil-signer", w.init, nil, ""},
		{"p256-signer", w.init, p256, ""},
		{"ed25519-signer", w.init, edKey, ""},
		{"signer-error", w.init, brokenSigner{keyA, nil, errors.New("hsm offline")}, ""},
		{"signer-garbage", w.init, brokenSigner{keyA, []byte{1, 2, 3}, nil}, ""},
		{"v2", mod(w.init, func(m *Message) { m.V = 2 }), keyA, ReasonBadVersion},
		{"no-body", mod(w.init, func(m *Message) { m.Init = nil }), keyA, ReasonMalformed},
		{"two-bodies", mod(w.init, func(m *Message) { m.Offer = w.offer.Offer }), keyA, ReasonMalformed},
		{"init-as-receipt", mod(w.init, func(m *Message) { m.Type = TypeReceipt }), keyA, ReasonMalformed},
		{"offer-as-init", mod(w.offer, func(m *Message) { m.Type = TypeInit }), keyA, ReasonMalformed},
		{"material-as-offer", mod(w.material, func(m *Message) { m.Type = TypeOffer }), keyA, ReasonMalformed},
		{"receipt-as-material", mod(w.receipt, func(m *Message) { m.Type = TypeMaterial }), keyA, ReasonMalformed},
		{"unknown-type", mod(w.init, func(m *Message) { m.Type = "x" }), keyA, ReasonMalformed},
		{"msg-id", mod(w.init, func(m *Message) { m.MsgID = "" }), keyA, ReasonMalformed},
		{"replication-id", mod(w.init, func(m *Message) { m.ReplicationID = strings.Repeat("g", 32) }), keyA, ReasonMalformed},
		{"partition", mod(w.init, func(m *Message) { m.Partition = "" }), keyA, ReasonMalformed},
		{"src", mod(w.init, func(m *Message) { m.Src = "us_east_1" }), keyA, ReasonMalformed},
		{"dst", mod(w.init, func(m *Message) { m.Dst = strings.Repeat("a", 64) }), keyA, ReasonMalformed},
		{"reflected", mod(w.init, func(m *Message) { m.Dst = m.Src }), keyA, ReasonReflected},
		{"sent-at-zero", mod(w.init, func(m *Message) { m.SentAt, m.ExpiresAt = 0, 1000 }), keyA, ReasonMalformed},
		{"sent-at-negative", mod(w.init, func(m *Message) { m.SentAt, m.ExpiresAt = -1000, 1000 }), keyA, ReasonMalformed},
		{"expires-before", mod(w.init, func(m *Message) { m.ExpiresAt = m.SentAt - 1 }), keyA, ReasonMalformed},
		{"lifetime", mod(w.init, func(m *Message) { m.ExpiresAt = m.SentAt + MaxLifetime.Milliseconds() + 1 }), keyA, ReasonMalformed},
		{"key-id", mod(w.init, func(m *Message) { m.Init.KeyID = "mrk-" + strings.Repeat("A", 32) }), keyA, ReasonMalformed},
		{"key-spec", mod(w.init, func(m *Message) { m.Init.KeySpec = "symmetric" }), keyA, ReasonMalformed},
		{"key-usage", mod(w.init, func(m *Message) { m.Init.KeyUsage = "" }), keyA, ReasonMalformed},
		{"version", mod(w.init, func(m *Message) { m.Init.Version = 0 }), keyA, ReasonMalformed},
		{"primary", mod(w.init, func(m *Message) { m.Init.PrimaryRegion = "" }), keyA, ReasonMalformed},
		{"init-digest", mod(w.offer, func(m *Message) { m.Offer.InitDigest = nil }), keyA, ReasonMalformed},
		{"rakb-short", mod(w.offer, func(m *Message) { m.Offer.RAKB = m.Offer.RAKB[:96] }), keyA, ReasonMalformed},
		{"rakb-prefix", mod(w.offer, func(m *Message) {
			m.Offer.RAKB = append([]byte{0x05}, m.Offer.RAKB[1:]...)
		}), keyA, ReasonMalformed},
		{"rakb-off-curve", mod(w.offer, func(m *Message) {
			m.Offer.RAKB = append(bytes.Clone(m.Offer.RAKB[:96]), m.Offer.RAKB[96]^1)
		}), keyA, ReasonMalformed},
		{"offer-digest", mod(w.material, func(m *Message) { m.Material.OfferDigest = make([]byte, 49) }), keyA, ReasonMalformed},
		{"raka", mod(w.material, func(m *Message) { m.Material.RAKA = make([]byte, RAKSize) }), keyA, ReasonMalformed},
		{"wrapped-41", mod(w.material, func(m *Message) { m.Material.WrappedKey = make([]byte, 41) }), keyA, ReasonMalformed},
		{"wrapped-other-spec-odd", mod(w.material, func(m *Message) {
			m.Material.Properties.KeySpec = "HMAC_256"
			m.Material.WrappedKey = make([]byte, 41)
		}), keyA, ReasonMalformed},
		{"wrapped-other-spec-huge", mod(w.material, func(m *Message) {
			m.Material.Properties.KeySpec = "HMAC_256"
			m.Material.WrappedKey = make([]byte, MaxWrappedKeySize+8)
		}), keyA, ReasonMalformed},
		{"properties-spec", mod(w.material, func(m *Message) { m.Material.Properties.KeySpec = "" }), keyA, ReasonMalformed},
		{"properties-usage", mod(w.material, func(m *Message) { m.Material.Properties.KeyUsage = "a b" }), keyA, ReasonMalformed},
		{"description", mod(w.material, func(m *Message) {
			m.Material.Properties.Description = strings.Repeat("d", MaxDescriptionSize+1)
		}), keyA, ReasonMalformed},
		{"material-digest", mod(w.receipt, func(m *Message) { m.Receipt.MaterialDigest = nil }), keyA, ReasonMalformed},
		{"status", mod(w.receipt, func(m *Message) { m.Receipt.Status = "OK" }), keyA, ReasonMalformed},
		{"confirmation-short", mod(w.receipt, func(m *Message) { m.Receipt.KeyConfirmation = make([]byte, 15) }), keyA, ReasonMalformed},
		{"confirmation-on-error", mod(w.failed, func(m *Message) { m.Receipt.KeyConfirmation = []byte{0} }), keyA, ReasonMalformed},
		{"init-policy-long", mod(w.init, func(m *Message) { m.Init.Policy = strings.Repeat("p", MaxPolicySize+1) }), keyA, ReasonMalformed},
		{"init-policy-utf8", mod(w.init, func(m *Message) { m.Init.Policy = "{\xff}" }), keyA, ReasonMalformed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			raw, err := Seal(tc.msg, tc.signer)
			if err == nil {
				t.Fatalf("Seal succeeded (%d bytes)", len(raw))
			}
			if got := ReasonOf(err); got != tc.reason {
				t.Errorf("reason %q (%v), want %q", got, err, tc.reason)
			}
			if tc.msg != nil && tc.reason != ReasonReflected && tc.reason != "" {
				if got := ReasonOf(tc.msg.Validate()); got != tc.reason {
					t.Errorf("Validate: reason %q, want %q", got, tc.reason)
				}
			}
		})
	}
	// The edges that are accepted.
	for _, tc := range []struct {
		name string
		msg  *Message
	}{
		{"lifetime-max", mod(w.init, func(m *Message) { m.ExpiresAt = m.SentAt + MaxLifetime.Milliseconds() })},
		{"description-max", mod(w.material, func(m *Message) {
			m.Material.Properties.Description = strings.Repeat("d", MaxDescriptionSize)
		})},
		{"wrapped-other-spec", mod(w.material, func(m *Message) {
			m.Material.Properties.KeySpec = "HMAC_256"
			m.Material.WrappedKey = make([]byte, MaxWrappedKeySize)
		})},
		{"name-63", mod(w.init, func(m *Message) { m.Partition = strings.Repeat("p", 63) })},
		{"description-utf8", mod(w.material, func(m *Message) { m.Material.Properties.Description = "clé de test ✓" })},
		{"init-policy-max", mod(w.init, func(m *Message) { m.Init.Policy = strings.Repeat("p", MaxPolicySize) })},
	} {
		t.Run("accept-"+tc.name, func(t *testing.T) {
			if _, err := Seal(tc.msg, keyA); err != nil {
				t.Fatal(err)
			}
		})
	}
	// An init's policy survives sealing and parsing as it was.
	withPolicy := mod(w.init, func(m *Message) { m.Init.Policy = `{"Version":"2012-10-17"}` })
	raw, err := Seal(withPolicy, keyA)
	if err != nil {
		t.Fatal(err)
	}
	got, err := Parse(raw)
	if err != nil || got.Message.Init.Policy != withPolicy.Init.Policy {
		t.Fatalf("init policy after Parse: %+v %v", got, err)
	}
}

func TestVerifyOptionsErrors(t *testing.T) {
	w := newKitWorld(t)
	raw, err := Seal(w.init, loadKey(t, regionA))
	if err != nil {
		t.Fatal(err)
	}
	good := verifyOpts(t, w.init)
	for _, tc := range []struct {
		name string
		mod  func(*VerifyOptions)
	}{
		{"no-bundle", func(o *VerifyOptions) { o.Bundle = nil }},
		{"no-time", func(o *VerifyOptions) { o.Now = time.Time{} }},
		{"negative-skew", func(o *VerifyOptions) { o.Skew = -time.Second }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := good
			tc.mod(&o)
			_, err := Verify(raw, o)
			if err == nil {
				t.Fatal("no error")
			}
			var ve *VerifyError
			if errors.As(err, &ve) {
				t.Errorf("got a *VerifyError (%v) for unusable options", err)
			}
		})
	}
}

func TestVerifySkew(t *testing.T) {
	w := newKitWorld(t)
	raw, err := Seal(w.init, loadKey(t, regionA))
	if err != nil {
		t.Fatal(err)
	}
	expiry := w.init.ExpiryTime()
	for _, tc := range []struct {
		name   string
		now    time.Time
		skew   time.Duration
		reason Reason
	}{
		{"default-edge", expiry.Add(DefaultSkew), 0, ""},
		{"default-past", expiry.Add(DefaultSkew + time.Millisecond), 0, ReasonExpired},
		{"custom-edge", expiry.Add(time.Second), time.Second, ""},
		{"custom-past", expiry.Add(time.Second + time.Millisecond), time.Second, ReasonExpired},
		{"future-edge", w.init.SentTime().Add(-time.Second), time.Second, ""},
		{"future-past", w.init.SentTime().Add(-time.Second - time.Millisecond), time.Second, ReasonFromFuture},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := verifyOpts(t, w.init)
			o.Now, o.Skew = tc.now, tc.skew
			_, err := Verify(raw, o)
			if got := ReasonOf(err); got != tc.reason {
				t.Errorf("reason %q (%v), want %q", got, err, tc.reason)
			}
		})
	}
}

func TestErrBadSignature(t *testing.T) {
	w := newKitWorld(t)
	raw, err := Seal(w.init, loadKey(t, regionA))
	if err != nil {
		t.Fatal(err)
	}
	bad := bytes.Clone(raw)
	bad[len(bad)-sigSize] ^= 0x01 // a bit of r
	_, err = Verify(bad, verifyOpts(t, w.init))
	if !errors.Is(err, ErrBadSignature) {
		t.Fatalf("errors.Is(%v, ErrBadSignature) = false", err)
	}
	var ve *VerifyError
	if !errors.As(err, &ve) || ve.Reason != ReasonBadSignature {
		t.Fatalf("errors.As: %v", err)
	}
	if errors.Unwrap(err) != ErrBadSignature {
		t.Error("Unwrap does not return ErrBadSignature")
	}
	// Other refusals are not bad signatures.
	o := verifyOpts(t, w.init)
	o.Receiver = regionC
	_, err = Verify(raw, o)
	if ReasonOf(err) != ReasonWrongDst || errors.Is(err, ErrBadSignature) || errors.Unwrap(err) != nil {
		t.Errorf("wrong_dst error %v matches ErrBadSignature", err)
	}
	if ReasonOf(errors.New("x")) != "" || ReasonOf(nil) != "" {
		t.Error("ReasonOf of a plain error is not empty")
	}
}

// TestVerifySignatureBeforeContent checks that a forged message is refused
// as bad_signature even when its content would also be refused: nothing
// but the kid is looked at before the signature.
func TestVerifySignatureBeforeContent(t *testing.T) {
	w := newKitWorld(t)
	keyA := loadKey(t, regionA)
	for _, m := range []*Message{
		cloneMessage(w.init, func(m *Message) { m.Partition = "other" }),
		cloneMessage(w.init, func(m *Message) { m.Src, m.Dst = regionC, regionA }), // kid of another region
		cloneMessage(w.init, func(m *Message) { m.ExpiresAt = m.SentAt + 1 }),      // expired
	} {
		raw, err := Seal(m, keyA)
		if err != nil {
			t.Fatal(err)
		}
		raw[len(raw)-1] ^= 0x01
		if _, err := Verify(raw, verifyOpts(t, w.init)); ReasonOf(err) != ReasonBadSignature {
			t.Errorf("got %v, want bad_signature", err)
		}
	}
}

func TestParseDoesNotAlias(t *testing.T) {
	w := newKitWorld(t)
	raw, err := Seal(w.material, loadKey(t, regionA))
	if err != nil {
		t.Fatal(err)
	}
	in := bytes.Clone(raw)
	env, err := Parse(in)
	if err != nil {
		t.Fatal(err)
	}
	for i := range in {
		in[i] = 0
	}
	if !bytes.Equal(env.Raw, raw) || !bytes.Equal(env.Message.Material.RAKA, w.material.Material.RAKA) {
		t.Error("Envelope shares memory with the input")
	}
}

func TestKID(t *testing.T) {
	key := loadKey(t, regionA)
	kid, err := KID(&key.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	if want := sha256.Sum256(der); !bytes.Equal(kid, want[:]) {
		t.Errorf("KID = %x, want %x", kid, want)
	}
	b := loadTestBundle(t)
	if k, ok := b.Key(kid); !ok || k.Region != regionA {
		t.Errorf("bundle lookup of the us-east-1 kid: %+v, %v", k, ok)
	}
	p256, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	edPub, _, _ := ed25519.GenerateKey(rand.Reader)
	for _, pub := range []crypto.PublicKey{nil, &p256.PublicKey, edPub, key, (*ecdsa.PublicKey)(nil)} {
		if _, err := KID(pub); err == nil {
			t.Errorf("KID(%T) succeeded", pub)
		}
	}
}

func TestTranscriptDigest(t *testing.T) {
	a, b, c := fill(48, 1), fill(48, 2), fill(48, 3)
	d := TranscriptDigest(a, b, c)
	if len(d) != DigestSize {
		t.Fatalf("%d bytes", len(d))
	}
	// Every input counts, and the length prefixes keep boundaries.
	for _, other := range [][]byte{
		TranscriptDigest(b, a, c),
		TranscriptDigest(a, b, fill(48, 4)),
		TranscriptDigest(append(bytes.Clone(a), b[0]), b[1:], c),
		TranscriptDigest(nil, nil, nil),
	} {
		if bytes.Equal(d, other) {
			t.Error("collision")
		}
	}
}

func TestIDs(t *testing.T) {
	seen := map[string]bool{}
	for range 100 {
		id := NewID()
		if !IsID(id) || seen[id] {
			t.Fatalf("NewID() = %q", id)
		}
		seen[id] = true
		if k := NewKeyID(); !IsKeyID(k) {
			t.Fatalf("NewKeyID() = %q", k)
		}
	}
	for s, want := range map[string]bool{
		"0123456789abcdef0123456789abcdef":  true,
		"0123456789ABCDEF0123456789abcdef":  false,
		"0123456789abcdef0123456789abcde":   false,
		"0123456789abcdef0123456789abcdef0": false,
		"0123456789abcdef0123456789abcdeg":  false,
	} {
		if IsID(s) != want {
			t.Errorf("IsID(%q) = %v", s, !want)
		}
	}
	for s, want := range map[string]bool{
		"mrk-0123456789abcdef0123456789abcdef": true,
		"mrk-0123456789abcdef0123456789abcde":  false,
		"MRK-0123456789abcdef0123456789abcdef": false,
		"mrk_0123456789abcdef0123456789abcdef": false,
		"mrk-0123456789abcdef0123456789abcdeF": false,
	} {
		if IsKeyID(s) != want {
			t.Errorf("IsKeyID(%q) = %v", s, !want)
		}
	}
	for s, want := range map[string]bool{
		"us-east-1":              true,
		"a":                      true,
		strings.Repeat("a", 63):  true,
		strings.Repeat("a", 64):  false,
		"":                       false,
		"US-east-1":              false,
		"us.east":                false,
		"us east":                false,
		"us_east":                false,
		"us-east-1>":             false,
		"us-east-*":              false,
		"r\u00e9gion":            false,
		"eu-west-1\x00":          false,
		"0-9":                    true,
		"-":                      true,
		"mrk-00112233445566aabb": true,
	} {
		if IsName(s) != want {
			t.Errorf("IsName(%q) = %v", s, !want)
		}
	}
}

func TestSubjects(t *testing.T) {
	if got := OutboxSubject(regionA, regionB, TypeInit); got != "mrk.us-east-1.out.eu-west-1.replication.init" {
		t.Errorf("OutboxSubject = %q", got)
	}
	if got := InboxSubject(regionB, regionA, TypeInit); got != "mrk.eu-west-1.in.us-east-1.replication.init" {
		t.Errorf("InboxSubject = %q", got)
	}
}

func TestReasons(t *testing.T) {
	seen := map[Reason]bool{}
	for _, r := range Reasons() {
		if seen[r] || r == "" {
			t.Errorf("reason %q repeated or empty", r)
		}
		seen[r] = true
	}
	if len(seen) != 16 {
		t.Errorf("%d reasons, want 16", len(seen))
	}
	if len(Types()) != 8 {
		t.Errorf("%d types", len(Types()))
	}
}

func TestCodecReady(t *testing.T) {
	if err := cdc.ready(); err != nil {
		t.Fatal(err)
	}
}
