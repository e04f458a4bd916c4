//go:build cgo

package hsmsvc

import (
	"bytes"
	"context"
	"crypto/ecdh"
	"crypto/rand"
	"crypto/subtle"
	"errors"
	"fmt"

	"github.com/miekg/pkcs11"

	"github.com/mrkrepl/mrkrepl/internal/hsmfault"
)

// The pkcs11 backend (pkcs11.go): the KDF (in the token or on the host) and
// the wrap and unwrap of K for a peer.
//
// --- the KDF ---

// rwkObject returns a session AES-256 key object: the RWK for the ECDH of
// priv with peer (an uncompressed point, validated by the caller), bound to
// fixedInfo, usable only for usage (CKA_WRAP or CKA_UNWRAP). The caller
// destroys it.
func (h *pkcs11HSM) rwkObject(sh pkcs11.SessionHandle, priv pkcs11.ObjectHandle, peer, fixedInfo []byte, usage uint) (pkcs11.ObjectHandle, error) {
	if h.hostKDF {
		return h.rwkOnHost(sh, priv, peer, fixedInfo, usage)
	}
	return h.rwkInToken(sh, priv, peer, fixedInfo, usage)
}

// rwkTemplate is the template of an RWK object, plus extra.
func rwkTemplate(usage uint, extra ...*pkcs11.Attribute) []*pkcs11.Attribute {
	return append([]*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false),                       // session object: gone with the session at the latest
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),                      // visible only after login
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),                    // CKA_VALUE is never readable
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, false),                 // never leaves the token
		pkcs11.NewAttribute(pkcs11.CKA_WRAP, usage == pkcs11.CKA_WRAP),     // the source wraps K with it
		pkcs11.NewAttribute(pkcs11.CKA_UNWRAP, usage == pkcs11.CKA_UNWRAP), // the destination unwraps K with it
		pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, false),
		pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, false),
	}, extra...)
}

// rwkInToken derives the RWK inside the token: ECDH and the one-step KDF
// in one C_DeriveKey (PKCS#11 3.0 CKD_SHA384_KDF_SP800, FixedInfo as the
// shared data). Z never exists outside the token.
func (h *pkcs11HSM) rwkInToken(sh pkcs11.SessionHandle, priv pkcs11.ObjectHandle, peer, fixedInfo []byte, usage uint) (pkcs11.ObjectHandle, error) {
	mech := pkcs11.NewMechanism(pkcs11.CKM_ECDH1_DERIVE, pkcs11.NewECDH1DeriveParams(ckdSHA384KDFSP800, fixedInfo, peer))
	o, err := h.p.DeriveKey(sh, []*pkcs11.Mechanism{mech}, priv, rwkTemplate(usage, pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, rwkSize)))
	if err != nil {
		return 0, fmt.Errorf("C_DeriveKey(CKM_ECDH1_DERIVE, CKD_SHA384_KDF_SP800): %w", err)
	}
	return o, nil
}

// rwkOnHost derives the RWK with the KDF on the host (allow-host-kdf): Z is
// derived as a readable session object, read and destroyed at once; the
// RWK is computed in process memory and goes back as a sensitive session
// object. The host copies of Z and the RWK are cleared; the transient C
// copies miekg/pkcs11 makes are freed without being cleared.
func (h *pkcs11HSM) rwkOnHost(sh pkcs11.SessionHandle, priv pkcs11.ObjectHandle, peer, fixedInfo []byte, usage uint) (pkcs11.ObjectHandle, error) {
	mech := pkcs11.NewMechanism(pkcs11.CKM_ECDH1_DERIVE, pkcs11.NewECDH1DeriveParams(pkcs11.CKD_NULL, nil, peer))
	zObj, err := h.p.DeriveKey(sh, []*pkcs11.Mechanism{mech}, priv, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_GENERIC_SECRET),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false),      // session object, destroyed below
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),     // visible only after login
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, false),  // must be readable: the host runs the KDF
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, true), // idem
	})
	if err != nil {
		return 0, fmt.Errorf("C_DeriveKey(CKM_ECDH1_DERIVE, CKD_NULL): %w", err)
	}
	attrs, err := h.p.GetAttributeValue(sh, zObj, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_VALUE, nil)})
	if derr := h.p.DestroyObject(sh, zObj); derr != nil && err == nil {
		err = derr
	}
	if err != nil {
		if attrs != nil {
			clear(attrs[0].Value)
		}
		return 0, fmt.Errorf("read and destroy Z: %w", err)
	}
	z := attrs[0].Value
	defer clear(z)
	if n := len(z); n == 0 || n > sharedSecretSize {
		return 0, fmt.Errorf("the token derived a %d-byte Z, want %d", n, sharedSecretSize)
	} else if n < sharedSecretSize {
		// Z is the x-coordinate as a fixed 48-byte string; a module that
		// drops its leading zero bytes gets them back here.
		padded := make([]byte, sharedSecretSize)
		copy(padded[sharedSecretSize-n:], z)
		clear(z)
		z = padded
		defer clear(padded)
	}
	rwk := deriveRWK(z, fixedInfo)
	defer clear(rwk)
	h.hostKDFOps.Add(1)
	o, err := h.p.CreateObject(sh, rwkTemplate(usage, pkcs11.NewAttribute(pkcs11.CKA_VALUE, rwk)))
	if err != nil {
		return 0, fmt.Errorf("C_CreateObject(RWK): %w", err)
	}
	return o, nil
}

