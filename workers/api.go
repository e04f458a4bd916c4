package workers

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/mrkrepl/mrkrepl/api"
	"github.com/mrkrepl/mrkrepl/hsmsvc"
	"github.com/mrkrepl/mrkrepl/internal/authz"
	"github.com/mrkrepl/mrkrepl/internal/layout"
	"github.com/mrkrepl/mrkrepl/internal/obs"
	"github.com/mrkrepl/mrkrepl/internal/repl"
	"github.com/mrkrepl/mrkrepl/messages"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"
)

// maxRequest bounds a request body (a 4 KiB plaintext in base64 plus JSON).
const maxRequest = 16 << 10

// maxPolicyRequest bounds the body of a request that carries a key policy
// (create-key, put-key-policy, replicate-key): a policy of up to 32 KiB, as
// AWS KMS allows, escaped in JSON.
const maxPolicyRequest = 80 << 10

// requestLimit is the largest body op accepts.
func requestLimit(op string) int {
	switch op {
	case api.OpCreateKey, api.OpPutKeyPolicy, api.OpReplicateKey:
		return maxPolicyRequest
	}
	return maxRequest
}

// startAPI serves the region's request API: every operation on
// mrk.<region>.api.<op>, in micro's default queue group (shared with the
// region's other workers, so each request is served once), and the micro
// discovery protocol for them (apiService).
func (w *Worker) startAPI() (*apiService, error) {
	handlers := map[string]func(context.Context, []byte) (any, error){
		api.OpCreateKey:           w.apiCreateKey,
		api.OpDescribeKey:         w.apiDescribeKey,
		api.OpListKeys:            w.apiListKeys,
		api.OpReplicateKey:        w.apiReplicateKey,
		api.OpDescribeReplication: w.apiDescribeReplication,
		api.OpEncrypt:             w.apiEncrypt,
		api.OpDecrypt:             w.apiDecrypt,
		api.OpGenerateDataKey:     w.apiGenerateDataKey,
		api.OpRotateKey:           w.apiRotateKey,
		api.OpUpdatePrimaryRegion: w.apiUpdatePrimaryRegion,
		api.OpScheduleKeyDeletion: w.apiScheduleKeyDeletion,
		api.OpCancelKeyDeletion:   w.apiCancelKeyDeletion,
		api.OpGetKeyPolicy:        w.apiGetKeyPolicy,
		api.OpPutKeyPolicy:        w.apiPutKeyPolicy,
		// The KMS endpoint's access keys (kms_accesskeys.go): admins only.
		api.OpCreateAccessKey: w.apiCreateAccessKey,
		api.OpListAccessKeys:  w.apiListAccessKeys,
		api.OpDeleteAccessKey: w.apiDeleteAccessKey,
	}
	svc := newAPIService(obs.ReadBuildInfo().SemVer(), // mrkrepl_build_info's version, as SemVer
		"mrkrepl region "+w.cfg.Region, map[string]string{"region": w.cfg.Region})
	ops := make([]string, 0, len(handlers))
	for op := range handlers {
		ops = append(ops, op)
	}
	slices.Sort(ops)
	for _, op := range ops {
		if err := svc.addEndpoint(w.cfg.Conn, op, layout.APISubject(w.cfg.Region, op), w.endpoint(svc, op, handlers[op])); err != nil {
			svc.stop()
			return nil, fmt.Errorf("endpoint %s: %w", op, err)
		}
	}
	if err := svc.startDiscovery(w.cfg.Conn); err != nil {
		svc.stop()
		return nil, fmt.Errorf("service discovery: %w", err)
	}
	return svc, nil
}

