// Package client is a small Go client for a mrkrepl region's request API
// (package api): create and describe keys, request replications and wait for
// them, encrypt and decrypt.
//
//	nc, _ := nats.Connect(url)
//	c := client.New(nc, "us-east-1")
//	key, err := c.CreateKey(ctx, api.CreateKeyRequest{Description: "orders"})
//	rep, err := c.ReplicateKey(ctx, key.KeyID, "eu-west-1")
//	rep, err = c.WaitReplication(ctx, rep.ReplicationID)
//
// A Client is safe for concurrent use; it does not own the connection.
package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/mrkrepl/mrkrepl/api"
	"github.com/mrkrepl/mrkrepl/internal/layout"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
)

// Client calls one region's API.
//
// Who the client is, is the NATS connection's business: the workers take
// the caller's principal from what the NATS server proves about the
// connection (its account and user, docs/AUTHZ.md), never from the request.
type Client struct {
	nc     *nats.Conn
	region string
}

// New returns a client for region's API over nc.
func New(nc *nats.Conn, region string) *Client {
	return &Client{nc: nc, region: region}
}

// IsForbidden reports whether err is an API "access denied" reply: the
// key's (or region's) policy does not allow the caller the action.
func IsForbidden(err error) bool {
	var e *Error
	return errors.As(err, &e) && e.Code == api.CodeForbidden
}

// Region returns the region the client talks to.
func (c *Client) Region() string { return c.region }

// Error is an error reply from the API.
type Error struct {
	Code        string // api.Code*
	Description string
}

func (e *Error) Error() string { return fmt.Sprintf("mrkrepl api: %s (%s)", e.Description, e.Code) }

// IsNotFound reports whether err is an API "not found" reply.
func IsNotFound(err error) bool {
	var e *Error
	return errors.As(err, &e) && e.Code == api.CodeNotFound
}

// Call sends req to op and decodes the reply into resp. If ctx has no
// deadline, the call times out after 10 seconds.
func (c *Client) Call(ctx context.Context, op string, req, resp any) error {
	data, err := json.Marshal(req)
	if err != nil {
		return fmt.Errorf("encode %s request: %w", op, err)
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
	}
	out := nats.NewMsg(layout.APISubject(c.region, op))
	out.Data = data
	msg, err := c.nc.RequestMsgWithContext(ctx, out)
	if err != nil {
		if errors.Is(err, nats.ErrNoResponders) {
			return fmt.Errorf("%s in %s: no worker is serving the region's api", op, c.region)
		}
		return fmt.Errorf("%s in %s: %w", op, c.region, err)
	}
	if code := msg.Header.Get(micro.ErrorCodeHeader); code != "" {
		return &Error{Code: code, Description: msg.Header.Get(micro.ErrorHeader)}
	}
	if resp == nil {
		return nil
	}
	if err := json.Unmarshal(msg.Data, resp); err != nil {
		return fmt.Errorf("decode %s reply: %w", op, err)
	}
	return nil
}

// CreateKey creates a multi-Region primary key in the client's region.
func (c *Client) CreateKey(ctx context.Context, req api.CreateKeyRequest) (*api.Key, error) {
	var k api.Key
	return &k, c.Call(ctx, api.OpCreateKey, req, &k)
}

// DescribeKey returns the key's metadata in the client's region.
func (c *Client) DescribeKey(ctx context.Context, keyID string) (*api.Key, error) {
	var k api.Key
	return &k, c.Call(ctx, api.OpDescribeKey, api.KeyRequest{KeyID: keyID}, &k)
}

// ListKeys lists the key ids known in the client's region.
func (c *Client) ListKeys(ctx context.Context) ([]string, error) {
	var r api.ListKeysResponse
	return r.KeyIDs, c.Call(ctx, api.OpListKeys, struct{}{}, &r)
}

// ReplicateKey asks the key's primary (the client's region) to copy it to
// replicaRegion. It returns as soon as the run has started.
func (c *Client) ReplicateKey(ctx context.Context, keyID, replicaRegion string) (*api.Replication, error) {
	var r api.Replication
	return &r, c.Call(ctx, api.OpReplicateKey, api.ReplicateKeyRequest{KeyID: keyID, ReplicaRegion: replicaRegion}, &r)
}

