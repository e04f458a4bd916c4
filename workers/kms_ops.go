package workers

// The operations of the KMS API (docs/KMS-API.md): AWS request shapes in,
// the worker's own functions run with the principal in ctx, AWS shapes
// out. Lifecycle operations call the NATS API's handlers (after the same
// authorizeKeyOp serve does); the data-plane ones use the worker's
// pieces directly, for AWS's distinct error types and actions.

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/mrkrepl/mrkrepl/api"
	"github.com/mrkrepl/mrkrepl/hsmsvc"
	"github.com/mrkrepl/mrkrepl/internal/authz"
	"github.com/mrkrepl/mrkrepl/internal/repl"
	"github.com/mrkrepl/mrkrepl/kmsapi"
	"github.com/nats-io/nats.go/jetstream"
)

type kmsOp func(w *Worker, ctx context.Context, body []byte) (any, error)

// kmsOps are the operations served; every other AWS KMS operation is
// answered UnsupportedOperationException by kmsapi.
var kmsOps = map[string]kmsOp{
	"CreateKey":                       kmsCreateKey,
	"DescribeKey":                     kmsDescribeKey,
	"ListKeys":                        kmsListKeys,
	"Encrypt":                         kmsEncrypt,
	"Decrypt":                         kmsDecrypt,
	"ReEncrypt":                       kmsReEncrypt,
	"GenerateDataKey":                 kmsGenerateDataKey,
	"GenerateDataKeyWithoutPlaintext": kmsGenerateDataKeyWithoutPlaintext,
	"ReplicateKey":                    kmsReplicateKey,
	"UpdatePrimaryRegion":             kmsUpdatePrimaryRegion,
	"ScheduleKeyDeletion":             kmsScheduleKeyDeletion,
	"CancelKeyDeletion":               kmsCancelKeyDeletion,
	"EnableKey":                       kmsEnableKey,
	"DisableKey":                      kmsDisableKey,
	"RotateKeyOnDemand":               kmsRotateKeyOnDemand,
	"GetKeyRotationStatus":            kmsGetKeyRotationStatus,
	"ListKeyRotations":                kmsListKeyRotations,
	"CreateAlias":                     kmsCreateAlias,
	"UpdateAlias":                     kmsUpdateAlias,
	"DeleteAlias":                     kmsDeleteAlias,
	"ListAliases":                     kmsListAliases,
	"GetKeyPolicy":                    kmsGetKeyPolicy,
	"PutKeyPolicy":                    kmsPutKeyPolicy,
}

// kmsOperations lists kmsOps' names, sorted.
func kmsOperations() []string {
	var ops []string
	for op := range kmsOps {
		ops = append(ops, op)
	}
	slices.Sort(ops)
	return ops
}

// callInternal runs a NATS API handler as serve does: the key op's
// authorization first, then the handler, with req as its JSON body.
func (w *Worker) callInternal(ctx context.Context, op string, fn func(context.Context, []byte) (any, error), req any) (any, error) {
	data, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	if keyOps[op] {
		if err := w.authorizeKeyOp(ctx, op, data); err != nil {
			return nil, err
		}
	}
	return fn(ctx, data)
}

func unsupported(format string, args ...any) error {
	return kmsapi.Errorf(kmsapi.ErrUnsupportedOperation, format, args...)
}

func validation(format string, args ...any) error {
	return kmsapi.Errorf(kmsapi.ErrValidation, format, args...)
}

// kmsKey resolves a request's KeyId and loads the key's record.
func (w *Worker) kmsKey(ctx context.Context, keyID string) (*repl.Key, error) {
	return w.kmsKeyFrom(ctx, keyID, w.loadKey)
}

// kmsDataPlaneKey is kmsKey for the data plane (encrypt, decrypt,
// re-encrypt, generate-data-key): the record may be the key cache's
// (keycache.go), not to be changed.
func (w *Worker) kmsDataPlaneKey(ctx context.Context, keyID string) (*repl.Key, error) {
	return w.kmsKeyFrom(ctx, keyID, w.dataPlaneKey)
}

func (w *Worker) kmsKeyFrom(ctx context.Context, keyID string, load func(context.Context, string) (*repl.Key, error)) (*repl.Key, error) {
	id, err := w.resolveKeyID(ctx, keyID)
	if err != nil {
		return nil, err
	}
	k, err := load(ctx, id)
	var ae *apiError
	if errors.As(err, &ae) && ae.Code == api.CodeNotFound {
		return nil, kmsapi.Errorf(kmsapi.ErrNotFound, "Key '%s' does not exist", w.keyARN(w.cfg.Region, id))
	}
	return k, err
}

// usable refuses a key that cannot encrypt or decrypt now.
func (w *Worker) usable(k *repl.Key) error {
	arn := w.keyARN(w.cfg.Region, k.KeyID)
	if k.KeyState == api.KeyStatePendingDeletion {
		return kmsapi.Errorf(kmsapi.ErrInvalidState, "%s is pending deletion.", arn)
	}
	if !k.Enabled {
		return kmsapi.Errorf(kmsapi.ErrDisabled, "%s is disabled.", arn)
	}
	return nil
}

func checkAlgorithm(alg *string) error {
	if alg != nil && *alg != "SYMMETRIC_DEFAULT" {
		return kmsapi.Errorf(kmsapi.ErrInvalidKeyUsage, "the key's KeySpec SYMMETRIC_DEFAULT supports only the SYMMETRIC_DEFAULT encryption algorithm, not %s", *alg)
	}
	return nil
}