// endpoint adapts fn to a subscription handler. The subscription delivers
// one request after another; each is served on a goroutine of its own (at
// most 2×Concurrency at once, then the subscription waits), so that one
// slow HSM call or KV round trip does not hold up the endpoint's other
// requests. The service's stats count each request when it is answered.
func (w *Worker) endpoint(svc *apiService, op string, fn func(context.Context, []byte) (any, error)) nats.MsgHandler {
	return func(m *nats.Msg) {
		arrived := time.Now()
		w.apiSem <- struct{}{}
		started := w.inflight.Go(func() {
			defer func() { <-w.apiSem }()
			code, detail := w.serve(op, fn, m)
			svc.record(op, time.Since(arrived), code, detail)
		})
		if !started {
			<-w.apiSem
			w.answer(op, m.RespondMsg(errorReply(api.CodeInternal, "worker stopping")))
			svc.record(op, time.Since(arrived), api.CodeInternal, "worker stopping")
		}
	}
}

// errorReply is an error answer in micro's form: no data, the code and
// the description in headers.
func errorReply(code, detail string) *nats.Msg {
	return &nats.Msg{Header: nats.Header{micro.ErrorCodeHeader: []string{code}, micro.ErrorHeader: []string{detail}}}
}

// serve runs one request of op and answers it; it returns the error code
// and description it answered, if any (for the service's stats).
func (w *Worker) serve(op string, fn func(context.Context, []byte) (any, error), req *nats.Msg) (code, detail string) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var resp any
	data := req.Data
	p, err := w.principalOf(req.Header)
	if err == nil {
		ctx = withPrincipal(ctx, p)
		switch {
		case len(data) > requestLimit(op):
			err = badRequest("request of %d bytes exceeds %d", len(data), requestLimit(op))
		case keyOps[op]:
			if err = w.authorizeKeyOp(ctx, op, data); err == nil {
				resp, err = fn(ctx, data)
			}
		default:
			resp, err = fn(ctx, data)
		}
	}
	if err != nil {
		w.met.requests.WithLabelValues(op, "error").Inc()
		var ae *apiError
		if !errors.As(err, &ae) {
			w.log.Error("request failed", "op", op, "err", err)
			ae = &apiError{Code: api.CodeInternal, Detail: "internal error"}
		}
		w.answer(op, req.RespondMsg(errorReply(ae.Code, ae.Detail)))
		return ae.Code, ae.Detail
	}
	w.met.requests.WithLabelValues(op, "ok").Inc()
	out, err := json.Marshal(resp)
	if err != nil {
		w.log.Error("response not encoded", "op", op, "err", err)
		w.answer(op, req.RespondMsg(errorReply(api.CodeInternal, "internal error")))
		return api.CodeInternal, "internal error"
	}
	w.answer(op, req.Respond(out))
	return "", ""
}

// answer logs a reply that could not be sent (a request published without
// a reply subject is answered into the void: nats.ErrMsgNoReply).
func (w *Worker) answer(op string, err error) {
	if err != nil && !errors.Is(err, nats.ErrMsgNoReply) {
		w.log.Warn("response not sent", "op", op, "err", err)
	}
}

// decodeKeyRequest is decodeRequest for a request that names a key
// (*keyID, a field of v): the key id must be well formed too.
func decodeKeyRequest(data []byte, v any, keyID *string) error {
	if err := decodeRequest(data, v); err != nil {
		return err
	}
	return checkKeyID(*keyID)
}

// checkKeyID refuses a malformed key id as a bad request.
func checkKeyID(id string) error {
	if !messages.IsKeyID(id) {
		return badRequest("invalid key id %q", id)
	}
	return nil
}

// decodeRequest parses a JSON request strictly.
func decodeRequest(data []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return badRequest("invalid request: %v", err)
	}
	if dec.More() {
		return badRequest("invalid request: trailing data")
	}
	return nil
}

