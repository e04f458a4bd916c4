//go:build cgo

package hsmsvc

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"

	"github.com/miekg/pkcs11"
)

// The pkcs11 backend (pkcs11.go): keys K (KeyStore) and their use
// (AES-GCM, CMAC, key confirmation).

func (h *pkcs11HSM) GenerateKey(ctx context.Context, ref KeyRef) error {
	if err := ref.Validate(); err != nil {
		return fmt.Errorf("generate key: %v", err)
	}
	if err := ctx.Err(); err != nil {
		return apiErrorf("generate key %s: %w", ref, err)
	}
	unlock := h.labels.lock(keyLabel(ref))
	defer unlock()
	defer h.lockToken(true)()
	err := h.withSession(ctx, func(sh pkcs11.SessionHandle) error {
		if err := h.absent(sh, ref); err != nil {
			return err
		}
		tmpl := append(newKeyAttributes(ref), pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, KeySize))
		o, err := h.p.GenerateKey(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_GEN, nil)}, tmpl)
		if err != nil {
			return fmt.Errorf("C_GenerateKey(CKM_AES_KEY_GEN): %w", err)
		}
		if err := h.selfTestKey(sh, o); err != nil {
			return err
		}
		h.handles.put(keyLabel(ref), o)
		return nil
	})
	if err != nil {
		return apiErrorf("generate key %s: %w", ref, err)
	}
	h.log.Debug("key generated", "key", ref.String())
	return nil
}

// absent returns ErrExists if ref is in the token.
func (h *pkcs11HSM) absent(sh pkcs11.SessionHandle, ref KeyRef) error {
	if _, ok := h.cached(sh, keyLabel(ref), pkcs11.CKO_SECRET_KEY); ok {
		return ErrExists
	}
	objs, err := h.findObjects(sh, keyTemplate(ref))
	if err != nil {
		return err
	}
	if len(objs) > 0 {
		return ErrExists
	}
	return nil
}

// selfTestKey uses a new K before it is trusted: an AES-GCM round trip and
// a CMAC (every use the protocol makes of it). A key that fails is
// destroyed.
func (h *pkcs11HSM) selfTestKey(sh pkcs11.SessionHandle, o pkcs11.ObjectHandle) (err error) {
	defer func() {
		if err != nil {
			_ = h.p.DestroyObject(sh, o)
		}
	}()
	msg := []byte("mrkrepl/1 pkcs11 key self-test")
	ct, err := h.gcmSeal(sh, o, msg, nil)
	if err != nil {
		return fmt.Errorf("self-test: %w", err)
	}
	pt, err := h.gcmOpen(sh, o, ct, nil)
	if err != nil || !bytes.Equal(pt, msg) {
		return fmt.Errorf("self-test: the key does not decrypt what it encrypted: %v", err)
	}
	if _, err := h.cmacSign(sh, o, msg); err != nil {
		return fmt.Errorf("self-test: %w", err)
	}
	return nil
}

func (h *pkcs11HSM) HasKey(ctx context.Context, ref KeyRef) (bool, error) {
	if err := ref.Validate(); err != nil {
		return false, fmt.Errorf("has key: %v", err)
	}
	if err := ctx.Err(); err != nil {
		return false, apiErrorf("has key %s: %w", ref, err)
	}
	var n int
	defer h.lockToken(false)()
	err := h.withSession(ctx, func(sh pkcs11.SessionHandle) error {
		objs, err := h.findObjects(sh, keyTemplate(ref))
		n = len(objs)
		return err
	})
	switch {
	case err != nil:
		return false, apiErrorf("has key %s: %w", ref, err)
	case n > 1:
		return false, fmt.Errorf("has key %s: %d objects carry its label, want one; remove the strays", ref, n)
	}
	return n == 1, nil
}

func (h *pkcs11HSM) DestroyKey(ctx context.Context, ref KeyRef) error {
	if err := ref.Validate(); err != nil {
		return fmt.Errorf("destroy key: %v", err)
	}
	if err := ctx.Err(); err != nil {
		return apiErrorf("destroy key %s: %w", ref, err)
	}
	unlock := h.labels.lock(keyLabel(ref))
	defer unlock()
	defer h.lockToken(true)()
	err := h.withSession(ctx, func(sh pkcs11.SessionHandle) error {
		o, err := h.findKey(sh, ref)
		if err != nil {
			return err
		}
		h.handles.forget(keyLabel(ref))
		if err := h.p.DestroyObject(sh, o); err != nil {
			return fmt.Errorf("C_DestroyObject: %w", err)
		}
		return nil
	})
	if err != nil {
		return apiErrorf("destroy key %s: %w", ref, err)
	}
	h.log.Debug("key destroyed", "key", ref.String())
	return nil
}

// --- AES-GCM and CMAC with K ---