// DescribeReplication returns a run as the client's region sees it.
func (c *Client) DescribeReplication(ctx context.Context, replicationID string) (*api.Replication, error) {
	var r api.Replication
	return &r, c.Call(ctx, api.OpDescribeReplication, api.ReplicationRequest{ReplicationID: replicationID}, &r)
}

// WaitReplication polls the run until it is COMPLETED or FAILED, or ctx ends.
func (c *Client) WaitReplication(ctx context.Context, replicationID string) (*api.Replication, error) {
	delay := 10 * time.Millisecond
	for {
		r, err := c.DescribeReplication(ctx, replicationID)
		if err != nil {
			return nil, err
		}
		if r.State == api.StateCompleted || r.State == api.StateFailed {
			return r, nil
		}
		select {
		case <-ctx.Done():
			return r, fmt.Errorf("replication %s still %s: %w", replicationID, r.State, ctx.Err())
		case <-time.After(delay):
		}
		delay = min(2*delay, 500*time.Millisecond)
	}
}

// Encrypt encrypts plaintext with the key's current version; aad is the
// encryption context.
func (c *Client) Encrypt(ctx context.Context, keyID string, plaintext, aad []byte) (*api.EncryptResponse, error) {
	var r api.EncryptResponse
	return &r, c.Call(ctx, api.OpEncrypt, api.EncryptRequest{KeyID: keyID, Plaintext: plaintext, AAD: aad}, &r)
}

// Decrypt decrypts a ciphertext blob made in any region holding the key.
func (c *Client) Decrypt(ctx context.Context, blob, aad []byte) (*api.DecryptResponse, error) {
	var r api.DecryptResponse
	return &r, c.Call(ctx, api.OpDecrypt, api.DecryptRequest{CiphertextBlob: blob, AAD: aad}, &r)
}

// EncryptWithContext encrypts plaintext with the key's current version,
// bound to the encryption context ec (decrypt needs the same map; key
// policies may test it; audit events record it — it is not secret).
func (c *Client) EncryptWithContext(ctx context.Context, keyID string, plaintext []byte, ec map[string]string) (*api.EncryptResponse, error) {
	var r api.EncryptResponse
	return &r, c.Call(ctx, api.OpEncrypt, api.EncryptRequest{KeyID: keyID, Plaintext: plaintext, EncryptionContext: ec}, &r)
}

// DecryptWithContext decrypts a blob made with the encryption context ec.
// keyID, if not empty, must be the key the blob was made with.
func (c *Client) DecryptWithContext(ctx context.Context, keyID string, blob []byte, ec map[string]string) (*api.DecryptResponse, error) {
	var r api.DecryptResponse
	return &r, c.Call(ctx, api.OpDecrypt, api.DecryptRequest{KeyID: keyID, CiphertextBlob: blob, EncryptionContext: ec}, &r)
}

// GetKeyPolicy returns the key's policy in the client's region.
func (c *Client) GetKeyPolicy(ctx context.Context, keyID string) (string, error) {
	var r api.KeyPolicy
	return r.Policy, c.Call(ctx, api.OpGetKeyPolicy, api.KeyPolicyRequest{KeyID: keyID}, &r)
}

// PutKeyPolicy replaces the key's policy in the client's region (each
// region's policy is its own).
func (c *Client) PutKeyPolicy(ctx context.Context, req api.PutKeyPolicyRequest) error {
	return c.Call(ctx, api.OpPutKeyPolicy, req, nil)
}

// ReplicateKeyRequest sends a whole replicate-key request (with a client
// token or the replica's policy).
func (c *Client) ReplicateKeyRequest(ctx context.Context, req api.ReplicateKeyRequest) (*api.Replication, error) {
	var r api.Replication
	return &r, c.Call(ctx, api.OpReplicateKey, req, &r)
}

