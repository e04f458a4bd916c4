package workers

// Who may do what (docs/AUTHZ.md). Every request is made by a principal
// the NATS server proved: the account and user it stamps in the
// Nats-Request-Info header of the cross-account service import a client
// application calls the API through, or, for a request event, the account
// the server wrote into the event's subject. Nothing a client writes
// itself names it. The principal is then checked against a policy: the
// key's own (one per key per region, as in AWS KMS) for actions on a key,
// the region's for create-key and list-keys. Default deny.

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"slices"
	"sync"

	"github.com/mrkrepl/mrkrepl/api"
	"github.com/mrkrepl/mrkrepl/internal/authz"
	"github.com/mrkrepl/mrkrepl/internal/layout"
	"github.com/mrkrepl/mrkrepl/internal/repl"
	"github.com/mrkrepl/mrkrepl/messages"
	"github.com/nats-io/nats.go"
)

// Policy actions of the API's operations. Encrypt, decrypt and
// generate-data-key are checked in their handlers (with the encryption
// context); create-key and list-keys against the region's policy; every
// other operation against the policy of the key its request names, before
// the handler runs (authorizeKeyOp).
var opActions = map[string]string{
	api.OpCreateKey:           "kms:CreateKey",
	api.OpListKeys:            "kms:ListKeys",
	api.OpDescribeKey:         "kms:DescribeKey",
	api.OpReplicateKey:        "kms:ReplicateKey",
	api.OpDescribeReplication: "kms:DescribeReplication",
	api.OpEncrypt:             "kms:Encrypt",
	api.OpDecrypt:             "kms:Decrypt",
	api.OpGenerateDataKey:     "kms:GenerateDataKey",
	api.OpRotateKey:           "kms:RotateKeyOnDemand",
	api.OpUpdatePrimaryRegion: "kms:UpdatePrimaryRegion",
	api.OpScheduleKeyDeletion: "kms:ScheduleKeyDeletion",
	api.OpCancelKeyDeletion:   "kms:CancelKeyDeletion",
	api.OpGetKeyPolicy:        "kms:GetKeyPolicy",
	api.OpPutKeyPolicy:        "kms:PutKeyPolicy",
}

// authzActions are the values of the action label (sorted).
func authzActions() []string {
	var as []string
	for _, a := range opActions {
		as = append(as, a)
	}
	slices.Sort(as)
	return slices.Compact(as)
}

// keyOps are the operations authorised before their handler runs, on the
// key named by the request's key_id.
var keyOps = map[string]bool{
	api.OpDescribeKey: true, api.OpReplicateKey: true, api.OpRotateKey: true,
	api.OpUpdatePrimaryRegion: true, api.OpScheduleKeyDeletion: true,
	api.OpCancelKeyDeletion: true, api.OpGetKeyPolicy: true, api.OpPutKeyPolicy: true,
}

type principalKey struct{}

// withPrincipal records the proven caller of a request in ctx; events
// name it as their actor.
func withPrincipal(ctx context.Context, p authz.Principal) context.Context {
	return withActor(context.WithValue(ctx, principalKey{}, p), p.String())
}

// principalFrom returns the caller recorded by withPrincipal (ok false:
// not a request, e.g. a signed message or the worker's own timer).
func principalFrom(ctx context.Context) (authz.Principal, bool) {
	p, ok := ctx.Value(principalKey{}).(authz.Principal)
	return p, ok
}

// requestInfo is the part of nats-server's Nats-Request-Info header (its
// ClientInfo) that names the requester. The server writes it on every
// message that crosses an account through a service import and replaces
// any the client wrote (nats-server client.go, processServiceImport).
type requestInfo struct {
	Account string   `json:"acc"`
	User    string   `json:"user"`
	NameTag string   `json:"name_tag"` // JWT mode: the user JWT's name
	Tags    []string `json:"tags"`     // JWT mode: the user's tags
}

// errUnauthenticated refuses a request with no identity the server proved.
var errUnauthenticated = &apiError{Code: api.CodeUnauthenticated,
	Detail: "no authenticated principal: call the API through an application account's service import (docs/AUTHZ.md)"}

