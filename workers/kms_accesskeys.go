package workers

// Access keys of the KMS API (docs/KMS-API.md, "Access keys"). Each is
// bound to a principal of the key policies; its secret is generated here,
// given out once (in create-access-key's reply, to an admin inside the
// workers' own account) and stored in the region's ACCESS_KEYS bucket
// sealed with AES-256-GCM by the region's HSM, under a key that never
// leaves it, with the access key id and principal as additional data (so a
// sealed secret cannot be rebound to another principal by editing the
// bucket). A worker unseals a secret only to derive SigV4 signing keys,
// which it caches for accessKeyCacheTTL.

import (
	"context"
	"crypto/rand"
	"encoding/base32"
	"encoding/base64"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/mrkrepl/mrkrepl/api"
	"github.com/mrkrepl/mrkrepl/hsmsvc"
	"github.com/mrkrepl/mrkrepl/internal/authz"
	"github.com/mrkrepl/mrkrepl/kmsapi"
	"github.com/nats-io/nats.go/jetstream"
)

// accessKeySealRef is the HSM key that seals access-key secrets. Its id is
// one messages.NewKeyID never returns in practice (all zero) and no key
// record names, so no API operation can reach it.
var accessKeySealRef = hsmsvc.KeyRef{KeyID: "mrk-00000000000000000000000000000000", Version: 1}

// accessKeyPrefix starts every access key id (AWS's start with AKIA).
const accessKeyPrefix = "MRKA"

// accessKeyCacheTTL bounds how long a worker uses a signing key it
// derived: a deleted access key stops working on every worker of the
// region within it (at once on the worker that deleted it).
const accessKeyCacheTTL = 30 * time.Second

// accessKeyRecord is an access key in the ACCESS_KEYS bucket.
type accessKeyRecord struct {
	AccessKeyID string    `json:"access_key_id"`
	Principal   string    `json:"principal"`
	Sealed      []byte    `json:"sealed_secret"` // HSM AES-256-GCM under accessKeySealRef
	CreatedAt   time.Time `json:"created_at"`
	CreatedBy   string    `json:"created_by,omitempty"`
}

func (r *accessKeyRecord) public() api.AccessKey {
	return api.AccessKey{AccessKeyID: r.AccessKeyID, Principal: r.Principal, CreatedAt: r.CreatedAt, CreatedBy: r.CreatedBy}
}

// sealAAD binds a sealed secret to its region, access key id and principal.
func (w *Worker) sealAAD(id, principal string) []byte {
	return []byte("mrkrepl access key v1\x00" + w.cfg.Region + "\x00" + id + "\x00" + principal)
}

// ensureSealKey creates the sealing key in the HSM if it is not there.
func (w *Worker) ensureSealKey(ctx context.Context) error {
	ok, err := w.cfg.HSM.HasKey(ctx, accessKeySealRef)
	if err != nil || ok {
		return err
	}
	err = w.cfg.HSM.GenerateKey(ctx, accessKeySealRef)
	if errors.Is(err, hsmsvc.ErrExists) {
		return nil
	}
	return err
}

// requireAdmin refuses (403, AccessDenied event) a caller who is not one
// of the region's admins: the admins-only policy allows them kms:*, so
// any action asks it whether the caller is one.
func (w *Worker) requireAdmin(ctx context.Context, what string) error {
	p, ok := principalFrom(ctx)
	if !ok {
		return nil
	}
	var pol *authz.Policy
	if w.adminsPolicy != "" {
		pol, _ = w.policies.parse(w.adminsPolicy)
	}
	if pol.Evaluate(authz.Request{Principal: p, Action: authz.ActionCreateKey}).Allowed {
		return nil
	}
	w.event(ctx, api.Event{Type: api.EventAccessDenied, Reason: p.String() + " is not an admin of region " + w.cfg.Region + " (" + what + ")"})
	return &apiError{Code: api.CodeForbidden, Detail: fmt.Sprintf("%s is not allowed %s in region %s: admins only", p, what, w.cfg.Region)}
}

