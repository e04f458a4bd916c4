package workers

// The AWS KMS JSON API of the region (docs/KMS-API.md), served by the
// worker itself: kmsapi verifies each request's SigV4 signature against
// the region's access keys and hands the principal the key is bound to
// here, in-process; the operations then run as the NATS API's do, with
// that principal in the request's context (withPrincipal), the same
// authorize calls and the same audit events. The principal never crosses
// a wire unproven: there is no hop between the signature check and the
// policy check where it would travel as a claim.

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"regexp"
	"strings"
	"time"

	"github.com/mrkrepl/mrkrepl/api"
	"github.com/mrkrepl/mrkrepl/internal/authz"
	"github.com/mrkrepl/mrkrepl/kmsapi"
)

// KMSConfig configures the worker's KMS API endpoint (Config.KMS).
type KMSConfig struct {
	// Listener is where the endpoint listens (required). Plain HTTP
	// (TLS nil) is served only on a loopback address.
	Listener net.Listener
	// TLS, if set, serves HTTPS with it.
	TLS *tls.Config
	// AccountID is the account id in the keys' ARNs and KeyMetadata
	// (12 digits). Default DefaultKMSAccountID.
	AccountID string
	// ARNPartition is the partition of the ARNs ("aws", "aws-cn" …).
	// Default "aws": the SDKs and the Encryption SDK parse ARNs.
	ARNPartition string
	// MaxSkew bounds the difference between a request's X-Amz-Date and the
	// worker's clock. Default 5 minutes.
	MaxSkew time.Duration
}

// DefaultKMSAccountID is the account id of ARNs when none is configured.
const DefaultKMSAccountID = "000000000000"

// kmsState is the running endpoint.
type kmsState struct {
	cfg    KMSConfig
	server *kmsapi.Server
	creds  *credentials
	done   chan struct{}
}

var accountIDRE = regexp.MustCompile(`^[0-9]{12}$`)
var arnPartitionRE = regexp.MustCompile(`^aws(-[a-z]+)*$`)

// startKMS adds the access-key operations to the NATS API and, with
// Config.KMS, starts the KMS endpoint. Called by Start.
func (w *Worker) startKMS(ctx context.Context) error {
	if err := w.ensureSealKey(ctx); err != nil {
		return fmt.Errorf("access-key sealing key: %w", err)
	}
	if w.cfg.KMS == nil {
		return nil
	}
	c := *w.cfg.KMS
	if c.Listener == nil {
		return errors.New("kms: a listener is required")
	}
	if c.AccountID == "" {
		c.AccountID = DefaultKMSAccountID
	}
	if c.ARNPartition == "" {
		c.ARNPartition = "aws"
	}
	if !accountIDRE.MatchString(c.AccountID) {
		return fmt.Errorf("kms: account id %q is not 12 digits", c.AccountID)
	}
	if !arnPartitionRE.MatchString(c.ARNPartition) {
		return fmt.Errorf("kms: arn partition %q is not aws or aws-<name>", c.ARNPartition)
	}
	if err := kmsapi.CheckListener(c.Listener, c.TLS); err != nil {
		return err
	}
	st := &kmsState{cfg: c, creds: &credentials{w: w}, done: make(chan struct{})}
	srv, err := kmsapi.New(kmsapi.Config{
		Region: w.cfg.Region, Credentials: st.creds, Handler: kmsHandler{w},
		Operations: kmsOperations(), Ready: w.Ready, Registerer: w.cfg.Registerer,
		Logger: w.cfg.Logger, Now: w.cfg.Now, MaxSkew: c.MaxSkew,
	})
	if err != nil {
		return err
	}
	st.server = srv
	w.kms = st
	go func() {
		defer close(st.done)
		if err := srv.Serve(c.Listener, c.TLS); err != nil {
			w.log.Error("kms endpoint stopped", "err", err)
		}
	}()
	w.log.Info("kms endpoint serving", "addr", c.Listener.Addr().String(), "tls", c.TLS != nil)
	return nil
}

// stopKMS stops the KMS endpoint (its requests in flight get 5 s).
func (w *Worker) stopKMS() {
	st := w.kms
	if st == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = st.server.Shutdown(ctx)
	<-st.done
}