func (w *Worker) apiCreateKey(ctx context.Context, data []byte) (any, error) {
	var req api.CreateKeyRequest
	if err := decodeRequest(data, &req); err != nil {
		return nil, err
	}
	if req.KeyUsage == "" {
		req.KeyUsage = api.KeyUsageEncryptDecrypt
	}
	if req.KeyUsage != api.KeyUsageEncryptDecrypt {
		return nil, badRequest("unsupported key usage %q (supported: %s)", req.KeyUsage, api.KeyUsageEncryptDecrypt)
	}
	if len(req.Description) > 8192 {
		return nil, badRequest("description longer than 8192 bytes")
	}
	if err := w.authorize(ctx, opActions[api.OpCreateKey], nil, nil); err != nil {
		return nil, err
	}
	policy := req.Policy
	if policy == "" {
		policy = w.defaultKeyPolicy(ctx)
	} else if err := w.checkNewPolicy(ctx, policy, req.BypassPolicyLockoutSafetyCheck); err != nil {
		return nil, err
	}
	now := w.cfg.Now().UTC()
	key := &repl.Key{
		KeyID: messages.NewKeyID(), Partition: w.bundle().Partition(), Region: w.cfg.Region,
		Role: repl.Primary, PrimaryRegion: w.cfg.Region, KeySpec: api.KeySpecSymmetricDefault,
		KeyUsage: req.KeyUsage, Description: req.Description, Enabled: true,
		Versions: []uint32{1}, CurrentVersion: 1, CreatedAt: now, UpdatedAt: now,
		KeyState: repl.KeyEnabled, Epoch: 1, SingleRegion: req.MultiRegion != nil && !*req.MultiRegion,
		VersionDetails: []repl.KeyVersion{{
			Version: 1, State: repl.VersionCurrent, ReplicatedTo: []string{w.cfg.Region}, CreatedAt: now, ActivatedAt: &now,
		}},
		Policy: policy,
	}
	err := w.hsmOp("generate_key", func() error {
		return w.cfg.HSM.GenerateKey(ctx, hsmsvc.KeyRef{KeyID: key.KeyID, Version: 1})
	})
	if err != nil {
		return nil, fmt.Errorf("generate key: %w", err)
	}
	if _, err := createJSON(ctx, w.res.Keys, key.KeyID, key); err != nil {
		_ = w.cfg.HSM.DestroyKey(ctx, hsmsvc.KeyRef{KeyID: key.KeyID, Version: 1})
		return nil, fmt.Errorf("store key: %w", err)
	}
	w.event(ctx, api.Event{Type: api.EventKeyCreated, KeyID: key.KeyID})
	w.log.Info("key created", "key_id", key.KeyID)
	return key.Public(), nil
}

func (w *Worker) apiDescribeKey(ctx context.Context, data []byte) (any, error) {
	var req api.KeyRequest
	if err := decodeKeyRequest(data, &req, &req.KeyID); err != nil {
		return nil, err
	}
	key, err := w.describe(ctx, req.KeyID)
	if err != nil {
		return nil, err
	}
	// The record says which versions the region holds; the HSM may not
	// (its state lost or replaced): say so rather than look healthy.
	for _, v := range key.Versions {
		ok, err := w.cfg.HSM.HasKey(ctx, hsmsvc.KeyRef{KeyID: key.KeyID, Version: v})
		if err != nil {
			return nil, fmt.Errorf("describe key %s: version %d: %w", key.KeyID, v, err)
		}
		if !ok {
			key.MaterialMissing = append(key.MaterialMissing, v)
		}
	}
	return key, nil
}

// materialMissing is the answer to an encrypt or decrypt with a version
// the region's records list but its HSM does not hold.
func (w *Worker) materialMissing(keyID string, version uint32) error {
	return conflict("key %s version %d: its material is missing from the HSM of region %s (describe-key lists it in material_missing)", keyID, version, w.cfg.Region)
}