// principalOf returns the proven caller of a request with headers h. A
// request without Nats-Request-Info was published inside the workers' own
// account: it is Config.LocalPrincipal's, or refused when that is unset.
func (w *Worker) principalOf(h nats.Header) (authz.Principal, error) {
	raw := h.Get("Nats-Request-Info")
	if raw == "" {
		if w.local == nil {
			return authz.Principal{}, errUnauthenticated
		}
		return *w.local, nil
	}
	if p, ok := w.callers.get(raw); ok {
		return p, nil
	}
	var ri requestInfo
	if err := json.Unmarshal([]byte(raw), &ri); err != nil || ri.Account == "" {
		return authz.Principal{}, errUnauthenticated
	}
	p := authz.Principal{Account: ri.Account, User: ri.User, Tags: authz.ParseTags(ri.Tags)}
	if name, ok := w.cfg.AccountNames[ri.Account]; ok {
		p.Account = name
	}
	if ri.NameTag != "" { // JWT mode: User is the user's public key
		p.User = ri.NameTag
	}
	if _, err := authz.ParsePrincipal(p.String()); err != nil {
		return authz.Principal{}, errUnauthenticated
	}
	w.callers.put(raw, p)
	return p, nil
}

// callers caches the principals of Nats-Request-Info headers: the server
// writes the same header for every request of a connection (its client
// info), so decoding it once per connection is enough. The principal is
// a function of the header alone (and of Config.AccountNames, fixed):
// nothing can go stale. Bounded: it starts afresh past maxCachedCallers.
// Its Tags map is shared: read only, as everywhere.
type callers struct {
	mu sync.Mutex
	m  map[string]authz.Principal
}

const maxCachedCallers = 4096

func (c *callers) get(raw string) (authz.Principal, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	p, ok := c.m[raw]
	return p, ok
}

func (c *callers) put(raw string, p authz.Principal) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil || len(c.m) >= maxCachedCallers {
		c.m = map[string]authz.Principal{}
	}
	c.m[raw] = p
}

// setAuthz checks and installs the authorization settings of w.cfg.
func (w *Worker) setAuthz() error {
	if w.cfg.LocalPrincipal != "" {
		p, err := authz.ParsePrincipal(w.cfg.LocalPrincipal)
		if err != nil {
			return fmt.Errorf("local principal: %w", err)
		}
		w.local = &p
	}
	w.adminsPolicy = adminsOnlyPolicy(w.cfg.Admins)
	if w.adminsPolicy != "" {
		if _, err := w.policies.parse(w.adminsPolicy); err != nil {
			return fmt.Errorf("admins %q: %w", w.cfg.Admins, err)
		}
	}
	w.regionPolicy = w.cfg.RegionPolicy
	if w.regionPolicy == nil && w.adminsPolicy != "" {
		w.regionPolicy, _ = w.policies.parse(w.adminsPolicy)
	}
	return nil
}

// policies caches parsed policy documents by digest: a key's policy is
// parsed once, not on every encrypt. Bounded: it starts afresh past
// maxCachedPolicies distinct documents.
type policies struct {
	mu sync.Mutex
	m  map[[32]byte]*authz.Policy
}

const maxCachedPolicies = 4096

func (c *policies) parse(doc string) (*authz.Policy, error) {
	sum := sha256.Sum256([]byte(doc))
	c.mu.Lock()
	p, ok := c.m[sum]
	c.mu.Unlock()
	if ok {
		return p, nil
	}
	p, err := authz.Parse([]byte(doc))
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	if c.m == nil || len(c.m) >= maxCachedPolicies {
		c.m = map[[32]byte]*authz.Policy{}
	}
	c.m[sum] = p
	c.mu.Unlock()
	return p, nil
}