func dryRun(d *bool) error {
	if d != nil && *d {
		return kmsapi.Errorf("DryRunOperationException", "The request would have succeeded, but the DryRun option is set.")
	}
	return nil
}

func checkContext(ec map[string]string) ([]byte, error) {
	aad, err := requestAAD(ec, nil)
	if err != nil {
		return nil, validation("EncryptionContext: %v", err)
	}
	return aad, nil
}

// policyError turns a refused policy document into AWS's error type.
func policyError(err error) error {
	var ae *apiError
	if errors.As(err, &ae) && ae.Code == api.CodeBadRequest {
		return kmsapi.Errorf(kmsapi.ErrMalformedPolicyDocument, "%s", ae.Detail)
	}
	return err
}

// ---- keys -------------------------------------------------------------

func kmsCreateKey(w *Worker, ctx context.Context, body []byte) (any, error) {
	var req kmsapi.CreateKeyRequest
	if err := kmsapi.Decode(body, &req); err != nil {
		return nil, err
	}
	for name, v := range map[string]*string{"KeySpec": req.KeySpec, "CustomerMasterKeySpec": req.CustomerMasterKeySpec} {
		if v != nil && *v != api.KeySpecSymmetricDefault {
			return nil, unsupported("%s %s is not supported: only SYMMETRIC_DEFAULT keys", name, *v)
		}
	}
	switch {
	case req.KeyUsage != nil && *req.KeyUsage != api.KeyUsageEncryptDecrypt:
		return nil, unsupported("KeyUsage %s is not supported: only ENCRYPT_DECRYPT", *req.KeyUsage)
	case req.Origin != nil && *req.Origin != "AWS_KMS":
		return nil, unsupported("Origin %s is not supported: key material is made by the region's HSM (AWS_KMS)", *req.Origin)
	case req.CustomKeyStoreID != nil || req.XksKeyID != nil:
		return nil, unsupported("custom key stores are not supported")
	case len(req.Tags) > 0:
		return nil, unsupported("tags are not supported")
	}
	in := api.CreateKeyRequest{BypassPolicyLockoutSafetyCheck: req.BypassPolicyLockoutSafetyCheck}
	if req.Description != nil {
		in.Description = *req.Description
	}
	if req.Policy != nil {
		if err := w.checkNewPolicy(ctx, *req.Policy, req.BypassPolicyLockoutSafetyCheck); err != nil {
			return nil, policyError(err)
		}
		in.Policy = *req.Policy
	}
	multi := req.MultiRegion != nil && *req.MultiRegion // AWS's default: single-Region
	in.MultiRegion = &multi
	resp, err := w.callInternal(ctx, api.OpCreateKey, w.apiCreateKey, in)
	if err != nil {
		return nil, err
	}
	return kmsapi.KeyMetadataResponse{KeyMetadata: w.keyMetadata(resp.(*api.Key))}, nil
}

func kmsDescribeKey(w *Worker, ctx context.Context, body []byte) (any, error) {
	var req kmsapi.DescribeKeyRequest
	if err := kmsapi.Decode(body, &req); err != nil {
		return nil, err
	}
	k, err := w.kmsKey(ctx, req.KeyID)
	if err != nil {
		return nil, err
	}
	if err := w.authorize(ctx, authz.ActionDescribeKey, k, nil); err != nil {
		return nil, err
	}
	return kmsapi.KeyMetadataResponse{KeyMetadata: w.keyMetadata(k.Public())}, nil
}

// page checks Limit (1 to 1000, default 100).
func page(limit *int) (int, error) {
	if limit == nil {
		return 100, nil
	}
	if *limit < 1 || *limit > 1000 {
		return 0, validation("Limit must be 1 to 1000, not %d", *limit)
	}
	return *limit, nil
}

func kmsListKeys(w *Worker, ctx context.Context, body []byte) (any, error) {
	var req kmsapi.ListKeysRequest
	if err := kmsapi.Decode(body, &req); err != nil {
		return nil, err
	}
	limit, err := page(req.Limit)
	if err != nil {
		return nil, err
	}
	if req.Marker != nil && !validKeyID(*req.Marker) {
		return nil, kmsapi.Errorf(kmsapi.ErrInvalidMarker, "Marker %q is not one a ListKeys reply gave", *req.Marker)
	}
	resp, err := w.callInternal(ctx, api.OpListKeys, w.apiListKeys, struct{}{})
	if err != nil {
		return nil, err
	}
	out := kmsapi.ListKeysResponse{Keys: []kmsapi.KeyListEntry{}}
	for _, id := range resp.(api.ListKeysResponse).KeyIDs { // sorted
		if req.Marker != nil && id <= *req.Marker {
			continue
		}
		if len(out.Keys) == limit {
			out.Truncated, out.NextMarker = true, out.Keys[limit-1].KeyID
			break
		}
		out.Keys = append(out.Keys, kmsapi.KeyListEntry{KeyID: id, KeyArn: w.keyARN(w.cfg.Region, id)})
	}
	return out, nil
}

// ---- data plane -------------------------------------------------------