func (w *Worker) apiListKeys(ctx context.Context, data []byte) (any, error) {
	if len(data) > 0 {
		var req struct{}
		if err := decodeRequest(data, &req); err != nil {
			return nil, err
		}
	}
	if err := w.authorize(ctx, opActions[api.OpListKeys], nil, nil); err != nil {
		return nil, err
	}
	lister, err := w.res.Keys.ListKeys(ctx)
	if err != nil {
		return nil, err
	}
	ids := []string{}
	for k := range lister.Keys() {
		ids = append(ids, k)
	}
	slices.Sort(ids)
	return api.ListKeysResponse{KeyIDs: ids}, nil
}

func (w *Worker) apiReplicateKey(ctx context.Context, data []byte) (any, error) {
	var req api.ReplicateKeyRequest
	if err := decodeRequest(data, &req); err != nil {
		return nil, err
	}
	if err := w.refuseSingleRegion(ctx, req.KeyID); err != nil { // kms.go
		return nil, err
	}
	if req.Policy != "" {
		if err := checkKeyID(req.KeyID); err != nil {
			return nil, err
		}
		if !w.bundle().HasRegion(req.ReplicaRegion) || req.ReplicaRegion == w.cfg.Region {
			return nil, badRequest("region %q is not another region of partition %q", req.ReplicaRegion, w.bundle().Partition())
		}
		if err := w.setReplicaPolicy(ctx, req.KeyID, req.ReplicaRegion, req.Policy); err != nil {
			return nil, err
		}
	}
	if req.ClientToken == "" {
		rec, err := w.startReplication(ctx, req.KeyID, req.ReplicaRegion)
		if err != nil {
			return nil, err
		}
		return rec.Public(), nil
	}
	return w.replicateWithToken(ctx, req)
}

// tokenRecord is what a client token stands for (TOKENS bucket).
type tokenRecord struct {
	KeyID         string `json:"key_id"`
	ReplicaRegion string `json:"replica_region"`
	ReplicationID string `json:"replication_id"`
}

// replicateWithToken makes replicate-key idempotent per client token: the
// first request with a token records the run it started (or found); every
// repeat returns that run as it is now.
func (w *Worker) replicateWithToken(ctx context.Context, req api.ReplicateKeyRequest) (any, error) {
	if !validToken(req.ClientToken) {
		return nil, badRequest("client token must be 1 to 64 printable ASCII characters")
	}
	key := tokenKey(req.ClientToken)
	if tok, _, err := getJSON[tokenRecord](ctx, w.res.Tokens, key); err == nil {
		if tok.KeyID != req.KeyID || tok.ReplicaRegion != req.ReplicaRegion {
			return nil, conflict("client token already used for key %s to %s", tok.KeyID, tok.ReplicaRegion)
		}
		rec, _, err := getJSON[repl.Run](ctx, w.res.Repl, tok.ReplicationID)
		if err != nil {
			return nil, err
		}
		return rec.Public(), nil
	} else if !errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, err
	}
	rec, err := w.startReplication(ctx, req.KeyID, req.ReplicaRegion)
	if err != nil {
		return nil, err
	}
	tok := &tokenRecord{KeyID: req.KeyID, ReplicaRegion: req.ReplicaRegion, ReplicationID: rec.ID}
	if _, err := createJSON(ctx, w.res.Tokens, key, tok); err != nil {
		if errors.Is(err, jetstream.ErrKeyExists) {
			// A concurrent request with the same token won: answer with its run.
			return w.replicateWithToken(ctx, req)
		}
		return nil, err
	}
	return rec.Public(), nil
}

func validToken(s string) bool {
	if len(s) == 0 || len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < 0x21 || s[i] > 0x7e {
			return false
		}
	}
	return true
}

// tokenKey maps a client token to a valid KV key.
func tokenKey(token string) string {
	sum := sha256.Sum256([]byte(token))
	return hex.EncodeToString(sum[:])
}