// probeInTokenKDF finds out whether the token runs deriveRWK inside
// C_DeriveKey: it derives an RWK in the token (CKD_SHA384_KDF_SP800) from a
// throwaway token key and a throwaway host key, and compares the token's
// KWP wrap of a public probe key with the host's under the same RWK. Only an
// exact match counts. reason says why not.
func (h *pkcs11HSM) probeInTokenKDF(ctx context.Context) (ok bool, reason string, err error) {
	hostKey, err := ecdh.P384().GenerateKey(rand.Reader)
	if err != nil {
		return false, "", err
	}
	fixedInfo := []byte("mrkrepl/1 pkcs11 in-token kdf probe")
	probe := make([]byte, KeySize) // public probe value, not a secret
	rand.Read(probe)
	defer h.lockToken(false)()
	err = h.withSession(ctx, func(sh pkcs11.SessionHandle) error {
		priv, point, err := h.generateECDH(sh, false, "", nil)
		if err != nil {
			return err
		}
		defer h.destroy(sh, priv)
		rwkObj, derr := h.rwkInToken(sh, priv, hostKey.PublicKey().Bytes(), fixedInfo, pkcs11.CKA_WRAP)
		if derr != nil {
			reason = derr.Error()
			return nil // not supported; the module's error is the reason
		}
		defer h.p.DestroyObject(sh, rwkObj)
		probeObj, err := h.p.CreateObject(sh, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
			pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false),
			pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, false),
			pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, true),
			pkcs11.NewAttribute(pkcs11.CKA_VALUE, probe),
		})
		if err != nil {
			return fmt.Errorf("C_CreateObject(probe key): %w", err)
		}
		defer h.p.DestroyObject(sh, probeObj)
		got, werr := h.p.WrapKey(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_WRAP_PAD, nil)}, rwkObj, probeObj)
		if werr != nil {
			reason = fmt.Sprintf("C_WrapKey(CKM_AES_KEY_WRAP_PAD) under the derived key: %v", werr)
			return nil
		}
		tokenPub, err := ecdh.P384().NewPublicKey(point)
		if err != nil {
			return err
		}
		z, err := hostKey.ECDH(tokenPub)
		if err != nil {
			return err
		}
		rwk := deriveRWK(z, fixedInfo)
		want, err := kwpWrap(rwk, probe)
		clear(z)
		clear(rwk)
		if err != nil {
			return err
		}
		if !bytes.Equal(got, want) {
			reason = "CKD_SHA384_KDF_SP800 is accepted but does not compute SP 800-56C's one-step KDF as mrkrepl/1 specifies"
			return nil
		}
		ok = true
		return nil
	})
	return ok, reason, err
}

// --- replication ---