// kmsSeal encrypts plaintext under k's current version for the caller
// allowed action, with the encryption context ec; ev is its audit event.
func (w *Worker) kmsSeal(ctx context.Context, k *repl.Key, action, ev string, plaintext []byte, ec map[string]string) ([]byte, error) {
	aad, err := checkContext(ec)
	if err != nil {
		return nil, err
	}
	if err := w.usable(k); err != nil {
		return nil, err
	}
	if err := w.authorize(ctx, action, k, ec); err != nil {
		return nil, err
	}
	key := k
	header, err := blobHeader(key.KeyID, key.CurrentVersion)
	if err != nil {
		return nil, err
	}
	var ct []byte
	err = w.hsmOp("encrypt", func() (err error) {
		ct, err = w.cfg.HSM.Encrypt(ctx, hsmsvc.KeyRef{KeyID: key.KeyID, Version: key.CurrentVersion}, plaintext, blobAAD(header, aad))
		return err
	})
	if errors.Is(err, hsmsvc.ErrNotFound) {
		return nil, w.materialMissing(key.KeyID, key.CurrentVersion)
	}
	if err != nil {
		return nil, fmt.Errorf("encrypt: %w", err)
	}
	w.auditDataPlane(ctx, api.Event{Type: ev, KeyID: key.KeyID, Version: key.CurrentVersion, Action: action, EncryptionContext: ec})
	return append(header, ct...), nil
}

// kmsOpen decrypts blob for the caller allowed action, checking that it
// was made with the key wantKeyID names (if set); it returns the key.
func (w *Worker) kmsOpen(ctx context.Context, blob []byte, wantKeyID *string, action string, ec map[string]string) (*repl.Key, []byte, error) {
	aad, err := checkContext(ec)
	if err != nil {
		return nil, nil, err
	}
	keyID, version, err := parseBlobHeader(blob)
	if err != nil {
		return nil, nil, kmsapi.Errorf(kmsapi.ErrInvalidCiphertext, "the ciphertext is not one mrkrepl made: %v", err)
	}
	if wantKeyID != nil {
		id, err := w.resolveKeyID(ctx, *wantKeyID)
		if err != nil {
			return nil, nil, err
		}
		if id != keyID {
			return nil, nil, kmsapi.Errorf(kmsapi.ErrIncorrectKey, "The key ID in the request does not identify a KMS key that can perform this operation: the ciphertext was made with key %s", keyID)
		}
	}
	k, err := w.kmsDataPlaneKey(ctx, keyID)
	if err != nil {
		return nil, nil, err
	}
	if err := w.usable(k); err != nil {
		return nil, nil, err
	}
	if err := w.authorize(ctx, action, k, ec); err != nil {
		return nil, nil, err
	}
	if !slices.Contains(k.Versions, version) {
		return nil, nil, kmsapi.Errorf(kmsapi.ErrInvalidState, "key %s has no version %d in region %s (yet)", keyID, version, w.cfg.Region)
	}
	var pt []byte
	err = w.hsmOp("decrypt", func() (err error) {
		pt, err = w.cfg.HSM.Decrypt(ctx, hsmsvc.KeyRef{KeyID: keyID, Version: version}, blob[blobHeaderLen:], blobAAD(blob[:blobHeaderLen], aad))
		return err
	})
	if errors.Is(err, hsmsvc.ErrNotFound) {
		return nil, nil, w.materialMissing(keyID, version)
	}
	if err != nil {
		return nil, nil, kmsapi.Errorf(kmsapi.ErrInvalidCiphertext, "the ciphertext does not decrypt with key %s and the given encryption context", keyID)
	}
	w.auditDataPlane(ctx, api.Event{Type: api.EventDecrypt, KeyID: keyID, Version: version, Action: action, EncryptionContext: ec})
	return k, pt, nil
}

func kmsEncrypt(w *Worker, ctx context.Context, body []byte) (any, error) {
	var req kmsapi.EncryptRequest
	if err := kmsapi.Decode(body, &req); err != nil {
		return nil, err
	}
	if len(req.Plaintext) == 0 || len(req.Plaintext) > api.MaxPlaintext {
		return nil, validation("Plaintext must be 1 to %d bytes", api.MaxPlaintext)
	}
	if err := checkAlgorithm(req.EncryptionAlgorithm); err != nil {
		return nil, err
	}
	k, err := w.kmsDataPlaneKey(ctx, req.KeyID)
	if err != nil {
		return nil, err
	}
	if req.DryRun != nil && *req.DryRun {
		if err := w.authorize(ctx, authz.ActionEncrypt, k, req.EncryptionContext); err != nil {
			return nil, err
		}
		return nil, dryRun(req.DryRun)
	}
	blob, err := w.kmsSeal(ctx, k, authz.ActionEncrypt, api.EventEncrypt, req.Plaintext, req.EncryptionContext)
	if err != nil {
		return nil, err
	}
	return kmsapi.EncryptResponse{CiphertextBlob: blob, KeyID: w.keyARN(w.cfg.Region, k.KeyID), EncryptionAlgorithm: "SYMMETRIC_DEFAULT"}, nil
}

func kmsDecrypt(w *Worker, ctx context.Context, body []byte) (any, error) {
	var req kmsapi.DecryptRequest
	if err := kmsapi.Decode(body, &req); err != nil {
		return nil, err
	}
	if req.Recipient != nil {
		return nil, unsupported("Recipient (Nitro Enclaves) is not supported")
	}
	if err := checkAlgorithm(req.EncryptionAlgorithm); err != nil {
		return nil, err
	}
	if err := dryRun(req.DryRun); err != nil {
		return nil, err
	}
	if len(req.CiphertextBlob) == 0 {
		return nil, validation("CiphertextBlob is required")
	}
	k, pt, err := w.kmsOpen(ctx, req.CiphertextBlob, req.KeyID, authz.ActionDecrypt, req.EncryptionContext)
	if err != nil {
		return nil, err
	}
	return kmsapi.DecryptResponse{KeyID: w.keyARN(w.cfg.Region, k.KeyID), Plaintext: pt, EncryptionAlgorithm: "SYMMETRIC_DEFAULT"}, nil
}