func (w *Worker) apiGenerateDataKey(ctx context.Context, data []byte) (any, error) {
	var req api.GenerateDataKeyRequest
	if err := decodeRequest(data, &req); err != nil {
		return nil, err
	}
	n := req.NumberOfBytes
	if n == 0 {
		n = 32
	}
	if n != 16 && n != 24 && n != 32 {
		return nil, badRequest("number_of_bytes must be 16, 24 or 32")
	}
	dk := make([]byte, n)
	if _, err := rand.Read(dk); err != nil {
		return nil, err
	}
	ct, err := w.encrypt(ctx, api.OpGenerateDataKey, api.EncryptRequest{KeyID: req.KeyID, Plaintext: dk, EncryptionContext: req.EncryptionContext, AAD: req.AAD})
	if err != nil {
		clear(dk)
		return nil, err
	}
	return api.GenerateDataKeyResponse{KeyID: ct.KeyID, Version: ct.Version, Plaintext: dk, CiphertextBlob: ct.CiphertextBlob}, nil
}

func mustJSON(v any) []byte {
	b, _ := json.Marshal(v)
	return b
}

func (w *Worker) apiDescribeReplication(ctx context.Context, data []byte) (any, error) {
	var req api.ReplicationRequest
	if err := decodeRequest(data, &req); err != nil {
		return nil, err
	}
	if !messages.IsID(req.ReplicationID) {
		return nil, badRequest("invalid replication id %q", req.ReplicationID)
	}
	rec, _, err := getJSON[repl.Run](ctx, w.res.Repl, req.ReplicationID)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, notFound("replication %s not found in region %s", req.ReplicationID, w.cfg.Region)
	}
	if err != nil {
		return nil, err
	}
	// The run's key decides who may see it. Where the key is not (or no
	// longer) held, a destination's run is decided by the policy its init
	// carried for the replica, else it is the admins' to see.
	k, err := w.loadKey(ctx, rec.KeyID)
	if err != nil {
		k = &repl.Key{KeyID: rec.KeyID, Policy: rec.Policy}
	}
	if err := w.authorize(ctx, opActions[api.OpDescribeReplication], k, nil); err != nil {
		return nil, err
	}
	return rec.Public(), nil
}

// usableKey returns the key's record if it can be used in this region
// (for the data plane: the record may be the key cache's, not to be changed).
func (w *Worker) usableKey(ctx context.Context, keyID string) (*repl.Key, error) {
	if err := checkKeyID(keyID); err != nil {
		return nil, err
	}
	key, err := w.dataPlaneKey(ctx, keyID)
	if err != nil {
		return nil, err
	}
	if !key.Enabled {
		return nil, conflict("key %s is disabled", keyID)
	}
	if key.KeyState == repl.KeyPendingDeletion {
		return nil, conflict("key %s is pending deletion in %s", keyID, w.cfg.Region)
	}
	return key, nil
}

func (w *Worker) apiEncrypt(ctx context.Context, data []byte) (any, error) {
	var req api.EncryptRequest
	if err := decodeRequest(data, &req); err != nil {
		return nil, err
	}
	if len(req.Plaintext) == 0 || len(req.Plaintext) > api.MaxPlaintext {
		return nil, badRequest("plaintext must be 1 to %d bytes", api.MaxPlaintext)
	}
	return w.encrypt(ctx, api.OpEncrypt, req)
}