func (h *pkcs11HSM) WrapForPeer(ctx context.Context, req WrapRequest) (*WrapResult, error) {
	c := req.Context // a copy: RAKA is set on it, never on the caller's
	if _, err := parseP384Public(req.PeerPublicKey); err != nil {
		return nil, apiErrorf("wrap for replication %s: %w", c.ReplicationID, err)
	}
	if err := c.validate(false); err != nil {
		return nil, fmt.Errorf("wrap for replication %s: %v", c.ReplicationID, err)
	}
	if !bytes.Equal(c.RAKB, req.PeerPublicKey) {
		return nil, fmt.Errorf("wrap for replication %s: context RAKB differs from the peer public key", c.ReplicationID)
	}
	ref := c.Ref()
	var wrapped []byte
	defer h.lockToken(false)()
	err := h.withSession(ctx, func(sh pkcs11.SessionHandle) error {
		k, err := h.findKey(sh, ref)
		if err != nil {
			return err
		}
		priv, raka, err := h.generateECDH(sh, false, "", nil) // RAKA
		if err != nil {
			return err
		}
		defer h.destroy(sh, priv)
		c.RAKA = raka
		rwk, err := h.rwkObject(sh, priv, req.PeerPublicKey, c.appendFixedInfo(nil), pkcs11.CKA_WRAP)
		if err != nil {
			return err
		}
		defer h.p.DestroyObject(sh, rwk)
		wrapped, err = h.p.WrapKey(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_WRAP_PAD, nil)}, rwk, k)
		if err != nil {
			return fmt.Errorf("C_WrapKey(CKM_AES_KEY_WRAP_PAD): %w", err)
		}
		if len(wrapped) != wrappedKeySize {
			return fmt.Errorf("C_WrapKey(CKM_AES_KEY_WRAP_PAD) returned %d bytes, want %d", len(wrapped), wrappedKeySize)
		}
		return nil
	})
	if err != nil {
		if errors.Is(err, ErrNotFound) {
			return nil, apiErrorf("wrap for replication %s: %w", c.ReplicationID, err)
		}
		return nil, apiErrorf("wrap %s for replication %s: %w", ref, c.ReplicationID, err)
	}
	h.log.Debug("key wrapped for peer", "key", ref.String(), "replication_id", c.ReplicationID)
	return &WrapResult{RAKA: c.RAKA, Wrapped: wrapped}, nil
}