// keyPolicy returns k's policy in this region. A key stored before key
// policies existed has none: it gets the admins-only default.
func (w *Worker) keyPolicy(k *repl.Key) (*authz.Policy, error) {
	doc := k.Policy
	if doc == "" {
		doc = w.adminsPolicy
	}
	if doc == "" {
		return nil, nil // no admins configured: nobody
	}
	return w.policies.parse(doc)
}

// authorize decides whether the request in ctx may do action on k (nil:
// an action of the region, decided by the region's policy). A refusal is
// a 403 naming the principal and the action, and an AccessDenied event.
// Requests from signed messages and the worker's timers carry no
// principal and are not checked here: their messages were verified.
func (w *Worker) authorize(ctx context.Context, action string, k *repl.Key, ec map[string]string) error {
	p, ok := principalFrom(ctx)
	if !ok {
		return nil
	}
	pol := w.regionPolicy
	what := "region " + w.cfg.Region
	keyID := ""
	if k != nil {
		var err error
		if pol, err = w.keyPolicy(k); err != nil {
			// A stored policy that no longer parses denies, loudly.
			w.log.Error("key policy does not parse; denying", "key_id", k.KeyID, "err", err)
			pol = nil
		}
		keyID = k.KeyID
		what = "key " + k.KeyID
	}
	d := pol.Evaluate(authz.Request{Principal: p, Action: action, EncryptionContext: ec})
	if d.Allowed {
		w.met.authz.WithLabelValues(action, "allowed").Inc()
		return nil
	}
	w.met.authz.WithLabelValues(action, "denied").Inc()
	w.event(ctx, api.Event{Type: api.EventAccessDenied, KeyID: keyID, Action: action, EncryptionContext: ec, Reason: d.Reason})
	return &apiError{Code: api.CodeForbidden, Detail: fmt.Sprintf("%s is not allowed %s on %s", p, action, what)}
}

// authorizeKeyOp checks, before op's handler runs, that the caller may do
// op on the key its request names (keyOps). A request without a
// well-formed key id is refused here (the handler would refuse it too).
func (w *Worker) authorizeKeyOp(ctx context.Context, op string, data []byte) error {
	var req struct {
		KeyID string `json:"key_id"`
	}
	if err := json.Unmarshal(data, &req); err != nil {
		return badRequest("invalid request: %v", err)
	}
	if err := checkKeyID(req.KeyID); err != nil {
		return err
	}
	k, err := w.loadKey(ctx, req.KeyID)
	if err != nil {
		return err
	}
	return w.authorize(ctx, opActions[op], k, nil)
}

// checkNewPolicy validates a policy document given in a request and, unless
// bypass, that it still lets the caller put the key's policy (AWS's policy
// lockout safety check).
func (w *Worker) checkNewPolicy(ctx context.Context, doc string, bypass bool) error {
	pol, err := w.policies.parse(doc)
	if err != nil {
		return badRequest("%v", err)
	}
	p, ok := principalFrom(ctx)
	if !ok || bypass {
		return nil
	}
	if d := pol.Evaluate(authz.Request{Principal: p, Action: "kms:PutKeyPolicy"}); !d.Allowed {
		return badRequest("the policy would not let %s put the key's policy again (lockout safety check); set bypass_policy_lockout_safety_check to allow it", p)
	}
	return nil
}

// adminsOnlyPolicy is the policy of a key that has none (stored before
// key policies): the region's admins may do everything.
func adminsOnlyPolicy(admins []string) string {
	if len(admins) == 0 {
		return ""
	}
	b, _ := json.Marshal(map[string]any{
		"Version": "2012-10-17",
		"Statement": []map[string]any{{
			"Sid": "RegionAdmins", "Effect": "Allow", "Principal": map[string]any{"MRK": admins},
			"Action": "kms:*", "Resource": "*",
		}},
	})
	return string(b)
}

// defaultKeyPolicy is the policy of a key created without one: the
// region's admins and the creator may do everything with it.
func (w *Worker) defaultKeyPolicy(ctx context.Context) string {
	p, ok := principalFrom(ctx)
	if !ok {
		return w.adminsPolicy
	}
	return string(authz.DefaultKeyPolicy(p, w.cfg.Admins))
}