// encrypt serves encrypt and generate-data-key (op): the caller must be
// allowed op's action on the key with the request's encryption context.
func (w *Worker) encrypt(ctx context.Context, op string, req api.EncryptRequest) (*api.EncryptResponse, error) {
	aad, err := requestAAD(req.EncryptionContext, req.AAD)
	if err != nil {
		return nil, err
	}
	k, err := w.usableKey(ctx, req.KeyID)
	if err != nil {
		return nil, err
	}
	if err := w.authorize(ctx, opActions[op], k, req.EncryptionContext); err != nil {
		return nil, err
	}
	key := k
	header, err := blobHeader(key.KeyID, key.CurrentVersion)
	if err != nil {
		return nil, err
	}
	var ct []byte
	err = w.hsmOp("encrypt", func() (err error) {
		ct, err = w.cfg.HSM.Encrypt(ctx, hsmsvc.KeyRef{KeyID: key.KeyID, Version: key.CurrentVersion}, req.Plaintext, blobAAD(header, aad))
		return err
	})
	if errors.Is(err, hsmsvc.ErrNotFound) {
		return nil, w.materialMissing(key.KeyID, key.CurrentVersion)
	}
	if err != nil {
		return nil, fmt.Errorf("encrypt: %w", err)
	}
	ev := api.EventEncrypt
	if op == api.OpGenerateDataKey {
		ev = api.EventGenerateDataKey
	}
	w.auditDataPlane(ctx, api.Event{Type: ev, KeyID: key.KeyID, Version: key.CurrentVersion, Action: opActions[op], EncryptionContext: req.EncryptionContext})
	return &api.EncryptResponse{KeyID: key.KeyID, Version: key.CurrentVersion, CiphertextBlob: append(header, ct...)}, nil
}

func (w *Worker) apiDecrypt(ctx context.Context, data []byte) (any, error) {
	var req api.DecryptRequest
	if err := decodeRequest(data, &req); err != nil {
		return nil, err
	}
	aad, err := requestAAD(req.EncryptionContext, req.AAD)
	if err != nil {
		return nil, err
	}
	keyID, version, err := parseBlobHeader(req.CiphertextBlob)
	if err != nil {
		return nil, badRequest("%v", err)
	}
	if req.KeyID != "" && req.KeyID != keyID {
		return nil, badRequest("the ciphertext was made with key %s, not %s", keyID, req.KeyID)
	}
	k, err := w.usableKey(ctx, keyID)
	if err != nil {
		return nil, err
	}
	if err := w.authorize(ctx, opActions[api.OpDecrypt], k, req.EncryptionContext); err != nil {
		return nil, err
	}
	if !slices.Contains(k.Versions, version) {
		return nil, notFound("key %s has no version %d in region %s", keyID, version, w.cfg.Region)
	}
	var pt []byte
	err = w.hsmOp("decrypt", func() (err error) {
		pt, err = w.cfg.HSM.Decrypt(ctx, hsmsvc.KeyRef{KeyID: keyID, Version: version},
			req.CiphertextBlob[blobHeaderLen:], blobAAD(req.CiphertextBlob[:blobHeaderLen], aad))
		return err
	})
	if errors.Is(err, hsmsvc.ErrNotFound) {
		return nil, w.materialMissing(keyID, version)
	}
	if err != nil {
		// Wrong context or a tampered blob: say so without detail.
		return nil, badRequest("ciphertext does not decrypt with key %s version %d and the given encryption context", keyID, version)
	}
	w.auditDataPlane(ctx, api.Event{Type: api.EventDecrypt, KeyID: keyID, Version: version, Action: opActions[api.OpDecrypt], EncryptionContext: req.EncryptionContext})
	return api.DecryptResponse{KeyID: keyID, Version: version, Plaintext: pt}, nil
}

// requestAAD returns the additional data a request binds to its
// ciphertext: its encryption context, canonically encoded, or the raw aad
// of older clients. Raw aad that starts like an encoded context is refused:
// it would let a caller bind a context no policy saw.
func requestAAD(ec map[string]string, raw []byte) ([]byte, error) {
	if len(ec) > 0 && len(raw) > 0 {
		return nil, badRequest("give encryption_context or aad, not both")
	}
	if len(raw) > 0 {
		if bytes.HasPrefix(raw, []byte(authz.ContextLabel)) {
			return nil, badRequest("aad must not start with the encryption-context label; use encryption_context")
		}
		return raw, nil
	}
	aad, err := authz.EncodeContext(ec)
	if err != nil {
		return nil, badRequest("encryption context: %v", err)
	}
	return aad, nil
}