// KMSURL is the URL of the worker's KMS endpoint ("" without one).
func (w *Worker) KMSURL() string {
	if w.kms == nil {
		return ""
	}
	scheme := "http"
	if w.kms.cfg.TLS != nil {
		scheme = "https"
	}
	return scheme + "://" + w.kms.cfg.Listener.Addr().String()
}

// refuseSingleRegion refuses to replicate a single-Region key (as AWS KMS
// does); replicate-key calls it.
func (w *Worker) refuseSingleRegion(ctx context.Context, keyID string) error {
	if !validKeyID(keyID) {
		return nil // the handler refuses it
	}
	k, err := w.loadKey(ctx, keyID)
	if err == nil && k.SingleRegion {
		return badRequest("key %s is a single-Region key: it cannot be replicated", keyID)
	}
	return nil
}

// kmsHandler is the kmsapi.Handler of a worker.
type kmsHandler struct{ w *Worker }

// ServeKMS runs op for the principal the request's signature proved.
func (h kmsHandler) ServeKMS(ctx context.Context, p authz.Principal, op string, body []byte) (any, error) {
	w := h.w
	fn, ok := kmsOps[op]
	if !ok {
		return nil, kmsapi.Errorf(kmsapi.ErrUnsupportedOperation, "%s is not supported", op)
	}
	ctx = withPrincipal(ctx, p)
	resp, err := fn(w, ctx, body)
	if err != nil {
		return nil, w.kmsError(op, err)
	}
	return resp, nil
}

// kmsError maps a worker error to the KMS API's: apiError codes to their
// nearest AWS type (a handler that knows better returns a *kmsapi.Error).
func (w *Worker) kmsError(op string, err error) error {
	if e := kmsapi.AsError(err); e != nil {
		return e
	}
	var ae *apiError
	if !errors.As(err, &ae) {
		if errors.Is(err, context.DeadlineExceeded) {
			return kmsapi.Errorf("DependencyTimeoutException", "the region did not answer in time")
		}
		return err // KMSInternalException, logged by kmsapi
	}
	switch ae.Code {
	case api.CodeForbidden, api.CodeUnauthenticated:
		return kmsapi.Errorf(kmsapi.ErrAccessDenied, "%s", ae.Detail)
	case api.CodeNotFound:
		return kmsapi.Errorf(kmsapi.ErrNotFound, "%s", ae.Detail)
	case api.CodeConflict:
		return kmsapi.Errorf(kmsapi.ErrInvalidState, "%s", ae.Detail)
	case api.CodeBadRequest:
		return kmsapi.Errorf(kmsapi.ErrValidation, "%s", ae.Detail)
	}
	return err
}

// ---- identifiers ------------------------------------------------------

func (w *Worker) kmsCfg() KMSConfig {
	if w.kms != nil {
		return w.kms.cfg
	}
	return KMSConfig{AccountID: DefaultKMSAccountID, ARNPartition: "aws"}
}

// keyARN is the ARN of keyID in region.
func (w *Worker) keyARN(region, keyID string) string {
	c := w.kmsCfg()
	return "arn:" + c.ARNPartition + ":kms:" + region + ":" + c.AccountID + ":key/" + keyID
}

// aliasARN is the ARN of an alias ("alias/…") in this region.
func (w *Worker) aliasARN(name string) string {
	c := w.kmsCfg()
	return "arn:" + c.ARNPartition + ":kms:" + w.cfg.Region + ":" + c.AccountID + ":" + name
}

func validKeyID(id string) bool { return checkKeyID(id) == nil }

