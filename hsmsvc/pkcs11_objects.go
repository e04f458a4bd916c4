//go:build cgo

package hsmsvc

import (
	"bytes"
	"fmt"
	"sync"

	"github.com/miekg/pkcs11"
)

// The pkcs11 backend (pkcs11.go): finding objects, the handle cache, templates.

func keyLabel(ref KeyRef) string { return keyLabelPrefix + ref.String() }

func rakbLabel(replicationID string) string { return rakbLabelPrefix + replicationID }

// findObjects returns every object matching tmpl.
func (h *pkcs11HSM) findObjects(sh pkcs11.SessionHandle, tmpl []*pkcs11.Attribute) ([]pkcs11.ObjectHandle, error) {
	if err := h.p.FindObjectsInit(sh, tmpl); err != nil {
		return nil, fmt.Errorf("C_FindObjectsInit: %w", err)
	}
	var all []pkcs11.ObjectHandle
	for {
		objs, _, err := h.p.FindObjects(sh, 64)
		if err != nil {
			_ = h.p.FindObjectsFinal(sh)
			return nil, fmt.Errorf("C_FindObjects: %w", err)
		}
		if len(objs) == 0 {
			break
		}
		all = append(all, objs...)
	}
	if err := h.p.FindObjectsFinal(sh); err != nil {
		return nil, fmt.Errorf("C_FindObjectsFinal: %w", err)
	}
	return all, nil
}

// findOne returns the one object matching tmpl: none is ErrNotFound,
// several is an error of its own (never pick one of them).
func (h *pkcs11HSM) findOne(sh pkcs11.SessionHandle, what string, tmpl []*pkcs11.Attribute) (pkcs11.ObjectHandle, error) {
	objs, err := h.findObjects(sh, tmpl)
	if err != nil {
		return 0, fmt.Errorf("find %s: %w", what, err)
	}
	switch len(objs) {
	case 0:
		return 0, fmt.Errorf("%s: %w", what, ErrNotFound)
	case 1:
		return objs[0], nil
	}
	return 0, fmt.Errorf("%s: %d objects carry its label, want one; remove the strays", what, len(objs))
}

func keyTemplate(ref KeyRef) []*pkcs11.Attribute {
	return []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, keyLabel(ref)),
	}
}

// findKey returns the handle of K for ref.
func (h *pkcs11HSM) findKey(sh pkcs11.SessionHandle, ref KeyRef) (pkcs11.ObjectHandle, error) {
	return h.findLabelled(sh, "key "+ref.String(), keyLabel(ref), pkcs11.CKO_SECRET_KEY, keyTemplate(ref))
}

// handleCache remembers the handles of the objects the backend labels, by
// label. C_FindObjects costs time in proportion to the objects in the token
// on some modules (SoftHSM2: about 40 µs per object, so 40 ms per lookup in
// a token with a thousand keys); reading one attribute of one object does
// not.
type handleCache struct {
	mu sync.Mutex
	m  map[string]pkcs11.ObjectHandle
}

func (c *handleCache) get(label string) (pkcs11.ObjectHandle, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	o, ok := c.m[label]
	return o, ok
}

func (c *handleCache) put(label string, o pkcs11.ObjectHandle) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = make(map[string]pkcs11.ObjectHandle)
	}
	c.m[label] = o
}

func (c *handleCache) forget(label string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.m, label)
}

// cached returns the cached handle of label if it still names a token
// object of class with that label: another process may have destroyed the
// object, and a module may give its handle to another object.
func (h *pkcs11HSM) cached(sh pkcs11.SessionHandle, label string, class uint) (pkcs11.ObjectHandle, bool) {
	o, ok := h.handles.get(label)
	if !ok {
		return 0, false
	}
	attrs, err := h.p.GetAttributeValue(sh, o, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, nil),
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, nil),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, nil),
	})
	if err == nil && string(attrs[0].Value) == label &&
		bytes.Equal(attrs[1].Value, pkcs11.NewAttribute(pkcs11.CKA_CLASS, class).Value) &&
		bytes.Equal(attrs[2].Value, []byte{1}) {
		return o, true
	}
	h.handles.forget(label)
	return 0, false
}

// findLabelled returns the one object matching tmpl, which selects class
// and label: from the cache if it is still valid there, else by a search
// (none is ErrNotFound, several an error), whose result is cached. A
// duplicate another process makes after an object is cached goes
// unnoticed until the next search.
func (h *pkcs11HSM) findLabelled(sh pkcs11.SessionHandle, what, label string, class uint, tmpl []*pkcs11.Attribute) (pkcs11.ObjectHandle, error) {
	if o, ok := h.cached(sh, label, class); ok {
		return o, nil
	}
	o, err := h.findOne(sh, what, tmpl)
	if err != nil {
		return 0, err
	}
	h.handles.put(label, o)
	return o, nil
}

// newKeyAttributes is the template of K, generated or unwrapped: a token
// object that can encrypt, decrypt and MAC, and leaves the token only
// wrapped.
func newKeyAttributes(ref KeyRef) []*pkcs11.Attribute {
	label := keyLabel(ref)
	return []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
		pkcs11.NewAttribute(pkcs11.CKA_ID, []byte(label)),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),       // persistent: survives restarts
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),     // visible only after login
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),   // CKA_VALUE is never readable
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, true), // only so C_WrapKey can wrap it under an RWK for a peer region (replication, and onward after a primary change)
		pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, true),     // Encrypt (AES-GCM)
		pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, true),     // Decrypt (AES-GCM)
		pkcs11.NewAttribute(pkcs11.CKA_SIGN, true),        // KeyConfirmation (AES-CMAC)
		pkcs11.NewAttribute(pkcs11.CKA_VERIFY, false),     // confirmations are compared on the host
		pkcs11.NewAttribute(pkcs11.CKA_WRAP, false),       // K wraps nothing
		pkcs11.NewAttribute(pkcs11.CKA_UNWRAP, false),     // K unwraps nothing
		pkcs11.NewAttribute(pkcs11.CKA_DERIVE, false),     // nothing is derived from K
		pkcs11.NewAttribute(pkcs11.CKA_MODIFIABLE, false), // attributes fixed from creation
	}
}