// handleRequestEvent processes a request published on the requests stream.
// Only replicate-key is accepted as an event; its outcome is visible in the
// audit stream and describe-key.
func (w *Worker) handleRequestEvent(ctx context.Context, msg jetstream.Msg) {
	op, account, ok := layout.ParseRequestSubject(w.cfg.Region, msg.Subject())
	var err error
	p, perr := w.eventPrincipal(account)
	switch {
	case !ok:
		err = badRequest("request event subject %q is not %s", msg.Subject(), layout.RequestSubjectFor(w.cfg.Region, "<op>", "<account>"))
	case perr != nil:
		err = perr
	case op != api.OpReplicateKey:
		err = badRequest("unsupported request event %q (only %s)", op, api.OpReplicateKey)
	case len(msg.Data()) > requestLimit(op):
		err = badRequest("request too large")
	default:
		ctx = withPrincipal(ctx, p)
		if err = w.authorizeKeyOp(ctx, op, msg.Data()); err == nil {
			_, err = w.apiReplicateKey(ctx, msg.Data())
		}
	}
	var ae *apiError
	switch {
	case err == nil:
		w.met.requests.WithLabelValues("event:"+op, "ok").Inc()
		w.ack(ctx, msg)
	case errors.As(err, &ae) || layout.LastDelivery(msg, w.cfg.Layout.MaxDeliverOr()):
		// A bad or forbidden request never succeeds, and one at its last
		// delivery is not delivered again: record why and drop it, counted
		// once (a redelivery finds its dead letter there).
		reason := layout.ReasonMaxDeliver
		var detail string
		switch {
		case ae == nil:
			detail = err.Error()
		case ae.Code == api.CodeForbidden || ae.Code == api.CodeUnauthenticated:
			reason, detail = "forbidden", ae.Detail
		default:
			reason, detail = "bad_request", ae.Detail
		}
		first, derr := w.deadLetter(ctx, msg, &refusal{Reason: reason, Detail: detail})
		if derr != nil {
			_ = msg.NakWithDelay(time.Second)
			return
		}
		if first {
			w.met.requests.WithLabelValues("event:"+op, "error").Inc()
			w.log.Warn("request event rejected", "subject", msg.Subject(), "reason", reason, "detail", detail)
			if ae == nil || ae.Code != api.CodeForbidden { // authorize has recorded AccessDenied
				w.event(ctx, api.Event{Type: api.EventRequestRejected, KeyID: requestKeyID(msg.Data()), Reason: detail})
			}
		}
		_ = msg.TermWithReason(reason)
	default:
		w.log.Warn("request event failed; will retry", "subject", msg.Subject(), "err", err)
		_ = msg.NakWithDelay(retryDelay(msg))
	}
}

// eventPrincipal is the caller of a request event: the account its
// subject names (the server wrote it there), or, for one published inside
// the workers' own account, Config.LocalPrincipal.
func (w *Worker) eventPrincipal(account string) (authz.Principal, error) {
	if account == "" {
		if w.local == nil {
			return authz.Principal{}, errUnauthenticated
		}
		return *w.local, nil
	}
	p := authz.Principal{Account: account}
	if name, ok := w.cfg.AccountNames[account]; ok {
		p.Account = name
	}
	if _, err := authz.ParsePrincipal(p.String()); err != nil {
		return authz.Principal{}, errUnauthenticated
	}
	return p, nil
}

// requestKeyID is the key a rejected request event named, if its body is
// JSON with a well-formed key_id (whatever else is wrong with it), or "".
func requestKeyID(data []byte) string {
	var req struct {
		KeyID string `json:"key_id"`
	}
	if len(data) > maxRequest || json.Unmarshal(data, &req) != nil || !messages.IsKeyID(req.KeyID) {
		return ""
	}
	return req.KeyID
}