// ReplicateKeyWithToken is ReplicateKey made idempotent by clientToken:
// repeating the call with the same token returns the same run.
func (c *Client) ReplicateKeyWithToken(ctx context.Context, keyID, replicaRegion, clientToken string) (*api.Replication, error) {
	var r api.Replication
	return &r, c.Call(ctx, api.OpReplicateKey, api.ReplicateKeyRequest{KeyID: keyID, ReplicaRegion: replicaRegion, ClientToken: clientToken}, &r)
}

// GenerateDataKey returns a fresh data key in plaintext and encrypted under
// the key (numberOfBytes 16, 24 or 32; 0 means 32).
func (c *Client) GenerateDataKey(ctx context.Context, keyID string, numberOfBytes int, aad []byte) (*api.GenerateDataKeyResponse, error) {
	var r api.GenerateDataKeyResponse
	return &r, c.Call(ctx, api.OpGenerateDataKey, api.GenerateDataKeyRequest{KeyID: keyID, NumberOfBytes: numberOfBytes, AAD: aad}, &r)
}

// RotateKey asks the key's primary (the client's region) for a new version.
// The returned key shows the new version STAGED; WaitKey with
// VersionActive waits until it is used to encrypt.
func (c *Client) RotateKey(ctx context.Context, keyID string) (*api.Key, error) {
	var k api.Key
	return &k, c.Call(ctx, api.OpRotateKey, api.RotateKeyRequest{KeyID: keyID}, &k)
}

// UpdatePrimaryRegion asks the key's primary (the client's region) to hand
// the key over to region. The key is UPDATING until the hand-over is done.
func (c *Client) UpdatePrimaryRegion(ctx context.Context, keyID, region string) (*api.Key, error) {
	var k api.Key
	return &k, c.Call(ctx, api.OpUpdatePrimaryRegion, api.UpdatePrimaryRegionRequest{KeyID: keyID, PrimaryRegion: region}, &k)
}

// ScheduleKeyDeletion schedules the key's deletion in the client's region
// (pendingWindowDays 0: the region's default waiting period).
func (c *Client) ScheduleKeyDeletion(ctx context.Context, keyID string, pendingWindowDays int) (*api.Key, error) {
	var k api.Key
	return &k, c.Call(ctx, api.OpScheduleKeyDeletion, api.ScheduleKeyDeletionRequest{KeyID: keyID, PendingWindowDays: pendingWindowDays}, &k)
}

// CancelKeyDeletion cancels a scheduled deletion in the client's region.
func (c *Client) CancelKeyDeletion(ctx context.Context, keyID string) (*api.Key, error) {
	var k api.Key
	return &k, c.Call(ctx, api.OpCancelKeyDeletion, api.KeyRequest{KeyID: keyID}, &k)
}

// WaitKey polls describe-key in the client's region until done reports
// true for the key, or ctx ends (a "not found" reply is passed to done as a
// nil key, so WaitKey can wait for a deletion).
func (c *Client) WaitKey(ctx context.Context, keyID string, done func(*api.Key) bool) (*api.Key, error) {
	delay := 10 * time.Millisecond
	for {
		k, err := c.DescribeKey(ctx, keyID)
		if IsNotFound(err) {
			k, err = nil, nil
		}
		if err != nil {
			return nil, err
		}
		if done(k) {
			return k, nil
		}
		select {
		case <-ctx.Done():
			return k, fmt.Errorf("waiting for key %s in %s: %w", keyID, c.region, ctx.Err())
		case <-time.After(delay):
		}
		delay = min(2*delay, 500*time.Millisecond)
	}
}

// VersionActive returns a WaitKey condition: the key's current version is
// at least version.
func VersionActive(version uint32) func(*api.Key) bool {
	return func(k *api.Key) bool { return k != nil && k.CurrentVersion >= version }
}

// PrimaryIs returns a WaitKey condition: the key names region as its
// primary and is not UPDATING.
func PrimaryIs(region string) func(*api.Key) bool {
	return func(k *api.Key) bool {
		return k != nil && k.PrimaryRegion == region && k.KeyState != api.KeyStateUpdating
	}
}
