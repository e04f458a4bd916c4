package kmsapi

// Request and reply shapes of AWS KMS, with AWS's field names. Requests
// list every field AWS defines for the operation, so that a request an SDK
// sends parses; the handler refuses the values it does not support.
// Timestamps are epoch seconds (JSON numbers), blobs standard base64.

// KeyMetadata is AWS's KeyMetadata.
type KeyMetadata struct {
	AWSAccountID             string                    `json:"AWSAccountId"`
	Arn                      string                    `json:"Arn"`
	KeyID                    string                    `json:"KeyId"`
	CreationDate             float64                   `json:"CreationDate"`
	DeletionDate             *float64                  `json:"DeletionDate,omitempty"`
	PendingDeletionWindow    *int                      `json:"PendingDeletionWindowInDays,omitempty"`
	Description              string                    `json:"Description"`
	Enabled                  bool                      `json:"Enabled"`
	KeyState                 string                    `json:"KeyState"`
	KeyManager               string                    `json:"KeyManager"`
	KeySpec                  string                    `json:"KeySpec"`
	CustomerMasterKeySpec    string                    `json:"CustomerMasterKeySpec"`
	KeyUsage                 string                    `json:"KeyUsage"`
	EncryptionAlgorithms     []string                  `json:"EncryptionAlgorithms"`
	Origin                   string                    `json:"Origin"`
	MultiRegion              bool                      `json:"MultiRegion"`
	MultiRegionConfiguration *MultiRegionConfiguration `json:"MultiRegionConfiguration,omitempty"`
	CurrentKeyMaterialID     string                    `json:"CurrentKeyMaterialId,omitempty"`
}

// MultiRegionConfiguration is AWS's MultiRegionConfiguration.
type MultiRegionConfiguration struct {
	MultiRegionKeyType string           `json:"MultiRegionKeyType"` // PRIMARY or REPLICA
	PrimaryKey         *MultiRegionKey  `json:"PrimaryKey"`
	ReplicaKeys        []MultiRegionKey `json:"ReplicaKeys"`
}

// MultiRegionKey is AWS's MultiRegionKey.
type MultiRegionKey struct {
	Arn    string `json:"Arn"`
	Region string `json:"Region"`
}

// Tag is AWS's Tag (accepted in requests, refused when given).
type Tag struct {
	TagKey   string `json:"TagKey"`
	TagValue string `json:"TagValue"`
}

type CreateKeyRequest struct {
	Policy                         *string `json:"Policy"`
	Description                    *string `json:"Description"`
	KeyUsage                       *string `json:"KeyUsage"`
	CustomerMasterKeySpec          *string `json:"CustomerMasterKeySpec"`
	KeySpec                        *string `json:"KeySpec"`
	Origin                         *string `json:"Origin"`
	CustomKeyStoreID               *string `json:"CustomKeyStoreId"`
	BypassPolicyLockoutSafetyCheck bool    `json:"BypassPolicyLockoutSafetyCheck"`
	Tags                           []Tag   `json:"Tags"`
	MultiRegion                    *bool   `json:"MultiRegion"`
	XksKeyID                       *string `json:"XksKeyId"`
}

type KeyMetadataResponse struct {
	KeyMetadata KeyMetadata `json:"KeyMetadata"`
}

type DescribeKeyRequest struct {
	KeyID       string   `json:"KeyId"`
	GrantTokens []string `json:"GrantTokens"`
}

// KeyIDRequest is the request of the operations that name only a key
// (EnableKey, DisableKey, CancelKeyDeletion, GetKeyRotationStatus,
// RotateKeyOnDemand).
type KeyIDRequest struct {
	KeyID string `json:"KeyId"`
}

type ListKeysRequest struct {
	Limit  *int    `json:"Limit"`
	Marker *string `json:"Marker"`
}

type KeyListEntry struct {
	KeyID  string `json:"KeyId"`
	KeyArn string `json:"KeyArn"`
}

type ListKeysResponse struct {
	Keys       []KeyListEntry `json:"Keys"`
	NextMarker string         `json:"NextMarker,omitempty"`
	Truncated  bool           `json:"Truncated"`
}

// RecipientInfo is AWS's (Nitro Enclaves attestation); refused when given.
type RecipientInfo struct {
	KeyEncryptionAlgorithm *string `json:"KeyEncryptionAlgorithm"`
	AttestationDocument    []byte  `json:"AttestationDocument"`
}

type EncryptRequest struct {
	KeyID               string            `json:"KeyId"`
	Plaintext           []byte            `json:"Plaintext"`
	EncryptionContext   map[string]string `json:"EncryptionContext"`
	GrantTokens         []string          `json:"GrantTokens"`
	EncryptionAlgorithm *string           `json:"EncryptionAlgorithm"`
	DryRun              *bool             `json:"DryRun"`
}

type EncryptResponse struct {
	CiphertextBlob      []byte `json:"CiphertextBlob"`
	KeyID               string `json:"KeyId"`
	EncryptionAlgorithm string `json:"EncryptionAlgorithm"`
}

type DecryptRequest struct {
	CiphertextBlob      []byte            `json:"CiphertextBlob"`
	EncryptionContext   map[string]string `json:"EncryptionContext"`
	GrantTokens         []string          `json:"GrantTokens"`
	KeyID               *string           `json:"KeyId"`
	EncryptionAlgorithm *string           `json:"EncryptionAlgorithm"`
	Recipient           *RecipientInfo    `json:"Recipient"`
	DryRun              *bool             `json:"DryRun"`
}

type DecryptResponse struct {
	KeyID               string `json:"KeyId"`
	Plaintext           []byte `json:"Plaintext"`
	EncryptionAlgorithm string `json:"EncryptionAlgorithm"`
}