func kmsReEncrypt(w *Worker, ctx context.Context, body []byte) (any, error) {
	var req kmsapi.ReEncryptRequest
	if err := kmsapi.Decode(body, &req); err != nil {
		return nil, err
	}
	if err := checkAlgorithm(req.SourceEncryptionAlgorithm); err != nil {
		return nil, err
	}
	if err := checkAlgorithm(req.DestinationEncryptionAlgorithm); err != nil {
		return nil, err
	}
	if err := dryRun(req.DryRun); err != nil {
		return nil, err
	}
	dst, err := w.kmsDataPlaneKey(ctx, req.DestinationKeyID)
	if err != nil {
		return nil, err
	}
	src, pt, err := w.kmsOpen(ctx, req.CiphertextBlob, req.SourceKeyID, authz.ActionReEncryptFrom, req.SourceEncryptionContext)
	if err != nil {
		return nil, err
	}
	defer clear(pt)
	blob, err := w.kmsSeal(ctx, dst, authz.ActionReEncryptTo, api.EventEncrypt, pt, req.DestinationEncryptionContext)
	if err != nil {
		return nil, err
	}
	return kmsapi.ReEncryptResponse{
		CiphertextBlob: blob, SourceKeyID: w.keyARN(w.cfg.Region, src.KeyID), KeyID: w.keyARN(w.cfg.Region, dst.KeyID),
		SourceEncryptionAlgorithm: "SYMMETRIC_DEFAULT", DestinationEncryptionAlgorithm: "SYMMETRIC_DEFAULT",
	}, nil
}

func kmsGenerateDataKey(w *Worker, ctx context.Context, body []byte) (any, error) {
	return w.kmsDataKey(ctx, body, true)
}

func kmsGenerateDataKeyWithoutPlaintext(w *Worker, ctx context.Context, body []byte) (any, error) {
	return w.kmsDataKey(ctx, body, false)
}

func (w *Worker) kmsDataKey(ctx context.Context, body []byte, plaintext bool) (any, error) {
	var req kmsapi.GenerateDataKeyRequest
	if err := kmsapi.Decode(body, &req); err != nil {
		return nil, err
	}
	if req.Recipient != nil {
		return nil, unsupported("Recipient (Nitro Enclaves) is not supported")
	}
	var n int
	switch {
	case req.KeySpec != nil && req.NumberOfBytes != nil:
		return nil, validation("give KeySpec or NumberOfBytes, not both")
	case req.KeySpec != nil && *req.KeySpec == "AES_256":
		n = 32
	case req.KeySpec != nil && *req.KeySpec == "AES_128":
		n = 16
	case req.KeySpec != nil:
		return nil, validation("KeySpec must be AES_256 or AES_128, not %s", *req.KeySpec)
	case req.NumberOfBytes != nil:
		n = *req.NumberOfBytes
		if n < 1 || n > 1024 {
			return nil, validation("NumberOfBytes must be 1 to 1024")
		}
	default:
		return nil, validation("give KeySpec or NumberOfBytes")
	}
	k, err := w.kmsDataPlaneKey(ctx, req.KeyID)
	if err != nil {
		return nil, err
	}
	action := authz.ActionGenerateDataKey
	if !plaintext {
		action = authz.ActionGenerateDataKeyWithoutPlaintext
	}
	if req.DryRun != nil && *req.DryRun {
		if err := w.authorize(ctx, action, k, req.EncryptionContext); err != nil {
			return nil, err
		}
		return nil, dryRun(req.DryRun)
	}
	dk := make([]byte, n)
	if _, err := rand.Read(dk); err != nil {
		return nil, err
	}
	blob, err := w.kmsSeal(ctx, k, action, api.EventGenerateDataKey, dk, req.EncryptionContext)
	if err != nil {
		clear(dk)
		return nil, err
	}
	out := kmsapi.GenerateDataKeyResponse{CiphertextBlob: blob, KeyID: w.keyARN(w.cfg.Region, k.KeyID)}
	if plaintext {
		out.Plaintext = dk
	} else {
		clear(dk)
	}
	return out, nil
}

// ---- multi-Region -----------------------------------------------------

