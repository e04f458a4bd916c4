//go:build cgo

package hsmsvc

import (
	"context"
	"encoding/asn1"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/miekg/pkcs11"
)

// The pkcs11 backend (pkcs11.go): agreement keys (RAKB).
//
// --- agreement keys ---

// ecPoint reads CKA_EC_POINT of a public key object and returns the
// uncompressed point, fully validated. PKCS#11 wants it DER-wrapped in an
// OCTET STRING; some tokens give it raw.
func (h *pkcs11HSM) ecPoint(sh pkcs11.SessionHandle, pub pkcs11.ObjectHandle) ([]byte, error) {
	attrs, err := h.p.GetAttributeValue(sh, pub, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_EC_POINT, nil)})
	if err != nil {
		return nil, fmt.Errorf("C_GetAttributeValue(CKA_EC_POINT): %w", err)
	}
	v := attrs[0].Value
	point := v
	if len(v) != PublicKeySize || v[0] != 4 {
		rest, err := asn1.Unmarshal(v, &point)
		if err != nil || len(rest) != 0 {
			return nil, errors.New("CKA_EC_POINT is neither an uncompressed point nor one in a DER OCTET STRING")
		}
	}
	if _, err := parseP384Public(point); err != nil {
		return nil, fmt.Errorf("the token's own public key: %v", err)
	}
	return point, nil
}

// generateECDH makes an ECDH P-384 key pair in the token and returns the
// private half and the public point. The private half is a token object
// labelled label with CKA_ID id when token is true (RAKB), a session object
// otherwise (RAKA, the KDF probe). The public half is a session object,
// destroyed once its point is read: nothing needs it later (FixedInfo
// binds RAKB, so a context naming another one fails the unwrap), and one
// token object costs SoftHSM2 less than two.
func (h *pkcs11HSM) generateECDH(sh pkcs11.SessionHandle, token bool, label string, id []byte) (priv pkcs11.ObjectHandle, point []byte, err error) {
	pubT := []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PUBLIC_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_EC),
		pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, p384Params),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false),   // read once, then destroyed
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, false), // public
		pkcs11.NewAttribute(pkcs11.CKA_VERIFY, false),  // not a signature key
		pkcs11.NewAttribute(pkcs11.CKA_DERIVE, false),  // the private half derives
	}
	privT := []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PRIVATE_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_EC),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, token),       // RAKB: survives a restart
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),      // visible only after login
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),    // CKA_VALUE is never readable
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, false), // never leaves the token
		pkcs11.NewAttribute(pkcs11.CKA_DERIVE, true),       // its one use: ECDH
		pkcs11.NewAttribute(pkcs11.CKA_SIGN, false),        // not a signature key
	}
	if label != "" {
		privT = append(privT, pkcs11.NewAttribute(pkcs11.CKA_LABEL, label), pkcs11.NewAttribute(pkcs11.CKA_ID, id))
	}
	pub, priv, err := h.p.GenerateKeyPair(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_EC_KEY_PAIR_GEN, nil)}, pubT, privT)
	if err != nil {
		return 0, nil, fmt.Errorf("C_GenerateKeyPair(CKM_EC_KEY_PAIR_GEN, P-384): %w", err)
	}
	point, err = h.ecPoint(sh, pub)
	if derr := h.p.DestroyObject(sh, pub); derr != nil && err == nil {
		err = fmt.Errorf("C_DestroyObject(public key): %w", derr)
	}
	if err != nil {
		_ = h.p.DestroyObject(sh, priv)
		return 0, nil, err
	}
	return priv, point, nil
}

// rakb is a RAKB found in the token.
type rakb struct {
	label     string
	priv      pkcs11.ObjectHandle
	expiresAt time.Time
}

// findRAKB returns the RAKB of replicationID, ErrNotFound if there is none.
func (h *pkcs11HSM) findRAKB(sh pkcs11.SessionHandle, replicationID string) (*rakb, error) {
	what := "agreement key of replication " + replicationID
	tmpl := func(class uint) []*pkcs11.Attribute {
		return []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, class),
			pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_EC),
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
			pkcs11.NewAttribute(pkcs11.CKA_LABEL, rakbLabel(replicationID)),
		}
	}
	priv, err := h.findLabelled(sh, what, rakbLabel(replicationID), pkcs11.CKO_PRIVATE_KEY, tmpl(pkcs11.CKO_PRIVATE_KEY))
	if err != nil {
		return nil, err
	}
	exp, err := h.rakbExpiry(sh, priv)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	return &rakb{label: rakbLabel(replicationID), priv: priv, expiresAt: exp}, nil
}

// rakbExpiry reads the expiry a RAKB carries in CKA_ID.
func (h *pkcs11HSM) rakbExpiry(sh pkcs11.SessionHandle, o pkcs11.ObjectHandle) (time.Time, error) {
	attrs, err := h.p.GetAttributeValue(sh, o, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_ID, nil)})
	if err != nil {
		return time.Time{}, fmt.Errorf("C_GetAttributeValue(CKA_ID): %w", err)
	}
	ns, err := strconv.ParseInt(string(attrs[0].Value), 10, 64)
	if err != nil {
		return time.Time{}, fmt.Errorf("CKA_ID %q is not an expiry in Unix nanoseconds", attrs[0].Value)
	}
	return time.Unix(0, ns), nil
}

// destroyRAKB destroys a RAKB's token object.
func (h *pkcs11HSM) destroyRAKB(sh pkcs11.SessionHandle, r *rakb) error {
	h.handles.forget(r.label)
	return h.destroy(sh, r.priv)
}

