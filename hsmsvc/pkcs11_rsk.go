//go:build cgo

package hsmsvc

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strconv"
	"sync"

	"github.com/ThalesGroup/crypto11"
	"github.com/miekg/pkcs11"
)

// The pkcs11 backend (pkcs11.go): the region's signing keys (RSK).

// InitPKCS11RSK creates the region's RSK in the token that uri names: an
// ECDSA P-384 key pair generated inside the token, private half sensitive
// and never extractable, CKA_LABEL from the URI's object= (default
// DefaultRSKLabel) and CKA_ID set to its kid (SHA-256 of the
// SubjectPublicKeyInfo). It returns the public key for the trust bundle.
//
// If the token already holds a key pair with that label, InitPKCS11RSK
// changes nothing and returns its public key together with an error
// matching ErrExists. It needs no allow-host-kdf.
func InitPKCS11RSK(ctx context.Context, uri string, opts Options) (crypto.PublicKey, error) {
	h, err := connect(ctx, uri, opts)
	if err != nil {
		return nil, apiErrorf("init pkcs11 rsk: %w", err)
	}
	defer h.Close()
	label := h.cfg.rskLabel
	if existing, err := h.createRSK(ctx); err != nil {
		return existing, apiErrorf("init pkcs11 rsk: %w", err)
	}
	signer, err := h.loadRSK(ctx) // finds it again and self-tests it
	if err != nil {
		return nil, apiErrorf("init pkcs11 rsk %q: %w", label, err)
	}
	h.log.Info("pkcs11 rsk created", "token", h.cfg.token, "rsk_label", label, "rsk_kid", hex.EncodeToString(signer.kid))
	return signer.Public(), nil
}

// createRSK generates the RSK unless a key pair with its label exists, in
// which case it returns that key's public half and ErrExists.
func (h *pkcs11HSM) createRSK(ctx context.Context) (existing crypto.PublicKey, err error) {
	label := h.cfg.rskLabel
	defer h.lockToken(true)()
	found, err := h.c11.FindKeyPairs(nil, []byte(label))
	if err != nil {
		return nil, fmt.Errorf("find key pairs labelled %q: %v", label, err)
	}
	switch len(found) {
	case 0:
	case 1:
		return found[0].Public(), fmt.Errorf("%s already holds a key pair labelled %q: %w", h.cfg.tokenName(), label, ErrExists)
	default:
		return nil, fmt.Errorf("%s holds %d key pairs labelled %q", h.cfg.tokenName(), len(found), label)
	}
	_, err = h.generateRSK(ctx, label)
	return nil, err
}

// rotationLabel is the CKA_LABEL of the RSKs CreateRSK makes.
func (h *pkcs11HSM) rotationLabel() string { return h.cfg.rskLabel + "/rotation" }

// CreateRSK generates another RSK in the token, labelled rotationLabel, with
// the attributes InitPKCS11RSK gives the default one.
func (h *pkcs11HSM) CreateRSK(ctx context.Context) (crypto.Signer, error) {
	if err := ctx.Err(); err != nil {
		return nil, apiErrorf("create rsk: %w", err)
	}
	label := h.rotationLabel()
	unlock := h.lockToken(true)
	s, err := h.generateRSK(ctx, label)
	unlock()
	if err != nil {
		return nil, apiErrorf("create rsk in %s: %w", h.cfg.tokenName(), err)
	}
	signer, err := h.newSigner(s, label)
	if err != nil {
		unlock := h.lockToken(true)
		_ = s.Delete()
		unlock()
		return nil, apiErrorf("create rsk in %s: %w", h.cfg.tokenName(), err)
	}
	h.log.Info("pkcs11 rsk created", "token", h.cfg.token, "rsk_label", label, "rsk_kid", hex.EncodeToString(signer.kid))
	return signer, nil
}

// RSKs returns the default RSK, then every key pair labelled rotationLabel
// in the token (looked up at each call, self-tested), by kid. A key pair
// that is not an ECDSA P-384 key or fails its self-test is left out and
// logged.
func (h *pkcs11HSM) RSKs(ctx context.Context) ([]crypto.Signer, error) {
	if err := ctx.Err(); err != nil {
		return nil, apiErrorf("list rsks: %w", err)
	}
	label := h.rotationLabel()
	unlock := h.lockToken(false)
	found, err := h.c11.FindKeyPairs(nil, []byte(label))
	unlock()
	if err != nil {
		return nil, apiErrorf("list rsks: find key pairs labelled %q: %v", label, err)
	}
	var extra []*pkcs11Signer
	for _, f := range found {
		s, err := h.newSigner(f, label)
		if err != nil {
			h.log.Warn("rsk left out", "rsk_label", label, "err", err)
			continue
		}
		if bytes.Equal(s.kid, h.signer.kid) || slices.ContainsFunc(extra, func(o *pkcs11Signer) bool { return bytes.Equal(o.kid, s.kid) }) {
			continue
		}
		extra = append(extra, s)
	}
	slices.SortFunc(extra, func(a, b *pkcs11Signer) int { return bytes.Compare(a.kid, b.kid) })
	out := make([]crypto.Signer, 0, 1+len(extra))
	out = append(out, h.signer)
	for _, s := range extra {
		out = append(out, s)
	}
	return out, nil
}