// gcmSeal returns nonce ‖ ciphertext ‖ tag; the 96-bit nonce comes from the
// host's crypto/rand (random nonces: at most 2^32 encryptions per key,
// NIST SP 800-38D §8.3).
func (h *pkcs11HSM) gcmSeal(sh pkcs11.SessionHandle, o pkcs11.ObjectHandle, plaintext, aad []byte) ([]byte, error) {
	nonce := make([]byte, gcmNonceSize)
	rand.Read(nonce)
	params := pkcs11.NewGCMParams(nonce, aad, gcmTagSize*8)
	defer params.Free()
	if err := h.p.EncryptInit(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_GCM, params)}, o); err != nil {
		return nil, fmt.Errorf("C_EncryptInit(CKM_AES_GCM): %w", err)
	}
	ct, err := h.p.Encrypt(sh, plaintext)
	if err != nil {
		return nil, fmt.Errorf("C_Encrypt(CKM_AES_GCM): %w", err)
	}
	if len(ct) != len(plaintext)+gcmTagSize {
		return nil, fmt.Errorf("C_Encrypt(CKM_AES_GCM) returned %d bytes for %d, want %d", len(ct), len(plaintext), len(plaintext)+gcmTagSize)
	}
	return append(nonce, ct...), nil
}

// gcmOpen reverses gcmSeal; a ciphertext that does not authenticate is
// ErrDecryptFailed.
func (h *pkcs11HSM) gcmOpen(sh pkcs11.SessionHandle, o pkcs11.ObjectHandle, ciphertext, aad []byte) ([]byte, error) {
	if len(ciphertext) < gcmNonceSize+gcmTagSize {
		return nil, fmt.Errorf("%w: %d bytes is shorter than nonce and tag", ErrDecryptFailed, len(ciphertext))
	}
	params := pkcs11.NewGCMParams(ciphertext[:gcmNonceSize], aad, gcmTagSize*8)
	defer params.Free()
	if err := h.p.DecryptInit(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_GCM, params)}, o); err != nil {
		return nil, fmt.Errorf("C_DecryptInit(CKM_AES_GCM): %w", err)
	}
	pt, err := h.p.Decrypt(sh, ciphertext[gcmNonceSize:])
	if err != nil {
		var e pkcs11.Error
		if errors.As(err, &e) {
			switch e {
			// SoftHSM2 reports a bad tag as CKR_GENERAL_ERROR; PKCS#11 3.0
			// tokens as CKR_AEAD_DECRYPT_FAILED, older ones as
			// CKR_ENCRYPTED_DATA_INVALID.
			case pkcs11.CKR_GENERAL_ERROR, pkcs11.CKR_ENCRYPTED_DATA_INVALID,
				pkcs11.CKR_ENCRYPTED_DATA_LEN_RANGE, ckrAEADDecryptFailed:
				return nil, ErrDecryptFailed
			}
		}
		return nil, fmt.Errorf("C_Decrypt(CKM_AES_GCM): %w", err)
	}
	return pt, nil
}

// cmacSign returns the 16-byte CKM_AES_CMAC of msg under o.
func (h *pkcs11HSM) cmacSign(sh pkcs11.SessionHandle, o pkcs11.ObjectHandle, msg []byte) ([]byte, error) {
	if err := h.p.SignInit(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_CMAC, nil)}, o); err != nil {
		return nil, fmt.Errorf("C_SignInit(CKM_AES_CMAC): %w", err)
	}
	mac, err := h.p.Sign(sh, msg)
	if err != nil {
		return nil, fmt.Errorf("C_Sign(CKM_AES_CMAC): %w", err)
	}
	if len(mac) != KeyConfirmationSize {
		return nil, fmt.Errorf("C_Sign(CKM_AES_CMAC) returned %d bytes, want %d", len(mac), KeyConfirmationSize)
	}
	return mac, nil
}

func (h *pkcs11HSM) Encrypt(ctx context.Context, ref KeyRef, plaintext, aad []byte) ([]byte, error) {
	if err := ref.Validate(); err != nil {
		return nil, fmt.Errorf("encrypt: %v", err)
	}
	var out []byte
	defer h.lockToken(false)()
	err := h.withSession(ctx, func(sh pkcs11.SessionHandle) error {
		o, err := h.findKey(sh, ref)
		if err != nil {
			return err
		}
		out, err = h.gcmSeal(sh, o, plaintext, aad)
		return err
	})
	if err != nil {
		return nil, apiErrorf("encrypt with %s: %w", ref, err)
	}
	return out, nil
}

func (h *pkcs11HSM) Decrypt(ctx context.Context, ref KeyRef, ciphertext, aad []byte) ([]byte, error) {
	if err := ref.Validate(); err != nil {
		return nil, fmt.Errorf("decrypt: %v", err)
	}
	var out []byte
	defer h.lockToken(false)()
	err := h.withSession(ctx, func(sh pkcs11.SessionHandle) error {
		o, err := h.findKey(sh, ref)
		if err != nil {
			return err
		}
		out, err = h.gcmOpen(sh, o, ciphertext, aad)
		return err
	})
	if err != nil {
		return nil, apiErrorf("decrypt with %s: %w", ref, err)
	}
	return out, nil
}

func (h *pkcs11HSM) KeyConfirmation(ctx context.Context, ref KeyRef, transcript []byte) ([]byte, error) {
	msg, err := keyConfirmationMessage(transcript)
	if err != nil {
		return nil, err
	}
	if err := ref.Validate(); err != nil {
		return nil, fmt.Errorf("key confirmation: %v", err)
	}
	var mac []byte
	defer h.lockToken(false)()
	err = h.withSession(ctx, func(sh pkcs11.SessionHandle) error {
		o, err := h.findKey(sh, ref)
		if err != nil {
			return err
		}
		mac, err = h.cmacSign(sh, o, msg)
		return err
	})
	if err != nil {
		return nil, apiErrorf("key confirmation with %s: %w", ref, err)
	}
	return mac, nil
}