// destroy destroys an object.
func (h *pkcs11HSM) destroy(sh pkcs11.SessionHandle, o pkcs11.ObjectHandle) error {
	if err := h.p.DestroyObject(sh, o); err != nil {
		return fmt.Errorf("C_DestroyObject: %w", err)
	}
	return nil
}

func (h *pkcs11HSM) CreateAgreementKey(ctx context.Context, replicationID string, expiresAt time.Time) ([]byte, error) {
	if err := checkReplicationID(replicationID); err != nil {
		return nil, fmt.Errorf("create agreement key: %v", err)
	}
	if err := ctx.Err(); err != nil {
		return nil, apiErrorf("create agreement key for replication %s: %w", replicationID, err)
	}
	if !expiresAt.After(h.now()) {
		return nil, fmt.Errorf("create agreement key for replication %s: expiry %s is not in the future", replicationID, expiresAt.UTC().Format(time.RFC3339Nano))
	}
	unlock := h.labels.lock(rakbLabel(replicationID))
	defer unlock()
	defer h.lockToken(true)()
	var point []byte
	err := h.withSession(ctx, func(sh pkcs11.SessionHandle) error {
		old, err := h.findRAKB(sh, replicationID)
		switch {
		case err == nil && h.now().Before(old.expiresAt):
			return ErrExists
		case err == nil: // expired: replaced
			if err := h.destroyRAKB(sh, old); err != nil {
				return err
			}
		case !errors.Is(err, ErrNotFound):
			return err
		}
		id := []byte(strconv.FormatInt(expiresAt.UnixNano(), 10))
		var priv pkcs11.ObjectHandle
		priv, point, err = h.generateECDH(sh, true, rakbLabel(replicationID), id)
		if err == nil {
			h.handles.put(rakbLabel(replicationID), priv)
		}
		return err
	})
	if err != nil {
		return nil, apiErrorf("create agreement key for replication %s: %w", replicationID, err)
	}
	h.log.Debug("agreement key created", "replication_id", replicationID, "expires_at", expiresAt)
	return point, nil
}

func (h *pkcs11HSM) DestroyAgreementKey(ctx context.Context, replicationID string) error {
	if err := checkReplicationID(replicationID); err != nil {
		return fmt.Errorf("destroy agreement key: %v", err)
	}
	if err := ctx.Err(); err != nil {
		return apiErrorf("destroy agreement key of replication %s: %w", replicationID, err)
	}
	unlock := h.labels.lock(rakbLabel(replicationID))
	defer unlock()
	defer h.lockToken(true)()
	err := h.withSession(ctx, func(sh pkcs11.SessionHandle) error {
		r, err := h.findRAKB(sh, replicationID)
		if err != nil {
			return err
		}
		if err := h.destroyRAKB(sh, r); err != nil {
			return err
		}
		if !h.now().Before(r.expiresAt) {
			return fmt.Errorf("expired: %w", ErrNotFound)
		}
		return nil
	})
	if err != nil {
		return apiErrorf("destroy agreement key of replication %s: %w", replicationID, err)
	}
	h.log.Debug("agreement key destroyed", "replication_id", replicationID)
	return nil
}

// SweepExpired destroys every RAKB in the token whose expiry has passed.
func (h *pkcs11HSM) SweepExpired(ctx context.Context) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, apiErrorf("sweep expired agreement keys: %w", err)
	}
	var expired []string
	unlockRead := h.lockToken(false)
	err := h.withSession(ctx, func(sh pkcs11.SessionHandle) error {
		objs, err := h.findObjects(sh, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PRIVATE_KEY),
			pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_EC),
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
			pkcs11.NewAttribute(pkcs11.CKA_DERIVE, true),
		})
		if err != nil {
			return err
		}
		now := h.now()
		for _, o := range objs {
			attrs, err := h.p.GetAttributeValue(sh, o, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_LABEL, nil)})
			if err != nil {
				return fmt.Errorf("C_GetAttributeValue(CKA_LABEL): %w", err)
			}
			id, ok := strings.CutPrefix(string(attrs[0].Value), rakbLabelPrefix)
			if !ok {
				continue
			}
			exp, err := h.rakbExpiry(sh, o)
			if err != nil {
				h.log.Warn("agreement key with an unreadable expiry left in place", "replication_id", id, "error", err)
				continue
			}
			if now.Before(exp) {
				continue
			}
			expired = append(expired, id)
		}
		return nil
	})
	unlockRead()
	if err != nil {
		return 0, apiErrorf("sweep expired agreement keys: %w", err)
	}
	n := 0
	for _, id := range expired {
		// Through the label lock and a fresh lookup: an UnwrapFromPeer may
		// have consumed it, or a CreateAgreementKey replaced it, meanwhile.
		err := func() error {
			unlock := h.labels.lock(rakbLabel(id))
			defer unlock()
			defer h.lockToken(true)()
			return h.withSession(ctx, func(sh pkcs11.SessionHandle) error {
				r, err := h.findRAKB(sh, id)
				if err != nil || h.now().Before(r.expiresAt) {
					return nil
				}
				if err := h.destroyRAKB(sh, r); err != nil {
					return err
				}
				n++
				return nil
			})
		}()
		if err != nil {
			return n, apiErrorf("sweep expired agreement keys: replication %s: %w", id, err)
		}
		h.log.Debug("expired agreement key removed", "replication_id", id)
	}
	return n, nil
}