// UnwrapFromPeer checks what needs no state first (peer point, context,
// context RAKA = peer point); a request failing these leaves the RAKB in
// place. Then, in this order, so that a crash between any two steps leaves
// the RAKB (a retry unwraps again) or K (a retry finds it):
//
//  1. derive the RWK with the RAKB's token object (hsmfault.UnwrapDerived);
//  2. C_UnwrapKey K as a token object (hsmfault.UnwrapKeyStored). If K is
//     there already, K is unwrapped as a session object instead and
//     compared with it by a CMAC over a fresh nonce: the same key is
//     success, another ErrExists;
//  3. destroy the RAKB's token object (hsmfault.UnwrapRAKBDestroyed).
//
// An unwrap that fails on its input (ErrUnwrapFailed) or finds other
// material (ErrExists) destroys the RAKB too: it serves one replication.
// Token errors before K is stored leave it for a retry.
func (h *pkcs11HSM) UnwrapFromPeer(ctx context.Context, req UnwrapRequest) error {
	c := req.Context
	if _, err := parseP384Public(req.PeerPublicKey); err != nil {
		return apiErrorf("unwrap for replication %s: %w", c.ReplicationID, err)
	}
	if err := c.Validate(); err != nil {
		return fmt.Errorf("unwrap for replication %s: %v", c.ReplicationID, err)
	}
	if !bytes.Equal(c.RAKA, req.PeerPublicKey) {
		return fmt.Errorf("unwrap for replication %s: context RAKA differs from the peer public key", c.ReplicationID)
	}
	if err := ctx.Err(); err != nil {
		return apiErrorf("unwrap for replication %s: %w", c.ReplicationID, err)
	}
	ref := c.Ref()
	unlockRAKB := h.labels.lock(rakbLabel(c.ReplicationID))
	defer unlockRAKB()
	unlockKey := h.labels.lock(keyLabel(ref))
	defer unlockKey()
	defer h.lockToken(true)()

	err := h.withSession(ctx, func(sh pkcs11.SessionHandle) error {
		r, err := h.findRAKB(sh, c.ReplicationID)
		if err != nil {
			return err
		}
		// consumed ends the RAKB's use on a definitive outcome.
		consumed := func(err error) error {
			if derr := h.destroyRAKB(sh, r); derr != nil {
				h.log.Warn("agreement key not destroyed; it expires by itself", "replication_id", c.ReplicationID, "error", derr)
			}
			return err
		}
		if !h.now().Before(r.expiresAt) {
			return consumed(fmt.Errorf("agreement key of replication %s: expired: %w", c.ReplicationID, ErrNotFound))
		}
		existing, err := h.findKey(sh, ref)
		switch {
		case errors.Is(err, ErrNotFound):
			existing = 0
		case err != nil:
			return err
		}
		// A context RAKB that is not this RAKB's public key needs no check
		// of its own: FixedInfo binds RAKB, so the unwrap fails.
		if len(req.Wrapped) != wrappedKeySize {
			return consumed(fmt.Errorf("%w: wrapped key is %d bytes, want %d (AES-KWP of a %d-byte key)", ErrUnwrapFailed, len(req.Wrapped), wrappedKeySize, KeySize))
		}
		rwk, err := h.rwkObject(sh, r.priv, req.PeerPublicKey, c.appendFixedInfo(nil), pkcs11.CKA_UNWRAP)
		if err != nil {
			return err
		}
		defer h.p.DestroyObject(sh, rwk)
		if err := hsmfault.After(ctx, hsmfault.UnwrapDerived); err != nil {
			return err
		}
		tmpl := newKeyAttributes(ref)
		if existing != 0 {
			tmpl = checkKeyAttributes()
		}
		o, err := h.p.UnwrapKey(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_WRAP_PAD, nil)}, rwk, req.Wrapped, tmpl)
		if err != nil {
			// The module cannot tell a bad integrity check from other
			// failures (SoftHSM2: CKR_GENERAL_ERROR); the input is the
			// likely culprit, and the wrapped bytes are well-formed.
			return consumed(fmt.Errorf("%w (C_UnwrapKey(CKM_AES_KEY_WRAP_PAD): %v)", ErrUnwrapFailed, err))
		}
		if existing != 0 {
			defer h.p.DestroyObject(sh, o)
			same, err := h.sameKey(sh, existing, o)
			if err != nil {
				return err
			}
			if !same {
				return consumed(ErrExists)
			}
		} else {
			if err := h.selfTestKey(sh, o); err != nil {
				return err
			}
			h.handles.put(keyLabel(ref), o)
		}
		if err := hsmfault.After(ctx, hsmfault.UnwrapKeyStored); err != nil {
			return err
		}
		// K is stored: if this fails, a retry finds the RAKB and K, and
		// succeeds.
		if err := h.destroyRAKB(sh, r); err != nil {
			return err
		}
		return hsmfault.After(ctx, hsmfault.UnwrapRAKBDestroyed)
	})
	if err != nil {
		if errors.Is(err, ErrNotFound) {
			return apiErrorf("unwrap %s: %w", ref, err)
		}
		return apiErrorf("unwrap %s for replication %s: %w", ref, c.ReplicationID, err)
	}
	h.log.Debug("key unwrapped from peer", "key", ref.String(), "replication_id", c.ReplicationID)
	return nil
}

// checkKeyAttributes is the template of a session copy of K unwrapped
// only to compare it with the K in the token (sameKey): it can MAC and
// nothing else, and never leaves the token.
func checkKeyAttributes() []*pkcs11.Attribute {
	return []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false),
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, false),
		pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, false),
		pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, false),
		pkcs11.NewAttribute(pkcs11.CKA_SIGN, true),
		pkcs11.NewAttribute(pkcs11.CKA_VERIFY, false),
		pkcs11.NewAttribute(pkcs11.CKA_WRAP, false),
		pkcs11.NewAttribute(pkcs11.CKA_UNWRAP, false),
		pkcs11.NewAttribute(pkcs11.CKA_DERIVE, false),
	}
}

// sameKey reports whether a and b hold the same AES key: their CMACs of a
// fresh nonce agree (key confirmation; neither leaves the token).
func (h *pkcs11HSM) sameKey(sh pkcs11.SessionHandle, a, b pkcs11.ObjectHandle) (bool, error) {
	nonce := make([]byte, 32)
	rand.Read(nonce)
	msg := append([]byte("mrkrepl/1 pkcs11 same key "), nonce...)
	ma, err := h.cmacSign(sh, a, msg)
	if err != nil {
		return false, err
	}
	mb, err := h.cmacSign(sh, b, msg)
	if err != nil {
		return false, err
	}
	return subtle.ConstantTimeCompare(ma, mb) == 1, nil
}