type ReEncryptRequest struct {
	CiphertextBlob                 []byte            `json:"CiphertextBlob"`
	SourceEncryptionContext        map[string]string `json:"SourceEncryptionContext"`
	SourceKeyID                    *string           `json:"SourceKeyId"`
	DestinationKeyID               string            `json:"DestinationKeyId"`
	DestinationEncryptionContext   map[string]string `json:"DestinationEncryptionContext"`
	SourceEncryptionAlgorithm      *string           `json:"SourceEncryptionAlgorithm"`
	DestinationEncryptionAlgorithm *string           `json:"DestinationEncryptionAlgorithm"`
	GrantTokens                    []string          `json:"GrantTokens"`
	DryRun                         *bool             `json:"DryRun"`
}

type ReEncryptResponse struct {
	CiphertextBlob                 []byte `json:"CiphertextBlob"`
	SourceKeyID                    string `json:"SourceKeyId"`
	KeyID                          string `json:"KeyId"`
	SourceEncryptionAlgorithm      string `json:"SourceEncryptionAlgorithm"`
	DestinationEncryptionAlgorithm string `json:"DestinationEncryptionAlgorithm"`
}

type GenerateDataKeyRequest struct {
	KeyID             string            `json:"KeyId"`
	EncryptionContext map[string]string `json:"EncryptionContext"`
	NumberOfBytes     *int              `json:"NumberOfBytes"`
	KeySpec           *string           `json:"KeySpec"`
	GrantTokens       []string          `json:"GrantTokens"`
	Recipient         *RecipientInfo    `json:"Recipient"`
	DryRun            *bool             `json:"DryRun"`
}

type GenerateDataKeyResponse struct {
	CiphertextBlob []byte `json:"CiphertextBlob"`
	Plaintext      []byte `json:"Plaintext,omitempty"`
	KeyID          string `json:"KeyId"`
}

type ReplicateKeyRequest struct {
	KeyID                          string  `json:"KeyId"`
	ReplicaRegion                  string  `json:"ReplicaRegion"`
	Policy                         *string `json:"Policy"`
	BypassPolicyLockoutSafetyCheck bool    `json:"BypassPolicyLockoutSafetyCheck"`
	Description                    *string `json:"Description"`
	Tags                           []Tag   `json:"Tags"`
}

type ReplicateKeyResponse struct {
	ReplicaKeyMetadata KeyMetadata `json:"ReplicaKeyMetadata"`
	ReplicaPolicy      string      `json:"ReplicaPolicy"`
	ReplicaTags        []Tag       `json:"ReplicaTags"`
}

type UpdatePrimaryRegionRequest struct {
	KeyID         string `json:"KeyId"`
	PrimaryRegion string `json:"PrimaryRegion"`
}

type ScheduleKeyDeletionRequest struct {
	KeyID               string `json:"KeyId"`
	PendingWindowInDays *int   `json:"PendingWindowInDays"`
}

type ScheduleKeyDeletionResponse struct {
	KeyID               string  `json:"KeyId"`
	DeletionDate        float64 `json:"DeletionDate"`
	KeyState            string  `json:"KeyState"`
	PendingWindowInDays int     `json:"PendingWindowInDays"`
}

type KeyIDResponse struct {
	KeyID string `json:"KeyId"`
}

type GetKeyRotationStatusResponse struct {
	KeyID                     string   `json:"KeyId"`
	KeyRotationEnabled        bool     `json:"KeyRotationEnabled"`
	OnDemandRotationStartDate *float64 `json:"OnDemandRotationStartDate,omitempty"`
}

type ListKeyRotationsRequest struct {
	KeyID  string  `json:"KeyId"`
	Limit  *int    `json:"Limit"`
	Marker *string `json:"Marker"`
}

type RotationsListEntry struct {
	KeyID        string  `json:"KeyId"`
	RotationDate float64 `json:"RotationDate"`
	RotationType string  `json:"RotationType"`
}

type ListKeyRotationsResponse struct {
	Rotations  []RotationsListEntry `json:"Rotations"`
	NextMarker string               `json:"NextMarker,omitempty"`
	Truncated  bool                 `json:"Truncated"`
}

type AliasRequest struct {
	AliasName   string `json:"AliasName"`
	TargetKeyID string `json:"TargetKeyId"`
}

type DeleteAliasRequest struct {
	AliasName string `json:"AliasName"`
}

type ListAliasesRequest struct {
	KeyID  *string `json:"KeyId"`
	Limit  *int    `json:"Limit"`
	Marker *string `json:"Marker"`
}

type AliasListEntry struct {
	AliasName       string   `json:"AliasName"`
	AliasArn        string   `json:"AliasArn"`
	TargetKeyID     string   `json:"TargetKeyId,omitempty"`
	CreationDate    *float64 `json:"CreationDate,omitempty"`
	LastUpdatedDate *float64 `json:"LastUpdatedDate,omitempty"`
}

type ListAliasesResponse struct {
	Aliases    []AliasListEntry `json:"Aliases"`
	NextMarker string           `json:"NextMarker,omitempty"`
	Truncated  bool             `json:"Truncated"`
}

type GetKeyPolicyRequest struct {
	KeyID      string  `json:"KeyId"`
	PolicyName *string `json:"PolicyName"`
}

type GetKeyPolicyResponse struct {
	Policy     string `json:"Policy"`
	PolicyName string `json:"PolicyName"`
}

type PutKeyPolicyRequest struct {
	KeyID                          string  `json:"KeyId"`
	PolicyName                     *string `json:"PolicyName"`
	Policy                         string  `json:"Policy"`
	BypassPolicyLockoutSafetyCheck bool    `json:"BypassPolicyLockoutSafetyCheck"`
}

// Empty is the reply of operations that return nothing.
type Empty struct{}