func (w *Worker) apiCreateAccessKey(ctx context.Context, data []byte) (any, error) {
	var req api.CreateAccessKeyRequest
	if err := decodeRequest(data, &req); err != nil {
		return nil, err
	}
	if err := w.requireAdmin(ctx, "create-access-key"); err != nil {
		return nil, err
	}
	p, err := authz.ParsePrincipal(req.Principal)
	if err != nil {
		return nil, badRequest("%v", err)
	}
	var idb [10]byte
	secret := make([]byte, 30)
	if _, err := rand.Read(idb[:]); err != nil {
		return nil, err
	}
	if _, err := rand.Read(secret); err != nil {
		return nil, err
	}
	id := accessKeyPrefix + base32.StdEncoding.EncodeToString(idb[:])[:16]
	secretText := base64.RawURLEncoding.EncodeToString(secret) // 40 characters, as AWS's
	clear(secret)
	var sealed []byte
	err = w.hsmOp("encrypt", func() (err error) {
		sealed, err = w.cfg.HSM.Encrypt(ctx, accessKeySealRef, []byte(secretText), w.sealAAD(id, p.String()))
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("seal access key: %w", err)
	}
	rec := &accessKeyRecord{AccessKeyID: id, Principal: p.String(), Sealed: sealed, CreatedAt: w.cfg.Now().UTC(), CreatedBy: actorFrom(ctx)}
	if _, err := createJSON(ctx, w.res.AccessKeys, id, rec); err != nil {
		return nil, fmt.Errorf("store access key: %w", err)
	}
	w.event(ctx, api.Event{Type: api.EventAccessKeyCreated, Reason: "access key " + id + " for " + p.String()})
	w.log.Info("access key created", "access_key_id", id, "principal", p.String())
	out := rec.public()
	out.SecretAccessKey = secretText
	return out, nil
}

func (w *Worker) apiListAccessKeys(ctx context.Context, data []byte) (any, error) {
	if len(data) > 0 {
		var req struct{}
		if err := decodeRequest(data, &req); err != nil {
			return nil, err
		}
	}
	if err := w.requireAdmin(ctx, "list-access-keys"); err != nil {
		return nil, err
	}
	lister, err := w.res.AccessKeys.ListKeys(ctx)
	if err != nil {
		return nil, err
	}
	out := api.ListAccessKeysResponse{AccessKeys: []api.AccessKey{}}
	for id := range lister.Keys() {
		rec, _, err := getJSON[accessKeyRecord](ctx, w.res.AccessKeys, id)
		if err != nil {
			continue // deleted meanwhile
		}
		out.AccessKeys = append(out.AccessKeys, rec.public())
	}
	slices.SortFunc(out.AccessKeys, func(a, b api.AccessKey) int { return strings.Compare(a.AccessKeyID, b.AccessKeyID) })
	return out, nil
}

func (w *Worker) apiDeleteAccessKey(ctx context.Context, data []byte) (any, error) {
	var req api.DeleteAccessKeyRequest
	if err := decodeRequest(data, &req); err != nil {
		return nil, err
	}
	if err := w.requireAdmin(ctx, "delete-access-key"); err != nil {
		return nil, err
	}
	if !validAccessKeyID(req.AccessKeyID) {
		return nil, badRequest("invalid access key id %q", req.AccessKeyID)
	}
	rec, _, err := getJSON[accessKeyRecord](ctx, w.res.AccessKeys, req.AccessKeyID)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, notFound("access key %s not found in region %s", req.AccessKeyID, w.cfg.Region)
	}
	if err != nil {
		return nil, err
	}
	if err := w.res.AccessKeys.Purge(ctx, req.AccessKeyID); err != nil {
		return nil, err
	}
	if w.kms != nil {
		w.kms.creds.forget(req.AccessKeyID)
	}
	w.event(ctx, api.Event{Type: api.EventAccessKeyDeleted, Reason: "access key " + rec.AccessKeyID + " of " + rec.Principal})
	w.log.Info("access key deleted", "access_key_id", rec.AccessKeyID, "principal", rec.Principal)
	return rec.public(), nil
}

func validAccessKeyID(id string) bool {
	if len(id) != len(accessKeyPrefix)+16 || !strings.HasPrefix(id, accessKeyPrefix) {
		return false
	}
	for _, c := range id[len(accessKeyPrefix):] {
		if !('A' <= c && c <= 'Z' || '2' <= c && c <= '7') {
			return false
		}
	}
	return true
}

// credentials is the kmsapi.Credentials of a worker: signing keys derived
// from the unsealed secrets, cached for accessKeyCacheTTL.
type credentials struct {
	w  *Worker
	mu sync.Mutex
	m  map[string]cachedSigningKey // by id, date, region and service
}

type cachedSigningKey struct {
	id      string
	key     []byte
	p       authz.Principal
	expires time.Time
}

const maxCachedSigningKeys = 4096

func (c *credentials) SigningKey(ctx context.Context, id, date, region, service string) ([]byte, authz.Principal, error) {
	if !validAccessKeyID(id) {
		return nil, authz.Principal{}, kmsapi.ErrUnknownAccessKey
	}
	ck := id + "/" + date + "/" + region + "/" + service
	now := time.Now()
	c.mu.Lock()
	e, ok := c.m[ck]
	c.mu.Unlock()
	if ok && now.Before(e.expires) {
		return e.key, e.p, nil
	}
	rec, _, err := getJSON[accessKeyRecord](ctx, c.w.res.AccessKeys, id)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, authz.Principal{}, kmsapi.ErrUnknownAccessKey
	}
	if err != nil {
		return nil, authz.Principal{}, err
	}
	p, err := authz.ParsePrincipal(rec.Principal)
	if err != nil {
		return nil, authz.Principal{}, fmt.Errorf("access key %s: %w", id, err)
	}
	var secret []byte
	err = c.w.hsmOp("decrypt", func() (err error) {
		secret, err = c.w.cfg.HSM.Decrypt(ctx, accessKeySealRef, rec.Sealed, c.w.sealAAD(id, rec.Principal))
		return err
	})
	if err != nil {
		// Sealed by another HSM (or its state lost): the key is unusable here.
		c.w.log.Warn("access key does not unseal; refusing it", "access_key_id", id, "err", err)
		return nil, authz.Principal{}, kmsapi.ErrUnknownAccessKey
	}
	key := kmsapi.DeriveSigningKey(secret, date, region, service)
	clear(secret)
	c.mu.Lock()
	if c.m == nil || len(c.m) >= maxCachedSigningKeys {
		c.m = map[string]cachedSigningKey{}
	}
	c.m[ck] = cachedSigningKey{id: id, key: key, p: p, expires: now.Add(accessKeyCacheTTL)}
	c.mu.Unlock()
	return key, p, nil
}

// forget drops the cached signing keys of an access key.
func (c *credentials) forget(id string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for k, e := range c.m {
		if e.id == id {
			delete(c.m, k)
		}
	}
}
