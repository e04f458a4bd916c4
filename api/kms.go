package api

import "time"

// Operations of the KMS API's access keys (docs/KMS-API.md), served to the
// region's admins only. An access key is bound to a principal; a request
// signed (AWS SigV4) with it is made by that principal.
const (
	OpCreateAccessKey = "create-access-key"
	OpListAccessKeys  = "list-access-keys"
	OpDeleteAccessKey = "delete-access-key"
)

// CreateAccessKeyRequest asks for a new access key bound to Principal
// ("ACCOUNT/user" or "ACCOUNT", as key policies name principals).
type CreateAccessKeyRequest struct {
	Principal string `json:"principal"`
}

// AccessKey is an access key of a region's KMS API. SecretAccessKey is
// set only in create-access-key's reply: it is stored sealed by the
// region's HSM and never shown again.
type AccessKey struct {
	AccessKeyID     string    `json:"access_key_id"`
	Principal       string    `json:"principal"`
	CreatedAt       time.Time `json:"created_at"`
	CreatedBy       string    `json:"created_by,omitempty"`
	SecretAccessKey string    `json:"secret_access_key,omitempty"`
}

// ListAccessKeysResponse lists a region's access keys (without secrets).
type ListAccessKeysResponse struct {
	AccessKeys []AccessKey `json:"access_keys"`
}

// DeleteAccessKeyRequest deletes an access key.
type DeleteAccessKeyRequest struct {
	AccessKeyID string `json:"access_key_id"`
}

// Events of the KMS API.
const (
	EventAccessKeyCreated = "AccessKeyCreated"
	EventAccessKeyDeleted = "AccessKeyDeleted"
	EventKeyEnabled       = "KeyEnabled"
	EventKeyDisabled      = "KeyDisabled"
	EventAliasCreated     = "AliasCreated"
	EventAliasUpdated     = "AliasUpdated"
	EventAliasDeleted     = "AliasDeleted"
)