func kmsReplicateKey(w *Worker, ctx context.Context, body []byte) (any, error) {
	var req kmsapi.ReplicateKeyRequest
	if err := kmsapi.Decode(body, &req); err != nil {
		return nil, err
	}
	k, err := w.kmsKey(ctx, req.KeyID)
	if err != nil {
		return nil, err
	}
	if err := w.authorize(ctx, authz.ActionReplicateKey, k, nil); err != nil {
		return nil, err
	}
	switch {
	case len(req.Tags) > 0:
		return nil, unsupported("tags are not supported")
	case k.SingleRegion:
		return nil, unsupported("%s is a single-Region key: only multi-Region keys can be replicated", w.keyARN(w.cfg.Region, k.KeyID))
	case k.Role != api.RolePrimary:
		return nil, unsupported("%s is a replica key; replicate the primary key, in %s", w.keyARN(w.cfg.Region, k.KeyID), k.PrimaryRegion)
	case req.Description != nil && *req.Description != k.Description:
		return nil, unsupported("a replica's Description is the primary key's here (it is shared by the key's regions); omit Description")
	case req.ReplicaRegion == "":
		return nil, validation("ReplicaRegion is required")
	case req.ReplicaRegion == w.cfg.Region || !w.bundle().HasRegion(req.ReplicaRegion):
		return nil, validation("ReplicaRegion %q is not another region of this partition (%s)", req.ReplicaRegion, strings.Join(w.bundle().Regions(), ", "))
	}
	if r, ok := k.Replica(req.ReplicaRegion); ok && (r.State != api.ReplicaFailed || k.HoldsAny(r.Region)) {
		return nil, kmsapi.Errorf(kmsapi.ErrAlreadyExists, "%s already has a replica in %s", w.keyARN(w.cfg.Region, k.KeyID), req.ReplicaRegion)
	}
	in := api.ReplicateKeyRequest{KeyID: k.KeyID, ReplicaRegion: req.ReplicaRegion}
	policy := k.Policy
	if req.Policy != nil {
		if err := w.checkNewPolicy(ctx, *req.Policy, true); err != nil {
			return nil, policyError(err)
		}
		in.Policy, policy = *req.Policy, *req.Policy
	}
	if policy == "" {
		policy = w.adminsPolicy
	}
	if _, err := w.callInternal(ctx, api.OpReplicateKey, w.apiReplicateKey, in); err != nil {
		return nil, err
	}
	m := w.keyMetadata(k.Public())
	m.Arn = w.keyARN(req.ReplicaRegion, k.KeyID)
	m.KeyState, m.Enabled, m.DeletionDate = "Creating", false, nil
	m.CreationDate = epoch(w.cfg.Now())
	m.MultiRegionConfiguration = &kmsapi.MultiRegionConfiguration{
		MultiRegionKeyType: api.RoleReplica,
		PrimaryKey:         &kmsapi.MultiRegionKey{Arn: w.keyARN(w.cfg.Region, k.KeyID), Region: w.cfg.Region},
		ReplicaKeys:        []kmsapi.MultiRegionKey{{Arn: m.Arn, Region: req.ReplicaRegion}},
	}
	return kmsapi.ReplicateKeyResponse{ReplicaKeyMetadata: m, ReplicaPolicy: policy, ReplicaTags: []kmsapi.Tag{}}, nil
}

func kmsUpdatePrimaryRegion(w *Worker, ctx context.Context, body []byte) (any, error) {
	var req kmsapi.UpdatePrimaryRegionRequest
	if err := kmsapi.Decode(body, &req); err != nil {
		return nil, err
	}
	k, err := w.kmsKey(ctx, req.KeyID)
	if err != nil {
		return nil, err
	}
	switch {
	case req.PrimaryRegion == "":
		return nil, validation("PrimaryRegion is required")
	case k.SingleRegion:
		return nil, unsupported("%s is a single-Region key", w.keyARN(w.cfg.Region, k.KeyID))
	}
	_, err = w.callInternal(ctx, api.OpUpdatePrimaryRegion, w.apiUpdatePrimaryRegion,
		api.UpdatePrimaryRegionRequest{KeyID: k.KeyID, PrimaryRegion: req.PrimaryRegion})
	if err != nil {
		return nil, err
	}
	return kmsapi.Empty{}, nil
}

// ---- deletion, enable, disable ----------------------------------------

func kmsScheduleKeyDeletion(w *Worker, ctx context.Context, body []byte) (any, error) {
	var req kmsapi.ScheduleKeyDeletionRequest
	if err := kmsapi.Decode(body, &req); err != nil {
		return nil, err
	}
	days := 30 // AWS's default
	if req.PendingWindowInDays != nil {
		days = *req.PendingWindowInDays
		if days < 7 || days > 30 {
			return nil, validation("PendingWindowInDays must be 7 to 30, not %d", days)
		}
	}
	k, err := w.kmsKey(ctx, req.KeyID)
	if err != nil {
		return nil, err
	}
	resp, err := w.callInternal(ctx, api.OpScheduleKeyDeletion, w.apiScheduleKeyDeletion,
		api.ScheduleKeyDeletionRequest{KeyID: k.KeyID, PendingWindowDays: days})
	if err != nil {
		return nil, err
	}
	key := resp.(*api.Key)
	out := kmsapi.ScheduleKeyDeletionResponse{KeyID: w.keyARN(w.cfg.Region, key.KeyID), KeyState: kmsKeyState(key), PendingWindowInDays: days}
	if key.DeletionDate != nil {
		out.DeletionDate = epoch(*key.DeletionDate)
	}
	return out, nil
}

func kmsCancelKeyDeletion(w *Worker, ctx context.Context, body []byte) (any, error) {
	var req kmsapi.KeyIDRequest
	if err := kmsapi.Decode(body, &req); err != nil {
		return nil, err
	}
	k, err := w.kmsKey(ctx, req.KeyID)
	if err != nil {
		return nil, err
	}
	if k.KeyState != api.KeyStatePendingDeletion {
		if err := w.authorize(ctx, authz.ActionCancelKeyDeletion, k, nil); err != nil {
			return nil, err
		}
		return nil, kmsapi.Errorf(kmsapi.ErrInvalidState, "%s is not pending deletion", w.keyARN(w.cfg.Region, k.KeyID))
	}
	if _, err := w.callInternal(ctx, api.OpCancelKeyDeletion, w.apiCancelKeyDeletion, api.KeyRequest{KeyID: k.KeyID}); err != nil {
		return nil, err
	}
	// As in AWS, a key whose deletion is cancelled is disabled.
	if err := w.setEnabled(ctx, k.KeyID, false); err != nil {
		return nil, err
	}
	return kmsapi.KeyIDResponse{KeyID: w.keyARN(w.cfg.Region, k.KeyID)}, nil
}