// generateRSK generates an RSK key pair labelled label inside the token,
// with CKA_ID its kid, and returns crypto11's signer of it. The caller
// holds the token's write lock.
func (h *pkcs11HSM) generateRSK(ctx context.Context, label string) (crypto11.Signer, error) {
	// A random CKA_ID first: the kid is known only once the key exists.
	tmpID := make([]byte, 16)
	rand.Read(tmpID)
	pubT, privT := crypto11.NewAttributeSet(), crypto11.NewAttributeSet()
	for _, a := range []struct {
		set   crypto11.AttributeSet
		typ   uint
		value any
	}{
		{pubT, pkcs11.CKA_ID, tmpID},
		{pubT, pkcs11.CKA_LABEL, label},
		{pubT, pkcs11.CKA_TOKEN, true},    // persistent
		{pubT, pkcs11.CKA_VERIFY, true},   // verifies the RSK's signatures
		{pubT, pkcs11.CKA_PRIVATE, false}, // public: readable without login
		{privT, pkcs11.CKA_ID, tmpID},
		{privT, pkcs11.CKA_LABEL, label},
		{privT, pkcs11.CKA_TOKEN, true},        // persistent
		{privT, pkcs11.CKA_PRIVATE, true},      // visible only after login
		{privT, pkcs11.CKA_SENSITIVE, true},    // CKA_VALUE never readable
		{privT, pkcs11.CKA_EXTRACTABLE, false}, // never leaves the token, not even wrapped
		{privT, pkcs11.CKA_SIGN, true},         // its one use: ES384 signatures
		{privT, pkcs11.CKA_DERIVE, false},      // not an ECDH key
	} {
		if err := a.set.Set(a.typ, a.value); err != nil {
			return nil, err
		}
	}
	s, err := h.c11.GenerateECDSAKeyPairWithAttributes(pubT, privT, elliptic.P384())
	if err != nil {
		return nil, fmt.Errorf("generate key pair %q: %v", label, err)
	}
	pub, ok := s.Public().(*ecdsa.PublicKey)
	if !ok || pub.Curve != elliptic.P384() {
		_ = s.Delete()
		return nil, fmt.Errorf("generate key pair %q: the token made a %T, want an ECDSA P-384 key", label, s.Public())
	}
	kid, err := rskKID(pub)
	if err != nil {
		_ = s.Delete()
		return nil, fmt.Errorf("key pair %q: %v", label, err)
	}
	err = h.withSession(ctx, func(sh pkcs11.SessionHandle) error {
		for _, class := range []uint{pkcs11.CKO_PRIVATE_KEY, pkcs11.CKO_PUBLIC_KEY} {
			o, err := h.findOne(sh, "new rsk", []*pkcs11.Attribute{
				pkcs11.NewAttribute(pkcs11.CKA_CLASS, class),
				pkcs11.NewAttribute(pkcs11.CKA_ID, tmpID),
				pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
			})
			if err != nil {
				return err
			}
			if err := h.p.SetAttributeValue(sh, o, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_ID, kid)}); err != nil {
				return fmt.Errorf("C_SetAttributeValue(CKA_ID): %w", err)
			}
		}
		return nil
	})
	if err != nil {
		_ = s.Delete()
		return nil, fmt.Errorf("key pair %q: set CKA_ID to the kid: %w", label, err)
	}
	return s, nil
}

// --- the RSK ---