func (w *Worker) apiGetKeyPolicy(ctx context.Context, data []byte) (any, error) {
	var req api.KeyPolicyRequest
	if err := decodeKeyRequest(data, &req, &req.KeyID); err != nil {
		return nil, err
	}
	k, err := w.loadKey(ctx, req.KeyID)
	if err != nil {
		return nil, err
	}
	doc := k.Policy
	if doc == "" {
		doc = w.adminsPolicy
	}
	return api.KeyPolicy{KeyID: k.KeyID, Policy: doc}, nil
}

func (w *Worker) apiPutKeyPolicy(ctx context.Context, data []byte) (any, error) {
	var req api.PutKeyPolicyRequest
	if err := decodeKeyRequest(data, &req, &req.KeyID); err != nil {
		return nil, err
	}
	if err := w.checkNewPolicy(ctx, req.Policy, req.BypassPolicyLockoutSafetyCheck); err != nil {
		return nil, err
	}
	k, err := w.updateKey(ctx, req.KeyID, func(k *repl.Key) (bool, error) {
		if k.Deleted {
			return false, notFound("key %s not found in region %s", req.KeyID, w.cfg.Region)
		}
		if k.Policy == req.Policy {
			return false, nil
		}
		k.Policy = req.Policy
		return true, nil
	})
	if err != nil {
		return nil, err
	}
	w.event(ctx, api.Event{Type: api.EventKeyPolicyChanged, KeyID: req.KeyID, Action: opActions[api.OpPutKeyPolicy]})
	return api.KeyPolicy{KeyID: k.KeyID, Policy: k.Policy}, nil
}

// auditDataPlane publishes an encrypt, decrypt or generate-data-key event
// without waiting for JetStream's acknowledgement (the request does not
// wait for its audit record; a failure is logged and counted in
// mrkrepl_worker_audit_events_dropped_total).
func (w *Worker) auditDataPlane(ctx context.Context, ev api.Event) {
	if w.cfg.NoDataPlaneAudit {
		return
	}
	ev.Region = w.cfg.Region
	ev.Actor = actorFrom(ctx)
	ev.Time = w.cfg.Now().UTC()
	b, err := json.Marshal(ev)
	if err != nil {
		return
	}
	if _, err := w.audit.PublishAsync(layout.EventSubject(w.cfg.Region, ev.Type), b); err != nil {
		w.auditFailed(err)
	}
}

// auditFailed counts a data-plane event JetStream did not store (the
// audit publisher's asynchronous error handler, and auditDataPlane).
func (w *Worker) auditFailed(err error) {
	w.met.auditDropped.Inc()
	w.log.Warn("audit event not stored", "err", err)
}

// initPolicy is the policy a destination gives the replica an init may
// create: the one it carries, if it parses here, else the admins-only
// default (logged: the source checked it with the same rules).
func (w *Worker) initPolicy(in *messages.Init) string {
	if in.Policy == "" {
		return ""
	}
	if _, err := w.policies.parse(in.Policy); err != nil {
		w.log.Warn("init carries a policy that does not parse; the replica gets the admins-only policy", "key_id", in.KeyID, "err", err)
		return ""
	}
	return in.Policy
}

// setReplicaPolicy records the policy replicate-key asked for the replica
// in dst, for the inits of its runs (replicaPolicy).
func (w *Worker) setReplicaPolicy(ctx context.Context, keyID, dst, doc string) error {
	if len(doc) > messages.MaxPolicySize {
		return badRequest("a replica's policy travels in replication.init: at most %d bytes", messages.MaxPolicySize)
	}
	if err := w.checkNewPolicy(ctx, doc, true); err != nil {
		return err
	}
	_, err := w.updateKey(ctx, keyID, func(k *repl.Key) (bool, error) {
		if k.ReplicaPolicies[dst] == doc {
			return false, nil
		}
		if k.ReplicaPolicies == nil {
			k.ReplicaPolicies = map[string]string{}
		}
		k.ReplicaPolicies[dst] = doc
		return true, nil
	})
	return err
}