// setEnabled enables or disables the key in this region (as in AWS, each
// region's own: not shared with the key's other regions).
func (w *Worker) setEnabled(ctx context.Context, keyID string, enabled bool) error {
	now := w.cfg.Now().UTC()
	_, err := w.updateLiveKey(ctx, keyID, func(k *repl.Key) (bool, error) {
		if k.KeyState == api.KeyStatePendingDeletion {
			return false, kmsapi.Errorf(kmsapi.ErrInvalidState, "%s is pending deletion.", w.keyARN(w.cfg.Region, keyID))
		}
		if k.Enabled == enabled {
			return false, nil
		}
		k.Enabled, k.UpdatedAt = enabled, now
		return true, nil
	})
	if err != nil {
		return err
	}
	ev, action := api.EventKeyDisabled, authz.ActionDisableKey
	if enabled {
		ev, action = api.EventKeyEnabled, authz.ActionEnableKey
	}
	w.event(ctx, api.Event{Type: ev, KeyID: keyID, Action: action})
	return nil
}

func kmsEnableKey(w *Worker, ctx context.Context, body []byte) (any, error) {
	return w.kmsEnable(ctx, body, true)
}

func kmsDisableKey(w *Worker, ctx context.Context, body []byte) (any, error) {
	return w.kmsEnable(ctx, body, false)
}

func (w *Worker) kmsEnable(ctx context.Context, body []byte, enabled bool) (any, error) {
	var req kmsapi.KeyIDRequest
	if err := kmsapi.Decode(body, &req); err != nil {
		return nil, err
	}
	k, err := w.kmsKey(ctx, req.KeyID)
	if err != nil {
		return nil, err
	}
	action := authz.ActionDisableKey
	if enabled {
		action = authz.ActionEnableKey
	}
	if err := w.authorize(ctx, action, k, nil); err != nil {
		return nil, err
	}
	if err := w.setEnabled(ctx, k.KeyID, enabled); err != nil {
		return nil, err
	}
	return kmsapi.Empty{}, nil
}

// ---- rotation ---------------------------------------------------------

func kmsRotateKeyOnDemand(w *Worker, ctx context.Context, body []byte) (any, error) {
	var req kmsapi.KeyIDRequest
	if err := kmsapi.Decode(body, &req); err != nil {
		return nil, err
	}
	k, err := w.kmsKey(ctx, req.KeyID)
	if err != nil {
		return nil, err
	}
	if err := w.authorize(ctx, authz.ActionRotateKeyOnDemand, k, nil); err != nil {
		return nil, err
	}
	arn := w.keyARN(w.cfg.Region, k.KeyID)
	switch {
	case k.Role != api.RolePrimary:
		return nil, unsupported("%s is a replica key: rotate its primary key, in %s", arn, k.PrimaryRegion)
	case k.KeyState != api.KeyStateEnabled || !k.Enabled:
		return nil, kmsapi.Errorf(kmsapi.ErrInvalidState, "%s is %s", arn, kmsKeyState(k.Public()))
	}
	_, err = w.callInternal(ctx, api.OpRotateKey, w.apiRotateKey, api.RotateKeyRequest{KeyID: k.KeyID})
	var ae *apiError
	if errors.As(err, &ae) && ae.Code == api.CodeConflict {
		return nil, kmsapi.Errorf(kmsapi.ErrConflict, "%s", ae.Detail) // a rotation still in progress
	}
	if err != nil {
		return nil, err
	}
	return kmsapi.KeyIDResponse{KeyID: arn}, nil
}

func kmsGetKeyRotationStatus(w *Worker, ctx context.Context, body []byte) (any, error) {
	var req kmsapi.KeyIDRequest
	if err := kmsapi.Decode(body, &req); err != nil {
		return nil, err
	}
	k, err := w.kmsKey(ctx, req.KeyID)
	if err != nil {
		return nil, err
	}
	if err := w.authorize(ctx, authz.ActionGetKeyRotationStatus, k, nil); err != nil {
		return nil, err
	}
	out := kmsapi.GetKeyRotationStatusResponse{KeyID: w.keyARN(w.cfg.Region, k.KeyID)}
	if s := k.Staged(); s != 0 {
		if d := k.Version(s); d != nil {
			t := epoch(d.CreatedAt)
			out.OnDemandRotationStartDate = &t
		}
	}
	return out, nil
}

func kmsListKeyRotations(w *Worker, ctx context.Context, body []byte) (any, error) {
	var req kmsapi.ListKeyRotationsRequest
	if err := kmsapi.Decode(body, &req); err != nil {
		return nil, err
	}
	limit, err := page(req.Limit)
	if err != nil {
		return nil, err
	}
	after := uint64(0)
	if req.Marker != nil {
		if after, err = strconv.ParseUint(*req.Marker, 10, 32); err != nil {
			return nil, kmsapi.Errorf(kmsapi.ErrInvalidMarker, "Marker %q is not one a ListKeyRotations reply gave", *req.Marker)
		}
	}
	k, err := w.kmsKey(ctx, req.KeyID)
	if err != nil {
		return nil, err
	}
	if err := w.authorize(ctx, authz.ActionListKeyRotations, k, nil); err != nil {
		return nil, err
	}
	arn := w.keyARN(w.cfg.Region, k.KeyID)
	out := kmsapi.ListKeyRotationsResponse{Rotations: []kmsapi.RotationsListEntry{}}
	for _, v := range k.Versions { // sorted
		if v <= 1 || uint64(v) <= after {
			continue
		}
		var at time.Time
		if d := k.Version(v); d != nil {
			at = d.CreatedAt
			if d.ActivatedAt != nil {
				at = *d.ActivatedAt
			}
		} else if d, ok := k.VersionDates[v]; ok {
			at = d.CreatedAt
			if d.ActivatedAt != nil {
				at = *d.ActivatedAt
			}
		}
		if len(out.Rotations) == limit {
			out.Truncated, out.NextMarker = true, strconv.FormatUint(uint64(v-1), 10)
			break
		}
		out.Rotations = append(out.Rotations, kmsapi.RotationsListEntry{KeyID: arn, RotationDate: epoch(at), RotationType: "ON_DEMAND"})
	}
	return out, nil
}