// loadRSK finds the RSK key pair by label (exactly one), checks it is ECDSA
// P-384 and self-tests it.
func (h *pkcs11HSM) loadRSK(ctx context.Context) (*pkcs11Signer, error) {
	label := h.cfg.rskLabel
	unlock := h.lockToken(false)
	found, err := h.c11.FindKeyPairs(nil, []byte(label))
	var attrs []*pkcs11.Attribute
	if err == nil && len(found) == 1 {
		// For a warning about an RSK imported or made by hand with weaker
		// attributes than InitPKCS11RSK sets.
		_ = h.withSession(ctx, func(sh pkcs11.SessionHandle) error {
			o, err := h.findOne(sh, "rsk", []*pkcs11.Attribute{
				pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PRIVATE_KEY),
				pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
			})
			if err == nil {
				attrs, err = h.p.GetAttributeValue(sh, o, []*pkcs11.Attribute{
					pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, nil),
					pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, nil),
				})
			}
			return err
		})
	}
	unlock()
	if err != nil {
		return nil, fmt.Errorf("find the RSK %q: %v", label, err)
	}
	switch len(found) {
	case 0:
		return nil, fmt.Errorf("no RSK: no key pair labelled %q (with a CKA_ID and a matching public key); create it with `mrkrepl hsm init` (hsmsvc.InitPKCS11RSK)", label)
	case 1:
	default:
		return nil, fmt.Errorf("%d key pairs labelled %q; keep one, or name another with object= in the pkcs11 uri", len(found), label)
	}
	s, err := h.newSigner(found[0], label)
	if err != nil {
		return nil, err
	}
	if len(attrs) == 2 && (!bytes.Equal(attrs[0].Value, []byte{1}) || !bytes.Equal(attrs[1].Value, []byte{0})) {
		h.log.Warn("the RSK's private key is not CKA_SENSITIVE=true, CKA_EXTRACTABLE=false", "rsk_label", label)
	}
	return s, nil
}

// newSigner wraps crypto11's signer of an RSK key pair labelled label after
// checking that it is an ECDSA P-384 key and self-testing it.
func (h *pkcs11HSM) newSigner(c11 crypto11.Signer, label string) (*pkcs11Signer, error) {
	pub, ok := c11.Public().(*ecdsa.PublicKey)
	if !ok || pub.Curve != elliptic.P384() {
		return nil, fmt.Errorf("the RSK %q is a %T, want an ECDSA P-384 key", label, c11.Public())
	}
	kid, err := rskKID(pub)
	if err != nil {
		return nil, fmt.Errorf("the RSK %q: %v", label, err)
	}
	s := &pkcs11Signer{s: c11, pub: pub, kid: kid, label: label, lock: h.tokenLock}
	if err := s.selfTest(); err != nil {
		return nil, err
	}
	return s, nil
}

// rskKID is the kid of an RSK: SHA-256 of its SubjectPublicKeyInfo DER.
func rskKID(pub *ecdsa.PublicKey) ([]byte, error) {
	spki, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, err
	}
	kid := sha256.Sum256(spki)
	return kid[:], nil
}

// pkcs11Signer is the crypto.Signer of the token's RSK: crypto11's signer,
// with the digest length checked and a description without secrets.
type pkcs11Signer struct {
	s     crypto11.Signer
	pub   *ecdsa.PublicKey
	kid   []byte
	label string
	lock  *sync.RWMutex // the token's lock, see tokenLocks
}

// selfTest signs a fresh digest and verifies the signature with the public
// half: the two token objects must be one key pair before the key is
// trusted.
func (s *pkcs11Signer) selfTest() error {
	nonce := make([]byte, 32)
	rand.Read(nonce)
	digest := sha512.Sum384(append([]byte("mrkrepl/1 pkcs11 rsk self-test "), nonce...))
	sig, err := s.Sign(rand.Reader, digest[:], crypto.SHA384)
	if err != nil {
		return fmt.Errorf("rsk self-test: %w", err)
	}
	if !ecdsa.VerifyASN1(s.pub, digest[:], sig) {
		return fmt.Errorf("rsk self-test: the signature of %q does not verify with its public key", s.label)
	}
	return nil
}

func (s *pkcs11Signer) Public() crypto.PublicKey {
	pub := *s.pub
	return &pub
}

// Sign returns an ASN.1 DER ECDSA signature of digest, which must be as long
// as opts' hash says (SHA-384 for ES384). The token draws the nonce; rand is
// not used.
func (s *pkcs11Signer) Sign(r io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	if opts != nil && opts.HashFunc() != 0 && len(digest) != opts.HashFunc().Size() {
		return nil, fmt.Errorf("sign with pkcs11 rsk: digest is %d bytes, want %d for %v", len(digest), opts.HashFunc().Size(), opts.HashFunc())
	}
	unlock := lockToken(s.lock, false)
	sig, err := s.s.Sign(r, digest, opts)
	unlock()
	if err != nil {
		return nil, fmt.Errorf("sign with pkcs11 rsk %q: %v", s.label, err)
	}
	return sig, nil
}

func (s *pkcs11Signer) String() string {
	return "pkcs11 rsk " + strconv.Quote(s.label) + " (ECDSA P-384, kid " + hex.EncodeToString(s.kid) + ")"
}
func (s *pkcs11Signer) GoString() string           { return s.String() }
func (s *pkcs11Signer) Format(f fmt.State, _ rune) { io.WriteString(f, s.String()) }
func (s *pkcs11Signer) LogValue() slog.Value {
	return slog.GroupValue(slog.String("alg", "ES384"), slog.String("kid", hex.EncodeToString(s.kid)), slog.String("label", s.label))
}
