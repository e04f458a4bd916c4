package client

import (
	"context"

	"github.com/mrkrepl/mrkrepl/api"
)

// CreateAccessKey issues an access key of the region's KMS API bound to
// principal (admins only). The reply's SecretAccessKey is shown this once.
func (c *Client) CreateAccessKey(ctx context.Context, principal string) (*api.AccessKey, error) {
	var k api.AccessKey
	return &k, c.Call(ctx, api.OpCreateAccessKey, api.CreateAccessKeyRequest{Principal: principal}, &k)
}

// ListAccessKeys lists the region's access keys, without their secrets.
func (c *Client) ListAccessKeys(ctx context.Context) ([]api.AccessKey, error) {
	var r api.ListAccessKeysResponse
	return r.AccessKeys, c.Call(ctx, api.OpListAccessKeys, struct{}{}, &r)
}

// DeleteAccessKey deletes an access key of the region.
func (c *Client) DeleteAccessKey(ctx context.Context, accessKeyID string) (*api.AccessKey, error) {
	var k api.AccessKey
	return &k, c.Call(ctx, api.OpDeleteAccessKey, api.DeleteAccessKeyRequest{AccessKeyID: accessKeyID}, &k)
}