// ---- policies ---------------------------------------------------------

func checkPolicyName(name *string) error {
	if name != nil && *name != "default" {
		return kmsapi.Errorf(kmsapi.ErrNotFound, "a key has one policy, named default, not %q", *name)
	}
	return nil
}

func kmsGetKeyPolicy(w *Worker, ctx context.Context, body []byte) (any, error) {
	var req kmsapi.GetKeyPolicyRequest
	if err := kmsapi.Decode(body, &req); err != nil {
		return nil, err
	}
	if err := checkPolicyName(req.PolicyName); err != nil {
		return nil, err
	}
	k, err := w.kmsKey(ctx, req.KeyID)
	if err != nil {
		return nil, err
	}
	resp, err := w.callInternal(ctx, api.OpGetKeyPolicy, w.apiGetKeyPolicy, api.KeyPolicyRequest{KeyID: k.KeyID})
	if err != nil {
		return nil, err
	}
	return kmsapi.GetKeyPolicyResponse{Policy: resp.(api.KeyPolicy).Policy, PolicyName: "default"}, nil
}

func kmsPutKeyPolicy(w *Worker, ctx context.Context, body []byte) (any, error) {
	var req kmsapi.PutKeyPolicyRequest
	if err := kmsapi.Decode(body, &req); err != nil {
		return nil, err
	}
	if err := checkPolicyName(req.PolicyName); err != nil {
		return nil, err
	}
	k, err := w.kmsKey(ctx, req.KeyID)
	if err != nil {
		return nil, err
	}
	if err := w.authorize(ctx, authz.ActionPutKeyPolicy, k, nil); err != nil {
		return nil, err
	}
	if err := w.checkNewPolicy(ctx, req.Policy, req.BypassPolicyLockoutSafetyCheck); err != nil {
		return nil, policyError(err)
	}
	_, err = w.callInternal(ctx, api.OpPutKeyPolicy, w.apiPutKeyPolicy, api.PutKeyPolicyRequest{
		KeyID: k.KeyID, Policy: req.Policy, BypassPolicyLockoutSafetyCheck: req.BypassPolicyLockoutSafetyCheck})
	if err != nil {
		return nil, err
	}
	return kmsapi.Empty{}, nil
}

// ---- aliases ----------------------------------------------------------

// aliasRecord is an alias in the region's ALIASES bucket, keyed by name.
type aliasRecord struct {
	AliasName   string    `json:"alias_name"`
	TargetKeyID string    `json:"target_key_id"`
	CreatedAt   time.Time `json:"created_at"`
	UpdatedAt   time.Time `json:"updated_at"`
}

// aliasRE: AWS's alias names less ':', which a bucket key cannot hold.
var aliasRE = regexp.MustCompile(`^alias/[a-zA-Z0-9/_-]{1,250}$`)

func checkAliasName(name string) error {
	if !aliasRE.MatchString(name) || strings.Contains(name, "//") || strings.HasSuffix(name, "/") {
		return kmsapi.Errorf(kmsapi.ErrInvalidAliasName, "alias name %q must be alias/ followed by 1 to 250 of a-z A-Z 0-9 / _ -", name)
	}
	if strings.HasPrefix(name, "alias/aws/") {
		return kmsapi.Errorf(kmsapi.ErrInvalidAliasName, "alias names beginning with alias/aws/ are reserved")
	}
	return nil
}

func (w *Worker) loadAlias(ctx context.Context, name string) (*aliasRecord, error) {
	if err := checkAliasName(name); err != nil {
		return nil, kmsapi.Errorf(kmsapi.ErrNotFound, "Alias %s is not found.", w.aliasARN(name))
	}
	a, _, err := getJSON[aliasRecord](ctx, w.res.Aliases, name)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, kmsapi.Errorf(kmsapi.ErrNotFound, "Alias %s is not found.", w.aliasARN(name))
	}
	return a, err
}

// aliasTarget loads the key an alias is to point at: a key id or key ARN,
// not another alias; not pending deletion.
func (w *Worker) aliasTarget(ctx context.Context, target string) (*repl.Key, error) {
	if strings.HasPrefix(target, "alias/") || strings.Contains(target, ":alias/") {
		return nil, validation("TargetKeyId must be a key id or key ARN, not an alias")
	}
	k, err := w.kmsKey(ctx, target)
	if err != nil {
		return nil, err
	}
	if k.KeyState == api.KeyStatePendingDeletion {
		return nil, kmsapi.Errorf(kmsapi.ErrInvalidState, "%s is pending deletion.", w.keyARN(w.cfg.Region, k.KeyID))
	}
	return k, nil
}