// resolveKeyID turns a KeyId of a request (key id, key ARN, alias name or
// alias ARN) into a key id of this region. An ARN of another region,
// partition or account names no key here (NotFoundException).
func (w *Worker) resolveKeyID(ctx context.Context, id string) (string, error) {
	if id == "" {
		return "", kmsapi.Errorf(kmsapi.ErrValidation, "KeyId is required")
	}
	if len(id) > 2048 {
		return "", kmsapi.Errorf(kmsapi.ErrValidation, "KeyId longer than 2048 characters")
	}
	if rest, ok := strings.CutPrefix(id, "arn:"); ok {
		parts := strings.SplitN(rest, ":", 5)
		if len(parts) != 5 || parts[1] != "kms" {
			return "", kmsapi.Errorf(kmsapi.ErrNotFound, "Invalid keyId '%s'", id)
		}
		c := w.kmsCfg()
		if parts[0] != c.ARNPartition || parts[2] != w.cfg.Region || parts[3] != c.AccountID {
			return "", kmsapi.Errorf(kmsapi.ErrNotFound, "%s is not an ARN of region %s (partition %s, account %s)", id, w.cfg.Region, c.ARNPartition, c.AccountID)
		}
		id = parts[4]
		if kid, ok := strings.CutPrefix(id, "key/"); ok {
			id = kid
		} else if !strings.HasPrefix(id, "alias/") {
			return "", kmsapi.Errorf(kmsapi.ErrNotFound, "Invalid keyId '%s'", id)
		}
	}
	if strings.HasPrefix(id, "alias/") {
		a, err := w.loadAlias(ctx, id)
		if err != nil {
			return "", err
		}
		return a.TargetKeyID, nil
	}
	if !validKeyID(id) {
		return "", kmsapi.Errorf(kmsapi.ErrNotFound, "Invalid keyId '%s'", id)
	}
	return id, nil
}

// ---- metadata ---------------------------------------------------------

func epoch(t time.Time) float64 { return float64(t.UnixMilli()) / 1000 }

// kmsKeyState is AWS's KeyState of k in this region.
func kmsKeyState(k *api.Key) string {
	switch k.KeyState {
	case api.KeyStatePendingDeletion:
		return "PendingDeletion"
	case api.KeyStateUpdating:
		return "Updating"
	}
	if !k.Enabled {
		return "Disabled"
	}
	return "Enabled"
}

// keyMetadata is AWS's KeyMetadata of k in this region.
func (w *Worker) keyMetadata(k *api.Key) kmsapi.KeyMetadata {
	c := w.kmsCfg()
	m := kmsapi.KeyMetadata{
		AWSAccountID: c.AccountID, Arn: w.keyARN(w.cfg.Region, k.KeyID), KeyID: k.KeyID,
		CreationDate: epoch(k.CreatedAt), Description: k.Description, Enabled: k.Enabled && k.KeyState == api.KeyStateEnabled,
		KeyState: kmsKeyState(k), KeyManager: "CUSTOMER", KeySpec: k.KeySpec, CustomerMasterKeySpec: k.KeySpec,
		KeyUsage: k.KeyUsage, EncryptionAlgorithms: []string{"SYMMETRIC_DEFAULT"}, Origin: "AWS_KMS",
		MultiRegion: !k.SingleRegion,
	}
	if k.DeletionDate != nil {
		d := epoch(*k.DeletionDate)
		m.DeletionDate = &d
	}
	if k.SingleRegion {
		return m
	}
	mrc := &kmsapi.MultiRegionConfiguration{MultiRegionKeyType: k.Role, ReplicaKeys: []kmsapi.MultiRegionKey{}}
	primary := k.PrimaryRegion
	if k.Role == api.RolePrimary {
		primary = w.cfg.Region
		for _, r := range k.Replicas {
			if r.State == api.ReplicaFailed && !publicHoldsAny(k, r.Region) {
				continue // never created
			}
			mrc.ReplicaKeys = append(mrc.ReplicaKeys, kmsapi.MultiRegionKey{Arn: w.keyARN(r.Region, k.KeyID), Region: r.Region})
		}
	} else {
		// A replica knows of itself and its primary, not of its siblings.
		mrc.ReplicaKeys = append(mrc.ReplicaKeys, kmsapi.MultiRegionKey{Arn: w.keyARN(w.cfg.Region, k.KeyID), Region: w.cfg.Region})
	}
	mrc.PrimaryKey = &kmsapi.MultiRegionKey{Arn: w.keyARN(primary, k.KeyID), Region: primary}
	m.MultiRegionConfiguration = mrc
	return m
}