func kmsCreateAlias(w *Worker, ctx context.Context, body []byte) (any, error) {
	var req kmsapi.AliasRequest
	if err := kmsapi.Decode(body, &req); err != nil {
		return nil, err
	}
	if err := checkAliasName(req.AliasName); err != nil {
		return nil, err
	}
	k, err := w.aliasTarget(ctx, req.TargetKeyID)
	if err != nil {
		return nil, err
	}
	if err := w.authorize(ctx, authz.ActionCreateAlias, k, nil); err != nil {
		return nil, err
	}
	now := w.cfg.Now().UTC()
	_, err = createJSON(ctx, w.res.Aliases, req.AliasName, &aliasRecord{AliasName: req.AliasName, TargetKeyID: k.KeyID, CreatedAt: now, UpdatedAt: now})
	if errors.Is(err, jetstream.ErrKeyExists) {
		return nil, kmsapi.Errorf(kmsapi.ErrAlreadyExists, "An alias with the name %s already exists", w.aliasARN(req.AliasName))
	}
	if err != nil {
		return nil, err
	}
	w.event(ctx, api.Event{Type: api.EventAliasCreated, KeyID: k.KeyID, Action: authz.ActionCreateAlias, Reason: req.AliasName})
	return kmsapi.Empty{}, nil
}

func kmsUpdateAlias(w *Worker, ctx context.Context, body []byte) (any, error) {
	var req kmsapi.AliasRequest
	if err := kmsapi.Decode(body, &req); err != nil {
		return nil, err
	}
	a, err := w.loadAlias(ctx, req.AliasName)
	if err != nil {
		return nil, err
	}
	k, err := w.aliasTarget(ctx, req.TargetKeyID)
	if err != nil {
		return nil, err
	}
	old, err := w.loadKey(ctx, a.TargetKeyID)
	if err != nil {
		old = &repl.Key{KeyID: a.TargetKeyID} // gone: the admins' to move
	}
	if err := w.authorize(ctx, authz.ActionUpdateAlias, old, nil); err != nil {
		return nil, err
	}
	if err := w.authorize(ctx, authz.ActionUpdateAlias, k, nil); err != nil {
		return nil, err
	}
	_, err = updateJSON(ctx, w.res.Aliases, req.AliasName, func(r *aliasRecord) (bool, error) {
		r.TargetKeyID, r.UpdatedAt = k.KeyID, w.cfg.Now().UTC()
		return true, nil
	})
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, kmsapi.Errorf(kmsapi.ErrNotFound, "Alias %s is not found.", w.aliasARN(req.AliasName))
	}
	if err != nil {
		return nil, err
	}
	w.event(ctx, api.Event{Type: api.EventAliasUpdated, KeyID: k.KeyID, Action: authz.ActionUpdateAlias, Reason: req.AliasName + " (was " + a.TargetKeyID + ")"})
	return kmsapi.Empty{}, nil
}

func kmsDeleteAlias(w *Worker, ctx context.Context, body []byte) (any, error) {
	var req kmsapi.DeleteAliasRequest
	if err := kmsapi.Decode(body, &req); err != nil {
		return nil, err
	}
	a, err := w.loadAlias(ctx, req.AliasName)
	if err != nil {
		return nil, err
	}
	k, err := w.loadKey(ctx, a.TargetKeyID)
	if err != nil {
		k = &repl.Key{KeyID: a.TargetKeyID}
	}
	if err := w.authorize(ctx, authz.ActionDeleteAlias, k, nil); err != nil {
		return nil, err
	}
	if err := w.res.Aliases.Purge(ctx, req.AliasName); err != nil {
		return nil, err
	}
	w.event(ctx, api.Event{Type: api.EventAliasDeleted, KeyID: a.TargetKeyID, Action: authz.ActionDeleteAlias, Reason: req.AliasName})
	return kmsapi.Empty{}, nil
}

func kmsListAliases(w *Worker, ctx context.Context, body []byte) (any, error) {
	var req kmsapi.ListAliasesRequest
	if err := kmsapi.Decode(body, &req); err != nil {
		return nil, err
	}
	limit, err := page(req.Limit)
	if err != nil {
		return nil, err
	}
	if req.Marker != nil && checkAliasName(*req.Marker) != nil {
		return nil, kmsapi.Errorf(kmsapi.ErrInvalidMarker, "Marker %q is not one a ListAliases reply gave", *req.Marker)
	}
	filter := ""
	if req.KeyID != nil {
		if strings.HasPrefix(*req.KeyID, "alias/") || strings.Contains(*req.KeyID, ":alias/") {
			return nil, validation("KeyId must be a key id or key ARN")
		}
		if filter, err = w.resolveKeyID(ctx, *req.KeyID); err != nil {
			return nil, err
		}
	}
	// Who may list aliases is the region's policy's business (as in AWS,
	// an IAM permission, not a key policy's).
	if err := w.authorize(ctx, authz.ActionListAliases, nil, nil); err != nil {
		return nil, err
	}
	lister, err := w.res.Aliases.ListKeys(ctx)
	if err != nil {
		return nil, err
	}
	var names []string
	for n := range lister.Keys() {
		if req.Marker == nil || n > *req.Marker {
			names = append(names, n)
		}
	}
	slices.Sort(names)
	out := kmsapi.ListAliasesResponse{Aliases: []kmsapi.AliasListEntry{}}
	for _, n := range names {
		a, _, err := getJSON[aliasRecord](ctx, w.res.Aliases, n)
		if err != nil || filter != "" && a.TargetKeyID != filter {
			continue
		}
		if len(out.Aliases) == limit {
			out.Truncated, out.NextMarker = true, out.Aliases[limit-1].AliasName
			break
		}
		c, u := epoch(a.CreatedAt), epoch(a.UpdatedAt)
		out.Aliases = append(out.Aliases, kmsapi.AliasListEntry{
			AliasName: a.AliasName, AliasArn: w.aliasARN(a.AliasName), TargetKeyID: a.TargetKeyID,
			CreationDate: &c, LastUpdatedDate: &u,
		})
	}
	return out, nil
}
